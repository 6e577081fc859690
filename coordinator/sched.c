/* The fan-out scheduler: a sliding window of at most `limit` items in
 * flight. Items finish in any order; the next one starts as soon as a slot
 * frees. */
#include "coordinator.h"

#include <errno.h>
#include <string.h>
#include <sys/resource.h>

void coord_fanout_init(struct coord_fanout *f, size_t total, unsigned limit,
                       void (*start)(struct coord_fanout *, size_t), void *data)
{
    f->total = total;
    f->next = 0;
    f->running = 0;
    f->done = 0;
    f->limit = limit ? limit : 1;
    f->stop = 0;
    f->in_pump = 0;
    f->start = start;
    f->data = data;
}

void coord_fanout_pump(struct coord_fanout *f)
{
    /* An item that finishes inside start() calls coord_fanout_done(), which
     * calls us again: the flag turns that recursion into this loop. */
    if (f->in_pump)
        return;
    f->in_pump = 1;
    while (!f->stop && f->next < f->total && f->running < f->limit) {
        size_t i = f->next++;
        f->running++;
        f->start(f, i);
    }
    f->in_pump = 0;
}

void coord_fanout_done(struct coord_fanout *f)
{
    f->running--;
    f->done++;
    coord_fanout_pump(f);
}

/* Files kfleet holds besides its sessions: stdio, the state database and
 * its journal, the loop's own descriptors, a child's pipes, a config or key
 * file being read. */
#define FILES_RESERVED 64

unsigned coord_fit_forks(unsigned forks, unsigned files_each, const char *what)
{
    struct rlimit rl;
    rlim_t fit, need;

    if (files_each == 0 || getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
        return forks;
    /* Up to what this many need, within the hard limit; no more, since
     * the children (podman, debootstrap) inherit it and some of them walk
     * every descriptor number up to it. */
    need = (rlim_t)forks * files_each + FILES_RESERVED;
    if (rl.rlim_cur < need) {
        struct rlimit up = rl;
        up.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl = up;
        else
            log_debug("cannot raise the open-files limit to %llu: %s",
                      (unsigned long long)up.rlim_cur, strerror(errno));
    }
    fit = rl.rlim_cur > FILES_RESERVED ? (rl.rlim_cur - FILES_RESERVED) / files_each : 0;
    if (fit < 1)
        fit = 1;
    if ((rlim_t)forks <= fit)
        return forks;
    log_warn("--forks %u: each %s holds %u open files and the open-files limit (ulimit -n) is "
             "%llu: running %llu at once (raise the hard limit for more: LimitNOFILE= in a "
             "systemd unit, nofile in limits.conf)",
             forks, what, files_each, (unsigned long long)rl.rlim_cur, (unsigned long long)fit);
    return (unsigned)fit;
}
