/* Ansible host ranges: "gpu[001:128]", "node[a:f]", "x[0:10:2]", and several
 * ranges in one name ("r[1:2]n[a:b]").
 *
 * The rules are those of Ansible's expand_hostname_range(), except that what
 * Ansible silently turns into zero hosts or a Python exception is an error:
 *  - [begin:end] or [begin:end:step], inclusive; an empty begin means 0;
 *  - numbers are decimal digits; a begin that starts with '0' and has more
 *    than one digit fixes the width, and end must then be as wide;
 *  - letters are single ASCII letters in the order a..z then A..Z;
 *  - end before begin, a zero or non-numeric step, a letter with a number,
 *    a missing end, a '[' without its ']' are errors;
 *  - the first range varies slowest ("r[1:2]n[a:b]" gives r1na r1nb r2na
 *    r2nb), as Ansible's recursion over the rest of the name does.
 *
 * The count is computed before anything is allocated, so "h[0:999999999]"
 * costs nothing but its error. */
#include "inventory.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bound on the text of all expanded names, so a long name with a big range
 * cannot ask for gigabytes. */
#define RANGE_MAX_BYTES ((size_t)64 << 20)
/* Numbers above this would not fit the arithmetic below; no host range
 * needs them. */
#define RANGE_MAX_DIGITS 18

static const char letters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

struct rpart {
    size_t lit_off, lit_len; /* literal text before this range */
    int is_letters;
    unsigned long long beg, step;
    int width; /* zero-padding width, 0 = none */
    size_t count;
};

static int all_digits(const char *s, size_t n)
{
    size_t i;

    if (n == 0)
        return 0;
    for (i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* Position of a single ASCII letter in Ansible's order, or -1. */
static int letter_index(const char *s, size_t n)
{
    const char *p;

    if (n != 1 || s[0] == '\0')
        return -1;
    p = strchr(letters, s[0]);
    return p ? (int)(p - letters) : -1;
}

static unsigned long long parse_num(const char *s, size_t n)
{
    unsigned long long v = 0;
    size_t i;

    for (i = 0; i < n; i++)
        v = v * 10 + (unsigned long long)(s[i] - '0');
    return v;
}

/* Parses the text between '[' and ']'. On failure writes why into why. */
static int parse_part(const char *s, size_t n, struct rpart *rp, char *why, size_t whysz)
{
    const char *c1, *c2 = NULL, *beg, *end, *step = NULL;
    size_t blen, elen, slen = 0;
    int bi, ei;

    c1 = memchr(s, ':', n);
    if (c1 == NULL) {
        snprintf(why, whysz, "expected [begin:end] or [begin:end:step]");
        return KF_EINVAL;
    }
    c2 = memchr(c1 + 1, ':', n - (size_t)(c1 + 1 - s));
    if (c2 != NULL && memchr(c2 + 1, ':', n - (size_t)(c2 + 1 - s)) != NULL) {
        snprintf(why, whysz, "expected [begin:end] or [begin:end:step]");
        return KF_EINVAL;
    }
    beg = s;
    blen = (size_t)(c1 - s);
    end = c1 + 1;
    elen = (size_t)((c2 ? c2 : s + n) - end);
    if (c2 != NULL) {
        step = c2 + 1;
        slen = (size_t)(s + n - step);
    }
    if (blen == 0) {
        /* Ansible: an empty begin is 0. */
        beg = "0";
        blen = 1;
    }
    if (elen == 0) {
        snprintf(why, whysz, "the end is missing");
        return KF_EINVAL;
    }
    rp->step = 1;
    if (step != NULL) {
        if (!all_digits(step, slen) || slen > RANGE_MAX_DIGITS ||
            (rp->step = parse_num(step, slen)) == 0) {
            snprintf(why, whysz, "the step must be a positive integer");
            return KF_EINVAL;
        }
    }

    bi = letter_index(beg, blen);
    ei = letter_index(end, elen);
    if (bi >= 0 && ei >= 0) {
        if (ei < bi) {
            snprintf(why, whysz, "end '%c' is before begin '%c'", end[0], beg[0]);
            return KF_EINVAL;
        }
        rp->is_letters = 1;
        rp->beg = (unsigned long long)bi;
        rp->width = 0;
        rp->count = (size_t)((unsigned long long)(ei - bi) / rp->step + 1);
        return 0;
    }
    if ((bi >= 0 && all_digits(end, elen)) || (ei >= 0 && all_digits(beg, blen))) {
        snprintf(why, whysz, "begin and end mix a letter and a number");
        return KF_EINVAL;
    }
    if (!all_digits(beg, blen) || !all_digits(end, elen)) {
        snprintf(why, whysz, "begin and end must be numbers or single letters");
        return KF_EINVAL;
    }
    if (blen > RANGE_MAX_DIGITS || elen > RANGE_MAX_DIGITS) {
        snprintf(why, whysz, "numbers longer than %d digits", RANGE_MAX_DIGITS);
        return KF_EINVAL;
    }
    rp->width = 0;
    if (beg[0] == '0' && blen > 1) {
        if (elen != blen) {
            snprintf(why, whysz, "zero-padded begin and end must have the same width");
            return KF_EINVAL;
        }
        rp->width = (int)blen;
    }
    rp->is_letters = 0;
    rp->beg = parse_num(beg, blen);
    {
        unsigned long long e = parse_num(end, elen), cnt;

        if (e < rp->beg) {
            snprintf(why, whysz, "end %llu is before begin %llu", e, rp->beg);
            return KF_EINVAL;
        }
        cnt = (e - rp->beg) / rp->step + 1;
        /* Saturate: the caller compares the product with INV_RANGE_MAX. */
        rp->count =
            cnt > (unsigned long long)INV_RANGE_MAX ? (size_t)INV_RANGE_MAX + 1 : (size_t)cnt;
    }
    return 0;
}

/* Length of the longest text one range field can print. */
static size_t part_maxlen(const struct rpart *rp)
{
    char tmp[32];
    unsigned long long last;
    int len;

    if (rp->is_letters)
        return 1;
    last = rp->beg + (unsigned long long)(rp->count - 1) * rp->step;
    len = snprintf(tmp, sizeof(tmp), "%0*llu", rp->width, last);
    return len > 0 ? (size_t)len : 0;
}

static size_t part_print(const struct rpart *rp, size_t i, char *dst)
{
    unsigned long long v = rp->beg + (unsigned long long)i * rp->step;

    if (rp->is_letters) {
        dst[0] = letters[v];
        return 1;
    }
    return (size_t)sprintf(dst, "%0*llu", rp->width, v);
}

int inv_expand_range(const char *pattern, char ***out, size_t *n, struct kf_err *err)
{
    char show[256], why[160];
    struct rpart *parts = NULL;
    size_t nparts = 0, cap = 0, pos = 0, total = 1, maxlen, tail_off, tail_len, i, k;
    size_t *odo = NULL;
    char **names = NULL;
    size_t plen;
    int rc = 0;

    *out = NULL;
    *n = 0;
    kf_err_clear(err);
    if (pattern == NULL)
        return kf_err_set(err, KF_EINVAL, "host pattern is NULL");
    plen = strlen(pattern);
    kf_escape_to(show, sizeof(show), pattern, plen);

    for (;;) {
        const char *lb = strchr(pattern + pos, '['), *rb;
        struct rpart rp;

        if (lb == NULL)
            break;
        rb = strchr(lb + 1, ']');
        if (rb == NULL) {
            rc = kf_err_set(err, KF_EINVAL, "host '%s': bad range: '[' without a matching ']'",
                            show);
            goto out;
        }
        memset(&rp, 0, sizeof(rp));
        rp.lit_off = pos;
        rp.lit_len = (size_t)(lb - pattern) - pos;
        if (parse_part(lb + 1, (size_t)(rb - lb - 1), &rp, why, sizeof(why)) < 0) {
            char r[128];

            kf_escape_to(r, sizeof(r), lb, (size_t)(rb - lb + 1));
            rc = kf_err_set(err, KF_EINVAL, "host '%s': bad range '%s': %s", show, r, why);
            goto out;
        }
        if (total > (size_t)INV_RANGE_MAX / rp.count)
            total = (size_t)INV_RANGE_MAX + 1;
        else
            total *= rp.count;
        if (nparts == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            struct rpart *np = realloc(parts, ncap * sizeof(*np));

            if (np == NULL) {
                rc = kf_err_set(err, KF_ENOMEM, "out of memory expanding host ranges");
                goto out;
            }
            parts = np;
            cap = ncap;
        }
        parts[nparts++] = rp;
        pos = (size_t)(rb - pattern) + 1;
    }
    tail_off = pos;
    tail_len = plen - pos;

    if (total > (size_t)INV_RANGE_MAX) {
        rc = kf_err_set(err, KF_EINVAL, "host '%s': ranges expand to more than %d names", show,
                        INV_RANGE_MAX);
        goto out;
    }
    /* The longest possible name: every literal plus each field's widest. */
    maxlen = plen;
    for (k = 0; k < nparts; k++)
        maxlen += part_maxlen(&parts[k]);
    if (maxlen + 1 > RANGE_MAX_BYTES / total) {
        rc = kf_err_set(err, KF_EINVAL, "host '%s': ranges expand to more than %zu MiB of names",
                        show, RANGE_MAX_BYTES >> 20);
        goto out;
    }

    names = calloc(total, sizeof(*names));
    odo = calloc(nparts ? nparts : 1, sizeof(*odo));
    if (names == NULL || odo == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory expanding host ranges");
        goto out;
    }
    for (i = 0; i < total; i++) {
        char *name = malloc(maxlen + 1), *p;

        if (name == NULL) {
            rc = kf_err_set(err, KF_ENOMEM, "out of memory expanding host ranges");
            goto out;
        }
        p = name;
        for (k = 0; k < nparts; k++) {
            memcpy(p, pattern + parts[k].lit_off, parts[k].lit_len);
            p += parts[k].lit_len;
            p += part_print(&parts[k], odo[k], p);
        }
        memcpy(p, pattern + tail_off, tail_len);
        p[tail_len] = '\0';
        names[i] = name;
        /* Odometer: the last range turns fastest. */
        for (k = nparts; k-- > 0;) {
            if (++odo[k] < parts[k].count)
                break;
            odo[k] = 0;
        }
    }
    *out = names;
    *n = total;
    names = NULL; /* transferred */
out:
    if (names != NULL)
        kf_strv_free(names, total);
    free(odo);
    free(parts);
    return rc;
}
