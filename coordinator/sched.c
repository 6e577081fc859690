/* The fan-out scheduler: a sliding window of at most `limit` items in
 * flight. Items finish in any order; the next one starts as soon as a slot
 * frees. */
#include "coordinator.h"

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
