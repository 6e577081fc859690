/* The node-side program from the coordinator's side: the command line that
 * runs it, and the parsers of what it prints (deployer/NODE.md). Node
 * output is untrusted: every value is checked against the rule its field
 * has before it is stored, and text is kept display-safe. */
#include "deploy.h"

#include <stdlib.h>
#include <string.h>

/* ---- names ------------------------------------------------------------------ */

static const char *const state_names[] = {
    [DS_PENDING] = "pending",
    [DS_CONNECT] = "connecting",
    [DS_CHECK] = "checking",
    [DS_TRANSFER] = "transferring",
    [DS_INSTALL] = "installing",
    [DS_DRAIN] = "draining",
    [DS_LOAD] = "loading",
    [DS_VERIFY] = "verifying",
    [DS_UNDRAIN] = "undraining",
    [DS_ROLLBACK] = "rolling_back",
    [DS_ROLLBACK_VERIFY] = "verifying_rollback",
    [DS_UNLOCK] = "unlocking",
    [DS_DONE] = "done",
};

static const char *const outcome_names[] = {
    [DO_NONE] = "none",
    [DO_UPDATED] = "updated",
    [DO_UNCHANGED] = "unchanged",
    [DO_SKIPPED] = "skipped",
    [DO_FAILED] = "failed",
    [DO_ROLLED_BACK] = "rolled_back",
    [DO_ROLLBACK_FAILED] = "rollback_failed",
};

const char *deploy_state_name(enum deploy_state s)
{
    if ((unsigned)s < sizeof(state_names) / sizeof(state_names[0]) && state_names[s])
        return state_names[s];
    return "unknown";
}

int deploy_state_from_name(const char *name)
{
    size_t i;

    for (i = 0; name && i < sizeof(state_names) / sizeof(state_names[0]); i++)
        if (state_names[i] && strcmp(state_names[i], name) == 0)
            return (int)i;
    return -1;
}

const char *deploy_outcome_name(enum deploy_outcome o)
{
    if ((unsigned)o < sizeof(outcome_names) / sizeof(outcome_names[0]) && outcome_names[o])
        return outcome_names[o];
    return "unknown";
}

int deploy_outcome_from_name(const char *name)
{
    size_t i;

    for (i = 0; name && i < sizeof(outcome_names) / sizeof(outcome_names[0]); i++)
        if (outcome_names[i] && strcmp(outcome_names[i], name) == 0)
            return (int)i;
    return -1;
}

int deploy_outcome_is_failure(enum deploy_outcome o)
{
    return o == DO_FAILED || o == DO_ROLLED_BACK || o == DO_ROLLBACK_FAILED;
}

/* ---- the command -------------------------------------------------------------- */

static int span_of(const char *s, const char *set, size_t min, size_t max)
{
    size_t n;

    if (s == NULL)
        return 0;
    n = strlen(s);
    return n >= min && n <= max && strspn(s, set) == n;
}

#define ALNUM "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

int deploy_owner_valid(const char *s)
{
    return span_of(s, ALNUM "._:@-", 1, DEPLOY_OWNER_MAX);
}

int deploy_profile_valid(const char *s)
{
    return span_of(s, ALNUM "_-", 1, DEPLOY_PROFILE_MAX);
}

static int sha_valid_n(const char *s, size_t n)
{
    size_t i;

    if (n != 64)
        return 0;
    for (i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

int deploy_node_command(int become, const char *become_user, const char *action,
                        const char *const *args, size_t nargs, char **cmd)
{
    struct buf b;
    size_t i;
    int rc = 0;

    if (cmd == NULL || action == NULL)
        return KF_EINVAL;
    *cmd = NULL;
    if (become && become_user != NULL && become_user[0] == '\0')
        return KF_EINVAL;
    buf_init(&b, 0);
    if (become) {
        rc = buf_puts(&b, "sudo -n -u ");
        if (rc == 0)
            rc = kf_shquote(&b, become_user ? become_user : "root");
        if (rc == 0)
            rc = buf_puts(&b, " ");
    }
    if (rc == 0)
        rc = buf_puts(&b, "sh -c ");
    if (rc == 0)
        rc = kf_shquote(&b, kf_node_script);
    if (rc == 0)
        rc = buf_puts(&b, " kfleet-node ");
    if (rc == 0)
        rc = kf_shquote(&b, action);
    for (i = 0; rc == 0 && i < nargs; i++) {
        rc = buf_puts(&b, " ");
        if (rc == 0)
            rc = kf_shquote(&b, args[i] ? args[i] : "");
    }
    if (rc == 0) {
        *cmd = buf_detach(&b, NULL);
        if (*cmd == NULL)
            rc = KF_ENOMEM;
    }
    buf_release(&b);
    return rc;
}

/* ---- check ---------------------------------------------------------------------- */

/* The space-separated words of one line (at most 8). */
struct words {
    const char *w[8];
    size_t n[8];
    size_t count;
};

static void split_words(const char *line, size_t len, struct words *ws)
{
    size_t i = 0;

    memset(ws, 0, sizeof(*ws));
    while (i < len && ws->count < 8) {
        size_t s;
        while (i < len && line[i] == ' ')
            i++;
        if (i >= len)
            break;
        s = i;
        while (i < len && line[i] != ' ')
            i++;
        ws->w[ws->count] = line + s;
        ws->n[ws->count] = i - s;
        ws->count++;
    }
}

static int word_is(const struct words *ws, size_t i, const char *s)
{
    return i < ws->count && ws->n[i] == strlen(s) && memcmp(ws->w[i], s, ws->n[i]) == 0;
}

static void copy_word(char *dst, size_t dstsz, const struct words *ws, size_t i)
{
    size_t n = ws->n[i] < dstsz - 1 ? ws->n[i] : dstsz - 1;

    memcpy(dst, ws->w[i], n);
    dst[n] = '\0';
}

static int chars_ok(const char *s, size_t n, const char *set)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (s[i] == '\0' || strchr(set, s[i]) == NULL)
            return 0;
    return 1;
}

static int arch_ok(const char *s, size_t n)
{
    return n > 0 && n < 32 && chars_ok(s, n, ALNUM "_");
}

static int osword_ok(const char *s, size_t n)
{
    return n > 0 && n < 64 && chars_ok(s, n, ALNUM "._+~-");
}

static int modversion_ok(const char *s, size_t n)
{
    return n > 0 && n < 64 && chars_ok(s, n, ALNUM "._+~:-");
}

static int number_ok(const char *s, size_t n, long long *v)
{
    size_t i;
    long long x = 0;

    if (n == 0 || n > 15)
        return 0;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        x = x * 10 + (s[i] - '0');
    }
    *v = x;
    return 1;
}

static int rel_fill(struct deploy_rel *r, const struct words *ws, size_t ik, size_t id, size_t is,
                    int ip)
{
    memset(r, 0, sizeof(*r));
    if (!kf_krel_valid_n(ws->w[ik], ws->n[ik]) ||
        !kf_driver_version_valid_n(ws->w[id], ws->n[id]) || !sha_valid_n(ws->w[is], ws->n[is]))
        return 0;
    copy_word(r->kernel, sizeof(r->kernel), ws, ik);
    copy_word(r->driver, sizeof(r->driver), ws, id);
    copy_word(r->sha256, sizeof(r->sha256), ws, is);
    if (ip >= 0) {
        if (ws->n[ip] == 0 || ws->n[ip] > DEPLOY_PROFILE_MAX ||
            !chars_ok(ws->w[ip], ws->n[ip], ALNUM "_-"))
            return 0;
        copy_word(r->profile, sizeof(r->profile), ws, (size_t)ip);
    }
    return 1;
}

static int bad_line(struct kf_err *err, const char *line, size_t n, const char *why)
{
    char shown[200];

    return kf_err_set(err, KF_EUNTRUSTED, "node check: %s: '%s'", why,
                      kf_escape_to(shown, sizeof(shown), line, n));
}

/* One record of check's output. */
static int check_line(struct deploy_check *c, const char *line, size_t n, int *seen,
                      struct kf_err *err)
{
    struct words ws;
    long long v;

    split_words(line, n, &ws);
    if (ws.count == 0)
        return 0;
    if (word_is(&ws, 0, "node")) {
        if (ws.count != 2 || !number_ok(ws.w[1], ws.n[1], &v) || v < 1 || v > 1000)
            return bad_line(err, line, n, "bad protocol line");
        c->protocol = (int)v;
        seen[0] = 1;
    } else if (word_is(&ws, 0, "arch")) {
        if (ws.count != 2 || !arch_ok(ws.w[1], ws.n[1]))
            return bad_line(err, line, n, "bad architecture");
        copy_word(c->arch, sizeof(c->arch), &ws, 1);
        seen[1] = 1;
    } else if (word_is(&ws, 0, "running")) {
        if (ws.count != 2 || !kf_krel_valid_n(ws.w[1], ws.n[1]))
            return bad_line(err, line, n, "running kernel release rejected");
        copy_word(c->running, sizeof(c->running), &ws, 1);
        seen[2] = 1;
    } else if (word_is(&ws, 0, "kernel")) {
        if (ws.count != 2 || !kf_krel_valid_n(ws.w[1], ws.n[1]))
            return bad_line(err, line, n, "kernel release rejected");
        if (c->nkernels == DEPLOY_MAX_KERNELS)
            return bad_line(err, line, n, "more than 64 kernels");
        copy_word(c->kernels[c->nkernels++], sizeof(c->kernels[0]), &ws, 1);
    } else if (word_is(&ws, 0, "os")) {
        if (ws.count != 3)
            return bad_line(err, line, n, "bad os line");
        if (!(ws.n[1] == 1 && ws.w[1][0] == '-')) {
            if (!osword_ok(ws.w[1], ws.n[1]) || !osword_ok(ws.w[2], ws.n[2]))
                return bad_line(err, line, n, "bad os id or version");
            copy_word(c->os_id, sizeof(c->os_id), &ws, 1);
            copy_word(c->os_version, sizeof(c->os_version), &ws, 2);
        }
    } else if (word_is(&ws, 0, "free")) {
        if (ws.count != 3 || !number_ok(ws.w[2], ws.n[2], &v))
            return bad_line(err, line, n, "bad free-space line");
        if (word_is(&ws, 1, "/var/lib/kfleet"))
            c->free_var_kib = v;
        else if (word_is(&ws, 1, "/lib/modules"))
            c->free_mod_kib = v;
    } else if (word_is(&ws, 0, "held")) {
        /* held DRIVER KERNEL SHA */
        if (ws.count != 4 || c->nheld == DEPLOY_MAX_RELEASES)
            return bad_line(err, line, n, "bad held line");
        if (!rel_fill(&c->held[c->nheld], &ws, 2, 1, 3, -1))
            return bad_line(err, line, n, "bad held release");
        c->nheld++;
    } else if (word_is(&ws, 0, "current") || word_is(&ws, 0, "previous")) {
        int cur = word_is(&ws, 0, "current");
        struct deploy_rel *arr = cur ? c->current : c->previous;
        size_t *cnt = cur ? &c->ncurrent : &c->nprevious;
        if (ws.count != 5 || *cnt == DEPLOY_MAX_KERNELS || !rel_fill(&arr[*cnt], &ws, 1, 2, 3, 4))
            return bad_line(err, line, n, "bad release line");
        (*cnt)++;
    } else if (word_is(&ws, 0, "files")) {
        enum deploy_files f;
        if (ws.count != 3 || !kf_krel_valid_n(ws.w[1], ws.n[1]) || c->nfiles == DEPLOY_MAX_KERNELS)
            return bad_line(err, line, n, "bad files line");
        if (word_is(&ws, 2, "ok"))
            f = DEPLOY_FILES_OK;
        else if (word_is(&ws, 2, "changed"))
            f = DEPLOY_FILES_CHANGED;
        else if (word_is(&ws, 2, "missing"))
            f = DEPLOY_FILES_MISSING;
        else
            return bad_line(err, line, n, "bad files state");
        copy_word(c->files_kernel[c->nfiles], sizeof(c->files_kernel[0]), &ws, 1);
        c->files[c->nfiles++] = f;
    } else if (word_is(&ws, 0, "loaded")) {
        struct deploy_loaded *l;
        char name[KF_MODNAME_MAX + 2];
        if (ws.count != 3 || ws.n[1] > KF_MODNAME_MAX || c->nloaded == DEPLOY_MAX_MODULES)
            return bad_line(err, line, n, "bad loaded line");
        copy_word(name, sizeof(name), &ws, 1);
        if (!kf_modname_valid(name))
            return bad_line(err, line, n, "bad module name");
        l = &c->loaded[c->nloaded];
        memset(l, 0, sizeof(*l));
        snprintf(l->name, sizeof(l->name), "%s", name);
        if (word_is(&ws, 2, "none")) {
            l->loaded = 0;
        } else if (word_is(&ws, 2, "-")) {
            l->loaded = 1;
        } else {
            if (!modversion_ok(ws.w[2], ws.n[2]))
                return bad_line(err, line, n, "bad module version");
            l->loaded = 1;
            copy_word(l->version, sizeof(l->version), &ws, 2);
        }
        c->nloaded++;
    } else if (word_is(&ws, 0, "userspace")) {
        if (ws.count != 2)
            return bad_line(err, line, n, "bad userspace line");
        if (!word_is(&ws, 1, "-")) {
            if (!kf_driver_version_valid_n(ws.w[1], ws.n[1]))
                return bad_line(err, line, n, "bad userspace driver version");
            copy_word(c->userspace, sizeof(c->userspace), &ws, 1);
        }
    } else if (word_is(&ws, 0, "smi")) {
        c->smi_present = word_is(&ws, 1, "present");
    } else if (word_is(&ws, 0, "secure_boot")) {
        c->secure_boot = word_is(&ws, 1, "enabled")    ? INV_YES
                         : word_is(&ws, 1, "disabled") ? INV_NO
                                                       : INV_UNKNOWN;
    } else if (word_is(&ws, 0, "sig_enforce")) {
        c->sig_enforce = word_is(&ws, 1, "1") ? 1 : word_is(&ws, 1, "0") ? 0 : -1;
    } else if (word_is(&ws, 0, "lock")) {
        if (word_is(&ws, 1, "free") && ws.count == 2) {
            c->locked = 0;
        } else {
            if (ws.count != 3 || ws.n[1] > DEPLOY_OWNER_MAX ||
                !chars_ok(ws.w[1], ws.n[1], ALNUM "._:@-") || !number_ok(ws.w[2], ws.n[2], &v))
                return bad_line(err, line, n, "bad lock line");
            c->locked = 1;
            copy_word(c->lock_owner, sizeof(c->lock_owner), &ws, 1);
            c->lock_since = v;
        }
    } else if (word_is(&ws, 0, "tools")) {
        size_t i, off = 0;
        if (!word_is(&ws, 1, "missing"))
            return bad_line(err, line, n, "bad tools line");
        for (i = 2; i < ws.count && i < 8; i++) {
            if (ws.n[i] > 32 || !chars_ok(ws.w[i], ws.n[i], ALNUM "._+-"))
                return bad_line(err, line, n, "bad tool name");
            off += (size_t)snprintf(c->missing_tools + off, sizeof(c->missing_tools) - off,
                                    "%s%.*s", off ? " " : "", (int)ws.n[i], ws.w[i]);
            if (off >= sizeof(c->missing_tools))
                break;
        }
        if (c->missing_tools[0] == '\0')
            snprintf(c->missing_tools, sizeof(c->missing_tools), "(unnamed)");
    }
    /* Unknown tags: a newer node.sh may say more; ignore. */
    return 0;
}

int deploy_check_parse(const char *out, size_t len, struct deploy_check *c, struct kf_err *err)
{
    int seen[3] = {0, 0, 0};
    const char *p = out, *end = out + len, *last = NULL;
    size_t last_n = 0;
    int rc;

    memset(c, 0, sizeof(*c));
    c->free_var_kib = -1;
    c->free_mod_kib = -1;
    c->sig_enforce = -1;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n > 0 && p[n - 1] == '\r')
            n--;
        if (n > 4096)
            return bad_line(err, p, 64, "line longer than 4096 bytes");
        if (n > 0) {
            last = p;
            last_n = n;
            if (!(n == 8 && memcmp(p, "ok check", 8) == 0)) {
                rc = check_line(c, p, n, seen, err);
                if (rc < 0)
                    return rc;
            }
        }
        p = nl ? nl + 1 : end;
    }
    if (last == NULL || last_n != 8 || memcmp(last, "ok check", 8) != 0)
        return kf_err_set(err, KF_EPARSE, "node check: output does not end in 'ok check'");
    if (!seen[0] || !seen[1] || !seen[2])
        return kf_err_set(err, KF_EPARSE, "node check: no %s line",
                          !seen[0]   ? "'node'"
                          : !seen[1] ? "'arch'"
                                     : "'running'");
    if (c->protocol != 1)
        return kf_err_set(err, KF_EUNSUPPORTED, "node check: protocol %d, kfleet speaks 1",
                          c->protocol);
    return 0;
}

const struct deploy_rel *deploy_check_current(const struct deploy_check *c, const char *kernel)
{
    size_t i;

    for (i = 0; i < c->ncurrent; i++)
        if (strcmp(c->current[i].kernel, kernel) == 0)
            return &c->current[i];
    return NULL;
}

const struct deploy_rel *deploy_check_previous(const struct deploy_check *c, const char *kernel)
{
    size_t i;

    for (i = 0; i < c->nprevious; i++)
        if (strcmp(c->previous[i].kernel, kernel) == 0)
            return &c->previous[i];
    return NULL;
}

int deploy_check_holds(const struct deploy_check *c, const char *driver, const char *kernel,
                       const char *sha256)
{
    size_t i;

    for (i = 0; i < c->nheld; i++)
        if (strcmp(c->held[i].kernel, kernel) == 0 && strcmp(c->held[i].driver, driver) == 0 &&
            (sha256 == NULL || strcmp(c->held[i].sha256, sha256) == 0))
            return 1;
    return 0;
}

enum deploy_files deploy_check_files(const struct deploy_check *c, const char *kernel)
{
    size_t i;

    for (i = 0; i < c->nfiles; i++)
        if (strcmp(c->files_kernel[i], kernel) == 0)
            return c->files[i];
    return DEPLOY_FILES_UNKNOWN;
}

const struct deploy_loaded *deploy_check_loaded(const struct deploy_check *c, const char *name)
{
    size_t i, j, n = strlen(name);

    for (i = 0; i < c->nloaded; i++) {
        const char *a = c->loaded[i].name;
        if (strlen(a) != n)
            continue;
        for (j = 0; j < n; j++) {
            char x = a[j] == '-' ? '_' : a[j], y = name[j] == '-' ? '_' : name[j];
            if (x != y)
                break;
        }
        if (j == n)
            return &c->loaded[i];
    }
    return NULL;
}

/* ---- results -------------------------------------------------------------------- */

/* The node's message, display-safe, as much of it as out holds (kf_escape_to
 * keeps a quarter, for text that may be all escapes). */
static void escape_into(char *out, size_t outsz, const char *s, size_t n)
{
    struct buf b;

    buf_init(&b, 0);
    if (kf_escape(&b, s, n, outsz / 2) == 0 && b.len < outsz)
        snprintf(out, outsz, "%s", buf_cstr(&b));
    else
        kf_escape_to(out, outsz, s, n);
    buf_release(&b);
}

void deploy_result_parse(const char *out, size_t len, const char *action, int exit_status,
                         struct deploy_result *r)
{
    const char *p = out, *end = out + len, *last = NULL;
    size_t last_n = 0, alen = strlen(action);

    memset(r, 0, sizeof(*r));
    r->exit_status = exit_status;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n > 0 && p[n - 1] == '\r')
            n--;
        if (n > 0) {
            last = p;
            last_n = n;
        }
        p = nl ? nl + 1 : end;
    }
    if (last != NULL && last_n == 3 + alen && memcmp(last, "ok ", 3) == 0 &&
        memcmp(last + 3, action, alen) == 0) {
        if (exit_status == 0) {
            r->ok = 1;
            return;
        }
        snprintf(r->word, sizeof(r->word), "protocol");
        snprintf(r->msg, sizeof(r->msg), "node.sh %s said ok but exited with status %d", action,
                 exit_status);
        return;
    }
    if (last != NULL && last_n > 6 && memcmp(last, "error ", 6) == 0) {
        const char *w = last + 6, *sp;
        size_t wn, rest;
        sp = memchr(w, ' ', last_n - 6);
        wn = sp ? (size_t)(sp - w) : last_n - 6;
        if (wn > 0 && wn < sizeof(r->word) && chars_ok(w, wn, ALNUM "_-")) {
            memcpy(r->word, w, wn);
            r->word[wn] = '\0';
            rest = sp ? last_n - 6 - wn - 1 : 0;
            escape_into(r->msg, sizeof(r->msg), sp ? sp + 1 : "", rest);
            if (exit_status == 0)
                r->exit_status = -1; /* an error line with exit 0 is not a success */
            return;
        }
    }
    snprintf(r->word, sizeof(r->word), "protocol");
    if (last != NULL) {
        char shown[200];
        snprintf(r->msg, sizeof(r->msg), "node.sh %s exited with status %d; last line: '%s'",
                 action, exit_status, kf_escape_to(shown, sizeof(shown), last, last_n));
    } else {
        snprintf(r->msg, sizeof(r->msg), "node.sh %s exited with status %d and printed nothing",
                 action, exit_status);
    }
}

/* ---- prior ---------------------------------------------------------------------- */

json_t *deploy_prior_to_json(const struct deploy_prior *p)
{
    json_t *o = json_object(), *ks = json_object();
    size_t i;
    int bad = o == NULL || ks == NULL;

    for (i = 0; !bad && i < p->n; i++) {
        json_t *k = json_object();
        bad |= k == NULL;
        if (bad)
            break;
        bad |= json_object_set_new(k, "driver",
                                   p->k[i].driver[0] ? json_string(p->k[i].driver) : json_null());
        bad |= json_object_set_new(k, "sha256",
                                   p->k[i].sha256[0] ? json_string(p->k[i].sha256) : json_null());
        bad |= json_object_set_new(ks, p->k[i].kernel, k);
    }
    if (!bad) {
        bad |= json_object_set_new(o, "kernels", ks);
        ks = NULL;
        bad |= json_object_set_new(o, "loaded",
                                   p->loaded ? json_string(p->loaded_version) : json_null());
    }
    if (bad) {
        json_decref(ks);
        json_decref(o);
        return NULL;
    }
    return o;
}

int deploy_prior_from_json(const json_t *j, struct deploy_prior *p, struct kf_err *err)
{
    const json_t *ks, *v, *l;
    const char *kernel;

    memset(p, 0, sizeof(*p));
    if (!json_is_object(j) || !json_is_object(ks = json_object_get(j, "kernels")))
        return kf_err_set(err, KF_EPARSE, "prior state: not an object with 'kernels'");
    json_object_foreach((json_t *)ks, kernel, v)
    {
        const json_t *d = json_object_get(v, "driver"), *s = json_object_get(v, "sha256");
        struct deploy_prior_kernel *k;
        if (p->n == DEPLOY_MAX_KERNELS || !kf_krel_valid(kernel))
            return kf_err_set(err, KF_EPARSE, "prior state: bad kernel entry");
        k = &p->k[p->n++];
        snprintf(k->kernel, sizeof(k->kernel), "%s", kernel);
        if (json_is_string(d)) {
            if (!kf_driver_version_valid(json_string_value(d)))
                return kf_err_set(err, KF_EPARSE, "prior state: bad driver for %s", kernel);
            snprintf(k->driver, sizeof(k->driver), "%s", json_string_value(d));
        }
        if (json_is_string(s)) {
            const char *sv = json_string_value(s);
            if (!sha_valid_n(sv, strlen(sv)))
                return kf_err_set(err, KF_EPARSE, "prior state: bad sha256 for %s", kernel);
            snprintf(k->sha256, sizeof(k->sha256), "%s", sv);
        }
    }
    l = json_object_get(j, "loaded");
    if (json_is_string(l)) {
        const char *lv = json_string_value(l);
        p->loaded = 1;
        if (lv[0] && !modversion_ok(lv, strlen(lv)))
            return kf_err_set(err, KF_EPARSE, "prior state: bad loaded version");
        snprintf(p->loaded_version, sizeof(p->loaded_version), "%s", lv);
    }
    p->set = 1;
    return 0;
}

const struct deploy_prior_kernel *deploy_prior_kernel(const struct deploy_prior *p,
                                                      const char *kernel)
{
    size_t i;

    for (i = 0; i < p->n; i++)
        if (strcmp(p->k[i].kernel, kernel) == 0)
            return &p->k[i];
    return NULL;
}
