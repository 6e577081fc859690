/* Host-name folding for reports: "node[001-040,042],web".
 *
 * Each name is split at its LAST run of digits into prefix, number and
 * suffix ("rack1-node5" -> "rack1-node", "5", ""), so only names that
 * differ in that one number fold together. Rules, beyond text.h:
 * - A number with a leading zero ("007") is padded: it folds only with
 *   numbers of the same width. An unpadded number whose width equals a
 *   padded group's (same prefix and suffix) joins that group, so
 *   node001..node128 is "node[001-128]" as clustershell writes it; an
 *   unpadded one of any other width stays with the unpadded numbers
 *   ("node[1-9]"). Every range therefore expands back to exactly the
 *   names it came from.
 * - A digit run longer than 19 digits (beyond what a uint64_t is sure to
 *   hold) is not a number: such a name is kept whole, like a name with no
 *   digits. Serial numbers and hashes are not node indices anyway.
 * - NULL and empty names are skipped; equal names appear once.
 * - Order: prefix, then suffix, then names without a number before those
 *   with one, then width (unpadded first), then value; groups are joined
 *   by ','. The result depends only on the set of names, never on their
 *   input order. */
#include "text.h"

#include "error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HF_MAX_DIGITS 19

struct hf_name {
    const char *s; /* the whole name */
    size_t len;    /* strlen(s) */
    size_t plen;   /* prefix: s[0, plen); the whole name when !has_num */
    size_t nlen;   /* number: s[plen, plen + nlen) */
    int has_num;
    int padded;   /* leading zero and more than one digit */
    size_t width; /* group width: nlen for padded groups, 0 = unpadded */
    uint64_t val;
};

static int hf_is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Compares two byte ranges; a proper prefix sorts first. */
static int span_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);

    if (c != 0)
        return c < 0 ? -1 : 1;
    return an == bn ? 0 : an < bn ? -1 : 1;
}

static const char *hf_suffix(const struct hf_name *h, size_t *n)
{
    size_t off = h->has_num ? h->plen + h->nlen : h->len;

    *n = h->len - off;
    return h->s + off;
}

/* Orders by prefix and suffix only: the blocks whose padded widths decide
 * where unpadded numbers go. */
static int cmp_block(const void *va, const void *vb)
{
    const struct hf_name *a = va, *b = vb;
    const char *sa, *sb;
    size_t na, nb;
    int c = span_cmp(a->s, a->plen, b->s, b->plen);

    if (c != 0)
        return c;
    sa = hf_suffix(a, &na);
    sb = hf_suffix(b, &nb);
    return span_cmp(sa, na, sb, nb);
}

static int cmp_full(const void *va, const void *vb)
{
    const struct hf_name *a = va, *b = vb;
    int c = cmp_block(va, vb);

    if (c != 0)
        return c;
    if (a->has_num != b->has_num)
        return a->has_num ? 1 : -1;
    if (a->width != b->width)
        return a->width < b->width ? -1 : 1;
    if (a->val != b->val)
        return a->val < b->val ? -1 : 1;
    /* Only identical names get here (same group and value means the same
     * digits); strcmp keeps the order total all the same. */
    return strcmp(a->s, b->s);
}

static void hf_split(struct hf_name *h, const char *s)
{
    size_t end, start, i;

    memset(h, 0, sizeof(*h));
    h->s = s;
    h->len = strlen(s);
    h->plen = h->len;
    for (end = h->len; end > 0 && !hf_is_digit(s[end - 1]); end--)
        ;
    if (end == 0)
        return;
    for (start = end; start > 0 && hf_is_digit(s[start - 1]); start--)
        ;
    if (end - start > HF_MAX_DIGITS)
        return;
    h->has_num = 1;
    h->plen = start;
    h->nlen = end - start;
    h->padded = h->nlen > 1 && s[start] == '0';
    h->width = h->padded ? h->nlen : 0;
    for (i = start; i < end; i++)
        h->val = h->val * 10 + (uint64_t)(s[i] - '0'); /* <= 19 digits: no overflow */
}

/* Moves each unpadded number into the padded group of its own width when
 * its block has one. v must be sorted by cmp_block. */
static void hf_assign_widths(struct hf_name *v, size_t n)
{
    size_t i = 0, j, k;

    while (i < n) {
        uint32_t widths = 0; /* bit w: a padded number of width w exists */
        for (j = i; j < n && cmp_block(&v[i], &v[j]) == 0; j++)
            if (v[j].padded)
                widths |= (uint32_t)1 << v[j].nlen;
        for (k = i; k < j; k++)
            if (v[k].has_num && !v[k].padded && (widths & ((uint32_t)1 << v[k].nlen)))
                v[k].width = v[k].nlen;
        i = j;
    }
}

static int same_group(const struct hf_name *a, const struct hf_name *b)
{
    return a->has_num && b->has_num && a->width == b->width && cmp_block(a, b) == 0;
}

/* Appends the range list "001-003,007" of v[0, n) (one group, sorted,
 * without duplicates), written with the names' own digits. */
static int hf_ranges(struct buf *b, const struct hf_name *v, size_t n)
{
    size_t i = 0, j;
    int rc = 0;

    while (rc == 0 && i < n) {
        for (j = i; j + 1 < n && v[j + 1].val == v[j].val + 1; j++)
            ;
        if (i > 0)
            rc = buf_append(b, ",", 1);
        if (rc == 0)
            rc = buf_append(b, v[i].s + v[i].plen, v[i].nlen);
        if (rc == 0 && j > i) {
            rc = buf_append(b, "-", 1);
            if (rc == 0)
                rc = buf_append(b, v[j].s + v[j].plen, v[j].nlen);
        }
        i = j + 1;
    }
    return rc;
}

int kf_hostfold(struct buf *b, const char *const *names, size_t n)
{
    struct hf_name *v = NULL;
    size_t i, m = 0;
    int first = 1;
    int rc = 0;

    if (n == 0)
        return 0;
    v = calloc(n, sizeof(*v));
    if (v == NULL)
        return KF_ENOMEM;
    for (i = 0; i < n; i++)
        if (names[i] != NULL && names[i][0] != '\0')
            hf_split(&v[m++], names[i]);

    qsort(v, m, sizeof(*v), cmp_block);
    hf_assign_widths(v, m);
    qsort(v, m, sizeof(*v), cmp_full);

    /* Drop duplicates in place: equal names are adjacent now. */
    if (m > 0) {
        size_t w = 1;
        for (i = 1; i < m; i++)
            if (strcmp(v[i].s, v[w - 1].s) != 0)
                v[w++] = v[i];
        m = w;
    }

    i = 0;
    while (i < m) {
        size_t j = i + 1;
        while (j < m && same_group(&v[i], &v[j]))
            j++;
        if (!first)
            rc = buf_append(b, ",", 1);
        first = 0;
        if (rc == 0 && j - i == 1) {
            rc = buf_append(b, v[i].s, v[i].len);
        } else if (rc == 0) {
            size_t sn;
            const char *suf = hf_suffix(&v[i], &sn);
            rc = buf_append(b, v[i].s, v[i].plen);
            if (rc == 0)
                rc = buf_append(b, "[", 1);
            if (rc == 0)
                rc = hf_ranges(b, &v[i], j - i);
            if (rc == 0)
                rc = buf_append(b, "]", 1);
            if (rc == 0)
                rc = buf_append(b, suf, sn);
        }
        if (rc < 0)
            goto out;
        i = j;
    }
out:
    free(v);
    return rc;
}
