/* The rollout journal in the state database: rollouts, their nodes'
 * states, and an append-only event history. Every write is its own
 * transaction, done before the step it announces (see cmd_deploy.c), so a
 * coordinator killed at any moment leaves a journal that says where each
 * node was. */
#include "coordinator.h"

#include <stdlib.h>
#include <string.h>

static int prep(struct coord_db *d, const char *sql, sqlite3_stmt **st, struct kf_err *err)
{
    if (sqlite3_prepare_v2(d->db, sql, -1, st, NULL) != SQLITE_OK)
        return kf_err_set(err, KF_EDB, "%s: %s", d->path, sqlite3_errmsg(d->db));
    return 0;
}

static int done(struct coord_db *d, sqlite3_stmt *st, struct kf_err *err)
{
    int rc = sqlite3_step(st);

    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return kf_err_set(err, KF_EDB, "%s: %s", d->path, sqlite3_errmsg(d->db));
    return 0;
}

static void text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s != NULL && s[0] != '\0')
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

static void col_copy(sqlite3_stmt *st, int i, char *out, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, i);

    snprintf(out, n, "%s", t ? (const char *)t : "");
}

static char *col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);

    return t ? strdup((const char *)t) : NULL;
}

static int event(struct coord_db *d, long long id, const char *host, const char *state,
                 const char *detail, long long now, struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(d,
                  "INSERT INTO rollout_events(rollout_id, host, at, state, detail) "
                  "VALUES(?1, ?2, ?3, ?4, ?5)",
                  &st, err);

    if (rc == 0) {
        sqlite3_bind_int64(st, 1, id);
        text_or_null(st, 2, host);
        sqlite3_bind_int64(st, 3, now);
        sqlite3_bind_text(st, 4, state, -1, SQLITE_TRANSIENT);
        text_or_null(st, 5, detail);
        rc = done(d, st, err);
    }
    sqlite3_finalize(st);
    return rc;
}

static int begin(struct coord_db *d, struct kf_err *err)
{
    return coord_db_exec(d, "BEGIN IMMEDIATE", err);
}

static int end(struct coord_db *d, int rc, struct kf_err *err)
{
    if (rc == 0)
        rc = coord_db_exec(d, "COMMIT", err);
    if (rc < 0)
        sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

void coord_rollout_release(struct coord_rollout *r)
{
    if (r == NULL)
        return;
    free(r->options);
    r->options = NULL;
}

void coord_rollout_nodes_free(struct coord_rollout_node *v, size_t n)
{
    size_t i;

    for (i = 0; v != NULL && i < n; i++)
        free(v[i].prior);
    free(v);
}

int coord_journal_create(struct coord_db *d, struct coord_rollout *r, const char *const *hosts,
                         const int *stages, size_t n, long long now, struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    size_t i;
    int rc = begin(d, err);

    if (rc < 0)
        return rc;
    rc = prep(d,
              "INSERT INTO rollouts(kind, profile, driver, status, stage, nstages, owner, options, "
              "reason, pid, created_at, updated_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, "
              "?9, ?10, ?10)",
              &st, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_text(st, 1, r->kind, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, r->profile, -1, SQLITE_TRANSIENT);
    text_or_null(st, 3, r->driver);
    sqlite3_bind_text(st, 4, r->status, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 5, r->stage);
    sqlite3_bind_int(st, 6, r->nstages);
    sqlite3_bind_text(st, 7, "pending", -1, SQLITE_STATIC); /* set below, from the id */
    sqlite3_bind_text(st, 8, r->options ? r->options : "{}", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 9, r->pid);
    sqlite3_bind_int64(st, 10, now);
    rc = done(d, st, err);
    sqlite3_finalize(st);
    st = NULL;
    if (rc < 0)
        goto out;
    r->id = sqlite3_last_insert_rowid(d->db);
    r->created_at = r->updated_at = now;
    /* The owner carries the id: "rollout-12@control01". */
    {
        char owner[sizeof(r->owner)];
        snprintf(owner, sizeof(owner), "rollout-%lld@%s", r->id, r->owner);
        snprintf(r->owner, sizeof(r->owner), "%s", owner);
    }
    rc = prep(d, "UPDATE rollouts SET owner = ?2 WHERE id = ?1", &st, err);
    if (rc < 0)
        goto out;
    sqlite3_bind_int64(st, 1, r->id);
    sqlite3_bind_text(st, 2, r->owner, -1, SQLITE_TRANSIENT);
    rc = done(d, st, err);
    sqlite3_finalize(st);
    st = NULL;
    if (rc < 0)
        goto out;
    rc = prep(d,
              "INSERT INTO rollout_nodes(rollout_id, host, stage, position, state, updated_at) "
              "VALUES(?1, ?2, ?3, ?4, 'pending', ?5)",
              &st, err);
    for (i = 0; rc == 0 && i < n; i++) {
        sqlite3_bind_int64(st, 1, r->id);
        sqlite3_bind_text(st, 2, hosts[i], -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 3, stages[i]);
        sqlite3_bind_int64(st, 4, (long long)i);
        sqlite3_bind_int64(st, 5, now);
        rc = done(d, st, err);
        sqlite3_reset(st);
    }
    if (rc == 0)
        rc = event(d, r->id, NULL, r->status, "created", now, err);
out:
    sqlite3_finalize(st);
    return end(d, rc, err);
}

static const char rollout_cols[] =
    "id, kind, profile, driver, status, stage, nstages, owner, options, reason, pid, "
    "created_at, updated_at, finished_at";

static void rollout_row(sqlite3_stmt *st, struct coord_rollout *r)
{
    memset(r, 0, sizeof(*r));
    r->id = sqlite3_column_int64(st, 0);
    col_copy(st, 1, r->kind, sizeof(r->kind));
    col_copy(st, 2, r->profile, sizeof(r->profile));
    col_copy(st, 3, r->driver, sizeof(r->driver));
    col_copy(st, 4, r->status, sizeof(r->status));
    r->stage = sqlite3_column_int(st, 5);
    r->nstages = sqlite3_column_int(st, 6);
    col_copy(st, 7, r->owner, sizeof(r->owner));
    r->options = col_dup(st, 8);
    col_copy(st, 9, r->reason, sizeof(r->reason));
    r->pid = sqlite3_column_int64(st, 10);
    r->created_at = sqlite3_column_int64(st, 11);
    r->updated_at = sqlite3_column_int64(st, 12);
    r->finished_at = sqlite3_column_int64(st, 13);
}

int coord_journal_get(struct coord_db *d, long long id, struct coord_rollout *r, struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    char sql[256];
    int rc, found = 0;

    snprintf(sql, sizeof(sql), "SELECT %s FROM rollouts WHERE id = ?1", rollout_cols);
    rc = prep(d, sql, &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        rollout_row(st, r);
        found = 1;
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        rc = 0;
    } else {
        rc = kf_err_set(err, KF_EDB, "%s: %s", d->path, sqlite3_errmsg(d->db));
    }
    sqlite3_finalize(st);
    return rc < 0 ? rc : found;
}

int coord_journal_list(struct coord_db *d, size_t limit, struct coord_rollout **out, size_t *n,
                       struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    struct coord_rollout *v = NULL;
    char sql[256];
    int rc;

    *out = NULL;
    *n = 0;
    snprintf(sql, sizeof(sql), "SELECT %s FROM rollouts ORDER BY id DESC LIMIT ?1", rollout_cols);
    rc = prep(d, sql, &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, (long long)limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct coord_rollout *g = realloc(v, (*n + 1) * sizeof(*v));
        if (g == NULL) {
            rc = KF_ENOMEM;
            break;
        }
        v = g;
        rollout_row(st, &v[(*n)++]);
    }
    if (rc == SQLITE_DONE)
        rc = 0;
    else if (rc != KF_ENOMEM)
        rc = kf_err_set(err, KF_EDB, "%s: %s", d->path, sqlite3_errmsg(d->db));
    sqlite3_finalize(st);
    if (rc < 0) {
        size_t i;
        for (i = 0; i < *n; i++)
            coord_rollout_release(&v[i]);
        free(v);
        *n = 0;
        return rc;
    }
    *out = v;
    return 0;
}

int coord_journal_set_status(struct coord_db *d, long long id, const char *status, int stage,
                             const char *reason, long long pid, long long now, struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    int final = strcmp(status, "done") == 0 || strcmp(status, "aborted") == 0;
    int rc = begin(d, err);

    if (rc < 0)
        return rc;
    rc = prep(d,
              "UPDATE rollouts SET status = ?2, stage = ?3, reason = COALESCE(?4, reason), "
              "pid = ?5, updated_at = ?6, finished_at = CASE WHEN ?7 THEN ?6 ELSE NULL END "
              "WHERE id = ?1",
              &st, err);
    if (rc == 0) {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, status, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 3, stage);
        text_or_null(st, 4, reason);
        sqlite3_bind_int64(st, 5, pid);
        sqlite3_bind_int64(st, 6, now);
        sqlite3_bind_int(st, 7, final);
        rc = done(d, st, err);
    }
    sqlite3_finalize(st);
    if (rc == 0)
        rc = event(d, id, NULL, status, reason, now, err);
    return end(d, rc, err);
}

int coord_journal_node_state(struct coord_db *d, long long id, const char *host, const char *state,
                             const char *detail, int attempt_inc, long long now, struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    int rc = begin(d, err);

    if (rc < 0)
        return rc;
    rc = prep(d,
              "UPDATE rollout_nodes SET state = ?3, detail = ?4, attempts = attempts + ?5, "
              "outcome = CASE WHEN ?5 THEN NULL ELSE outcome END, updated_at = ?6 "
              "WHERE rollout_id = ?1 AND host = ?2",
              &st, err);
    if (rc == 0) {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, host, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 3, state, -1, SQLITE_TRANSIENT);
        text_or_null(st, 4, detail);
        sqlite3_bind_int(st, 5, attempt_inc ? 1 : 0);
        sqlite3_bind_int64(st, 6, now);
        rc = done(d, st, err);
        if (rc == 0 && sqlite3_changes(d->db) != 1)
            rc = kf_err_set(err, KF_EDB, "%s: rollout %lld has no node %s", d->path, id, host);
    }
    sqlite3_finalize(st);
    if (rc == 0)
        rc = event(d, id, host, state, detail, now, err);
    return end(d, rc, err);
}

int coord_journal_node_prior(struct coord_db *d, long long id, const char *host,
                             const char *prior_json, struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    int rc = prep(d, "UPDATE rollout_nodes SET prior = ?3 WHERE rollout_id = ?1 AND host = ?2", &st,
                  err);

    if (rc == 0) {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, host, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 3, prior_json, -1, SQLITE_TRANSIENT);
        rc = done(d, st, err);
    }
    sqlite3_finalize(st);
    return rc;
}

int coord_journal_node_end(struct coord_db *d, long long id, const char *host, const char *outcome,
                           const char *error_code, const char *phase, const char *error,
                           const char *note, const char *versions, long long bytes, double seconds,
                           long long now, struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    int rc = begin(d, err);

    if (rc < 0)
        return rc;
    rc = prep(d,
              "UPDATE rollout_nodes SET state = 'done', outcome = ?3, error_code = ?4, "
              "error_phase = ?5, error = ?6, note = ?7, versions = ?8, bytes = bytes + ?9, "
              "seconds = ?10, updated_at = ?11 WHERE rollout_id = ?1 AND host = ?2",
              &st, err);
    if (rc == 0) {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, host, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 3, outcome, -1, SQLITE_TRANSIENT);
        text_or_null(st, 4, error_code);
        text_or_null(st, 5, phase);
        text_or_null(st, 6, error);
        text_or_null(st, 7, note);
        text_or_null(st, 8, versions);
        sqlite3_bind_int64(st, 9, bytes);
        sqlite3_bind_double(st, 10, seconds);
        sqlite3_bind_int64(st, 11, now);
        rc = done(d, st, err);
    }
    sqlite3_finalize(st);
    if (rc == 0)
        rc = event(d, id, host, outcome, error, now, err);
    return end(d, rc, err);
}

int coord_journal_nodes(struct coord_db *d, long long id, struct coord_rollout_node **out,
                        size_t *n, struct kf_err *err)
{
    sqlite3_stmt *st = NULL;
    struct coord_rollout_node *v = NULL;
    int rc;

    *out = NULL;
    *n = 0;
    rc = prep(d,
              "SELECT host, stage, position, state, outcome, prior, detail, error_code, "
              "error_phase, error, note, versions, attempts, bytes, seconds, updated_at "
              "FROM rollout_nodes WHERE rollout_id = ?1 ORDER BY stage, position",
              &st, err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct coord_rollout_node *g = realloc(v, (*n + 1) * sizeof(*v)), *x;
        if (g == NULL) {
            rc = KF_ENOMEM;
            break;
        }
        v = g;
        x = &v[(*n)++];
        memset(x, 0, sizeof(*x));
        col_copy(st, 0, x->host, sizeof(x->host));
        x->stage = sqlite3_column_int(st, 1);
        x->position = sqlite3_column_int(st, 2);
        col_copy(st, 3, x->state, sizeof(x->state));
        col_copy(st, 4, x->outcome, sizeof(x->outcome));
        x->prior = col_dup(st, 5);
        col_copy(st, 6, x->detail, sizeof(x->detail));
        col_copy(st, 7, x->error_code, sizeof(x->error_code));
        col_copy(st, 8, x->error_phase, sizeof(x->error_phase));
        col_copy(st, 9, x->error, sizeof(x->error));
        col_copy(st, 10, x->note, sizeof(x->note));
        col_copy(st, 11, x->versions, sizeof(x->versions));
        x->attempts = sqlite3_column_int(st, 12);
        x->bytes = sqlite3_column_int64(st, 13);
        x->seconds = sqlite3_column_double(st, 14);
        x->updated_at = sqlite3_column_int64(st, 15);
    }
    if (rc == SQLITE_DONE)
        rc = 0;
    else if (rc != KF_ENOMEM)
        rc = kf_err_set(err, KF_EDB, "%s: %s", d->path, sqlite3_errmsg(d->db));
    sqlite3_finalize(st);
    if (rc < 0) {
        coord_rollout_nodes_free(v, *n);
        *n = 0;
        return rc;
    }
    *out = v;
    return 0;
}

void coord_journal_known_versions(struct coord_db *d, const struct coord_rollout *r,
                                  struct coord_rollout_node *v, size_t n)
{
    sqlite3_stmt *st = NULL;
    struct kf_err err;
    size_t i;

    kf_err_clear(&err);
    if (prep(d,
             "SELECT n.versions FROM rollout_nodes n JOIN rollouts r ON r.id = n.rollout_id "
             "WHERE n.host = ?1 AND r.profile = ?2 AND n.rollout_id < ?3 AND n.versions IS NOT "
             "NULL AND n.versions != '?' ORDER BY n.rollout_id DESC LIMIT 1",
             &st, &err) < 0)
        return;
    for (i = 0; i < n; i++) {
        if (strcmp(v[i].state, "pending") != 0 || v[i].versions[0])
            continue;
        sqlite3_bind_text(st, 1, v[i].host, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, r->profile, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, r->id);
        if (sqlite3_step(st) == SQLITE_ROW)
            col_copy(st, 0, v[i].versions, sizeof(v[i].versions));
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
    sqlite3_finalize(st);
}
