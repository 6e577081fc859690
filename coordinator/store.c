/* The artifact store's layout and its SQLite catalog.
 *
 *   STORE/index.json                          drivers and their kernels
 *   STORE/DRIVER/kernel-KERNEL/               profile "nvidia"
 *   STORE/PROFILE/DRIVER/kernel-KERNEL/       any other profile
 *       TOPDIR.tar.gz  TOPDIR.tar.gz.sha256  metadata.json
 *
 * Files are written atomically (temporary name, fsync, rename); the catalog
 * row is written last, so a key in the catalog always has its files. A
 * kernel release names one distro's one architecture, so one directory per
 * (profile, driver, kernel) is enough; a second key wanting the same
 * directory is refused by the build. */
#include "coordinator.h"
#include "builder.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

int coord_store_topdir(const struct coord_profile *p, const struct coord_key *k, char *out,
                       size_t outsz, struct kf_err *err)
{
    int rc = build_pkg_topdir(out, outsz, k->driver, k->kernel, k->arch, err);

    if (rc < 0 || p->type != PROFILE_KMOD)
        return rc;
    /* "nvidia-driver-" becomes the profile's name. */
    if (strlen(out) - strlen("nvidia-driver") + strlen(p->name) >= outsz)
        return kf_err_set(err, KF_EINVAL, "package name too long");
    memmove(out + strlen(p->name), out + strlen("nvidia-driver"),
            strlen(out) - strlen("nvidia-driver") + 1);
    memcpy(out, p->name, strlen(p->name));
    return 0;
}

char *coord_store_keydir(const struct coord_config *c, const struct coord_key *k)
{
    struct buf b;

    buf_init(&b, 0);
    if (strcmp(k->profile, "nvidia") == 0)
        buf_printf(&b, "%s/%s/kernel-%s", c->store, k->driver, k->kernel);
    else
        buf_printf(&b, "%s/%s/%s/kernel-%s", c->store, k->profile, k->driver, k->kernel);
    return buf_detach(&b, NULL);
}

static int prepare(struct coord_db *d, const char *sql, sqlite3_stmt **st, struct kf_err *err)
{
    if (sqlite3_prepare_v2(d->db, sql, -1, st, NULL) != SQLITE_OK)
        return kf_err_set(err, KF_EDB, "%s: %s", d->path, sqlite3_errmsg(d->db));
    return 0;
}

static void bind_key(sqlite3_stmt *st, int first, const struct coord_key *k)
{
    sqlite3_bind_text(st, first, k->profile, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, first + 1, k->driver, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, first + 2, k->kernel, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, first + 3, k->arch, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, first + 4, k->os_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, first + 5, k->os_version, -1, SQLITE_TRANSIENT);
}

static int finish(struct coord_db *d, sqlite3_stmt *st, int step, struct kf_err *err)
{
    int rc = 0;

    if (step != SQLITE_DONE && step != SQLITE_ROW)
        rc = kf_err_set(err, KF_EDB, "%s: %s", d->path, sqlite3_errmsg(d->db));
    sqlite3_finalize(st);
    return rc;
}

int coord_db_artifact_put(struct coord_db *d, const struct coord_key *k, const char *kernel_build,
                          const char *path, const char *sha256, long long size, long long build_id,
                          long long now, struct kf_err *err)
{
    sqlite3_stmt *st;
    int rc = prepare(d,
                     "INSERT OR REPLACE INTO artifacts(profile, driver, kernel, arch, os_id, "
                     "os_version, kernel_build, path, sha256, size, build_id, created_at) "
                     "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                     &st, err);

    if (rc < 0)
        return rc;
    bind_key(st, 1, k);
    if (kernel_build && kernel_build[0])
        sqlite3_bind_text(st, 7, kernel_build, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 8, path, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 9, sha256, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 10, size);
    if (build_id > 0)
        sqlite3_bind_int64(st, 11, build_id);
    sqlite3_bind_int64(st, 12, now);
    return finish(d, st, sqlite3_step(st), err);
}

static void copy_col(sqlite3_stmt *st, int i, char *out, size_t outsz)
{
    const unsigned char *t = sqlite3_column_text(st, i);

    snprintf(out, outsz, "%s", t ? (const char *)t : "");
}

#define ART_COLS                                                                                   \
    "profile, driver, kernel, arch, os_id, os_version, path, sha256, size, "                       \
    "build_id, created_at"

static void read_artifact(sqlite3_stmt *st, struct coord_artifact *a)
{
    memset(a, 0, sizeof(*a));
    copy_col(st, 0, a->profile, sizeof(a->profile));
    copy_col(st, 1, a->driver, sizeof(a->driver));
    copy_col(st, 2, a->kernel, sizeof(a->kernel));
    copy_col(st, 3, a->arch, sizeof(a->arch));
    copy_col(st, 4, a->os_id, sizeof(a->os_id));
    copy_col(st, 5, a->os_version, sizeof(a->os_version));
    copy_col(st, 6, a->path, sizeof(a->path));
    copy_col(st, 7, a->sha256, sizeof(a->sha256));
    a->size = sqlite3_column_int64(st, 8);
    a->build_id = sqlite3_column_int64(st, 9);
    a->created_at = sqlite3_column_int64(st, 10);
}

int coord_db_artifact_get(struct coord_db *d, const struct coord_key *k, struct coord_artifact *a,
                          struct kf_err *err)
{
    sqlite3_stmt *st;
    int rc = prepare(d,
                     "SELECT " ART_COLS " FROM artifacts WHERE profile = ?1 AND driver = ?2 AND "
                     "kernel = ?3 AND arch = ?4 AND os_id = ?5 AND os_version = ?6",
                     &st, err),
        step;

    if (rc < 0)
        return rc;
    bind_key(st, 1, k);
    step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        read_artifact(st, a);
    rc = finish(d, st, step, err);
    return rc < 0 ? rc : step == SQLITE_ROW;
}

int coord_db_artifact_list(struct coord_db *d, const char *profile, const char *driver,
                           const char *kernel, struct coord_artifact **out, size_t *n,
                           struct kf_err *err)
{
    sqlite3_stmt *st;
    struct coord_artifact *v = NULL, *nv;
    size_t cap = 0;
    int rc = prepare(d,
                     "SELECT " ART_COLS " FROM artifacts WHERE (?1 IS NULL OR profile = ?1) AND "
                     "(?2 IS NULL OR driver = ?2) AND (?3 IS NULL OR kernel = ?3)",
                     &st, err),
        step;

    *out = NULL;
    *n = 0;
    if (rc < 0)
        return rc;
    if (profile)
        sqlite3_bind_text(st, 1, profile, -1, SQLITE_TRANSIENT);
    if (driver)
        sqlite3_bind_text(st, 2, driver, -1, SQLITE_TRANSIENT);
    if (kernel)
        sqlite3_bind_text(st, 3, kernel, -1, SQLITE_TRANSIENT);
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            nv = realloc(v, cap * sizeof(*v));
            if (nv == NULL) {
                free(v);
                sqlite3_finalize(st);
                return kf_err_set(err, KF_ENOMEM, "out of memory");
            }
            v = nv;
        }
        read_artifact(st, &v[(*n)++]);
    }
    rc = finish(d, st, step, err);
    if (rc < 0) {
        free(v);
        *n = 0;
        return rc;
    }
    *out = v;
    return 0;
}

int coord_db_artifact_del(struct coord_db *d, const struct coord_artifact *a, struct kf_err *err)
{
    struct coord_key k = {a->profile, a->driver, a->kernel, a->arch, a->os_id, a->os_version};
    sqlite3_stmt *st;
    int rc = prepare(d,
                     "DELETE FROM artifacts WHERE profile = ?1 AND driver = ?2 AND kernel = ?3 "
                     "AND arch = ?4 AND os_id = ?5 AND os_version = ?6",
                     &st, err);

    if (rc < 0)
        return rc;
    bind_key(st, 1, &k);
    return finish(d, st, sqlite3_step(st), err);
}

int coord_db_build_begin(struct coord_db *d, const struct coord_key *k, const char *inputs,
                         const char *source_sha256, long long now, long long *id,
                         struct kf_err *err)
{
    sqlite3_stmt *st;
    int rc = prepare(d,
                     "INSERT INTO builds(profile, driver, kernel, arch, os_id, os_version, "
                     "inputs, source_sha256, status, started_at) "
                     "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'running', ?9)",
                     &st, err);

    if (rc < 0)
        return rc;
    bind_key(st, 1, k);
    sqlite3_bind_text(st, 7, inputs, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 8, source_sha256, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 9, now);
    rc = finish(d, st, sqlite3_step(st), err);
    if (rc == 0)
        *id = sqlite3_last_insert_rowid(d->db);
    return rc;
}

int coord_db_build_end(struct coord_db *d, long long id, const char *builder, const char *status,
                       const char *error, const char *log_path, double seconds,
                       const char *artifact_sha256, long long now, struct kf_err *err)
{
    sqlite3_stmt *st;
    int rc = prepare(d,
                     "UPDATE builds SET builder = ?2, status = ?3, error = ?4, log_path = ?5, "
                     "seconds = ?6, artifact_sha256 = ?7, finished_at = ?8 WHERE id = ?1",
                     &st, err);

    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    if (builder)
        sqlite3_bind_text(st, 2, builder, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, status, -1, SQLITE_TRANSIENT);
    if (error)
        sqlite3_bind_text(st, 4, error, -1, SQLITE_TRANSIENT);
    if (log_path)
        sqlite3_bind_text(st, 5, log_path, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 6, seconds);
    if (artifact_sha256)
        sqlite3_bind_text(st, 7, artifact_sha256, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 8, now);
    return finish(d, st, sqlite3_step(st), err);
}

int coord_db_build_last(struct coord_db *d, const struct coord_key *k, char *status, char *inputs,
                        char *error, char *log_path, struct kf_err *err)
{
    sqlite3_stmt *st;
    int rc = prepare(d,
                     "SELECT status, inputs, error, log_path FROM builds WHERE profile = ?1 AND "
                     "driver = ?2 AND kernel = ?3 AND arch = ?4 AND os_id = ?5 AND "
                     "os_version = ?6 AND status <> 'running' ORDER BY id DESC LIMIT 1",
                     &st, err),
        step;

    if (rc < 0)
        return rc;
    bind_key(st, 1, k);
    step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        copy_col(st, 0, status, 4096);
        copy_col(st, 1, inputs, 4096);
        copy_col(st, 2, error, 4096);
        copy_col(st, 3, log_path, 4096);
    }
    rc = finish(d, st, step, err);
    return rc < 0 ? rc : step == SQLITE_ROW;
}

int coord_store_write_index(struct coord_db *d, const struct coord_config *c, long long now,
                            struct kf_err *err)
{
    struct coord_artifact *v = NULL;
    json_t *doc = json_object(), *drivers = json_array(), *cur = NULL;
    char when[32], *text = NULL, *path = NULL;
    size_t n = 0, i, len;
    struct tm tm;
    time_t t = (time_t)now;
    int rc;

    rc = coord_db_artifact_list(d, NULL, NULL, NULL, &v, &n, err);
    if (rc < 0)
        goto out;
    /* Sorted by driver version (then profile), kernels in version order. */
    for (i = 0; i + 1 < n; i++) {
        size_t j, best = i;
        for (j = i + 1; j < n; j++) {
            int c1 = strverscmp(v[j].driver, v[best].driver);
            int c2 = strcmp(v[j].profile, v[best].profile);
            if (c1 < 0 ||
                (c1 == 0 && (c2 < 0 || (c2 == 0 && strverscmp(v[j].kernel, v[best].kernel) < 0))))
                best = j;
        }
        if (best != i) {
            struct coord_artifact tmp = v[i];
            v[i] = v[best];
            v[best] = tmp;
        }
    }
    for (i = 0; i < n; i++) {
        if (cur == NULL ||
            strcmp(v[i].driver, json_string_value(json_object_get(cur, "version"))) ||
            strcmp(v[i].profile, json_string_value(json_object_get(cur, "profile")))) {
            cur = json_pack("{s:s,s:s,s:[]}", "version", v[i].driver, "profile", v[i].profile,
                            "supported_kernels");
            json_array_append_new(drivers, cur);
        }
        json_array_append_new(json_object_get(cur, "supported_kernels"), json_string(v[i].kernel));
    }
    gmtime_r(&t, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_object_set_new(doc, "repository", json_string(c->store));
    json_object_set_new(doc, "last_updated", json_string(when));
    json_object_set_new(doc, "generator", json_string("kfleet " KF_VERSION));
    json_object_set(doc, "drivers", drivers);
    text = json_dumps(doc, JSON_INDENT(2));
    len = text ? strlen(text) : 0;
    path = malloc(strlen(c->store) + 16);
    if (text == NULL || path == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    text[len] = '\n'; /* json_dumps ends with the NUL we replace */
    sprintf(path, "%s/index.json", c->store);
    rc = build_write_file_atomic(path, text, len + 1, 0644, err);
out:
    free(text);
    free(path);
    free(v);
    json_decref(drivers);
    json_decref(doc);
    return rc;
}

int coord_store_load_order(const char *pkg_path, char *out, size_t n, struct kf_err *err)
{
    char path[4200], *slash;
    json_t *md, *order, *m;
    size_t i, off = 0;

    out[0] = '\0';
    snprintf(path, sizeof(path), "%s", pkg_path);
    slash = strrchr(path, '/');
    if (slash == NULL)
        return kf_err_set(err, KF_EINVAL, "package path %s has no directory", pkg_path);
    snprintf(slash + 1, sizeof(path) - (size_t)(slash + 1 - path), "metadata.json");
    md = json_load_file(path, 0, NULL);
    if (md == NULL)
        return kf_err_set(err, KF_EIO, "cannot read %s (kfleet artifacts verify)", path);
    order = json_object_get(md, "load_order");
    json_array_foreach(order, i, m)
    {
        const char *name = json_string_value(m);
        if (name == NULL || !kf_modname_valid(name) || off + strlen(name) + 2 > n) {
            json_decref(md);
            out[0] = '\0';
            return kf_err_set(err, KF_EPARSE, "%s: bad load_order", path);
        }
        off += (size_t)snprintf(out + off, n - off, "%s%s", off ? " " : "", name);
    }
    json_decref(md);
    return 0;
}
