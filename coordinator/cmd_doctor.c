/* kfleet doctor: a read-only diagnosis of every selected node, in parallel:
 * one remote command per node (deployer/doctor.c builds it and judges its
 * output), findings grouped by severity and code with folded host names,
 * or one JSON document.
 *
 * The fan-out below is the same per-host state machine as kfleet facts
 * (start: check the inventory settings -> connect -> exec -> parse ->
 * done), written as a small unit that knows nothing of doctor beyond two
 * callbacks, so that facts and later commands can share it. A failure at
 * any step finishes the host with a code, the phase and a message; it
 * never stops the other hosts. Nothing is written on the nodes, and
 * nothing in the state database. */
#include "coordinator.h"
#include "doctor.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

/* ------------------------------------------------------------------------ */
/* One remote command per host, every host under --forks                     */

struct probe_fleet;

struct probe_host {
    struct probe_fleet *pf;
    const struct inv_host *h;
    struct ssh_conn *conn;
    struct ssh_exec x;
    char *cmd;
    int code; /* 0: the command ran and its output was accepted */
    const char *phase;
    char msg[600];
    uint64_t t0_ns, t1_ns;
    unsigned retries;
    int finished;
};

struct probe_fleet {
    struct coord_opts *o;
    struct probe_host *hosts;
    size_t n, failed;
    uv_loop_t loop;
    struct ssh_engine engine;
    struct coord_fanout fan;
    struct coord_progress progress;
    /* The command for a host (malloc'ed into *cmd), and the judge of its
     * output: 0, or a KF_E* code with err saying why. */
    int (*command)(struct probe_fleet *pf, struct probe_host *ph, char **cmd);
    int (*parse)(struct probe_fleet *pf, struct probe_host *ph, struct kf_err *err);
    void *data;
};

static void host_finish(struct probe_host *ph)
{
    struct probe_fleet *pf = ph->pf;

    if (ph->finished)
        return;
    ph->finished = 1;
    ph->t1_ns = uv_hrtime();
    if (ph->code != 0)
        pf->failed++;
    ssh_exec_release(&ph->x);
    free(ph->cmd);
    ph->cmd = NULL;
    if (ph->conn != NULL) {
        ph->retries = ssh_conn_retries(ph->conn);
        ssh_conn_close(ph->conn);
        ph->conn = NULL;
    }
    coord_progress_update(&pf->progress, pf->fan.done + 1, pf->failed, 0);
    coord_fanout_done(&pf->fan);
}

static void host_fail(struct probe_host *ph, int code, const char *phase, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void host_fail(struct probe_host *ph, int code, const char *phase, const char *fmt, ...)
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
    struct probe_host *ph = arg;
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
    rc = ph->pf->parse(ph->pf, ph, &err);
    if (rc < 0) {
        if (ph->x.exit_status != 0 && rc == KF_EPARSE)
            host_fail(ph, KF_ECMD, "probe", "probe exited with status %d%s%s%s: %s",
                      ph->x.exit_status, ph->x.exit_signal[0] ? " (signal " : "", ph->x.exit_signal,
                      ph->x.exit_signal[0] ? ")" : "",
                      ph->x.err.len ? stderr_line(&ph->x, line, sizeof(line)) : kf_err_msg(&err));
        else
            host_fail(ph, rc, "probe", "%s", kf_err_msg(&err));
        return;
    }
    ph->code = 0;
    host_finish(ph);
}

static void on_ready(struct ssh_conn *c, int status, void *arg)
{
    struct probe_host *ph = arg;
    int rc;

    if (status < 0) {
        host_fail(ph, status, ssh_conn_phase(c), "%s", ssh_conn_error(c));
        return;
    }
    ssh_exec_init(&ph->x);
    ph->x.command = ph->cmd;
    ph->x.out_limit = ph->pf->o->output_limit;
    ph->x.timeout_ms = ph->pf->o->command_timeout_ms;
    rc = ssh_conn_exec(c, &ph->x, on_done, ph);
    if (rc < 0)
        host_fail(ph, rc, "command", "cannot start the probe: %s", kf_strerror(rc));
}

static void host_start(struct coord_fanout *f, size_t i)
{
    struct probe_fleet *pf = f->data;
    struct probe_host *ph = &pf->hosts[i];
    const struct inv_host *h = ph->h;
    struct ssh_target t;
    int rc;

    ph->t0_ns = uv_hrtime();
    if (h->connection != NULL && strcmp(h->connection, "ssh") != 0 &&
        strcmp(h->connection, "paramiko") != 0) {
        host_fail(ph, KF_EUNSUPPORTED, "inventory",
                  "ansible_connection '%s' is not supported: kfleet reaches nodes over ssh",
                  h->connection);
        return;
    }
    if (h->proxy_jump != NULL) {
        host_fail(ph, KF_EUNSUPPORTED, "inventory",
                  "ansible_ssh_common_args asks for ProxyJump=%s; kfleet does not support jump "
                  "hosts yet: reach the node directly",
                  h->proxy_jump);
        return;
    }
    rc = pf->command(pf, ph, &ph->cmd);
    if (rc < 0) {
        host_fail(ph, rc, "probe", "cannot build the probe command: %s", kf_strerror(rc));
        return;
    }
    memset(&t, 0, sizeof(t));
    t.name = h->name;
    t.dest = h->address;
    t.port = h->port;
    t.user = h->user;
    t.key_file = h->key_file;
    rc = ssh_conn_start(&pf->engine, &t, on_ready, ph, &ph->conn);
    if (rc < 0)
        host_fail(ph, rc, "connect", "cannot start connecting: %s", kf_strerror(rc));
}

/* Runs the command on inv->hosts[idx[0..n-1]]; pf's callbacks and data
 * must be set. Returns 0 when every host got its turn (each host's own
 * result is in pf->hosts), KF_ENOMEM otherwise. The caller frees
 * pf->hosts. */
static int probe_fleet_run(struct probe_fleet *pf, const struct inventory *inv, const size_t *idx,
                           size_t n, const char *label)
{
    struct coord_opts *o = pf->o;
    struct ssh_engine_opts eo;
    size_t i;
    int rc = KF_ENOMEM, engine_ok = 0;

    pf->n = n;
    pf->hosts = calloc(n, sizeof(*pf->hosts));
    if (pf->hosts == NULL)
        return KF_ENOMEM;
    for (i = 0; i < n; i++) {
        pf->hosts[i].pf = pf;
        pf->hosts[i].h = &inv->hosts[idx[i]];
    }
    if (uv_loop_init(&pf->loop) < 0)
        return KF_ENOMEM;
    memset(&eo, 0, sizeof(eo));
    eo.known_hosts = o->known_hosts;
    eo.ssh_config = o->ssh_config;
    eo.accept_new_hostkeys = o->accept_new_hostkeys;
    eo.max_handshakes = o->max_handshakes;
    eo.connect_timeout_ms = o->connect_timeout_ms;
    eo.auth_timeout_ms = o->auth_timeout_ms;
    if (ssh_engine_init(&pf->engine, &pf->loop, &eo) < 0)
        goto out;
    engine_ok = 1;
    coord_progress_init(&pf->progress, o->progress, label, n);
    coord_fanout_init(&pf->fan, n, o->forks, host_start, pf);
    coord_fanout_pump(&pf->fan);
    uv_run(&pf->loop, UV_RUN_DEFAULT);
    coord_progress_clear(&pf->progress);
    log_set_hook(NULL, NULL);
    log_debug("handshakes retried after a refusal: %llu; most in flight: %u",
              (unsigned long long)pf->engine.handshake_retries, pf->engine.max_handshakes_seen);
    rc = 0;
out:
    if (engine_ok)
        ssh_engine_release(&pf->engine);
    uv_run(&pf->loop, UV_RUN_DEFAULT); /* lets closing handles finish */
    if (uv_loop_close(&pf->loop) != 0)
        log_debug("event loop still had handles at exit");
    return rc;
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

/* ------------------------------------------------------------------------ */
/* doctor                                                                    */

struct doctor_run {
    char nonce[33];
    const char *module;
    struct deploy_doctor_ctx ctx;
    struct deploy_doctor_report *reports; /* one per host */
    size_t count[DEPLOY_DOCTOR_NSEVERITIES];
};

static int doctor_command(struct probe_fleet *pf, struct probe_host *ph, char **cmd)
{
    struct doctor_run *d = pf->data;

    return deploy_doctor_command(d->nonce, ph->h->become, ph->h->become_user, d->module, cmd);
}

static int doctor_parse(struct probe_fleet *pf, struct probe_host *ph, struct kf_err *err)
{
    struct doctor_run *d = pf->data;
    struct deploy_doctor_report *r = &d->reports[ph - pf->hosts];
    size_t i;
    int rc;

    rc = deploy_doctor_analyze(ph->x.out.data ? ph->x.out.data : "", ph->x.out.len, d->nonce,
                               &d->ctx, r, err);
    if (rc < 0)
        return rc;
    for (i = 0; i < DEPLOY_DOCTOR_NSEVERITIES; i++)
        d->count[i] += r->count[i];
    return 0;
}

/* --- output ------------------------------------------------------------------- */

static void print_json(const struct probe_fleet *pf, const struct doctor_run *d,
                       const char *profile, double secs)
{
    json_t *doc = json_object(), *hosts = json_array(), *sum = json_object();
    size_t i;

    for (i = 0; i < pf->n; i++) {
        const struct probe_host *ph = &pf->hosts[i];
        json_t *o = json_object(), *e = json_null(), *fs;
        fs = ph->code == 0 ? deploy_doctor_findings_json(&d->reports[i]) : json_array();
        if (ph->code != 0) {
            e = json_object();
            json_object_set_new(e, "code", json_string(kf_errname(ph->code)));
            json_object_set_new(e, "phase", json_string(ph->phase ? ph->phase : ""));
            json_object_set_new(e, "message", json_string(ph->msg));
        }
        json_object_set_new(o, "name", json_string(ph->h->name));
        json_object_set_new(o, "ok", json_boolean(ph->code == 0));
        json_object_set_new(o, "findings", fs);
        json_object_set_new(o, "error", e);
        json_array_append_new(hosts, o);
    }
    json_object_set_new(sum, "hosts", json_integer((json_int_t)pf->n));
    json_object_set_new(sum, "ok", json_integer((json_int_t)(pf->n - pf->failed)));
    json_object_set_new(sum, "failed", json_integer((json_int_t)pf->failed));
    for (i = 0; i < DEPLOY_DOCTOR_NSEVERITIES; i++)
        json_object_set_new(sum, deploy_doctor_severity_name((enum deploy_doctor_severity)i),
                            json_integer((json_int_t)d->count[i]));
    json_object_set_new(sum, "seconds", json_real(secs));
    json_object_set_new(doc, "kfleet", json_string(KF_VERSION));
    json_object_set_new(doc, "command", json_string("doctor"));
    json_object_set_new(doc, "profile", json_string(profile));
    json_object_set_new(doc, "driver", d->ctx.driver ? json_string(d->ctx.driver) : json_null());
    json_object_set_new(doc, "store_checked", json_boolean(d->ctx.store_checked));
    json_object_set_new(doc, "summary", sum);
    json_object_set_new(doc, "hosts", hosts);
    json_dumpf(doc, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(doc);
}

/* Prints text after a prefix, wrapped at 100 columns under indent spaces. */
static void print_wrapped(const char *prefix, int indent, const char *text)
{
    int col = printf("%*s%s", indent, "", prefix);
    const char *p = text;

    while (*p != '\0') {
        const char *sp = strchr(p, ' ');
        int wl = sp ? (int)(sp - p) : (int)strlen(p);
        if (col + 1 + wl > 100 && col > indent + (int)strlen(prefix)) {
            printf("\n%*s", indent + (int)strlen(prefix), "");
            col = indent + (int)strlen(prefix);
        } else if (p != text) {
            putchar(' ');
            col++;
        }
        col += printf("%.*s", wl, p);
        p += wl;
        while (*p == ' ')
            p++;
    }
    putchar('\n');
}

/* The first host of the group, and its finding of that code. */
static const struct deploy_doctor_finding *
example(const struct probe_fleet *pf, const struct doctor_run *d, const struct coord_group *g)
{
    size_t i;

    for (i = 0; i < pf->n; i++)
        if (pf->hosts[i].code == 0 && strcmp(pf->hosts[i].h->name, g->names[0]) == 0)
            return deploy_doctor_find(&d->reports[i], g->key);
    return NULL;
}

static void print_human(const struct probe_fleet *pf, const struct doctor_run *d,
                        const char *profile, double secs)
{
    static const char *const heads[] = {"CRITICAL", "WARNING", "INFO"};
    struct coord_groups sev[DEPLOY_DOCTOR_NSEVERITIES], failed, healthy;
    struct buf b;
    char key[300];
    size_t i, j, s;

    buf_init(&b, 0);
    for (s = 0; s < DEPLOY_DOCTOR_NSEVERITIES; s++)
        coord_groups_init(&sev[s]);
    coord_groups_init(&failed);
    coord_groups_init(&healthy);
    for (i = 0; i < pf->n; i++) {
        const struct probe_host *ph = &pf->hosts[i];
        const struct deploy_doctor_report *r = &d->reports[i];
        if (ph->code != 0) {
            snprintf(key, sizeof(key), "%s (%s)", kf_strerror(ph->code), ph->phase);
            coord_groups_add(&failed, key, ph->h->name, ph->msg);
            continue;
        }
        if (r->count[DEPLOY_DOCTOR_CRITICAL] + r->count[DEPLOY_DOCTOR_WARNING] == 0)
            coord_groups_add(&healthy, "healthy", ph->h->name, NULL);
        for (j = 0; j < r->n; j++)
            coord_groups_add(&sev[r->findings[j].severity], r->findings[j].code, ph->h->name,
                             r->findings[j].evidence);
    }
    printf("kfleet doctor: %zu host%s, %zu answered, %zu failed (%.1f s): %zu critical, %zu "
           "warning, %zu info (profile %s%s%s)\n",
           pf->n, pf->n == 1 ? "" : "s", pf->n - pf->failed, pf->failed, secs,
           d->count[DEPLOY_DOCTOR_CRITICAL], d->count[DEPLOY_DOCTOR_WARNING],
           d->count[DEPLOY_DOCTOR_INFO], profile, d->ctx.driver ? ", driver " : "",
           d->ctx.driver ? d->ctx.driver : "");
    for (s = 0; s < DEPLOY_DOCTOR_NSEVERITIES; s++) {
        if (sev[s].n == 0)
            continue;
        coord_groups_sort(&sev[s]);
        printf("\n  %-48s %5s  %s\n", heads[s], "COUNT", "HOSTS");
        for (i = 0; i < sev[s].n; i++) {
            const struct coord_group *g = &sev[s].g[i];
            const struct deploy_doctor_finding *f = example(pf, d, g);
            buf_reset(&b);
            coord_group_fold(g, &b);
            printf("  %-48s %5zu  %s\n", g->key, g->n, buf_cstr(&b));
            if (f == NULL)
                continue;
            print_wrapped("", 6, f->title);
            snprintf(key, sizeof(key), "e.g. %s: ", g->names[0]);
            print_wrapped(key, 6, f->evidence);
            print_wrapped("fix: ", 6, f->fix);
        }
    }
    if (failed.n > 0) {
        coord_groups_sort(&failed);
        printf("\n  %-48s %5s  %s\n", "FAILED (reason, phase)", "COUNT", "HOSTS");
        for (i = 0; i < failed.n; i++) {
            buf_reset(&b);
            coord_group_fold(&failed.g[i], &b);
            printf("  %-48s %5zu  %s\n", failed.g[i].key, failed.g[i].n, buf_cstr(&b));
            snprintf(key, sizeof(key), "e.g. %s: ", failed.g[i].names[0]);
            print_wrapped(key, 6, failed.g[i].detail);
        }
    }
    if (healthy.n > 0) {
        buf_reset(&b);
        coord_group_fold(&healthy.g[0], &b);
        printf("\n  %-48s %5zu  %s\n", "NO WARNING OR CRITICAL FINDING", healthy.g[0].n,
               buf_cstr(&b));
    }
    if (pf->o->verbose) {
        printf("\nper host:\n");
        for (i = 0; i < pf->n; i++) {
            const struct probe_host *ph = &pf->hosts[i];
            const struct deploy_doctor_report *r = &d->reports[i];
            if (ph->code != 0) {
                printf("  %s: failed (%s): %s\n", ph->h->name, ph->phase, ph->msg);
                continue;
            }
            printf("  %s: %s, %zu finding%s\n", ph->h->name, r->facts.kernel, r->n,
                   r->n == 1 ? "" : "s");
            for (j = 0; j < r->n; j++) {
                const struct deploy_doctor_finding *f = &r->findings[j];
                printf("    %s %s: %s\n", deploy_doctor_severity_name(f->severity), f->code,
                       f->title);
                print_wrapped("evidence: ", 6, f->evidence);
                print_wrapped("fix: ", 6, f->fix);
            }
        }
    }
    for (s = 0; s < DEPLOY_DOCTOR_NSEVERITIES; s++)
        coord_groups_release(&sev[s]);
    coord_groups_release(&failed);
    coord_groups_release(&healthy);
    buf_release(&b);
}

/* The store's packages for the profile (and --driver), when the state
 * database exists: doctor reads state, it never creates it. */
static void load_store(struct coord_db *db, const char *state_dir, const char *profile,
                       const char *driver, struct coord_artifact **arts, size_t *narts,
                       struct deploy_doctor_ctx *ctx, struct deploy_doctor_package **pk)
{
    struct kf_err err;
    struct stat st;
    char *path = NULL;
    size_t i;

    *arts = NULL;
    *narts = 0;
    *pk = NULL;
    kf_err_clear(&err);
    if (state_dir == NULL || asprintf(&path, "%s/state.db", state_dir) < 0) {
        path = NULL;
        goto out;
    }
    if (stat(path, &st) != 0) {
        log_debug("no state database at %s: the artifact store is not checked", path);
        goto out;
    }
    if (coord_db_open(db, state_dir, &err) < 0 ||
        coord_db_artifact_list(db, profile, driver, NULL, arts, narts, &err) < 0) {
        log_warn("the artifact store is not checked: %s", kf_err_msg(&err));
        goto out;
    }
    *pk = calloc(*narts ? *narts : 1, sizeof(**pk));
    if (*pk == NULL)
        goto out;
    for (i = 0; i < *narts; i++) {
        (*pk)[i].driver = (*arts)[i].driver;
        (*pk)[i].kernel = (*arts)[i].kernel;
        (*pk)[i].arch = (*arts)[i].arch[0] ? (*arts)[i].arch : NULL;
    }
    ctx->packages = *pk;
    ctx->npackages = *narts;
    ctx->store_checked = 1;
out:
    free(path);
}

int cmd_doctor(struct coord_opts *o)
{
    struct probe_fleet pf;
    struct doctor_run d;
    struct inventory inv;
    struct coord_config cfg;
    struct coord_db db;
    struct coord_artifact *arts = NULL;
    struct deploy_doctor_package *pk = NULL;
    const struct coord_profile *prof;
    struct kf_err err;
    char *state_dir = NULL;
    size_t *idx = NULL, n = 0, narts = 0, i;
    uint64_t t0;
    double secs;
    int rc, exit_code = KF_EXIT_USAGE;

    memset(&pf, 0, sizeof(pf));
    memset(&d, 0, sizeof(d));
    memset(&db, 0, sizeof(db));
    inv_init(&inv);
    coord_config_init(&cfg);
    kf_err_clear(&err);
    state_dir = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
    if (state_dir == NULL) {
        fprintf(stderr, "kfleet: out of memory\n");
        exit_code = KF_EXIT_ERROR;
        goto out;
    }
    if (coord_config_load(&cfg, o->config, state_dir, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        goto out;
    }
    prof = coord_config_profile(&cfg, o->profile ? o->profile : "nvidia");
    if (prof == NULL && o->profile == NULL && cfg.nprofiles == 1)
        prof = &cfg.profiles[0];
    if (prof == NULL) {
        fprintf(stderr, "kfleet: %s: no profile '%s'\n", o->config,
                o->profile ? o->profile : "nvidia");
        goto out;
    }
    /* The first module of the load order is the one every kernel needs. */
    d.module = prof->nmodules > 0 ? prof->modules[0] : "nvidia";
    d.ctx.driver = o->driver;
    d.ctx.module = d.module;
    d.ctx.profile = prof->name;
    if (make_nonce(d.nonce) < 0) {
        fprintf(stderr, "kfleet: cannot get random bytes for the probe nonce\n");
        exit_code = KF_EXIT_ERROR;
        goto out;
    }
    if (o->print_probe) {
        /* What runs on every node, for review. The nonce changes per run. */
        char *cmd = NULL;
        if (deploy_doctor_command(d.nonce, 0, NULL, d.module, &cmd) < 0) {
            exit_code = KF_EXIT_ERROR;
            goto out;
        }
        printf("%s\n", cmd);
        free(cmd);
        exit_code = KF_EXIT_OK;
        goto out;
    }
    rc = coord_load_selection(o, &inv, &idx, &n);
    if (rc != 0) {
        exit_code = rc;
        goto out;
    }
    load_store(&db, state_dir, prof->name, o->driver, &arts, &narts, &d.ctx, &pk);

    exit_code = KF_EXIT_ERROR;
    d.reports = calloc(n, sizeof(*d.reports));
    if (d.reports == NULL) {
        fprintf(stderr, "kfleet: out of memory\n");
        goto out;
    }
    for (i = 0; i < n; i++)
        deploy_doctor_report_init(&d.reports[i]);
    pf.o = o;
    pf.command = doctor_command;
    pf.parse = doctor_parse;
    pf.data = &d;
    t0 = uv_hrtime();
    if (probe_fleet_run(&pf, &inv, idx, n, "doctor") < 0) {
        fprintf(stderr, "kfleet: out of memory\n");
        goto out;
    }
    secs = (double)(uv_hrtime() - t0) / 1e9;
    if (o->json)
        print_json(&pf, &d, prof->name, secs);
    else
        print_human(&pf, &d, prof->name, secs);
    exit_code =
        pf.failed > 0 || d.count[DEPLOY_DOCTOR_CRITICAL] > 0 || d.count[DEPLOY_DOCTOR_WARNING] > 0
            ? KF_EXIT_HOSTS
            : KF_EXIT_OK;
out:
    for (i = 0; d.reports != NULL && i < n; i++)
        deploy_doctor_report_release(&d.reports[i]);
    free(d.reports);
    free(pf.hosts);
    free(pk);
    free(arts);
    coord_db_close(&db);
    coord_config_release(&cfg);
    free(state_dir);
    free(idx);
    inv_release(&inv);
    return exit_code;
}
