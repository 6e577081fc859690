/* Helpers shared by the unit tests: a private temporary directory, whole-
 * file reads and writes, and running a shell command. Each fails the
 * current cmocka test on error. */
#ifndef KF_TESTUTIL_H
#define KF_TESTUTIL_H

#include <stddef.h>

/* The test group's temporary directory, made by kft_setup_tmpdir. */
extern char kft_tmpdir[64];

/* cmocka group setup/teardown: make kft_tmpdir, and remove it with all it
 * holds. */
int kft_setup_tmpdir(void **state);
int kft_teardown_tmpdir(void **state);

/* kft_tmpdir/name; the result stays valid for the next 7 calls. */
const char *kft_tmp(const char *name);

/* The whole file, malloc'ed and NUL-terminated; *len gets its size. */
unsigned char *kft_read_all(const char *path, size_t *len);
void kft_write_all(const char *path, const void *p, size_t n);

/* system() of a printf-formatted command: its exit status, -1 if killed. */
int kft_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* True if the tool is on PATH. */
int kft_have(const char *tool);

#endif
