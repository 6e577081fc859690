/* kfleet facts: one probe command per node, every node in parallel under
 * --forks, results parsed as untrusted input, stored in the state database,
 * and reported grouped by kernel (and failures by reason).
 *
 * The fan-out is coordinator/probe.c's: per host, connect, exec the probe,
 * parse, store, done; a failure at any step finishes the host with a code,
 * the phase it happened in and a message, and never stops the other
 * hosts. */
#include "coordinator.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

struct facts_run {
    struct coord_opts *o;
    struct inventory inv;
    size_t *idx;
    size_t n;
    struct coord_probe probe;
    struct inv_facts *facts; /* one per host, parallel to probe.hosts */
    struct coord_db db;
    char nonce[33];
    long long now;
    int db_error;
    struct kf_err db_err;
};

static int facts_command(struct coord_probe *p, struct coord_probe_host *ph, char **cmd)
{
    struct facts_run *r = p->data;

    return inv_facts_command(r->nonce, ph->h->become, ph->h->become_user, cmd);
}

static int facts_parse(struct coord_probe *p, struct coord_probe_host *ph, struct kf_err *err)
{
    struct facts_run *r = p->data;

    return inv_facts_parse(ph->x.out.data ? ph->x.out.data : "", ph->x.out.len, r->nonce,
                           &r->facts[ph->index], err);
}

/* Each host's attempt goes to the state database as it ends. */
static void facts_finished(struct coord_probe *p, struct coord_probe_host *ph)
{
    struct facts_run *r = p->data;
    struct kf_err err;

    kf_err_clear(&err);
    if (!r->db_error &&
        coord_db_store_facts(&r->db, ph->h->name, r->now, ph->code ? NULL : &r->facts[ph->index],
                             ph->code, ph->phase, ph->msg, &err) < 0) {
        /* Keep gathering: the report still reaches the operator, and the
         * exit status says the state was not saved. */
        r->db_error = 1;
        r->db_err = err;
    }
}

/* --- output ------------------------------------------------------------------- */

static json_t *job_json(const struct facts_run *r, const struct coord_probe_host *j)
{
    json_t *o = json_object();

    json_object_set_new(o, "name", json_string(j->h->name));
    json_object_set_new(o, "ok", json_boolean(j->code == 0));
    json_object_set_new(o, "seconds", json_real((double)(j->t1_ns - j->t0_ns) / 1e9));
    json_object_set_new(o, "handshake_retries", json_integer(j->retries));
    if (j->code == 0) {
        json_object_set_new(o, "facts", inv_facts_to_json(&r->facts[j->index]));
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
        json_array_append_new(hosts, job_json(r, &r->probe.hosts[i]));
    json_object_set_new(sum, "hosts", json_integer((json_int_t)r->n));
    json_object_set_new(sum, "ok", json_integer((json_int_t)(r->n - r->probe.failed)));
    json_object_set_new(sum, "failed", json_integer((json_int_t)r->probe.failed));
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
        const struct coord_probe_host *j = &r->probe.hosts[i];
        const struct inv_facts *f = &r->facts[i];
        if (j->code != 0) {
            snprintf(key, sizeof(key), "%s (%s)", kf_strerror(j->code), j->phase);
            coord_groups_add(&failed, key, j->h->name, j->msg);
            continue;
        }
        snprintf(key, sizeof(key), "%-28s %-8s %s %s", f->kernel, f->arch,
                 f->os_id[0] ? f->os_id : "?", f->os_version);
        coord_groups_add(&running, key, j->h->name, NULL);
        for (k = 0; k < f->nkernels; k++)
            if (!f->kernels[k].running)
                coord_groups_add(&installed, f->kernels[k].release, j->h->name, NULL);
    }
    printf("kfleet facts: %zu host%s, %zu answered, %zu failed (%.1f s)\n", r->n,
           r->n == 1 ? "" : "s", r->n - r->probe.failed, r->probe.failed, secs);
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
                if (r->probe.hosts[i].code != 0)
                    printf("  %s: %s\n", r->probe.hosts[i].h->name, r->probe.hosts[i].msg);
        }
    }
    coord_groups_release(&running);
    coord_groups_release(&installed);
    coord_groups_release(&failed);
}

int cmd_facts(struct coord_opts *o)
{
    struct facts_run r;
    struct kf_err err;
    char *state_dir = NULL;
    uint64_t t0;
    int rc, exit_code = KF_EXIT_ERROR;

    memset(&r, 0, sizeof(r));
    kf_err_clear(&err);
    r.o = o;
    if (o->print_probe) {
        /* What runs on every node, for review (and for bench/ to give other
         * tools the very same command). The nonce changes per run. */
        char *cmd = NULL;
        if (coord_make_nonce(r.nonce) < 0 || inv_facts_command(r.nonce, 0, NULL, &cmd) < 0)
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
    if (coord_make_nonce(r.nonce) < 0) {
        fprintf(stderr, "kfleet: cannot get random bytes for the probe nonce\n");
        goto out;
    }
    r.facts = calloc(r.n, sizeof(*r.facts));
    if (r.facts == NULL) {
        fprintf(stderr, "kfleet: out of memory\n");
        goto out;
    }
    r.now = (long long)time(NULL);
    r.probe.o = o;
    r.probe.command = facts_command;
    r.probe.parse = facts_parse;
    r.probe.finished = facts_finished;
    r.probe.parse_phase = "facts";
    r.probe.data = &r;
    t0 = uv_hrtime();
    if (coord_probe_run(&r.probe, &r.inv, r.idx, r.n, "facts") < 0) {
        fprintf(stderr, "kfleet: out of memory\n");
        goto out;
    }
    if (o->json)
        print_json(&r, (double)(uv_hrtime() - t0) / 1e9);
    else
        print_human(&r, (double)(uv_hrtime() - t0) / 1e9);
    if (o->result != NULL) {
        o->result->facts_hosts = r.n;
        o->result->facts_failed = r.probe.failed;
    }
    if (r.db_error) {
        fprintf(stderr, "kfleet: facts were not saved: %s\n", kf_err_msg(&r.db_err));
        exit_code = KF_EXIT_ERROR;
    } else {
        exit_code = r.probe.failed ? KF_EXIT_HOSTS : KF_EXIT_OK;
    }
out:
    coord_probe_release(&r.probe);
    free(r.facts);
    coord_db_close(&r.db);
    free(state_dir);
    free(r.idx);
    inv_release(&r.inv);
    return exit_code;
}
