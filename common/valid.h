/* The rules for the few values that travel from nodes and configuration
 * into paths, file names, commands and SQL. One implementation, used by
 * every module: a value that passes here is safe to use in those places. */
#ifndef KF_VALID_H
#define KF_VALID_H

#include <stddef.h>

#define KF_KREL_MAX 64    /* bytes of a kernel release (uname's limit) */
#define KF_DRIVER_MAX 31  /* bytes of a driver version */
#define KF_MODNAME_MAX 55 /* bytes of a module name (MODULE_NAME_LEN - 1) */

/* A kernel release: a digit, then letters, digits, '.', '-', '_', '+', at
 * most KF_KREL_MAX bytes in all ("6.1.0-47-amd64"). The _n form checks
 * exactly n bytes of s (no NUL needed). */
int kf_krel_valid(const char *s);
int kf_krel_valid_n(const char *s, size_t n);

/* A driver version: digits and dots, 2 to 4 parts, at most KF_DRIVER_MAX
 * bytes ("550.54.15"). */
int kf_driver_version_valid(const char *s);
int kf_driver_version_valid_n(const char *s, size_t n);

/* A kernel module name: 1 to KF_MODNAME_MAX of [A-Za-z0-9_-]. */
int kf_modname_valid(const char *s);

#endif
