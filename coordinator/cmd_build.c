/* kfleet build: every build key asked for is built once, in a container on
 * a builder worker, checked, packaged and stored; `kfleet builder image`
 * prepares the workers.
 *
 * Which keys: --missing takes the plan (every running and installed kernel
 * of the selected hosts, from stored facts) and builds what is not stored;
 * --kernel K builds those kernels. What is stored is not rebuilt unless
 * --force; a key whose last build failed with the same inputs is skipped
 * unless --retry-failed (its inputs: source, profile settings, headers
 * package, signing certificate).
 *
 * A build (one job) goes through
 *   QUEUED -> RUNNING (worker.sh build on a lane) -> POST (a libuv work
 *   thread: unpack, check, strip, sign, package, store) -> DONE
 * A job whose builder died (transport error) is queued again, at most
 * build.retries times. Ctrl-C or SIGTERM: no job starts, running containers
 * are stopped on their builders (worker.sh stop), POST steps finish (they
 * are atomic), and the run ends; nothing half-stored remains because the
 * store's files are renamed into place and the catalog row comes last. */
#include "coordinator.h"
#include "builder.h"

#include <dirent.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define BUILD_OUT_LIMIT ((size_t)2 << 30) /* a build's result tar: modules, log */
#define SETUP_TIMEOUT_MS (45u * 60 * 1000)

enum job_state { J_QUEUED, J_RUNNING, J_POST, J_DONE };

struct build_run;

struct job {
    struct build_run *run;
    char kernel[INV_KREL_MAX + 1], arch[32], os_id[64], os_version[64];
    char kernel_build[256];
    char headers_pkg[160];
    struct coord_key key;
    enum job_state state;
    int attempts;
    long long build_id;
    char id[48]; /* container name suffix on the builder */
    uint64_t t0;
    struct coord_lane *lane;
    /* outcome */
    const char *status; /* ok, failed, canceled, not_applicable */
    char error[1024];
    char log_path[4096];
    char tmp[4096];
    char pkg_path[4096];
    char sha256[65];
    uint64_t size;
    size_t nmodules, nstubs;
    char stubs[256];
    char compiler[256];
    char builder[128];
    char where[160]; /* builder#slot, for reports */
    /* POST */
    uv_work_t work;
    struct buf worker_err; /* the worker's stderr, appended to the log */
};

struct build_run {
    struct coord_opts *o;
    uv_loop_t loop;
    struct ssh_engine engine;
    int engine_ok, loop_ok, inv_ok;
    struct inventory inv;
    size_t *idx, nidx; /* hosts selected by --limit */
    struct coord_config cfg;
    const struct coord_profile *prof;
    struct coord_source src;
    struct coord_db db;
    char *state_dir;
    char inputs[65];
    const char *driver;
    struct coord_worker_env env;
    struct coord_worker *workers;
    size_t nworkers;
    struct job *jobs;
    size_t njobs;
    size_t stored, skipped_failed, na;
    size_t built, failed, canceled;
    int image_only; /* kfleet builder image */
    int force_image;
    int stopping;
    uv_signal_t sigint, sigterm;
    int signals_open;
    int db_failed;
    long long source_date_epoch;
};

static void pump(struct build_run *r);
static void worker_setup_step(struct coord_lane *l);
static void maybe_finish(struct build_run *r);

static long long now_s(void)
{
    return (long long)time(NULL);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    return remove(p);
}

static void rm_tree(const char *dir)
{
    if (dir[0] != '\0')
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int mkdir_p(const char *path, mode_t mode)
{
    char tmp[4096], *p;

    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return -1;
    for (p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(tmp, mode) < 0 && errno != EEXIST ? -1 : 0;
}

/* ---- output --------------------------------------------------------------- */

static void say(struct build_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct build_run *r, const char *fmt, ...)
{
    va_list ap;

    if (r->o->json)
        return;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static void lane_name(const struct coord_lane *l, char *out, size_t n)
{
    if (l->worker->nlanes > 1)
        snprintf(out, n, "%s#%u", l->worker->cfg->name, l->index + 1);
    else
        snprintf(out, n, "%s", l->worker->cfg->name);
}

/* The last lines of a log file, indented, for a failure report. */
static void print_tail(struct build_run *r, const char *path, int lines)
{
    FILE *f;
    char **ring, line[1024];
    int n = 0, i;

    if (r->o->json || (f = fopen(path, "r")) == NULL)
        return;
    ring = calloc((size_t)lines, sizeof(*ring));
    if (ring == NULL) {
        fclose(f);
        return;
    }
    while (fgets(line, sizeof(line), f)) {
        char safe[1024];
        line[strcspn(line, "\n")] = '\0';
        kf_escape_to(safe, sizeof(safe), line, strlen(line));
        free(ring[n % lines]);
        ring[n % lines] = strdup(safe);
        n++;
    }
    fclose(f);
    for (i = n > lines ? n - lines : 0; i < n; i++)
        printf("           | %s\n", ring[i % lines] ? ring[i % lines] : "");
    for (i = 0; i < lines; i++)
        free(ring[i]);
    free(ring);
}

/* ---- recording ------------------------------------------------------------ */

static void job_record_end(struct job *j)
{
    struct build_run *r = j->run;
    struct kf_err err;
    double secs = j->t0 ? (double)(uv_hrtime() - j->t0) / 1e9 : 0;

    if (j->build_id > 0 &&
        coord_db_build_end(&r->db, j->build_id, j->builder[0] ? j->builder : NULL, j->status,
                           j->error[0] ? j->error : NULL, j->log_path[0] ? j->log_path : NULL, secs,
                           j->sha256[0] ? j->sha256 : NULL, now_s(), &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        r->db_failed = 1;
    }
}

static void job_done(struct job *j, const char *status)
{
    struct build_run *r = j->run;
    const char *ln = j->where;
    double secs = j->t0 ? (double)(uv_hrtime() - j->t0) / 1e9 : 0;

    j->state = J_DONE;
    j->status = status;
    if (j->lane) {
        j->lane->job = NULL;
        j->lane = NULL;
    }
    if (strcmp(status, "ok") == 0) {
        r->built++;
        say(r, "  ok       %s on %s in %.1f s: %zu module%s, %.1f KiB, sha256 %.12s\n", j->kernel,
            ln, secs, j->nmodules, j->nmodules == 1 ? "" : "s", (double)j->size / 1024, j->sha256);
        say(r, "           %s\n", j->pkg_path);
        if (j->nstubs)
            say(r,
                "           WARNING: %zu module%s compiled to a stub (no dependencies, a few "
                "KiB): %s\n",
                j->nstubs, j->nstubs == 1 ? "" : "s", j->stubs);
    } else if (strcmp(status, "not_applicable") == 0) {
        r->na++;
        say(r, "  n/a      %s: %s\n", j->kernel, j->error);
    } else if (strcmp(status, "canceled") == 0) {
        r->canceled++;
        say(r, "  stopped  %s%s%s\n", j->kernel, ln[0] ? " on " : "", ln);
    } else {
        r->failed++;
        say(r, "  FAILED   %s%s%s after %.1f s: %s\n", j->kernel, ln[0] ? " on " : "", ln, secs,
            j->error);
        if (j->log_path[0]) {
            print_tail(r, j->log_path, 15);
            say(r, "           log: %s\n", j->log_path);
        }
    }
    job_record_end(j);
    if (j->tmp[0]) {
        rm_tree(j->tmp);
        j->tmp[0] = '\0';
    }
}

/* ---- POST: from the worker's tar to a stored package (work thread) -------- */

/* nvidia-peermem asked for with peermem: true but not in the module list
 * (the configuration adds it to the default list itself). */
static int peermem_extra(const struct build_run *r)
{
    const struct coord_profile *p = r->prof;
    size_t i;

    if (!p->peermem || p->type == PROFILE_KMOD)
        return 0;
    for (i = 0; i < p->nmodules; i++)
        if (strcmp(p->modules[i], "nvidia-peermem") == 0)
            return 0;
    return 1;
}

static int is_wanted(const struct build_run *r, const char *name)
{
    const struct coord_profile *p = r->prof;
    size_t i;

    if (p->nmodules == 0 && !r->src.has_dkms)
        return 1; /* every module the build made */
    for (i = 0; i < p->nmodules; i++)
        if (strcmp(p->modules[i], name) == 0)
            return 1;
    if (p->nmodules == 0)
        for (i = 0; i < r->src.dkms.nmodules; i++) {
            /* The worker names the files by BUILT_MODULE_NAME. */
            if (strcmp(r->src.dkms.modules[i].name, name) == 0)
                return 1;
        }
    return peermem_extra(r) && strcmp(name, "nvidia-peermem") == 0;
}

/* The names of the modules the package must have, for the message when
 * one is missing. */
static void wanted_list(const struct build_run *r, struct buf *b)
{
    const struct coord_profile *p = r->prof;
    size_t i;

    for (i = 0; i < p->nmodules; i++)
        buf_printf(b, "%s%s", i ? " " : "", p->modules[i]);
    if (p->nmodules == 0 && r->src.has_dkms)
        for (i = 0; i < r->src.dkms.nmodules; i++)
            buf_printf(b, "%s%s", i ? " " : "", r->src.dkms.modules[i].name);
    if (peermem_extra(r))
        buf_puts(b, " nvidia-peermem");
}

static int read_line_file(const char *path, char *out, size_t n)
{
    FILE *f = fopen(path, "r");

    out[0] = '\0';
    if (f == NULL)
        return -1;
    if (fgets(out, (int)n, f) == NULL)
        out[0] = '\0';
    out[strcspn(out, "\n")] = '\0';
    fclose(f);
    return 0;
}

static int post_process(struct job *j, struct kf_err *err)
{
    struct build_run *r = j->run;
    const struct coord_config *c = &r->cfg;
    char dir[4200], strip[4200], path[4400], topdir[256], *keydir = NULL, *mdtext = NULL;
    char **mods = NULL, **fwsrc = NULL, **fwname = NULL, subject[512], keyid[128];
    struct build_pkg_file *fw = NULL;
    size_t nmods = 0, nfw = 0, i, cap = 0, fcap = 0;
    struct build_pkg pkg;
    struct build_pkg_result res;
    struct dirent *de;
    DIR *d;
    struct buf missing;
    int rc = 0;

    build_pkg_result_init(&res);
    buf_init(&missing, 0);
    snprintf(dir, sizeof(dir), "%s/out", j->tmp);
    snprintf(strip, sizeof(strip), "%s/strip", j->tmp);
    snprintf(path, sizeof(path), "%s/compiler.txt", dir);
    read_line_file(path, j->compiler, sizeof(j->compiler));
    if (mkdir(strip, 0700) < 0)
        return kf_err_set(err, KF_EIO, "%s: %s", strip, strerror(errno));

    /* modules/: the ones the profile wants, stripped (and signed). */
    snprintf(path, sizeof(path), "%s/modules", dir);
    d = opendir(path);
    if (d == NULL)
        return kf_err_set(err, KF_ENOENT, "the builder sent no modules/ directory");
    while ((de = readdir(d)) != NULL) {
        char name[256], in[4400], out[4400];
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 3, ".ko") != 0)
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(len - 3), de->d_name);
        if (!is_wanted(r, name))
            continue;
        if (nmods == cap) {
            char **nv = realloc(mods, (cap = cap ? cap * 2 : 8) * sizeof(*nv));
            if (nv == NULL) {
                rc = kf_err_set(err, KF_ENOMEM, "out of memory");
                break;
            }
            mods = nv;
        }
        snprintf(in, sizeof(in), "%s/%s", path, de->d_name);
        snprintf(out, sizeof(out), "%s/%s", strip, de->d_name);
        if ((mods[nmods] = strdup(out)) == NULL) {
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
            break;
        }
        nmods++;
        if ((rc = build_strip_debug(in, out, NULL, err)) < 0)
            break;
        if (c->sign_key && ((rc = build_sign_module(out, NULL, c->sign_key, c->sign_cert,
                                                    c->sign_hash, err)) < 0 ||
                            (rc = build_verify_module_signature(out, c->sign_cert, err)) < 0))
            break;
    }
    closedir(d);
    if (rc < 0)
        goto out;

    /* Every module the profile names must be there. */
    {
        struct buf want;
        char *tok, *save = NULL;
        buf_init(&want, 0);
        wanted_list(r, &want);
        for (tok = strtok_r(want.data ? want.data : (char *)"", " ", &save); tok;
             tok = strtok_r(NULL, " ", &save)) {
            int found = 0;
            for (i = 0; i < nmods; i++) {
                const char *b = strrchr(mods[i], '/') + 1;
                if (strncmp(b, tok, strlen(tok)) == 0 && strcmp(b + strlen(tok), ".ko") == 0)
                    found = 1;
            }
            if (!found)
                buf_printf(&missing, "%s%s", missing.len ? ", " : "", tok);
        }
        buf_release(&want);
        if (missing.len) {
            rc = kf_err_set(err, KF_ENOENT, "the build made no %s.ko (the profile's modules)",
                            buf_cstr(&missing));
            goto out;
        }
        if (nmods == 0) {
            rc = kf_err_set(err, KF_ENOENT, "the build made no module");
            goto out;
        }
    }

    /* firmware/ (GSP firmware of the .run package) -> nvidia/DRIVER/NAME. */
    snprintf(path, sizeof(path), "%s/firmware", dir);
    if ((d = opendir(path)) != NULL) {
        while ((de = readdir(d)) != NULL) {
            char src[4400], name[512];
            if (de->d_name[0] == '.')
                continue;
            if (nfw == fcap) {
                fcap = fcap ? fcap * 2 : 8;
                fwsrc = realloc(fwsrc, fcap * sizeof(*fwsrc));
                fwname = realloc(fwname, fcap * sizeof(*fwname));
                if (fwsrc == NULL || fwname == NULL) {
                    rc = kf_err_set(err, KF_ENOMEM, "out of memory");
                    break;
                }
            }
            snprintf(src, sizeof(src), "%s/%s", path, de->d_name);
            snprintf(name, sizeof(name), "nvidia/%s/%s", j->key.driver, de->d_name);
            fwsrc[nfw] = strdup(src);
            fwname[nfw] = strdup(name);
            nfw++;
        }
        closedir(d);
        if (rc < 0)
            goto out;
        fw = calloc(nfw + 1, sizeof(*fw));
        if (fw == NULL) {
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
            goto out;
        }
        for (i = 0; i < nfw; i++)
            fw[i].src = fwsrc[i], fw[i].name = fwname[i];
    }

    if ((rc = coord_store_topdir(r->prof, &j->key, topdir, sizeof(topdir), err)) < 0)
        goto out;
    keydir = coord_store_keydir(c, &j->key);
    if (keydir == NULL || mkdir_p(keydir, 0755) < 0) {
        rc = kf_err_set(err, KF_EIO, "%s: cannot create: %s", keydir ? keydir : c->store,
                        strerror(errno));
        goto out;
    }
    memset(&pkg, 0, sizeof(pkg));
    pkg.topdir = topdir;
    pkg.driver_version = j->key.driver;
    pkg.kernel_release = j->kernel;
    pkg.kernel_build = j->kernel_build[0] ? j->kernel_build : NULL;
    pkg.arch = j->arch;
    pkg.os_id = j->os_id;
    pkg.os_version = j->os_version;
    pkg.compiler = j->compiler[0] ? j->compiler : NULL;
    pkg.build_host = j->builder;
    pkg.profile = r->prof->name;
    pkg.source_sha256 = r->src.sha256;
    pkg.modules = (const char *const *)mods;
    pkg.nmodules = nmods;
    pkg.firmware = fw;
    pkg.nfirmware = nfw;
    pkg.source_date_epoch = r->source_date_epoch;
    pkg.stub_threshold = r->prof->stub_threshold;
    if (c->sign_cert) {
        if ((rc = build_cert_describe(c->sign_cert, subject, sizeof(subject), keyid, sizeof(keyid),
                                      err)) < 0)
            goto out;
        pkg.signer_subject = subject;
        pkg.signer_key_id = keyid;
    }
    snprintf(j->pkg_path, sizeof(j->pkg_path), "%s/%s.tar.gz", keydir, topdir);
    if ((rc = build_package_write(&pkg, j->pkg_path, &res, err)) < 0)
        goto out;
    mdtext = json_dumps(res.metadata, JSON_INDENT(2) | JSON_SORT_KEYS);
    snprintf(path, sizeof(path), "%s/metadata.json", keydir);
    if (mdtext == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    {
        size_t len = strlen(mdtext);
        mdtext[len] = '\n';
        rc = build_write_file_atomic(path, mdtext, len + 1, 0644, err);
    }
    if (rc < 0)
        goto out;
    snprintf(j->sha256, sizeof(j->sha256), "%s", res.sha256);
    j->size = res.size;
    j->nmodules = nmods;
    j->nstubs = res.nstubs;
    if (res.nstubs) {
        json_t *m;
        size_t k;
        json_array_foreach(json_object_get(res.metadata, "modules"), k, m)
        {
            if (json_is_true(json_object_get(m, "stub"))) {
                size_t len = strlen(j->stubs);
                snprintf(j->stubs + len, sizeof(j->stubs) - len, "%s%s", len ? ", " : "",
                         json_string_value(json_object_get(m, "name")));
            }
        }
    }
out:
    for (i = 0; i < nmods; i++)
        free(mods[i]);
    free(mods);
    for (i = 0; i < nfw; i++) {
        free(fwsrc[i]);
        free(fwname[i]);
    }
    free(fwsrc);
    free(fwname);
    free(fw);
    free(keydir);
    free(mdtext);
    buf_release(&missing);
    build_pkg_result_release(&res);
    return rc;
}

static void post_work(uv_work_t *w)
{
    struct job *j = w->data;
    struct kf_err err;

    kf_err_clear(&err);
    if (post_process(j, &err) < 0)
        snprintf(j->error, sizeof(j->error), "%s", kf_err_msg(&err));
}

static void post_after(uv_work_t *w, int status)
{
    struct job *j = w->data;
    struct build_run *r = j->run;
    struct kf_err err;

    (void)status;
    if (j->error[0] == '\0') {
        if (coord_db_artifact_put(&r->db, &j->key, j->kernel_build, j->pkg_path, j->sha256,
                                  (long long)j->size, j->build_id, now_s(), &err) < 0) {
            snprintf(j->error, sizeof(j->error), "%s", kf_err_msg(&err));
            r->db_failed = 1;
        }
    }
    job_done(j, j->error[0] ? "failed" : "ok");
    pump(r);
}

/* ---- a build on a lane ---------------------------------------------------- */

static const char *worker_exit_meaning(int code)
{
    switch (code) {
    case 10:
        return "make failed";
    case 11:
        return "the build made no module, or not every module it should";
    case 12:
        return "a module's vermagic is not for this kernel";
    case 13:
        return "the source could not be unpacked";
    case 14:
        return "not applicable";
    case 20:
        return "builder problem";
    case 21:
        return "the kernel headers package cannot be installed";
    }
    return "the builder program failed";
}

/* The worker's stderr, display-safe, last line only (for one-line reports). */
static void last_err_line(struct buf *e, char *out, size_t n)
{
    const char *s = e && e->len ? buf_cstr(e) : "";
    const char *end = s + strlen(s), *start;

    while (end > s && (end[-1] == '\n' || end[-1] == ' '))
        end--;
    start = end;
    while (start > s && start[-1] != '\n')
        start--;
    kf_escape_to(out, n, start, (size_t)(end - start));
}

static void save_log(struct job *j, struct coord_lane *l)
{
    struct build_run *r = j->run;
    char src[4200];
    FILE *in, *out;
    char chunk[65536];
    size_t n;

    snprintf(j->log_path, sizeof(j->log_path), "%s/logs/builds/%lld-%s.log", r->state_dir,
             j->build_id, j->kernel);
    out = fopen(j->log_path, "w");
    if (out == NULL) {
        j->log_path[0] = '\0';
        return;
    }
    fprintf(out, "# kfleet build %lld: profile %s, driver %s, kernel %s, builder %s\n", j->build_id,
            r->prof->name, j->key.driver, j->kernel, j->builder);
    snprintf(src, sizeof(src), "%s/out/build.log", j->tmp);
    if ((in = fopen(src, "r")) != NULL) {
        while ((n = fread(chunk, 1, sizeof(chunk), in)) > 0)
            fwrite(chunk, 1, n, out);
        fclose(in);
    }
    if (l->err && l->err->len) {
        fputs("# ---- builder program (stderr) ----\n", out);
        fwrite(l->err->data, 1, l->err->len, out);
    }
    fclose(out);
}

static void stop_remote_container(struct job *j);

static void on_build_done(struct coord_lane *l)
{
    struct job *j = l->job;
    struct build_run *r = j->run;
    struct kf_err err;
    int code = l->exit_status;

    if (j->state != J_RUNNING)
        return;
    if (l->status != 0 && l->status != KF_ETRUNC && l->status != KF_ETIMEDOUT &&
        l->status != KF_ECANCELED) {
        /* The builder went away (connection lost): another try elsewhere. */
        struct coord_worker *w = l->worker;
        w->state = W_DEAD;
        snprintf(w->why, sizeof(w->why), "%s", l->message);
        say(r, "  lost     %s on %s: %s\n", j->kernel, w->cfg->name, l->message);
        l->job = NULL;
        j->lane = NULL;
        if (r->stopping) {
            job_done(j, "canceled");
        } else if ((unsigned)j->attempts <= r->cfg.build_retries) {
            j->state = J_QUEUED;
            snprintf(j->error, sizeof(j->error), "builder %s: %s", w->cfg->name, l->message);
        } else {
            snprintf(j->error, sizeof(j->error), "gave up after %d attempts; last: builder %s: %s",
                     j->attempts, w->cfg->name, l->message);
            job_done(j, "failed");
        }
        pump(r);
        return;
    }
    if (l->status == KF_ECANCELED || r->stopping) {
        job_done(j, "canceled");
        pump(r);
        return;
    }
    if (l->status == KF_ETIMEDOUT) {
        snprintf(j->error, sizeof(j->error), "timed out after build.timeout (%u s)",
                 r->cfg.build_timeout);
        if (l->worker->host)
            stop_remote_container(j);
        job_done(j, "failed");
        pump(r);
        return;
    }
    /* The worker ran: 0, 10-14 come with a tar of the out directory. */
    snprintf(j->tmp, sizeof(j->tmp), "%s/tmp/build-%s", r->state_dir, j->id);
    rm_tree(j->tmp);
    {
        char out[4300];
        snprintf(out, sizeof(out), "%s/out", j->tmp);
        if (mkdir_p(out, 0700) < 0) {
            snprintf(j->error, sizeof(j->error), "%s: %s", out, strerror(errno));
            job_done(j, "failed");
            pump(r);
            return;
        }
        if (((code >= 10 && code <= 14) || code == 0) && l->status == 0 && l->out &&
            l->out->len > 0 &&
            build_untar(l->out->data, l->out->len, out, BUILD_OUT_LIMIT, &err) < 0)
            snprintf(j->error, sizeof(j->error), "%s", kf_err_msg(&err));
    }
    save_log(j, l);
    if (j->error[0] == '\0' && l->status == KF_ETRUNC)
        snprintf(j->error, sizeof(j->error), "the builder sent more than %zu bytes",
                 BUILD_OUT_LIMIT);
    if (j->error[0] == '\0' && code != 0) {
        char line[400];
        last_err_line(l->err, line, sizeof(line));
        if (code == 14) {
            snprintf(j->error, sizeof(j->error), "%s", line[0] ? line : "not applicable");
            job_done(j, "not_applicable");
            pump(r);
            return;
        }
        snprintf(j->error, sizeof(j->error), "%s (worker exit %d)%s%s", worker_exit_meaning(code),
                 code, line[0] ? ": " : "", line);
    }
    if (j->error[0]) {
        job_done(j, "failed");
        pump(r);
        return;
    }
    /* Built: check, package and store on a work thread. */
    j->state = J_POST;
    if (j->lane) {
        j->lane->job = NULL;
        j->lane = NULL;
    }
    j->work.data = j;
    if (uv_queue_work(&r->loop, &j->work, post_work, post_after) < 0) {
        snprintf(j->error, sizeof(j->error), "cannot start the packaging step");
        job_done(j, "failed");
    }
    pump(r);
}

static void job_start(struct job *j, struct coord_lane *l)
{
    struct build_run *r = j->run;
    struct kf_err err;
    const char *args[6];

    j->attempts++;
    j->state = J_RUNNING;
    j->lane = l;
    j->error[0] = '\0';
    l->job = j;
    lane_name(l, j->where, sizeof(j->where));
    snprintf(j->builder, sizeof(j->builder), "%s", l->worker->cfg->name);
    if (j->build_id == 0) {
        if (coord_db_build_begin(&r->db, &j->key, r->inputs, r->src.sha256, now_s(), &j->build_id,
                                 &err) < 0) {
            fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
            r->db_failed = 1;
        }
        j->t0 = uv_hrtime();
    }
    snprintf(j->id, sizeof(j->id), "%lld-%d-%d", j->build_id, (int)getpid(), j->attempts);
    say(r, "  start    %s on %s\n", j->kernel, j->where);
    args[0] = "build";
    args[1] = j->id;
    args[2] = j->kernel;
    args[3] = j->headers_pkg;
    args[4] = r->src.sha256;
    args[5] = coord_source_kind_name(r->src.kind);
    if (coord_lane_exec(l, args, 6, NULL, 0, BUILD_OUT_LIMIT, (r->cfg.build_timeout + 1800) * 1000u,
                        on_build_done) < 0) {
        snprintf(j->error, sizeof(j->error), "%s", l->message);
        job_done(j, "failed");
    }
}

/* ---- stopping ------------------------------------------------------------- */

struct stopper {
    struct coord_worker w;
    struct coord_lane lane;
};

static void on_stopped(struct coord_lane *l)
{
    struct stopper *s = (struct stopper *)l->worker;

    coord_lane_close(&s->lane);
    /* The connection's memory goes when libuv has closed it; ours now. */
    free(s);
}

/* worker.sh stop ID on the job's builder, through a lane of its own. */
static void stop_container(struct job *j, struct coord_worker *w)
{
    struct stopper *s = calloc(1, sizeof(*s));
    const char *args[2] = {"stop", j->id};

    if (s == NULL)
        return;
    s->w = *w;
    s->w.lanes = &s->lane;
    s->w.nlanes = 1;
    s->lane.worker = &s->w;
    if (coord_lane_exec(&s->lane, args, 2, NULL, 0, 4096, 60000, on_stopped) < 0)
        free(s);
}

static void stop_remote_container(struct job *j)
{
    if (j->lane)
        stop_container(j, j->lane->worker);
}

static void stop_all(struct build_run *r, const char *why)
{
    size_t i;

    if (r->stopping)
        return;
    r->stopping = 1;
    say(r, "kfleet: %s: stopping the running builds\n", why);
    for (i = 0; i < r->njobs; i++) {
        struct job *j = &r->jobs[i];
        if (j->state == J_QUEUED) {
            job_done(j, "canceled");
        } else if (j->state == J_RUNNING && j->lane) {
            struct coord_lane *l = j->lane;
            stop_container(j, l->worker);
            if (l->worker->host) {
                coord_lane_kill(l); /* closes the connection: no callback */
                job_done(j, "canceled");
            } else {
                coord_lane_kill(l); /* on_build_done reports it */
            }
        }
    }
    for (i = 0; i < r->nworkers; i++) {
        struct coord_worker *w = &r->workers[i];
        if (w->state != W_READY && w->state != W_DEAD) {
            w->state = W_DEAD;
            snprintf(w->why, sizeof(w->why), "stopped");
            coord_lane_close(&w->lanes[0]);
        }
    }
    maybe_finish(r);
}

static void on_signal(uv_signal_t *s, int signum)
{
    stop_all(s->data, signum == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)");
}

/* ---- workers -------------------------------------------------------------- */

static void worker_dead(struct coord_worker *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void worker_dead(struct coord_worker *w, const char *fmt, ...)
{
    va_list ap;

    w->state = W_DEAD;
    va_start(ap, fmt);
    vsnprintf(w->why, sizeof(w->why), fmt, ap);
    va_end(ap);
}

static struct build_run *worker_run(struct coord_worker *w)
{
    return w->owner;
}

static void setup_failed(struct coord_lane *l, const char *step)
{
    struct coord_worker *w = l->worker;
    struct build_run *r = worker_run(w);
    char line[400];

    last_err_line(l->err, line, sizeof(line));
    if (l->status != 0)
        worker_dead(w, "%s: %s", step, l->message);
    else
        worker_dead(w, "%s: %s", step, line[0] ? line : "failed");
    say(r, "  builder  %s: unusable: %s\n", w->cfg->name, w->why);
    coord_lane_close(l);
    pump(r);
}

static void worker_setup_step(struct coord_lane *l)
{
    struct coord_worker *w = l->worker;
    struct build_run *r = worker_run(w);
    const char *args[3];
    int rc = 0;

    if (r->stopping) {
        if (w->state != W_DEAD)
            worker_dead(w, "stopped");
        coord_lane_close(l);
        maybe_finish(r);
        return;
    }
    switch (w->state) {
    case W_NEW:
        w->state = W_CHECK;
        args[0] = "check";
        rc = coord_lane_exec(l, args, 1, NULL, 0, 65536, 120000, worker_setup_step);
        break;
    case W_CHECK: {
        char arch[64] = "";
        if (l->status != 0 || l->exit_status != 0 || l->out == NULL ||
            sscanf(buf_cstr(l->out), "ok %63s", arch) != 1) {
            setup_failed(l, "check");
            return;
        }
        snprintf(w->arch, sizeof(w->arch), "%s", arch);
        w->state = W_IMAGE;
        args[0] = "image";
        args[1] = "--force";
        say(r, "  builder  %s (%s, %u slot%s): preparing the base image\n", w->cfg->name, w->arch,
            w->nlanes, w->nlanes == 1 ? "" : "s");
        rc = coord_lane_exec(l, args, r->force_image ? 2 : 1, NULL, 0, 65536, SETUP_TIMEOUT_MS,
                             worker_setup_step);
        break;
    }
    case W_IMAGE:
        if (l->status != 0 || l->exit_status != 0) {
            setup_failed(l, "image");
            return;
        }
        if (r->image_only) {
            say(r, "  builder  %s: base image ready\n", w->cfg->name);
            w->state = W_READY;
            coord_lane_close(l);
            maybe_finish(r);
            return;
        }
        w->state = W_SOURCE;
        args[0] = "has-source";
        args[1] = r->src.sha256;
        rc = coord_lane_exec(l, args, 2, NULL, 0, 4096, 60000, worker_setup_step);
        break;
    case W_SOURCE:
        if (l->status != 0 || l->exit_status != 0) {
            setup_failed(l, "source");
            return;
        }
        if (l->out && strncmp(buf_cstr(l->out), "no", 2) == 0) {
            /* Upload, then ask again: "yes" ends the step. */
            say(r, "  builder  %s: sending the source (%.1f MiB, sha256 %.12s)\n", w->cfg->name,
                (double)r->src.data.len / 1048576, r->src.sha256);
            args[0] = "put-source";
            args[1] = r->src.sha256;
            rc = coord_lane_exec(l, args, 2, r->src.data.data, r->src.data.len, 65536,
                                 SETUP_TIMEOUT_MS, worker_setup_step);
            w->state = W_SOURCE;
            /* A put-source prints nothing: the next round sees "" and is
             * taken as done below. */
            break;
        }
        w->state = W_READY;
        pump(r);
        return;
    default:
        return;
    }
    if (rc < 0) {
        worker_dead(w, "%s", l->message);
        pump(r);
    }
}

/* ---- scheduling ----------------------------------------------------------- */

static void maybe_finish(struct build_run *r)
{
    size_t i;
    unsigned k;

    for (i = 0; i < r->njobs; i++)
        if (r->jobs[i].state != J_DONE)
            return;
    for (i = 0; i < r->nworkers; i++) {
        struct coord_worker *w = &r->workers[i];
        if (r->image_only && w->state != W_READY && w->state != W_DEAD)
            return;
    }
    /* Everything is done: let the loop end. */
    for (i = 0; i < r->nworkers; i++)
        for (k = 0; k < r->workers[i].nlanes; k++)
            coord_lane_close(&r->workers[i].lanes[k]);
    if (r->signals_open) {
        r->signals_open = 0;
        uv_close((uv_handle_t *)&r->sigint, NULL);
        uv_close((uv_handle_t *)&r->sigterm, NULL);
    }
}

static void pump(struct build_run *r)
{
    size_t i, jn;
    unsigned k;
    int any_alive = 0;

    if (r->stopping) {
        maybe_finish(r);
        return;
    }
    for (i = 0; i < r->nworkers; i++) {
        struct coord_worker *w = &r->workers[i];
        if (w->state != W_DEAD)
            any_alive = 1;
        if (w->state != W_READY)
            continue;
        for (k = 0; k < w->nlanes; k++) {
            struct coord_lane *l = &w->lanes[k];
            if (l->busy || l->job != NULL)
                continue;
            for (jn = 0; jn < r->njobs; jn++) {
                struct job *j = &r->jobs[jn];
                if (j->state == J_QUEUED && strcmp(j->arch, w->arch) == 0) {
                    job_start(j, l);
                    break;
                }
            }
        }
    }
    /* Jobs no live worker can take fail, with the workers' reasons. */
    for (jn = 0; jn < r->njobs; jn++) {
        struct job *j = &r->jobs[jn];
        int possible = 0;
        if (j->state != J_QUEUED)
            continue;
        for (i = 0; i < r->nworkers; i++) {
            struct coord_worker *w = &r->workers[i];
            if (w->state == W_DEAD)
                continue;
            if (w->state != W_READY || strcmp(w->arch, j->arch) == 0)
                possible = 1;
        }
        if (!possible) {
            struct buf b;
            buf_init(&b, 0);
            if (j->error[0])
                buf_printf(&b, "%s; ", j->error);
            if (any_alive)
                buf_printf(&b, "no builder for architecture %s", j->arch);
            else
                buf_puts(&b, "no builder left");
            for (i = 0; i < r->nworkers; i++)
                if (r->workers[i].state == W_DEAD)
                    buf_printf(&b, "; %s: %s", r->workers[i].cfg->name, r->workers[i].why);
            snprintf(j->error, sizeof(j->error), "%s", buf_cstr(&b));
            buf_release(&b);
            job_done(j, "failed");
        }
    }
    maybe_finish(r);
}

static int workers_init(struct build_run *r)
{
    size_t i, n = 0;
    unsigned k;

    r->workers = calloc(r->cfg.nbuilders, sizeof(*r->workers));
    if (r->workers == NULL)
        return KF_ENOMEM;
    for (i = 0; i < r->cfg.nbuilders; i++) {
        const struct coord_builder *b = &r->cfg.builders[i];
        struct coord_worker *w;
        const struct inv_host *h = NULL;

        if (r->o->builder && strcmp(r->o->builder, b->name) != 0)
            continue;
        if (strcmp(b->host, "local") != 0) {
            h = inv_find_host(&r->inv, b->host);
            if (h == NULL) {
                fprintf(stderr,
                        "kfleet: %s: builders: '%s' (builder %s) is not a host of the inventory "
                        "%s\n",
                        r->cfg.path, b->host, b->name, r->o->inventory);
                return KF_ECONFIG;
            }
        }
        w = &r->workers[n++];
        w->cfg = b;
        w->host = h;
        w->loop = &r->loop;
        w->engine = &r->engine;
        w->env = &r->env;
        w->nlanes = b->slots;
        w->owner = r;
        w->lanes = calloc(b->slots, sizeof(*w->lanes));
        if (w->lanes == NULL)
            return KF_ENOMEM;
        for (k = 0; k < b->slots; k++) {
            w->lanes[k].worker = w;
            w->lanes[k].index = k;
        }
    }
    r->nworkers = n;
    if (n == 0) {
        fprintf(stderr, "kfleet: no builder named '%s' in %s\n", r->o->builder, r->cfg.path);
        return KF_ECONFIG;
    }
    return 0;
}

static void workers_start(struct build_run *r)
{
    size_t i;

    for (i = 0; i < r->nworkers; i++) {
        worker_setup_step(&r->workers[i].lanes[0]);
    }
}

static void workers_release(struct build_run *r)
{
    size_t i;

    for (i = 0; i < r->nworkers; i++)
        free(r->workers[i].lanes);
    free(r->workers);
}

/* ---- selecting the keys ---------------------------------------------------- */

static int headers_package(const struct coord_profile *p, const char *os_id, const char *kernel,
                           char *out, size_t n)
{
    const char *pat = strcmp(os_id, "debian") == 0 || strcmp(os_id, "ubuntu") == 0
                          ? p->headers_debian
                          : p->headers_rhel;
    const char *at;
    struct buf b;

    if (pat == NULL)
        return -1;
    buf_init(&b, 0);
    while ((at = strstr(pat, "{kernel}")) != NULL) {
        buf_append(&b, pat, (size_t)(at - pat));
        buf_puts(&b, kernel);
        pat = at + strlen("{kernel}");
    }
    buf_puts(&b, pat);
    snprintf(out, n, "%s", buf_cstr(&b));
    buf_release(&b);
    return 0;
}

static int add_job(struct build_run *r, const char *kernel, const char *arch, const char *os_id,
                   const char *os_version, const char *kernel_build)
{
    struct job *j;
    struct coord_artifact a;
    struct kf_err err;
    char status[4096], inputs[4096], error[4096], log[4096];
    int rc;

    j = &r->jobs[r->njobs];
    memset(j, 0, sizeof(*j));
    j->run = r;
    snprintf(j->kernel, sizeof(j->kernel), "%s", kernel);
    snprintf(j->arch, sizeof(j->arch), "%s", arch);
    snprintf(j->os_id, sizeof(j->os_id), "%s", os_id);
    snprintf(j->os_version, sizeof(j->os_version), "%s", os_version);
    snprintf(j->kernel_build, sizeof(j->kernel_build), "%s", kernel_build ? kernel_build : "");
    j->key.profile = r->prof->name;
    j->key.driver = r->driver;
    j->key.kernel = j->kernel;
    j->key.arch = j->arch;
    j->key.os_id = j->os_id;
    j->key.os_version = j->os_version;
    /* Builders make Debian 12 images (builder/worker.sh image): another
     * distro's kernel headers are not in its archive. */
    if (strcmp(os_id, "debian") != 0 || strcmp(os_version, "12") != 0) {
        say(r, "  n/a      %s (%s %s): kfleet's builders make Debian 12 images only\n", kernel,
            os_id, os_version);
        r->na++;
        return 0;
    }
    if (headers_package(r->prof, os_id, kernel, j->headers_pkg, sizeof(j->headers_pkg)) < 0) {
        say(r, "  n/a      %s: no headers package pattern for distro %s\n", kernel, os_id);
        r->na++;
        return 0;
    }
    rc = coord_db_artifact_get(&r->db, &j->key, &a, &err);
    if (rc < 0)
        return rc;
    if (rc == 1 && !r->o->force) {
        say(r, "  stored   %s: already in the store, not rebuilt (--force rebuilds)\n", kernel);
        say(r, "           %s\n", a.path);
        r->stored++;
        return 0;
    }
    rc = coord_db_build_last(&r->db, &j->key, status, inputs, error, log, &err);
    if (rc < 0)
        return rc;
    if (rc == 1 && strcmp(status, "failed") == 0 && strcmp(inputs, r->inputs) == 0 &&
        !r->o->retry_failed && !r->o->force) {
        say(r,
            "  skipped  %s: the last build failed with the same inputs (--retry-failed "
            "builds it again)\n",
            kernel);
        say(r, "           %s%s%s\n", error, log[0] ? "; log: " : "", log);
        r->skipped_failed++;
        return 0;
    }
    j->state = J_QUEUED;
    r->njobs++;
    return 0;
}

static int select_jobs(struct build_run *r, struct kf_err *err)
{
    size_t i, k;
    int rc = 0;

    if (r->o->missing) {
        struct coord_plan pl = {NULL, 0};
        struct coord_groups nofacts;
        coord_groups_init(&nofacts);
        rc = coord_plan_collect(&r->db, &r->inv, r->idx, r->nidx, r->prof,
                                r->src.has_dkms ? &r->src.dkms : NULL, r->driver, &pl, &nofacts,
                                err);
        if (rc == 0) {
            r->jobs = calloc(pl.n + 1, sizeof(*r->jobs));
            if (r->jobs == NULL)
                rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        }
        if (rc == 0 && nofacts.n > 0) {
            struct buf b;
            buf_init(&b, 0);
            coord_group_fold(&nofacts.g[0], &b);
            say(r, "  note     %zu host%s without facts (run kfleet facts): %s\n", nofacts.g[0].n,
                nofacts.g[0].n == 1 ? "" : "s", buf_cstr(&b));
            buf_release(&b);
        }
        for (i = 0; rc == 0 && i < pl.n; i++) {
            const struct coord_plan_key *pk = &pl.keys[i];
            if (pk->status == PLAN_NA) {
                say(r, "  n/a      %s: %s\n", pk->kernel, pk->reason);
                r->na++;
                continue;
            }
            rc = add_job(r, pk->kernel, pk->arch, pk->os_id, pk->os_version,
                         pk->builds.n > 0 ? pk->builds.g[0].key : NULL);
        }
        coord_plan_release(&pl);
        coord_groups_release(&nofacts);
        return rc;
    }

    /* --kernel K: the key's arch and distro from the facts of a node that
     * has it, else this host's (a kernel no node has yet). */
    r->jobs = calloc(r->o->nkernels + 1, sizeof(*r->jobs));
    if (r->jobs == NULL)
        return kf_err_set(err, KF_ENOMEM, "out of memory");
    for (k = 0; rc == 0 && k < r->o->nkernels; k++) {
        const char *kernel = r->o->kernels[k];
        sqlite3_stmt *q;
        char arch[32] = "", os_id[64] = "", os_ver[64] = "", kb[256] = "";
        if (sqlite3_prepare_v2(r->db.db,
                               "SELECT f.arch, f.os_id, f.os_version, f.kernel_build, "
                               "f.kernel = ?1 FROM facts f JOIN host_kernels hk ON hk.host = "
                               "f.host WHERE hk.release = ?1 AND f.last_ok_at IS NOT NULL "
                               "ORDER BY 5 DESC LIMIT 1",
                               -1, &q, NULL) != SQLITE_OK)
            return kf_err_set(err, KF_EDB, "%s: %s", r->db.path, sqlite3_errmsg(r->db.db));
        sqlite3_bind_text(q, 1, kernel, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) {
            snprintf(arch, sizeof(arch), "%s", (const char *)sqlite3_column_text(q, 0));
            snprintf(os_id, sizeof(os_id), "%s", (const char *)sqlite3_column_text(q, 1));
            snprintf(os_ver, sizeof(os_ver), "%s", (const char *)sqlite3_column_text(q, 2));
            if (sqlite3_column_int(q, 4) && sqlite3_column_text(q, 3))
                snprintf(kb, sizeof(kb), "%s", (const char *)sqlite3_column_text(q, 3));
        }
        sqlite3_finalize(q);
        if (arch[0] == '\0') {
            struct utsname u;
            if (uname(&u) < 0)
                snprintf(u.machine, sizeof(u.machine), "x86_64");
            snprintf(arch, sizeof(arch), "%s", u.machine);
            snprintf(os_id, sizeof(os_id), "debian");
            snprintf(os_ver, sizeof(os_ver), "12");
            say(r, "  note     %s: no node has it in the stored facts; building for %s %s %s\n",
                kernel, os_id, os_ver, arch);
        }
        rc = add_job(r, kernel, arch, os_id, os_ver, kb[0] ? kb : NULL);
    }
    return rc;
}

/* sha256 over what decides a build's result besides the key: a failed
 * build is retried by --missing only when this changes. */
static void compute_inputs(struct build_run *r)
{
    const struct coord_profile *p = r->prof;
    struct buf b;
    size_t i;
    unsigned char md[32];
    unsigned n = 0;

    buf_init(&b, 0);
    buf_printf(&b, "kfleet %s\nsource %s %s\ntype %d open %d peermem %d\n", KF_VERSION,
               r->src.sha256, coord_source_kind_name(r->src.kind), (int)p->type, p->open,
               p->peermem);
    for (i = 0; i < p->nmodules; i++)
        buf_printf(&b, "module %s\n", p->modules[i]);
    for (i = 0; i < p->nmake_vars; i++)
        buf_printf(&b, "make %s=%s\n", p->make_vars[i].name, p->make_vars[i].value);
    buf_printf(&b, "headers %s %s\n", p->headers_debian ? p->headers_debian : "",
               p->headers_rhel ? p->headers_rhel : "");
    for (i = 0; i < r->cfg.nrun_args; i++)
        buf_printf(&b, "run %s\n", r->cfg.run_args[i]);
    buf_printf(&b, "sign %s\n", r->cfg.sign_cert ? r->cfg.sign_cert : "");
    EVP_Digest(b.data, b.len, md, &n, EVP_sha256(), NULL);
    for (i = 0; i < n; i++)
        snprintf(r->inputs + 2 * i, 3, "%02x", md[i]);
    buf_release(&b);
}

static int build_env(struct build_run *r)
{
    const struct coord_profile *p = r->prof;
    struct buf b;
    size_t i;
    int rc;

    rc = coord_worker_env_from_config(&r->env, &r->cfg);
    if (rc == 0 && r->driver)
        rc = coord_worker_env_add(&r->env, "KFLEET_DRIVER_VERSION", r->driver);
    if (rc == 0 && p->type == PROFILE_NVIDIA_RUN)
        rc = coord_worker_env_add(&r->env, "KFLEET_NV_FLAVOR", p->open ? "open" : "proprietary");
    buf_init(&b, 0);
    for (i = 0; i < p->nmake_vars; i++) {
        struct buf w;
        buf_init(&w, 0);
        buf_printf(&w, "%s=%s", p->make_vars[i].name, p->make_vars[i].value);
        if (i)
            buf_puts(&b, " ");
        kf_shquote(&b, buf_cstr(&w));
        buf_release(&w);
    }
    if (rc == 0 && b.len)
        rc = coord_worker_env_add(&r->env, "KFLEET_MAKE_ARGS", buf_cstr(&b));
    buf_release(&b);
    return rc;
}

/* ---- the commands ----------------------------------------------------------- */

static int load_profile(struct build_run *r)
{
    struct coord_opts *o = r->o;
    size_t i;

    r->prof = coord_config_profile(&r->cfg, o->profile ? o->profile : "nvidia");
    if (r->prof == NULL && o->profile == NULL && r->cfg.nprofiles == 1)
        r->prof = &r->cfg.profiles[0];
    if (r->prof == NULL) {
        struct buf names;
        buf_init(&names, 0);
        for (i = 0; i < r->cfg.nprofiles; i++)
            buf_printf(&names, "%s%s", i ? ", " : "", r->cfg.profiles[i].name);
        fprintf(stderr, "kfleet: %s: no profile '%s' (profiles: %s)\n", r->cfg.path,
                o->profile ? o->profile : "nvidia", names.len ? buf_cstr(&names) : "none");
        buf_release(&names);
        return KF_ECONFIG;
    }
    return 0;
}

static void print_json(struct build_run *r, double secs)
{
    json_t *doc = json_object(), *builds = json_array();
    size_t i;

    for (i = 0; i < r->njobs; i++) {
        const struct job *j = &r->jobs[i];
        json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "kernel", j->kernel, "arch", j->arch,
                              "os_id", j->os_id, "os_version", j->os_version, "status",
                              j->status ? j->status : "canceled", "builder", j->builder);
        json_object_set_new(o, "build_id", json_integer(j->build_id));
        json_object_set_new(o, "error", j->error[0] ? json_string(j->error) : json_null());
        json_object_set_new(o, "log", j->log_path[0] ? json_string(j->log_path) : json_null());
        json_object_set_new(o, "package", j->sha256[0] ? json_string(j->pkg_path) : json_null());
        json_object_set_new(o, "sha256", j->sha256[0] ? json_string(j->sha256) : json_null());
        json_array_append_new(builds, o);
    }
    json_object_set_new(doc, "kfleet", json_string(KF_VERSION));
    json_object_set_new(doc, "command", json_string("build"));
    json_object_set_new(doc, "profile", json_string(r->prof->name));
    json_object_set_new(doc, "driver", json_string(r->driver));
    json_object_set_new(doc, "source_sha256", json_string(r->src.sha256));
    json_object_set_new(
        doc, "summary",
        json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:f}", "built", (json_int_t)r->built, "failed",
                  (json_int_t)r->failed, "stored_already", (json_int_t)r->stored, "skipped_failed",
                  (json_int_t)r->skipped_failed, "not_applicable", (json_int_t)r->na, "canceled",
                  (json_int_t)r->canceled, "seconds", secs));
    json_object_set_new(doc, "builds", builds);
    json_dumpf(doc, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(doc);
}

static int run_loop(struct build_run *r)
{
    struct ssh_engine_opts eo;

    if (uv_loop_init(&r->loop) < 0) {
        fprintf(stderr, "kfleet: cannot create the event loop\n");
        return KF_EIO;
    }
    r->loop_ok = 1;
    coord_engine_opts(r->o, &eo);
    if (ssh_engine_init(&r->engine, &r->loop, &eo) < 0) {
        fprintf(stderr, "kfleet: out of memory\n");
        return KF_ENOMEM;
    }
    r->engine_ok = 1;
    if (workers_init(r) < 0)
        return KF_ECONFIG;
    uv_signal_init(&r->loop, &r->sigint);
    uv_signal_init(&r->loop, &r->sigterm);
    r->sigint.data = r->sigterm.data = r;
    uv_signal_start(&r->sigint, on_signal, SIGINT);
    uv_signal_start(&r->sigterm, on_signal, SIGTERM);
    r->signals_open = 1;
    workers_start(r);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    return 0;
}

static void run_release(struct build_run *r)
{
    if (r->engine_ok)
        ssh_engine_release(&r->engine);
    if (r->loop_ok) {
        uv_run(&r->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&r->loop) != 0)
            log_debug("event loop still had handles at exit");
    }
    workers_release(r);
    free(r->jobs);
    coord_worker_env_release(&r->env);
    coord_source_release(&r->src);
    coord_db_close(&r->db);
    coord_config_release(&r->cfg);
    free(r->state_dir);
    free(r->idx);
    if (r->inv_ok)
        inv_release(&r->inv);
}

static int open_common(struct build_run *r, struct coord_opts *o, int need_inventory)
{
    struct kf_err err;

    memset(r, 0, sizeof(*r));
    r->o = o;
    coord_source_init(&r->src);
    coord_config_init(&r->cfg);
    kf_err_clear(&err);
    r->state_dir = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
    if (r->state_dir == NULL)
        return KF_EXIT_ERROR;
    if (coord_config_load(&r->cfg, o->config, r->state_dir, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_USAGE;
    }
    if (need_inventory) {
        /* Remote builders are inventory hosts; without any, no inventory
         * is needed. */
        size_t i;
        int remote = 0;
        for (i = 0; i < r->cfg.nbuilders; i++)
            if (strcmp(r->cfg.builders[i].host, "local") != 0)
                remote = 1;
        if (remote || o->missing) {
            int rc = coord_load_selection(o, &r->inv, &r->idx, &r->nidx);
            if (rc != 0)
                return rc;
            r->inv_ok = 1;
        }
    }
    return 0;
}

int cmd_build(struct coord_opts *o)
{
    struct build_run r;
    struct kf_err err;
    char dirs[3][4200];
    const char *sde;
    uint64_t t0 = uv_hrtime();
    size_t i;
    int rc, exit_code;

    if ((o->missing != 0) == (o->nkernels != 0)) {
        fprintf(stderr, "kfleet: build needs --missing (what the fleet's facts call for) or "
                        "--kernel K (one or more), not both\n");
        return KF_EXIT_USAGE;
    }
    rc = open_common(&r, o, 1);
    if (rc != 0)
        goto out_rc;
    kf_err_clear(&err);
    if (load_profile(&r) < 0) {
        rc = KF_EXIT_USAGE;
        goto out_rc;
    }
    if (coord_source_inspect(r.prof, o->source, 1, &r.src, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        rc = KF_EXIT_USAGE;
        goto out_rc;
    }
    r.driver = o->driver;
    if (r.driver == NULL && r.src.has_dkms)
        r.driver = r.src.dkms.package_version;
    if (r.driver == NULL || !kf_driver_version_valid(r.driver)) {
        fprintf(stderr, "kfleet: build needs --driver VERSION, like --driver 550.54.15\n");
        rc = KF_EXIT_USAGE;
        goto out_rc;
    }
    if (r.src.has_dkms && strcmp(r.driver, r.src.dkms.package_version) != 0) {
        fprintf(stderr,
                "kfleet: --driver %s, but %s's dkms.conf says PACKAGE_VERSION=%s; give "
                "--driver %s or none\n",
                r.driver, r.src.path, r.src.dkms.package_version, r.src.dkms.package_version);
        rc = KF_EXIT_USAGE;
        goto out_rc;
    }
    sde = getenv("SOURCE_DATE_EPOCH");
    if (sde && *sde) {
        char *end;
        r.source_date_epoch = strtoll(sde, &end, 10);
        if (*end || r.source_date_epoch < 0) {
            fprintf(stderr, "kfleet: SOURCE_DATE_EPOCH '%s' is not a number of seconds\n", sde);
            rc = KF_EXIT_USAGE;
            goto out_rc;
        }
    } else {
        struct stat st;
        r.source_date_epoch = stat(r.src.path, &st) == 0 ? (long long)st.st_mtime : 0;
    }
    snprintf(dirs[0], sizeof(dirs[0]), "%s/logs/builds", r.state_dir);
    snprintf(dirs[1], sizeof(dirs[1]), "%s/tmp", r.state_dir);
    snprintf(dirs[2], sizeof(dirs[2]), "%s", r.cfg.store);
    for (i = 0; i < 3; i++)
        if (mkdir_p(dirs[i], 0755) < 0) {
            fprintf(stderr, "kfleet: cannot create %s: %s\n", dirs[i], strerror(errno));
            rc = KF_EXIT_ERROR;
            goto out_rc;
        }
    if (coord_db_open(&r.db, r.state_dir, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        rc = KF_EXIT_ERROR;
        goto out_rc;
    }
    compute_inputs(&r);
    if (build_env(&r) < 0) {
        fprintf(stderr, "kfleet: out of memory\n");
        rc = KF_EXIT_ERROR;
        goto out_rc;
    }
    say(&r, "kfleet build: profile %s, driver %s, source %s (%s, sha256 %.12s)\n", r.prof->name,
        r.driver, r.src.path, coord_source_kind_name(r.src.kind), r.src.sha256);
    if (select_jobs(&r, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        rc = KF_EXIT_ERROR;
        goto out_rc;
    }
    if (r.njobs > 0 && run_loop(&r) < 0) {
        rc = KF_EXIT_USAGE;
        goto out_rc;
    }
    if (r.njobs > 0) {
        if (coord_store_write_index(&r.db, &r.cfg, now_s(), &err) < 0) {
            fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
            r.db_failed = 1;
        }
    }
    if (o->json)
        print_json(&r, (double)(uv_hrtime() - t0) / 1e9);
    else
        printf("%s: %zu built, %zu failed, %zu already stored, %zu skipped (failed before), %zu "
               "not applicable%s%s in %.1f s\n",
               r.njobs == 0 && r.failed == 0 ? "nothing to build" : "done", r.built, r.failed,
               r.stored, r.skipped_failed, r.na, r.canceled ? ", stopped: " : "",
               r.canceled ? "canceled builds were not stored" : "",
               (double)(uv_hrtime() - t0) / 1e9);
    if (o->result != NULL) {
        o->result->built = r.built;
        o->result->build_failed = r.failed + r.canceled + r.skipped_failed;
        o->result->build_stored = r.stored;
        o->result->build_na = r.na;
    }
    exit_code = r.db_failed                                    ? KF_EXIT_ERROR
                : (r.failed || r.canceled || r.skipped_failed) ? KF_EXIT_HOSTS
                                                               : KF_EXIT_OK;
    run_release(&r);
    return exit_code;
out_rc:
    run_release(&r);
    return rc;
}

/* kfleet builder image [--builder NAME] [--force] */
int cmd_builder(struct coord_opts *o)
{
    struct build_run r;
    size_t i;
    int rc, bad = 0;

    if (o->nargs != 1 || strcmp(o->args[0], "image") != 0) {
        fprintf(stderr, "kfleet: usage: kfleet builder image [--builder NAME] [--force]\n");
        return KF_EXIT_USAGE;
    }
    rc = open_common(&r, o, 1);
    if (rc == 0) {
        r.image_only = 1;
        r.force_image = o->force;
        if (coord_worker_env_from_config(&r.env, &r.cfg) < 0)
            rc = KF_EXIT_ERROR;
    }
    if (rc == 0 && run_loop(&r) < 0)
        rc = KF_EXIT_USAGE;
    if (rc == 0) {
        for (i = 0; i < r.nworkers; i++) {
            const struct coord_worker *w = &r.workers[i];
            if (w->state != W_READY) {
                printf("%s: FAILED: %s\n", w->cfg->name, w->why);
                bad = 1;
            } else {
                printf("%s: base image ready (%s)\n", w->cfg->name, w->arch);
            }
        }
        rc = bad ? KF_EXIT_HOSTS : KF_EXIT_OK;
    }
    run_release(&r);
    return rc;
}
