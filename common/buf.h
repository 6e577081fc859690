/* Growable byte buffers with an optional hard limit.
 *
 * A buffer always keeps one spare byte so buf_cstr() can NUL-terminate it.
 * With a limit set, an append that would pass it stores what fits, counts the
 * rest in `dropped`, and returns KF_ETRUNC: memory stays bounded whatever a
 * remote peer sends. */
#ifndef KF_BUF_H
#define KF_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t limit;     /* 0 = unlimited */
    uint64_t dropped; /* bytes refused because of limit */
};

void buf_init(struct buf *b, size_t limit);
void buf_release(struct buf *b);
/* Empties the buffer, keeping its memory and limit. */
void buf_reset(struct buf *b);
int buf_reserve(struct buf *b, size_t extra);
int buf_append(struct buf *b, const void *p, size_t n);
int buf_puts(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The contents as a NUL-terminated string (valid until the next append). */
const char *buf_cstr(struct buf *b);
/* Hands the data to the caller (NUL-terminated, free() it) and resets b. */
char *buf_detach(struct buf *b, size_t *len);

#endif
