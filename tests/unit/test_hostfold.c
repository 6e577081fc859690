/* kf_hostfold: host names folded into clustershell-style ranges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Folds names[0, n) into a fresh string (free it). */
static char *fold(const char *const *names, size_t n)
{
    struct buf b;

    buf_init(&b, 0);
    assert_int_equal(kf_hostfold(&b, names, n), 0);
    return buf_detach(&b, NULL);
}

#define FOLD_EQ(want, ...)                                                                         \
    do {                                                                                           \
        const char *const in_[] = {__VA_ARGS__};                                                   \
        char *got_ = fold(in_, sizeof(in_) / sizeof(in_[0]));                                      \
        assert_string_equal(got_, want);                                                           \
        free(got_);                                                                                \
    } while (0)

static void test_header_example(void **state)
{
    (void)state;
    FOLD_EQ("node[001-003,007],web", "web", "node003", "node001", "node007", "node002");
}

static void test_padded_range_with_gap(void **state)
{
    const char *names[41];
    char storage[41][16];
    size_t i;
    char *got;

    (void)state;
    for (i = 0; i < 40; i++) {
        snprintf(storage[i], sizeof(storage[i]), "node%03zu", i + 1);
        names[i] = storage[i];
    }
    names[40] = "node042";
    got = fold(names, 41);
    assert_string_equal(got, "node[001-040,042]");
    free(got);
}

static void test_unpadded(void **state)
{
    (void)state;
    FOLD_EQ("gpu[1-3,10]", "gpu1", "gpu2", "gpu3", "gpu10");
    /* Numeric, not lexical, order. */
    FOLD_EQ("gpu[2,9-11,100]", "gpu100", "gpu11", "gpu9", "gpu10", "gpu2");
    FOLD_EQ("n[0-1]", "n1", "n0");
    /* A two-element run is a range too. */
    FOLD_EQ("a[1-2]", "a1", "a2");
}

static void test_single_and_plain_names(void **state)
{
    (void)state;
    FOLD_EQ("node007", "node007");
    FOLD_EQ("db,mgmt,web", "web", "db", "mgmt");
    FOLD_EQ("localhost", "localhost");
    /* A name with no number sorts before the numbered names of its prefix. */
    FOLD_EQ("node,node[1-2]", "node2", "node", "node1");
}

static void test_last_digit_run(void **state)
{
    (void)state;
    /* Split at the LAST run of digits: prefixes "rack1-node" and
     * "rack2-node" differ, so nothing folds across racks. */
    FOLD_EQ("rack1-node5,rack2-node5", "rack2-node5", "rack1-node5");
    FOLD_EQ("rack1-node[5-7],rack2-node5", "rack1-node6", "rack2-node5", "rack1-node5",
            "rack1-node7");
    /* A suffix after the number is kept and must match to fold. */
    FOLD_EQ("gpu[1-3].example.com", "gpu3.example.com", "gpu1.example.com", "gpu2.example.com");
    /* The last run is the one in "dc1", so these differ in their prefix
     * ("gpu1.dc", "gpu2.dc") and do not fold: use short inventory names. */
    FOLD_EQ("gpu1.dc1.example.com,gpu2.dc1.example.com", "gpu2.dc1.example.com",
            "gpu1.dc1.example.com");
    FOLD_EQ("gpu[01-02]-ib,gpu[01,03]-mgmt", "gpu01-mgmt", "gpu01-ib", "gpu03-mgmt", "gpu02-ib");
    /* Only the last run folds; earlier digits stay in the prefix. */
    FOLD_EQ("dc2-r10-n[1-2]", "dc2-r10-n2", "dc2-r10-n1");
}

static void test_duplicates_dropped(void **state)
{
    (void)state;
    FOLD_EQ("node[1-2]", "node1", "node2", "node1", "node2", "node1");
    FOLD_EQ("web", "web", "web");
    FOLD_EQ("n[01-02]", "n01", "n02", "n01");
}

static void test_widths(void **state)
{
    (void)state;
    /* Different padded widths never fold together. */
    FOLD_EQ("n01,n001", "n001", "n01");
    FOLD_EQ("n[01-02],n[001-002]", "n001", "n02", "n002", "n01");
    /* "1" and "01" are different hosts; both stay. */
    FOLD_EQ("n1,n01", "n01", "n1");
    /* An unpadded number as wide as a padded group joins it, so a
     * zero-padded fleet past 99 stays one range... */
    FOLD_EQ("node[098-101]", "node100", "node099", "node101", "node098");
    /* ...and one of another width stays unpadded. */
    FOLD_EQ("node[7,1000],node[001-002]", "node1000", "node001", "node7", "node002");
    FOLD_EQ("node1,node[001,100]", "node1", "node001", "node100");
}

static void test_huge_numbers(void **state)
{
    (void)state;
    /* 19 digits fit a uint64_t: still folded, and +1 does not overflow. */
    FOLD_EQ("x[9999999999999999998-9999999999999999999]", "x9999999999999999999",
            "x9999999999999999998");
    /* 20 digits and more: kept whole, never folded, never overflowing. */
    FOLD_EQ("x18446744073709551616,x18446744073709551617", "x18446744073709551617",
            "x18446744073709551616");
    FOLD_EQ("h[1-2],h123456789012345678901234567890", "h123456789012345678901234567890", "h2",
            "h1");
}

static void test_empty_and_null(void **state)
{
    const char *names[] = {NULL, "", "a1", NULL, "a2"};
    struct buf b;
    char *got;

    (void)state;
    got = fold(names, 0);
    assert_string_equal(got, "");
    free(got);
    got = fold(names, 2);
    assert_string_equal(got, "");
    free(got);
    got = fold(names, 5);
    assert_string_equal(got, "a[1-2]");
    free(got);

    /* It appends. */
    buf_init(&b, 0);
    assert_int_equal(buf_puts(&b, "failed: "), 0);
    assert_int_equal(kf_hostfold(&b, names, 5), 0);
    assert_string_equal(buf_cstr(&b), "failed: a[1-2]");
    buf_release(&b);
}

/* The output depends on the set of names, not their order. */
static void test_deterministic(void **state)
{
    static const char *const base[] = {
        "gpu10",   "gpu2", "web",      "node001", "node003", "gpu1", "db",
        "node002", "gpu3", "rack1-n5", "n01",     "n001",    "gpu2", "x123456789012345678901"};
    const char *v[sizeof(base) / sizeof(base[0])];
    size_t n = sizeof(base) / sizeof(base[0]), i, round;
    unsigned seed = 12345;
    char *first, *got;

    (void)state;
    first = fold(base, n);
    assert_string_equal(
        first, "db,gpu[1-3,10],n01,n001,node[001-003],rack1-n5,web,x123456789012345678901");
    memcpy(v, base, sizeof(v));
    for (round = 0; round < 200; round++) {
        for (i = n - 1; i > 0; i--) {
            size_t j;
            const char *t;
            seed = seed * 1103515245u + 12345u;
            j = (seed >> 16) % (i + 1);
            t = v[i];
            v[i] = v[j];
            v[j] = t;
        }
        got = fold(v, n);
        assert_string_equal(got, first);
        free(got);
    }
    free(first);
}

static void test_large_fleet(void **state)
{
    enum { N = 5000 };
    char(*storage)[16] = malloc(N * sizeof(*storage));
    const char **names = malloc(N * sizeof(*names));
    size_t i;
    char *got;

    (void)state;
    assert_non_null(storage);
    assert_non_null(names);
    /* Every third node failed, in reverse order. */
    for (i = 0; i < N; i++) {
        snprintf(storage[i], sizeof(storage[i]), "gpu%05zu", (N - i) * 3);
        names[i] = storage[i];
    }
    got = fold(names, N);
    assert_true(strncmp(got, "gpu[00003,00006,00009,", 22) == 0);
    assert_string_equal(got + strlen(got) - 7, ",15000]");
    free(got);

    for (i = 0; i < N; i++)
        snprintf(storage[i], sizeof(storage[i]), "gpu%zu", N - i);
    got = fold(names, N);
    assert_string_equal(got, "gpu[1-5000]");
    free(got);
    free(names);
    free(storage);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_example), cmocka_unit_test(test_padded_range_with_gap),
        cmocka_unit_test(test_unpadded),       cmocka_unit_test(test_single_and_plain_names),
        cmocka_unit_test(test_last_digit_run), cmocka_unit_test(test_duplicates_dropped),
        cmocka_unit_test(test_widths),         cmocka_unit_test(test_huge_numbers),
        cmocka_unit_test(test_empty_and_null), cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_large_fleet),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
