/* kfleet.yml: defaults, profiles, and precise errors naming file and key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator.h"

static int load_text(struct coord_config *c, const char *yaml, struct kf_err *err)
{
    char path[] = "/tmp/kfleet-cfg-XXXXXX";
    int fd = mkstemp(path), rc;

    assert_true(fd >= 0);
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    rc = coord_config_load(c, path, "/var/lib/kfleet", err);
    unlink(path);
    return rc;
}

static void test_defaults_without_file(void **state)
{
    struct coord_config c;
    struct kf_err err;
    const struct coord_profile *p;

    assert_int_equal(coord_config_load(&c, "/nonexistent/kfleet.yml", "/st", &err), 0);
    assert_string_equal(c.store, "/st/store");
    assert_string_equal(c.runtime, "podman");
    assert_int_equal(c.nbuilders, 1);
    assert_string_equal(c.builders[0].host, "local");
    p = coord_config_profile(&c, "nvidia");
    assert_non_null(p);
    assert_int_equal(p->type, PROFILE_NVIDIA_RUN);
    assert_int_equal(p->open, 1);
    assert_int_equal(p->nmodules, 4);
    assert_string_equal(p->modules[0], "nvidia");
    assert_string_equal(p->modules[3], "nvidia-uvm");
    assert_string_equal(p->headers_debian, "linux-headers-{kernel}");
    coord_config_release(&c);
}

static void test_full_config(void **state)
{
    struct coord_config c;
    struct kf_err err;
    const struct coord_profile *p;

    assert_int_equal(load_text(&c,
                               "store: /srv/kfleet\n"
                               "container:\n"
                               "  runtime: docker\n"
                               "  run_args: [--runtime, runc]\n"
                               "builders:\n"
                               "  - {host: local, slots: 2}\n"
                               "  - {name: big, host: builder01, slots: 8}\n"
                               "signing: {key: /k.pem, cert: /c.der, hash: sha384}\n"
                               "profiles:\n"
                               "  nvidia:\n"
                               "    type: nvidia-run\n"
                               "    flavor: proprietary\n"
                               "    peermem: true\n"
                               "    kernels: {min: \"5.15\", max: \"6.12\"}\n"
                               "    make_vars: {IGNORE_CC_MISMATCH: 1, NV_VERBOSE: \"1\"}\n"
                               "  lustre:\n"
                               "    type: kmod\n"
                               "    source: /src/lustre\n"
                               "    modules: [lnet, ksocklnd, lustre]\n"
                               "    arch: [x86_64]\n",
                               &err),
                     0);
    assert_string_equal(c.store, "/srv/kfleet");
    assert_string_equal(c.runtime, "docker");
    assert_int_equal(c.nrun_args, 2);
    assert_int_equal(c.nbuilders, 2);
    assert_string_equal(c.builders[0].name, "local");
    assert_int_equal(c.builders[1].slots, 8);
    assert_string_equal(c.sign_hash, "sha384");
    p = coord_config_profile(&c, "nvidia");
    assert_int_equal(p->open, 0);
    assert_int_equal(p->nmodules, 5);
    assert_string_equal(p->modules[4], "nvidia-peermem");
    assert_string_equal(p->kernel_min, "5.15");
    assert_int_equal(p->nmake_vars, 2);
    p = coord_config_profile(&c, "lustre");
    assert_int_equal(p->type, PROFILE_KMOD);
    assert_int_equal(p->nmodules, 3);
    assert_string_equal(p->arches[0], "x86_64");
    assert_null(coord_config_profile(&c, "zfs"));
    coord_config_release(&c);
}

static void assert_bad(const char *yaml, const char *want)
{
    struct coord_config c;
    struct kf_err err;

    kf_err_clear(&err);
    assert_int_not_equal(load_text(&c, yaml, &err), 0);
    if (strstr(err.msg, want) == NULL)
        fail_msg("error '%s' does not contain '%s'", err.msg, want);
}

static void test_errors(void **state)
{
    assert_bad("stor: /x\n", ": stor: unknown key");
    assert_bad("profiles:\n  nv:\n    type: nvidia-run\n    sorce: /x\n",
               "profiles.nv.sorce: unknown key");
    assert_bad("profiles:\n  nv: {type: nvidia}\n", "type: expected nvidia-run");
    assert_bad("profiles:\n  nv: {source: /x}\n", "'type' is required");
    assert_bad("profiles:\n  nv: {type: kmod, modules: [\"a b\"]}\n", "is not a module name");
    assert_bad("profiles:\n  nv: {type: nvidia-open, flavor: open}\n", "only an nvidia-run");
    assert_bad("profiles:\n  nv: {type: nvidia-run, kernels: {min: 5.15}}\n",
               "write versions in quotes");
    assert_bad("profiles:\n  nv: {type: nvidia-run, kernels: {min: \"5.x\"}}\n",
               "a bound is a version");
    assert_bad("profiles:\n  nv: {type: nvidia-run, headers: {debian: linux-headers}}\n",
               "must contain {kernel}");
    assert_bad("profiles:\n  nv: {type: nvidia-run, make_vars: {\"A;B\": 1}}\n",
               "not a make variable name");
    assert_bad("builders:\n  - {host: b1, slots: 0}\n", "builders[1].slots");
    assert_bad("signing: {key: /k.pem}\n", "give both key and cert");
    assert_bad("signing: {key: /k, cert: /c, hash: md5}\n", "expected sha256");
    assert_bad("- a\n- b\n", "expected a mapping");
    assert_bad("profiles:\n  nv: {type: kmod}\n  nv: {type: kmod}\n", "duplicate");
}

/* The documented example must stay loadable and mean what it says. */
static void test_contrib_example(void **state)
{
    struct coord_config c;
    struct kf_err err;
    const struct coord_profile *p;

    assert_int_equal(coord_config_load(&c, KF_FIXTURES "/../../contrib/kfleet.yml", "/st", &err),
                     0);
    assert_string_equal(c.runtime, "podman");
    assert_int_equal(c.nrun_args, 6);
    assert_int_equal(c.builders[0].slots, 2);
    p = coord_config_profile(&c, "nvidia");
    assert_non_null(p);
    assert_int_equal(p->open, 1);
    assert_int_equal(p->nmodules, 4);
    coord_config_release(&c);
}

static void test_deploy_section(void **state)
{
    struct coord_config c;
    struct kf_err err;
    const struct coord_profile *p;

    (void)state;
    /* Defaults without a deploy section. */
    assert_int_equal(load_text(&c, "store: /s\n", &err), 0);
    assert_string_equal(c.deploy.smi, "auto");
    assert_null(c.deploy.verify);
    assert_null(c.deploy.drain.command);
    assert_int_equal(c.deploy.transfer_forks, 16);
    assert_int_equal(c.deploy.transfer_timeout, 600);
    coord_config_release(&c);
    assert_int_equal(
        load_text(&c,
                  "deploy:\n"
                  "  smi: require\n"
                  "  verify: nvidia-smi -q\n"
                  "  drain: {command: 'kubectl drain {host}', on: control, timeout: 30}\n"
                  "  undrain: kubectl uncordon {host}\n"
                  "  transfer_forks: 4\n"
                  "  transfer_timeout: 120\n",
                  &err),
        0);
    assert_string_equal(c.deploy.smi, "require");
    assert_string_equal(c.deploy.verify, "nvidia-smi -q");
    assert_string_equal(c.deploy.drain.command, "kubectl drain {host}");
    assert_false(c.deploy.drain.on_node);
    assert_int_equal(c.deploy.drain.timeout, 30);
    assert_string_equal(c.deploy.undrain.command, "kubectl uncordon {host}");
    assert_int_equal(c.deploy.undrain.timeout, 600);
    assert_int_equal(c.deploy.transfer_forks, 4);
    /* the profile a command picks */
    p = coord_config_select_profile(&c, NULL, &err);
    assert_non_null(p);
    assert_string_equal(p->name, "nvidia");
    assert_null(coord_config_select_profile(&c, "zfs", &err));
    assert_non_null(strstr(err.msg, "no profile 'zfs' (profiles: nvidia)"));
    coord_config_release(&c);
    assert_int_equal(load_text(&c, "deploy: {smi: maybe}\n", &err), KF_ECONFIG);
    assert_non_null(strstr(err.msg, "deploy.smi: expected auto, require or skip, got 'maybe'"));
    assert_int_equal(load_text(&c, "deploy: {drain: {on: node}}\n", &err), KF_ECONFIG);
    assert_non_null(strstr(err.msg, "deploy.drain: command: required"));
    assert_int_equal(load_text(&c, "deploy: {drain: {command: x, on: moon}}\n", &err), KF_ECONFIG);
    assert_non_null(strstr(err.msg, "deploy.drain: on: expected control"));
    assert_int_equal(load_text(&c, "deploy: {transfer_forks: 0}\n", &err), KF_ECONFIG);
    assert_non_null(strstr(err.msg, "deploy.transfer_forks"));
    assert_int_equal(load_text(&c, "deploy: {pause: 5m}\n", &err), KF_ECONFIG);
    assert_non_null(strstr(err.msg, "deploy.pause: unknown key"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_without_file),
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_contrib_example),
        cmocka_unit_test(test_deploy_section),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
