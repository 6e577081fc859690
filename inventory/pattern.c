/* Host patterns, as Ansible's --limit reads them.
 *
 * Splitting: a pattern with a ',' is split on ','; otherwise on ':' and
 * white space, except inside [...] (so "gpu[01:04]" stays one term), which
 * is Ansible's split_host_pattern(). Terms are trimmed; empty ones dropped.
 *
 * A term is "&X" (intersection), "!X" (exclusion) or X (union). Regular
 * terms are applied first, then intersections, then exclusions, whatever
 * their order in the pattern (Ansible's _order_patterns); with no regular
 * term the selection starts from all hosts. X is one of:
 *  - "all" or "*": every host;
 *  - "~RE": a POSIX extended regular expression, anchored at the start as
 *    Python's re.match() is, matched against group names (selecting their
 *    hosts, descendants' included) and against host names;
 *  - a glob (it has '*', '?' or '['): fnmatch() against group names, then
 *    host names, as above; '\' is an ordinary character, as in Python;
 *  - otherwise the exact name of a group, or failing that of a host.
 * Note that group names take part: "~a" matches the group "all" and so
 * every host, as in Ansible.
 *
 * The result is in inventory order without duplicates (Ansible keeps the
 * order in which terms added hosts; a fixed order is easier to reason
 * about in a rollout). A term that names no group and no host is a warning;
 * an empty result is not an error here. */
#include "inventory.h"

#include <ctype.h>
#include <fnmatch.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

struct term {
    char *text; /* as written, prefix included */
    char op;    /* 0, '&' or '!' */
    const char *body;
};

struct gname {
    const char *name;
    size_t idx;
};

static int gname_cmp(const void *a, const void *b)
{
    return strcmp(((const struct gname *)a)->name, ((const struct gname *)b)->name);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void terms_free(struct term *t, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        free(t[i].text);
    free(t);
}

static int add_term(struct term **terms, size_t *n, size_t *cap, const char *s, size_t len)
{
    struct term *t;

    while (len > 0 && isspace((unsigned char)*s)) {
        s++;
        len--;
    }
    while (len > 0 && isspace((unsigned char)s[len - 1]))
        len--;
    if (len == 0)
        return 0;
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;

        t = realloc(*terms, ncap * sizeof(*t));
        if (t == NULL)
            return KF_ENOMEM;
        *terms = t;
        *cap = ncap;
    }
    t = &(*terms)[*n];
    t->text = strndup(s, len);
    if (t->text == NULL)
        return KF_ENOMEM;
    t->op = (s[0] == '&' || s[0] == '!') ? s[0] : 0;
    t->body = t->text + (t->op != 0);
    (*n)++;
    return 0;
}

/* Ansible's split_host_pattern(); see the top of the file. */
static int split_terms(const char *p, struct term **terms, size_t *n)
{
    size_t cap = 0, start, i, len = strlen(p);
    int rc = 0;

    *terms = NULL;
    *n = 0;
    if (strchr(p, ',') != NULL) {
        for (start = i = 0; rc == 0 && i <= len; i++) {
            if (i == len || p[i] == ',') {
                rc = add_term(terms, n, &cap, p + start, i - start);
                start = i + 1;
            }
        }
        return rc;
    }
    /* Tokens are runs of characters other than space, ':', '[', ']', and
     * of complete [...] groups; anything else separates them. */
    start = 0;
    for (i = 0; rc == 0 && i <= len; i++) {
        const char *close;

        if (i < len && p[i] == '[' && (close = strchr(p + i + 1, ']')) != NULL) {
            i = (size_t)(close - p);
            continue;
        }
        if (i == len || isspace((unsigned char)p[i]) || p[i] == ':' || p[i] == '[' || p[i] == ']') {
            rc = add_term(terms, n, &cap, p + start, i - start);
            start = i + 1;
        }
    }
    return rc;
}

/* Is the host in group g (by name)? h->groups is sorted and holds every
 * group the host is in, ancestors included. */
static int host_in(const struct inv_host *h, const char *g)
{
    return bsearch(&g, h->groups, h->ngroups, sizeof(*h->groups), str_cmp) != NULL;
}

struct matcher {
    int is_regex;
    regex_t re;
    const char *glob;
};

static int matches(const struct matcher *m, const char *name)
{
    if (m->is_regex)
        return regexec(&m->re, name, 0, NULL, 0) == 0;
    return fnmatch(m->glob, name, FNM_NOESCAPE) == 0;
}

/* Fills sel[] (one byte per host) with the hosts term t selects and
 * *found with whether it named any group or host. */
static int match_term(const struct inventory *inv, const struct gname *sorted, unsigned char *gsel,
                      const struct term *t, unsigned char *sel, int *found, struct kf_err *err)
{
    const char *b = t->body;
    struct matcher m;
    size_t i, k;
    int rc = 0;

    memset(sel, 0, inv->nhosts);
    *found = 0;
    if (strcmp(b, "all") == 0 || strcmp(b, "*") == 0) {
        memset(sel, 1, inv->nhosts);
        *found = 1;
        return 0;
    }
    if (b[0] == '~' || strpbrk(b, "*?[") != NULL) {
        memset(&m, 0, sizeof(m));
        if (b[0] == '~') {
            struct buf re;
            int e;

            /* re.match() anchors at the start only. */
            buf_init(&re, 0);
            if (buf_puts(&re, "^(") < 0 || buf_puts(&re, b + 1) < 0 || buf_puts(&re, ")") < 0) {
                buf_release(&re);
                return kf_err_set(err, KF_ENOMEM, "out of memory");
            }
            e = regcomp(&m.re, buf_cstr(&re), REG_EXTENDED | REG_NOSUB);
            buf_release(&re);
            if (e != 0) {
                char why[128], show[256];

                regerror(e, &m.re, why, sizeof(why));
                return kf_err_set(err, KF_EINVAL,
                                  "host pattern term '%s': invalid regular expression: %s",
                                  kf_escape_to(show, sizeof(show), t->text, strlen(t->text)), why);
            }
            m.is_regex = 1;
        } else {
            m.glob = b;
        }
        for (i = 0; i < inv->ngroups; i++) {
            gsel[i] = (unsigned char)matches(&m, inv->groups[i].name);
            *found |= gsel[i];
        }
        for (i = 0; i < inv->nhosts; i++) {
            const struct inv_host *h = &inv->hosts[i];

            if (matches(&m, h->name)) {
                sel[i] = 1;
                *found = 1;
                continue;
            }
            for (k = 0; k < h->ngroups && !sel[i]; k++) {
                struct gname key = {h->groups[k], 0}, *g;

                g = bsearch(&key, sorted, inv->ngroups, sizeof(*sorted), gname_cmp);
                sel[i] = g != NULL && gsel[g->idx];
            }
        }
        if (m.is_regex)
            regfree(&m.re);
        return rc;
    }
    {
        struct gname key = {b, 0};

        if (bsearch(&key, sorted, inv->ngroups, sizeof(*sorted), gname_cmp) != NULL) {
            *found = 1;
            for (i = 0; i < inv->nhosts; i++)
                sel[i] = (unsigned char)host_in(&inv->hosts[i], b);
            return 0;
        }
    }
    for (i = 0; i < inv->nhosts; i++) {
        if (strcmp(inv->hosts[i].name, b) == 0) {
            sel[i] = 1;
            *found = 1;
            break;
        }
    }
    return 0;
}

int inv_select(const struct inventory *inv, const char *pattern, size_t **idx, size_t *n,
               struct kf_err *err)
{
    unsigned char *acc = NULL, *sel = NULL, *gsel = NULL;
    struct gname *sorted = NULL;
    struct term *terms = NULL;
    size_t nterms = 0, nregular = 0, i, k, count;
    size_t *out = NULL;
    char show[256];
    int rc = 0, pass;

    *idx = NULL;
    *n = 0;
    kf_err_clear(err);
    if (pattern == NULL)
        pattern = "";
    if (split_terms(pattern, &terms, &nterms) < 0) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    for (i = 0; i < nterms; i++) {
        if (terms[i].body[0] == '\0') {
            rc =
                kf_err_set(err, KF_EINVAL, "host pattern '%s': '%c' without a name after it",
                           kf_escape_to(show, sizeof(show), pattern, strlen(pattern)), terms[i].op);
            goto out;
        }
        nregular += terms[i].op == 0;
    }
    acc = calloc(inv->nhosts + 1, 1);
    sel = calloc(inv->nhosts + 1, 1);
    gsel = calloc(inv->ngroups + 1, 1);
    sorted = calloc(inv->ngroups + 1, sizeof(*sorted));
    if (acc == NULL || sel == NULL || gsel == NULL || sorted == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    for (i = 0; i < inv->ngroups; i++) {
        sorted[i].name = inv->groups[i].name;
        sorted[i].idx = i;
    }
    qsort(sorted, inv->ngroups, sizeof(*sorted), gname_cmp);
    if (nregular == 0)
        memset(acc, 1, inv->nhosts);

    /* Unions, then intersections, then exclusions. */
    for (pass = 0; pass < 3; pass++) {
        char op = pass == 0 ? 0 : pass == 1 ? '&' : '!';

        for (i = 0; i < nterms; i++) {
            int found;

            if (terms[i].op != op)
                continue;
            if ((rc = match_term(inv, sorted, gsel, &terms[i], sel, &found, err)) < 0)
                goto out;
            if (!found)
                log_warn("host pattern term '%s' matched nothing",
                         kf_escape_to(show, sizeof(show), terms[i].text, strlen(terms[i].text)));
            for (k = 0; k < inv->nhosts; k++) {
                if (op == 0)
                    acc[k] |= sel[k];
                else if (op == '&')
                    acc[k] &= sel[k];
                else
                    acc[k] &= (unsigned char)!sel[k];
            }
        }
    }

    for (count = k = 0; k < inv->nhosts; k++)
        count += acc[k];
    if (count > 0) {
        out = malloc(count * sizeof(*out));
        if (out == NULL) {
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
            goto out;
        }
        for (count = k = 0; k < inv->nhosts; k++)
            if (acc[k])
                out[count++] = k;
    }
    *idx = out; /* transferred; NULL when nothing was selected */
    *n = count;
out:
    terms_free(terms, nterms);
    free(acc);
    free(sel);
    free(gsel);
    free(sorted);
    return rc;
}
