/* kfleet status: where the fleet stands, from the stored facts and the
 * rollout journal, without touching a node (--refresh gathers facts
 * first).
 *
 * Each selected host gets one state, the worst that applies:
 *   unreachable  its last facts attempt failed (its last good facts still
 *                judge the rest), or it was never seen: no facts at all
 *   stale        its facts are older than --stale (default 7 days)
 *   drifted      a running or installed kernel has no kfleet release
 *                although kfleet manages the node: the next reboot into it
 *                loses the driver (an unattended upgrade does that)
 *   mismatch     the loaded NVIDIA module and the userspace library differ
 *                ("Driver/library version mismatch")
 *   behind       a kernel's release, or the loaded module, is not the
 *                target driver; or kfleet does not manage it yet
 *   current      every kernel at the target, loaded where it can be told
 * The target is --driver, else the driver of the newest finished deploy
 * of the profile, else the newest driver in the store. --prometheus FILE
 * writes the counts and a per-node info line for node_exporter's textfile
 * collector, atomically. The exit status says whether anything needs
 * attention. */
#include "coordinator.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum st { ST_CURRENT, ST_BEHIND, ST_MISMATCH, ST_DRIFTED, ST_STALE, ST_UNREACHABLE, ST_N };

static const char *const st_names[ST_N] = {"current", "behind", "mismatch",
                                           "drifted", "stale",  "unreachable"};

struct host_kernel {
    char release[INV_KREL_MAX + 1];
    int running;
    char driver[32]; /* kfleet's release for it, "" none */
    int stored;      /* a package of the target is in the store */
};

struct host_status {
    const struct inv_host *h;
    enum st state;
    int flags[ST_N];
    int have_facts, last_ok;
    long long gathered_at, last_ok_at;
    char error[600];
    char kernel[INV_KREL_MAX + 1], arch[32], os_id[64], os_version[64];
    char loaded[64], userspace[64];
    struct host_kernel k[INV_FACTS_MAX_KERNELS];
    size_t nk;
    int managed; /* kfleet has a release on it for the profile */
    char detail[400];
    long long newer_rollout; /* a rollout ended after its facts: its id */
};

struct status_run {
    struct coord_opts *o;
    struct coord_db db;
    const struct coord_profile *prof;
    char target[32];
    char target_from[96];
    struct coord_artifact *arts;
    size_t narts;
    long long now, stale_s;
    struct host_status *hs;
    size_t n;
    size_t count[ST_N];
};

static int col_copy(sqlite3_stmt *st, int i, char *out, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, i);

    snprintf(out, n, "%s", t ? (const char *)t : "");
    return t != NULL;
}

/* The target: --driver, the last finished deploy, the newest stored. */
static int find_target(struct status_run *r, struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    size_t i;

    if (r->o->driver != NULL) {
        snprintf(r->target, sizeof(r->target), "%s", r->o->driver);
        snprintf(r->target_from, sizeof(r->target_from), "--driver");
        return 0;
    }
    if (sqlite3_prepare_v2(r->db.db,
                           "SELECT driver, id FROM rollouts WHERE kind = 'deploy' AND profile = ?1 "
                           "AND status = 'done' ORDER BY id DESC LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return kf_err_set(err, KF_EDB, "%s: %s", r->db.path, sqlite3_errmsg(r->db.db));
    sqlite3_bind_text(st, 1, r->prof->name, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW && col_copy(st, 0, r->target, sizeof(r->target)))
        snprintf(r->target_from, sizeof(r->target_from), "the last finished deploy, rollout %lld",
                 (long long)sqlite3_column_int64(st, 1));
    sqlite3_finalize(st);
    if (r->target[0])
        return 0;
    for (i = 0; i < r->narts; i++)
        if (strverscmp(r->arts[i].driver, r->target) > 0)
            snprintf(r->target, sizeof(r->target), "%s", r->arts[i].driver);
    if (r->target[0])
        snprintf(r->target_from, sizeof(r->target_from), "the newest driver in the store");
    return 0;
}

static int stored(struct status_run *r, const char *kernel, const char *arch)
{
    size_t i;

    for (i = 0; i < r->narts; i++)
        if (strcmp(r->arts[i].driver, r->target) == 0 && strcmp(r->arts[i].kernel, kernel) == 0 &&
            (arch[0] == '\0' || strcmp(r->arts[i].arch, arch) == 0))
            return 1;
    return 0;
}

/* The host's facts row, its kernels, and kfleet's releases on it. */
static int load_host(struct status_run *r, struct host_status *s, struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    json_t *j = NULL, *cur, *c;
    size_t i, idx;
    int rc;

    if (sqlite3_prepare_v2(r->db.db,
                           "SELECT ok, gathered_at, last_ok_at, error, kernel, arch, os_id, "
                           "os_version, loaded_driver, userspace_driver, facts_json "
                           "FROM facts WHERE host = ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return kf_err_set(err, KF_EDB, "%s: %s", r->db.path, sqlite3_errmsg(r->db.db));
    sqlite3_bind_text(st, 1, s->h->name, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        s->have_facts = 1;
        s->last_ok = sqlite3_column_int(st, 0);
        s->gathered_at = sqlite3_column_int64(st, 1);
        s->last_ok_at = sqlite3_column_int64(st, 2);
        col_copy(st, 3, s->error, sizeof(s->error));
        col_copy(st, 4, s->kernel, sizeof(s->kernel));
        col_copy(st, 5, s->arch, sizeof(s->arch));
        col_copy(st, 6, s->os_id, sizeof(s->os_id));
        col_copy(st, 7, s->os_version, sizeof(s->os_version));
        col_copy(st, 8, s->loaded, sizeof(s->loaded));
        col_copy(st, 9, s->userspace, sizeof(s->userspace));
        if (sqlite3_column_text(st, 10) != NULL)
            j = json_loads((const char *)sqlite3_column_text(st, 10), 0, NULL);
    }
    sqlite3_finalize(st);
    if (!s->have_facts)
        return 0;
    if (sqlite3_prepare_v2(r->db.db,
                           "SELECT release, running FROM host_kernels WHERE host = ?1 "
                           "ORDER BY release",
                           -1, &st, NULL) != SQLITE_OK) {
        json_decref(j);
        return kf_err_set(err, KF_EDB, "%s: %s", r->db.path, sqlite3_errmsg(r->db.db));
    }
    sqlite3_bind_text(st, 1, s->h->name, -1, SQLITE_TRANSIENT);
    while (sqlite3_step(st) == SQLITE_ROW && s->nk < INV_FACTS_MAX_KERNELS) {
        struct host_kernel *k = &s->k[s->nk++];
        memset(k, 0, sizeof(*k));
        col_copy(st, 0, k->release, sizeof(k->release));
        k->running = sqlite3_column_int(st, 1);
        k->stored = r->target[0] && stored(r, k->release, s->arch);
    }
    sqlite3_finalize(st);
    /* kfleet's releases, from the node's /var/lib/kfleet/state */
    cur = json_object_get(json_object_get(j, "kfleet"), "current");
    json_array_foreach(cur, idx, c)
    {
        const char *kernel = json_string_value(json_object_get(c, "kernel"));
        const char *driver = json_string_value(json_object_get(c, "driver"));
        const char *profile = json_string_value(json_object_get(c, "profile"));
        if (!kernel || !driver || !profile || strcmp(profile, r->prof->name) != 0)
            continue;
        s->managed = 1;
        for (i = 0; i < s->nk; i++)
            if (strcmp(s->k[i].release, kernel) == 0)
                snprintf(s->k[i].driver, sizeof(s->k[i].driver), "%s", driver);
    }
    json_decref(j);
    /* A rollout that ended after these facts changed what they say. */
    if (sqlite3_prepare_v2(r->db.db,
                           "SELECT max(n.rollout_id) FROM rollout_nodes n JOIN rollouts o ON "
                           "o.id = n.rollout_id WHERE n.host = ?1 AND o.profile = ?2 AND "
                           "n.outcome IN ('updated','rolled_back','rollback_failed','failed') AND "
                           "n.updated_at > ?3",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, s->h->name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, r->prof->name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, s->last_ok_at);
        if (sqlite3_step(st) == SQLITE_ROW)
            s->newer_rollout = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    return 0;
}

static void add_detail(struct host_status *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void add_detail(struct host_status *s, const char *fmt, ...)
{
    size_t n = strlen(s->detail);
    va_list ap;

    if (n + 3 >= sizeof(s->detail))
        return;
    if (n > 0) {
        s->detail[n++] = ';';
        s->detail[n++] = ' ';
        s->detail[n] = '\0';
    }
    va_start(ap, fmt);
    vsnprintf(s->detail + n, sizeof(s->detail) - n, fmt, ap);
    va_end(ap);
}

static void judge(struct status_run *r, struct host_status *s)
{
    size_t i;
    int nvidia = r->prof->type != PROFILE_KMOD;
    char when[32];

    memset(s->flags, 0, sizeof(s->flags));
    if (!s->have_facts) {
        s->flags[ST_UNREACHABLE] = 1;
        add_detail(s, "no facts: never gathered (kfleet facts)");
    } else if (!s->last_ok) {
        struct tm tm;
        time_t t = (time_t)s->last_ok_at;
        gmtime_r(&t, &tm);
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%SZ", &tm);
        s->flags[ST_UNREACHABLE] = 1;
        add_detail(s, "%s; last seen %s", s->error[0] ? s->error : "the last facts attempt failed",
                   s->last_ok_at ? when : "never");
    }
    if (s->have_facts && s->last_ok_at > 0 && r->now - s->last_ok_at > r->stale_s) {
        s->flags[ST_STALE] = 1;
        add_detail(s, "facts %lld days old", (r->now - s->last_ok_at) / 86400);
    }
    for (i = 0; i < s->nk && s->last_ok_at > 0; i++) {
        struct host_kernel *k = &s->k[i];
        if (k->driver[0] == '\0' && s->managed) {
            s->flags[ST_DRIFTED] = 1;
            add_detail(s, "%s (%s) has no %s driver: the next boot into it loses the GPU (%s)",
                       k->release, k->running ? "running" : "installed, not running", r->prof->name,
                       !r->target[0] ? "no target driver known"
                       : k->stored   ? "the package is stored: kfleet deploy fixes it"
                                     : "no package stored: kfleet build --missing, then deploy");
        } else if (r->target[0] && k->driver[0] && strcmp(k->driver, r->target) != 0) {
            s->flags[ST_BEHIND] = 1;
            add_detail(s, "%s at %s", k->release, k->driver);
        }
    }
    if (s->last_ok_at > 0 && !s->managed) {
        s->flags[ST_BEHIND] = 1;
        add_detail(s, "not managed by kfleet (no %s release on it)", r->prof->name);
    }
    if (nvidia && s->loaded[0] && s->userspace[0] && strcmp(s->loaded, s->userspace) != 0) {
        s->flags[ST_MISMATCH] = 1;
        add_detail(s, "loaded module %s, userspace driver %s: Driver/library version mismatch",
                   s->loaded, s->userspace);
    }
    if (nvidia && r->target[0] && s->loaded[0] && strcmp(s->loaded, r->target) != 0 && s->managed) {
        s->flags[ST_BEHIND] = 1;
        add_detail(s, "loaded module %s (a reload or a reboot is pending)", s->loaded);
    }
    s->state = ST_CURRENT;
    for (i = ST_N; i > 0; i--)
        if (s->flags[i - 1]) {
            s->state = (enum st)(i - 1);
            break;
        }
    if (s->newer_rollout > 0)
        add_detail(s, "facts predate rollout %lld: --refresh", s->newer_rollout);
}

/* Prometheus' text format wants label values with \ " and newline
 * escaped. */
static void prom_label(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fputc('\\', f);
        if (*s == '\n') {
            fputs("\\n", f);
            continue;
        }
        fputc(*s, f);
    }
}

static int write_prometheus(struct status_run *r, const char *path, struct kf_err *err)
{
    char tmp[4200];
    FILE *f;
    size_t i, k;

    snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid());
    f = fopen(tmp, "w");
    if (f == NULL)
        return kf_err_set(err, KF_EIO, "--prometheus %s: %s", path, strerror(errno));
    fprintf(f, "# HELP kfleet_nodes Nodes by kfleet status state.\n# TYPE kfleet_nodes gauge\n");
    for (i = 0; i < ST_N; i++) {
        fprintf(f, "kfleet_nodes{profile=\"");
        prom_label(f, r->prof->name);
        fprintf(f, "\",state=\"%s\"} %zu\n", st_names[i], r->count[i]);
    }
    fprintf(f, "# HELP kfleet_node_info A node's state and driver versions (value 1).\n"
               "# TYPE kfleet_node_info gauge\n");
    for (i = 0; i < r->n; i++) {
        const struct host_status *s = &r->hs[i];
        const char *running_driver = "";
        for (k = 0; k < s->nk; k++)
            if (s->k[k].running)
                running_driver = s->k[k].driver;
        fprintf(f, "kfleet_node_info{host=\"");
        prom_label(f, s->h->name);
        fprintf(f, "\",state=\"%s\",kernel=\"", st_names[s->state]);
        prom_label(f, s->kernel);
        fprintf(f, "\",driver=\"");
        prom_label(f, running_driver);
        fprintf(f, "\",loaded_driver=\"");
        prom_label(f, s->loaded);
        fprintf(f, "\",userspace_driver=\"");
        prom_label(f, s->userspace);
        fprintf(f, "\",target_driver=\"");
        prom_label(f, r->target);
        fprintf(f, "\"} 1\n");
    }
    fprintf(f, "# HELP kfleet_node_last_seen_seconds When the node last answered kfleet facts.\n"
               "# TYPE kfleet_node_last_seen_seconds gauge\n");
    for (i = 0; i < r->n; i++) {
        if (r->hs[i].last_ok_at <= 0)
            continue;
        fprintf(f, "kfleet_node_last_seen_seconds{host=\"");
        prom_label(f, r->hs[i].h->name);
        fprintf(f, "\"} %lld\n", r->hs[i].last_ok_at);
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || ferror(f)) {
        fclose(f);
        remove(tmp);
        return kf_err_set(err, KF_EIO, "--prometheus %s: write failed", path);
    }
    fclose(f);
    if (rename(tmp, path) < 0) {
        int e = errno;
        remove(tmp);
        return kf_err_set(err, KF_EIO, "--prometheus %s: %s", path, strerror(e));
    }
    return 0;
}

static json_t *host_json(const struct status_run *r, const struct host_status *s)
{
    json_t *o = json_object(), *ks = json_array(), *fl = json_array();
    size_t i;

    for (i = 0; i < ST_N; i++)
        if (s->flags[i])
            json_array_append_new(fl, json_string(st_names[i]));
    for (i = 0; i < s->nk; i++)
        json_array_append_new(
            ks,
            json_pack("{s:s,s:b,s:o,s:b}", "kernel", s->k[i].release, "running", s->k[i].running,
                      "driver", s->k[i].driver[0] ? json_string(s->k[i].driver) : json_null(),
                      "stored", s->k[i].stored));
    json_object_set_new(o, "name", json_string(s->h->name));
    json_object_set_new(o, "state", json_string(st_names[s->state]));
    json_object_set_new(o, "states", fl);
    json_object_set_new(o, "kernels", ks);
    json_object_set_new(o, "loaded_driver", s->loaded[0] ? json_string(s->loaded) : json_null());
    json_object_set_new(o, "userspace_driver",
                        s->userspace[0] ? json_string(s->userspace) : json_null());
    json_object_set_new(o, "last_seen", s->last_ok_at ? json_integer(s->last_ok_at) : json_null());
    json_object_set_new(o, "detail", json_string(s->detail));
    (void)r;
    return o;
}

static void print_human(struct status_run *r)
{
    struct coord_groups gs;
    struct buf b;
    size_t i, attention = 0;

    coord_groups_init(&gs);
    buf_init(&b, 0);
    for (i = 0; i < r->n; i++)
        coord_groups_add(&gs, st_names[r->hs[i].state], r->hs[i].h->name, r->hs[i].detail);
    coord_groups_sort(&gs);
    printf("kfleet status: profile %s, target %s%s%s%s; %zu host%s\n", r->prof->name,
           r->target[0] ? r->target : "(none known: --driver)", r->target_from[0] ? " (" : "",
           r->target_from, r->target_from[0] ? ")" : "", r->n, r->n == 1 ? "" : "s");
    printf("\n  %-12s %6s  %s\n", "STATE", "COUNT", "HOSTS");
    for (i = 0; i < gs.n; i++) {
        buf_reset(&b);
        coord_group_fold(&gs.g[i], &b);
        printf("  %-12s %6zu  %s\n", gs.g[i].key, gs.g[i].n, buf_cstr(&b));
        if (gs.g[i].detail && gs.g[i].detail[0] && strcmp(gs.g[i].key, "current") != 0)
            printf("      e.g. %s: %s\n", gs.g[i].names[0], gs.g[i].detail);
    }
    if (r->o->verbose)
        for (i = 0; i < r->n; i++)
            if (r->hs[i].detail[0])
                printf("  %s: %s: %s\n", r->hs[i].h->name, st_names[r->hs[i].state],
                       r->hs[i].detail);
    for (i = 0; i < r->n; i++)
        attention += r->hs[i].state != ST_CURRENT;
    if (attention)
        printf("\n%zu host%s need%s attention\n", attention, attention == 1 ? "" : "s",
               attention == 1 ? "s" : "");
    else
        printf("\nthe fleet is current: every host at %s %s\n", r->prof->name, r->target);
    buf_release(&b);
    coord_groups_release(&gs);
}

static int parse_days(const char *s, long long *out)
{
    char *end;
    double v = strtod(s, &end);

    if (end == s || v <= 0)
        return -1;
    if (strcmp(end, "d") == 0 || *end == '\0')
        v *= 86400;
    else if (strcmp(end, "h") == 0)
        v *= 3600;
    else if (strcmp(end, "m") == 0)
        v *= 60;
    else
        return -1;
    *out = (long long)v;
    return 0;
}

int cmd_status(struct coord_opts *o)
{
    struct status_run r;
    struct inventory inv;
    struct coord_config cfg;
    struct kf_err err;
    char *state_dir = NULL;
    size_t *idx = NULL, i;
    int rc, exit_code = KF_EXIT_USAGE;

    memset(&r, 0, sizeof(r));
    r.o = o;
    kf_err_clear(&err);
    coord_config_init(&cfg);
    r.stale_s = 7 * 86400;
    if (o->stale != NULL && parse_days(o->stale, &r.stale_s) < 0) {
        fprintf(stderr, "kfleet: --stale takes an age like 7d, 12h or 30m, got '%s'\n", o->stale);
        return KF_EXIT_USAGE;
    }
    if (o->refresh) {
        /* Gather first; the facts report goes to stderr so stdout stays
         * the status (and --json one document). */
        int saved = dup(STDOUT_FILENO);
        int frc;
        fflush(stdout);
        if (saved >= 0)
            dup2(STDERR_FILENO, STDOUT_FILENO);
        {
            int json = o->json;
            o->json = 0;
            frc = cmd_facts(o);
            o->json = json;
        }
        fflush(stdout);
        if (saved >= 0) {
            dup2(saved, STDOUT_FILENO);
            close(saved);
        }
        if (frc != KF_EXIT_OK && frc != KF_EXIT_HOSTS)
            return frc;
    }
    rc = coord_load_selection(o, &inv, &idx, &r.n);
    if (rc != 0)
        return rc;
    state_dir = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
    if (state_dir == NULL)
        goto out;
    if (coord_config_load(&cfg, o->config, state_dir, &err) < 0 ||
        (r.prof = coord_config_select_profile(&cfg, o->profile, &err)) == NULL) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        goto out;
    }
    exit_code = KF_EXIT_ERROR;
    if (coord_db_open(&r.db, state_dir, &err) < 0 ||
        coord_db_artifact_list(&r.db, r.prof->name, NULL, NULL, &r.arts, &r.narts, &err) < 0 ||
        find_target(&r, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        goto out;
    }
    r.now = (long long)time(NULL);
    r.hs = calloc(r.n ? r.n : 1, sizeof(*r.hs));
    if (r.hs == NULL)
        goto out;
    for (i = 0; i < r.n; i++) {
        r.hs[i].h = &inv.hosts[idx[i]];
        if (load_host(&r, &r.hs[i], &err) < 0) {
            fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
            goto out;
        }
        judge(&r, &r.hs[i]);
        r.count[r.hs[i].state]++;
    }
    if (o->prometheus != NULL && write_prometheus(&r, o->prometheus, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        goto out;
    }
    if (o->json) {
        json_t *doc = json_object(), *hosts = json_array(), *sum = json_object();
        for (i = 0; i < r.n; i++)
            json_array_append_new(hosts, host_json(&r, &r.hs[i]));
        for (i = 0; i < ST_N; i++)
            json_object_set_new(sum, st_names[i], json_integer((json_int_t)r.count[i]));
        json_object_set_new(doc, "kfleet", json_string(KF_VERSION));
        json_object_set_new(doc, "command", json_string("status"));
        json_object_set_new(doc, "profile", json_string(r.prof->name));
        json_object_set_new(doc, "target", r.target[0] ? json_string(r.target) : json_null());
        json_object_set_new(doc, "summary", sum);
        json_object_set_new(doc, "hosts", hosts);
        json_dumpf(doc, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(doc);
    } else {
        print_human(&r);
    }
    exit_code = r.count[ST_CURRENT] == r.n ? KF_EXIT_OK : KF_EXIT_HOSTS;
out:
    free(r.hs);
    free(r.arts);
    coord_db_close(&r.db);
    coord_config_release(&cfg);
    free(state_dir);
    free(idx);
    inv_release(&inv);
    return exit_code;
}
