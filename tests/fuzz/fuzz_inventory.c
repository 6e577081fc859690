/* Fuzz target for inventory loading and host patterns: any bytes must load
 * or fail cleanly (no crash, no leak, bounded time and memory), and a loaded
 * inventory must survive every kind of pattern.
 *
 * An input whose first line is "#@PATTERN" also selects with PATTERN, so
 * the fuzzer mutates patterns too (kept short and free of '\', which would
 * let glibc's regex backreferences take exponential time). */
#include "inventory.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const patterns[] = {
    "all",        "*",          "gpu",       "gpu*:!gpu001",      "~g.*",   "~(a|b)[0-9]+",
    "&canary",    "!ungrouped", "a,b,!c,&d", "h100:a100:&canary", "?[!x]*", "nosuch",
    "gpu[01:02]", "all:!all",   "~",         "ungrouped:&all",
};

static void select_one(const struct inventory *inv, const char *pattern)
{
    struct kf_err err;
    size_t *idx = NULL, n = 0, i;

    if (inv_select(inv, pattern, &idx, &n, &err) == 0) {
        for (i = 0; i < n; i++)
            if (idx[i] >= inv->nhosts || (i > 0 && idx[i] <= idx[i - 1]))
                abort(); /* indices must be valid, in order, unique */
    }
    free(idx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct inventory inv;
    struct kf_err err;
    char extra[33];
    size_t i;

    log_set_level(LOG_ERROR); /* "matched nothing" warnings are expected */
    extra[0] = '\0';
    if (size > 2 && data[0] == '#' && data[1] == '@') {
        for (i = 2; i < size && i - 2 < sizeof(extra) - 1 && data[i] != '\n'; i++) {
            if (data[i] == '\0' || data[i] == '\\')
                break;
            extra[i - 2] = (char)data[i];
        }
        extra[i - 2] = '\0';
    }

    inv_init(&inv);
    if (inv_load_buffer(&inv, "fuzz.yml", (const char *)data, size, &err) == 0) {
        for (i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++)
            select_one(&inv, patterns[i]);
        if (extra[0] != '\0')
            select_one(&inv, extra);
        /* inv_find_host() is a linear scan: check a few, not all. */
        for (i = 0; i < inv.nhosts; i += i < 16 ? 1 : inv.nhosts / 16 + 1)
            if (inv_find_host(&inv, inv.hosts[i].name) != &inv.hosts[i] ||
                !json_is_object(inv.hosts[i].vars) || inv.hosts[i].ngroups == 0)
                abort();
    } else if (inv.nhosts != 0 || inv.hosts != NULL || inv.groups != NULL || err.msg[0] == '\0') {
        abort(); /* a failed load leaves the inventory empty and says why */
    }
    inv_release(&inv);

    /* The first line as a host range too. */
    if (size < 256 && memchr(data, '\0', size) == NULL) {
        char line[256], **names = NULL;
        size_t n = 0;

        for (i = 0; i < size && data[i] != '\n'; i++)
            line[i] = (char)data[i];
        line[i] = '\0';
        if (inv_expand_range(line, &names, &n, &err) == 0 && n == 0)
            abort();
        kf_strv_free(names, n);
    }
    return 0;
}
