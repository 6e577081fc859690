/* common/: buffers with limits, the one shell-quoting helper, display
 * escaping, error messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static void test_buf_limit_drops_and_counts(void **state)
{
    struct buf b;

    buf_init(&b, 10);
    assert_int_equal(buf_puts(&b, "12345"), 0);
    assert_int_equal(buf_puts(&b, "67890abc"), KF_ETRUNC);
    assert_int_equal(b.len, 10);
    assert_int_equal(b.dropped, 3);
    assert_string_equal(buf_cstr(&b), "1234567890");
    assert_int_equal(buf_puts(&b, "x"), KF_ETRUNC);
    assert_int_equal(b.dropped, 4);
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.dropped, 0);
    buf_release(&b);
}

static void test_buf_printf_large(void **state)
{
    struct buf b;
    char big[1000];
    size_t len;
    char *p;

    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    buf_init(&b, 0);
    assert_int_equal(buf_printf(&b, "<%s>%d", big, 42), 0);
    assert_int_equal(b.len, 999 + 4);
    p = buf_detach(&b, &len);
    assert_int_equal(len, 1003);
    assert_int_equal(p[0], '<');
    assert_string_equal(p + 1000, ">42");
    assert_null(b.data);
    free(p);
    assert_string_equal(buf_cstr(&b), "");
}

/* The quoted word must come back unchanged through a real shell. */
static void assert_sh_roundtrip(const char *s)
{
    struct buf cmd;
    char out[512];
    FILE *f;
    size_t n;

    buf_init(&cmd, 0);
    buf_puts(&cmd, "printf '%s' ");
    kf_shquote(&cmd, s);
    f = popen(buf_cstr(&cmd), "r");
    assert_non_null(f);
    n = fread(out, 1, sizeof(out) - 1, f);
    out[n] = '\0';
    pclose(f);
    assert_string_equal(out, s);
    buf_release(&cmd);
}

static void test_shquote(void **state)
{
    struct buf b;

    buf_init(&b, 0);
    kf_shquote(&b, "it's");
    assert_string_equal(buf_cstr(&b), "'it'\\''s'");
    buf_release(&b);
    assert_sh_roundtrip("plain");
    assert_sh_roundtrip("");
    assert_sh_roundtrip("a b\tc\nd");
    assert_sh_roundtrip("$(touch /tmp/kfleet-never) `id` ; | & > < * ? ~ ! # \\ \"");
    assert_sh_roundtrip("'''");
}

static void test_escape(void **state)
{
    char out[64];
    struct buf b;

    assert_string_equal(kf_escape_to(out, sizeof(out), "a\033[2Jb", 6), "a\\x1b[2Jb");
    assert_string_equal(kf_escape_to(out, sizeof(out), "x\\y\n", 4), "x\\\\y\\x0a");
    buf_init(&b, 0);
    kf_escape(&b, "abcdefgh", 8, 3);
    assert_string_equal(buf_cstr(&b), "abc...");
    buf_release(&b);
    /* a tiny output buffer still gets a terminated, safe prefix */
    assert_string_equal(kf_escape_to(out, 4, "\033\033\033", 3), "\\x1");
}

static void test_errors(void **state)
{
    struct kf_err e;

    kf_err_clear(&e);
    assert_string_equal(kf_err_msg(&e), "success");
    assert_int_equal(kf_err_set(&e, KF_EPARSE, "line %d: bad", 3), KF_EPARSE);
    kf_err_prefix(&e, "%s:", "inv.yml");
    assert_string_equal(kf_err_msg(&e), "inv.yml:line 3: bad");
    assert_string_equal(kf_errname(KF_EHOSTKEY_CHANGED), "HOSTKEY_CHANGED");
    assert_string_equal(kf_strerror(KF_ETIMEDOUT), "timed out");
    assert_string_equal(kf_strerror(-9999), "unknown error");
    assert_int_equal(kf_err_set(NULL, KF_EIO, "x"), KF_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_limit_drops_and_counts),
        cmocka_unit_test(test_buf_printf_large),
        cmocka_unit_test(test_shquote),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
