#include "buf.h"

#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char empty_str[1];

void buf_init(struct buf *b, size_t limit)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->limit = limit;
    b->dropped = 0;
}

void buf_release(struct buf *b)
{
    if (b == NULL)
        return;
    free(b->data);
    buf_init(b, b->limit);
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    b->dropped = 0;
}

int buf_reserve(struct buf *b, size_t extra)
{
    size_t need, cap;
    char *p;

    if (extra > SIZE_MAX - b->len - 1)
        return KF_ENOMEM;
    need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    p = realloc(b->data, cap);
    if (p == NULL)
        return KF_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    size_t take = n;
    int rc;

    if (b->limit && b->len + n > b->limit)
        take = b->limit > b->len ? b->limit - b->len : 0;
    if (take > 0) {
        rc = buf_reserve(b, take);
        if (rc < 0)
            return rc;
        memcpy(b->data + b->len, p, take);
        b->len += take;
        b->data[b->len] = '\0';
    }
    if (take < n) {
        b->dropped += n - take;
        return KF_ETRUNC;
    }
    return 0;
}

int buf_puts(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    int n, rc;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return KF_EINVAL;
    if ((size_t)n < sizeof(small))
        return buf_append(b, small, (size_t)n);

    char *big = malloc((size_t)n + 1);
    if (big == NULL)
        return KF_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    rc = buf_append(b, big, (size_t)n);
    free(big);
    return rc;
}

const char *buf_cstr(struct buf *b)
{
    if (b->data == NULL)
        return empty_str;
    b->data[b->len] = '\0';
    return b->data;
}

char *buf_detach(struct buf *b, size_t *len)
{
    char *p = b->data;

    if (p == NULL) {
        p = calloc(1, 1);
    } else {
        p[b->len] = '\0';
    }
    if (len != NULL)
        *len = b->len;
    buf_init(b, b->limit);
    return p;
}
