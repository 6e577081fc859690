/* kfleet doctor: a read-only diagnosis of every selected node, in parallel:
 * one remote command per node (deployer/doctor.c builds it and judges its
 * output), findings grouped by severity and code with folded host names,
 * or one JSON document.
 *
 * The fan-out is kfleet facts' (coordinator/probe.c): a failure at any
 * step finishes the host with a code, the phase and a message; it never
 * stops the other hosts. Nothing is written on the nodes, and nothing in
 * the state database. */
#include "coordinator.h"
#include "doctor.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

/* ------------------------------------------------------------------------ */
/* doctor                                                                    */

struct doctor_run {
    char nonce[33];
    const char *module;
    struct deploy_doctor_ctx ctx;
    struct deploy_doctor_report *reports; /* one per host */
    size_t count[DEPLOY_DOCTOR_NSEVERITIES];
};

static int doctor_command(struct coord_probe *pf, struct coord_probe_host *ph, char **cmd)
{
    struct doctor_run *d = pf->data;

    return deploy_doctor_command(d->nonce, ph->h->become, ph->h->become_user, d->module, cmd);
}

static int doctor_parse(struct coord_probe *pf, struct coord_probe_host *ph, struct kf_err *err)
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

static void print_json(const struct coord_probe *pf, const struct doctor_run *d,
                       const char *profile, double secs)
{
    json_t *doc = json_object(), *hosts = json_array(), *sum = json_object();
    size_t i;

    for (i = 0; i < pf->n; i++) {
        const struct coord_probe_host *ph = &pf->hosts[i];
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
example(const struct coord_probe *pf, const struct doctor_run *d, const struct coord_group *g)
{
    size_t i;

    for (i = 0; i < pf->n; i++)
        if (pf->hosts[i].code == 0 && strcmp(pf->hosts[i].h->name, g->names[0]) == 0)
            return deploy_doctor_find(&d->reports[i], g->key);
    return NULL;
}

static void print_human(const struct coord_probe *pf, const struct doctor_run *d,
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
        const struct coord_probe_host *ph = &pf->hosts[i];
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
            const struct coord_probe_host *ph = &pf->hosts[i];
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
    struct coord_probe pf;
    struct doctor_run d;
    struct inventory inv;
    struct coord_config cfg;
    struct coord_db db;
    struct coord_artifact *arts = NULL;
    struct deploy_doctor_package *pk = NULL;
    const struct coord_profile *prof;
    struct kf_err err;
    char *state_dir = NULL, order[16 * (KF_MODNAME_MAX + 1)];
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
    prof = coord_config_select_profile(&cfg, o->profile, &err);
    if (prof == NULL) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        goto out;
    }
    load_store(&db, state_dir, prof->name, o->driver, &arts, &narts, &d.ctx, &pk);
    /* The first module of the load order is the one every kernel needs:
     * the profile's list, else a stored package's load order (a kmod
     * profile that names no modules), else NVIDIA's. */
    d.module = "nvidia";
    if (prof->nmodules > 0)
        d.module = prof->modules[0];
    else if (narts > 0 && coord_store_load_order(arts[0].path, order, sizeof(order), &err) == 0 &&
             order[0] != '\0') {
        order[strcspn(order, " ")] = '\0';
        d.module = order;
    }
    d.ctx.driver = o->driver;
    d.ctx.module = d.module;
    d.ctx.profile = prof->name;
    if (coord_make_nonce(d.nonce) < 0) {
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
    if (coord_probe_run(&pf, &inv, idx, n, "doctor") < 0) {
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
    coord_probe_release(&pf);
    free(pk);
    free(arts);
    coord_db_close(&db);
    coord_config_release(&cfg);
    free(state_dir);
    free(idx);
    inv_release(&inv);
    return exit_code;
}
