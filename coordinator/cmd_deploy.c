/* kfleet deploy, kfleet rollback and kfleet rollout resume: the rollout
 * engine.
 *
 * A rollout is a list of nodes cut into stages (--stages, Ansible's
 * `serial`: a canary, growing batches, the last size repeating). Stages run
 * one after the other; within a stage nodes run under --forks as a sliding
 * window, each one a deployer state machine (deployer/node.c). Transfers
 * have their own limit (--transfer-forks), and each package is read from
 * the store once, in a work thread, for all nodes.
 *
 *   rollout: running -> (stage k done, within budget) -> next stage | pause
 *            -> done;   a stage over its failure budget -> halted (running
 *            nodes finish, none starts, --rollback-stage rolls the stage
 *            back);  --pause manual -> paused;  Ctrl-C -> interrupted
 *
 * Everything is journaled in the state database before it happens: the
 * rollout's status and stage, each node's state before each step, the
 * node's prior state (the rollback target) before anything changes on it,
 * and each node's end. `kfleet rollout resume ID` rebuilds the run from
 * the journal: nodes that ended stay as they are, nodes caught mid-step run
 * again from their check (every node step is idempotent) with their
 * journaled prior state, and the stages go on. */
#include "coordinator.h"
#include "deploy.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_STAGES 4096

struct deploy_run;

/* A package in memory, shared by the nodes that send it. */
struct pkg_entry {
    struct deploy_pkg p;
    struct deploy_run *run;
    int state; /* 0 not loaded, 1 loading, 2 loaded, 3 failed */
    unsigned char *data;
    size_t len;
    char err[600];
    uv_work_t work;
};

struct rnode {
    struct deploy_node dn; /* the deploy (or the rollback of a halted stage) */
    struct deploy_node rb; /* --rollback-stage: the node's rollback */
    struct deploy_run *run;
    const struct inv_host *h;
    char host[256];
    int stage;
    int final;                   /* ended before this pass: not run */
    enum deploy_outcome outcome; /* of this run or the journal */
    int journal_ended;           /* this pass wrote its end */
    int in_rb;                   /* the rb node is the one running */
    char *prior_json;
    FILE *log;
    struct pkg_entry *wait_pkg; /* waiting for a transfer slot */
    struct rnode *wait_next;
    int started;
};

struct deploy_run {
    struct coord_opts *o;
    uv_loop_t loop;
    int loop_ok;
    struct ssh_engine engine;
    int engine_ok;
    struct inventory inv;
    int inv_ok;
    struct coord_config cfg;
    const struct coord_profile *prof;
    struct coord_db db;
    int db_ok;
    char *state_dir;
    struct coord_rollout ro;
    int ro_ok;
    struct deploy_node_opts nopts, rbopts;
    char modules[DEPLOY_MAX_MODULES * (KF_MODNAME_MAX + 1)];
    struct rnode *nodes;
    size_t nnodes;
    struct pkg_entry **pkgs;
    size_t npkgs;
    /* stages */
    struct coord_budget max_fail, max_fail_total;
    unsigned pause_ms;
    int pause_manual;
    size_t *pass; /* the nodes this stage pass runs (indices) */
    size_t npass;
    struct coord_fanout fan;
    int stage_active;
    size_t stage_size, stage_failed, total_failed, total_nodes;
    int halting;
    char halt_reason[600];
    int rb_pass;
    int unlock_pass; /* rollout abort: only releasing locks, nothing journaled per node */
    /* transfers */
    unsigned xfer_used, xfer_limit;
    struct rnode *xq_head, *xq_tail;
    uv_timer_t xfer_timer;
    uint64_t bytes, bytes_at_tick, t0_ns, tick_ns;
    double rate;
    /* control */
    uv_signal_t sigint, sigterm;
    uv_timer_t pause_timer;
    int handles_open;
    int interrupts;
    int finished;
    const char *final_status;
    struct coord_progress progress;
    int db_error;
    struct kf_err db_err;
    int ended_nodes;
    char log_dir[4096];
    char inv_path[4096], cfg_path[4096];
};

static void stage_start(struct deploy_run *r);
static void stage_end(struct deploy_run *r);
static void run_finish(struct deploy_run *r, const char *status, const char *reason);
static void xfer_schedule(struct deploy_run *r);

static long long now_s(void)
{
    return (long long)time(NULL);
}

/* A node that failed, for budgets, reports and the exit status: in a
 * deploy a rolled-back node failed; in a rollback it is what was asked. */
static int failed_outcome(const struct deploy_run *r, enum deploy_outcome o)
{
    if (strcmp(r->ro.kind, "rollback") == 0)
        return o == DO_FAILED || o == DO_ROLLBACK_FAILED;
    return deploy_outcome_is_failure(o);
}

static void out(struct deploy_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(struct deploy_run *r, const char *fmt, ...)
{
    va_list ap;
    FILE *f = r->o->json ? stderr : stdout;

    coord_progress_clear(&r->progress);
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fflush(f);
}

static void db_failed(struct deploy_run *r, const struct kf_err *err)
{
    if (!r->db_error) {
        r->db_error = 1;
        r->db_err = *err;
        out(r, "kfleet: the journal cannot be written (%s): stopping: no new node starts\n",
            kf_err_msg(err));
    }
    r->fan.stop = 1;
}

static int mkdir_p(const char *path, mode_t mode)
{
    char p[4096];
    size_t i, n = strlen(path);

    if (n == 0 || n >= sizeof(p))
        return -1;
    memcpy(p, path, n + 1);
    for (i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        p[i] = '\0';
        if (mkdir(p, mode) < 0 && errno != EEXIST)
            return -1;
        p[i] = path[i];
    }
    return 0;
}

/* ---- packages ------------------------------------------------------------------- */

static void pkg_load_work(uv_work_t *w)
{
    struct pkg_entry *e = w->data;
    FILE *f = fopen(e->p.path, "rb");
    EVP_MD_CTX *ctx = NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char hex[65];
    struct stat st;
    size_t got = 0, i;

    if (f == NULL || fstat(fileno(f), &st) < 0) {
        snprintf(e->err, sizeof(e->err), "cannot read the package %s: %s", e->p.path,
                 strerror(errno));
        goto fail;
    }
    if ((uint64_t)st.st_size != e->p.size) {
        snprintf(e->err, sizeof(e->err),
                 "the package %s in the store has %lld bytes, the catalog says %llu: it is "
                 "damaged; nothing was sent (kfleet artifacts verify; rebuild with kfleet build "
                 "--force)",
                 e->p.path, (long long)st.st_size, (unsigned long long)e->p.size);
        goto fail;
    }
    e->data = malloc(e->p.size ? e->p.size : 1);
    ctx = EVP_MD_CTX_new();
    if (e->data == NULL || ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        snprintf(e->err, sizeof(e->err), "out of memory reading %s", e->p.path);
        goto fail;
    }
    while (got < e->p.size) {
        size_t k = fread(e->data + got, 1, e->p.size - got, f);
        if (k == 0)
            break;
        EVP_DigestUpdate(ctx, e->data + got, k);
        got += k;
    }
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    for (i = 0; i < mdlen && i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    hex[64] = '\0';
    if (got != e->p.size) {
        snprintf(e->err, sizeof(e->err), "short read of %s", e->p.path);
        goto fail;
    }
    if (strcmp(hex, e->p.sha256) != 0) {
        snprintf(e->err, sizeof(e->err),
                 "the package %s in the store is damaged (sha256 %.12s, the catalog says "
                 "%.12s): nothing was sent (kfleet artifacts verify; rebuild with kfleet build "
                 "--force)",
                 e->p.path, hex, e->p.sha256);
        goto fail;
    }
    e->len = got;
    EVP_MD_CTX_free(ctx);
    fclose(f);
    e->state = 2;
    return;
fail:
    EVP_MD_CTX_free(ctx);
    if (f != NULL)
        fclose(f);
    free(e->data);
    e->data = NULL;
    e->state = 3;
}

static void pkg_load_after(uv_work_t *w, int status)
{
    struct pkg_entry *e = w->data;

    if (status < 0 && e->state == 1) {
        e->state = 3;
        snprintf(e->err, sizeof(e->err), "reading %s was cancelled", e->p.path);
    }
    xfer_schedule(e->run);
}

/* metadata.json next to the package: load order, versions, signatures. */
static int pkg_fill_metadata(struct deploy_run *r, struct deploy_pkg *p, struct kf_err *err)
{
    char path[4200], *slash;
    json_t *md, *mods, *order, *m, *signer;
    size_t i, j, off = 0;
    int all_signed = 1;
    char names[DEPLOY_MAX_MODULES][KF_MODNAME_MAX + 1];
    size_t nnames = 0;

    snprintf(path, sizeof(path), "%s", p->path);
    slash = strrchr(path, '/');
    if (slash == NULL)
        return kf_err_set(err, KF_EINVAL, "package path %s has no directory", p->path);
    snprintf(slash + 1, sizeof(path) - (size_t)(slash + 1 - path), "metadata.json");
    md = json_load_file(path, 0, NULL);
    if (md == NULL)
        return kf_err_set(err, KF_EIO, "cannot read %s (kfleet artifacts verify)", path);
    mods = json_object_get(md, "modules");
    order = json_object_get(md, "load_order");
    signer = json_object_get(md, "signer");
    /* The package must be for the kernel the catalog files it under: its
     * metadata and every module's vermagic say so, or the node's loader
     * would refuse it ("Exec format error") after it was installed. */
    {
        const char *kv = json_string_value(json_object_get(md, "kernel_version"));
        if (kv == NULL || strcmp(kv, p->kernel) != 0) {
            kf_err_set(err, KF_EUNTRUSTED,
                       "its metadata.json says kernel %s, the catalog files it under %s (kfleet "
                       "artifacts verify; rebuild it)",
                       kv ? kv : "(none)", p->kernel);
            json_decref(md);
            return KF_EUNTRUSTED;
        }
        json_array_foreach(mods, i, m)
        {
            const char *vm = json_string_value(json_object_get(m, "vermagic"));
            const char *file = json_string_value(json_object_get(m, "file"));
            size_t kl = strlen(p->kernel);
            if (vm == NULL || strncmp(vm, p->kernel, kl) != 0 ||
                (vm[kl] != ' ' && vm[kl] != '\0')) {
                kf_err_set(err, KF_EUNTRUSTED,
                           "its module %s is built for kernel %.*s, not kernel %s (kfleet "
                           "artifacts verify; rebuild it)",
                           file ? file : "?", vm ? (int)strcspn(vm, " ") : 6, vm ? vm : "(none)",
                           p->kernel);
                json_decref(md);
                return KF_EUNTRUSTED;
            }
        }
    }
    if (!json_is_array(mods) || !json_is_array(order) || json_array_size(order) == 0 ||
        json_array_size(order) > DEPLOY_MAX_MODULES) {
        json_decref(md);
        return kf_err_set(err, KF_EPARSE, "%s: no modules or load_order", path);
    }
    p->load[0] = '\0';
    json_array_foreach(order, i, m)
    {
        const char *name = json_string_value(m);
        if (name == NULL || !kf_modname_valid(name)) {
            json_decref(md);
            return kf_err_set(err, KF_EPARSE, "%s: bad module name in load_order", path);
        }
        off += (size_t)snprintf(p->load + off, sizeof(p->load) - off, "%s%s", off ? " " : "", name);
        snprintf(names[nnames++], sizeof(names[0]), "%s", name);
    }
    p->module_bytes = 0;
    p->version_module[0] = '\0';
    json_array_foreach(mods, i, m)
    {
        json_t *sz = json_object_get(m, "size");
        if (json_is_integer(sz))
            p->module_bytes += (uint64_t)json_integer_value(sz);
        if (!json_is_true(json_object_get(m, "signed")))
            all_signed = 0;
    }
    /* The version module: the first in load order that has a version. */
    for (j = 0; j < nnames && !p->version_module[0]; j++)
        json_array_foreach(mods, i, m)
        {
            const char *name = json_string_value(json_object_get(m, "name"));
            const char *ver = json_string_value(json_object_get(m, "version"));
            if (name && strcmp(name, names[j]) == 0 && ver && ver[0]) {
                snprintf(p->version_module, sizeof(p->version_module), "%s", names[j]);
                break;
            }
        }
    p->is_signed = json_is_object(signer) && all_signed;
    json_decref(md);
    /* Unload: profile modules the package lacks first (they depend on the
     * others, like nvidia_peermem), then the load order reversed. */
    off = 0;
    p->unload[0] = '\0';
    {
        char tmp[sizeof(r->modules)], *s, *save = NULL;
        snprintf(tmp, sizeof(tmp), "%s", r->modules);
        for (s = strtok_r(tmp, " ", &save); s; s = strtok_r(NULL, " ", &save)) {
            int have = 0;
            for (j = 0; j < nnames; j++)
                if (strcmp(names[j], s) == 0)
                    have = 1;
            if (!have)
                off += (size_t)snprintf(p->unload + off, sizeof(p->unload) - off, "%s%s",
                                        off ? " " : "", s);
        }
    }
    for (j = nnames; j > 0; j--)
        off += (size_t)snprintf(p->unload + off, sizeof(p->unload) - off, "%s%s", off ? " " : "",
                                names[j - 1]);
    return 0;
}

static int on_pick(struct deploy_node *n, const char *kernel, const char *arch, const char *os_id,
                   const char *os_version, const struct deploy_pkg **pkg, char *reason,
                   size_t reason_size)
{
    struct rnode *rn = n->data;
    struct deploy_run *r = rn->run;
    struct coord_key key = {r->prof->name, r->ro.driver, kernel, arch, os_id, os_version};
    struct coord_artifact a;
    struct pkg_entry *e, **grown;
    struct kf_err err;
    char st[64] = "", inputs[4096], error[4096], log[4096];
    size_t i;
    int rc;

    *pkg = NULL;
    for (i = 0; i < r->npkgs; i++) {
        struct deploy_pkg *p = &r->pkgs[i]->p;
        if (!strcmp(p->kernel, kernel) && !strcmp(p->arch, arch) && !strcmp(p->os_id, os_id) &&
            !strcmp(p->os_version, os_version)) {
            *pkg = p;
            return 1;
        }
    }
    kf_err_clear(&err);
    if (!coord_plan_kernel_applies(r->prof, kernel, arch, reason, reason_size))
        return -1;
    rc = coord_db_artifact_get(&r->db, &key, &a, &err);
    if (rc < 0) {
        snprintf(reason, reason_size, "catalog: %s", kf_err_msg(&err));
        return 0;
    }
    if (rc == 0) {
        /* A build that found the kernel not applicable (dkms.conf's
         * BUILD_EXCLUSIVE_*) leaves that kernel alone. */
        if (coord_db_build_last(&r->db, &key, st, inputs, error, log, &err) == 1 &&
            strcmp(st, "not_applicable") == 0) {
            snprintf(reason, reason_size, "%s", error[0] ? error : "not applicable");
            return -1;
        }
        snprintf(reason, reason_size,
                 "build it: kfleet build --profile %s --driver %s --missing (after kfleet facts)",
                 r->prof->name, r->ro.driver);
        return 0;
    }
    e = calloc(1, sizeof(*e));
    grown = e ? realloc(r->pkgs, (r->npkgs + 1) * sizeof(*r->pkgs)) : NULL;
    if (grown == NULL) {
        free(e);
        snprintf(reason, reason_size, "out of memory");
        return 0;
    }
    r->pkgs = grown;
    e->run = r;
    snprintf(e->p.profile, sizeof(e->p.profile), "%s", r->prof->name);
    snprintf(e->p.driver, sizeof(e->p.driver), "%s", a.driver);
    snprintf(e->p.kernel, sizeof(e->p.kernel), "%s", a.kernel);
    snprintf(e->p.arch, sizeof(e->p.arch), "%s", a.arch);
    snprintf(e->p.os_id, sizeof(e->p.os_id), "%s", a.os_id);
    snprintf(e->p.os_version, sizeof(e->p.os_version), "%s", a.os_version);
    snprintf(e->p.sha256, sizeof(e->p.sha256), "%s", a.sha256);
    snprintf(e->p.path, sizeof(e->p.path), "%s", a.path);
    e->p.size = (uint64_t)a.size;
    if (pkg_fill_metadata(r, &e->p, &err) < 0) {
        snprintf(reason, reason_size, "the stored package is not usable: %s", kf_err_msg(&err));
        free(e);
        return 0;
    }
    r->pkgs[r->npkgs++] = e;
    *pkg = &e->p;
    return 1;
}

static struct pkg_entry *entry_of(struct deploy_run *r, const struct deploy_pkg *p)
{
    size_t i;

    for (i = 0; i < r->npkgs; i++)
        if (&r->pkgs[i]->p == p)
            return r->pkgs[i];
    return NULL;
}

/* ---- transfers ------------------------------------------------------------------ */

static void xfer_pump(uv_timer_t *t)
{
    struct deploy_run *r = t->data;
    struct rnode **pp = &r->xq_head, *rn;

    r->xq_tail = NULL;
    while ((rn = *pp) != NULL) {
        struct pkg_entry *e = rn->wait_pkg;
        struct deploy_node *n = rn->in_rb ? &rn->rb : &rn->dn;
        if (e->state == 0) {
            e->state = 1;
            e->work.data = e;
            if (uv_queue_work(&r->loop, &e->work, pkg_load_work, pkg_load_after) < 0) {
                e->state = 3;
                snprintf(e->err, sizeof(e->err), "cannot start reading %s", e->p.path);
            }
        }
        if (e->state == 3) {
            *pp = rn->wait_next;
            rn->wait_pkg = NULL;
            deploy_node_transfer_fail(n, KF_EIO, e->err);
            continue;
        }
        if (e->state == 2 && r->xfer_used < r->xfer_limit) {
            *pp = rn->wait_next;
            rn->wait_pkg = NULL;
            r->xfer_used++;
            deploy_node_transfer_go(n, e->data, e->len);
            continue;
        }
        r->xq_tail = rn;
        pp = &rn->wait_next;
    }
}

static void xfer_schedule(struct deploy_run *r)
{
    if (r->handles_open)
        uv_timer_start(&r->xfer_timer, xfer_pump, 0, 0);
}

static void on_transfer_wait(struct deploy_node *n, const struct deploy_pkg *pkg)
{
    struct rnode *rn = n->data;
    struct deploy_run *r = rn->run;

    rn->wait_pkg = entry_of(r, pkg);
    rn->wait_next = NULL;
    if (rn->wait_pkg == NULL) {
        /* Every package a node gets comes from on_pick: this is a bug, and
         * the node says so rather than wait for ever. */
        deploy_node_transfer_fail(n, KF_EINVAL, "internal error: a package not from the catalog");
        return;
    }
    if (r->xq_tail != NULL)
        r->xq_tail->wait_next = rn;
    else
        r->xq_head = rn;
    r->xq_tail = rn;
    xfer_schedule(r);
}

static void on_transfer_end(struct deploy_node *n, const struct deploy_pkg *pkg, uint64_t bytes)
{
    struct rnode *rn = n->data;
    struct deploy_run *r = rn->run;

    (void)pkg;
    if (r->xfer_used > 0)
        r->xfer_used--;
    r->bytes += bytes;
    xfer_schedule(r);
}

/* A node that ends while it waits for a slot leaves the queue. */
static void xfer_dequeue(struct deploy_run *r, struct rnode *rn)
{
    struct rnode **pp = &r->xq_head, *prev = NULL;

    while (*pp != NULL) {
        if (*pp == rn) {
            *pp = rn->wait_next;
            if (r->xq_tail == rn)
                r->xq_tail = prev;
            rn->wait_pkg = NULL;
            return;
        }
        prev = *pp;
        pp = &(*pp)->wait_next;
    }
}

/* ---- node callbacks ------------------------------------------------------------- */

static int on_journal(struct deploy_node *n, enum deploy_state s, const char *detail)
{
    struct rnode *rn = n->data;
    struct deploy_run *r = rn->run;
    struct kf_err err;
    int rc;

    kf_err_clear(&err);
    if (r->unlock_pass)
        return 0;
    if (r->db_error)
        return -1;
    if (s == DS_DONE) {
        rc = coord_journal_node_end(&r->db, r->ro.id, rn->host, deploy_outcome_name(n->outcome),
                                    n->code ? kf_errname(n->code) : NULL, n->phase,
                                    n->msg[0] ? n->msg : NULL, n->note[0] ? n->note : NULL,
                                    n->versions, (long long)n->bytes_sent,
                                    (double)(uv_hrtime() - n->t0_ns) / 1e9, now_s(), &err);
        if (rc == 0)
            rn->journal_ended = 1;
    } else {
        rc = coord_journal_node_state(&r->db, r->ro.id, rn->host, deploy_state_name(s), detail,
                                      s == DS_CONNECT, now_s(), &err);
    }
    if (rc < 0) {
        db_failed(r, &err);
        return -1;
    }
    return 0;
}

static int on_save_prior(struct deploy_node *n, const struct deploy_prior *p)
{
    struct rnode *rn = n->data;
    struct deploy_run *r = rn->run;
    struct kf_err err;
    json_t *j = deploy_prior_to_json(p);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    int rc;

    json_decref(j);
    if (s == NULL)
        return -1;
    kf_err_clear(&err);
    rc = coord_journal_node_prior(&r->db, r->ro.id, rn->host, s, &err);
    free(s);
    if (rc < 0) {
        db_failed(r, &err);
        return -1;
    }
    return 0;
}

static void node_report(struct deploy_run *r, struct rnode *rn, struct deploy_node *n)
{
    double secs = (double)(n->t1_ns - n->t0_ns) / 1e9;

    if (n->outcome == DO_NONE)
        return;
    if (failed_outcome(r, n->outcome)) {
        out(r, "  %-9s %s in %.1f s: %s%s%s\n", "FAILED", rn->host, secs, n->msg,
            n->outcome == DO_ROLLED_BACK       ? " -> rolled back, verified"
            : n->outcome == DO_ROLLBACK_FAILED ? " -> ROLLBACK FAILED: "
                                               : "",
            n->outcome == DO_ROLLBACK_FAILED ? n->note : "");
    } else if (n->outcome == DO_SKIPPED) {
        out(r, "  %-9s %s: %s\n", "skipped", rn->host, n->msg);
    } else if (r->o->verbose || n->note[0]) {
        out(r, "  %-9s %s in %.1f s: %s%s%s\n", deploy_outcome_name(n->outcome), rn->host, secs,
            n->versions, n->note[0] ? "; " : "", n->note);
    }
}

static void progress(struct deploy_run *r)
{
    uint64_t now = uv_hrtime();

    if (now - r->tick_ns > 1000000000ULL) {
        r->rate = (double)(r->bytes - r->bytes_at_tick) / ((double)(now - r->tick_ns) / 1e9);
        r->bytes_at_tick = r->bytes;
        r->tick_ns = now;
    }
    snprintf(r->progress.extra, sizeof(r->progress.extra),
             "stage %d/%d, %.1f MiB sent (%.1f MiB/s)", r->ro.stage + 1, r->ro.nstages,
             (double)r->bytes / 1048576.0, r->rate / 1048576.0);
    coord_progress_update(&r->progress, r->fan.done, r->stage_failed, 0);
}

/* An ended node's log is closed (a later pass opens it again, to append):
 * a thousand nodes' logs held open would take a thousand of the files the
 * running sessions need. */
static void node_log_close(struct rnode *rn, struct deploy_node *n)
{
    if (rn->log != NULL)
        fclose(rn->log);
    rn->log = NULL;
    n->log = NULL;
}

static void on_done(struct deploy_node *n)
{
    struct rnode *rn = n->data;
    struct deploy_run *r = rn->run;
    struct kf_err err;
    size_t allowed;
    char b1[32];

    if (rn->wait_pkg != NULL)
        xfer_dequeue(r, rn);
    if (r->unlock_pass) {
        if (n->code != 0)
            out(r, "  FAILED    %s: %s\n", rn->host, n->msg);
        else
            out(r, "  unlocked  %s\n", rn->host);
        deploy_node_release(n);
        node_log_close(rn, n);
        coord_fanout_done(&r->fan);
        if (r->fan.running == 0 && (r->fan.stop || r->fan.next == r->fan.total))
            stage_end(r);
        return;
    }
    if (n->outcome != DO_NONE && !rn->journal_ended && !r->db_error) {
        kf_err_clear(&err);
        if (coord_journal_node_end(&r->db, r->ro.id, rn->host, deploy_outcome_name(n->outcome),
                                   n->code ? kf_errname(n->code) : NULL, n->phase,
                                   n->msg[0] ? n->msg : NULL, n->note[0] ? n->note : NULL,
                                   n->versions, (long long)n->bytes_sent,
                                   (double)(n->t1_ns - n->t0_ns) / 1e9, now_s(), &err) < 0)
            db_failed(r, &err);
        else
            rn->journal_ended = 1;
    }
    if (n->outcome != DO_NONE)
        rn->outcome = n->outcome;
    node_report(r, rn, n);
    if (!r->rb_pass && failed_outcome(r, n->outcome)) {
        r->stage_failed++;
        r->total_failed++;
        allowed = r->max_fail.set ? coord_budget_allowed(&r->max_fail, r->stage_size) : 0;
        if (!r->halting && r->stage_failed > allowed) {
            r->halting = 1;
            snprintf(r->halt_reason, sizeof(r->halt_reason),
                     "stage %d: %zu failed, over its budget of %zu (--max-fail %s of %zu nodes)",
                     r->ro.stage + 1, r->stage_failed, allowed,
                     r->max_fail.set ? coord_budget_str(&r->max_fail, b1, sizeof(b1))
                                     : "0, the default,",
                     r->stage_size);
        } else if (!r->halting && r->max_fail_total.set &&
                   r->total_failed > coord_budget_allowed(&r->max_fail_total, r->total_nodes)) {
            r->halting = 1;
            snprintf(r->halt_reason, sizeof(r->halt_reason),
                     "%zu failed in the rollout, over its budget of %zu (--max-fail-total %s of "
                     "%zu nodes)",
                     r->total_failed, coord_budget_allowed(&r->max_fail_total, r->total_nodes),
                     coord_budget_str(&r->max_fail_total, b1, sizeof(b1)), r->total_nodes);
        }
        if (r->halting && !r->fan.stop) {
            r->fan.stop = 1;
            out(r, "  HALTING: %s; the running nodes finish, no new node starts\n", r->halt_reason);
        }
    }
    deploy_node_release(n);
    node_log_close(rn, n);
    progress(r);
    coord_fanout_done(&r->fan);
    if (r->fan.running == 0 && (r->fan.stop || r->fan.next == r->fan.total))
        stage_end(r);
}

static const struct deploy_node_ops node_ops = {
    .journal = on_journal,
    .save_prior = on_save_prior,
    .pick = on_pick,
    .transfer_wait = on_transfer_wait,
    .transfer_end = on_transfer_end,
    .done = on_done,
};

/* ---- stages -------------------------------------------------------------------- */

static FILE *node_log(struct deploy_run *r, const char *host)
{
    char path[4400], name[256];
    size_t i;

    snprintf(name, sizeof(name), "%s", host);
    for (i = 0; name[i]; i++)
        if (name[i] == '/' || (name[i] == '.' && (i == 0 || name[i - 1] == '/')))
            name[i] = '_';
    snprintf(path, sizeof(path), "%s/%s.log", r->log_dir, name);
    return fopen(path, "a");
}

static void start_node(struct coord_fanout *f, size_t i)
{
    struct deploy_run *r = f->data;
    struct rnode *rn = &r->nodes[r->pass[i]];
    struct deploy_node *n = r->rb_pass ? &rn->rb : &rn->dn;
    struct kf_err err;
    int rc;

    rn->in_rb = r->rb_pass;
    rn->journal_ended = 0;
    rn->started = 1;
    if (rn->log == NULL)
        rn->log = node_log(r, rn->host);
    if (rn->h == NULL) {
        /* In the journal but not in the inventory any more. */
        kf_err_clear(&err);
        if (coord_journal_node_end(&r->db, r->ro.id, rn->host, "failed", "NOENT", "inventory",
                                   "not in the inventory any more", NULL, NULL, 0, 0, now_s(),
                                   &err) < 0)
            db_failed(r, &err);
        rn->outcome = DO_FAILED;
        out(r, "  FAILED    %s: not in the inventory any more\n", rn->host);
        if (!r->unlock_pass) {
            r->stage_failed++;
            r->total_failed++;
        }
        node_log_close(rn, n);
        coord_fanout_done(f);
        return;
    }
    if (r->rb_pass) {
        struct deploy_prior prior = rn->dn.prior;
        deploy_node_init(n);
        n->prior = prior;
        n->o = &r->rbopts;
    } else {
        struct deploy_prior prior;
        memset(&prior, 0, sizeof(prior));
        if (rn->prior_json != NULL) {
            json_t *j = json_loads(rn->prior_json, 0, NULL);
            kf_err_clear(&err);
            if (j == NULL || deploy_prior_from_json(j, &prior, &err) < 0)
                memset(&prior, 0, sizeof(prior)); /* learnt again from the node */
            json_decref(j);
        }
        deploy_node_init(n);
        n->prior = prior;
        n->o = &r->nopts;
    }
    n->h = rn->h;
    n->ops = &node_ops;
    n->engine = &r->engine;
    n->loop = &r->loop;
    n->log = rn->log;
    n->data = rn;
    rc = deploy_node_start(n);
    if (rc < 0) {
        out(r, "  FAILED    %s: cannot start: %s\n", rn->host, kf_strerror(rc));
        n->code = rc;
        coord_fanout_done(f);
    }
}

static void stage_start(struct deploy_run *r)
{
    size_t i;
    struct kf_err err;
    int s = r->ro.stage;

    r->npass = 0;
    r->stage_size = 0;
    r->stage_failed = 0;
    for (i = 0; i < r->nnodes; i++) {
        if (r->nodes[i].stage != s)
            continue;
        r->stage_size++;
        if (r->nodes[i].final) {
            if (failed_outcome(r, r->nodes[i].outcome))
                r->stage_failed++;
            continue;
        }
        r->pass[r->npass++] = i;
    }
    kf_err_clear(&err);
    if (!r->unlock_pass && coord_journal_set_status(&r->db, r->ro.id, "running", s, NULL,
                                                    (long long)getpid(), now_s(), &err) < 0) {
        db_failed(r, &err);
        run_finish(r, "interrupted", "the journal cannot be written");
        return;
    }
    snprintf(r->ro.status, sizeof(r->ro.status), "running");
    out(r, "stage %d/%d: %zu node%s%s%s\n", s + 1, r->ro.nstages, r->stage_size,
        r->stage_size == 1 ? "" : "s", s == 0 && r->ro.nstages > 1 ? " (canary)" : "",
        r->npass < r->stage_size ? " (resumed: the others are done)" : "");
    coord_fanout_init(&r->fan, r->npass, r->o->forks, start_node, r);
    r->stage_active = 1;
    r->progress.total = r->npass;
    coord_fanout_pump(&r->fan);
    if (r->fan.running == 0 && (r->fan.stop || r->fan.next == r->fan.total))
        stage_end(r);
}

static void stage_summary(struct deploy_run *r)
{
    size_t i, c[8] = {0};

    for (i = 0; i < r->nnodes; i++)
        if (r->nodes[i].stage == r->ro.stage && r->nodes[i].outcome < 8)
            c[r->nodes[i].outcome]++;
    if (strcmp(r->ro.kind, "rollback") == 0)
        out(r, "stage %d/%d: %zu rolled back, %zu unchanged, %zu failed\n", r->ro.stage + 1,
            r->ro.nstages, c[DO_ROLLED_BACK], c[DO_UNCHANGED],
            c[DO_FAILED] + c[DO_ROLLBACK_FAILED]);
    else
        out(r,
            "stage %d/%d: %zu updated, %zu unchanged, %zu skipped, %zu failed (%zu rolled back)\n",
            r->ro.stage + 1, r->ro.nstages, c[DO_UPDATED], c[DO_UNCHANGED], c[DO_SKIPPED],
            c[DO_FAILED] + c[DO_ROLLED_BACK] + c[DO_ROLLBACK_FAILED], c[DO_ROLLED_BACK]);
}

static void on_pause_done(uv_timer_t *t)
{
    struct deploy_run *r = t->data;

    if (r->finished)
        return;
    stage_start(r);
}

/* --rollback-stage: every node of the halted stage that was updated goes
 * back to its prior state. */
static void rollback_stage_start(struct deploy_run *r)
{
    size_t i;

    r->npass = 0;
    for (i = 0; i < r->nnodes; i++)
        if (r->nodes[i].stage == r->ro.stage && r->nodes[i].started &&
            r->nodes[i].outcome == DO_UPDATED && r->nodes[i].dn.prior.set)
            r->pass[r->npass++] = i;
    if (r->npass == 0) {
        run_finish(r, "halted", r->halt_reason);
        return;
    }
    out(r, "rolling back stage %d: %zu updated node%s\n", r->ro.stage + 1, r->npass,
        r->npass == 1 ? "" : "s");
    r->rb_pass = 1;
    coord_fanout_init(&r->fan, r->npass, r->o->forks, start_node, r);
    coord_fanout_pump(&r->fan);
    if (r->fan.running == 0 && r->fan.next == r->fan.total)
        stage_end(r); /* every node ended as it started */
}

static void stage_end(struct deploy_run *r)
{
    if (!r->stage_active || r->finished)
        return;
    if (r->unlock_pass) {
        r->stage_active = 0;
        run_finish(r, "aborted", "aborted by the operator (kfleet rollout abort)");
        return;
    }
    if (r->rb_pass) {
        r->rb_pass = 0;
        r->stage_active = 0;
        run_finish(r, "halted", r->halt_reason);
        return;
    }
    stage_summary(r);
    if (r->db_error) {
        r->stage_active = 0;
        run_finish(r, "interrupted", "the journal could not be written");
        return;
    }
    if (r->halting) {
        if (r->o->rollback_stage && r->interrupts == 0) {
            rollback_stage_start(r);
            return;
        }
        r->stage_active = 0;
        run_finish(r, "halted", r->halt_reason);
        return;
    }
    r->stage_active = 0;
    if (r->interrupts > 0) {
        /* Stopped within the stage: it starts again at resume. Finished
         * with it: the next one does. */
        size_t i, unfinished = 0;
        for (i = 0; i < r->npass; i++)
            if (r->nodes[r->pass[i]].outcome == DO_NONE)
                unfinished++;
        if (r->fan.next == r->fan.total && unfinished == 0 && r->ro.stage + 1 < r->ro.nstages)
            r->ro.stage++;
        run_finish(r, "interrupted", "interrupted (Ctrl-C or SIGTERM)");
        return;
    }
    if (r->ro.stage + 1 >= r->ro.nstages) {
        run_finish(r, "done", NULL);
        return;
    }
    r->ro.stage++;
    if (r->pause_manual) {
        char why[128];
        snprintf(why, sizeof(why), "paused before stage %d (--pause manual)", r->ro.stage + 1);
        run_finish(r, "paused", why);
        return;
    }
    if (r->pause_ms > 0) {
        struct kf_err err;
        kf_err_clear(&err);
        if (coord_journal_set_status(&r->db, r->ro.id, "running", r->ro.stage, NULL,
                                     (long long)getpid(), now_s(), &err) < 0)
            db_failed(r, &err);
        out(r, "pausing %.0f s before stage %d (--pause; Ctrl-C stops, resumable)\n",
            r->pause_ms / 1000.0, r->ro.stage + 1);
        uv_timer_start(&r->pause_timer, on_pause_done, r->pause_ms, 0);
        return;
    }
    stage_start(r);
}

static void close_handles(struct deploy_run *r)
{
    if (!r->handles_open)
        return;
    r->handles_open = 0;
    uv_close((uv_handle_t *)&r->sigint, NULL);
    uv_close((uv_handle_t *)&r->sigterm, NULL);
    uv_close((uv_handle_t *)&r->pause_timer, NULL);
    uv_close((uv_handle_t *)&r->xfer_timer, NULL);
}

static void run_finish(struct deploy_run *r, const char *status, const char *reason)
{
    struct kf_err err;

    if (r->finished)
        return;
    r->finished = 1;
    r->final_status = status;
    coord_progress_clear(&r->progress);
    kf_err_clear(&err);
    if (coord_journal_set_status(&r->db, r->ro.id, status, r->ro.stage, reason, 0, now_s(), &err) <
            0 &&
        !r->db_error) {
        r->db_error = 1;
        r->db_err = err;
    }
    snprintf(r->ro.status, sizeof(r->ro.status), "%s", status);
    close_handles(r);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct deploy_run *r = s->data;
    size_t i;

    r->interrupts += signum == SIGTERM ? 2 : 1;
    if (r->finished)
        return;
    if (uv_is_active((uv_handle_t *)&r->pause_timer)) {
        uv_timer_stop(&r->pause_timer);
        run_finish(r, "interrupted", "interrupted during the pause");
        return;
    }
    r->fan.stop = 1;
    if (r->interrupts == 1) {
        out(r,
            "kfleet: interrupted: the running nodes finish, no new node starts (Ctrl-C "
            "again stops now; either way: kfleet rollout resume %lld)\n",
            r->ro.id);
    } else {
        out(r, "kfleet: stopping now; kfleet rollout resume %lld finishes the rollout\n", r->ro.id);
        for (i = 0; i < r->nnodes; i++) {
            struct rnode *rn = &r->nodes[i];
            struct deploy_node *n = rn->in_rb ? &rn->rb : &rn->dn;
            if (rn->started && !n->finished)
                deploy_node_cancel(n);
        }
    }
    if (r->stage_active && r->fan.running == 0)
        stage_end(r);
}

/* ---- setting up a run ------------------------------------------------------------ */

static void run_release(struct deploy_run *r)
{
    size_t i;

    if (r->engine_ok)
        ssh_engine_release(&r->engine);
    if (r->loop_ok) {
        uv_run(&r->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&r->loop) != 0)
            log_debug("event loop still had handles at exit");
    }
    for (i = 0; i < r->npkgs; i++) {
        free(r->pkgs[i]->data);
        free(r->pkgs[i]);
    }
    free(r->pkgs);
    for (i = 0; i < r->nnodes; i++) {
        free(r->nodes[i].prior_json);
        if (r->nodes[i].log)
            fclose(r->nodes[i].log);
    }
    free(r->nodes);
    free(r->pass);
    if (r->ro_ok)
        coord_rollout_release(&r->ro);
    if (r->db_ok)
        coord_db_close(&r->db);
    coord_config_release(&r->cfg);
    if (r->inv_ok)
        inv_release(&r->inv);
    free(r->state_dir);
}

/* The profile's module names, '-' made '_' (as /sys/module spells them). */
static void profile_modules(struct deploy_run *r)
{
    size_t i, j, off = 0;

    r->modules[0] = '\0';
    for (i = 0; i < r->prof->nmodules; i++) {
        char m[KF_MODNAME_MAX + 1];
        snprintf(m, sizeof(m), "%s", r->prof->modules[i]);
        for (j = 0; m[j]; j++)
            if (m[j] == '-')
                m[j] = '_';
        off +=
            (size_t)snprintf(r->modules + off, sizeof(r->modules) - off, "%s%s", off ? " " : "", m);
    }
    if (r->modules[0] == '\0') {
        /* A kmod profile without a list: the load order of any stored
         * package of the profile names them. */
        struct coord_artifact *a = NULL;
        size_t n = 0;
        struct kf_err err;
        kf_err_clear(&err);
        if (coord_db_artifact_list(&r->db, r->prof->name, NULL, NULL, &a, &n, &err) == 0 && n > 0 &&
            coord_store_load_order(a[n - 1].path, r->modules, sizeof(r->modules), &err) < 0)
            log_warn("the profile's modules are unknown: %s", kf_err_msg(&err));
        free(a);
    }
}

static int open_run(struct deploy_run *r, struct coord_opts *o)
{
    struct kf_err err;

    memset(r, 0, sizeof(*r));
    r->o = o;
    coord_config_init(&r->cfg);
    kf_err_clear(&err);
    r->state_dir = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
    if (r->state_dir == NULL)
        return KF_EXIT_ERROR;
    if (coord_config_load(&r->cfg, o->config, r->state_dir, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_USAGE;
    }
    r->prof = coord_config_select_profile(&r->cfg, o->profile, &err);
    if (r->prof == NULL) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_USAGE;
    }
    if (coord_db_open(&r->db, r->state_dir, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_ERROR;
    }
    r->db_ok = 1;
    /* The journal is written before each step: make each write durable
     * against a crash of the control host, not just of kfleet. */
    if (coord_db_exec(&r->db, "PRAGMA synchronous = FULL", &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_ERROR;
    }
    profile_modules(r);
    return 0;
}

static int parse_pause(const char *s, unsigned *ms, int *manual)
{
    char *end;
    double v;

    *ms = 0;
    *manual = 0;
    if (s == NULL)
        return 0;
    if (strcmp(s, "manual") == 0) {
        *manual = 1;
        return 0;
    }
    v = strtod(s, &end);
    if (end == s || v < 0)
        return -1;
    if (strcmp(end, "h") == 0)
        v *= 3600;
    else if (strcmp(end, "m") == 0)
        v *= 60;
    else if (strcmp(end, "s") != 0 && *end != '\0')
        return -1;
    if (v > 7 * 24 * 3600)
        return -1;
    *ms = (unsigned)(v * 1000);
    return 0;
}

static int budgets(struct deploy_run *r, const char *mf, const char *mft)
{
    struct kf_err err;

    kf_err_clear(&err);
    if (mf != NULL && coord_budget_parse(mf, &r->max_fail, &err) < 0) {
        fprintf(stderr, "kfleet: --max-fail: %s\n", kf_err_msg(&err));
        return KF_EXIT_USAGE;
    }
    if (mft != NULL && coord_budget_parse(mft, &r->max_fail_total, &err) < 0) {
        fprintf(stderr, "kfleet: --max-fail-total: %s\n", kf_err_msg(&err));
        return KF_EXIT_USAGE;
    }
    return 0;
}

static void owner_host(char *out, size_t n)
{
    char h[256];
    size_t i, j = 0;

    if (gethostname(h, sizeof(h)) < 0)
        snprintf(h, sizeof(h), "control");
    h[sizeof(h) - 1] = '\0';
    for (i = 0; h[i] && j + 1 < n && j < 80; i++)
        if ((h[i] >= 'a' && h[i] <= 'z') || (h[i] >= 'A' && h[i] <= 'Z') ||
            (h[i] >= '0' && h[i] <= '9') || h[i] == '.' || h[i] == '-' || h[i] == '_')
            out[j++] = h[i];
    if (j == 0)
        j = (size_t)snprintf(out, n, "control");
    out[j] = '\0';
}

static int name_cmp(const void *a, const void *b)
{
    const struct inv_host *const *x = a, *const *y = b;

    return strverscmp((*x)->name, (*y)->name);
}

/* The node order and stages of a new rollout. */
static int plan_rollout(struct deploy_run *r, const size_t *idx, size_t n, const char ***hosts_out,
                        int **stages_out, uint32_t seed)
{
    struct coord_stage_spec specs[COORD_MAX_STAGE_SPECS];
    size_t nspecs = 0, ncanary = 0, i, j, *canary_idx = NULL, ncan = 0;
    size_t sizes[MAX_STAGES];
    const struct inv_host **order = calloc(n + 1, sizeof(*order));
    const char **hosts = calloc(n + 1, sizeof(*hosts));
    int *stages = calloc(n + 1, sizeof(*stages));
    struct kf_err err;
    int ns, s, rc = KF_EXIT_USAGE;
    const char *spec = r->o->stages ? r->o->stages : "1,10%,100%";

    kf_err_clear(&err);
    if (order == NULL || hosts == NULL || stages == NULL) {
        rc = KF_EXIT_ERROR;
        goto out;
    }
    if (coord_stages_parse(spec, specs, &nspecs, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        goto out;
    }
    for (i = 0; i < n; i++)
        order[i] = &r->inv.hosts[idx[i]];
    qsort(order, n, sizeof(*order), name_cmp);
    if (r->o->shuffle) {
        /* Fisher-Yates with a seeded generator, so resume and the journal
         * agree on the order. */
        uint32_t x = seed ? seed : 1;
        for (i = n; i > 1; i--) {
            const struct inv_host *t;
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            j = x % i;
            t = order[i - 1];
            order[i - 1] = order[j];
            order[j] = t;
        }
    }
    if (r->o->canary != NULL) {
        if (inv_select(&r->inv, r->o->canary, &canary_idx, &ncan, &err) < 0) {
            fprintf(stderr, "kfleet: --canary '%s': %s\n", r->o->canary, kf_err_msg(&err));
            goto out;
        }
        /* Canary hosts (those also selected) first, in the order above. */
        for (i = 0; i < n; i++) {
            int is = 0;
            for (j = 0; j < ncan; j++)
                if (&r->inv.hosts[canary_idx[j]] == order[i])
                    is = 1;
            if (is) {
                const struct inv_host *t = order[i];
                memmove(&order[ncanary + 1], &order[ncanary], (i - ncanary) * sizeof(*order));
                order[ncanary++] = t;
            }
        }
        if (ncanary == 0) {
            fprintf(stderr, "kfleet: --canary '%s' selects none of the hosts being deployed\n",
                    r->o->canary);
            goto out;
        }
    }
    if (ncanary > 0) {
        sizes[0] = ncanary;
        ns = 1;
        if (n > ncanary) {
            int more =
                coord_stages_split(nspecs > 1 ? specs + 1 : specs, nspecs > 1 ? nspecs - 1 : 1,
                                   n - ncanary, sizes + 1, MAX_STAGES - 1);
            if (more < 0) {
                fprintf(stderr, "kfleet: --stages makes more than %d stages\n", MAX_STAGES);
                goto out;
            }
            ns += more;
        }
    } else {
        ns = coord_stages_split(specs, nspecs, n, sizes, MAX_STAGES);
        if (ns < 0) {
            fprintf(stderr, "kfleet: --stages makes more than %d stages\n", MAX_STAGES);
            goto out;
        }
    }
    for (s = 0, j = 0; s < ns; s++)
        for (i = 0; i < sizes[s]; i++, j++) {
            hosts[j] = order[j]->name;
            stages[j] = s;
        }
    r->ro.nstages = ns;
    *hosts_out = hosts;
    *stages_out = stages;
    hosts = NULL;
    stages = NULL;
    rc = 0;
out:
    free(canary_idx);
    free(order);
    free(hosts);
    free(stages);
    return rc;
}

static json_t *options_json(struct deploy_run *r, uint32_t seed)
{
    struct coord_opts *o = r->o;
    char cwd[4096], inv[4200], cfg[4200];

    /* Paths as absolute as they were, so resume from elsewhere finds them. */
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        snprintf(cwd, sizeof(cwd), ".");
    snprintf(inv, sizeof(inv), "%s%s%s", o->inventory[0] == '/' ? "" : cwd,
             o->inventory[0] == '/' ? "" : "/", o->inventory);
    snprintf(cfg, sizeof(cfg), "%s%s%s", o->config[0] == '/' ? "" : cwd,
             o->config[0] == '/' ? "" : "/", o->config);
    return json_pack("{s:s,s:s,s:s?,s:s?,s:s?,s:b,s:I,s:s?,s:s?,s:s?,s:b,s:b,s:b,s:b,s:I,s:I,s:s?}",
                     "inventory", inv, "config", cfg, "limit", o->limit, "stages", o->stages,
                     "canary", o->canary, "shuffle", o->shuffle, "seed", (json_int_t)seed,
                     "max_fail", o->max_fail, "max_fail_total", o->max_fail_total, "pause",
                     o->pause, "reload", o->reload, "auto_rollback", o->auto_rollback,
                     "rollback_stage", o->rollback_stage, "allow_userspace_mismatch",
                     o->allow_userspace_mismatch, "forks", (json_int_t)o->forks, "transfer_forks",
                     (json_int_t)o->transfer_forks, "to", o->to);
}

static void node_opts(struct deploy_run *r)
{
    struct coord_opts *o = r->o;
    struct deploy_node_opts *no = &r->nopts;
    const struct coord_deploy_config *d = &r->cfg.deploy;

    memset(no, 0, sizeof(*no));
    no->mode = strcmp(r->ro.kind, "rollback") == 0 ? DEPLOY_MODE_ROLLBACK : DEPLOY_MODE_INSTALL;
    no->profile = r->prof->name;
    no->driver = r->ro.driver[0] ? r->ro.driver : NULL;
    no->owner = r->ro.owner;
    no->reload = o->reload;
    no->auto_rollback = o->auto_rollback;
    no->allow_userspace_mismatch = o->allow_userspace_mismatch;
    no->userspace_check = r->prof->userspace_check;
    no->break_lock = o->break_lock;
    /* nvidia-smi speaks for NVIDIA's driver only: "auto" skips it for
     * other module sets. */
    no->smi = r->prof->type == PROFILE_KMOD && strcmp(d->smi, "auto") == 0 ? "skip" : d->smi;
    no->verify_command = d->verify;
    no->rollback_to = o->to;
    no->modules = r->modules;
    no->drain.command = d->drain.command;
    no->drain.on_node = d->drain.on_node;
    no->drain.timeout_ms = d->drain.timeout * 1000;
    no->undrain.command = d->undrain.command;
    no->undrain.on_node = d->undrain.on_node;
    no->undrain.timeout_ms = d->undrain.timeout * 1000;
    no->command_timeout_ms = o->command_timeout_ms;
    no->transfer_timeout_ms = d->transfer_timeout * 1000;
    no->out_limit = 1024 * 1024;
    /* --rollback-stage: the same, rolling back to each node's prior state */
    r->rbopts = *no;
    r->rbopts.mode = DEPLOY_MODE_ROLLBACK;
    r->rbopts.rollback_to = NULL;
    r->xfer_limit = o->transfer_forks ? o->transfer_forks : d->transfer_forks;
    /* A node: its session and its log. */
    o->forks = coord_fit_forks(o->forks, COORD_SESSION_FILES + 1, "node");
}

static int run_loop(struct deploy_run *r)
{
    struct ssh_engine_opts eo;
    char b1[32], b2[32];

    if (uv_loop_init(&r->loop) < 0) {
        fprintf(stderr, "kfleet: cannot create the event loop\n");
        return KF_EXIT_ERROR;
    }
    r->loop_ok = 1;
    coord_engine_opts(r->o, &eo);
    if (ssh_engine_init(&r->engine, &r->loop, &eo) < 0) {
        fprintf(stderr, "kfleet: out of memory\n");
        return KF_EXIT_ERROR;
    }
    r->engine_ok = 1;
    snprintf(r->log_dir, sizeof(r->log_dir), "%s/logs/rollouts/%lld", r->state_dir, r->ro.id);
    if (mkdir_p(r->log_dir, 0700) < 0) {
        fprintf(stderr, "kfleet: cannot create %s: %s\n", r->log_dir, strerror(errno));
        return KF_EXIT_ERROR;
    }
    uv_signal_init(&r->loop, &r->sigint);
    uv_signal_init(&r->loop, &r->sigterm);
    uv_timer_init(&r->loop, &r->pause_timer);
    uv_timer_init(&r->loop, &r->xfer_timer);
    r->sigint.data = r->sigterm.data = r->pause_timer.data = r->xfer_timer.data = r;
    uv_signal_start(&r->sigint, on_signal, SIGINT);
    uv_signal_start(&r->sigterm, on_signal, SIGTERM);
    r->handles_open = 1;
    r->t0_ns = r->tick_ns = uv_hrtime();
    coord_progress_init(&r->progress, r->o->json ? 0 : r->o->progress, "deploy", 0);
    out(r,
        "kfleet %s: rollout %lld, %s %s on %zu node%s in %d stage%s; --forks %u, "
        "--transfer-forks %u, --max-fail %s per stage, --max-fail-total %s%s%s\n",
        r->ro.kind, r->ro.id, r->prof->name,
        r->ro.driver[0]                             ? r->ro.driver
        : r->o->to && strcmp(r->o->to, "none") == 0 ? "to none"
        : r->o->to                                  ? r->o->to
                                                    : "to each node's previous release",
        r->nnodes, r->nnodes == 1 ? "" : "s", r->ro.nstages, r->ro.nstages == 1 ? "" : "s",
        r->o->forks, r->xfer_limit,
        r->max_fail.set ? coord_budget_str(&r->max_fail, b1, sizeof(b1)) : "0",
        coord_budget_str(&r->max_fail_total, b2, sizeof(b2)), r->o->reload ? ", --reload" : "",
        r->o->auto_rollback ? ", --auto-rollback" : "");
    stage_start(r);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    coord_progress_clear(&r->progress);
    return 0;
}

/* Loads the rollout's nodes from the journal into r->nodes. A resume of a
 * halted rollout retries the failed nodes of the stage it halted in. */
static int load_nodes(struct deploy_run *r, int retry_stage_failures)
{
    struct coord_rollout_node *v = NULL;
    struct kf_err err;
    size_t n = 0, i;
    int rc;

    kf_err_clear(&err);
    rc = coord_journal_nodes(&r->db, r->ro.id, &v, &n, &err);
    if (rc < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_ERROR;
    }
    r->nodes = calloc(n + 1, sizeof(*r->nodes));
    r->pass = calloc(n + 1, sizeof(*r->pass));
    if (r->nodes == NULL || r->pass == NULL) {
        coord_rollout_nodes_free(v, n);
        return KF_EXIT_ERROR;
    }
    r->nnodes = n;
    r->total_nodes = n;
    for (i = 0; i < n; i++) {
        struct rnode *rn = &r->nodes[i];
        int oc = deploy_outcome_from_name(v[i].outcome);
        rn->run = r;
        snprintf(rn->host, sizeof(rn->host), "%s", v[i].host);
        rn->stage = v[i].stage;
        rn->h = inv_find_host(&r->inv, v[i].host);
        rn->prior_json = v[i].prior;
        v[i].prior = NULL;
        if (v[i].outcome[0] && oc > 0) {
            rn->final = 1;
            rn->outcome = (enum deploy_outcome)oc;
            if (failed_outcome(r, rn->outcome)) {
                if (retry_stage_failures && rn->stage == r->ro.stage)
                    rn->final = 0;
                else
                    r->total_failed++;
            }
        }
    }
    coord_rollout_nodes_free(v, n);
    return 0;
}

/* The report from the journal, JSON and JUnit; the exit status. */
static int report(struct deploy_run *r)
{
    struct coord_rollout_node *v = NULL;
    struct coord_rollout_counts c;
    struct kf_err err;
    size_t n = 0;
    int exit_code;
    double secs = (double)(uv_hrtime() - r->t0_ns) / 1e9;

    kf_err_clear(&err);
    if (coord_journal_nodes(&r->db, r->ro.id, &v, &n, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_ERROR;
    }
    {
        struct coord_rollout fresh;
        if (coord_journal_get(&r->db, r->ro.id, &fresh, &err) == 1) {
            coord_rollout_release(&r->ro);
            r->ro = fresh;
        }
    }
    coord_journal_known_versions(&r->db, &r->ro, v, n);
    coord_rollout_count(v, n, -1, &c);
    if (r->o->result != NULL) {
        r->o->result->rollout = r->ro.id;
        snprintf(r->o->result->rollout_status, sizeof(r->o->result->rollout_status), "%s",
                 r->ro.status);
        r->o->result->updated = c.updated;
        r->o->result->unchanged = c.unchanged;
        r->o->result->skipped = c.skipped;
        r->o->result->failed = c.failed + c.rolled_back + c.rollback_failed;
    }
    if (r->o->json) {
        json_t *j = coord_rollout_json(&r->ro, v, n);
        json_object_set_new(j, "seconds", json_real(secs));
        json_dumpf(j, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(j);
    } else {
        coord_rollout_print(&r->ro, v, n, r->o->verbose, stdout);
        if (strcmp(r->ro.status, "done") == 0 && c.updated == 0 && c.failed == 0 &&
            c.rolled_back == 0 && c.rollback_failed == 0 && c.skipped == 0 &&
            strcmp(r->ro.kind, "deploy") == 0)
            printf("\nnothing to do: all %zu nodes are at %s %s already (checked on each node)\n",
                   c.unchanged, r->prof->name, r->ro.driver);
        printf("\nrollout %lld %s in %.1f s%s%s; logs: %s/\n", r->ro.id, r->ro.status, secs,
               r->ro.reason[0] ? ": " : "", r->ro.reason, r->log_dir);
        if (strcmp(r->ro.status, "paused") == 0 || strcmp(r->ro.status, "interrupted") == 0 ||
            strcmp(r->ro.status, "halted") == 0)
            printf("resume with: kfleet rollout resume %lld   (or end it: kfleet rollout abort "
                   "%lld)\n",
                   r->ro.id, r->ro.id);
    }
    if (r->o->junit != NULL && coord_rollout_junit(&r->ro, v, n, r->o->junit, &err) < 0)
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
    coord_rollout_nodes_free(v, n);
    if (r->db_error) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&r->db_err));
        return KF_EXIT_ERROR;
    }
    if (strcmp(r->ro.status, "halted") == 0)
        exit_code = KF_EXIT_HALTED;
    else if (strcmp(r->ro.status, "paused") == 0 || strcmp(r->ro.status, "interrupted") == 0)
        exit_code = KF_EXIT_PAUSED;
    else if (c.failed || c.rollback_failed || c.skipped || c.pending || c.running ||
             (c.rolled_back && strcmp(r->ro.kind, "rollback") != 0))
        exit_code = KF_EXIT_HOSTS;
    else
        exit_code = KF_EXIT_OK;
    return exit_code;
}

/* kfleet deploy / kfleet rollback: a new rollout. */
static int new_rollout(struct coord_opts *o, const char *kind)
{
    struct deploy_run r;
    struct kf_err err;
    size_t *idx = NULL, nidx = 0;
    const char **hosts = NULL;
    int *stages = NULL;
    uint32_t seed = 0;
    json_t *opts = NULL;
    int rc;

    rc = open_run(&r, o);
    if (rc != 0)
        goto out;
    if (strcmp(kind, "deploy") == 0 && o->driver == NULL) {
        fprintf(stderr, "kfleet: deploy needs --driver VERSION (the packages of that driver "
                        "in the store: kfleet artifacts list)\n");
        rc = KF_EXIT_USAGE;
        goto out;
    }
    if ((rc = budgets(&r, o->max_fail, o->max_fail_total)) != 0)
        goto out;
    if (parse_pause(o->pause, &r.pause_ms, &r.pause_manual) < 0) {
        fprintf(stderr, "kfleet: --pause takes a duration (30s, 10m, 1h) or 'manual', got '%s'\n",
                o->pause);
        rc = KF_EXIT_USAGE;
        goto out;
    }
    if (strcmp(kind, "rollback") == 0 && o->rollback_stage) {
        fprintf(stderr, "kfleet: --rollback-stage is a deploy option\n");
        rc = KF_EXIT_USAGE;
        goto out;
    }
    rc = coord_load_selection(o, &r.inv, &idx, &nidx);
    if (rc != 0)
        goto out;
    r.inv_ok = 1;
    if (o->shuffle && RAND_bytes((unsigned char *)&seed, sizeof(seed)) != 1)
        seed = (uint32_t)time(NULL);
    snprintf(r.ro.kind, sizeof(r.ro.kind), "%s", kind);
    snprintf(r.ro.profile, sizeof(r.ro.profile), "%s", r.prof->name);
    snprintf(r.ro.driver, sizeof(r.ro.driver), "%s",
             o->driver && strcmp(kind, "deploy") == 0 ? o->driver : "");
    snprintf(r.ro.status, sizeof(r.ro.status), "running");
    owner_host(r.ro.owner, 80);
    r.ro.pid = (long long)getpid();
    if (strcmp(kind, "rollback") == 0 && o->stages == NULL)
        o->stages = "100%";
    rc = plan_rollout(&r, idx, nidx, &hosts, &stages, seed);
    if (rc != 0)
        goto out;
    opts = options_json(&r, seed);
    r.ro.options = opts ? json_dumps(opts, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (r.ro.options == NULL) {
        rc = KF_EXIT_ERROR;
        goto out;
    }
    r.ro_ok = 1;
    kf_err_clear(&err);
    if (coord_journal_create(&r.db, &r.ro, hosts, stages, nidx, now_s(), &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        rc = KF_EXIT_ERROR;
        goto out;
    }
    if ((rc = load_nodes(&r, 0)) != 0)
        goto out;
    node_opts(&r);
    rc = run_loop(&r);
    if (rc == 0)
        rc = report(&r);
out:
    json_decref(opts);
    free(hosts);
    free(stages);
    free(idx);
    run_release(&r);
    return rc;
}

int cmd_deploy(struct coord_opts *o)
{
    return new_rollout(o, "deploy");
}

int cmd_rollback(struct coord_opts *o)
{
    if (o->driver != NULL) {
        fprintf(stderr, "kfleet: rollback takes --to VERSION (or none), not --driver\n");
        return KF_EXIT_USAGE;
    }
    return new_rollout(o, "rollback");
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* Is the rollout's kfleet process still alive? */
int coord_rollout_alive(const struct coord_rollout *r)
{
    char path[64], cmd[256];
    FILE *f;
    size_t n;

    if (r->pid <= 0 || strcmp(r->status, "running") != 0 || r->pid == (long long)getpid())
        return 0;
    if (kill((pid_t)r->pid, 0) < 0 && errno == ESRCH)
        return 0;
    snprintf(path, sizeof(path), "/proc/%lld/cmdline", r->pid);
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    n = fread(cmd, 1, sizeof(cmd) - 1, f);
    fclose(f);
    cmd[n] = '\0';
    return strstr(cmd, "kfleet") != NULL;
}

/* kfleet rollout resume ID (and abort's unlock pass, unlock = 1). */
int coord_rollout_resume(struct coord_opts *o, long long id, int unlock)
{
    struct deploy_run r;
    struct coord_rollout ro;
    struct kf_err err;
    json_t *opts = NULL;
    size_t i;
    int rc, found, halted;
    struct coord_opts saved = *o;

    memset(&ro, 0, sizeof(ro));
    kf_err_clear(&err);
    /* The rollout's own settings, unless the command line names them. */
    {
        struct coord_db db;
        char *sd = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
        if (sd == NULL || coord_db_open(&db, sd, &err) < 0) {
            fprintf(stderr, "kfleet: %s\n", sd ? kf_err_msg(&err) : "out of memory");
            free(sd);
            return KF_EXIT_ERROR;
        }
        found = coord_journal_get(&db, id, &ro, &err);
        coord_db_close(&db);
        free(sd);
    }
    if (found < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_ERROR;
    }
    if (found == 0) {
        fprintf(stderr, "kfleet: no rollout %lld (kfleet rollout list)\n", id);
        return KF_EXIT_USAGE;
    }
    if (coord_rollout_alive(&ro)) {
        fprintf(stderr,
                "kfleet: rollout %lld is running in process %lld; stop it first (Ctrl-C "
                "or kill %lld)\n",
                id, ro.pid, ro.pid);
        coord_rollout_release(&ro);
        return KF_EXIT_USAGE;
    }
    if (strcmp(ro.status, "done") == 0 || strcmp(ro.status, "aborted") == 0) {
        fprintf(stderr,
                "kfleet: rollout %lld is %s: nothing to %s (start a new one with "
                "kfleet %s)\n",
                id, ro.status, unlock ? "abort" : "resume", ro.kind);
        coord_rollout_release(&ro);
        return KF_EXIT_USAGE;
    }
    halted = strcmp(ro.status, "halted") == 0;
    opts = json_loads(ro.options ? ro.options : "{}", 0, NULL);
    if (opts == NULL) {
        fprintf(stderr, "kfleet: rollout %lld: its options in the journal do not parse\n", id);
        coord_rollout_release(&ro);
        return KF_EXIT_ERROR;
    }
    if (!o->inventory_given && jstr(opts, "inventory"))
        o->inventory = jstr(opts, "inventory");
    if (!o->config_given && jstr(opts, "config"))
        o->config = jstr(opts, "config");
    o->profile = ro.profile;
    o->driver = ro.driver[0] ? ro.driver : NULL;
    o->stages = jstr(opts, "stages");
    o->canary = jstr(opts, "canary");
    o->pause = jstr(opts, "pause");
    o->to = jstr(opts, "to");
    o->reload = json_is_true(json_object_get(opts, "reload"));
    o->auto_rollback = json_is_true(json_object_get(opts, "auto_rollback"));
    o->rollback_stage = json_is_true(json_object_get(opts, "rollback_stage"));
    o->allow_userspace_mismatch = json_is_true(json_object_get(opts, "allow_userspace_mismatch"));
    if (o->forks == 64 && json_is_integer(json_object_get(opts, "forks")))
        o->forks = (unsigned)json_integer_value(json_object_get(opts, "forks"));
    if (o->transfer_forks == 0 && json_is_integer(json_object_get(opts, "transfer_forks")))
        o->transfer_forks = (unsigned)json_integer_value(json_object_get(opts, "transfer_forks"));

    rc = open_run(&r, o);
    if (rc != 0)
        goto out;
    r.ro = ro;
    memset(&ro, 0, sizeof(ro));
    r.ro_ok = 1;
    if ((rc = budgets(&r, jstr(opts, "max_fail"), jstr(opts, "max_fail_total"))) != 0)
        goto out;
    parse_pause(o->pause, &r.pause_ms, &r.pause_manual);
    inv_init(&r.inv);
    if (inv_load_file(&r.inv, o->inventory, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        rc = KF_EXIT_USAGE;
        goto out;
    }
    r.inv_ok = 1;
    if ((rc = load_nodes(&r, halted && !unlock)) != 0)
        goto out;
    node_opts(&r);
    if (unlock) {
        /* abort: release the lock on every node the rollout touched and
         * did not finish cleanly. */
        r.unlock_pass = 1;
        r.nopts.mode = DEPLOY_MODE_UNLOCK;
        r.nopts.break_lock = 0;
        r.ro.nstages = 1;
        for (i = 0; i < r.nnodes; i++) {
            struct rnode *rn = &r.nodes[i];
            rn->stage = 0;
            rn->final = rn->final && (rn->outcome == DO_UPDATED || rn->outcome == DO_UNCHANGED ||
                                      rn->outcome == DO_SKIPPED || rn->outcome == DO_ROLLED_BACK);
        }
        r.ro.stage = 0;
    } else {
        out(&r, "resuming rollout %lld (%s at stage %d/%d)%s\n", id, r.ro.status, r.ro.stage + 1,
            r.ro.nstages, halted ? ": retrying the failed nodes of the halted stage" : "");
    }
    rc = run_loop(&r);
    if (rc == 0 && !unlock)
        rc = report(&r);
out:
    if (unlock && rc == 0 && !r.db_error) {
        size_t left = 0;
        for (i = 0; i < r.nnodes; i++)
            if (r.nodes[i].started && r.nodes[i].dn.code != 0)
                left++;
        rc = left ? KF_EXIT_HOSTS : KF_EXIT_OK;
    }
    json_decref(opts);
    coord_rollout_release(&ro);
    run_release(&r);
    o->inventory = saved.inventory;
    o->config = saved.config;
    return rc;
}
