#include "text.h"

#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kf_shquote(struct buf *b, const char *s)
{
    int rc = buf_append(b, "'", 1);

    for (; rc == 0 && *s; s++) {
        if (*s == '\'')
            rc = buf_append(b, "'\\''", 4);
        else
            rc = buf_append(b, s, 1);
    }
    if (rc == 0)
        rc = buf_append(b, "'", 1);
    return rc;
}

int kf_escape(struct buf *b, const char *s, size_t n, size_t max_out)
{
    size_t i, shown = n < max_out ? n : max_out;
    int rc = 0;

    for (i = 0; rc == 0 && i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\')
            rc = buf_append(b, "\\\\", 2);
        else if (c >= 0x20 && c < 0x7f)
            rc = buf_append(b, &s[i], 1);
        else
            rc = buf_printf(b, "\\x%02x", c);
    }
    if (rc == 0 && shown < n)
        rc = buf_append(b, "...", 3);
    return rc;
}

const char *kf_escape_to(char *out, size_t outsz, const char *s, size_t n)
{
    struct buf b;

    if (outsz == 0)
        return out;
    buf_init(&b, outsz - 1);
    /* A truncated result is still a useful, safe prefix. */
    (void)kf_escape(&b, s, n, outsz / 4 ? outsz / 4 : 1);
    snprintf(out, outsz, "%s", buf_cstr(&b));
    buf_release(&b);
    return out;
}

void kf_strv_free(char **v, size_t n)
{
    size_t i;

    if (v == NULL)
        return;
    for (i = 0; i < n; i++)
        free(v[i]);
    free(v);
}
