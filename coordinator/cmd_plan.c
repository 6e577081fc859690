/* kfleet plan: the unique builds the fleet needs, from stored facts.
 *
 * A build key is (profile, driver version, kernel release, architecture,
 * distro id and version). Every kernel a node runs AND every kernel it has
 * installed but not running (the next reboot) contributes one. Each key is
 * either already in the store, to build, or not applicable with the reason
 * (kernel outside the profile's range, architecture, unknown distro family).
 * Nodes whose running kernel has the same release but a different build
 * string (uname -v) are reported: a module built against one may not load
 * in the other. */
#include "coordinator.h"
#include "dkms.h"

#include <stdlib.h>
#include <string.h>

/* Leading numeric components of a release or bound: "6.1.0-47" -> 6,1,0. */
static size_t version_parts(const char *s, unsigned long *v, size_t max)
{
    size_t n = 0;
    char *end;

    while (n < max && *s >= '0' && *s <= '9') {
        v[n++] = strtoul(s, &end, 10);
        s = end;
        if (*s != '.')
            break;
        s++;
    }
    return n;
}

/* <0, 0, >0 comparing the release to the bound over the bound's parts. */
static int cmp_to_bound(const char *release, const char *bound)
{
    unsigned long r[8] = {0}, b[8] = {0};
    size_t nb = version_parts(bound, b, 8), i;

    version_parts(release, r, 8);
    for (i = 0; i < nb; i++)
        if (r[i] != b[i])
            return r[i] < b[i] ? -1 : 1;
    return 0;
}

static const char *distro_family(const char *id, const char *like)
{
    static const char *const debian[] = {"debian", "ubuntu", NULL};
    static const char *const rhel[] = {"rhel",   "centos", "rocky", "almalinux",
                                       "fedora", "ol",     "amzn",  NULL};
    size_t i;

    for (i = 0; debian[i]; i++)
        if (strcmp(id, debian[i]) == 0 || (like && strstr(like, debian[i])))
            return "debian";
    for (i = 0; rhel[i]; i++)
        if (strcmp(id, rhel[i]) == 0 || (like && strstr(like, rhel[i])))
            return "rhel";
    return NULL;
}

static void judge(const struct coord_profile *p, const struct build_dkms *dkms,
                  struct coord_plan_key *k, const char *os_like)
{
    size_t i;
    int ok = p->narches == 0;

    k->status = PLAN_BUILD;
    for (i = 0; i < p->narches; i++)
        if (strcmp(p->arches[i], k->arch) == 0)
            ok = 1;
    if (!ok) {
        k->status = PLAN_NA;
        snprintf(k->reason, sizeof(k->reason), "profile %s does not build for %s", p->name,
                 k->arch);
    } else if (p->kernel_min && cmp_to_bound(k->kernel, p->kernel_min) < 0) {
        k->status = PLAN_NA;
        snprintf(k->reason, sizeof(k->reason), "kernel older than the profile's minimum %s",
                 p->kernel_min);
    } else if (p->kernel_max && cmp_to_bound(k->kernel, p->kernel_max) > 0) {
        k->status = PLAN_NA;
        snprintf(k->reason, sizeof(k->reason), "kernel newer than the profile's maximum %s",
                 p->kernel_max);
    } else if (distro_family(k->os_id, os_like) == NULL) {
        k->status = PLAN_NA;
        snprintf(k->reason, sizeof(k->reason),
                 "no kernel headers package known for distro '%s' (Debian-like and RHEL-like "
                 "are)",
                 k->os_id);
    } else if (dkms != NULL) {
        struct kf_err err;
        int r = build_dkms_applies(dkms, k->kernel, k->arch, k->reason, sizeof(k->reason), &err);
        if (r < 0)
            snprintf(k->reason, sizeof(k->reason), "%s", kf_err_msg(&err));
        if (r <= 0)
            k->status = PLAN_NA;
    }
}

int coord_plan_kernel_applies(const struct coord_profile *p, const char *kernel, const char *arch,
                              char *reason, size_t reason_size)
{
    struct coord_plan_key k;

    memset(&k, 0, sizeof(k));
    snprintf(k.kernel, sizeof(k.kernel), "%s", kernel);
    snprintf(k.arch, sizeof(k.arch), "%s", arch);
    /* The distro check is the build's business (headers); a stored
     * package settles it. */
    snprintf(k.os_id, sizeof(k.os_id), "debian");
    judge(p, NULL, &k, NULL);
    if (k.status == PLAN_NA) {
        snprintf(reason, reason_size, "%s", k.reason);
        return 0;
    }
    return 1;
}

static struct coord_plan_key *plan_get(struct coord_plan *pl, const char *kernel, const char *arch,
                                       const char *os_id, const char *os_version, int *created)
{
    struct coord_plan_key *k;
    size_t i;

    *created = 0;
    for (i = 0; i < pl->n; i++) {
        k = &pl->keys[i];
        if (!strcmp(k->kernel, kernel) && !strcmp(k->arch, arch) && !strcmp(k->os_id, os_id) &&
            !strcmp(k->os_version, os_version))
            return k;
    }
    k = realloc(pl->keys, (pl->n + 1) * sizeof(*pl->keys));
    if (k == NULL)
        return NULL;
    pl->keys = k;
    k = &pl->keys[pl->n++];
    memset(k, 0, sizeof(*k));
    snprintf(k->kernel, sizeof(k->kernel), "%s", kernel);
    snprintf(k->arch, sizeof(k->arch), "%s", arch);
    snprintf(k->os_id, sizeof(k->os_id), "%s", os_id);
    snprintf(k->os_version, sizeof(k->os_version), "%s", os_version);
    coord_groups_init(&k->hosts);
    coord_groups_init(&k->builds);
    *created = 1;
    return k;
}

void coord_plan_release(struct coord_plan *pl)
{
    size_t i;

    for (i = 0; i < pl->n; i++) {
        coord_groups_release(&pl->keys[i].hosts);
        coord_groups_release(&pl->keys[i].builds);
    }
    free(pl->keys);
}

static int key_cmp(const void *a, const void *b)
{
    const struct coord_plan_key *x = a, *y = b;
    int c;

    if (x->status != y->status)
        return (int)x->status - (int)y->status;
    if ((c = strverscmp(x->kernel, y->kernel)) != 0)
        return c;
    if ((c = strcmp(x->arch, y->arch)) != 0)
        return c;
    if ((c = strcmp(x->os_id, y->os_id)) != 0)
        return c;
    return strverscmp(x->os_version, y->os_version);
}

static const char *status_word(enum coord_plan_status s)
{
    return s == PLAN_STORED ? "stored" : s == PLAN_BUILD ? "build" : "n/a";
}

int coord_plan_collect(struct coord_db *db, const struct inventory *inv, const size_t *idx,
                       size_t n, const struct coord_profile *prof, const struct build_dkms *dkms,
                       const char *driver, struct coord_plan *pl, struct coord_groups *nofacts,
                       struct kf_err *err)
{
    sqlite3_stmt *q = NULL, *art = NULL;
    size_t i;
    int rc = 0, created;

    if (sqlite3_prepare_v2(db->db,
                           "SELECT f.arch, f.os_id, f.os_version, f.kernel_build, hk.release, "
                           "hk.running, f.facts_json FROM facts f JOIN host_kernels hk ON "
                           "hk.host = f.host WHERE f.host = ?1 AND f.last_ok_at IS NOT NULL",
                           -1, &q, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(
            db->db,
            "SELECT kernel_build FROM artifacts WHERE profile = ?1 AND driver = ?2 AND "
            "kernel = ?3 AND arch = ?4 AND os_id = ?5 AND os_version = ?6",
            -1, &art, NULL) != SQLITE_OK) {
        rc = kf_err_set(err, KF_EDB, "%s: %s", db->path, sqlite3_errmsg(db->db));
        goto out;
    }
    for (i = 0; i < n && rc == 0; i++) {
        const char *host = inv->hosts[idx[i]].name;
        int rows = 0, step;

        sqlite3_bind_text(q, 1, host, -1, SQLITE_STATIC);
        while ((step = sqlite3_step(q)) == SQLITE_ROW) {
            const char *arch = (const char *)sqlite3_column_text(q, 0);
            const char *os_id = (const char *)sqlite3_column_text(q, 1);
            const char *os_ver = (const char *)sqlite3_column_text(q, 2);
            const char *kbuild = (const char *)sqlite3_column_text(q, 3);
            const char *rel = (const char *)sqlite3_column_text(q, 4);
            int running = sqlite3_column_int(q, 5);
            struct coord_plan_key *k;

            rows++;
            /* The database holds only validated facts; check again anyway:
             * a release goes into paths and commands from here on. */
            if (rel == NULL || !kf_krel_valid(rel))
                continue;
            k = plan_get(pl, rel, arch ? arch : "", os_id ? os_id : "", os_ver ? os_ver : "",
                         &created);
            if (k == NULL) {
                rc = kf_err_set(err, KF_ENOMEM, "out of memory");
                break;
            }
            if (created) {
                json_t *fj = json_loads((const char *)sqlite3_column_text(q, 6), 0, NULL);
                const char *like =
                    json_string_value(json_object_get(json_object_get(fj, "os"), "like"));
                judge(prof, dkms, k, like);
                json_decref(fj);
                if (k->status == PLAN_BUILD) {
                    sqlite3_bind_text(art, 1, prof->name, -1, SQLITE_STATIC);
                    sqlite3_bind_text(art, 2, driver, -1, SQLITE_STATIC);
                    sqlite3_bind_text(art, 3, k->kernel, -1, SQLITE_STATIC);
                    sqlite3_bind_text(art, 4, k->arch, -1, SQLITE_STATIC);
                    sqlite3_bind_text(art, 5, k->os_id, -1, SQLITE_STATIC);
                    sqlite3_bind_text(art, 6, k->os_version, -1, SQLITE_STATIC);
                    if (sqlite3_step(art) == SQLITE_ROW) {
                        const char *kb = (const char *)sqlite3_column_text(art, 0);
                        k->status = PLAN_STORED;
                        snprintf(k->artifact_build, sizeof(k->artifact_build), "%s", kb ? kb : "");
                    }
                    sqlite3_reset(art);
                }
            }
            if (coord_groups_add(&k->hosts, "all", host, NULL) < 0 ||
                (running && coord_groups_add(&k->builds, kbuild ? kbuild : "?", host, NULL) < 0)) {
                rc = kf_err_set(err, KF_ENOMEM, "out of memory");
                break;
            }
            if (running)
                k->running++;
            else
                k->installed++;
        }
        if (rc == 0 && step != SQLITE_DONE)
            rc = kf_err_set(err, KF_EDB, "%s: %s", db->path, sqlite3_errmsg(db->db));
        sqlite3_reset(q);
        if (rc == 0 && rows == 0 && coord_groups_add(nofacts, "no facts", host, NULL) < 0)
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
    }
    if (pl->n > 1)
        qsort(pl->keys, pl->n, sizeof(*pl->keys), key_cmp);
out:
    sqlite3_finalize(q);
    sqlite3_finalize(art);
    return rc;
}

static void print_plan_json(const struct coord_plan *pl, const struct coord_groups *nofacts,
                            const struct coord_profile *prof, const char *driver)
{
    json_t *doc = json_object(), *keys = json_array(), *nf = json_array();
    size_t i, j, counts[3] = {0, 0, 0};

    for (i = 0; i < pl->n; i++) {
        const struct coord_plan_key *k = &pl->keys[i];
        json_t *o = json_object(), *hosts = json_array(), *builds = json_object();
        for (j = 0; j < k->hosts.g[0].n; j++)
            json_array_append_new(hosts, json_string(k->hosts.g[0].names[j]));
        for (j = 0; j < k->builds.n; j++)
            json_object_set_new(builds, k->builds.g[j].key,
                                json_integer((json_int_t)k->builds.g[j].n));
        json_object_set_new(o, "kernel", json_string(k->kernel));
        json_object_set_new(o, "arch", json_string(k->arch));
        json_object_set_new(o, "os",
                            json_pack("{s:s,s:s}", "id", k->os_id, "version", k->os_version));
        json_object_set_new(o, "status", json_string(status_word(k->status)));
        json_object_set_new(o, "reason", k->reason[0] ? json_string(k->reason) : json_null());
        json_object_set_new(o, "nodes_running", json_integer((json_int_t)k->running));
        json_object_set_new(o, "nodes_installed_only", json_integer((json_int_t)k->installed));
        json_object_set_new(o, "kernel_builds", builds);
        json_object_set_new(o, "artifact_kernel_build",
                            k->artifact_build[0] ? json_string(k->artifact_build) : json_null());
        json_object_set_new(o, "hosts", hosts);
        json_array_append_new(keys, o);
        counts[k->status]++;
    }
    for (i = 0; i < nofacts->n; i++)
        for (j = 0; j < nofacts->g[i].n; j++)
            json_array_append_new(nf, json_string(nofacts->g[i].names[j]));
    json_object_set_new(doc, "kfleet", json_string(KF_VERSION));
    json_object_set_new(doc, "command", json_string("plan"));
    json_object_set_new(doc, "profile", json_string(prof->name));
    json_object_set_new(doc, "driver", json_string(driver));
    json_object_set_new(doc, "summary",
                        json_pack("{s:I,s:I,s:I,s:I}", "keys", (json_int_t)pl->n, "stored",
                                  (json_int_t)counts[PLAN_STORED], "build",
                                  (json_int_t)counts[PLAN_BUILD], "not_applicable",
                                  (json_int_t)counts[PLAN_NA]));
    json_object_set_new(doc, "keys", keys);
    json_object_set_new(doc, "hosts_without_facts", nf);
    json_dumpf(doc, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(doc);
}

static void print_plan_human(const struct coord_plan *pl, const struct coord_groups *nofacts,
                             const struct coord_profile *prof, const char *driver)
{
    struct buf b;
    size_t i, j, counts[3] = {0, 0, 0};

    for (i = 0; i < pl->n; i++)
        counts[pl->keys[i].status]++;
    printf("kfleet plan: profile %s, driver %s: %zu build key%s: %zu stored, %zu to build, %zu "
           "not applicable\n",
           prof->name, driver, pl->n, pl->n == 1 ? "" : "s", counts[PLAN_STORED],
           counts[PLAN_BUILD], counts[PLAN_NA]);
    if (pl->n > 0)
        printf("\n  %-7s %-28s %-8s %-13s %7s %9s  %s\n", "STATUS", "KERNEL", "ARCH", "OS",
               "RUNNING", "INSTALLED", "HOSTS");
    buf_init(&b, 0);
    for (i = 0; i < pl->n; i++) {
        const struct coord_plan_key *k = &pl->keys[i];
        char os[140];
        buf_reset(&b);
        coord_group_fold(&k->hosts.g[0], &b);
        snprintf(os, sizeof(os), "%s %s", k->os_id, k->os_version);
        printf("  %-7s %-28s %-8s %-13s %7zu %9zu  %s\n", status_word(k->status), k->kernel,
               k->arch, os, k->running, k->installed, buf_cstr(&b));
        if (k->status == PLAN_NA)
            printf("          why: %s\n", k->reason);
        for (j = 0; k->artifact_build[0] && j < k->builds.n; j++) {
            if (strcmp(k->builds.g[j].key, k->artifact_build) == 0)
                continue;
            buf_reset(&b);
            coord_group_fold(&k->builds.g[j], &b);
            printf("          WARNING: the stored package was built for '%s', but %s run '%s'\n",
                   k->artifact_build, buf_cstr(&b), k->builds.g[j].key);
        }
        if (k->builds.n > 1) {
            printf("          WARNING: nodes run %s with %zu different kernel builds (uname -v); "
                   "a module built for one may not load on the others:\n",
                   k->kernel, k->builds.n);
            for (j = 0; j < k->builds.n; j++) {
                buf_reset(&b);
                coord_group_fold(&k->builds.g[j], &b);
                printf("            %s: %s\n", k->builds.g[j].key, buf_cstr(&b));
            }
        }
    }
    if (nofacts->n > 0) {
        buf_reset(&b);
        coord_group_fold(&nofacts->g[0], &b);
        printf("\n%zu host%s without facts (run kfleet facts first): %s\n", nofacts->g[0].n,
               nofacts->g[0].n == 1 ? "" : "s", buf_cstr(&b));
    }
    buf_release(&b);
}

int cmd_plan(struct coord_opts *o)
{
    struct inventory inv;
    struct coord_db db;
    struct coord_config cfg;
    struct coord_groups nofacts;
    struct coord_plan pl = {NULL, 0};
    struct coord_source src;
    const struct coord_profile *prof;
    const char *driver;
    struct kf_err err;
    char *state_dir = NULL;
    size_t *idx = NULL, n = 0, i;
    int rc, exit_code = KF_EXIT_USAGE;

    memset(&db, 0, sizeof(db));
    coord_source_init(&src);
    coord_config_init(&cfg);
    coord_groups_init(&nofacts);
    kf_err_clear(&err);
    rc = coord_load_selection(o, &inv, &idx, &n);
    if (rc != 0)
        return rc;
    state_dir = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
    if (state_dir == NULL) {
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
        struct buf names;
        buf_init(&names, 0);
        for (i = 0; i < cfg.nprofiles; i++)
            buf_printf(&names, "%s%s", i ? ", " : "", cfg.profiles[i].name);
        fprintf(stderr, "kfleet: %s: no profile '%s' (profiles: %s)\n", o->config,
                o->profile ? o->profile : "nvidia", names.len ? buf_cstr(&names) : "none");
        buf_release(&names);
        goto out;
    }
    /* A DKMS package's BUILD_EXCLUSIVE_* settings make kernels n/a. */
    if (prof->type == PROFILE_KMOD && (o->source || prof->source)) {
        if (coord_source_inspect(prof, o->source, 0, &src, &err) < 0) {
            fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
            goto out;
        }
    }
    /* The version: --driver, else a DKMS package's PACKAGE_VERSION. */
    driver = o->driver ? o->driver : src.has_dkms ? src.dkms.package_version : NULL;
    if (driver == NULL || !kf_driver_version_valid(driver)) {
        fprintf(stderr, "kfleet: plan needs --driver VERSION, like --driver 550.54.15\n");
        goto out;
    }
    if (coord_db_open(&db, state_dir, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        exit_code = KF_EXIT_ERROR;
        goto out;
    }
    if (coord_plan_collect(&db, &inv, idx, n, prof, src.has_dkms ? &src.dkms : NULL, driver, &pl,
                           &nofacts, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        exit_code = KF_EXIT_ERROR;
        goto out;
    }
    if (o->json)
        print_plan_json(&pl, &nofacts, prof, driver);
    else
        print_plan_human(&pl, &nofacts, prof, driver);
    exit_code = KF_EXIT_OK;
out:
    coord_plan_release(&pl);
    coord_source_release(&src);
    coord_groups_release(&nofacts);
    coord_db_close(&db);
    coord_config_release(&cfg);
    free(state_dir);
    free(idx);
    inv_release(&inv);
    return exit_code;
}
