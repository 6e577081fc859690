/* common/proc.c: local child processes on the loop. */
#include "proc.h"
#include "testutil.h"

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

struct run {
    int status;
    int calls;
    int exit_status;
    int term_signal;
    char *out;
    size_t out_len;
    char *err;
    uint64_t dropped;
};

static void on_done(struct kf_proc *p, int status, void *arg)
{
    struct run *r = arg;
    struct buf *o = kf_proc_stdout(p);

    r->calls++;
    r->status = status;
    r->exit_status = kf_proc_exit_status(p);
    r->term_signal = kf_proc_term_signal(p);
    r->out_len = o->len;
    r->out = malloc(o->len + 1);
    memcpy(r->out, o->len ? o->data : "", o->len);
    r->out[o->len] = 0;
    r->err = strdup(buf_cstr(kf_proc_stderr(p)));
    r->dropped = kf_proc_stderr(p)->dropped;
    kf_proc_free(p);
}

/* Runs argv to its end with the given options; returns the loop's result. */
static void run(struct kf_proc_opts *o, struct run *r, int kill_after_start)
{
    uv_loop_t loop;
    struct kf_proc *p = NULL;
    struct kf_err err;

    memset(r, 0, sizeof(*r));
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(kf_proc_start(&loop, o, on_done, r, &p, &err), 0);
    if (kill_after_start)
        kf_proc_kill(p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(r->calls, 1);
}

static void release(struct run *r)
{
    free(r->out);
    free(r->err);
}

static void test_output_and_status(void **state)
{
    char *argv[] = {"sh", "-c", "echo out; echo err >&2; exit 3", NULL};
    struct kf_proc_opts o = {.argv = argv};
    struct run r;
    (void)state;

    run(&o, &r, 0);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.exit_status, 3);
    assert_string_equal(r.out, "out\n");
    assert_string_equal(r.err, "err\n");
    release(&r);
}

/* 5 MiB through cat: stdin streamed while stdout is read. */
static void test_stdin_roundtrip(void **state)
{
    char *argv[] = {"cat", NULL};
    size_t n = 5 * 1024 * 1024, i;
    char *data = malloc(n);
    struct kf_proc_opts o = {
        .argv = argv, .stdin_data = data, .stdin_len = n, .out_limit = 8 * 1024 * 1024};
    struct run r;
    (void)state;

    for (i = 0; i < n; i++)
        data[i] = (char)(i * 7 + i / 4096);
    run(&o, &r, 0);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.exit_status, 0);
    assert_int_equal(r.out_len, n);
    assert_memory_equal(r.out, data, n);
    free(data);
    release(&r);
}

/* A child that does not read its stdin is not an error of ours. */
static void test_stdin_unread(void **state)
{
    char *argv[] = {"true", NULL};
    static char data[1 << 20];
    struct kf_proc_opts o = {.argv = argv, .stdin_data = data, .stdin_len = sizeof(data)};
    struct run r;
    (void)state;

    run(&o, &r, 0);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.exit_status, 0);
    release(&r);
}

static void test_out_limit_stops(void **state)
{
    char *argv[] = {"yes", NULL};
    struct kf_proc_opts o = {.argv = argv, .out_limit = 100000};
    struct run r;
    (void)state;

    run(&o, &r, 0);
    assert_int_equal(r.status, KF_ETRUNC);
    assert_int_equal(r.out_len, 100000);
    assert_int_equal(r.term_signal, SIGTERM);
    release(&r);
}

static void test_err_limit_drops(void **state)
{
    char *argv[] = {"sh", "-c", "head -c 300000 /dev/zero >&2; echo done", NULL};
    struct kf_proc_opts o = {.argv = argv, .err_limit = 1000};
    struct run r;
    (void)state;

    run(&o, &r, 0);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "done\n");
    assert_true(r.dropped > 0);
    release(&r);
}

/* The timeout stops the whole group: the background sleep too. */
static void test_timeout_kills_group(void **state)
{
    char cmd[512];
    char *argv[] = {"sh", "-c", cmd, NULL};
    struct kf_proc_opts o = {.argv = argv, .timeout_ms = 300};
    const char *pidfile = kft_tmp("bg.pid");
    struct run r;
    char *pid;
    (void)state;

    snprintf(cmd, sizeof(cmd), "sleep 60 & echo $! > '%s'; wait", pidfile);
    run(&o, &r, 0);
    assert_int_equal(r.status, KF_ETIMEDOUT);
    assert_int_equal(r.term_signal, SIGTERM);
    pid = (char *)kft_read_all(pidfile, NULL);
    usleep(100 * 1000);
    /* Gone, or a zombie waiting for whoever adopted it. */
    assert_int_equal(
        kft_sh("s=$(cut -d' ' -f3 /proc/%d/stat 2>/dev/null); [ -z \"$s\" ] || [ \"$s\" = Z ]",
               atoi(pid)),
        0);
    free(pid);
    release(&r);
}

static void test_kill(void **state)
{
    char *argv[] = {"sleep", "60", NULL};
    struct kf_proc_opts o = {.argv = argv};
    struct run r;
    (void)state;

    run(&o, &r, 1);
    assert_int_equal(r.status, KF_ECANCELED);
    assert_int_equal(r.exit_status, -1);
    release(&r);
}

/* SIGTERM ignored: SIGKILL follows after the grace period. */
static void test_kill_escalates(void **state)
{
    char *argv[] = {"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done", NULL};
    struct kf_proc_opts o = {.argv = argv, .timeout_ms = 200};
    struct run r;
    (void)state;

    run(&o, &r, 0);
    assert_int_equal(r.status, KF_ETIMEDOUT);
    assert_int_equal(r.term_signal, SIGKILL);
    release(&r);
}

static void test_missing_program(void **state)
{
    char *argv[] = {"/nonexistent/kfleet-no-such-program", NULL};
    struct kf_proc_opts o = {.argv = argv};
    struct kf_proc *p = NULL;
    struct kf_err err;
    uv_loop_t loop;
    (void)state;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(kf_proc_start(&loop, &o, (kf_proc_cb)abort, NULL, &p, &err), KF_ENOENT);
    assert_non_null(strstr(err.msg, "kfleet-no-such-program"));
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A grandchild keeping stdout open does not hold the report forever. */
static void test_grandchild_keeps_pipe(void **state)
{
    char *argv[] = {"sh", "-c", "sleep 30 & echo parent; exit 0", NULL};
    struct kf_proc_opts o = {.argv = argv};
    struct run r;
    (void)state;

    run(&o, &r, 0);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.exit_status, 0);
    assert_string_equal(r.out, "parent\n");
    release(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_output_and_status),
        cmocka_unit_test(test_stdin_roundtrip),
        cmocka_unit_test(test_stdin_unread),
        cmocka_unit_test(test_out_limit_stops),
        cmocka_unit_test(test_err_limit_drops),
        cmocka_unit_test(test_timeout_kills_group),
        cmocka_unit_test(test_kill),
        cmocka_unit_test(test_kill_escalates),
        cmocka_unit_test(test_missing_program),
        cmocka_unit_test(test_grandchild_keeps_pipe),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, kft_setup_tmpdir, kft_teardown_tmpdir);
}
