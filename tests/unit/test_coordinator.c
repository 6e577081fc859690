/* coordinator/: option parsing, the fan-out window, grouping, and the state
 * database (schema, privacy, failure keeps the last good facts). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coordinator.h"
#include "testutil.h"

static int parse(struct coord_opts *o, const char *line)
{
    char *argv[32], *copy = strdup(line), *tok, *save = NULL;
    int argc = 0, rc;
    FILE *devnull = freopen("/dev/null", "w", stderr);

    (void)devnull;
    argv[argc++] = "kfleet";
    for (tok = strtok_r(copy, " ", &save); tok && argc < 31; tok = strtok_r(NULL, " ", &save))
        argv[argc++] = tok;
    argv[argc] = NULL;
    optind = 0; /* re-initialise getopt between runs */
    rc = coord_parse_args(argc, argv, o);
    /* o's strings point into copy: tests only look at numbers and flags */
    free(copy);
    return rc;
}

static void test_options(void **state)
{
    struct coord_opts o;

    assert_int_equal(parse(&o, "facts"), 0);
    assert_int_equal(o.forks, 64);
    assert_int_equal(o.command_timeout_ms, 60000);
    assert_int_equal(o.progress, -1);
    assert_int_equal(parse(&o, "--forks 7 facts --command-timeout 500ms --json"), 0);
    assert_int_equal(o.forks, 7);
    assert_int_equal(o.command_timeout_ms, 500);
    assert_int_equal(o.json, 1);
    assert_int_equal(parse(&o, "facts --auth-timeout 2m --output-limit 256K"), 0);
    assert_int_equal(o.auth_timeout_ms, 120000);
    assert_int_equal(o.output_limit, 256 * 1024);
    assert_int_equal(parse(&o, "facts --forks 0"), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, "facts --forks -3"), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, "facts --connect-timeout 10x"), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, "facts --connect-timeout 0"), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, "facts --output-limit 12"), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, "facts --no-such-option"), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, "facts extra"), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, ""), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, "facts -i"), KF_EXIT_USAGE);
    /* deploy's options */
    assert_int_equal(parse(&o, "deploy --driver 550.54.15 --reload --auto-rollback "
                               "--rollback-stage --transfer-forks 3 --break-lock --shuffle"),
                     0);
    assert_int_equal(o.reload, 1);
    assert_int_equal(o.auto_rollback, 1);
    assert_int_equal(o.rollback_stage, 1);
    assert_int_equal(o.transfer_forks, 3);
    assert_int_equal(o.break_lock, 1);
    assert_int_equal(o.shuffle, 1);
    assert_int_equal(parse(&o, "deploy --transfer-forks 0"), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, "deploy --driver 5;5"), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, "rollback --to none"), 0);
    assert_int_equal(parse(&o, "rollback --to 550.54.15"), 0);
    assert_int_equal(parse(&o, "rollback --to yesterday"), KF_EXIT_USAGE);
    assert_int_equal(parse(&o, "rollout resume 12"), 0);
    assert_int_equal(o.nargs, 2);
    assert_int_equal(parse(&o, "deploy extra"), KF_EXIT_USAGE);
}

struct fan_probe {
    struct coord_fanout f;
    size_t started[64];
    size_t nstarted;
    unsigned max_running;
    size_t pending[64]; /* started, not yet done */
    size_t npending;
};

static void fan_start(struct coord_fanout *f, size_t i)
{
    struct fan_probe *p = f->data;

    p->started[p->nstarted++] = i;
    if (f->running > p->max_running)
        p->max_running = (unsigned)f->running;
    if (i % 3 == 0) /* finishes at once, from inside start() */
        coord_fanout_done(f);
    else
        p->pending[p->npending++] = i;
}

static void test_fanout_window(void **state)
{
    struct fan_probe p;
    size_t i;

    memset(&p, 0, sizeof(p));
    coord_fanout_init(&p.f, 20, 4, fan_start, &p);
    coord_fanout_pump(&p.f);
    while (p.npending > 0) {
        p.npending--; /* finish the newest: any order must work */
        coord_fanout_done(&p.f);
    }
    assert_int_equal(p.nstarted, 20);
    for (i = 0; i < 20; i++)
        assert_int_equal(p.started[i], i);
    assert_true(p.max_running <= 4);
    assert_int_equal(p.f.done, 20);
    assert_int_equal(p.f.running, 0);
}

static void test_groups(void **state)
{
    struct coord_groups gs;
    struct buf b;

    coord_groups_init(&gs);
    coord_groups_add(&gs, "6.1.0-47-amd64", "node003", NULL);
    coord_groups_add(&gs, "6.12.38+deb12-amd64", "node009", NULL);
    coord_groups_add(&gs, "6.1.0-47-amd64", "node001", NULL);
    coord_groups_add(&gs, "6.1.0-47-amd64", "node002", NULL);
    coord_groups_sort(&gs);
    assert_int_equal(gs.n, 2);
    assert_string_equal(gs.g[0].key, "6.1.0-47-amd64");
    buf_init(&b, 0);
    coord_group_fold(&gs.g[0], &b);
    assert_string_equal(buf_cstr(&b), "node[001-003]");
    buf_release(&b);
    coord_groups_release(&gs);
}

static char *tmpdir(void)
{
    char tmpl[] = "/tmp/kfleet-test-XXXXXX";
    char *d = mkdtemp(tmpl);

    assert_non_null(d);
    return strdup(d);
}

static void test_db_schema_and_privacy(void **state)
{
    struct coord_db d;
    struct kf_err err;
    struct stat st;
    char *dir = tmpdir(), path[512];

    snprintf(path, sizeof(path), "%s/nested/state", dir);
    assert_int_equal(coord_db_open(&d, path, &err), 0);
    assert_int_equal(coord_db_schema_version(&d), 4);
    coord_db_close(&d);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    snprintf(path, sizeof(path), "%s/nested/state/state.db", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* reopening migrates nothing and keeps the version */
    snprintf(path, sizeof(path), "%s/nested/state", dir);
    assert_int_equal(coord_db_open(&d, path, &err), 0);
    assert_int_equal(coord_db_schema_version(&d), 4);
    /* a database from a newer kfleet is refused, not damaged */
    assert_int_equal(sqlite3_exec(d.db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    coord_db_close(&d);
    assert_int_equal(coord_db_open(&d, path, &err), KF_EDB);
    assert_non_null(strstr(err.msg, "newer"));
    free(dir);
}

static int query_int(struct coord_db *d, const char *sql)
{
    sqlite3_stmt *st;
    int v = -1;

    assert_int_equal(sqlite3_prepare_v2(d->db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void test_db_failure_keeps_last_good_facts(void **state)
{
    struct coord_db d;
    struct kf_err err;
    struct inv_facts f;
    char *dir = tmpdir();

    memset(&f, 0, sizeof(f));
    strcpy(f.kernel, "6.1.0-47-amd64");
    strcpy(f.arch, "x86_64");
    strcpy(f.os_id, "debian");
    f.nkernels = 2;
    strcpy(f.kernels[0].release, "6.1.0-47-amd64");
    f.kernels[0].running = 1;
    strcpy(f.kernels[1].release, "6.12.38+deb12-amd64");
    assert_int_equal(coord_db_open(&d, dir, &err), 0);
    assert_int_equal(coord_db_store_facts(&d, "n1", 100, &f, 0, NULL, NULL, &err), 0);
    assert_int_equal(query_int(&d, "select count(*) from host_kernels where host='n1'"), 2);
    assert_int_equal(
        coord_db_store_facts(&d, "n1", 200, NULL, KF_ETIMEDOUT, "connect", "timed out", &err), 0);
    assert_int_equal(query_int(&d, "select ok from facts where host='n1'"), 0);
    assert_int_equal(query_int(&d, "select gathered_at from facts where host='n1'"), 200);
    assert_int_equal(query_int(&d, "select last_ok_at from facts where host='n1'"), 100);
    assert_int_equal(
        query_int(&d, "select count(*) from facts where host='n1' and kernel='6.1.0-47-amd64'"), 1);
    assert_int_equal(query_int(&d, "select count(*) from host_kernels where host='n1'"), 2);
    /* a host that never answered has a row with its error and no facts */
    assert_int_equal(coord_db_store_facts(&d, "n2", 300, NULL, KF_EAUTH, "auth", "denied", &err),
                     0);
    assert_int_equal(query_int(&d, "select count(*) from facts where host='n2' and "
                                   "error_code='AUTH' and kernel is null"),
                     1);
    /* new facts replace the kernel list */
    f.nkernels = 1;
    assert_int_equal(coord_db_store_facts(&d, "n1", 400, &f, 0, NULL, NULL, &err), 0);
    assert_int_equal(query_int(&d, "select count(*) from host_kernels where host='n1'"), 1);
    assert_int_equal(query_int(&d, "select ok from facts where host='n1'"), 1);
    coord_db_close(&d);
    free(dir);
}

/* The store's catalog: artifacts by key, build records, index.json. */
static void test_store_catalog(void **state)
{
    struct coord_db d;
    struct coord_config cfg;
    struct coord_profile prof;
    struct kf_err err;
    struct coord_key k1 = {"nvidia", "550.54.15", "6.1.0-47-amd64", "x86_64", "debian", "12"};
    struct coord_key k2 = {"nvidia", "550.54.15", "6.12.117+deb12-amd64", "x86_64", "debian", "12"};
    struct coord_key k3 = {"lustre", "2.15.4", "6.1.0-47-amd64", "x86_64", "debian", "12"};
    struct coord_artifact a, *v;
    char *dir = tmpdir(), st[4096], in[4096], er[4096], lg[4096], top[256], *kd, path[512];
    long long id1, id2;
    size_t n;
    json_t *idx;
    (void)state;

    assert_int_equal(coord_db_open(&d, dir, &err), 0);
    assert_int_equal(coord_db_artifact_get(&d, &k1, &a, &err), 0);
    assert_int_equal(
        coord_db_artifact_put(&d, &k1, "#1 SMP", "/s/a.tar.gz", "aa", 10, 7, 100, &err), 0);
    assert_int_equal(coord_db_artifact_put(&d, &k2, NULL, "/s/b.tar.gz", "bb", 20, 8, 100, &err),
                     0);
    assert_int_equal(coord_db_artifact_put(&d, &k3, NULL, "/s/c.tar.gz", "cc", 30, 9, 100, &err),
                     0);
    /* the same key again replaces */
    assert_int_equal(coord_db_artifact_put(&d, &k1, NULL, "/s/a2.tar.gz", "a2", 11, 10, 101, &err),
                     0);
    assert_int_equal(coord_db_artifact_get(&d, &k1, &a, &err), 1);
    assert_string_equal(a.path, "/s/a2.tar.gz");
    assert_int_equal(a.size, 11);
    assert_int_equal(coord_db_artifact_list(&d, NULL, "550.54.15", NULL, &v, &n, &err), 0);
    assert_int_equal(n, 2);
    free(v);
    assert_int_equal(coord_db_artifact_list(&d, "lustre", NULL, NULL, &v, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(coord_db_artifact_del(&d, &v[0], &err), 0);
    free(v);
    assert_int_equal(coord_db_artifact_list(&d, NULL, NULL, NULL, &v, &n, &err), 0);
    assert_int_equal(n, 2);
    free(v);

    /* builds: the last finished one counts */
    assert_int_equal(coord_db_build_last(&d, &k1, st, in, er, lg, &err), 0);
    assert_int_equal(coord_db_build_begin(&d, &k1, "in1", "src", 1, &id1, &err), 0);
    assert_int_equal(coord_db_build_end(&d, id1, "local", "failed", "make failed", "/l/1.log", 1.5,
                                        NULL, 2, &err),
                     0);
    assert_int_equal(coord_db_build_begin(&d, &k1, "in2", "src", 3, &id2, &err), 0);
    assert_true(id2 > id1);
    assert_int_equal(coord_db_build_last(&d, &k1, st, in, er, lg, &err), 1);
    assert_string_equal(st, "failed"); /* the running one does not count */
    assert_string_equal(in, "in1");
    assert_string_equal(er, "make failed");
    assert_string_equal(lg, "/l/1.log");
    assert_int_equal(
        coord_db_build_end(&d, id2, "local", "ok", NULL, "/l/2.log", 2.0, "abc", 4, &err), 0);
    assert_int_equal(coord_db_build_last(&d, &k1, st, in, er, lg, &err), 1);
    assert_string_equal(st, "ok");

    /* layout and index.json */
    coord_config_init(&cfg);
    snprintf(path, sizeof(path), "%s/store", dir);
    cfg.store = path;
    memset(&prof, 0, sizeof(prof));
    prof.name = "nvidia";
    prof.type = PROFILE_NVIDIA_RUN;
    assert_int_equal(coord_store_topdir(&prof, &k1, top, sizeof(top), &err), 0);
    assert_string_equal(top, "nvidia-driver-550.54.15-kernel-6.1.0-47-amd64-x86_64");
    prof.name = "lustre";
    prof.type = PROFILE_KMOD;
    assert_int_equal(coord_store_topdir(&prof, &k3, top, sizeof(top), &err), 0);
    assert_string_equal(top, "lustre-2.15.4-kernel-6.1.0-47-amd64-x86_64");
    kd = coord_store_keydir(&cfg, &k1);
    assert_non_null(strstr(kd, "/store/550.54.15/kernel-6.1.0-47-amd64"));
    free(kd);
    kd = coord_store_keydir(&cfg, &k3);
    assert_non_null(strstr(kd, "/store/lustre/2.15.4/kernel-6.1.0-47-amd64"));
    free(kd);
    assert_int_equal(mkdir(path, 0755), 0);
    assert_int_equal(coord_store_write_index(&d, &cfg, 1700000000, &err), 0);
    strcat(path, "/index.json");
    idx = json_load_file(path, 0, NULL);
    assert_non_null(idx);
    assert_string_equal(json_string_value(json_object_get(idx, "last_updated")),
                        "2023-11-14T22:13:20Z");
    assert_int_equal(json_array_size(json_object_get(idx, "drivers")), 1);
    {
        json_t *dr = json_array_get(json_object_get(idx, "drivers"), 0);
        json_t *ks = json_object_get(dr, "supported_kernels");
        assert_string_equal(json_string_value(json_object_get(dr, "version")), "550.54.15");
        assert_int_equal(json_array_size(ks), 2);
        /* kernels in version order */
        assert_string_equal(json_string_value(json_array_get(ks, 0)), "6.1.0-47-amd64");
        assert_string_equal(json_string_value(json_array_get(ks, 1)), "6.12.117+deb12-amd64");
    }
    json_decref(idx);
    cfg.store = NULL;
    coord_config_release(&cfg);
    coord_db_close(&d);
    kft_sh("rm -rf '%s'", dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_fanout_window),
        cmocka_unit_test(test_groups),
        cmocka_unit_test(test_db_schema_and_privacy),
        cmocka_unit_test(test_db_failure_keeps_last_good_facts),
        cmocka_unit_test(test_store_catalog),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
