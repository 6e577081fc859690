#include "valid.h"

#include <string.h>

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int is_alnum(int c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

int kf_krel_valid_n(const char *s, size_t n)
{
    size_t i;

    if (s == NULL || n == 0 || n > KF_KREL_MAX || !is_digit((unsigned char)s[0]))
        return 0;
    for (i = 1; i < n; i++) {
        int c = (unsigned char)s[i];
        if (!is_alnum(c) && c != '.' && c != '-' && c != '_' && c != '+')
            return 0;
    }
    return 1;
}

int kf_krel_valid(const char *s)
{
    return s != NULL && kf_krel_valid_n(s, strnlen(s, KF_KREL_MAX + 1));
}

int kf_driver_version_valid_n(const char *s, size_t n)
{
    size_t i, parts = 1;
    int after_dot = 1; /* so a leading '.' is rejected like "5..4" */

    if (s == NULL || n == 0 || n > KF_DRIVER_MAX)
        return 0;
    for (i = 0; i < n; i++) {
        if (is_digit((unsigned char)s[i])) {
            after_dot = 0;
        } else if (s[i] == '.' && !after_dot) {
            after_dot = 1;
            parts++;
        } else {
            return 0;
        }
    }
    return !after_dot && parts >= 2 && parts <= 4;
}

int kf_driver_version_valid(const char *s)
{
    return s != NULL && kf_driver_version_valid_n(s, strnlen(s, KF_DRIVER_MAX + 1));
}

int kf_modname_valid(const char *s)
{
    size_t i, n;

    if (s == NULL)
        return 0;
    n = strnlen(s, KF_MODNAME_MAX + 1);
    if (n == 0 || n > KF_MODNAME_MAX)
        return 0;
    for (i = 0; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}
