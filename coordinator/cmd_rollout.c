/* kfleet rollout list | show ID | resume ID | abort ID: the journal of
 * deploys and rollbacks, read back, and the two ways to go on from an
 * unfinished one. */
#include "coordinator.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *when(long long t, char *out, size_t n)
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (t <= 0) {
        snprintf(out, n, "-");
        return out;
    }
    gmtime_r(&tt, &tm);
    strftime(out, n, "%Y-%m-%d %H:%M:%SZ", &tm);
    return out;
}

/* "running" whose process is gone reads "interrupted (kfleet died)". */
static const char *shown_status(const struct coord_rollout *r)
{
    if (strcmp(r->status, "running") == 0 && !coord_rollout_alive(r))
        return "interrupted";
    return r->status;
}

static int open_db(struct coord_opts *o, struct coord_db *db)
{
    struct kf_err err;
    char *sd = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
    int rc;

    kf_err_clear(&err);
    if (sd == NULL)
        return KF_EXIT_ERROR;
    rc = coord_db_open(db, sd, &err);
    free(sd);
    if (rc < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_ERROR;
    }
    return 0;
}

static int parse_id(const char *s, long long *id)
{
    char *end;

    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    *id = strtoll(s, &end, 10);
    return *end == '\0' && *id > 0 ? 0 : -1;
}

static int cmd_list(struct coord_opts *o)
{
    struct coord_db db;
    struct coord_rollout *v = NULL;
    struct kf_err err;
    size_t n = 0, i;
    json_t *arr = NULL;
    int rc = open_db(o, &db);

    if (rc != 0)
        return rc;
    kf_err_clear(&err);
    if (coord_journal_list(&db, 200, &v, &n, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        coord_db_close(&db);
        return KF_EXIT_ERROR;
    }
    if (o->json)
        arr = json_array();
    else if (n == 0)
        printf("no rollouts yet (kfleet deploy starts one)\n");
    else
        printf("%5s  %-8s  %-14s %-12s %-12s %7s  %5s %7s %6s %6s  %s\n", "ID", "KIND", "PROFILE",
               "DRIVER", "STATUS", "STAGE", "NODES", "CHANGED", "FAILED", "LEFT", "CREATED");
    for (i = 0; i < n; i++) {
        struct coord_rollout_node *nv = NULL;
        struct coord_rollout_counts c;
        size_t nn = 0;
        char t[32], stage[24];
        size_t rb;
        memset(&c, 0, sizeof(c));
        if (coord_journal_nodes(&db, v[i].id, &nv, &nn, &err) == 0)
            coord_rollout_count(nv, nn, -1, &c);
        coord_rollout_nodes_free(nv, nn);
        /* In a deploy a rolled-back node failed; in a rollback it is done. */
        rb = strcmp(v[i].kind, "rollback") != 0;
        snprintf(stage, sizeof(stage), "%d/%d", v[i].stage + 1, v[i].nstages);
        if (arr != NULL)
            json_array_append_new(
                arr, json_pack("{s:I,s:s,s:s,s:s,s:s,s:i,s:i,s:I,s:I,s:I,s:I,s:I}", "id",
                               (json_int_t)v[i].id, "kind", v[i].kind, "profile", v[i].profile,
                               "driver", v[i].driver, "status", shown_status(&v[i]), "stage",
                               v[i].stage + 1, "stages", v[i].nstages, "nodes", (json_int_t)c.nodes,
                               "updated", (json_int_t)c.updated, "failed",
                               (json_int_t)(c.failed + rb * c.rolled_back + c.rollback_failed),
                               "not_finished", (json_int_t)(c.pending + c.running), "created_at",
                               (json_int_t)v[i].created_at));
        else
            printf("%5lld  %-8s  %-14s %-12s %-12s %7s  %5zu %7zu %6zu %6zu  %s\n", v[i].id,
                   v[i].kind, v[i].profile, v[i].driver[0] ? v[i].driver : "-", shown_status(&v[i]),
                   stage, c.nodes, rb ? c.updated : c.rolled_back,
                   c.failed + rb * c.rolled_back + c.rollback_failed, c.pending + c.running,
                   when(v[i].created_at, t, sizeof(t)));
        coord_rollout_release(&v[i]);
    }
    if (arr != NULL) {
        json_dumpf(arr, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(arr);
    }
    free(v);
    coord_db_close(&db);
    return KF_EXIT_OK;
}

static int cmd_show(struct coord_opts *o, long long id)
{
    struct coord_db db;
    struct coord_rollout r;
    struct coord_rollout_node *v = NULL;
    struct kf_err err;
    size_t n = 0;
    int rc = open_db(o, &db), found, s;
    char t1[32], t2[32];

    if (rc != 0)
        return rc;
    kf_err_clear(&err);
    found = coord_journal_get(&db, id, &r, &err);
    if (found <= 0) {
        if (found < 0)
            fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        else
            fprintf(stderr, "kfleet: no rollout %lld (kfleet rollout list)\n", id);
        coord_db_close(&db);
        return found < 0 ? KF_EXIT_ERROR : KF_EXIT_USAGE;
    }
    if (coord_journal_nodes(&db, id, &v, &n, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        coord_rollout_release(&r);
        coord_db_close(&db);
        return KF_EXIT_ERROR;
    }
    {
        char st[sizeof(r.status)];
        snprintf(st, sizeof(st), "%s", shown_status(&r));
        memcpy(r.status, st, sizeof(st));
    }
    coord_journal_known_versions(&db, &r, v, n);
    if (o->json) {
        json_t *j = coord_rollout_json(&r, v, n);
        json_dumpf(j, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(j);
    } else {
        printf("rollout %lld: %s %s %s, %s%s%s\n", r.id, r.kind, r.profile,
               r.driver[0] ? r.driver : "", r.status, r.reason[0] ? ": " : "", r.reason);
        printf("created %s, updated %s, owner %s\n", when(r.created_at, t1, sizeof(t1)),
               when(r.updated_at, t2, sizeof(t2)), r.owner);
        printf("options: %s\n", r.options ? r.options : "{}");
        for (s = 0; s < r.nstages; s++) {
            struct coord_rollout_counts c;
            coord_rollout_count(v, n, s, &c);
            printf("  stage %d/%d: %zu nodes: %zu updated, %zu unchanged, %zu skipped, %zu failed, "
                   "%zu rolled back, %zu not finished%s\n",
                   s + 1, r.nstages, c.nodes, c.updated, c.unchanged, c.skipped,
                   c.failed + c.rollback_failed, c.rolled_back, c.pending + c.running,
                   s == r.stage && strcmp(r.status, "done") != 0 ? "  <-" : "");
        }
        coord_rollout_print(&r, v, n, o->verbose, stdout);
    }
    coord_rollout_nodes_free(v, n);
    coord_rollout_release(&r);
    coord_db_close(&db);
    return KF_EXIT_OK;
}

int cmd_rollout(struct coord_opts *o)
{
    const char *sub = o->nargs > 0 ? o->args[0] : "list";
    long long id = 0;

    if (strcmp(sub, "list") == 0) {
        if (o->nargs > 1) {
            fprintf(stderr, "kfleet: rollout list takes no argument\n");
            return KF_EXIT_USAGE;
        }
        return cmd_list(o);
    }
    if (strcmp(sub, "show") != 0 && strcmp(sub, "resume") != 0 && strcmp(sub, "abort") != 0) {
        fprintf(stderr,
                "kfleet: rollout: unknown action '%s' (list, show ID, resume ID, abort "
                "ID)\n",
                sub);
        return KF_EXIT_USAGE;
    }
    if (o->nargs != 2 || parse_id(o->args[1], &id) < 0) {
        fprintf(stderr, "kfleet: rollout %s needs the rollout's number (kfleet rollout list)\n",
                sub);
        return KF_EXIT_USAGE;
    }
    if (strcmp(sub, "show") == 0)
        return cmd_show(o, id);
    if (strcmp(sub, "resume") == 0)
        return coord_rollout_resume(o, id, 0);
    return coord_rollout_resume(o, id, 1);
}
