/* One node's deploy: an explicit state machine over one SSH connection.
 *
 *   CONNECT -> CHECK (node.sh check: preflight and plan, nothing changes)
 *     -> TRANSFER (each package the node does not hold, streamed into
 *        node.sh receive; sha256 checked there before anything is replaced)
 *     -> INSTALL (each kernel: node.sh install)
 *     -> DRAIN (hook) -> LOAD (running kernel, --reload) -> VERIFY (each
 *        kernel moved to the target; the running one loaded when reloaded)
 *     -> UNDRAIN (hook) -> UNLOCK -> DONE
 *   a failure in INSTALL, LOAD or VERIFY with auto-rollback:
 *     -> ROLLBACK (each kernel this rollout changed, to what it had before,
 *        modules reloaded when this run loaded them) -> ROLLBACK_VERIFY
 *     -> UNDRAIN (when drained) -> UNLOCK -> DONE
 *   rollback mode: CONNECT -> CHECK -> [DRAIN] -> ROLLBACK -> ROLLBACK_VERIFY
 *     -> [UNDRAIN] -> UNLOCK -> DONE;  unlock mode: CONNECT -> UNLOCK -> DONE
 *
 * Every state is handed to ops->journal before its side effect. Each step
 * on the node is idempotent (NODE.md), so a node found in any state after
 * a crash is finished by running it again from CHECK with the prior state
 * the journal kept. Transport errors end the node at once: its lock stays
 * with the rollout, which resume takes over. */
#include "deploy.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_ARGS 24

typedef void (*action_cb)(struct deploy_node *n, const struct deploy_result *r);

static void advance(struct deploy_node *n);
static void enter_unlock(struct deploy_node *n);
static void enter_rollback(struct deploy_node *n);
static void enter_undrain(struct deploy_node *n);
static void finish(struct deploy_node *n);

/* ---- bookkeeping ---------------------------------------------------------------- */

static void logf_(struct deploy_node *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void logf_(struct deploy_node *n, const char *fmt, ...)
{
    va_list ap;
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;

    if (n->log == NULL)
        return;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(n->log, "%s ", ts);
    va_start(ap, fmt);
    vfprintf(n->log, fmt, ap);
    va_end(ap);
    fputc('\n', n->log);
    fflush(n->log);
}

/* Journals s before the step it announces; a journal that cannot be
 * written stops the node before it acts. */
static int set_state(struct deploy_node *n, enum deploy_state s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_state(struct deploy_node *n, enum deploy_state s, const char *fmt, ...)
{
    char detail[300] = "";
    va_list ap;

    if (fmt != NULL) {
        va_start(ap, fmt);
        vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
    }
    n->state = s;
    logf_(n, "state %s%s%s", deploy_state_name(s), detail[0] ? ": " : "", detail);
    if (n->ops->journal != NULL && n->ops->journal(n, s, detail) < 0) {
        n->code = KF_EDB;
        snprintf(n->phase, sizeof(n->phase), "%s", deploy_state_name(s));
        snprintf(n->msg, sizeof(n->msg), "the journal could not be written; stopped before %s",
                 deploy_state_name(s));
        n->outcome = DO_FAILED;
        finish(n);
        return -1;
    }
    return 0;
}

static void fail_note(struct deploy_node *n, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_note(struct deploy_node *n, int code, const char *fmt, ...)
{
    va_list ap;

    if (n->code != 0)
        return; /* the first failure is the one reported */
    n->code = code;
    n->failed_step = (int)n->state;
    snprintf(n->phase, sizeof(n->phase), "%s", deploy_state_name(n->state));
    va_start(ap, fmt);
    vsnprintf(n->msg, sizeof(n->msg), fmt, ap);
    va_end(ap);
    logf_(n, "FAILED in %s: %s", n->phase, n->msg);
}

/* A failure after which nothing more can be done on the node (the
 * connection is gone or unusable). */
static void fail_hard(struct deploy_node *n, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_hard(struct deploy_node *n, int code, const char *fmt, ...)
{
    va_list ap;
    char msg[sizeof(n->msg)];

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fail_note(n, code, "%s", msg);
    if (n->conn != NULL) {
        ssh_conn_close(n->conn);
        n->conn = NULL;
    }
    if (n->outcome == DO_NONE)
        n->outcome = n->rolling_back ? DO_ROLLBACK_FAILED : DO_FAILED;
    finish(n);
}

static void on_defer(uv_timer_t *t)
{
    struct deploy_node *n = t->data;

    n->ops->done(n);
}

/* The end: ops->done runs from the loop, never from inside a caller's
 * call into us. */
static void finish(struct deploy_node *n)
{
    if (n->finished)
        return;
    n->finished = 1;
    n->t1_ns = uv_hrtime();
    if (n->x_init) {
        ssh_exec_release(&n->x);
        n->x_init = 0;
    }
    free(n->cmd);
    n->cmd = NULL;
    if (n->conn != NULL) {
        ssh_conn_close(n->conn);
        n->conn = NULL;
    }
    logf_(n, "end: %s%s%s", deploy_outcome_name(n->outcome), n->msg[0] ? ": " : "", n->msg);
    uv_timer_start(&n->defer, on_defer, 0, 0);
}

/* ---- running node.sh actions ----------------------------------------------------- */

struct args {
    const char *v[MAX_ARGS];
    size_t n;
};

static void arg2(struct args *a, const char *k, const char *v)
{
    if (a->n + 2 <= MAX_ARGS) {
        a->v[a->n++] = k;
        a->v[a->n++] = v;
    }
}

static void arg1(struct args *a, const char *k)
{
    if (a->n < MAX_ARGS)
        a->v[a->n++] = k;
}

static void owner_args(struct deploy_node *n, struct args *a)
{
    arg2(a, "--owner", n->o->owner);
    if (n->o->break_lock)
        arg1(a, "--break-lock");
}

static const char *first_line(const struct buf *b, char *out, size_t outsz)
{
    const char *s = b->data ? b->data : "";
    size_t len = b->len, i, start = 0, end;

    /* the last non-empty line: node.sh says what went wrong last */
    end = len;
    while (end > 0 && (s[end - 1] == '\n' || s[end - 1] == '\r'))
        end--;
    for (i = end; i > 0; i--)
        if (s[i - 1] == '\n') {
            start = i;
            break;
        }
    return kf_escape_to(out, outsz, s + start, end - start);
}

static void on_action_done(struct ssh_conn *c, int status, void *arg)
{
    struct deploy_node *n = arg;
    struct deploy_result r;
    const char *action = n->pending_action;
    action_cb cb = n->pending_cb;
    char line[200];

    n->pending_cb = NULL;
    if (n->xfer_pkg != NULL && strcmp(action, "receive") == 0) {
        const struct deploy_pkg *pkg = n->xfer_pkg;
        n->bytes_sent += n->x.stdin_sent;
        n->xfer_pkg = NULL;
        n->xfer_data = NULL;
        if (n->ops->transfer_end)
            n->ops->transfer_end(n, pkg, n->x.stdin_sent);
    }
    if (status == KF_ETRUNC) {
        fail_hard(n, KF_ETRUNC, "node.sh %s printed more than %zu bytes", action, n->x.out.limit);
        return;
    }
    if (status < 0) {
        fail_hard(n, status, "%s: %s", action, ssh_conn_error(c));
        return;
    }
    logf_(n, "node.sh %s: exit %d%s%s", action, n->x.exit_status,
          n->x.exit_signal[0] ? " signal " : "", n->x.exit_signal);
    if (n->log != NULL) {
        if (n->x.out.len)
            fprintf(n->log, "  stdout:\n%.*s%s", (int)n->x.out.len, n->x.out.data,
                    n->x.out.data[n->x.out.len - 1] == '\n' ? "" : "\n");
        if (n->x.err.len)
            fprintf(n->log, "  stderr:\n%.*s%s", (int)n->x.err.len, n->x.err.data,
                    n->x.err.data[n->x.err.len - 1] == '\n' ? "" : "\n");
        fflush(n->log);
    }
    if (n->h->become && n->x.exit_status != 0 &&
        (strstr(buf_cstr(&n->x.err), "password is required") != NULL ||
         strstr(buf_cstr(&n->x.err), "a terminal is required") != NULL)) {
        fail_hard(n, KF_ESUDO,
                  "sudo asks for a password (kfleet runs 'sudo -n' and never types one): give "
                  "user '%s' passwordless sudo, or connect as root",
                  n->h->user ? n->h->user : "(ssh default)");
        return;
    }
    deploy_result_parse(n->x.out.data ? n->x.out.data : "", n->x.out.len, action, n->x.exit_status,
                        &r);
    if (!r.ok && strcmp(r.word, "protocol") == 0 && n->x.err.len > 0) {
        /* node.sh died without its last line (sh missing a tool, killed):
         * stderr says why. */
        size_t l = strlen(r.msg);
        snprintf(r.msg + l, sizeof(r.msg) - l, "; stderr: %s",
                 first_line(&n->x.err, line, sizeof(line)));
    }
    cb(n, &r);
}

/* Runs `node.sh ACTION ARGS` on the node's connection; cb gets the
 * result. The stdin buffer must stay alive until cb. */
static void run_action(struct deploy_node *n, const char *action, const struct args *a,
                       const void *in, size_t inlen, unsigned timeout_ms, action_cb cb)
{
    int rc;

    /* A node runs a few actions per kernel: a count far past that is a
     * loop in this state machine, stopped rather than left to spin. */
    if (++n->nactions > 64 + 16 * DEPLOY_MAX_KERNELS) {
        fail_hard(n, KF_EINVAL,
                  "stopped after %u node.sh actions on this node: a kfleet bug (the step "
                  "sequence did not end); the node is as the last action left it",
                  n->nactions - 1);
        return;
    }
    if (n->x_init) {
        ssh_exec_release(&n->x);
        n->x_init = 0;
    }
    free(n->cmd);
    n->cmd = NULL;
    rc = deploy_node_command(n->h->become, n->h->become_user, action, a->v, a->n, &n->cmd);
    if (rc < 0) {
        fail_hard(n, rc, "cannot build the node command for %s: %s", action, kf_strerror(rc));
        return;
    }
    /* The changing actions take the node's lock: from here on it is ours
     * to release. (Nothing else on the node changes before them.) */
    if (strcmp(action, "receive") == 0 || strcmp(action, "install") == 0 ||
        strcmp(action, "load") == 0 || strcmp(action, "rollback") == 0)
        n->hold_lock = 1;
    ssh_exec_init(&n->x);
    n->x_init = 1;
    n->x.command = n->cmd;
    n->x.stdin_data = in;
    n->x.stdin_len = inlen;
    n->x.out_limit = n->o->out_limit ? n->o->out_limit : 256 * 1024;
    n->x.timeout_ms = timeout_ms ? timeout_ms : n->o->command_timeout_ms;
    n->pending_cb = cb;
    n->pending_action = action;
    logf_(n, "run node.sh %s (%zu bytes of input)", action, inlen);
    rc = ssh_conn_exec(n->conn, &n->x, on_action_done, n);
    if (rc < 0)
        fail_hard(n, rc, "cannot start node.sh %s: %s", action, kf_strerror(rc));
}

/* A failed action's result as the node's failure. */
static int result_code(const struct deploy_result *r)
{
    if (strcmp(r->word, "locked") == 0)
        return KF_ELOCKED;
    if (strcmp(r->word, "usage") == 0 || strcmp(r->word, "protocol") == 0)
        return KF_ECMD;
    if (strcmp(r->word, "sha256") == 0)
        return KF_EIO;
    if (strcmp(r->word, "missing") == 0)
        return KF_ENOENT;
    return KF_ECMD;
}

/* ---- helpers on the plan ------------------------------------------------------------ */

static struct deploy_kernel *running_kernel(struct deploy_node *n)
{
    size_t i;

    for (i = 0; i < n->nk; i++)
        if (n->k[i].running)
            return &n->k[i];
    return NULL;
}

/* The package whose module lists the running kernel uses. */
static const struct deploy_pkg *any_pkg(struct deploy_node *n)
{
    struct deploy_kernel *rk = running_kernel(n);
    size_t i;

    if (rk != NULL && rk->pkg != NULL)
        return rk->pkg;
    for (i = 0; i < n->nk; i++)
        if (n->k[i].pkg != NULL)
            return n->k[i].pkg;
    return NULL;
}

static const char *load_list(struct deploy_node *n)
{
    const struct deploy_pkg *p = any_pkg(n);

    return p != NULL ? p->load : n->o->modules ? n->o->modules : "";
}

static const char *unload_list(struct deploy_node *n, char *buf, size_t bufsz)
{
    const struct deploy_pkg *p = any_pkg(n);
    const char *mods = n->o->modules ? n->o->modules : "";
    const char *w[DEPLOY_MAX_MODULES];
    size_t nw = 0, len, i, off = 0;
    char tmp[DEPLOY_MAX_MODULES * (KF_MODNAME_MAX + 1)];
    char *s, *save = NULL;

    if (p != NULL)
        return p->unload;
    /* the profile's list reversed */
    snprintf(tmp, sizeof(tmp), "%s", mods);
    for (s = strtok_r(tmp, " ", &save); s && nw < DEPLOY_MAX_MODULES;
         s = strtok_r(NULL, " ", &save))
        w[nw++] = s;
    buf[0] = '\0';
    for (i = nw; i > 0; i--) {
        len = (size_t)snprintf(buf + off, bufsz - off, "%s%s", off ? " " : "", w[i - 1]);
        if (len >= bufsz - off)
            break;
        off += len;
    }
    return buf;
}

/* The module whose /sys/module/M/version names the driver: the package's,
 * else the first of the profile's list. */
static const char *version_module(struct deploy_node *n)
{
    const struct deploy_pkg *p = any_pkg(n);
    const char *mods = n->o->modules ? n->o->modules : "";
    size_t len;

    if (p != NULL && p->version_module[0])
        return p->version_module;
    len = strcspn(mods, " ");
    if (len > KF_MODNAME_MAX)
        len = KF_MODNAME_MAX;
    memcpy(n->vmod, mods, len);
    n->vmod[len] = '\0';
    return n->vmod;
}

/* ---- steps ------------------------------------------------------------------------- */

/* TRANSFER ------------------------------------------------------------- */

static void after_receive(struct deploy_node *n, const struct deploy_result *r)
{
    struct deploy_kernel *k = &n->k[n->cursor];

    if (!r->ok) {
        if (strcmp(r->word, "sha256") == 0)
            fail_note(n, KF_EIO, "the node received a damaged copy of the package for %s: %s",
                      k->kernel, r->msg);
        else if (strcmp(r->word, "space") == 0)
            fail_note(n, KF_EIO, "not enough space on the node for the package of %s: %s",
                      k->kernel, r->msg);
        else
            fail_note(n, result_code(r), "receive %s: %s: %s", k->kernel, r->word, r->msg);
        enter_unlock(n);
        return;
    }
    k->transfer = 0;
    n->cursor++;
    advance(n);
}

void deploy_node_transfer_go(struct deploy_node *n, const void *data, size_t len)
{
    struct deploy_kernel *k = &n->k[n->cursor];
    struct args a = {{0}, 0};
    char size[24];

    if (n->finished || n->cancelled) {
        if (n->ops->transfer_end)
            n->ops->transfer_end(n, k->pkg, 0);
        return;
    }
    n->xfer_pkg = k->pkg;
    n->xfer_data = data;
    n->xfer_len = len;
    snprintf(size, sizeof(size), "%zu", len);
    arg2(&a, "--driver", k->pkg->driver);
    arg2(&a, "--kernel", k->kernel);
    arg2(&a, "--sha256", k->pkg->sha256);
    arg2(&a, "--size", size);
    owner_args(n, &a);
    run_action(n, "receive", &a, data, len, n->o->transfer_timeout_ms, after_receive);
}

void deploy_node_transfer_fail(struct deploy_node *n, int code, const char *msg)
{
    if (n->finished || n->cancelled)
        return;
    fail_note(n, code, "%s", msg);
    enter_unlock(n);
}

static int step_transfer(struct deploy_node *n)
{
    for (; n->cursor < n->nk; n->cursor++) {
        struct deploy_kernel *k = &n->k[n->cursor];
        if (!k->transfer)
            continue;
        if (set_state(n, DS_TRANSFER, "%s %s %s (%llu bytes)", k->kernel, k->pkg->driver,
                      k->pkg->sha256, (unsigned long long)k->pkg->size) < 0)
            return 1;
        n->ops->transfer_wait(n, k->pkg);
        return 1;
    }
    return 0;
}

/* INSTALL -------------------------------------------------------------- */

static void after_install(struct deploy_node *n, const struct deploy_result *r)
{
    struct deploy_kernel *k = &n->k[n->cursor];

    if (!r->ok) {
        /* install.sh may have copied part of the modules: roll back. */
        k->changed = 1;
        fail_note(n, result_code(r), "install %s: %s: %s", k->kernel, r->word, r->msg);
        enter_rollback(n);
        return;
    }
    k->install = 0;
    k->changed = 1;
    n->cursor++;
    advance(n);
}

static int step_install(struct deploy_node *n)
{
    for (; n->cursor < n->nk; n->cursor++) {
        struct deploy_kernel *k = &n->k[n->cursor];
        struct args a = {{0}, 0};
        if (!k->install)
            continue;
        if (set_state(n, DS_INSTALL, "%s %s %s", k->kernel, k->pkg->driver, k->pkg->sha256) < 0)
            return 1;
        arg2(&a, "--profile", n->o->profile);
        arg2(&a, "--driver", k->pkg->driver);
        arg2(&a, "--kernel", k->kernel);
        arg2(&a, "--sha256", k->pkg->sha256);
        owner_args(n, &a);
        run_action(n, "install", &a, NULL, 0, 0, after_install);
        return 1;
    }
    return 0;
}

/* DRAIN / UNDRAIN hooks ------------------------------------------------- */

static int expand_hook(struct deploy_node *n, const char *cmd, struct buf *out)
{
    const char *p = cmd, *q;
    int rc = 0;

    while (rc == 0 && (q = strstr(p, "{host}")) != NULL) {
        rc = buf_append(out, p, (size_t)(q - p));
        if (rc == 0)
            rc = kf_shquote(out, n->h->name);
        p = q + 6;
    }
    if (rc == 0)
        rc = buf_puts(out, p);
    return rc;
}

static void hook_finished(struct deploy_node *n, int ok, const char *why)
{
    int which = n->hook_which;

    if (!ok) {
        fail_note(n, KF_ECMD, "%s hook failed: %s", which == 0 ? "drain" : "undrain", why);
        if (which == 0) {
            /* Nothing is loaded yet (the new files stay installed for the
             * next boot); a half-done drain is undone. */
            n->drained = 1;
            enter_undrain(n);
        } else {
            n->skip_undrain = 1;
            enter_unlock(n);
        }
        return;
    }
    n->drained = which == 0;
    n->cursor = 0;
    if (which == 0)
        n->hook_done_drain = 1;
    else
        n->hook_done_undrain = 1;
    advance(n);
}

static void on_hook_proc(struct kf_proc *p, int status, void *arg)
{
    struct deploy_node *n = arg;
    char why[300], line[200];
    int ok = status == 0 && kf_proc_exit_status(p) == 0;

    if (!ok) {
        if (status == KF_ETIMEDOUT)
            snprintf(why, sizeof(why), "timed out");
        else if (status < 0)
            snprintf(why, sizeof(why), "%s", kf_strerror(status));
        else
            snprintf(why, sizeof(why), "exit status %d: %s", kf_proc_exit_status(p),
                     first_line(kf_proc_stderr(p)->len ? kf_proc_stderr(p) : kf_proc_stdout(p),
                                line, sizeof(line)));
    }
    logf_(n, "hook %s on the control host: %s", n->hook_which == 0 ? "drain" : "undrain",
          ok ? "ok" : why);
    kf_proc_free(p);
    n->hook_proc = NULL;
    if (n->cancelled)
        return;
    hook_finished(n, ok, why);
}

static void on_hook_node(struct ssh_conn *c, int status, void *arg)
{
    struct deploy_node *n = arg;
    char why[300], line[200];
    int ok = status == 0 && n->x.exit_status == 0;

    if (status < 0) {
        fail_hard(n, status, "%s hook: %s", n->hook_which == 0 ? "drain" : "undrain",
                  ssh_conn_error(c));
        return;
    }
    if (!ok)
        snprintf(why, sizeof(why), "exit status %d on the node: %s", n->x.exit_status,
                 first_line(n->x.err.len ? &n->x.err : &n->x.out, line, sizeof(line)));
    logf_(n, "hook %s on the node: %s", n->hook_which == 0 ? "drain" : "undrain", ok ? "ok" : why);
    hook_finished(n, ok, why);
}

static int step_hook(struct deploy_node *n, int which)
{
    const struct deploy_hook *h = which == 0 ? &n->o->drain : &n->o->undrain;
    struct buf cmd;
    struct kf_err err;
    int rc;

    if (h->command == NULL || h->command[0] == '\0')
        return 0;
    if (set_state(n, which == 0 ? DS_DRAIN : DS_UNDRAIN, "%s",
                  h->on_node ? "on node" : "on control host") < 0)
        return 1;
    n->hook_which = which;
    buf_init(&cmd, 0);
    rc = expand_hook(n, h->command, &cmd);
    if (rc < 0) {
        buf_release(&cmd);
        fail_hard(n, rc, "cannot build the hook command");
        return 1;
    }
    if (h->on_node) {
        if (n->x_init)
            ssh_exec_release(&n->x);
        free(n->cmd);
        n->cmd = buf_detach(&cmd, NULL);
        ssh_exec_init(&n->x);
        n->x_init = 1;
        n->x.command = n->cmd;
        n->x.timeout_ms = h->timeout_ms ? h->timeout_ms : 600000;
        rc = ssh_conn_exec(n->conn, &n->x, on_hook_node, n);
        if (rc < 0)
            fail_hard(n, rc, "cannot start the hook on the node: %s", kf_strerror(rc));
    } else {
        char *argv[] = {"sh", "-c", (char *)buf_cstr(&cmd), NULL};
        struct kf_proc_opts po;
        memset(&po, 0, sizeof(po));
        po.argv = argv;
        po.timeout_ms = h->timeout_ms ? h->timeout_ms : 600000;
        kf_err_clear(&err);
        rc = kf_proc_start(n->loop, &po, on_hook_proc, n, &n->hook_proc, &err);
        buf_release(&cmd);
        if (rc < 0) {
            fail_note(n, rc, "cannot start the %s hook: %s", which == 0 ? "drain" : "undrain",
                      kf_err_msg(&err));
            enter_unlock(n);
        }
    }
    buf_release(&cmd);
    return 1;
}

/* LOAD ------------------------------------------------------------------- */

static void after_load(struct deploy_node *n, const struct deploy_result *r)
{
    n->reloaded = 1; /* even a failed load changed what is loaded */
    if (!r->ok) {
        if (strcmp(r->word, "busy") == 0)
            fail_note(n, KF_ECMD, "the GPU is busy: %s", r->msg);
        else if (strcmp(r->word, "modprobe") == 0) {
            /* "NAME what modprobe said": the kernel's own words */
            const char *sp = strchr(r->msg, ' ');
            fail_note(n, KF_ECMD, "loading %.*s failed: %s",
                      sp ? (int)(sp - r->msg) : (int)strlen(r->msg), r->msg, sp ? sp + 1 : "");
        } else
            fail_note(n, result_code(r), "load: %s: %s", r->word, r->msg);
        enter_rollback(n);
        return;
    }
    n->need_reload = 0;
    n->cursor = 0;
    advance(n);
}

static int step_load(struct deploy_node *n)
{
    struct deploy_kernel *rk = running_kernel(n);
    struct args a = {{0}, 0};
    char unload[DEPLOY_MAX_MODULES * (KF_MODNAME_MAX + 1)];

    if (!n->need_reload || rk == NULL || rk->pkg == NULL)
        return 0;
    if (set_state(n, DS_LOAD, "%s %s", rk->kernel, rk->pkg->driver) < 0)
        return 1;
    arg2(&a, "--driver", rk->pkg->driver);
    arg2(&a, "--kernel", rk->kernel);
    arg2(&a, "--modules", rk->pkg->load);
    arg2(&a, "--unload", unload_list(n, unload, sizeof(unload)));
    owner_args(n, &a);
    run_action(n, "load", &a, NULL, 0, 0, after_load);
    return 1;
}

/* VERIFY ----------------------------------------------------------------- */

static void after_verify(struct deploy_node *n, const struct deploy_result *r)
{
    struct deploy_kernel *k = &n->k[n->cursor];

    if (!r->ok) {
        fail_note(n, KF_ECMD, "verify %s: %s", k->kernel, r->msg[0] ? r->msg : r->word);
        enter_rollback(n);
        return;
    }
    k->verify = 0;
    n->cursor++;
    advance(n);
}

static void verify_args(struct deploy_node *n, struct deploy_kernel *k, const char *driver,
                        int loaded, struct args *a)
{
    arg2(a, "--driver", driver);
    arg2(a, "--kernel", k->kernel);
    arg2(a, "--modules", load_list(n));
    if (loaded) {
        arg1(a, "--loaded");
        arg2(a, "--version-module", version_module(n));
        arg2(a, "--smi", n->o->smi ? n->o->smi : "auto");
    } else {
        arg2(a, "--smi", "skip");
    }
    if (k->running && n->o->verify_command && n->o->verify_command[0])
        arg2(a, "--command", n->o->verify_command);
}

static int step_verify(struct deploy_node *n)
{
    for (; n->cursor < n->nk; n->cursor++) {
        struct deploy_kernel *k = &n->k[n->cursor];
        struct args a = {{0}, 0};
        int loaded = k->running && n->reloaded;
        if (!k->verify)
            continue;
        if (set_state(n, DS_VERIFY, "%s %s%s", k->kernel, k->pkg->driver,
                      loaded ? " loaded" : " installed") < 0)
            return 1;
        verify_args(n, k, k->pkg->driver, loaded, &a);
        run_action(n, "verify", &a, NULL, 0, 0, after_verify);
        return 1;
    }
    return 0;
}

/* ROLLBACK ---------------------------------------------------------------- */

static void after_rollback(struct deploy_node *n, const struct deploy_result *r)
{
    struct deploy_kernel *k = &n->k[n->cursor];

    if (!r->ok) {
        char why[600];
        if (strcmp(r->word, "modprobe") == 0) {
            const char *sp = strchr(r->msg, ' ');
            snprintf(why, sizeof(why), "loading %.*s failed: %s",
                     sp ? (int)(sp - r->msg) : (int)strlen(r->msg), r->msg, sp ? sp + 1 : "");
        } else {
            snprintf(why, sizeof(why), "%s: %s", r->word, r->msg);
        }
        if (n->o->mode == DEPLOY_MODE_ROLLBACK)
            fail_note(n, result_code(r), "rollback %s: %s", k->kernel, why);
        n->rollback_failed = 1;
        logf_(n, "rollback of %s failed: %s", k->kernel, why);
        snprintf(n->note, sizeof(n->note), "rollback of %s failed: %s", k->kernel, why);
        /* The node's other kernels are still put back: one bad kernel
         * does not leave the rest half done. */
        k->rollback = 0;
        n->cursor++;
        advance(n);
        return;
    }
    k->rollback = 0;
    k->rolled_back = 1;
    k->verify_rb = 1;
    n->cursor++;
    advance(n);
}

static int step_rollback(struct deploy_node *n)
{
    for (; n->cursor < n->nk; n->cursor++) {
        struct deploy_kernel *k = &n->k[n->cursor];
        struct args a = {{0}, 0};
        char unload[DEPLOY_MAX_MODULES * (KF_MODNAME_MAX + 1)];
        const char *ul;
        int reload, load_after;
        if (!k->rollback)
            continue;
        reload =
            k->running && (n->reloaded || (n->o->mode == DEPLOY_MODE_ROLLBACK && n->o->reload));
        /* Back to what was loaded before: a node that had the modules
         * loaded gets them loaded again; one that had none gets none. A
         * rollback asked by hand (no prior state) loads them. */
        load_after = reload && (n->prior.set ? n->prior.loaded : 1);
        ul = unload_list(n, unload, sizeof(unload));
        if (reload && ul[0] == '\0' && load_list(n)[0] == '\0')
            reload = load_after = 0; /* no module is known to unload or load */
        if (set_state(n, DS_ROLLBACK, "%s to %s%s", k->kernel, k->target[0] ? k->target : "none",
                      load_after ? ", reload"
                      : reload   ? ", unload"
                                 : "") < 0)
            return 1;
        arg2(&a, "--profile", n->o->profile);
        arg2(&a, "--kernel", k->kernel);
        arg2(&a, "--to", k->target[0] ? k->target : "none");
        if (reload) {
            arg1(&a, "--reload");
            if (load_after && load_list(n)[0] != '\0')
                arg2(&a, "--modules", load_list(n));
            if (ul[0] != '\0')
                arg2(&a, "--unload", ul);
            k->reload_rb = load_after;
        }
        owner_args(n, &a);
        run_action(n, "rollback", &a, NULL, 0, 0, after_rollback);
        return 1;
    }
    return 0;
}

/* A kernel whose rollback did not verify: noted, and the others are still
 * verified (each kernel's verification runs once: verify_rb is cleared). */
static void rollback_unverified(struct deploy_node *n, struct deploy_kernel *k, const char *why)
{
    n->rollback_failed = 1;
    snprintf(n->note, sizeof(n->note), "%s", why);
    logf_(n, "%s", why);
    if (n->o->mode == DEPLOY_MODE_ROLLBACK)
        fail_note(n, KF_ECMD, "%s", why);
    k->verify_rb = 0;
    n->cursor++;
    advance(n);
}

/* Verifying a kernel put back to "none": its current line is gone. */
static void after_rollback_check(struct deploy_node *n, const struct deploy_result *r)
{
    struct deploy_kernel *k = &n->k[n->cursor];
    struct deploy_check c;
    struct kf_err err;
    char why[sizeof(n->note)];

    kf_err_clear(&err);
    if (!r->ok ||
        deploy_check_parse(n->x.out.data ? n->x.out.data : "", n->x.out.len, &c, &err) < 0) {
        snprintf(why, sizeof(why), "after the rollback of %s the node check failed: %s", k->kernel,
                 r->ok ? kf_err_msg(&err) : r->msg);
        rollback_unverified(n, k, why);
        return;
    }
    if (deploy_check_current(&c, k->kernel) != NULL) {
        snprintf(why, sizeof(why),
                 "after the rollback of %s to none, kfleet's release is still current", k->kernel);
        rollback_unverified(n, k, why);
        return;
    }
    if (k->reload_rb && n->prior.loaded && n->prior.loaded_version[0]) {
        const struct deploy_loaded *l = deploy_check_loaded(&c, version_module(n));
        if (l == NULL || !l->loaded || strcmp(l->version, n->prior.loaded_version) != 0) {
            snprintf(why, sizeof(why), "after the rollback of %s, %s is %s%s, not %s as before",
                     k->kernel, version_module(n), l && l->loaded ? "at " : "not loaded",
                     l && l->loaded ? l->version : "", n->prior.loaded_version);
            rollback_unverified(n, k, why);
            return;
        }
    }
    k->verify_rb = 0;
    n->cursor++;
    advance(n);
}

static void after_rollback_verify(struct deploy_node *n, const struct deploy_result *r)
{
    struct deploy_kernel *k = &n->k[n->cursor];
    char why[sizeof(n->note)];

    if (!r->ok) {
        snprintf(why, sizeof(why), "after the rollback of %s to %s: %s", k->kernel, k->target,
                 r->msg[0] ? r->msg : r->word);
        rollback_unverified(n, k, why);
        return;
    }
    k->verify_rb = 0;
    n->cursor++;
    advance(n);
}

static int step_rollback_verify(struct deploy_node *n)
{
    for (; n->cursor < n->nk; n->cursor++) {
        struct deploy_kernel *k = &n->k[n->cursor];
        struct args a = {{0}, 0};
        if (!k->verify_rb)
            continue;
        if (set_state(n, DS_ROLLBACK_VERIFY, "%s %s", k->kernel,
                      k->target[0] ? k->target : "none") < 0)
            return 1;
        if (k->target[0] == '\0') {
            arg2(&a, "--modules", n->o->modules && n->o->modules[0] ? n->o->modules : load_list(n));
            run_action(n, "check", &a, NULL, 0, 0, after_rollback_check);
        } else {
            verify_args(n, k, k->target, k->reload_rb, &a);
            run_action(n, "verify", &a, NULL, 0, 0, after_rollback_verify);
        }
        return 1;
    }
    return 0;
}

/* UNLOCK ------------------------------------------------------------------ */

static void after_unlock(struct deploy_node *n, const struct deploy_result *r)
{
    if (!r->ok) {
        if (n->o->mode == DEPLOY_MODE_UNLOCK)
            fail_note(n, result_code(r), "unlock: %s: %s", r->word, r->msg);
        else
            logf_(n, "unlock failed: %s: %s", r->word, r->msg);
    }
    n->hold_lock = 0;
    n->unlocked = 1;
    advance(n);
}

static int step_unlock(struct deploy_node *n)
{
    struct args a = {{0}, 0};

    if (!n->hold_lock || n->unlocked)
        return 0;
    if (set_state(n, DS_UNLOCK, NULL) < 0)
        return 1;
    owner_args(n, &a);
    run_action(n, "unlock", &a, NULL, 0, 0, after_unlock);
    return 1;
}

/* ---- the plan (after CHECK) ---------------------------------------------------- */

static void outcome_versions(struct deploy_node *n)
{
    struct deploy_kernel *rk = running_kernel(n);
    const struct deploy_prior_kernel *pk;

    snprintf(n->versions, sizeof(n->versions), "?");
    if (rk == NULL)
        return;
    if (n->rollback_failed) {
        snprintf(n->versions, sizeof(n->versions), "unknown (rollback failed)");
        return;
    }
    if (n->outcome == DO_UPDATED || n->outcome == DO_UNCHANGED) {
        if (n->o->mode == DEPLOY_MODE_INSTALL)
            snprintf(n->versions, sizeof(n->versions), "%s", rk->pkg ? rk->pkg->driver : "none");
        else if (rk->rolled_back)
            snprintf(n->versions, sizeof(n->versions), "%s", rk->target[0] ? rk->target : "none");
        else {
            const struct deploy_rel *c = deploy_check_current(&n->check, rk->kernel);
            snprintf(n->versions, sizeof(n->versions), "%s", c ? c->driver : "none");
        }
    } else if (rk->rolled_back || n->outcome == DO_SKIPPED ||
               (n->outcome == DO_FAILED && !rk->changed)) {
        pk = deploy_prior_kernel(&n->prior, rk->kernel);
        if (rk->rolled_back)
            snprintf(n->versions, sizeof(n->versions), "%s", rk->target[0] ? rk->target : "none");
        else if (pk != NULL)
            snprintf(n->versions, sizeof(n->versions), "%s", pk->driver[0] ? pk->driver : "none");
        else if (n->have_check) {
            const struct deploy_rel *c = deploy_check_current(&n->check, rk->kernel);
            snprintf(n->versions, sizeof(n->versions), "%s", c ? c->driver : "none");
        }
    } else if (n->outcome == DO_FAILED && rk->changed && rk->pkg) {
        snprintf(n->versions, sizeof(n->versions), "%s (failed verification)", rk->pkg->driver);
    }
}

/* The end of the steps: the outcome, from what happened. */
static void conclude(struct deploy_node *n)
{
    size_t i;
    int moved = n->reloaded;

    for (i = 0; i < n->nk; i++) {
        const struct deploy_prior_kernel *pk = deploy_prior_kernel(&n->prior, n->k[i].kernel);
        if (n->k[i].rolled_back)
            moved = 1;
        if (n->o->mode == DEPLOY_MODE_INSTALL && n->k[i].pkg != NULL &&
            (pk == NULL || strcmp(pk->driver, n->k[i].pkg->driver) != 0 ||
             strcmp(pk->sha256, n->k[i].pkg->sha256) != 0))
            moved = 1;
    }
    if (n->outcome == DO_NONE) {
        if (n->skipped)
            n->outcome = DO_SKIPPED;
        else if (n->code != 0 && n->o->mode == DEPLOY_MODE_INSTALL)
            n->outcome = n->rolling_back
                             ? (n->rollback_failed ? DO_ROLLBACK_FAILED : DO_ROLLED_BACK)
                             : DO_FAILED;
        else if (n->code != 0)
            n->outcome = DO_FAILED;
        else if (n->o->mode == DEPLOY_MODE_ROLLBACK)
            n->outcome = moved ? DO_ROLLED_BACK : DO_UNCHANGED;
        else if (n->o->mode == DEPLOY_MODE_UNLOCK)
            n->outcome = DO_UNCHANGED;
        else
            n->outcome = moved ? DO_UPDATED : DO_UNCHANGED;
    }
    outcome_versions(n);
    if (set_state(n, DS_DONE, "%s", deploy_outcome_name(n->outcome)) < 0)
        return;
    finish(n);
}

static int pkg_unsigned_under_sb(struct deploy_node *n, char *which, size_t whichsz)
{
    size_t i;
    int sb = n->check.secure_boot == INV_YES || n->check.sig_enforce == 1;

    if (!sb)
        return 0;
    /* A package the node holds already is refused too when it is to be
     * loaded: the running kernel would refuse its modules just the same. */
    for (i = 0; i < n->nk; i++)
        if ((n->k[i].install || (n->k[i].running && n->need_reload)) && n->k[i].pkg &&
            !n->k[i].pkg->is_signed) {
            snprintf(which, whichsz, "%s", n->k[i].kernel);
            return 1;
        }
    return 0;
}

static void skip(struct deploy_node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void skip(struct deploy_node *n, const char *fmt, ...)
{
    va_list ap;

    n->skipped = 1;
    n->code = KF_ENOENT;
    snprintf(n->phase, sizeof(n->phase), "preflight");
    va_start(ap, fmt);
    vsnprintf(n->msg, sizeof(n->msg), fmt, ap);
    va_end(ap);
    logf_(n, "SKIPPED: %s", n->msg);
    n->outcome = DO_SKIPPED;
}

static void prior_from_check(struct deploy_node *n)
{
    const struct deploy_check *c = &n->check;
    const struct deploy_loaded *l;
    size_t i;

    memset(&n->prior, 0, sizeof(n->prior));
    n->prior.set = 1;
    for (i = 0; i < c->nkernels && n->prior.n < DEPLOY_MAX_KERNELS; i++) {
        struct deploy_prior_kernel *pk = &n->prior.k[n->prior.n++];
        const struct deploy_rel *cur = deploy_check_current(c, c->kernels[i]);
        snprintf(pk->kernel, sizeof(pk->kernel), "%s", c->kernels[i]);
        if (cur != NULL) {
            snprintf(pk->driver, sizeof(pk->driver), "%s", cur->driver);
            snprintf(pk->sha256, sizeof(pk->sha256), "%s", cur->sha256);
        }
    }
    l = deploy_check_loaded(c, version_module(n));
    if (l != NULL && l->loaded) {
        n->prior.loaded = 1;
        snprintf(n->prior.loaded_version, sizeof(n->prior.loaded_version), "%s", l->version);
    }
}

/* Install mode: what to do for each kernel; 0 to go on, 1 when the node
 * ends here (skipped, failed or nothing to do: finish() called). */
static int plan_install(struct deploy_node *n)
{
    const struct deploy_check *c = &n->check;
    uint64_t need_var = 0, need_mod = 0;
    size_t i;
    int work = 0;
    char which[KF_KREL_MAX + 1];

    for (i = 0; i < n->nk; i++) {
        struct deploy_kernel *k = &n->k[i];
        const struct deploy_rel *cur;
        const struct deploy_prior_kernel *pk;
        char reason[400] = "";
        int r = n->ops->pick(n, k->kernel, c->arch, c->os_id, c->os_version, &k->pkg, reason,
                             sizeof(reason));
        if (r < 0) {
            k->pkg = NULL;
            snprintf(k->na_reason, sizeof(k->na_reason), "%s", reason);
            logf_(n, "kernel %s: not applicable: %s", k->kernel, reason);
            continue;
        }
        if (r == 0 && strncmp(reason, "the stored package", 18) == 0) {
            skip(n, "kernel %s: %s", k->kernel, reason);
            return 1;
        }
        if (r == 0) {
            skip(n, "no artifact for kernel %s (%s, %s %s): %s", k->kernel, c->arch,
                 c->os_id[0] ? c->os_id : "unknown os", c->os_version, reason);
            return 1;
        }
        cur = deploy_check_current(c, k->kernel);
        pk = deploy_prior_kernel(&n->prior, k->kernel);
        if (cur == NULL || strcmp(cur->driver, k->pkg->driver) != 0 ||
            strcmp(cur->sha256, k->pkg->sha256) != 0 ||
            deploy_check_files(c, k->kernel) != DEPLOY_FILES_OK) {
            k->install = 1;
            k->transfer = !deploy_check_holds(c, k->pkg->driver, k->kernel, k->pkg->sha256);
            work = 1;
            if (k->transfer)
                need_var += 3 * k->pkg->size + 1024 * 1024;
            need_mod += k->pkg->module_bytes + 1024 * 1024;
        }
        /* Verify every kernel this rollout moves, including one a crashed
         * run already moved (its prior differs from the target). */
        if (k->install || pk == NULL || strcmp(pk->driver, k->pkg->driver) != 0 ||
            strcmp(pk->sha256, k->pkg->sha256) != 0)
            k->verify = 1;
        if (k->verify && !k->install)
            k->changed = 1;
    }
    if (n->o->reload) {
        struct deploy_kernel *rk = running_kernel(n);
        if (rk != NULL && rk->pkg != NULL) {
            const struct deploy_loaded *l = deploy_check_loaded(c, version_module(n));
            if (rk->install || rk->verify || l == NULL || !l->loaded ||
                strcmp(l->version, rk->pkg->driver) != 0)
                n->need_reload = 1;
            if (n->need_reload && n->o->userspace_check && c->userspace[0] &&
                strcmp(c->userspace, rk->pkg->driver) != 0 && !n->o->allow_userspace_mismatch) {
                n->need_reload = 0;
                snprintf(n->note, sizeof(n->note),
                         "installed, not reloaded: the userspace driver is %s, so loading %s "
                         "would give 'Driver/library version mismatch' (update the userspace "
                         "driver, or --allow-userspace-mismatch)",
                         c->userspace, rk->pkg->driver);
            }
            if (n->need_reload) {
                rk->verify = 1;
                work = 1;
            }
        }
    }
    for (i = 0; i < n->nk; i++)
        if (n->k[i].verify)
            work = 1;
    if (!work) {
        /* At the target already. A resumed run may still hold the lock. */
        if (c->locked && strcmp(c->lock_owner, n->o->owner) == 0)
            n->hold_lock = 1;
        return 0;
    }
    if (c->missing_tools[0]) {
        fail_note(n, KF_EUNSUPPORTED,
                  "the node lacks %s (kfleet needs sh, tar, gzip, "
                  "sha256sum, cmp, df and kmod)",
                  c->missing_tools);
        n->outcome = DO_FAILED;
        return 1;
    }
    if (c->locked && strcmp(c->lock_owner, n->o->owner) != 0 && !n->o->break_lock) {
        char when[32];
        time_t t = (time_t)c->lock_since;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%SZ", &tm);
        fail_note(n, KF_ELOCKED,
                  "locked by %s since %s: another deploy holds this node (resume or abort it; "
                  "--break-lock only when it is dead)",
                  c->lock_owner, when);
        n->outcome = DO_FAILED;
        return 1;
    }
    if (pkg_unsigned_under_sb(n, which, sizeof(which))) {
        skip(n,
             "Secure Boot is on (%s) and the package for %s is not signed: the kernel would "
             "refuse it; configure signing: in kfleet.yml, rebuild (kfleet build --force) and "
             "enrol the key (kfleet keys new prints the mokutil line)",
             c->sig_enforce == 1 ? "module.sig_enforce=1" : "mokutil", which);
        return 1;
    }
    if (c->free_var_kib >= 0 && need_var > (uint64_t)c->free_var_kib * 1024) {
        fail_note(n, KF_EIO,
                  "not enough space in /var/lib/kfleet: the packages need %llu KiB, %lld KiB "
                  "free",
                  (unsigned long long)(need_var / 1024), c->free_var_kib);
        n->outcome = DO_FAILED;
        return 1;
    }
    if (c->free_mod_kib >= 0 && need_mod > (uint64_t)c->free_mod_kib * 1024) {
        fail_note(n, KF_EIO,
                  "not enough space in /lib/modules: the modules need %llu KiB, %lld KiB free",
                  (unsigned long long)(need_mod / 1024), c->free_mod_kib);
        n->outcome = DO_FAILED;
        return 1;
    }
    /* Our own lock left by a crashed run of this rollout is ours to release. */
    if (c->locked && strcmp(c->lock_owner, n->o->owner) == 0)
        n->hold_lock = 1;
    return 0;
}

/* Rollback mode, or auto-rollback after a failure: the targets. */
static void plan_rollback(struct deploy_node *n, int automatic)
{
    const struct deploy_check *c = &n->check;
    size_t i;

    for (i = 0; i < n->nk; i++) {
        struct deploy_kernel *k = &n->k[i];
        const struct deploy_rel *cur = deploy_check_current(c, k->kernel);
        const struct deploy_prior_kernel *pk = deploy_prior_kernel(&n->prior, k->kernel);
        const struct deploy_rel *prev = deploy_check_previous(c, k->kernel);
        const char *now = cur ? cur->driver : "";

        k->rollback = 0;
        if (automatic) {
            if (!k->changed || k->pkg == NULL)
                continue;
            snprintf(k->target, sizeof(k->target), "%s", pk ? pk->driver : "");
            now = k->pkg->driver; /* what this run installed (or began to) */
            if (strcmp(k->target, now) == 0 && pk && strcmp(pk->sha256, k->pkg->sha256) == 0)
                continue;
        } else {
            if (n->o->rollback_to != NULL)
                snprintf(k->target, sizeof(k->target), "%s",
                         strcmp(n->o->rollback_to, "none") == 0 ? "" : n->o->rollback_to);
            else if (n->prior.set && pk != NULL)
                snprintf(k->target, sizeof(k->target), "%s", pk->driver);
            else
                snprintf(k->target, sizeof(k->target), "%s", prev ? prev->driver : "");
            if (cur == NULL && k->target[0] == '\0')
                continue; /* nothing of kfleet's there, nothing asked */
            if (strcmp(now, k->target) == 0)
                continue;
            if (k->target[0] && !deploy_check_holds(c, k->target, k->kernel, NULL)) {
                fail_note(n, KF_ENOENT,
                          "cannot roll %s back to %s: that release is not on the node (deploy "
                          "it instead: kfleet deploy --driver %s)",
                          k->kernel, k->target, k->target);
                return;
            }
        }
        k->rollback = 1;
    }
}

static void on_check(struct deploy_node *n, const struct deploy_result *r)
{
    struct kf_err err;
    size_t i;

    if (!r->ok) {
        fail_hard(n, result_code(r), "check: %s: %s", r->word, r->msg);
        return;
    }
    kf_err_clear(&err);
    if (deploy_check_parse(n->x.out.data ? n->x.out.data : "", n->x.out.len, &n->check, &err) < 0) {
        fail_hard(n, err.code, "%s", kf_err_msg(&err));
        return;
    }
    n->have_check = 1;
    n->nk = 0;
    for (i = 0; i < n->check.nkernels; i++) {
        struct deploy_kernel *k = &n->k[n->nk++];
        memset(k, 0, sizeof(*k));
        snprintf(k->kernel, sizeof(k->kernel), "%s", n->check.kernels[i]);
        k->running = strcmp(k->kernel, n->check.running) == 0;
    }
    if (n->o->mode == DEPLOY_MODE_INSTALL && !n->prior.set) {
        prior_from_check(n);
        if (n->ops->save_prior != NULL && n->ops->save_prior(n, &n->prior) < 0) {
            fail_hard(n, KF_EDB, "the node's prior state could not be journaled");
            return;
        }
    }
    n->cursor = 0;
    if (n->o->mode == DEPLOY_MODE_INSTALL) {
        if (plan_install(n)) {
            conclude(n);
            return;
        }
    } else if (n->o->mode == DEPLOY_MODE_ROLLBACK) {
        int any = 0;
        plan_rollback(n, 0);
        if (n->code != 0) {
            conclude(n);
            return;
        }
        for (i = 0; i < n->nk; i++)
            any |= n->k[i].rollback;
        if (any) {
            if (n->check.locked && strcmp(n->check.lock_owner, n->o->owner) != 0 &&
                !n->o->break_lock) {
                fail_note(n, KF_ELOCKED, "locked by %s: another deploy holds this node",
                          n->check.lock_owner);
                conclude(n);
                return;
            }
            n->rolling_back = 1;
            n->need_reload = n->o->reload;
        } else if (n->check.locked && strcmp(n->check.lock_owner, n->o->owner) == 0) {
            n->hold_lock = 1;
        }
    }
    advance(n);
}

static void on_ready(struct ssh_conn *c, int status, void *arg)
{
    struct deploy_node *n = arg;
    struct args a = {{0}, 0};

    if (status < 0) {
        fail_note(n, status, "%s", ssh_conn_error(c));
        snprintf(n->phase, sizeof(n->phase), "%s", ssh_conn_phase(c));
        ssh_conn_close(n->conn);
        n->conn = NULL;
        n->outcome = DO_FAILED;
        finish(n);
        return;
    }
    if (n->o->mode == DEPLOY_MODE_UNLOCK) {
        n->hold_lock = 1;
        advance(n);
        return;
    }
    if (set_state(n, DS_CHECK, NULL) < 0)
        return;
    if (n->o->driver != NULL)
        arg2(&a, "--driver", n->o->driver);
    if (n->o->modules != NULL && n->o->modules[0])
        arg2(&a, "--modules", n->o->modules);
    run_action(n, "check", &a, NULL, 0, 0, on_check);
}

/* ---- sequencing --------------------------------------------------------------------- */

/* From a failure: roll back what this run changed (auto-rollback), else
 * release the lock. */
static void enter_rollback(struct deploy_node *n)
{
    size_t i;
    int any = 0;

    if (n->o->mode != DEPLOY_MODE_INSTALL || !n->o->auto_rollback || n->rolling_back) {
        enter_undrain(n);
        return;
    }
    plan_rollback(n, 1);
    for (i = 0; i < n->nk; i++)
        any |= n->k[i].rollback;
    if (!any && !n->reloaded) {
        enter_undrain(n);
        return;
    }
    n->rolling_back = 1;
    n->cursor = 0;
    advance(n);
}

/* After a failure or a rollback: undrain when drained, then unlock. */
static void enter_undrain(struct deploy_node *n)
{
    n->after_failure = 1;
    n->cursor = 0;
    advance(n);
}

static void enter_unlock(struct deploy_node *n)
{
    n->after_failure = 1;
    n->skip_undrain = 1;
    n->cursor = 0;
    advance(n);
}

/* Runs the next step that has work; each step_* returns 1 when it started
 * something (its callback calls advance again) and 0 when it had nothing to
 * do. */
static void advance(struct deploy_node *n)
{
    if (n->finished || n->cancelled)
        return;
    if (n->o->mode == DEPLOY_MODE_INSTALL && !n->after_failure && !n->rolling_back) {
        if (n->phase_i == 0) {
            if (step_transfer(n))
                return;
            n->phase_i = 1;
            n->cursor = 0;
        }
        if (n->phase_i == 1) {
            if (step_install(n))
                return;
            n->phase_i = 2;
            n->cursor = 0;
        }
        if (n->phase_i == 2) {
            n->phase_i = 3;
            if (n->need_reload && !n->hook_done_drain && step_hook(n, 0))
                return;
        }
        if (n->phase_i == 3) {
            if (step_load(n))
                return;
            n->phase_i = 4;
            n->cursor = 0;
        }
        if (n->phase_i == 4) {
            if (step_verify(n))
                return;
            n->phase_i = 5;
        }
    }
    if (n->rolling_back && !n->rb_done) {
        if (n->rb_phase == 0) {
            n->rb_phase = 1;
            n->cursor = 0;
            if (n->o->mode == DEPLOY_MODE_ROLLBACK && n->need_reload && !n->hook_done_drain &&
                step_hook(n, 0))
                return;
        }
        if (n->rb_phase == 1) {
            if (step_rollback(n))
                return;
            n->rb_phase = 2;
            n->cursor = 0;
        }
        if (n->rb_phase == 2) {
            if (step_rollback_verify(n))
                return;
            n->rb_phase = 3;
        }
        n->rb_done = 1;
    }
    if (!n->undrain_tried && !n->skip_undrain) {
        n->undrain_tried = 1;
        if (n->drained && step_hook(n, 1))
            return;
    }
    if (step_unlock(n))
        return;
    conclude(n);
}

/* ---- public ----------------------------------------------------------------------------- */

void deploy_node_init(struct deploy_node *n)
{
    memset(n, 0, sizeof(*n));
}

int deploy_node_start(struct deploy_node *n)
{
    struct ssh_target t;
    int rc;

    if (n->h == NULL || n->o == NULL || n->ops == NULL || n->engine == NULL || n->loop == NULL ||
        n->ops->done == NULL || n->ops->pick == NULL || n->ops->transfer_wait == NULL ||
        (n->o->owner != NULL && !deploy_owner_valid(n->o->owner)))
        return KF_EINVAL;
    rc = uv_timer_init(n->loop, &n->defer);
    if (rc < 0)
        return KF_ENOMEM;
    n->defer.data = n;
    n->defer_init = 1;
    n->t0_ns = uv_hrtime();
    n->outcome = DO_NONE;
    logf_(n, "start: %s %s (owner %s)",
          n->o->mode == DEPLOY_MODE_INSTALL    ? "deploy"
          : n->o->mode == DEPLOY_MODE_ROLLBACK ? "rollback"
                                               : "unlock",
          n->o->driver ? n->o->driver : "", n->o->owner);
    rc = inv_host_ssh_target(n->h, &t, n->msg, sizeof(n->msg));
    if (rc < 0) {
        snprintf(n->phase, sizeof(n->phase), "inventory");
        n->code = rc;
        n->outcome = DO_FAILED;
        finish(n);
        return 0;
    }
    if (set_state(n, DS_CONNECT, NULL) < 0)
        return 0;
    rc = ssh_conn_start(n->engine, &t, on_ready, n, &n->conn);
    if (rc < 0) {
        n->code = rc;
        snprintf(n->phase, sizeof(n->phase), "connect");
        snprintf(n->msg, sizeof(n->msg), "cannot start the connection: %s", kf_strerror(rc));
        n->conn = NULL;
        n->outcome = DO_FAILED;
        finish(n);
    }
    return 0;
}

void deploy_node_cancel(struct deploy_node *n)
{
    if (n->finished || n->cancelled)
        return;
    n->cancelled = 1;
    if (n->hook_proc != NULL)
        kf_proc_kill(n->hook_proc);
    if (n->xfer_pkg != NULL) {
        const struct deploy_pkg *p = n->xfer_pkg;
        n->xfer_pkg = NULL;
        if (n->ops->transfer_end)
            n->ops->transfer_end(n, p, n->x_init ? n->x.stdin_sent : 0);
    }
    logf_(n, "cancelled in %s", deploy_state_name(n->state));
    n->outcome = DO_NONE;
    finish(n);
}

void deploy_node_release(struct deploy_node *n)
{
    if (n->x_init) {
        ssh_exec_release(&n->x);
        n->x_init = 0;
    }
    free(n->cmd);
    n->cmd = NULL;
    if (n->conn != NULL) {
        ssh_conn_close(n->conn);
        n->conn = NULL;
    }
    if (n->defer_init) {
        n->defer_init = 0;
        uv_close((uv_handle_t *)&n->defer, NULL);
    }
}
