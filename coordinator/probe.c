/* One remote command on every selected host, every host under --forks:
 * the fan-out that kfleet facts and kfleet doctor share.
 *
 * Per host: start (checks the inventory settings, builds the command) ->
 * connect (the SSH engine's own state machine) -> exec -> parse (the
 * caller's judge of the untrusted output) -> finished (the caller's, e.g.
 * a database write) -> done. A failure at any step finishes the host with
 * a code, the phase it happened in and a message; it never stops the
 * other hosts. */
#include "coordinator.h"

#include <openssl/rand.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void coord_engine_opts(const struct coord_opts *o, struct ssh_engine_opts *eo)
{
    memset(eo, 0, sizeof(*eo));
    eo->known_hosts = o->known_hosts;
    eo->ssh_config = o->ssh_config;
    eo->accept_new_hostkeys = o->accept_new_hostkeys;
    eo->max_handshakes = o->max_handshakes;
    eo->connect_timeout_ms = o->connect_timeout_ms;
    eo->auth_timeout_ms = o->auth_timeout_ms;
}

int coord_make_nonce(char out[33])
{
    unsigned char raw[16];
    size_t i;

    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return KF_EIO;
    for (i = 0; i < sizeof(raw); i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
    return 0;
}

static void host_finish(struct coord_probe_host *ph)
{
    struct coord_probe *p = ph->p;

    if (ph->finished)
        return;
    ph->finished = 1;
    ph->t1_ns = uv_hrtime();
    if (ph->code != 0)
        p->failed++;
    if (ph->conn != NULL)
        ph->retries = ssh_conn_retries(ph->conn);
    if (p->finished != NULL)
        p->finished(p, ph);
    ssh_exec_release(&ph->x);
    free(ph->cmd);
    ph->cmd = NULL;
    if (ph->conn != NULL) {
        ssh_conn_close(ph->conn);
        ph->conn = NULL;
    }
    coord_progress_update(&p->progress, p->fan.done + 1, p->failed, 0);
    coord_fanout_done(&p->fan);
}

static void host_fail(struct coord_probe_host *ph, int code, const char *phase, const char *fmt,
                      ...) __attribute__((format(printf, 4, 5)));

static void host_fail(struct coord_probe_host *ph, int code, const char *phase, const char *fmt,
                      ...)
{
    va_list ap;

    ph->code = code;
    ph->phase = phase;
    va_start(ap, fmt);
    vsnprintf(ph->msg, sizeof(ph->msg), fmt, ap);
    va_end(ap);
    host_finish(ph);
}

/* The first line of what the node wrote on stderr, safe to print. */
static const char *stderr_line(struct ssh_exec *x, char *out, size_t n)
{
    const char *s = buf_cstr(&x->err);
    const char *nl = strchr(s, '\n');

    return kf_escape_to(out, n, s, nl ? (size_t)(nl - s) : strlen(s));
}

static void on_done(struct ssh_conn *c, int status, void *arg)
{
    struct coord_probe_host *ph = arg;
    const char *phase = ph->p->parse_phase ? ph->p->parse_phase : "probe";
    struct kf_err err;
    char line[200];
    int rc;

    if (status == KF_ETRUNC) {
        host_fail(ph, KF_ETRUNC, "command",
                  "node printed more than %zu bytes; output cut and the command stopped "
                  "(raise --output-limit if this node is honest)",
                  ph->x.out.limit);
        return;
    }
    if (status < 0) {
        host_fail(ph, status, ssh_conn_phase(c), "%s", ssh_conn_error(c));
        return;
    }
    if (ph->h->become && ph->x.exit_status != 0 &&
        (strstr(buf_cstr(&ph->x.err), "password is required") != NULL ||
         strstr(buf_cstr(&ph->x.err), "a terminal is required") != NULL)) {
        host_fail(ph, KF_ESUDO, "become",
                  "sudo asks for a password (kfleet runs 'sudo -n' and never types one): give "
                  "user '%s' passwordless sudo, or connect as root",
                  ph->h->user ? ph->h->user : "(ssh default)");
        return;
    }
    kf_err_clear(&err);
    rc = ph->p->parse(ph->p, ph, &err);
    if (rc < 0) {
        if (ph->x.exit_status != 0 && rc == KF_EPARSE)
            host_fail(ph, KF_ECMD, phase, "probe exited with status %d%s%s%s: %s",
                      ph->x.exit_status, ph->x.exit_signal[0] ? " (signal " : "", ph->x.exit_signal,
                      ph->x.exit_signal[0] ? ")" : "",
                      ph->x.err.len ? stderr_line(&ph->x, line, sizeof(line)) : kf_err_msg(&err));
        else
            host_fail(ph, rc, phase, "%s", kf_err_msg(&err));
        return;
    }
    ph->code = 0;
    host_finish(ph);
}

static void on_ready(struct ssh_conn *c, int status, void *arg)
{
    struct coord_probe_host *ph = arg;
    int rc;

    if (status < 0) {
        host_fail(ph, status, ssh_conn_phase(c), "%s", ssh_conn_error(c));
        return;
    }
    ssh_exec_init(&ph->x);
    ph->x.command = ph->cmd;
    ph->x.out_limit = ph->p->o->output_limit;
    ph->x.timeout_ms = ph->p->o->command_timeout_ms;
    rc = ssh_conn_exec(c, &ph->x, on_done, ph);
    if (rc < 0)
        host_fail(ph, rc, "command", "cannot start the probe: %s", kf_strerror(rc));
}

static void host_start(struct coord_fanout *f, size_t i)
{
    struct coord_probe *p = f->data;
    struct coord_probe_host *ph = &p->hosts[i];
    const struct inv_host *h = ph->h;
    struct ssh_target t;
    char why[300];
    int rc;

    ph->t0_ns = uv_hrtime();
    ssh_exec_init(&ph->x);
    rc = inv_host_ssh_target(h, &t, why, sizeof(why));
    if (rc < 0) {
        host_fail(ph, rc, "inventory", "%s", why);
        return;
    }
    rc = p->command(p, ph, &ph->cmd);
    if (rc < 0) {
        host_fail(ph, rc, p->parse_phase ? p->parse_phase : "probe",
                  "cannot build the probe command: %s", kf_strerror(rc));
        return;
    }
    rc = ssh_conn_start(&p->engine, &t, on_ready, ph, &ph->conn);
    if (rc < 0)
        host_fail(ph, rc, "connect", "cannot start connecting: %s", kf_strerror(rc));
}

int coord_probe_run(struct coord_probe *p, const struct inventory *inv, const size_t *idx, size_t n,
                    const char *label)
{
    struct ssh_engine_opts eo;
    size_t i;
    int rc = KF_ENOMEM, engine_ok = 0;

    p->n = n;
    p->failed = 0;
    p->hosts = calloc(n ? n : 1, sizeof(*p->hosts));
    if (p->hosts == NULL)
        return KF_ENOMEM;
    for (i = 0; i < n; i++) {
        p->hosts[i].p = p;
        p->hosts[i].h = &inv->hosts[idx[i]];
        p->hosts[i].index = i;
    }
    if (uv_loop_init(&p->loop) < 0)
        return KF_ENOMEM;
    coord_engine_opts(p->o, &eo);
    if (ssh_engine_init(&p->engine, &p->loop, &eo) < 0)
        goto out;
    engine_ok = 1;
    coord_progress_init(&p->progress, p->o->progress, label, n);
    coord_fanout_init(&p->fan, n, coord_fit_forks(p->o->forks, COORD_SESSION_FILES, "SSH session"),
                      host_start, p);
    coord_fanout_pump(&p->fan);
    uv_run(&p->loop, UV_RUN_DEFAULT);
    coord_progress_clear(&p->progress);
    log_set_hook(NULL, NULL);
    log_debug("handshakes retried after a refusal: %llu; most in flight: %u",
              (unsigned long long)p->engine.handshake_retries, p->engine.max_handshakes_seen);
    rc = 0;
out:
    if (engine_ok)
        ssh_engine_release(&p->engine);
    uv_run(&p->loop, UV_RUN_DEFAULT); /* lets closing handles finish */
    if (uv_loop_close(&p->loop) != 0)
        log_debug("event loop still had handles at exit");
    return rc;
}

void coord_probe_release(struct coord_probe *p)
{
    free(p->hosts);
    p->hosts = NULL;
    p->n = 0;
}
