/* kfleet facts: one probe command per node, every node in parallel under
 * --forks, results parsed as untrusted input, stored in the state database,
 * and reported grouped by kernel (and failures by reason).
 *
 * Per host: start (checks the inventory settings) -> connect (the SSH
 * engine's own state machine) -> exec the probe -> parse -> store -> done.
 * A failure at any step finishes the host with a code, the phase it
 * happened in and a message; it never stops the other hosts. */
#include "coordinator.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

struct facts_job {
    struct facts_run *run;
    const struct inv_host *h;
    struct ssh_conn *conn;
    struct ssh_exec x;
    char *cmd;
    int code; /* 0 = facts gathered */
    const char *phase;
    char msg[600];
    struct inv_facts facts;
    uint64_t t0_ns, t1_ns;
    unsigned retries; /* handshakes the server refused and we retried */
    int finished;
};

struct facts_run {
    struct coord_opts *o;
    struct inventory inv;
    size_t *idx;
    size_t n;
    struct facts_job *jobs;
    uv_loop_t loop;
    struct ssh_engine engine;
    struct coord_db db;
    struct coord_fanout fan;
    struct coord_progress progress;
    char nonce[33];
    long long now;
    size_t failed;
    int db_error;
    struct kf_err db_err;
};

static void job_finish(struct facts_job *j)
{
    struct facts_run *r = j->run;
    struct kf_err err;

    if (j->finished)
        return;
    j->finished = 1;
    j->t1_ns = uv_hrtime();
    if (j->code != 0)
        r->failed++;
    ssh_exec_release(&j->x);
    free(j->cmd);
    j->cmd = NULL;
    if (j->conn != NULL) {
        j->retries = ssh_conn_retries(j->conn);
        ssh_conn_close(j->conn);
        j->conn = NULL;
    }
    kf_err_clear(&err);
    if (!r->db_error && coord_db_store_facts(&r->db, j->h->name, r->now, j->code ? NULL : &j->facts,
                                             j->code, j->phase, j->msg, &err) < 0) {
        /* Keep gathering: the report still reaches the operator, and the
         * exit status says the state was not saved. */
        r->db_error = 1;
        r->db_err = err;
    }
    coord_progress_update(&r->progress, r->fan.done + 1, r->failed, 0);
    coord_fanout_done(&r->fan);
}

static void job_fail(struct facts_job *j, int code, const char *phase, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void job_fail(struct facts_job *j, int code, const char *phase, const char *fmt, ...)
{
    va_list ap;

    j->code = code;
    j->phase = phase;
    va_start(ap, fmt);
    vsnprintf(j->msg, sizeof(j->msg), fmt, ap);
    va_end(ap);
    job_finish(j);
}

/* The first line of what the node wrote on stderr, safe to print. */
static const char *stderr_line(struct ssh_exec *x, char *out, size_t n)
{
    const char *s = buf_cstr(&x->err);
    const char *nl = strchr(s, '\n');

    return kf_escape_to(out, n, s, nl ? (size_t)(nl - s) : strlen(s));
}

static void on_probe_done(struct ssh_conn *c, int status, void *arg)
{
    struct facts_job *j = arg;
    struct kf_err err;
    char line[200];
    int rc;

    if (status == KF_ETRUNC) {
        job_fail(j, KF_ETRUNC, "command",
                 "node printed more than %zu bytes; output cut and the command stopped "
                 "(raise --output-limit if this node is honest)",
                 j->x.out.limit);
        return;
    }
    if (status < 0) {
        job_fail(j, status, ssh_conn_phase(c), "%s", ssh_conn_error(c));
        return;
    }
    if (j->h->become && j->x.exit_status != 0 &&
        (strstr(buf_cstr(&j->x.err), "password is required") != NULL ||
         strstr(buf_cstr(&j->x.err), "a terminal is required") != NULL)) {
        job_fail(j, KF_ESUDO, "become",
                 "sudo asks for a password (kfleet runs 'sudo -n' and never types one): give "
                 "user '%s' passwordless sudo, or connect as root",
                 j->h->user ? j->h->user : "(ssh default)");
        return;
    }
    kf_err_clear(&err);
    rc = inv_facts_parse(j->x.out.data ? j->x.out.data : "", j->x.out.len, j->run->nonce, &j->facts,
                         &err);
    if (rc < 0) {
        if (j->x.exit_status != 0 && rc == KF_EPARSE)
            job_fail(j, KF_ECMD, "facts", "probe exited with status %d%s%s%s: %s", j->x.exit_status,
                     j->x.exit_signal[0] ? " (signal " : "", j->x.exit_signal,
                     j->x.exit_signal[0] ? ")" : "",
                     j->x.err.len ? stderr_line(&j->x, line, sizeof(line)) : kf_err_msg(&err));
        else
            job_fail(j, rc, "facts", "%s", kf_err_msg(&err));
        return;
    }
    j->code = 0;
    job_finish(j);
}

static void on_ready(struct ssh_conn *c, int status, void *arg)
{
    struct facts_job *j = arg;
    int rc;

    if (status < 0) {
        job_fail(j, status, ssh_conn_phase(c), "%s", ssh_conn_error(c));
        return;
    }
    ssh_exec_init(&j->x);
    j->x.command = j->cmd;
    j->x.out_limit = j->run->o->output_limit;
    j->x.timeout_ms = j->run->o->command_timeout_ms;
    rc = ssh_conn_exec(c, &j->x, on_probe_done, j);
    if (rc < 0)
        job_fail(j, rc, "command", "cannot start the probe: %s", kf_strerror(rc));
}

static void job_start(struct coord_fanout *f, size_t i)
{
    struct facts_run *r = f->data;
    struct facts_job *j = &r->jobs[i];
    const struct inv_host *h = j->h;
    struct ssh_target t;
    int rc;

    j->t0_ns = uv_hrtime();
    if (h->connection != NULL && strcmp(h->connection, "ssh") != 0 &&
        strcmp(h->connection, "paramiko") != 0) {
        job_fail(j, KF_EUNSUPPORTED, "inventory",
                 "ansible_connection '%s' is not supported: kfleet reaches nodes over ssh",
                 h->connection);
        return;
    }
    if (h->proxy_jump != NULL) {
        job_fail(j, KF_EUNSUPPORTED, "inventory",
                 "ansible_ssh_common_args asks for ProxyJump=%s; kfleet does not support jump "
                 "hosts yet: reach the node directly",
                 h->proxy_jump);
        return;
    }
    rc = inv_facts_command(r->nonce, h->become, h->become_user, &j->cmd);
    if (rc < 0) {
        job_fail(j, rc, "facts", "cannot build the probe command: %s", kf_strerror(rc));
        return;
    }
    memset(&t, 0, sizeof(t));
    t.name = h->name;
    t.dest = h->address;
    t.port = h->port;
    t.user = h->user;
    t.key_file = h->key_file;
    rc = ssh_conn_start(&r->engine, &t, on_ready, j, &j->conn);
    if (rc < 0)
        job_fail(j, rc, "connect", "cannot start connecting: %s", kf_strerror(rc));
}

/* --- output ------------------------------------------------------------------- */

static json_t *job_json(const struct facts_job *j)
{
    json_t *o = json_object();

    json_object_set_new(o, "name", json_string(j->h->name));
    json_object_set_new(o, "ok", json_boolean(j->code == 0));
    json_object_set_new(o, "seconds", json_real((double)(j->t1_ns - j->t0_ns) / 1e9));
    json_object_set_new(o, "handshake_retries", json_integer(j->retries));
    if (j->code == 0) {
        json_object_set_new(o, "facts", inv_facts_to_json(&j->facts));
    } else {
        json_t *e = json_object();
        json_object_set_new(e, "code", json_string(kf_errname(j->code)));
        json_object_set_new(e, "phase", json_string(j->phase ? j->phase : ""));
        json_object_set_new(e, "message", json_string(j->msg));
        json_object_set_new(o, "error", e);
    }
    return o;
}

static void print_json(struct facts_run *r, double secs)
{
    json_t *doc = json_object(), *hosts = json_array(), *sum = json_object();
    size_t i;

    for (i = 0; i < r->n; i++)
        json_array_append_new(hosts, job_json(&r->jobs[i]));
    json_object_set_new(sum, "hosts", json_integer((json_int_t)r->n));
    json_object_set_new(sum, "ok", json_integer((json_int_t)(r->n - r->failed)));
    json_object_set_new(sum, "failed", json_integer((json_int_t)r->failed));
    json_object_set_new(sum, "seconds", json_real(secs));
    json_object_set_new(doc, "kfleet", json_string(KF_VERSION));
    json_object_set_new(doc, "command", json_string("facts"));
    json_object_set_new(doc, "gathered_at", json_integer(r->now));
    json_object_set_new(doc, "summary", sum);
    json_object_set_new(doc, "hosts", hosts);
    json_dumpf(doc, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(doc);
}

static void print_groups(struct coord_groups *gs, int details)
{
    struct buf b;
    size_t i;

    buf_init(&b, 0);
    coord_groups_sort(gs);
    for (i = 0; i < gs->n; i++) {
        buf_reset(&b);
        coord_group_fold(&gs->g[i], &b);
        printf("  %-50s %5zu  %s\n", gs->g[i].key, gs->g[i].n, buf_cstr(&b));
        if (details && gs->g[i].detail != NULL)
            printf("      e.g. %s: %s\n", gs->g[i].names[0], gs->g[i].detail);
    }
    buf_release(&b);
}

static void print_human(struct facts_run *r, double secs)
{
    struct coord_groups running, installed, failed;
    char key[300];
    size_t i, k;

    coord_groups_init(&running);
    coord_groups_init(&installed);
    coord_groups_init(&failed);
    for (i = 0; i < r->n; i++) {
        const struct facts_job *j = &r->jobs[i];
        if (j->code != 0) {
            snprintf(key, sizeof(key), "%s (%s)", kf_strerror(j->code), j->phase);
            coord_groups_add(&failed, key, j->h->name, j->msg);
            continue;
        }
        snprintf(key, sizeof(key), "%-28s %-8s %s %s", j->facts.kernel, j->facts.arch,
                 j->facts.os_id[0] ? j->facts.os_id : "?", j->facts.os_version);
        coord_groups_add(&running, key, j->h->name, NULL);
        for (k = 0; k < j->facts.nkernels; k++)
            if (!j->facts.kernels[k].running)
                coord_groups_add(&installed, j->facts.kernels[k].release, j->h->name, NULL);
    }
    printf("kfleet facts: %zu host%s, %zu answered, %zu failed (%.1f s)\n", r->n,
           r->n == 1 ? "" : "s", r->n - r->failed, r->failed, secs);
    if (running.n > 0) {
        printf("\n  %-28s %-8s %-13s %5s  %s\n", "RUNNING KERNEL", "ARCH", "OS", "COUNT", "HOSTS");
        print_groups(&running, 0);
    }
    if (installed.n > 0) {
        printf("\n  %-50s %5s  %s\n", "INSTALLED, NOT RUNNING (next reboot)", "COUNT", "HOSTS");
        print_groups(&installed, 0);
    }
    if (failed.n > 0) {
        printf("\n  %-50s %5s  %s\n", "FAILED (reason, phase)", "COUNT", "HOSTS");
        print_groups(&failed, 1);
        if (r->o->verbose) {
            printf("\nfailure details:\n");
            for (i = 0; i < r->n; i++)
                if (r->jobs[i].code != 0)
                    printf("  %s: %s\n", r->jobs[i].h->name, r->jobs[i].msg);
        }
    }
    coord_groups_release(&running);
    coord_groups_release(&installed);
    coord_groups_release(&failed);
}

static int make_nonce(char out[33])
{
    unsigned char raw[16];
    size_t i;

    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return KF_EIO;
    for (i = 0; i < sizeof(raw); i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
    return 0;
}

int cmd_facts(struct coord_opts *o)
{
    struct facts_run r;
    struct ssh_engine_opts eo;
    struct kf_err err;
    char *state_dir = NULL;
    uint64_t t0;
    size_t i;
    int rc, exit_code = KF_EXIT_ERROR, loop_ok = 0, engine_ok = 0;

    memset(&r, 0, sizeof(r));
    kf_err_clear(&err);
    r.o = o;
    if (o->print_probe) {
        /* What runs on every node, for review (and for bench/ to give other
         * tools the very same command). The nonce changes per run. */
        char *cmd = NULL;
        if (make_nonce(r.nonce) < 0 || inv_facts_command(r.nonce, 0, NULL, &cmd) < 0)
            return KF_EXIT_ERROR;
        printf("%s\n", cmd);
        free(cmd);
        return KF_EXIT_OK;
    }
    rc = coord_load_selection(o, &r.inv, &r.idx, &r.n);
    if (rc != 0)
        return rc;

    state_dir = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
    if (state_dir == NULL || coord_db_open(&r.db, state_dir, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", state_dir ? kf_err_msg(&err) : "out of memory");
        goto out;
    }
    if (make_nonce(r.nonce) < 0) {
        fprintf(stderr, "kfleet: cannot get random bytes for the probe nonce\n");
        goto out;
    }
    if (uv_loop_init(&r.loop) < 0) {
        fprintf(stderr, "kfleet: cannot create the event loop\n");
        goto out;
    }
    loop_ok = 1;
    memset(&eo, 0, sizeof(eo));
    eo.known_hosts = o->known_hosts;
    eo.ssh_config = o->ssh_config;
    eo.accept_new_hostkeys = o->accept_new_hostkeys;
    eo.max_handshakes = o->max_handshakes;
    eo.connect_timeout_ms = o->connect_timeout_ms;
    eo.auth_timeout_ms = o->auth_timeout_ms;
    if (ssh_engine_init(&r.engine, &r.loop, &eo) < 0) {
        fprintf(stderr, "kfleet: out of memory\n");
        goto out;
    }
    engine_ok = 1;
    r.jobs = calloc(r.n, sizeof(*r.jobs));
    if (r.jobs == NULL) {
        fprintf(stderr, "kfleet: out of memory\n");
        goto out;
    }
    for (i = 0; i < r.n; i++) {
        r.jobs[i].run = &r;
        r.jobs[i].h = &r.inv.hosts[r.idx[i]];
    }
    r.now = (long long)time(NULL);
    coord_progress_init(&r.progress, o->progress, "facts", r.n);
    coord_fanout_init(&r.fan, r.n, o->forks, job_start, &r);

    t0 = uv_hrtime();
    coord_fanout_pump(&r.fan);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    coord_progress_clear(&r.progress);
    log_set_hook(NULL, NULL);

    if (o->json)
        print_json(&r, (double)(uv_hrtime() - t0) / 1e9);
    else
        print_human(&r, (double)(uv_hrtime() - t0) / 1e9);
    log_debug("handshakes retried after a refusal: %llu; most in flight: %u",
              (unsigned long long)r.engine.handshake_retries, r.engine.max_handshakes_seen);
    if (r.db_error) {
        fprintf(stderr, "kfleet: facts were not saved: %s\n", kf_err_msg(&r.db_err));
        exit_code = KF_EXIT_ERROR;
    } else {
        exit_code = r.failed ? KF_EXIT_HOSTS : KF_EXIT_OK;
    }
out:
    if (engine_ok)
        ssh_engine_release(&r.engine);
    if (loop_ok) {
        uv_run(&r.loop, UV_RUN_DEFAULT); /* lets closing handles finish */
        if (uv_loop_close(&r.loop) != 0)
            log_debug("event loop still had handles at exit");
    }
    free(r.jobs);
    coord_db_close(&r.db);
    free(state_dir);
    free(r.idx);
    inv_release(&r.inv);
    return exit_code;
}
