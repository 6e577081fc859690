/* Unit tests of inv_select(): Ansible host patterns over a small fleet. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "inventory.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Inventory order: lonely gpu01 gpu02 gpu03 cpu01 cpu02 db (7 hosts).
 * Groups: all, ungrouped, gpu (children h100, a100), h100, a100, cpu,
 * canary (gpu02, cpu01), and "db", a group whose name is also a host. */
static const char fleet[] = "all:\n"
                            "  hosts:\n"
                            "    lonely:\n"
                            "  children:\n"
                            "    gpu:\n"
                            "      children:\n"
                            "        h100:\n"
                            "          hosts:\n"
                            "            gpu01:\n"
                            "            gpu02:\n"
                            "        a100:\n"
                            "          hosts:\n"
                            "            gpu03:\n"
                            "    cpu:\n"
                            "      hosts:\n"
                            "        cpu01:\n"
                            "        cpu02:\n"
                            "    canary:\n"
                            "      hosts:\n"
                            "        gpu02:\n"
                            "        cpu01:\n"
                            "    db:\n"
                            "      hosts:\n"
                            "        cpu02:\n"
                            "    other:\n"
                            "      hosts:\n"
                            "        db:\n";

static struct inventory inv;

static int setup(void **state)
{
    struct kf_err err;

    (void)state;
    inv_init(&inv);
    if (inv_load_buffer(&inv, "fleet.yml", fleet, strlen(fleet), &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    inv_release(&inv);
    return 0;
}

/* Captures what log_warn() writes to stderr while a selection runs. */
static char warnings[4096];

static char *select_names(const char *pattern)
{
    static char out[1024];
    struct kf_err err;
    size_t *idx, n, i;
    int saved, fd;
    FILE *tmp;
    size_t got;

    fflush(stderr);
    tmp = tmpfile();
    assert_non_null(tmp);
    saved = dup(STDERR_FILENO);
    fd = fileno(tmp);
    dup2(fd, STDERR_FILENO);
    if (inv_select(&inv, pattern, &idx, &n, &err) != 0)
        fail_msg("'%s': %s", pattern ? pattern : "(null)", err.msg);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(tmp);
    got = fread(warnings, 1, sizeof(warnings) - 1, tmp);
    warnings[got] = '\0';
    fclose(tmp);

    out[0] = '\0';
    for (i = 0; i < n; i++) {
        if (i > 0)
            strcat(out, " ");
        strcat(out, inv.hosts[idx[i]].name);
    }
    if (n == 0)
        assert_null(idx);
    free(idx);
    return out;
}

static void expect(const char *pattern, const char *names)
{
    assert_string_equal(select_names(pattern), names);
    if (warnings[0] != '\0')
        fail_msg("'%s': unexpected warning: %s", pattern ? pattern : "(null)", warnings);
}

static void test_all(void **state)
{
    (void)state;
    expect(NULL, "lonely gpu01 gpu02 gpu03 cpu01 cpu02 db");
    expect("", "lonely gpu01 gpu02 gpu03 cpu01 cpu02 db");
    expect("  ", "lonely gpu01 gpu02 gpu03 cpu01 cpu02 db");
    expect("all", "lonely gpu01 gpu02 gpu03 cpu01 cpu02 db");
    expect("*", "lonely gpu01 gpu02 gpu03 cpu01 cpu02 db");
    expect("ungrouped", "lonely");
}

static void test_group_and_host(void **state)
{
    (void)state;
    /* A group selects its descendants' hosts too. */
    expect("gpu", "gpu01 gpu02 gpu03");
    expect("h100", "gpu01 gpu02");
    expect("gpu03", "gpu03");
    /* A name that is a group and a host: the group wins. */
    expect("db", "cpu02");
    expect("other", "db");
}

static void test_union_and_order(void **state)
{
    (void)state;
    expect("a100:cpu", "gpu03 cpu01 cpu02");
    /* Inventory order whatever the order of terms, no duplicates. */
    expect("cpu:a100", "gpu03 cpu01 cpu02");
    expect("cpu02,gpu01", "gpu01 cpu02");
    expect("gpu:h100:gpu01", "gpu01 gpu02 gpu03");
    expect(" gpu01 , cpu02 ", "gpu01 cpu02");
    expect("gpu01 cpu02", "gpu01 cpu02");
    expect("gpu01,,cpu02,", "gpu01 cpu02");
}

static void test_intersection_exclusion(void **state)
{
    (void)state;
    expect("gpu:&canary", "gpu02");
    expect("gpu:!canary", "gpu01 gpu03");
    expect("gpu,!canary", "gpu01 gpu03");
    expect("gpu:cpu:&canary:!cpu01", "gpu02");
    /* Exclusions and intersections apply after every union, wherever they
     * are written: "!canary:gpu" is gpu without canary, not gpu. */
    expect("!canary:gpu", "gpu01 gpu03");
    expect("&canary:gpu:cpu", "gpu02 cpu01");
    expect("&canary:&cpu", "cpu01");
    /* With no plain term, start from all. */
    expect("!gpu", "lonely cpu01 cpu02 db");
    expect("&canary", "gpu02 cpu01");
    expect("!all", "");
}

static void test_regex(void **state)
{
    (void)state;
    expect("~gpu0[12]", "gpu01 gpu02");
    expect("~(cpu|a1)", "gpu03 cpu01 cpu02");
    /* Anchored at the start like re.match(), not at the end. */
    expect("~gpu", "gpu01 gpu02 gpu03");
    expect("~cpu0", "cpu01 cpu02");
    expect("~.*01", "gpu01 cpu01");
    /* Group names match too: "h1" matches the group h100. */
    expect("~h1", "gpu01 gpu02");
    /* ... including "all": every host, as in Ansible. */
    expect("~a", "lonely gpu01 gpu02 gpu03 cpu01 cpu02 db");
    expect("gpu:!~gpu02", "gpu01 gpu03");
    expect("gpu:&~.*0[23]$", "gpu02 gpu03");
}

static void test_glob(void **state)
{
    (void)state;
    expect("gpu0*", "gpu01 gpu02 gpu03");
    expect("gpu0[12]:cpu02", "gpu01 gpu02 cpu02");
    expect("*01", "gpu01 cpu01");
    expect("?pu01", "gpu01 cpu01");
    /* Over group names: h100 and a100. */
    expect("?100", "gpu01 gpu02 gpu03");
    expect("can*", "gpu02 cpu01");
    expect("cpu:!*02", "cpu01");
    expect("[!g]pu01", "cpu01");
}

static void test_unmatched_term_warns(void **state)
{
    (void)state;
    assert_string_equal(select_names("nosuch"), "");
    assert_string_equal(warnings, "kfleet: warning: host pattern term 'nosuch' matched nothing\n");
    assert_string_equal(select_names("gpu:nosuch*:!~zz"), "gpu01 gpu02 gpu03");
    assert_string_equal(warnings, "kfleet: warning: host pattern term 'nosuch*' matched nothing\n"
                                  "kfleet: warning: host pattern term '!~zz' matched nothing\n");
    /* Anchoring: "pu01" is inside names but at the start of none. */
    assert_string_equal(select_names("~pu01"), "");
    assert_string_equal(warnings, "kfleet: warning: host pattern term '~pu01' matched nothing\n");
    /* Untrusted text is escaped in the warning. (The ',' keeps it one term:
     * without one, a '[' that no ']' closes separates terms, as in Ansible.) */
    assert_string_equal(select_names("x\x1b[2J,"), "");
    assert_string_equal(warnings,
                        "kfleet: warning: host pattern term 'x\\x1b[2J' matched nothing\n");
}

static void test_errors(void **state)
{
    struct kf_err err;
    size_t *idx = (size_t *)1, n = 9;

    (void)state;
    assert_int_equal(inv_select(&inv, "gpu:~(", &idx, &n, &err), KF_EINVAL);
    assert_null(idx);
    assert_int_equal(n, 0);
    if (strncmp(err.msg, "host pattern term '~(': invalid regular expression: ", 52) != 0)
        fail_msg("message: %s", err.msg);
    assert_int_equal(inv_select(&inv, "gpu:&", &idx, &n, &err), KF_EINVAL);
    assert_string_equal(err.msg, "host pattern 'gpu:&': '&' without a name after it");
    assert_int_equal(inv_select(&inv, "!,gpu", &idx, &n, &err), KF_EINVAL);
    assert_string_equal(err.msg, "host pattern '!,gpu': '!' without a name after it");
}

static void test_empty_inventory(void **state)
{
    struct inventory empty;
    struct kf_err err;
    size_t *idx, n;

    (void)state;
    inv_init(&empty);
    assert_int_equal(inv_select(&empty, "all", &idx, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_null(idx);
    assert_int_equal(inv_select(&empty, "gpu:!x", &idx, &n, &err), 0);
    assert_int_equal(n, 0);
    inv_release(&empty);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all),
        cmocka_unit_test(test_group_and_host),
        cmocka_unit_test(test_union_and_order),
        cmocka_unit_test(test_intersection_exclusion),
        cmocka_unit_test(test_regex),
        cmocka_unit_test(test_glob),
        cmocka_unit_test(test_unmatched_term_warns),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_empty_inventory),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
