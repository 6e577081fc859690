/* Reports of a rollout, made from its journal (the one source of truth,
 * for `kfleet deploy` at its end and for `kfleet rollout show` later):
 * nodes grouped by outcome and error with folded host ranges, which nodes
 * are at which version, a JSON document, and JUnit XML for CI. */
#include "coordinator.h"
#include "deploy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *outcome_label(const char *outcome)
{
    if (outcome[0] == '\0')
        return "not finished";
    if (strcmp(outcome, "rolled_back") == 0)
        return "rolled back";
    if (strcmp(outcome, "rollback_failed") == 0)
        return "ROLLBACK FAILED";
    if (strcmp(outcome, "failed") == 0)
        return "FAILED";
    return outcome;
}

/* The version a node's running kernel is at, for the "which nodes are at
 * which version" table: from the node's end record, else "untouched". */
static const char *node_version(const struct coord_rollout_node *x, char *buf, size_t n)
{
    if (x->versions[0])
        return x->versions;
    if (strcmp(x->state, "pending") == 0)
        snprintf(buf, n, "untouched");
    else if (x->outcome[0] == '\0')
        snprintf(buf, n, "in progress (%s)", x->state);
    else
        snprintf(buf, n, "unknown");
    return buf;
}

void coord_rollout_print(const struct coord_rollout *r, const struct coord_rollout_node *v,
                         size_t n, int verbose, FILE *f)
{
    struct coord_groups by, vers;
    struct buf b;
    size_t i, j;
    char key[900], vb[64];

    coord_groups_init(&by);
    coord_groups_init(&vers);
    buf_init(&b, 0);
    for (i = 0; i < n; i++) {
        const struct coord_rollout_node *x = &v[i];
        const char *label =
            strcmp(x->state, "pending") == 0 ? "not started" : outcome_label(x->outcome);
        if (x->error[0] && strcmp(x->outcome, "updated") && strcmp(x->outcome, "unchanged"))
            snprintf(key, sizeof(key), "%s\t%s", label, x->error);
        else if (x->note[0])
            snprintf(key, sizeof(key), "%s\t%s", label, x->note);
        else
            snprintf(key, sizeof(key), "%s", label);
        coord_groups_add(&by, key, x->host, NULL);
        coord_groups_add(&vers, node_version(x, vb, sizeof(vb)), x->host, NULL);
    }
    coord_groups_sort(&by);
    coord_groups_sort(&vers);
    fprintf(f, "\n  %-16s %6s  %s\n", "RESULT", "COUNT", "HOSTS");
    for (i = 0; i < by.n; i++) {
        const struct coord_group *g = &by.g[i];
        char *tab = strchr(g->key, '\t');
        buf_reset(&b);
        coord_group_fold(g, &b);
        fprintf(f, "  %-16.*s %6zu  %s\n", tab ? (int)(tab - g->key) : (int)strlen(g->key), g->key,
                g->n, buf_cstr(&b));
        if (tab != NULL)
            fprintf(f, "      %s%s\n", g->n > 1 ? "e.g. " : "", tab + 1);
        if (verbose && tab != NULL && g->n > 1)
            for (j = 0; j < g->n; j++)
                fprintf(f, "        %s\n", g->names[j]);
    }
    fprintf(f, "\n  %-30s %6s  %s\n", r->kind[0] == 'r' ? "RUNNING KERNEL AT" : "RUNNING KERNEL AT",
            "COUNT", "HOSTS");
    for (i = 0; i < vers.n; i++) {
        buf_reset(&b);
        coord_group_fold(&vers.g[i], &b);
        fprintf(f, "  %-30s %6zu  %s\n", vers.g[i].key, vers.g[i].n, buf_cstr(&b));
    }
    buf_release(&b);
    coord_groups_release(&by);
    coord_groups_release(&vers);
}

/* Counts of outcomes over v (all, or one stage when stage >= 0). */
void coord_rollout_count(const struct coord_rollout_node *v, size_t n, int stage,
                         struct coord_rollout_counts *c)
{
    size_t i;

    memset(c, 0, sizeof(*c));
    for (i = 0; i < n; i++) {
        const struct coord_rollout_node *x = &v[i];
        if (stage >= 0 && x->stage != stage)
            continue;
        c->nodes++;
        if (strcmp(x->state, "pending") == 0)
            c->pending++;
        else if (x->outcome[0] == '\0')
            c->running++;
        else if (strcmp(x->outcome, "updated") == 0)
            c->updated++;
        else if (strcmp(x->outcome, "unchanged") == 0)
            c->unchanged++;
        else if (strcmp(x->outcome, "skipped") == 0)
            c->skipped++;
        else if (strcmp(x->outcome, "rolled_back") == 0)
            c->rolled_back++;
        else if (strcmp(x->outcome, "rollback_failed") == 0)
            c->rollback_failed++;
        else
            c->failed++;
    }
}

static json_t *str_or_null(const char *s)
{
    return s && s[0] ? json_string(s) : json_null();
}

json_t *coord_rollout_json(const struct coord_rollout *r, const struct coord_rollout_node *v,
                           size_t n)
{
    json_t *o = json_object(), *nodes = json_array(), *stages = json_array(), *sum, *opts;
    struct coord_rollout_counts c;
    size_t i;
    int s;

    json_object_set_new(o, "kfleet", json_string(KF_VERSION));
    json_object_set_new(o, "command", json_string(r->kind));
    json_object_set_new(o, "rollout", json_integer(r->id));
    json_object_set_new(o, "profile", json_string(r->profile));
    json_object_set_new(o, "driver", str_or_null(r->driver));
    json_object_set_new(o, "status", json_string(r->status));
    json_object_set_new(o, "reason", str_or_null(r->reason));
    json_object_set_new(o, "stage", json_integer(r->stage + 1));
    json_object_set_new(o, "created_at", json_integer(r->created_at));
    json_object_set_new(o, "finished_at",
                        r->finished_at ? json_integer(r->finished_at) : json_null());
    opts = r->options ? json_loads(r->options, 0, NULL) : NULL;
    json_object_set_new(o, "options", opts ? opts : json_object());
    for (s = 0; s < r->nstages; s++) {
        coord_rollout_count(v, n, s, &c);
        json_array_append_new(
            stages, json_pack("{s:i,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "stage", s + 1, "nodes",
                              (json_int_t)c.nodes, "updated", (json_int_t)c.updated, "unchanged",
                              (json_int_t)c.unchanged, "skipped", (json_int_t)c.skipped, "failed",
                              (json_int_t)c.failed, "rolled_back", (json_int_t)c.rolled_back,
                              "rollback_failed", (json_int_t)c.rollback_failed, "not_started",
                              (json_int_t)c.pending));
    }
    json_object_set_new(o, "stages", stages);
    coord_rollout_count(v, n, -1, &c);
    sum = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "nodes", (json_int_t)c.nodes,
                    "updated", (json_int_t)c.updated, "unchanged", (json_int_t)c.unchanged,
                    "skipped", (json_int_t)c.skipped, "failed", (json_int_t)c.failed, "rolled_back",
                    (json_int_t)c.rolled_back, "rollback_failed", (json_int_t)c.rollback_failed,
                    "not_started", (json_int_t)c.pending, "in_progress", (json_int_t)c.running);
    json_object_set_new(o, "summary", sum);
    for (i = 0; i < n; i++) {
        const struct coord_rollout_node *x = &v[i];
        json_t *h = json_object();
        char vb[64];
        json_object_set_new(h, "name", json_string(x->host));
        json_object_set_new(h, "stage", json_integer(x->stage + 1));
        json_object_set_new(h, "state", json_string(x->state));
        json_object_set_new(h, "outcome", str_or_null(x->outcome));
        json_object_set_new(h, "version", json_string(node_version(x, vb, sizeof(vb))));
        json_object_set_new(h, "seconds", x->outcome[0] ? json_real(x->seconds) : json_null());
        json_object_set_new(h, "bytes_sent", json_integer(x->bytes));
        json_object_set_new(h, "attempts", json_integer(x->attempts));
        json_object_set_new(h, "note", str_or_null(x->note));
        if (x->error[0] && strcmp(x->outcome, "updated") != 0 &&
            strcmp(x->outcome, "unchanged") != 0)
            json_object_set_new(
                h, "error",
                json_pack("{s:s,s:s,s:s}", "code", x->error_code[0] ? x->error_code : "CMD",
                          "phase", x->error_phase[0] ? x->error_phase : "", "message", x->error));
        else
            json_object_set_new(h, "error", json_null());
        json_array_append_new(nodes, h);
    }
    json_object_set_new(o, "nodes", nodes);
    return o;
}

static void xml_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '&')
            fputs("&amp;", f);
        else if (c == '<')
            fputs("&lt;", f);
        else if (c == '>')
            fputs("&gt;", f);
        else if (c == '"')
            fputs("&quot;", f);
        else if (c < 0x20 && c != '\t' && c != '\n')
            fputc('?', f); /* not allowed in XML 1.0 */
        else
            fputc(c, f);
    }
}

int coord_rollout_junit(const struct coord_rollout *r, const struct coord_rollout_node *v, size_t n,
                        const char *path, struct kf_err *err)
{
    char tmp[4200];
    FILE *f;
    size_t i, rb_fail;
    int s;
    struct coord_rollout_counts all;

    /* In a deploy a rolled-back node failed; in a rollback it succeeded. */
    rb_fail = strcmp(r->kind, "rollback") != 0;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (f == NULL)
        return kf_err_set(err, KF_EIO, "--junit %s: cannot write: %s", path, strerror(errno));
    coord_rollout_count(v, n, -1, &all);
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f,
            "<testsuites name=\"kfleet %s %lld\" tests=\"%zu\" failures=\"%zu\" skipped=\"%zu\">\n",
            r->kind, r->id, all.nodes, all.failed + rb_fail * all.rolled_back + all.rollback_failed,
            all.skipped + all.pending + all.running);
    for (s = 0; s < r->nstages; s++) {
        struct coord_rollout_counts c;
        double secs = 0;
        coord_rollout_count(v, n, s, &c);
        for (i = 0; i < n; i++)
            if (v[i].stage == s)
                secs += v[i].seconds;
        fprintf(f,
                "  <testsuite name=\"kfleet.%s.%lld.stage%d\" tests=\"%zu\" failures=\"%zu\" "
                "skipped=\"%zu\" time=\"%.3f\">\n",
                r->kind, r->id, s + 1, c.nodes,
                c.failed + rb_fail * c.rolled_back + c.rollback_failed,
                c.skipped + c.pending + c.running, secs);
        for (i = 0; i < n; i++) {
            const struct coord_rollout_node *x = &v[i];
            if (x->stage != s)
                continue;
            fprintf(f, "    <testcase classname=\"kfleet.%s.stage%d\" name=\"", r->kind, s + 1);
            xml_escape(f, x->host);
            fprintf(f, "\" time=\"%.3f\">", x->seconds);
            if (strcmp(x->outcome, "failed") == 0 ||
                (rb_fail && strcmp(x->outcome, "rolled_back") == 0) ||
                strcmp(x->outcome, "rollback_failed") == 0) {
                fprintf(f, "\n      <failure type=\"%s\" message=\"", x->outcome);
                xml_escape(f, x->error[0] ? x->error : x->outcome);
                fprintf(f, "\">");
                xml_escape(f, x->error_phase);
                fputs(": ", f);
                xml_escape(f, x->error);
                if (x->note[0]) {
                    fputs("\n", f);
                    xml_escape(f, x->note);
                }
                fprintf(f, "</failure>\n    ");
            } else if (strcmp(x->outcome, "skipped") == 0 || x->outcome[0] == '\0') {
                fprintf(f, "\n      <skipped message=\"");
                xml_escape(f, x->outcome[0] ? (x->error[0] ? x->error : "skipped")
                              : strcmp(x->state, "pending") == 0 ? "not started"
                                                                 : "not finished");
                fprintf(f, "\"/>\n    ");
            } else if (x->note[0]) {
                fprintf(f, "\n      <system-out>");
                xml_escape(f, x->note);
                fprintf(f, "</system-out>\n    ");
            }
            fprintf(f, "</testcase>\n");
        }
        fprintf(f, "  </testsuite>\n");
    }
    fprintf(f, "</testsuites>\n");
    if (fflush(f) != 0 || ferror(f)) {
        fclose(f);
        remove(tmp);
        return kf_err_set(err, KF_EIO, "--junit %s: write failed", path);
    }
    fclose(f);
    if (rename(tmp, path) < 0) {
        remove(tmp);
        return kf_err_set(err, KF_EIO, "--junit %s: %s", path, strerror(errno));
    }
    return 0;
}
