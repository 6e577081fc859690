#include "log.h"

#include <stdarg.h>
#include <stdio.h>

static enum log_level g_level = LOG_INFO;
static void (*g_hook)(void *);
static void *g_hook_arg;

void log_set_level(enum log_level level)
{
    g_level = level;
}

enum log_level log_get_level(void)
{
    return g_level;
}

void log_set_hook(void (*before_write)(void *), void *arg)
{
    g_hook = before_write;
    g_hook_arg = arg;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    va_list ap;

    if (level > g_level)
        return;
    if (g_hook != NULL)
        g_hook(g_hook_arg);
    fprintf(stderr, "kfleet: %s: ", names[level]);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
