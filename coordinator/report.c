/* Reports for a person: grouped results with folded host names, and a live
 * progress line on a terminal. */
#include "coordinator.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

void coord_groups_init(struct coord_groups *gs)
{
    gs->g = NULL;
    gs->n = 0;
}

void coord_groups_release(struct coord_groups *gs)
{
    size_t i, j;

    for (i = 0; i < gs->n; i++) {
        for (j = 0; j < gs->g[i].n; j++)
            free(gs->g[i].names[j]);
        free(gs->g[i].names);
        free(gs->g[i].key);
        free(gs->g[i].detail);
    }
    free(gs->g);
    coord_groups_init(gs);
}

int coord_groups_add(struct coord_groups *gs, const char *key, const char *name, const char *detail)
{
    struct coord_group *g = NULL;
    char **names;
    size_t i;

    for (i = 0; i < gs->n; i++) {
        if (strcmp(gs->g[i].key, key) == 0) {
            g = &gs->g[i];
            break;
        }
    }
    if (g == NULL) {
        struct coord_group *grown = realloc(gs->g, (gs->n + 1) * sizeof(*gs->g));
        if (grown == NULL)
            return KF_ENOMEM;
        gs->g = grown;
        g = &gs->g[gs->n];
        memset(g, 0, sizeof(*g));
        g->key = strdup(key);
        g->detail = detail ? strdup(detail) : NULL;
        if (g->key == NULL || (detail && g->detail == NULL)) {
            free(g->key);
            free(g->detail);
            return KF_ENOMEM;
        }
        gs->n++;
    }
    names = realloc(g->names, (g->n + 1) * sizeof(*names));
    if (names == NULL)
        return KF_ENOMEM;
    g->names = names;
    g->names[g->n] = strdup(name);
    if (g->names[g->n] == NULL)
        return KF_ENOMEM;
    g->n++;
    return 0;
}

static int group_cmp(const void *a, const void *b)
{
    const struct coord_group *x = a, *y = b;

    if (x->n != y->n)
        return x->n > y->n ? -1 : 1;
    return strverscmp(x->key, y->key);
}

void coord_groups_sort(struct coord_groups *gs)
{
    if (gs->n > 1)
        qsort(gs->g, gs->n, sizeof(*gs->g), group_cmp);
}

int coord_group_fold(const struct coord_group *g, struct buf *b)
{
    return kf_hostfold(b, (const char *const *)g->names, g->n);
}

/* --- progress line ----------------------------------------------------------- */

static void progress_hook(void *arg)
{
    coord_progress_clear(arg);
}

void coord_progress_init(struct coord_progress *p, int mode, const char *label, size_t total)
{
    memset(p, 0, sizeof(*p));
    p->enabled = mode < 0 ? isatty(STDERR_FILENO) : mode;
    p->label = label;
    p->total = total;
    if (p->enabled)
        log_set_hook(progress_hook, p);
}

void coord_progress_update(struct coord_progress *p, size_t done, size_t failed, int force)
{
    uint64_t now;

    p->done = done;
    p->failed = failed;
    if (!p->enabled)
        return;
    now = uv_hrtime() / 1000000;
    if (done == p->total)
        force = 1; /* the final count is always shown */
    if (!force && p->shown && now - p->last_ms < 100)
        return;
    p->last_ms = now;
    fprintf(stderr, "\r\033[K%s: %zu/%zu done, %zu failed%s%s", p->label, done, p->total, failed,
            p->extra[0] ? ", " : "", p->extra);
    fflush(stderr);
    p->shown = 1;
}

void coord_progress_clear(struct coord_progress *p)
{
    if (p->enabled && p->shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        p->shown = 0;
    }
}
