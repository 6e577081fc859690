/* The deploy's pure parts: stages and failure budgets, the node program's
 * command line and the parsers of what it prints (untrusted), the prior
 * state's JSON, and the rollout journal in a real SQLite database. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "deploy.h"
#include "testutil.h"

static size_t split(const char *spec, size_t total, size_t *sizes)
{
    struct coord_stage_spec sp[COORD_MAX_STAGE_SPECS];
    size_t n = 0;
    struct kf_err err;
    int ns;

    assert_int_equal(coord_stages_parse(spec, sp, &n, &err), 0);
    ns = coord_stages_split(sp, n, total, sizes, 64);
    assert_true(ns >= 0);
    return (size_t)ns;
}

static void test_stages(void **state)
{
    size_t s[64], ns, i, sum;
    struct coord_stage_spec sp[COORD_MAX_STAGE_SPECS];
    size_t n;
    struct kf_err err;

    (void)state;
    /* Ansible's serial: 1, 5, 20% of 100 = 20, then 100% of what is left. */
    ns = split("1,5,20%,100%", 100, s);
    assert_int_equal(ns, 4);
    assert_int_equal(s[0], 1);
    assert_int_equal(s[1], 5);
    assert_int_equal(s[2], 20);
    assert_int_equal(s[3], 74);
    /* The last entry repeats. */
    ns = split("1,10%", 35, s);
    assert_int_equal(ns, 1 + 12); /* 11 stages of 3, then the 1 left */
    assert_int_equal(s[0], 1);
    for (i = 1, sum = 1; i < ns; i++)
        sum += s[i];
    assert_int_equal(sum, 35);
    assert_int_equal(s[1], 3);      /* 10% of 35, rounded down */
    assert_int_equal(s[ns - 1], 1); /* the last stage is what is left */
    /* A percentage of a small fleet is still one node. */
    ns = split("5%", 3, s);
    assert_int_equal(ns, 3);
    assert_int_equal(s[0], 1);
    /* A count larger than the fleet: one stage. */
    ns = split("50", 7, s);
    assert_int_equal(ns, 1);
    assert_int_equal(s[0], 7);
    assert_int_equal(split("1,100%", 0, s), 0);
    /* Bad lists name the entry. */
    assert_int_equal(coord_stages_parse("1,0,100%", sp, &n, &err), KF_EINVAL);
    assert_non_null(strstr(err.msg, "entry 2 '0'"));
    assert_int_equal(coord_stages_parse("1,101%", sp, &n, &err), KF_EINVAL);
    assert_int_equal(coord_stages_parse("1,,2", sp, &n, &err), KF_EINVAL);
    assert_int_equal(coord_stages_parse("a", sp, &n, &err), KF_EINVAL);
    assert_int_equal(coord_stages_parse("", sp, &n, &err), KF_EINVAL);
    assert_int_equal(coord_stages_parse("1;rm -rf", sp, &n, &err), KF_EINVAL);
    /* Too many stages for the room given. */
    assert_int_equal(coord_stages_parse("1", sp, &n, &err), 0);
    assert_int_equal(coord_stages_split(sp, n, 100, s, 10), KF_EINVAL);
}

static void test_budget(void **state)
{
    struct coord_budget b;
    struct kf_err err;
    char buf[32];

    (void)state;
    assert_int_equal(coord_budget_parse("5%", &b, &err), 0);
    assert_int_equal(coord_budget_allowed(&b, 1), 0); /* a canary of one: none allowed */
    assert_int_equal(coord_budget_allowed(&b, 20), 1);
    assert_int_equal(coord_budget_allowed(&b, 100), 5);
    assert_string_equal(coord_budget_str(&b, buf, sizeof(buf)), "5%");
    assert_int_equal(coord_budget_parse("2", &b, &err), 0);
    assert_int_equal(coord_budget_allowed(&b, 1), 2);
    assert_int_equal(coord_budget_parse("0", &b, &err), 0);
    assert_int_equal(coord_budget_allowed(&b, 1000), 0);
    memset(&b, 0, sizeof(b));
    assert_true(coord_budget_allowed(&b, 10) > 1000000);
    assert_string_equal(coord_budget_str(&b, buf, sizeof(buf)), "unlimited");
    assert_int_equal(coord_budget_parse("150%", &b, &err), KF_EINVAL);
    assert_int_equal(coord_budget_parse("-1", &b, &err), KF_EINVAL);
    assert_int_equal(coord_budget_parse("x", &b, &err), KF_EINVAL);
    assert_non_null(strstr(err.msg, "'x'"));
}

static void test_command(void **state)
{
    const char *args[] = {"--kernel", "6.1.0-47-amd64", "--owner", "it's"};
    char *cmd = NULL;

    (void)state;
    assert_int_equal(deploy_node_command(0, NULL, "check", args, 4, &cmd), 0);
    assert_true(strncmp(cmd, "sh -c '", 7) == 0);
    assert_non_null(strstr(cmd, " kfleet-node 'check' '--kernel' '6.1.0-47-amd64' '--owner' "
                                "'it'\\''s'"));
    free(cmd);
    assert_int_equal(deploy_node_command(1, "ops", "check", NULL, 0, &cmd), 0);
    assert_true(strncmp(cmd, "sudo -n -u 'ops' sh -c '", 24) == 0);
    free(cmd);
    assert_int_equal(deploy_node_command(1, "", "check", NULL, 0, &cmd), KF_EINVAL);
    assert_true(deploy_owner_valid("rollout-12@control01.example.com"));
    assert_false(deploy_owner_valid("rollout 12"));
    assert_false(deploy_owner_valid("x;y"));
    assert_false(deploy_owner_valid(""));
    assert_true(deploy_profile_valid("nvidia"));
    assert_false(deploy_profile_valid("a/b"));
}

static const char check_ok[] =
    "node 1\n"
    "arch x86_64\n"
    "running 6.1.0-47-amd64\n"
    "kernel 6.1.0-47-amd64\n"
    "kernel 6.12.38+deb12-amd64\n"
    "os debian 12\n"
    "free /var/lib/kfleet 1048576\n"
    "free /lib/modules 2097152\n"
    "held 1.0.0 6.1.0-47-amd64 " /* sha */
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
    "held 1.0.1 6.1.0-47-amd64 "
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n"
    "current 6.1.0-47-amd64 1.0.1 "
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb testdrv\n"
    "previous 6.1.0-47-amd64 1.0.0 "
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa testdrv\n"
    "files 6.1.0-47-amd64 ok\n"
    "loaded kfleet_core 1.0.1\n"
    "loaded kfleet_drm -\n"
    "loaded kfleet_uvm none\n"
    "userspace 550.54.15\n"
    "smi present\n"
    "secure_boot enabled\n"
    "sig_enforce 1\n"
    "lock rollout-3@ctl 1795000000\n"
    "some_future_tag with values\n"
    "ok check\n";

static void test_check_parse(void **state)
{
    struct deploy_check c;
    struct kf_err err;
    const struct deploy_loaded *l;

    (void)state;
    kf_err_clear(&err);
    assert_int_equal(deploy_check_parse(check_ok, strlen(check_ok), &c, &err), 0);
    assert_string_equal(c.arch, "x86_64");
    assert_string_equal(c.running, "6.1.0-47-amd64");
    assert_int_equal(c.nkernels, 2);
    assert_string_equal(c.kernels[1], "6.12.38+deb12-amd64");
    assert_string_equal(c.os_id, "debian");
    assert_int_equal(c.free_var_kib, 1048576);
    assert_int_equal(c.free_mod_kib, 2097152);
    assert_int_equal(c.nheld, 2);
    assert_true(deploy_check_holds(&c, "1.0.0", "6.1.0-47-amd64", NULL));
    assert_false(deploy_check_holds(&c, "1.0.0", "6.12.38+deb12-amd64", NULL));
    assert_string_equal(deploy_check_current(&c, "6.1.0-47-amd64")->driver, "1.0.1");
    assert_string_equal(deploy_check_previous(&c, "6.1.0-47-amd64")->driver, "1.0.0");
    assert_null(deploy_check_current(&c, "6.12.38+deb12-amd64"));
    assert_int_equal(deploy_check_files(&c, "6.1.0-47-amd64"), DEPLOY_FILES_OK);
    assert_int_equal(deploy_check_files(&c, "6.12.38+deb12-amd64"), DEPLOY_FILES_UNKNOWN);
    l = deploy_check_loaded(&c, "kfleet-core"); /* '-' and '_' alike */
    assert_non_null(l);
    assert_true(l->loaded);
    assert_string_equal(l->version, "1.0.1");
    assert_true(deploy_check_loaded(&c, "kfleet_drm")->loaded);
    assert_string_equal(deploy_check_loaded(&c, "kfleet_drm")->version, "");
    assert_false(deploy_check_loaded(&c, "kfleet_uvm")->loaded);
    assert_null(deploy_check_loaded(&c, "nvidia"));
    assert_string_equal(c.userspace, "550.54.15");
    assert_true(c.smi_present);
    assert_int_equal(c.secure_boot, INV_YES);
    assert_int_equal(c.sig_enforce, 1);
    assert_true(c.locked);
    assert_string_equal(c.lock_owner, "rollout-3@ctl");
    assert_int_equal(c.lock_since, 1795000000);
}

/* Replaces the first occurrence of what in check_ok with with. */
static int parse_edit(const char *what, const char *with, struct kf_err *err)
{
    struct deploy_check c;
    static char buf[16384];
    const char *p = strstr(check_ok, what);
    int rc;

    assert_non_null(p);
    snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(p - check_ok), check_ok, with, p + strlen(what));
    kf_err_clear(err);
    rc = deploy_check_parse(buf, strlen(buf), &c, err);
    return rc;
}

static void test_check_hostile(void **state)
{
    struct kf_err err;
    struct deploy_check c;
    char big[9000];

    (void)state;
    assert_int_equal(parse_edit("running 6.1.0-47-amd64", "running 6.1;rm -rf /", &err),
                     KF_EUNTRUSTED);
    assert_int_equal(parse_edit("kernel 6.12.38+deb12-amd64", "kernel ../../etc", &err),
                     KF_EUNTRUSTED);
    assert_int_equal(parse_edit("arch x86_64", "arch x86\x1b[2J", &err), KF_EUNTRUSTED);
    assert_non_null(strstr(err.msg, "\\x1b")); /* shown escaped */
    assert_null(strchr(err.msg, '\x1b'));
    assert_int_equal(
        parse_edit("held 1.0.0 6.1.0-47-amd64 aaaa", "held 1.0.0 6.1.0-47-amd64 zzzz", &err),
        KF_EUNTRUSTED);
    assert_int_equal(
        parse_edit("current 6.1.0-47-amd64 1.0.1", "current 6.1.0-47-amd64 1.0.1x", &err),
        KF_EUNTRUSTED);
    assert_int_equal(parse_edit("testdrv\nprevious", "test/drv\nprevious", &err), KF_EUNTRUSTED);
    assert_int_equal(parse_edit("files 6.1.0-47-amd64 ok", "files 6.1.0-47-amd64 great", &err),
                     KF_EUNTRUSTED);
    assert_int_equal(parse_edit("loaded kfleet_core 1.0.1", "loaded kfleet$core 1.0.1", &err),
                     KF_EUNTRUSTED);
    assert_int_equal(parse_edit("userspace 550.54.15", "userspace 550.54.15;x", &err),
                     KF_EUNTRUSTED);
    assert_int_equal(parse_edit("lock rollout-3@ctl", "lock rollout 3", &err), KF_EUNTRUSTED);
    assert_int_equal(parse_edit("free /lib/modules 2097152", "free /lib/modules -5", &err),
                     KF_EUNTRUSTED);
    assert_int_equal(parse_edit("node 1", "node 2", &err), KF_EUNSUPPORTED);
    /* No last line, or a forged one in the middle only. */
    assert_int_equal(parse_edit("ok check\n", "", &err), KF_EPARSE);
    assert_int_equal(parse_edit("ok check\n", "ok check\nextra\n", &err), KF_EPARSE);
    assert_int_equal(parse_edit("arch x86_64\n", "", &err), KF_EPARSE);
    assert_int_equal(deploy_check_parse("", 0, &c, &err), KF_EPARSE);
    /* A line of megabytes is refused, not copied. */
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(parse_edit("smi present", big, &err), KF_EUNTRUSTED);
    /* NUL bytes inside a value */
    {
        char buf[4096];
        size_t n = strlen(check_ok);
        memcpy(buf, check_ok, n);
        buf[strstr(check_ok, "x86_64") - check_ok + 3] = '\0';
        assert_int_equal(deploy_check_parse(buf, n, &c, &err), KF_EUNTRUSTED);
    }
}

static void test_result(void **state)
{
    struct deploy_result r;
    const char *o1 = "received 1.0.0 6.1.0-47-amd64 abc\nok receive\n";
    const char *o2 = "error locked rollout-3@ctl 1795000000\n";
    const char *o3 = "half a line";
    const char *o4 = "error verify check loaded fail kfleet_drm \x1b[31mnot loaded\n";

    (void)state;
    deploy_result_parse(o1, strlen(o1), "receive", 0, &r);
    assert_true(r.ok);
    deploy_result_parse(o1, strlen(o1), "install", 0, &r);
    assert_false(r.ok); /* another action's ok */
    assert_string_equal(r.word, "protocol");
    deploy_result_parse(o1, strlen(o1), "receive", 3, &r);
    assert_false(r.ok);
    deploy_result_parse(o2, strlen(o2), "install", 10, &r);
    assert_false(r.ok);
    assert_string_equal(r.word, "locked");
    assert_string_equal(r.msg, "rollout-3@ctl 1795000000");
    deploy_result_parse(o2, strlen(o2), "install", 0, &r);
    assert_false(r.ok); /* an error line with exit 0 is still an error */
    deploy_result_parse(o3, strlen(o3), "load", 14, &r);
    assert_false(r.ok);
    assert_string_equal(r.word, "protocol");
    assert_non_null(strstr(r.msg, "half a line"));
    deploy_result_parse("", 0, "load", 127, &r);
    assert_non_null(strstr(r.msg, "printed nothing"));
    deploy_result_parse(o4, strlen(o4), "verify", 15, &r);
    assert_string_equal(r.word, "verify");
    assert_null(strchr(r.msg, '\x1b'));
}

static void test_prior_json(void **state)
{
    struct deploy_prior p, q;
    struct kf_err err;
    json_t *j;

    (void)state;
    memset(&p, 0, sizeof(p));
    p.set = 1;
    p.n = 2;
    snprintf(p.k[0].kernel, sizeof(p.k[0].kernel), "6.1.0-47-amd64");
    snprintf(p.k[0].driver, sizeof(p.k[0].driver), "1.0.0");
    memset(p.k[0].sha256, 'a', 64);
    snprintf(p.k[1].kernel, sizeof(p.k[1].kernel), "6.12.38+deb12-amd64");
    p.loaded = 1;
    snprintf(p.loaded_version, sizeof(p.loaded_version), "1.0.0");
    j = deploy_prior_to_json(&p);
    assert_non_null(j);
    assert_int_equal(deploy_prior_from_json(j, &q, &err), 0);
    json_decref(j);
    assert_true(q.set);
    assert_int_equal(q.n, 2);
    assert_string_equal(deploy_prior_kernel(&q, "6.1.0-47-amd64")->driver, "1.0.0");
    assert_string_equal(deploy_prior_kernel(&q, "6.12.38+deb12-amd64")->driver, "");
    assert_null(deploy_prior_kernel(&q, "5.10.0-1-amd64"));
    assert_true(q.loaded);
    assert_string_equal(q.loaded_version, "1.0.0");
    /* Edited by hand into something unsafe: refused. */
    j = json_loads("{\"kernels\":{\"6.1;x\":{\"driver\":\"1.0\"}}}", 0, NULL);
    assert_int_equal(deploy_prior_from_json(j, &q, &err), KF_EPARSE);
    json_decref(j);
    j = json_loads("{\"kernels\":{\"6.1.0\":{\"driver\":\"1.0; rm\"}}}", 0, NULL);
    assert_int_equal(deploy_prior_from_json(j, &q, &err), KF_EPARSE);
    json_decref(j);
    j = json_loads("[]", 0, NULL);
    assert_int_equal(deploy_prior_from_json(j, &q, &err), KF_EPARSE);
    json_decref(j);
}

static void test_names(void **state)
{
    int s;

    (void)state;
    for (s = DS_PENDING; s <= DS_DONE; s++)
        assert_int_equal(deploy_state_from_name(deploy_state_name((enum deploy_state)s)), s);
    assert_int_equal(deploy_state_from_name("nope"), -1);
    for (s = DO_NONE; s <= DO_ROLLBACK_FAILED; s++)
        assert_int_equal(deploy_outcome_from_name(deploy_outcome_name((enum deploy_outcome)s)), s);
    assert_true(deploy_outcome_is_failure(DO_ROLLED_BACK));
    assert_true(deploy_outcome_is_failure(DO_FAILED));
    assert_false(deploy_outcome_is_failure(DO_SKIPPED));
    assert_false(deploy_outcome_is_failure(DO_UNCHANGED));
}

static void test_journal(void **state)
{
    struct coord_db db;
    struct coord_rollout r, g, *list = NULL;
    struct coord_rollout_node *v = NULL;
    struct coord_rollout_counts c;
    struct kf_err err;
    const char *hosts[] = {"node001", "node002", "node003"};
    int stages[] = {0, 1, 1};
    size_t n = 0;

    (void)state;
    kf_err_clear(&err);
    assert_int_equal(coord_db_open(&db, kft_tmp("journal"), &err), 0);
    assert_int_equal(coord_db_schema_version(&db), 4);
    memset(&r, 0, sizeof(r));
    snprintf(r.kind, sizeof(r.kind), "deploy");
    snprintf(r.profile, sizeof(r.profile), "testdrv");
    snprintf(r.driver, sizeof(r.driver), "1.0.1");
    snprintf(r.status, sizeof(r.status), "running");
    snprintf(r.owner, sizeof(r.owner), "ctl");
    r.nstages = 2;
    r.options = strdup("{\"stages\":\"1,100%\"}");
    assert_int_equal(coord_journal_create(&db, &r, hosts, stages, 3, 1000, &err), 0);
    assert_true(r.id > 0);
    assert_string_equal(r.owner, "rollout-1@ctl");
    assert_int_equal(
        coord_journal_node_state(&db, r.id, "node001", "connecting", NULL, 1, 1001, &err), 0);
    assert_int_equal(coord_journal_node_prior(&db, r.id, "node001", "{\"kernels\":{}}", &err), 0);
    assert_int_equal(coord_journal_node_state(&db, r.id, "node001", "installing",
                                              "6.1.0-47-amd64 1.0.1", 0, 1002, &err),
                     0);
    assert_int_equal(coord_journal_node_end(&db, r.id, "node001", "updated", NULL, NULL, NULL, NULL,
                                            "1.0.1", 1234, 1.5, 1003, &err),
                     0);
    assert_int_equal(
        coord_journal_node_state(&db, r.id, "node002", "verifying", NULL, 0, 1004, &err), 0);
    /* a node the rollout does not have */
    assert_int_equal(
        coord_journal_node_state(&db, r.id, "node999", "checking", NULL, 0, 1005, &err), KF_EDB);
    assert_int_equal(coord_journal_set_status(&db, r.id, "interrupted", 1, "Ctrl-C", 0, 1006, &err),
                     0);
    assert_int_equal(coord_journal_get(&db, r.id, &g, &err), 1);
    assert_string_equal(g.status, "interrupted");
    assert_int_equal(g.stage, 1);
    assert_string_equal(g.reason, "Ctrl-C");
    assert_string_equal(g.options, "{\"stages\":\"1,100%\"}");
    assert_int_equal(g.finished_at, 0);
    coord_rollout_release(&g);
    assert_int_equal(coord_journal_get(&db, 99, &g, &err), 0);
    assert_int_equal(coord_journal_nodes(&db, r.id, &v, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(v[0].host, "node001");
    assert_string_equal(v[0].outcome, "updated");
    assert_string_equal(v[0].versions, "1.0.1");
    assert_int_equal(v[0].attempts, 1);
    assert_int_equal(v[0].bytes, 1234);
    assert_string_equal(v[0].prior, "{\"kernels\":{}}");
    assert_string_equal(v[1].state, "verifying");
    assert_string_equal(v[1].outcome, "");
    assert_string_equal(v[2].state, "pending");
    coord_rollout_count(v, n, -1, &c);
    assert_int_equal(c.nodes, 3);
    assert_int_equal(c.updated, 1);
    assert_int_equal(c.running, 1);
    assert_int_equal(c.pending, 1);
    coord_rollout_count(v, n, 1, &c);
    assert_int_equal(c.nodes, 2);
    coord_rollout_nodes_free(v, n);
    assert_int_equal(coord_journal_set_status(&db, r.id, "done", 1, NULL, 0, 1010, &err), 0);
    assert_int_equal(coord_journal_list(&db, 10, &list, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].status, "done");
    assert_string_equal(list[0].reason, "Ctrl-C"); /* NULL keeps the reason */
    assert_int_equal(list[0].finished_at, 1010);
    coord_rollout_release(&list[0]);
    free(list);
    coord_rollout_release(&r);
    coord_db_close(&db);
    /* every transition left an event */
    assert_int_equal(kft_sh("test \"$(sqlite3 %s/state.db 'SELECT count(*) FROM rollout_events')\" "
                            "-eq 7",
                            kft_tmp("journal")),
                     0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stages),        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_command),       cmocka_unit_test(test_check_parse),
        cmocka_unit_test(test_check_hostile), cmocka_unit_test(test_result),
        cmocka_unit_test(test_prior_json),    cmocka_unit_test(test_names),
        cmocka_unit_test(test_journal),
    };
    return cmocka_run_group_tests(tests, kft_setup_tmpdir, kft_teardown_tmpdir);
}
