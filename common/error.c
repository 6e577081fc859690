#include "error.h"

#include <stdio.h>
#include <string.h>

const char *kf_strerror(int code)
{
    switch (code) {
    case KF_OK:
        return "success";
#define KF_ERR_STR(name, val, msg)                                                                 \
    case val:                                                                                      \
        return msg;
        KF_ERRNO_MAP(KF_ERR_STR)
#undef KF_ERR_STR
    }
    return "unknown error";
}

const char *kf_errname(int code)
{
    switch (code) {
    case KF_OK:
        return "OK";
#define KF_ERR_NAME(name, val, msg)                                                                \
    case val:                                                                                      \
        return #name;
        KF_ERRNO_MAP(KF_ERR_NAME)
#undef KF_ERR_NAME
    }
    return "UNKNOWN";
}

void kf_err_clear(struct kf_err *e)
{
    if (e == NULL)
        return;
    e->code = 0;
    e->msg[0] = '\0';
}

int kf_err_setv(struct kf_err *e, int code, const char *fmt, va_list ap)
{
    if (e == NULL)
        return code;
    e->code = code;
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    return code;
}

int kf_err_set(struct kf_err *e, int code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    kf_err_setv(e, code, fmt, ap);
    va_end(ap);
    return code;
}

int kf_err_prefix(struct kf_err *e, const char *fmt, ...)
{
    char prefix[256], old[sizeof(e->msg)];
    va_list ap;

    if (e == NULL)
        return 0;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof(old));
    snprintf(e->msg, sizeof(e->msg), "%s%s", prefix, old[0] ? old : kf_strerror(e->code));
    return e->code;
}

const char *kf_err_msg(const struct kf_err *e)
{
    if (e == NULL)
        return "";
    return e->msg[0] ? e->msg : kf_strerror(e->code);
}
