/* Unit tests of inventory/: loading Ansible YAML inventories and host
 * ranges. Every error case checks the whole message, file:line:col
 * included, because that message is what an operator acts on. */
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

static int load(struct inventory *inv, const char *yaml, struct kf_err *err)
{
    return inv_load_buffer(inv, "inv.yml", yaml, strlen(yaml), err);
}

static void load_ok(struct inventory *inv, const char *yaml)
{
    struct kf_err err;

    inv_init(inv);
    if (load(inv, yaml, &err) != 0)
        fail_msg("load failed: %s", err.msg);
}

/* Loading fails with exactly this code and message, and leaves inv empty. */
static void expect_error(const char *yaml, int code, const char *msg)
{
    struct inventory inv;
    struct kf_err err;
    int rc;

    inv_init(&inv);
    rc = load(&inv, yaml, &err);
    assert_int_equal(rc, code);
    assert_int_equal(err.code, code);
    assert_string_equal(err.msg, msg);
    assert_null(inv.hosts);
    assert_int_equal(inv.nhosts, 0);
    assert_null(inv.groups);
    assert_int_equal(inv.ngroups, 0);
    assert_null(inv.path);
    inv_release(&inv);
}

static const struct inv_host *host(const struct inventory *inv, const char *name)
{
    const struct inv_host *h = inv_find_host(inv, name);

    if (h == NULL)
        fail_msg("no host '%s'", name);
    return h;
}

static const struct inv_group *group(const struct inventory *inv, const char *name)
{
    const struct inv_group *g = inv_find_group(inv, name);

    if (g == NULL)
        fail_msg("no group '%s'", name);
    return g;
}

/* The host's effective vars, compact and with sorted keys, for exact checks. */
static void assert_vars(const struct inventory *inv, const char *h, const char *json)
{
    char *got = json_dumps(host(inv, h)->vars, JSON_COMPACT | JSON_SORT_KEYS);

    assert_non_null(got);
    assert_string_equal(got, json);
    free(got);
}

static void assert_var(const struct inventory *inv, const char *h, const char *var,
                       const char *json)
{
    json_t *v = json_object_get(host(inv, h)->vars, var);
    char *got;

    if (v == NULL)
        fail_msg("host '%s' has no var '%s'", h, var);
    got = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    assert_non_null(got);
    assert_string_equal(got, json);
    free(got);
}

/* A list of names, space separated, for one-line comparisons. */
static char *joined(char *const *v, size_t n)
{
    static char out[4096];
    size_t i;

    out[0] = '\0';
    for (i = 0; i < n; i++) {
        if (i > 0)
            strcat(out, " ");
        strcat(out, v[i]);
    }
    return out;
}

static char *host_names(const struct inventory *inv)
{
    static char out[4096];
    size_t i;

    out[0] = '\0';
    for (i = 0; i < inv->nhosts; i++) {
        if (i > 0)
            strcat(out, " ");
        strcat(out, inv->hosts[i].name);
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* The example inventory: what an operator's file looks like                 */

static void test_example_fixture(void **state)
{
    struct inventory inv;
    struct kf_err err;
    const struct inv_host *h;
    const struct inv_group *g;

    (void)state;
    setenv("HOME", "/home/op", 1);
    inv_init(&inv);
    assert_int_equal(inv_load_file(&inv, KF_FIXTURES "/inventory/example.yml", &err), 0);
    assert_string_equal(inv.path, KF_FIXTURES "/inventory/example.yml");

    assert_string_equal(host_names(&inv), "bastion01 gpu001 gpu002 gpu003 gpu004 gpu-a01 gpu-a02 "
                                          "stora.example.com storb.example.com");
    assert_int_equal(inv.ngroups, 7);
    assert_string_equal(inv.groups[0].name, "all");
    assert_string_equal(inv.groups[1].name, "ungrouped");

    g = group(&inv, "all");
    assert_string_equal(joined(g->children, g->nchildren), "gpu storage canary ungrouped");
    assert_string_equal(joined(g->hosts, g->nhosts), "bastion01");
    assert_int_equal(g->loc.line, 4);
    assert_int_equal(g->loc.col, 1);
    g = group(&inv, "gpu");
    assert_string_equal(joined(g->children, g->nchildren), "h100 a100");
    assert_int_equal(g->nhosts, 0);
    g = group(&inv, "h100");
    assert_string_equal(joined(g->hosts, g->nhosts), "gpu001 gpu002 gpu003 gpu004");
    assert_int_equal(g->loc.line, 24);
    assert_int_equal(g->loc.col, 9);
    g = group(&inv, "canary");
    assert_string_equal(joined(g->hosts, g->nhosts), "gpu001 gpu-a01");
    /* bastion01 is in no group but all: Ansible puts it in ungrouped. */
    g = group(&inv, "ungrouped");
    assert_string_equal(joined(g->hosts, g->nhosts), "bastion01");

    /* A host in two groups, one of them nested: all ancestors, sorted. */
    h = host(&inv, "gpu001");
    assert_string_equal(joined(h->groups, h->ngroups), "all canary gpu h100");
    assert_int_equal(h->loc.line, 29);
    assert_int_equal(h->loc.col, 13);
    assert_vars(&inv, "gpu001",
                "{\"ansible_become\":true,"
                "\"ansible_ssh_common_args\":\"-o ProxyJump=deploy@203.0.113.10 -o "
                "ServerAliveInterval=15\","
                "\"ansible_ssh_private_key_file\":\"~/.ssh/fleet_ed25519\","
                "\"ansible_user\":\"deploy\",\"gpu_model\":\"H100\",\"gpu_vendor\":\"nvidia\","
                "\"gpus_per_node\":8,\"kfleet_driver\":\"550.90.07\","
                "\"ntp_servers\":[\"ntp1.example.com\",\"ntp2.example.com\"],"
                "\"rollout_wave\":0}");
    assert_null(h->address);
    assert_int_equal(h->port, 0);
    assert_string_equal(h->user, "deploy");
    assert_string_equal(h->key_file, "/home/op/.ssh/fleet_ed25519");
    assert_int_equal(h->become, 1);
    assert_null(h->become_user);
    assert_null(h->connection);
    assert_string_equal(h->proxy_jump, "deploy@203.0.113.10");
    assert_string_equal(h->ssh_common_args,
                        "-o ProxyJump=deploy@203.0.113.10 -o ServerAliveInterval=15");

    /* Host vars (the canary entry) beat every group's. */
    h = host(&inv, "gpu-a01");
    assert_string_equal(joined(h->groups, h->ngroups), "a100 all canary gpu");
    assert_var(&inv, "gpu-a01", "kfleet_driver", "\"555.42.02\"");
    assert_var(&inv, "gpu-a01", "gpu_model", "\"A100\"");
    assert_int_equal(h->port, 2222);
    assert_var(&inv, "gpu-a02", "kfleet_driver", "\"550.90.07\"");
    assert_int_equal(host(&inv, "gpu-a02")->port, 2222);

    h = host(&inv, "bastion01");
    assert_string_equal(joined(h->groups, h->ngroups), "all ungrouped");
    assert_string_equal(h->address, "203.0.113.10");
    assert_int_equal(h->become, 0);
    assert_null(h->proxy_jump);
    assert_var(&inv, "bastion01", "kfleet_driver", "\"550.54.15\"");

    h = host(&inv, "storb.example.com");
    assert_string_equal(h->become_user, "storage");
    assert_int_equal(h->become, 1);

    inv_release(&inv);
    assert_null(inv.hosts);
    assert_int_equal(inv.nhosts, 0);
    inv_release(&inv); /* twice is fine */
}

static void test_release_empty(void **state)
{
    struct inventory inv;
    const struct inv_host *h;

    (void)state;
    inv_init(&inv);
    inv_release(&inv);
    inv_release(&inv);
    inv_release(NULL);
    h = inv_find_host(&inv, "x");
    assert_null(h);
    assert_null(inv_find_group(&inv, "all"));
}

static void test_load_file_missing(void **state)
{
    struct inventory inv;
    struct kf_err err;

    (void)state;
    assert_int_equal(inv_load_file(&inv, "/nonexistent/inv.yml", &err), KF_ENOENT);
    assert_string_equal(err.msg,
                        "/nonexistent/inv.yml: cannot read inventory: No such file or directory");
    assert_int_equal(inv.nhosts, 0);
    assert_int_equal(inv_load_file(&inv, KF_FIXTURES, &err), KF_EIO);
    assert_string_equal(err.msg, KF_FIXTURES ": cannot read inventory: Is a directory");
    inv_release(&inv);
}

static void test_load_file_too_large(void **state)
{
    char path[] = "/tmp/kf-test-inventory-XXXXXX", msg[256];
    static char chunk[1 << 20];
    struct inventory inv;
    struct kf_err err;
    FILE *f;
    int fd, i;

    (void)state;
    /* 17 MiB of comments: over the 16 MiB an inventory file may have. */
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    memset(chunk, ' ', sizeof(chunk));
    chunk[0] = '#';
    chunk[sizeof(chunk) - 1] = '\n';
    for (i = 0; i < 17; i++)
        assert_int_equal(fwrite(chunk, 1, sizeof(chunk), f), sizeof(chunk));
    fclose(f);
    assert_int_equal(inv_load_file(&inv, path, &err), KF_EPARSE);
    snprintf(msg, sizeof(msg), "%s: inventory larger than 16 MiB", path);
    assert_string_equal(err.msg, msg);
    assert_int_equal(inv.nhosts, 0);
    unlink(path);
}

static void test_fixture_errors(void **state)
{
    struct inventory inv;
    struct kf_err err;

    (void)state;
    assert_int_equal(inv_load_file(&inv, KF_FIXTURES "/inventory/cycle.yml", &err), KF_EPARSE);
    assert_string_equal(err.msg, KF_FIXTURES "/inventory/cycle.yml:13:17: group 'rack2': cycle "
                                             "in children: racks -> rack1 -> rack2 -> racks");
    assert_int_equal(inv_load_file(&inv, KF_FIXTURES "/inventory/typo.yml", &err), KF_EPARSE);
    assert_string_equal(err.msg, KF_FIXTURES "/inventory/typo.yml:7:7: group 'gpu': unknown key "
                                             "'hots' (expected hosts, vars or children)");
    assert_int_equal(inv.nhosts, 0);
    inv_release(&inv);
}

/* ------------------------------------------------------------------------ */
/* Structure                                                                 */

static void test_implicit_groups(void **state)
{
    struct inventory inv;
    const struct inv_group *g;

    (void)state;
    /* Top-level groups other than all become children of all unless some
     * group lists them; ungrouped gets the hosts in no other group. */
    load_ok(&inv, "web:\n"
                  "  hosts:\n"
                  "    w1:\n"
                  "db:\n"
                  "  children:\n"
                  "    pg:\n"
                  "pg:\n"
                  "  hosts:\n"
                  "    p1:\n"
                  "all:\n"
                  "  hosts:\n"
                  "    solo:\n"
                  "    w1:\n"
                  "ungrouped:\n"
                  "  hosts:\n"
                  "    p1:\n"
                  "    loner:\n");
    assert_string_equal(host_names(&inv), "w1 p1 solo loner");
    g = group(&inv, "all");
    assert_string_equal(joined(g->children, g->nchildren), "ungrouped web db");
    assert_string_equal(joined(g->hosts, g->nhosts), "solo w1");
    g = group(&inv, "ungrouped");
    assert_string_equal(joined(g->hosts, g->nhosts), "solo loner");
    assert_string_equal(joined(host(&inv, "p1")->groups, host(&inv, "p1")->ngroups), "all db pg");
    assert_string_equal(joined(host(&inv, "loner")->groups, host(&inv, "loner")->ngroups),
                        "all ungrouped");
    assert_string_equal(joined(host(&inv, "w1")->groups, host(&inv, "w1")->ngroups), "all web");
    inv_release(&inv);

    /* The smallest inventory: just all. */
    load_ok(&inv, "all:\n");
    assert_int_equal(inv.nhosts, 0);
    assert_int_equal(inv.ngroups, 2);
    assert_string_equal(joined(group(&inv, "all")->children, group(&inv, "all")->nchildren),
                        "ungrouped");
    inv_release(&inv);
}

static void test_group_merged_across_parents(void **state)
{
    struct inventory inv;
    const struct inv_group *g;

    (void)state;
    load_ok(&inv, "all:\n"
                  "  children:\n"
                  "    rack1:\n"
                  "      children:\n"
                  "        gpu:\n"
                  "          hosts:\n"
                  "            g1:\n"
                  "          vars:\n"
                  "            a: 1\n"
                  "    rack2:\n"
                  "      children:\n"
                  "        gpu:\n"
                  "          hosts:\n"
                  "            g2:\n"
                  "            g1:\n"
                  "          vars:\n"
                  "            a: 1\n"
                  "            b: 2\n"
                  "          children:\n"
                  "            tiny:\n");
    g = group(&inv, "gpu");
    assert_string_equal(joined(g->hosts, g->nhosts), "g1 g2");
    assert_string_equal(joined(g->children, g->nchildren), "tiny");
    assert_int_equal(json_object_size(g->vars), 2);
    assert_int_equal(g->loc.line, 5);
    assert_string_equal(joined(host(&inv, "g2")->groups, host(&inv, "g2")->ngroups),
                        "all gpu rack1 rack2");
    assert_vars(&inv, "g1", "{\"a\":1,\"b\":2}");
    inv_release(&inv);
}

static void test_sections_as_strings(void **state)
{
    struct inventory inv;

    (void)state;
    /* Ansible reads "hosts: x" as "hosts: {x: }". */
    load_ok(&inv, "all:\n"
                  "  children:\n"
                  "    g:\n"
                  "      hosts: web1\n"
                  "      children: sub\n"
                  "    sub:\n"
                  "      hosts: {db1: , db2: {}}\n");
    assert_string_equal(host_names(&inv), "web1 db1 db2");
    assert_string_equal(joined(host(&inv, "db1")->groups, host(&inv, "db1")->ngroups), "all g sub");
    inv_release(&inv);
}

static void test_host_port_suffix(void **state)
{
    struct inventory inv;

    (void)state;
    load_ok(&inv, "all:\n"
                  "  hosts:\n"
                  "    web.example.com:2222:\n"
                  "    n[1:2]:2200:\n"
                  "    fe80::1:\n"
                  "    pinned:22:\n"
                  "      ansible_port: 2022\n");
    assert_string_equal(host_names(&inv), "web.example.com n1 n2 fe80::1 pinned");
    assert_int_equal(host(&inv, "web.example.com")->port, 2222);
    assert_int_equal(host(&inv, "n2")->port, 2200);
    assert_int_equal(host(&inv, "fe80::1")->port, 0);
    assert_int_equal(host(&inv, "pinned")->port, 2022);
    inv_release(&inv);
}

/* ------------------------------------------------------------------------ */
/* Variables                                                                 */

static void test_precedence_depth(void **state)
{
    struct inventory inv;

    (void)state;
    /* all (depth 0) < region (1) < rack (2) < node group (3) < host. */
    load_ok(&inv, "all:\n"
                  "  vars: {v0: all, v1: all, v2: all, v3: all, v4: all}\n"
                  "  children:\n"
                  "    region:\n"
                  "      vars: {v1: region, v2: region, v3: region, v4: region}\n"
                  "      children:\n"
                  "        rack:\n"
                  "          vars: {v2: rack, v3: rack, v4: rack}\n"
                  "          children:\n"
                  "            nodes:\n"
                  "              vars: {v3: nodes, v4: nodes}\n"
                  "              hosts:\n"
                  "                n1: {v4: host}\n");
    assert_vars(&inv, "n1",
                "{\"v0\":\"all\",\"v1\":\"region\",\"v2\":\"rack\",\"v3\":\"nodes\","
                "\"v4\":\"host\"}");
    inv_release(&inv);
}

static void test_precedence_alphabetical_tie(void **state)
{
    struct inventory inv;

    (void)state;
    /* Same depth: later names win (zeta after alpha), whatever the file
     * order. A deeper group beats both even if its name sorts first. */
    load_ok(&inv, "all:\n"
                  "  children:\n"
                  "    zeta:\n"
                  "      vars: {x: zeta, y: zeta}\n"
                  "      hosts: {h1: }\n"
                  "    alpha:\n"
                  "      vars: {x: alpha, y: alpha, z: alpha}\n"
                  "      hosts: {h1: }\n"
                  "      children:\n"
                  "        aaa:\n"
                  "          vars: {z: aaa}\n"
                  "          hosts: {h1: }\n");
    assert_vars(&inv, "h1", "{\"x\":\"zeta\",\"y\":\"zeta\",\"z\":\"aaa\"}");
    inv_release(&inv);
}

static void test_precedence_group_priority(void **state)
{
    struct inventory inv;

    (void)state;
    /* ansible_group_priority reorders groups of the same depth. */
    load_ok(&inv, "all:\n"
                  "  children:\n"
                  "    alpha:\n"
                  "      vars: {x: alpha, ansible_group_priority: 10}\n"
                  "      hosts: {h1: }\n"
                  "    zeta:\n"
                  "      vars: {x: zeta}\n"
                  "      hosts: {h1: }\n");
    assert_var(&inv, "h1", "x", "\"alpha\"");
    inv_release(&inv);
}

static void test_precedence_longest_path(void **state)
{
    struct inventory inv;

    (void)state;
    /* Depth is the longest path from all: "deep" is listed directly under
     * all and under a:b, so it is depth 3 and beats b (depth 2). */
    load_ok(&inv, "all:\n"
                  "  children:\n"
                  "    deep:\n"
                  "      vars: {x: deep}\n"
                  "    a:\n"
                  "      children:\n"
                  "        b:\n"
                  "          vars: {x: b}\n"
                  "          hosts: {h1: }\n"
                  "          children:\n"
                  "            deep:\n"
                  "              hosts: {h1: }\n");
    assert_var(&inv, "h1", "x", "\"deep\"");
    inv_release(&inv);
}

static void test_scalar_resolution(void **state)
{
    struct inventory inv;

    (void)state;
    /* Plain scalars as PyYAML (YAML 1.1) resolves them; quoted ones are
     * strings whatever they look like. */
    load_ok(&inv, "all:\n"
                  "  hosts:\n"
                  "    h:\n"
                  "      b1: yes\n"
                  "      b2: No\n"
                  "      b3: ON\n"
                  "      b4: off\n"
                  "      b5: True\n"
                  "      b6: FALSE\n"
                  "      s1: y\n"
                  "      s2: \"yes\"\n"
                  "      n1: ~\n"
                  "      n2: null\n"
                  "      n3:\n"
                  "      n4: NULL\n"
                  "      i1: 42\n"
                  "      i2: -17\n"
                  "      i3: 0x1F\n"
                  "      i4: 0755\n"
                  "      i5: 0b101\n"
                  "      i6: 1_000\n"
                  "      i7: 1:30\n"
                  "      i8: +0\n"
                  "      s3: '42'\n"
                  "      s4: 09\n"
                  "      s5: 99999999999999999999\n"
                  "      f1: 1.5\n"
                  "      f2: .5\n"
                  "      f3: 1.0e+3\n"
                  "      f4: -2.\n"
                  "      s6: 1e3\n"
                  "      s7: .inf\n"
                  "      s8: 2024-01-02\n"
                  "      s9: 550.54.15\n"
                  "      t1: !!str 12\n"
                  "      t2: !!float 3\n"
                  "      t3: !unsafe '{{ x }}'\n"
                  "      t4: !vault |\n"
                  "        $ANSIBLE_VAULT;1.1;AES256\n"
                  "      l1: [1, two, {three: 3}]\n"
                  "      m1: {a: [], b: {}}\n"
                  "      ml: |\n"
                  "        line1\n"
                  "        line2\n");
    assert_vars(&inv, "h",
                "{\"b1\":true,\"b2\":false,\"b3\":true,\"b4\":false,\"b5\":true,\"b6\":false,"
                "\"f1\":1.5,\"f2\":0.5,\"f3\":1000.0,\"f4\":-2.0,"
                "\"i1\":42,\"i2\":-17,\"i3\":31,\"i4\":493,\"i5\":5,\"i6\":1000,\"i7\":90,"
                "\"i8\":0,"
                "\"l1\":[1,\"two\",{\"three\":3}],\"m1\":{\"a\":[],\"b\":{}},"
                "\"ml\":\"line1\\nline2\\n\","
                "\"n1\":null,\"n2\":null,\"n3\":null,\"n4\":null,"
                "\"s1\":\"y\",\"s2\":\"yes\",\"s3\":\"42\",\"s4\":\"09\","
                "\"s5\":\"99999999999999999999\",\"s6\":\"1e3\",\"s7\":\".inf\","
                "\"s8\":\"2024-01-02\",\"s9\":\"550.54.15\","
                "\"t1\":\"12\",\"t2\":3.0,\"t3\":\"{{ x }}\","
                "\"t4\":{\"__ansible_vault\":\"$ANSIBLE_VAULT;1.1;AES256\\n\"}}");
    inv_release(&inv);
}

static void test_same_value_twice_ok(void **state)
{
    struct inventory inv;

    (void)state;
    load_ok(&inv, "all:\n"
                  "  children:\n"
                  "    g1:\n"
                  "      hosts:\n"
                  "        h1: {x: [1, 2], y: 1}\n"
                  "    g2:\n"
                  "      hosts:\n"
                  "        h1: {x: [1, 2], z: 2}\n");
    assert_vars(&inv, "h1", "{\"x\":[1,2],\"y\":1,\"z\":2}");
    inv_release(&inv);
}

static void test_conflicting_host_vars(void **state)
{
    (void)state;
    expect_error("all:\n"
                 "  children:\n"
                 "    g1:\n"
                 "      hosts:\n"
                 "        h1:\n"
                 "          x: 1\n"
                 "    g2:\n"
                 "      hosts:\n"
                 "        h1:\n"
                 "          x: \"1\"\n",
                 KF_EPARSE,
                 "inv.yml:10:11: host 'h1': variable 'x' is given a different value than at 6:11");
    /* Through a range too: h2 comes from both entries. */
    expect_error("all:\n"
                 "  hosts:\n"
                 "    h[1:3]: {port_hint: 1}\n"
                 "    h2: {port_hint: 2}\n",
                 KF_EPARSE,
                 "inv.yml:4:10: host 'h2': variable 'port_hint' is given a different value than "
                 "at 3:14");
    /* And for a group defined in two places. */
    expect_error("a:\n"
                 "  vars: {x: 1}\n"
                 "b:\n"
                 "  children:\n"
                 "    a:\n"
                 "      vars: {x: 2}\n",
                 KF_EPARSE,
                 "inv.yml:6:14: group 'a': variable 'x' is given a different value than at 2:10");
}

/* ------------------------------------------------------------------------ */
/* Connection variables                                                      */

static void test_connection_vars(void **state)
{
    struct inventory inv;
    const struct inv_host *h;

    (void)state;
    setenv("HOME", "/home/op", 1);
    load_ok(&inv, "all:\n"
                  "  hosts:\n"
                  "    a:\n"
                  "      ansible_ssh_host: 10.0.0.1\n"
                  "      ansible_ssh_port: \"2200\"\n"
                  "      ansible_ssh_user: 1000\n"
                  "      ansible_ssh_private_key_file: ~\n"
                  "      ansible_become: \"Yes\"\n"
                  "      ansible_become_user: postgres\n"
                  "      ansible_connection: ssh\n"
                  "    b:\n"
                  "      ansible_host: new\n"
                  "      ansible_ssh_host: old\n"
                  "      ansible_port: 22\n"
                  "      ansible_ssh_port: 99999\n"
                  "      ansible_ssh_private_key_file: /etc/kfleet/id\n"
                  "      ansible_become: 0\n"
                  "    c:\n"
                  "      ansible_host: ~\n"
                  "      ansible_become: \"t\"\n"
                  "      ansible_ssh_private_key_file: ~other/key\n");
    h = host(&inv, "a");
    assert_string_equal(h->address, "10.0.0.1");
    assert_int_equal(h->port, 2200);
    assert_string_equal(h->user, "1000");
    /* "~" alone is YAML null: unset. */
    assert_null(h->key_file);
    assert_int_equal(h->become, 1);
    assert_string_equal(h->become_user, "postgres");
    assert_string_equal(h->connection, "ssh");
    h = host(&inv, "b");
    assert_string_equal(h->address, "new");
    assert_int_equal(h->port, 22);
    assert_string_equal(h->key_file, "/etc/kfleet/id");
    assert_int_equal(h->become, 0);
    h = host(&inv, "c");
    assert_null(h->address);
    assert_int_equal(h->become, 1);
    assert_string_equal(h->key_file, "~other/key");
    inv_release(&inv);
}

static void test_proxy_jump(void **state)
{
    static const struct {
        const char *args, *jump;
    } cases[] = {
        {"-o ProxyJump=bastion", "bastion"},
        {"-oProxyJump=u@b:2222", "u@b:2222"},
        {"-o proxyjump=lower", "lower"},
        {"-J jump1", "jump1"},
        {"-Jjump2,jump3", "jump2,jump3"},
        {"-o 'ProxyJump quoted'", "quoted"},
        {"-o \"ProxyJump = spaced\"", "spaced"},
        {"-o StrictHostKeyChecking=no -o ProxyJump=second", "second"},
        {"-J first -o ProxyJump=second", "first"},
        {"-l -J host", NULL},
        {"-vJ x", "x"},
        {"-o ProxyCommand=nc", NULL},
        {"-o ProxyJump=none", NULL},
        {"-J", NULL},
        {"", NULL},
        {"-o ProxyJumpX=no", NULL},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct inventory inv;
        char yaml[512];
        json_t *s = json_string(cases[i].args);
        char *quoted = json_dumps(s, JSON_ENCODE_ANY);

        /* A JSON string is a YAML double-quoted scalar. */
        snprintf(yaml, sizeof(yaml), "all:\n  hosts:\n    h:\n      ansible_ssh_common_args: %s\n",
                 quoted);
        free(quoted);
        json_decref(s);
        load_ok(&inv, yaml);
        assert_string_equal(inv.hosts[0].ssh_common_args, cases[i].args);
        if (cases[i].jump == NULL) {
            if (inv.hosts[0].proxy_jump != NULL)
                fail_msg("'%s': got proxy '%s'", cases[i].args, inv.hosts[0].proxy_jump);
        } else {
            if (inv.hosts[0].proxy_jump == NULL)
                fail_msg("'%s': no proxy", cases[i].args);
            assert_string_equal(inv.hosts[0].proxy_jump, cases[i].jump);
        }
        inv_release(&inv);
    }
}

static void test_connection_errors(void **state)
{
    (void)state;
    expect_error("all:\n"
                 "  hosts:\n"
                 "    h1:\n"
                 "      ansible_port: 70000\n",
                 KF_EPARSE,
                 "inv.yml:4:7: host 'h1': ansible_port 70000 is not a port number (expected "
                 "1..65535)");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    h1:\n"
                 "      ansible_port: 0\n",
                 KF_EPARSE,
                 "inv.yml:4:7: host 'h1': ansible_port 0 is not a port number (expected "
                 "1..65535)");
    /* The location is where the value came from: a group's vars here. */
    expect_error("all:\n"
                 "  vars:\n"
                 "    ansible_ssh_port: \"22x\"\n"
                 "  hosts:\n"
                 "    h1:\n",
                 KF_EPARSE,
                 "inv.yml:3:5: host 'h1': ansible_ssh_port \"22x\" is not a port number (expected "
                 "1..65535)");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    h1:\n"
                 "      ansible_become: maybe\n",
                 KF_EPARSE,
                 "inv.yml:4:7: host 'h1': ansible_become \"maybe\" is not a boolean (expected "
                 "true/false or yes/no)");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    h1:\n"
                 "      ansible_become: 2\n",
                 KF_EPARSE,
                 "inv.yml:4:7: host 'h1': ansible_become 2 is not a boolean (expected "
                 "true/false or yes/no)");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    h1:\n"
                 "      ansible_user: [root]\n",
                 KF_EPARSE,
                 "inv.yml:4:7: host 'h1': ansible_user must be a string, not [\"root\"]");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    h1:\n"
                 "      ansible_ssh_common_args: \"-o 'ProxyJump=x\"\n",
                 KF_EPARSE,
                 "inv.yml:4:7: host 'h1': ansible_ssh_common_args has an unterminated quote or a "
                 "trailing backslash");
    expect_error("all:\n"
                 "  children:\n"
                 "    g:\n"
                 "      vars: {ansible_group_priority: high}\n",
                 KF_EPARSE,
                 "inv.yml:4:14: group 'g': ansible_group_priority \"high\" is not an "
                 "integer");
}

/* ------------------------------------------------------------------------ */
/* YAML: aliases, merge keys, bounds, errors                                 */

static void test_aliases_and_merge_keys(void **state)
{
    struct inventory inv;
    const struct inv_group *g;

    (void)state;
    load_ok(&inv, "all:\n"
                  "  vars:\n"
                  "    base: &base {x: 1, y: 2}\n"
                  "    more: &more {y: 3, z: 4}\n"
                  "    m1:\n"
                  "      <<: *base\n"
                  "      x: 9\n"
                  "    m2: {<<: [*base, *more]}\n"
                  "    m3: {<<: [*more, *base], w: 0}\n"
                  "    quoted: {\"<<\": *base}\n"
                  "    tagged: {!!merge x: *base}\n"
                  "    list: &l [a, b]\n"
                  "    again: *l\n"
                  "  children:\n"
                  "    gpu: &gpu\n"
                  "      hosts: &gpuhosts\n"
                  "        g1:\n"
                  "        g2:\n"
                  "      vars: {role: gpu}\n"
                  "    gpu-copy:\n"
                  "      <<: *gpu\n"
                  "      vars: {role: copy}\n"
                  "    mixed:\n"
                  "      hosts:\n"
                  "        <<: *gpuhosts\n"
                  "        m1:\n"
                  "        g1: {extra: 1}\n");
    g = group(&inv, "all");
    {
        char *v = json_dumps(g->vars, JSON_COMPACT | JSON_SORT_KEYS);

        assert_string_equal(v, "{\"again\":[\"a\",\"b\"],\"base\":{\"x\":1,\"y\":2},"
                               "\"list\":[\"a\",\"b\"],"
                               "\"m1\":{\"x\":9,\"y\":2},\"m2\":{\"x\":1,\"y\":2,\"z\":4},"
                               "\"m3\":{\"w\":0,\"x\":1,\"y\":3,\"z\":4},"
                               "\"more\":{\"y\":3,\"z\":4},\"quoted\":{\"<<\":{\"x\":1,\"y\":2}},"
                               "\"tagged\":{\"x\":1,\"y\":2}}");
        free(v);
    }
    assert_string_equal(host_names(&inv), "g1 g2 m1");
    g = group(&inv, "gpu-copy");
    assert_string_equal(joined(g->hosts, g->nhosts), "g1 g2");
    assert_string_equal(json_string_value(json_object_get(g->vars, "role")), "copy");
    /* Merged keys come first, in PyYAML's order. */
    g = group(&inv, "mixed");
    assert_string_equal(joined(g->hosts, g->nhosts), "g1 g2 m1");
    assert_var(&inv, "g1", "extra", "1");
    inv_release(&inv);
}

static void test_alias_bomb(void **state)
{
    (void)state;
    /* Billion laughs: 9^9 nodes if expanded. */
    expect_error("all:\n"
                 "  vars:\n"
                 "    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
                 "    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                 "    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                 "    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                 "    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                 "    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                 "    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
                 "    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
                 "    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n",
                 KF_EPARSE,
                 "inv.yml:9:5: more than 1000000 YAML nodes once aliases and merge keys are "
                 "expanded (an alias bomb?)");
    /* Values under the bound one by one, over it together: f is 597871
     * nodes, after a to e it fits once but not twice. */
    expect_error("all:\n"
                 "  vars:\n"
                 "    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
                 "    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                 "    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                 "    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                 "    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                 "    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                 "    f2: *f\n",
                 KF_EPARSE,
                 "inv.yml:9:5: more than 1000000 YAML nodes once aliases and merge keys are "
                 "expanded (an alias bomb?)");
    /* The same with merge keys. */
    expect_error("all:\n"
                 "  vars:\n"
                 "    a: &a {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}\n"
                 "    b: &b {<<: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], x: [*a, *a, *a, *a]}\n"
                 "    c: &c {<<: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], x: [*b, *b, *b, *b]}\n"
                 "    d: &d {<<: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], x: [*c, *c, *c, *c]}\n"
                 "    e: &e {<<: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d], x: [*d, *d, *d, *d]}\n"
                 "    f: &f {<<: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e], x: [*e, *e, *e, *e]}\n"
                 "    g: &g {<<: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f], x: [*f, *f, *f, *f]}\n",
                 KF_EPARSE,
                 "inv.yml:8:5: more than 1000000 YAML nodes once aliases and merge keys are "
                 "expanded (an alias bomb?)");
}

static void test_size_limits(void **state)
{
    struct inventory inv;
    const struct inv_group *g;

    (void)state;
    expect_error("all:\n"
                 "  hosts:\n"
                 "    h[0:100000]:\n",
                 KF_EPARSE,
                 "inv.yml:3:5: more than 100000 hosts (the most one inventory may hold)");
    /* Aliases repeating group definitions under the same names: 8 x 8 x 8
     * walks if expanded, but each (group, definition) is read once. */
    load_ok(&inv,
            "all:\n"
            "  children:\n"
            "    a: &a\n"
            "      hosts:\n"
            "        h[1:5000]:\n"
            "    b: &b\n"
            "      children: {x1: *a, x2: *a, x3: *a, x4: *a, x5: *a, x6: *a, x7: *a, x8: *a}\n"
            "    c: &c\n"
            "      children: {y1: *b, y2: *b, y3: *b, y4: *b, y5: *b, y6: *b, y7: *b, y8: *b}\n"
            "    d:\n"
            "      children: {z1: *c, z2: *c, z3: *c, z4: *c, z5: *c, z6: *c, z7: *c, z8: *c}\n");
    assert_int_equal(inv.nhosts, 5000);
    assert_int_equal(inv.ngroups, 2 + 4 + 24);
    g = group(&inv, "y3");
    assert_string_equal(joined(g->children, g->nchildren), "x1 x2 x3 x4 x5 x6 x7 x8");
    assert_int_equal(group(&inv, "x8")->nhosts, 5000);
    assert_string_equal(joined(host(&inv, "h77")->groups, host(&inv, "h77")->ngroups),
                        "a all b c d x1 x2 x3 x4 x5 x6 x7 x8 y1 y2 y3 y4 y5 y6 y7 y8 z1 z2 z3 z4 "
                        "z5 z6 z7 z8");
    inv_release(&inv);
}

static void test_depth_limits(void **state)
{
    char yaml[1024];
    size_t i, n = 0;

    (void)state;
    /* 70 nested flow sequences: the 65th collection from the root fails. */
    n += (size_t)snprintf(yaml + n, sizeof(yaml) - n, "all:\n  vars:\n    x: ");
    for (i = 0; i < 70; i++)
        yaml[n++] = '[';
    for (i = 0; i < 70; i++)
        yaml[n++] = ']';
    yaml[n++] = '\n';
    yaml[n] = '\0';
    expect_error(yaml, KF_EPARSE, "inv.yml:3:69: nesting deeper than 64 levels");

    /* Shallow in the file, deep through aliases. */
    n = (size_t)snprintf(yaml, sizeof(yaml), "all:\n  vars:\n    a: &a ");
    for (i = 0; i < 40; i++)
        yaml[n++] = '[';
    for (i = 0; i < 40; i++)
        yaml[n++] = ']';
    n += (size_t)snprintf(yaml + n, sizeof(yaml) - n, "\n    b: ");
    for (i = 0; i < 40; i++)
        yaml[n++] = '[';
    n += (size_t)snprintf(yaml + n, sizeof(yaml) - n, "*a");
    for (i = 0; i < 40; i++)
        yaml[n++] = ']';
    yaml[n++] = '\n';
    yaml[n] = '\0';
    expect_error(yaml, KF_EPARSE, "inv.yml:3:32: nesting deeper than 64 levels (aliases included)");
}

static void test_yaml_errors(void **state)
{
    (void)state;
    expect_error("", KF_EPARSE,
                 "inv.yml:1:1: empty inventory (expected a mapping of groups, "
                 "such as 'all:')");
    expect_error("# nothing\n", KF_EPARSE,
                 "inv.yml:1:1: empty inventory (expected a mapping of groups, such as 'all:')");
    expect_error("- all\n", KF_EPARSE,
                 "inv.yml:1:1: expected a mapping of groups at the top (such as 'all:'), not a "
                 "sequence");
    expect_error("all\n", KF_EPARSE,
                 "inv.yml:1:1: expected a mapping of groups at the top (such as 'all:'), not a "
                 "scalar");
    /* libyaml's own errors, with their context. */
    expect_error("all:\n"
                 "  hosts:\n"
                 "    a: [1, 2\n",
                 KF_EPARSE,
                 "inv.yml:4:1: did not find expected ',' or ']' (while parsing a flow sequence at "
                 "3:8)");
    expect_error("all:\n"
                 "\thosts:\n",
                 KF_EPARSE,
                 "inv.yml:2:1: found character that cannot start any token (while scanning for "
                 "the next token at 2:1)");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    \xff\xfe:\n",
                 KF_EPARSE, "inv.yml:3:5: invalid leading UTF-8 octet (#xFF)");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    a\x1b[2J:\n",
                 KF_EPARSE, "inv.yml:3:6: control characters are not allowed (#x1B)");
    expect_error("all:\n"
                 "---\n"
                 "all:\n",
                 KF_EPARSE, "inv.yml:2:1: a second YAML document (an inventory is one document)");
    expect_error("all:\n"
                 "  hosts: *nope\n",
                 KF_EPARSE, "inv.yml:2:10: alias '*nope' refers to no anchor defined before it");
    expect_error("all: &a\n"
                 "  hosts: *a\n",
                 KF_EPARSE,
                 "inv.yml:2:10: alias '*a' is inside the node it refers to (a recursive "
                 "structure)");
    expect_error("all: &a\n"
                 "  hosts: &a {}\n",
                 KF_EPARSE, "inv.yml:2:10: anchor '&a' defined again (first defined at 1:6)");
    expect_error("all:\n"
                 "  vars:\n"
                 "    x: !python/object foo\n",
                 KF_EPARSE, "inv.yml:3:8: unsupported YAML tag '!python/object' on a scalar");
    expect_error("all:\n"
                 "  vars:\n"
                 "    x: !!int abc\n",
                 KF_EPARSE, "inv.yml:3:8: 'abc' does not fit its tag !!int");
    expect_error("all:\n"
                 "  vars:\n"
                 "    ? [a]\n"
                 "    : b\n",
                 KF_EPARSE, "inv.yml:3:7: a mapping key must be a scalar, not a sequence");
    expect_error("all:\n"
                 "  vars: {<<: 1}\n",
                 KF_EPARSE,
                 "inv.yml:2:14: merge key '<<' takes a mapping or a sequence of mappings, not a "
                 "scalar");
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    expect_error("all:\n"
                 "  hosts:\n"
                 "    a:\n"
                 "    b:\n"
                 "    a:\n",
                 KF_EPARSE, "inv.yml:5:5: duplicate key 'a' (first at 3:5)");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    a:\n"
                 "  hosts:\n",
                 KF_EPARSE, "inv.yml:4:3: duplicate key 'hosts' (first at 2:3)");
    expect_error("all:\n"
                 "  vars: {x: 1, \"x\": 2}\n",
                 KF_EPARSE, "inv.yml:2:16: duplicate key 'x' (first at 2:10)");
    expect_error("all:\n"
                 "  vars:\n"
                 "    deep: {a: {b: 1, b: 1}}\n",
                 KF_EPARSE, "inv.yml:3:22: duplicate key 'b' (first at 3:16)");
    expect_error("all:\n"
                 "  vars:\n"
                 "    a: &a {x: 1}\n"
                 "    m: {<<: *a, <<: *a}\n",
                 KF_EPARSE, "inv.yml:4:17: duplicate key '<<' (first at 4:9)");
    expect_error("all:\n"
                 "all:\n",
                 KF_EPARSE, "inv.yml:2:1: duplicate key 'all' (first at 1:1)");
}

static void test_structure_errors(void **state)
{
    (void)state;
    expect_error("all:\n"
                 "  children:\n"
                 "    gpu:\n"
                 "      hots:\n"
                 "        gpu1:\n",
                 KF_EPARSE,
                 "inv.yml:4:7: group 'gpu': unknown key 'hots' (expected hosts, vars or "
                 "children)");
    expect_error("all: [a]\n", KF_EPARSE,
                 "inv.yml:1:6: group 'all': expected a mapping with hosts, vars or children, not "
                 "a sequence");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    - a\n",
                 KF_EPARSE, "inv.yml:3:5: group 'all': 'hosts' must be a mapping, not a sequence");
    expect_error("all:\n"
                 "  vars: 5\n",
                 KF_EPARSE, "inv.yml:2:9: group 'all': 'vars' must be a mapping, not a scalar");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    a: [x]\n",
                 KF_EPARSE,
                 "inv.yml:3:8: host 'a': expected a mapping of variables or nothing, not a "
                 "sequence");
    expect_error("all:\n"
                 "  children:\n"
                 "    x:\n"
                 "      children:\n"
                 "        all:\n",
                 KF_EPARSE, "inv.yml:5:9: group 'x': 'all' cannot be a child group");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    \"\":\n",
                 KF_EPARSE, "inv.yml:3:5: empty host name");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    \"evil\\e[2J\":\n",
                 KF_EPARSE, "inv.yml:3:5: host name 'evil\\x1b[2J' contains a control character");
    expect_error("\"g\\n\":\n", KF_EPARSE,
                 "inv.yml:1:1: group name 'g\\x0a' contains a control character");
}

static void test_cycles(void **state)
{
    (void)state;
    expect_error("all:\n"
                 "  children:\n"
                 "    a:\n"
                 "      children:\n"
                 "        b:\n"
                 "          children:\n"
                 "            a:\n",
                 KF_EPARSE, "inv.yml:7:13: group 'b': cycle in children: a -> b -> a");
    /* A cycle that nothing else points to still is one. */
    expect_error("x:\n"
                 "  children:\n"
                 "    x:\n",
                 KF_EPARSE, "inv.yml:3:5: group 'x': cycle in children: x -> x");
}

static void test_range_errors_in_inventory(void **state)
{
    (void)state;
    expect_error("all:\n"
                 "  hosts:\n"
                 "    gpu[01:x]:\n",
                 KF_EPARSE,
                 "inv.yml:3:5: host 'gpu[01:x]': bad range '[01:x]': begin and end mix a letter "
                 "and a number");
    expect_error("all:\n"
                 "  children:\n"
                 "    g:\n"
                 "      hosts:\n"
                 "        n[9:1]:\n",
                 KF_EPARSE,
                 "inv.yml:5:9: host 'n[9:1]': bad range '[9:1]': end 1 is before "
                 "begin 9");
    expect_error("all:\n"
                 "  hosts:\n"
                 "    h[0:9999999]:\n",
                 KF_EPARSE,
                 "inv.yml:3:5: host 'h[0:9999999]': ranges expand to more than 1000000 names");
}

static void test_ranges_in_inventory(void **state)
{
    struct inventory inv;

    (void)state;
    load_ok(&inv, "all:\n"
                  "  hosts:\n"
                  "    r[1:2]n[a:b]:\n"
                  "      rack_var: 1\n");
    assert_string_equal(host_names(&inv), "r1na r1nb r2na r2nb");
    assert_var(&inv, "r2nb", "rack_var", "1");
    assert_int_equal(inv.hosts[3].loc.line, 3);
    inv_release(&inv);
}

/* ------------------------------------------------------------------------ */
/* inv_expand_range                                                          */

static void expect_range(const char *pattern, const char *names)
{
    struct kf_err err;
    char **v;
    size_t n;

    if (inv_expand_range(pattern, &v, &n, &err) != 0)
        fail_msg("'%s': %s", pattern, err.msg);
    assert_string_equal(joined(v, n), names);
    kf_strv_free(v, n);
}

static void expect_range_error(const char *pattern, const char *msg)
{
    struct kf_err err;
    char **v = (char **)1;
    size_t n = 7;

    assert_int_equal(inv_expand_range(pattern, &v, &n, &err), KF_EINVAL);
    assert_string_equal(err.msg, msg);
    assert_null(v);
    assert_int_equal(n, 0);
}

static void test_expand_range(void **state)
{
    (void)state;
    expect_range("plain", "plain");
    expect_range("a]b", "a]b");
    expect_range("gpu[001:004]", "gpu001 gpu002 gpu003 gpu004");
    expect_range("gpu[08:11]", "gpu08 gpu09 gpu10 gpu11");
    expect_range("n[1:3]", "n1 n2 n3");
    expect_range("n[8:10]", "n8 n9 n10");
    expect_range("n[:2]", "n0 n1 n2");
    expect_range("n[5:5]", "n5");
    expect_range("node[a:f]", "nodea nodeb nodec noded nodee nodef");
    expect_range("n[y:B]", "ny nz nA nB");
    expect_range("x[0:10:2]", "x0 x2 x4 x6 x8 x10");
    expect_range("x[0:10:4]", "x0 x4 x8");
    expect_range("x[a:g:3]", "xa xd xg");
    expect_range("x[01:10:3].dc", "x01.dc x04.dc x07.dc x10.dc");
    expect_range("r[1:2]n[a:b]", "r1na r1nb r2na r2nb");
    expect_range("[1:2]-[1:2]-[a:b]", "1-1-a 1-1-b 1-2-a 1-2-b 2-1-a 2-1-b 2-2-a 2-2-b");
}

static void test_expand_range_errors(void **state)
{
    (void)state;
    expect_range_error("h[5:1]", "host 'h[5:1]': bad range '[5:1]': end 1 is before begin 5");
    expect_range_error("h[f:a]", "host 'h[f:a]': bad range '[f:a]': end 'a' is before begin 'f'");
    expect_range_error("h[a:5]",
                       "host 'h[a:5]': bad range '[a:5]': begin and end mix a letter and a number");
    expect_range_error("h[1:z]",
                       "host 'h[1:z]': bad range '[1:z]': begin and end mix a letter and a number");
    expect_range_error("h[1]", "host 'h[1]': bad range '[1]': expected [begin:end] or "
                               "[begin:end:step]");
    expect_range_error("h[]", "host 'h[]': bad range '[]': expected [begin:end] or "
                              "[begin:end:step]");
    expect_range_error("h[1:2:3:4]", "host 'h[1:2:3:4]': bad range '[1:2:3:4]': expected "
                                     "[begin:end] or [begin:end:step]");
    expect_range_error("h[1:]", "host 'h[1:]': bad range '[1:]': the end is missing");
    expect_range_error("h[1:5:0]",
                       "host 'h[1:5:0]': bad range '[1:5:0]': the step must be a positive integer");
    expect_range_error("h[1:5:x]",
                       "host 'h[1:5:x]': bad range '[1:5:x]': the step must be a positive integer");
    expect_range_error("h[01:100]", "host 'h[01:100]': bad range '[01:100]': zero-padded begin "
                                    "and end must have the same width");
    expect_range_error("h[aa:b]", "host 'h[aa:b]': bad range '[aa:b]': begin and end must be "
                                  "numbers or single letters");
    expect_range_error("h[-1:2]", "host 'h[-1:2]': bad range '[-1:2]': begin and end must be "
                                  "numbers or single letters");
    expect_range_error("h[1:2", "host 'h[1:2': bad range: '[' without a matching ']'");
    expect_range_error("h[0:1000000]",
                       "host 'h[0:1000000]': ranges expand to more than 1000000 names");
    expect_range_error("h[0:999][0:9999]",
                       "host 'h[0:999][0:9999]': ranges expand to more than 1000000 names");
    expect_range_error("h[0:99999999999999999999]",
                       "host 'h[0:99999999999999999999]': bad range '[0:99999999999999999999]': "
                       "numbers longer than 18 digits");
    expect_range_error("h[0:999999999999999999]",
                       "host 'h[0:999999999999999999]': ranges expand to more than 1000000 names");
    expect_range_error("h\x1b[1:2]x[",
                       "host 'h\\x1b[1:2]x[': bad range: '[' without a matching ']'");
}

static void test_expand_range_max(void **state)
{
    struct kf_err err;
    char **v;
    size_t n;

    (void)state;
    /* Exactly INV_RANGE_MAX names is allowed. */
    assert_int_equal(inv_expand_range("h[1:1000000]", &v, &n, &err), 0);
    assert_int_equal(n, INV_RANGE_MAX);
    assert_string_equal(v[0], "h1");
    assert_string_equal(v[n - 1], "h1000000");
    kf_strv_free(v, n);
    kf_strv_free(NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_fixture),
        cmocka_unit_test(test_release_empty),
        cmocka_unit_test(test_load_file_missing),
        cmocka_unit_test(test_load_file_too_large),
        cmocka_unit_test(test_fixture_errors),
        cmocka_unit_test(test_implicit_groups),
        cmocka_unit_test(test_group_merged_across_parents),
        cmocka_unit_test(test_sections_as_strings),
        cmocka_unit_test(test_host_port_suffix),
        cmocka_unit_test(test_precedence_depth),
        cmocka_unit_test(test_precedence_alphabetical_tie),
        cmocka_unit_test(test_precedence_group_priority),
        cmocka_unit_test(test_precedence_longest_path),
        cmocka_unit_test(test_scalar_resolution),
        cmocka_unit_test(test_same_value_twice_ok),
        cmocka_unit_test(test_conflicting_host_vars),
        cmocka_unit_test(test_connection_vars),
        cmocka_unit_test(test_proxy_jump),
        cmocka_unit_test(test_connection_errors),
        cmocka_unit_test(test_aliases_and_merge_keys),
        cmocka_unit_test(test_alias_bomb),
        cmocka_unit_test(test_size_limits),
        cmocka_unit_test(test_depth_limits),
        cmocka_unit_test(test_yaml_errors),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_structure_errors),
        cmocka_unit_test(test_cycles),
        cmocka_unit_test(test_range_errors_in_inventory),
        cmocka_unit_test(test_ranges_in_inventory),
        cmocka_unit_test(test_expand_range),
        cmocka_unit_test(test_expand_range_errors),
        cmocka_unit_test(test_expand_range_max),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
