/* kfleet error codes: one table, one kf_strerror().
 *
 * Every function that can fail returns 0 or a negative KF_E* code. Where a
 * person needs context (a file and line, a host, an option), the function also
 * fills a struct kf_err whose message says what was wrong and where. */
#ifndef KF_ERROR_H
#define KF_ERROR_H

#include <stdarg.h>
#include <stddef.h>

#define KF_ERRNO_MAP(X)                                                                            \
    X(NOMEM, -1, "out of memory")                                                                  \
    X(INVAL, -2, "invalid argument")                                                               \
    X(IO, -3, "input/output error")                                                                \
    X(NOENT, -4, "no such file or entry")                                                          \
    X(AGAIN, -5, "operation would block")                                                          \
    X(TIMEDOUT, -6, "timed out")                                                                   \
    X(CONNREFUSED, -7, "connection refused")                                                       \
    X(UNREACH, -8, "host unreachable")                                                             \
    X(DNS, -9, "name resolution failed")                                                           \
    X(SSH, -10, "SSH protocol error")                                                              \
    X(HOSTKEY_UNKNOWN, -11, "host key unknown")                                                    \
    X(HOSTKEY_CHANGED, -12, "host key changed")                                                    \
    X(AUTH, -13, "authentication failed")                                                          \
    X(SUDO, -14, "sudo needs a password")                                                          \
    X(TRUNC, -15, "output exceeded limit")                                                         \
    X(CMD, -16, "remote command failed")                                                           \
    X(PARSE, -17, "parse error")                                                                   \
    X(DB, -18, "state database error")                                                             \
    X(UNTRUSTED, -19, "untrusted value rejected")                                                  \
    X(CANCELED, -20, "canceled")                                                                   \
    X(EXIST, -21, "already exists")                                                                \
    X(UNSUPPORTED, -22, "not supported")                                                           \
    X(LOCKED, -23, "locked by another process")                                                    \
    X(SIGNAL, -24, "remote command killed by a signal")                                            \
    X(CLOSED, -25, "connection closed")                                                            \
    X(CONFIG, -26, "configuration error")                                                          \
    X(NOMATCH, -27, "no match")

enum {
    KF_OK = 0,
#define KF_ERR_ENUM(name, val, msg) KF_E##name = (val),
    KF_ERRNO_MAP(KF_ERR_ENUM)
#undef KF_ERR_ENUM
};

/* The fixed, short description of a KF_E* code ("timed out"). Never NULL. */
const char *kf_strerror(int code);

/* The symbolic name of a code without the KF_E prefix ("TIMEDOUT"), for JSON
 * output and logs that scripts match on. Never NULL. */
const char *kf_errname(int code);

/* A code plus a message for a person: what went wrong and where. */
struct kf_err {
    int code;
    char msg[512];
};

/* Clears an error to "no error". */
void kf_err_clear(struct kf_err *e);

/* Sets code and a printf-style message; returns code so callers can write
 * `return kf_err_set(err, KF_EPARSE, "%s:%d: ...", ...)`. err may be NULL. */
int kf_err_set(struct kf_err *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int kf_err_setv(struct kf_err *e, int code, const char *fmt, va_list ap);

/* Prefixes the existing message with more context ("inventory.yml: "). */
int kf_err_prefix(struct kf_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The message if one was set, else kf_strerror(code). */
const char *kf_err_msg(const struct kf_err *e);

#endif
