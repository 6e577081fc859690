/* The state database: one SQLite file in the state directory, on the loop
 * thread, WAL mode, prepared statements only, migrations by user_version.
 *
 * Schema history (each step is one entry of `migrations`, applied in a
 * transaction; never edit a released step, add a new one):
 *   1: hosts, facts (latest attempt per host, last good facts kept),
 *      host_kernels (installed kernels per host).
 *   2: artifacts: the catalog of the artifact store, one row per build key
 *      (profile, driver, kernel, arch, distro).
 *   3: builds: every build attempt (status, builder, log, inputs hash), so a
 *      failure is remembered and retried only when its inputs change.
 *   4: rollouts, rollout_nodes, rollout_events: the deploy journal. Every
 *      node's state is written before the step it announces; events keep
 *      the history. */
#include "coordinator.h"

#include <errno.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const migrations[] = {
    /* 1 */
    "CREATE TABLE hosts ("
    "  name TEXT PRIMARY KEY,"
    "  first_seen INTEGER NOT NULL,"
    "  last_seen INTEGER NOT NULL"
    ");"
    "CREATE TABLE facts ("
    "  host TEXT PRIMARY KEY REFERENCES hosts(name) ON DELETE CASCADE,"
    "  gathered_at INTEGER NOT NULL," /* the latest attempt */
    "  ok INTEGER NOT NULL,"
    "  error_code TEXT, error_phase TEXT, error TEXT,"
    "  last_ok_at INTEGER," /* when the facts below were gathered */
    "  kernel TEXT, kernel_build TEXT, arch TEXT,"
    "  os_id TEXT, os_version TEXT, os_pretty TEXT,"
    "  loaded_driver TEXT, userspace_driver TEXT, secure_boot TEXT,"
    "  gpus INTEGER,"
    "  facts_json TEXT"
    ");"
    "CREATE TABLE host_kernels ("
    "  host TEXT NOT NULL REFERENCES hosts(name) ON DELETE CASCADE,"
    "  release TEXT NOT NULL,"
    "  running INTEGER NOT NULL,"
    "  modules_dep INTEGER NOT NULL,"
    "  build INTEGER NOT NULL,"
    "  image INTEGER NOT NULL,"
    "  PRIMARY KEY (host, release)"
    ");"
    "CREATE INDEX facts_kernel ON facts(kernel);",
    /* 2 */
    "CREATE TABLE artifacts ("
    "  profile TEXT NOT NULL, driver TEXT NOT NULL, kernel TEXT NOT NULL,"
    "  arch TEXT NOT NULL, os_id TEXT NOT NULL, os_version TEXT NOT NULL,"
    "  kernel_build TEXT," /* uname -v of the headers' kernel, when known */
    "  path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,"
    "  build_id INTEGER, created_at INTEGER NOT NULL,"
    "  PRIMARY KEY (profile, driver, kernel, arch, os_id, os_version)"
    ");",
    /* 3 */
    "CREATE TABLE builds ("
    "  id INTEGER PRIMARY KEY,"
    "  profile TEXT NOT NULL, driver TEXT NOT NULL, kernel TEXT NOT NULL,"
    "  arch TEXT NOT NULL, os_id TEXT NOT NULL, os_version TEXT NOT NULL,"
    "  inputs TEXT NOT NULL," /* sha256 over source, profile and settings */
    "  source_sha256 TEXT NOT NULL,"
    "  builder TEXT,"
    "  status TEXT NOT NULL," /* running, ok, failed, canceled, not_applicable */
    "  error TEXT, log_path TEXT,"
    "  started_at INTEGER NOT NULL, finished_at INTEGER, seconds REAL,"
    "  artifact_sha256 TEXT"
    ");"
    "CREATE INDEX builds_key ON builds(profile, driver, kernel, arch, os_id, os_version);",
    /* 4 */
    "CREATE TABLE rollouts ("
    "  id INTEGER PRIMARY KEY,"
    "  kind TEXT NOT NULL," /* deploy, rollback */
    "  profile TEXT NOT NULL, driver TEXT,"
    "  status TEXT NOT NULL,"   /* running, paused, halted, interrupted, done, aborted */
    "  stage INTEGER NOT NULL," /* the stage running or next (0-based) */
    "  nstages INTEGER NOT NULL,"
    "  owner TEXT NOT NULL,"   /* the node lock owner */
    "  options TEXT NOT NULL," /* JSON */
    "  reason TEXT,"
    "  pid INTEGER," /* the kfleet process that runs it */
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, finished_at INTEGER"
    ");"
    "CREATE TABLE rollout_nodes ("
    "  rollout_id INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,"
    "  host TEXT NOT NULL,"
    "  stage INTEGER NOT NULL, position INTEGER NOT NULL,"
    "  state TEXT NOT NULL," /* deploy_state_name() */
    "  outcome TEXT,"        /* NULL until it ends: deploy_outcome_name() */
    "  prior TEXT,"          /* JSON: what it had before (deploy_prior_to_json) */
    "  detail TEXT, error_code TEXT, error_phase TEXT, error TEXT, note TEXT, versions TEXT,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  bytes INTEGER NOT NULL DEFAULT 0,"
    "  seconds REAL, updated_at INTEGER NOT NULL,"
    "  PRIMARY KEY (rollout_id, host)"
    ");"
    "CREATE TABLE rollout_events ("
    "  id INTEGER PRIMARY KEY,"
    "  rollout_id INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,"
    "  host TEXT," /* NULL: the rollout itself */
    "  at INTEGER NOT NULL, state TEXT NOT NULL, detail TEXT"
    ");"
    "CREATE INDEX rollout_events_rollout ON rollout_events(rollout_id, id);",
};

enum {
    ST_HOST_UPSERT,
    ST_FACTS_OK,
    ST_FACTS_FAIL,
    ST_KERNELS_DEL,
    ST_KERNEL_INS,
    ST_COUNT,
};

static const char *const statements[ST_COUNT] = {
    [ST_HOST_UPSERT] = "INSERT INTO hosts(name, first_seen, last_seen) VALUES(?1, ?2, ?2) "
                       "ON CONFLICT(name) DO UPDATE SET last_seen = excluded.last_seen",
    [ST_FACTS_OK] =
        "INSERT OR REPLACE INTO facts(host, gathered_at, ok, error_code, error_phase, error, "
        "last_ok_at, kernel, kernel_build, arch, os_id, os_version, os_pretty, loaded_driver, "
        "userspace_driver, secure_boot, gpus, facts_json) "
        "VALUES(?1, ?2, 1, NULL, NULL, NULL, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    [ST_FACTS_FAIL] = "INSERT INTO facts(host, gathered_at, ok, error_code, error_phase, error) "
                      "VALUES(?1, ?2, 0, ?3, ?4, ?5) ON CONFLICT(host) DO UPDATE SET "
                      "gathered_at = excluded.gathered_at, ok = 0, "
                      "error_code = excluded.error_code, error_phase = excluded.error_phase, "
                      "error = excluded.error",
    [ST_KERNELS_DEL] = "DELETE FROM host_kernels WHERE host = ?1",
    [ST_KERNEL_INS] = "INSERT INTO host_kernels(host, release, running, modules_dep, build, "
                      "image) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
};

char *coord_default_state_dir(void)
{
    const char *xdg = getenv("XDG_STATE_HOME");
    const char *home = getenv("HOME");
    struct passwd *pw;
    char *p;
    size_t n;

    if (geteuid() == 0)
        return strdup("/var/lib/kfleet");
    if (xdg != NULL && xdg[0] == '/') {
        n = strlen(xdg) + 8;
        p = malloc(n);
        if (p != NULL)
            snprintf(p, n, "%s/kfleet", xdg);
        return p;
    }
    if (home == NULL || home[0] == '\0') {
        pw = getpwuid(getuid());
        home = pw ? pw->pw_dir : "/tmp";
    }
    n = strlen(home) + 32;
    p = malloc(n);
    if (p != NULL)
        snprintf(p, n, "%s/.local/state/kfleet", home);
    return p;
}

/* mkdir -p with mode 0700 for what it creates; an existing directory is
 * tightened to 0700 when we own it: facts name every node of the fleet. */
static int make_private_dir(const char *dir, struct kf_err *err)
{
    char path[4096];
    struct stat st;
    size_t i, n = strlen(dir);

    if (n == 0 || n >= sizeof(path))
        return kf_err_set(err, KF_EINVAL, "state directory path is empty or too long");
    memcpy(path, dir, n + 1);
    for (i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        path[i] = '\0';
        if (mkdir(path, 0700) < 0 && errno != EEXIST)
            return kf_err_set(err, KF_EIO, "cannot create state directory %s: %s", path,
                              strerror(errno));
        path[i] = dir[i];
    }
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return kf_err_set(err, KF_EIO, "state directory %s is not a directory", dir);
    if (st.st_uid == geteuid() && (st.st_mode & 077) != 0 && chmod(dir, 0700) < 0)
        return kf_err_set(err, KF_EIO, "cannot make %s private: %s", dir, strerror(errno));
    return 0;
}

int coord_db_exec(struct coord_db *d, const char *sql, struct kf_err *err)
{
    char *msg = NULL;

    if (sqlite3_exec(d->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        kf_err_set(err, KF_EDB, "%s: %s", d->path, msg ? msg : sqlite3_errmsg(d->db));
        sqlite3_free(msg);
        return KF_EDB;
    }
    return 0;
}

int coord_db_schema_version(struct coord_db *d)
{
    sqlite3_stmt *st;
    int v = -1;

    if (sqlite3_prepare_v2(d->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
        return -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return v;
}

static int migrate(struct coord_db *d, struct kf_err *err)
{
    const int latest = (int)(sizeof(migrations) / sizeof(migrations[0]));
    int v, rc;
    char sql[64];

    rc = coord_db_exec(d, "BEGIN IMMEDIATE", err);
    if (rc < 0)
        return rc;
    v = coord_db_schema_version(d);
    if (v < 0) {
        rc = kf_err_set(err, KF_EDB, "%s: cannot read schema version", d->path);
        goto out;
    }
    if (v > latest) {
        rc = kf_err_set(err, KF_EDB,
                        "%s: schema version %d is newer than this kfleet knows (%d): "
                        "use a newer kfleet",
                        d->path, v, latest);
        goto out;
    }
    for (; v < latest; v++) {
        rc = coord_db_exec(d, migrations[v], err);
        if (rc < 0)
            goto out;
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", v + 1);
        rc = coord_db_exec(d, sql, err);
        if (rc < 0)
            goto out;
    }
    rc = coord_db_exec(d, "COMMIT", err);
out:
    if (rc < 0)
        sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int coord_db_open(struct coord_db *d, const char *dir, struct kf_err *err)
{
    size_t n;
    mode_t old;
    int rc, i;

    memset(d, 0, sizeof(*d));
    rc = make_private_dir(dir, err);
    if (rc < 0)
        return rc;
    n = strlen(dir) + 16;
    d->path = malloc(n);
    if (d->path == NULL)
        return kf_err_set(err, KF_ENOMEM, "out of memory");
    snprintf(d->path, n, "%s/state.db", dir);

    old = umask(077); /* the database and its -wal/-shm files: owner only */
    rc = sqlite3_open_v2(d->path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    umask(old);
    if (rc != SQLITE_OK) {
        kf_err_set(err, KF_EDB, "cannot open state database %s: %s", d->path,
                   d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(d->db, 5000);
    rc = coord_db_exec(d,
                       "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; "
                       "PRAGMA foreign_keys = ON;",
                       err);
    if (rc < 0)
        goto fail;
    rc = migrate(d, err);
    if (rc < 0)
        goto fail;
    for (i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v2(d->db, statements[i], -1, &d->st[i], NULL) != SQLITE_OK) {
            kf_err_set(err, KF_EDB, "%s: %s", d->path, sqlite3_errmsg(d->db));
            goto fail;
        }
    }
    return 0;
fail:
    coord_db_close(d);
    return err ? err->code : KF_EDB;
}

void coord_db_close(struct coord_db *d)
{
    size_t i;

    if (d == NULL)
        return;
    for (i = 0; i < sizeof(d->st) / sizeof(d->st[0]); i++)
        sqlite3_finalize(d->st[i]);
    sqlite3_close(d->db);
    free(d->path);
    memset(d, 0, sizeof(*d));
}

static int step_done(struct coord_db *d, sqlite3_stmt *st, struct kf_err *err)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return kf_err_set(err, KF_EDB, "%s: %s", d->path, sqlite3_errmsg(d->db));
    return 0;
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s != NULL && s[0] != '\0')
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

int coord_db_store_facts(struct coord_db *d, const char *host, long long now,
                         const struct inv_facts *f, int code, const char *phase,
                         const char *message, struct kf_err *err)
{
    sqlite3_stmt *st;
    json_t *j = NULL;
    char *js = NULL;
    size_t i;
    int rc;

    rc = coord_db_exec(d, "BEGIN IMMEDIATE", err);
    if (rc < 0)
        return rc;
    st = d->st[ST_HOST_UPSERT];
    sqlite3_bind_text(st, 1, host, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, now);
    rc = step_done(d, st, err);
    if (rc < 0)
        goto out;

    if (code != 0) {
        st = d->st[ST_FACTS_FAIL];
        sqlite3_bind_text(st, 1, host, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, now);
        sqlite3_bind_text(st, 3, kf_errname(code), -1, SQLITE_STATIC);
        bind_text_or_null(st, 4, phase);
        bind_text_or_null(st, 5, message);
        rc = step_done(d, st, err);
        goto out;
    }

    j = inv_facts_to_json(f);
    js = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (js == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    st = d->st[ST_FACTS_OK];
    sqlite3_bind_text(st, 1, host, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_text(st, 3, f->kernel, -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, 4, f->kernel_build);
    bind_text_or_null(st, 5, f->arch);
    bind_text_or_null(st, 6, f->os_id);
    bind_text_or_null(st, 7, f->os_version);
    bind_text_or_null(st, 8, f->os_pretty);
    bind_text_or_null(st, 9, f->loaded_driver);
    bind_text_or_null(st, 10, f->userspace_driver);
    sqlite3_bind_text(st, 11,
                      f->secure_boot == INV_YES  ? "enabled"
                      : f->secure_boot == INV_NO ? "disabled"
                                                 : "unknown",
                      -1, SQLITE_STATIC);
    if (f->gpus_known == INV_NO)
        sqlite3_bind_null(st, 12);
    else
        sqlite3_bind_int64(st, 12, (sqlite3_int64)f->ngpus);
    sqlite3_bind_text(st, 13, js, -1, SQLITE_TRANSIENT);
    rc = step_done(d, st, err);
    if (rc < 0)
        goto out;

    st = d->st[ST_KERNELS_DEL];
    sqlite3_bind_text(st, 1, host, -1, SQLITE_TRANSIENT);
    rc = step_done(d, st, err);
    for (i = 0; rc == 0 && i < f->nkernels; i++) {
        const struct inv_kernel *k = &f->kernels[i];
        st = d->st[ST_KERNEL_INS];
        sqlite3_bind_text(st, 1, host, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, k->release, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 3, k->running);
        sqlite3_bind_int(st, 4, k->has_modules_dep);
        sqlite3_bind_int(st, 5, k->has_build);
        sqlite3_bind_int(st, 6, k->has_image);
        rc = step_done(d, st, err);
    }
out:
    free(js);
    json_decref(j);
    if (rc == 0)
        rc = coord_db_exec(d, "COMMIT", err);
    if (rc < 0)
        sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}
