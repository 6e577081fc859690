/* Builder workers: the local host or inventory hosts reached over SSH, each
 * with a number of build slots ("lanes"). Every action runs the same
 * builder-side program (builder/worker.sh, embedded in kfleet) the same
 * way:
 *
 *   [sudo -n -u USER] env KFLEET_...=... bash -c '<worker.sh>' kfleet-worker ACTION ARGS...
 *
 * locally through common/proc (argv, no shell on our side), remotely as
 * the command of an SSH exec channel (each word single-quoted). A lane is
 * one process at a time locally, one SSH connection remotely (opened on
 * first use, kept for the lane's next actions).
 *
 * Setup of a worker, on its first lane, before any build:
 *   CHECK   `check`: root, runtime present; the builder's architecture
 *   IMAGE   `image`: the base image (debootstrap, once per builder)
 *   SOURCE  `has-source SHA`, and `put-source SHA` with the bytes on stdin
 *           when the builder lacks them (content-addressed: once per
 *           builder and source)
 *   READY   every lane takes builds
 * A failed step makes the worker DEAD with the reason; its builds go to
 * the other workers. */
#include "coordinator.h"
#include "builder.h"
#include "proc.h"

#include <stdlib.h>
#include <string.h>

const char *coord_worker_state_name(enum coord_worker_state s)
{
    static const char *const names[] = {"new", "check", "image", "source", "ready", "dead"};
    return names[s];
}

static void lane_reset_result(struct coord_lane *l)
{
    l->status = 0;
    l->exit_status = -1;
    l->out = NULL;
    l->err = NULL;
    l->message[0] = '\0';
}

/* The argv of one worker action (NULL-terminated, strings owned). */
static int worker_argv(struct coord_worker *w, const char *const *args, size_t nargs, char ***out,
                       size_t *outn)
{
    const struct coord_worker_env *env = w->env;
    char **v = calloc(nargs + env->n + 8, sizeof(*v));
    size_t n = 0, i;

    if (v == NULL)
        return KF_ENOMEM;
    v[n++] = strdup("env");
    for (i = 0; i < env->n; i++)
        v[n++] = strdup(env->vars[i]);
    if (w->cfg->cache) {
        struct buf b;
        buf_init(&b, 0);
        buf_printf(&b, "KFLEET_BUILDER_CACHE=%s", w->cfg->cache);
        v[n++] = buf_detach(&b, NULL);
    }
    if (w->cfg->jobs > 0) {
        struct buf b;
        buf_init(&b, 0);
        buf_printf(&b, "KFLEET_BUILD_JOBS=%u", w->cfg->jobs);
        v[n++] = buf_detach(&b, NULL);
    }
    v[n++] = strdup("bash");
    v[n++] = strdup("-c");
    v[n++] = strdup(kf_worker_script);
    v[n++] = strdup("kfleet-worker");
    for (i = 0; i < nargs; i++)
        v[n++] = strdup(args[i]);
    for (i = 0; i < n; i++)
        if (v[i] == NULL) {
            kf_strv_free(v, n);
            return KF_ENOMEM;
        }
    *out = v;
    *outn = n;
    return 0;
}

static void exec_finish(struct coord_lane *l, int status)
{
    coord_lane_cb cb = l->cb;

    l->busy = 0;
    l->status = status;
    l->cb = NULL;
    cb(l);
}

static void on_proc_done(struct kf_proc *p, int status, void *arg)
{
    struct coord_lane *l = arg;

    l->proc = NULL; /* the callback may start the lane's next process */
    l->exit_status = kf_proc_exit_status(p);
    l->out = kf_proc_stdout(p);
    l->err = kf_proc_stderr(p);
    if (status == KF_ETIMEDOUT)
        snprintf(l->message, sizeof(l->message), "timed out");
    else if (status == KF_ETRUNC)
        snprintf(l->message, sizeof(l->message), "output over the limit");
    else if (status == KF_ECANCELED)
        snprintf(l->message, sizeof(l->message), "stopped");
    else if (kf_proc_term_signal(p))
        snprintf(l->message, sizeof(l->message), "killed by signal %d", kf_proc_term_signal(p));
    exec_finish(l, status);
    kf_proc_free(p);
}

static void on_ssh_exec_done(struct ssh_conn *c, int status, void *arg)
{
    struct coord_lane *l = arg;
    /* Moved out of l->x: the callback may start the lane's next command. */
    struct buf out = l->x.out, err = l->x.err;

    buf_init(&l->x.out, 0);
    buf_init(&l->x.err, 0);
    l->exit_status = l->x.exit_status;
    if (status != 0 && status != KF_ETRUNC) {
        snprintf(l->message, sizeof(l->message), "%s", ssh_conn_error(c));
        l->conn_broken = 1;
    } else if (status == KF_ETRUNC) {
        snprintf(l->message, sizeof(l->message), "output over the limit");
    } else if (l->x.exit_signal[0]) {
        snprintf(l->message, sizeof(l->message), "killed by signal %s", l->x.exit_signal);
    }
    ssh_exec_release(&l->x);
    free(l->command);
    l->command = NULL;
    l->out = &out;
    l->err = &err;
    exec_finish(l, status);
    buf_release(&out);
    buf_release(&err);
}

static void ssh_start_exec(struct coord_lane *l)
{
    int rc;

    ssh_exec_init(&l->x);
    l->x.command = l->command;
    l->x.stdin_data = l->in;
    l->x.stdin_len = l->inlen;
    l->x.out_limit = l->out_limit;
    l->x.err_limit = 256 * 1024;
    l->x.timeout_ms = l->timeout_ms;
    rc = ssh_conn_exec(l->conn, &l->x, on_ssh_exec_done, l);
    if (rc < 0) {
        snprintf(l->message, sizeof(l->message), "%s", ssh_conn_error(l->conn));
        l->conn_broken = 1;
        ssh_exec_release(&l->x);
        free(l->command);
        l->command = NULL;
        exec_finish(l, rc);
    }
}

static void on_ssh_ready(struct ssh_conn *c, int status, void *arg)
{
    struct coord_lane *l = arg;

    if (status != 0) {
        snprintf(l->message, sizeof(l->message), "%s", ssh_conn_error(c));
        l->conn_broken = 1;
        free(l->command);
        l->command = NULL;
        exec_finish(l, status);
        return;
    }
    l->connected = 1;
    ssh_start_exec(l);
}

void coord_lane_close(struct coord_lane *l)
{
    if (l->proc) {
        kf_proc_free(l->proc);
        l->proc = NULL;
    }
    if (l->conn) {
        ssh_conn_close(l->conn);
        l->conn = NULL;
    }
    if (l->command) {
        free(l->command);
        l->command = NULL;
    }
    l->connected = 0;
    l->conn_broken = 0;
    l->busy = 0;
    l->cb = NULL;
}

int coord_lane_exec(struct coord_lane *l, const char *const *args, size_t nargs, const void *in,
                    size_t inlen, size_t out_limit, unsigned timeout_ms, coord_lane_cb cb)
{
    struct coord_worker *w = l->worker;
    char **argv = NULL;
    size_t argc = 0, i;
    int rc;

    if (l->conn != NULL && l->conn_broken)
        coord_lane_close(l); /* a new connection for this command */
    lane_reset_result(l);
    rc = worker_argv(w, args, nargs, &argv, &argc);
    if (rc < 0) {
        snprintf(l->message, sizeof(l->message), "out of memory");
        return rc;
    }
    l->cb = cb;
    l->busy = 1;
    if (w->host == NULL) {
        struct kf_proc_opts po = {.argv = argv,
                                  .stdin_data = in,
                                  .stdin_len = inlen,
                                  .out_limit = out_limit,
                                  .err_limit = 256 * 1024,
                                  .timeout_ms = timeout_ms};
        struct kf_err err;
        rc = kf_proc_start(w->loop, &po, on_proc_done, l, &l->proc, &err);
        kf_strv_free(argv, argc);
        if (rc < 0) {
            snprintf(l->message, sizeof(l->message), "%s", kf_err_msg(&err));
            l->busy = 0;
            l->cb = NULL;
        }
        return rc;
    }

    /* Remote: one command line, every word quoted. */
    {
        struct buf b;
        buf_init(&b, 0);
        if (w->host->become) {
            buf_puts(&b, "sudo -n -u ");
            kf_shquote(&b, w->host->become_user ? w->host->become_user : "root");
            buf_puts(&b, " -- ");
        }
        for (i = 0; i < argc; i++) {
            if (i)
                buf_puts(&b, " ");
            kf_shquote(&b, argv[i]);
        }
        kf_strv_free(argv, argc);
        l->command = buf_detach(&b, NULL);
        if (l->command == NULL) {
            l->busy = 0;
            l->cb = NULL;
            snprintf(l->message, sizeof(l->message), "out of memory");
            return KF_ENOMEM;
        }
    }
    l->in = in;
    l->inlen = inlen;
    l->out_limit = out_limit;
    l->timeout_ms = timeout_ms;
    if (l->conn != NULL && l->connected) {
        ssh_start_exec(l);
        return 0;
    }
    {
        struct ssh_target t;
        rc = inv_host_ssh_target(w->host, &t, l->message, sizeof(l->message));
        if (rc == 0) {
            rc = ssh_conn_start(w->engine, &t, on_ssh_ready, l, &l->conn);
            if (rc < 0)
                snprintf(l->message, sizeof(l->message), "cannot connect to %s: %s", w->host->name,
                         kf_strerror(rc));
        }
        if (rc < 0) {
            free(l->command);
            l->command = NULL;
            l->busy = 0;
            l->cb = NULL;
        }
    }
    return rc;
}

void coord_lane_kill(struct coord_lane *l)
{
    if (l->proc)
        kf_proc_kill(l->proc);
    else if (l->conn) {
        /* Closing the channel ends our side; the caller also runs `stop`
         * so the container on the builder goes too. */
        coord_lane_close(l);
    }
}

int coord_worker_env_add(struct coord_worker_env *e, const char *name, const char *value)
{
    struct buf b;
    char **v;

    if (e->n == sizeof(e->vars) / sizeof(e->vars[0]))
        return KF_EINVAL;
    buf_init(&b, 0);
    if (buf_printf(&b, "%s=%s", name, value) < 0) {
        buf_release(&b);
        return KF_ENOMEM;
    }
    v = e->vars;
    v[e->n] = buf_detach(&b, NULL);
    if (v[e->n] == NULL)
        return KF_ENOMEM;
    e->n++;
    return 0;
}

void coord_worker_env_release(struct coord_worker_env *e)
{
    size_t i;

    for (i = 0; i < e->n; i++)
        free(e->vars[i]);
    e->n = 0;
}

/* KFLEET_RUN_ARGS: the configured `run` arguments as quoted words. */
int coord_worker_env_from_config(struct coord_worker_env *e, const struct coord_config *c)
{
    struct buf b;
    char tmo[32];
    size_t i;
    int rc;

    buf_init(&b, 0);
    for (i = 0; i < c->nrun_args; i++) {
        if (i)
            buf_puts(&b, " ");
        kf_shquote(&b, c->run_args[i]);
    }
    snprintf(tmo, sizeof(tmo), "%u", c->build_timeout);
    rc = coord_worker_env_add(e, "KFLEET_RUNTIME", c->runtime);
    if (rc == 0)
        rc = coord_worker_env_add(e, "KFLEET_RUN_ARGS", b.len ? buf_cstr(&b) : "");
    if (rc == 0)
        rc = coord_worker_env_add(e, "KFLEET_BUILD_TIMEOUT", tmo);
    buf_release(&b);
    return rc;
}
