/* Text helpers with no fleet policy: shell quoting, safe display of
 * untrusted strings, host-name folding. */
#ifndef KF_TEXT_H
#define KF_TEXT_H

#include "buf.h"

#include <stddef.h>

/* Appends s to b as ONE POSIX shell word, single-quoted ('it'\''s').
 * This is the one quoting helper: every remote command that carries a value
 * is built with it. Returns 0 or KF_ENOMEM. */
int kf_shquote(struct buf *b, const char *s);

/* Appends s (n bytes) to b with every byte that is not printable ASCII
 * written as \xHH (and backslash as \\), so a string a node sent can be shown
 * on a terminal without carrying escape sequences. At most max_out input
 * bytes are shown; a longer string ends in "...". */
int kf_escape(struct buf *b, const char *s, size_t n, size_t max_out);

/* Writes into out (size outsz) a display-safe copy of s, as kf_escape with
 * max_out = outsz / 4. Always NUL-terminates; returns out. */
const char *kf_escape_to(char *out, size_t outsz, const char *s, size_t n);

/* Folds host names into ranges, like clustershell's nodeset:
 * {node001,node002,node003,node007,web} -> "node[001-003,007],web".
 * Names are split at their LAST run of digits into prefix, number, suffix;
 * names sharing prefix and suffix fold together. Zero-padded numbers fold
 * only with numbers of the same width; unpadded ones fold with each other.
 * Output is sorted (prefix, then numeric value) and duplicates are dropped.
 * Appends to b; returns 0 or KF_ENOMEM. */
int kf_hostfold(struct buf *b, const char *const *names, size_t n);

/* Frees an array of n malloc'ed strings and the array. NULL is a no-op. */
void kf_strv_free(char **v, size_t n);

#endif
