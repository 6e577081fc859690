/* Logging to stderr, one line per message, prefixed "kfleet: " and a level.
 * Debug lines appear only with -v (KF_LOG_DEBUG). */
#ifndef KF_LOG_H
#define KF_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_get_level() >= LOG_DEBUG)                                                          \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
    } while (0)

/* Called before each log line is written, e.g. to erase a progress line on a
 * TTY so a log line never lands in the middle of it. NULL to unset. */
void log_set_hook(void (*before_write)(void *), void *arg);

#endif
