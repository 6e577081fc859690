/* Facts: the probe command and the parser of its output.
 *
 * Fixtures in tests/fixtures/facts/ are probe outputs written in exactly
 * the shape the script prints (an empty line, then each marker), with
 * strings taken from real machines. The nonce they use is NONCE below. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "inventory.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#define NONCE "5f0c9a3e71d24b86"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

static char *read_fixture(const char *name, size_t *len)
{
    char path[1024];
    struct buf b;
    char chunk[4096];
    size_t n;
    FILE *fp;

    snprintf(path, sizeof(path), "%s/facts/%s", KF_FIXTURES, name);
    fp = fopen(path, "rb");
    assert_non_null(fp);
    buf_init(&b, 0);
    while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0)
        assert_int_equal(buf_append(&b, chunk, n), 0);
    fclose(fp);
    return buf_detach(&b, len);
}

/* Builds probe output from (name, content) pairs, NULL-terminated, in the
 * script's own shape. Content is written as is. */
static char *mkout(size_t *len, ...)
{
    struct buf b;
    const char *name, *content;
    va_list ap;

    buf_init(&b, 0);
    va_start(ap, len);
    while ((name = va_arg(ap, const char *)) != NULL) {
        content = va_arg(ap, const char *);
        assert_int_equal(buf_printf(&b, "\n@@kf:%s:%s\n%s", NONCE, name, content), 0);
    }
    va_end(ap);
    return buf_detach(&b, len);
}

/* A minimal valid output with one section's content replaced or added. */
static char *mkout_with(size_t *len, const char *name, const char *content)
{
    const char *r = "6.1.0-41-amd64\n", *m = "x86_64\n";

    if (strcmp(name, "uname_r") == 0)
        r = content;
    if (strcmp(name, "uname_m") == 0)
        m = content;
    if (strcmp(name, "uname_r") == 0 || strcmp(name, "uname_m") == 0)
        return mkout(len, "uname_r", r, "uname_m", m, "end", "", NULL);
    return mkout(len, "uname_r", r, "uname_m", m, name, content, "end", "", NULL);
}

static void assert_display_safe(const char *msg)
{
    const unsigned char *p;

    for (p = (const unsigned char *)msg; *p; p++)
        if (*p < 0x20 || *p >= 0x7f)
            fail_msg("raw byte 0x%02x in message: %s", *p, msg);
}

static int parse_fixture(const char *name, struct inv_facts *f, struct kf_err *err)
{
    size_t len;
    char *out = read_fixture(name, &len);
    int rc = inv_facts_parse(out, len, NONCE, f, err);

    free(out);
    return rc;
}

static void assert_kernel(const struct inv_kernel *k, const char *rel, int running, int dep,
                          int build, int image)
{
    assert_string_equal(k->release, rel);
    assert_int_equal(k->running, running);
    assert_int_equal(k->has_modules_dep, dep);
    assert_int_equal(k->has_build, build);
    assert_int_equal(k->has_image, image);
}

static char *json_of(const struct inv_facts *f)
{
    json_t *j = inv_facts_to_json(f);
    char *s;

    assert_non_null(j);
    s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    assert_non_null(s);
    return s;
}

/* ------------------------------------------------------------------------ */
/* Validators                                                                */

static void test_krel_valid(void **state)
{
    (void)state;
    assert_true(kf_krel_valid("6.1.0-41-amd64"));
    assert_true(kf_krel_valid("5.14.0-362.8.1.el9_3.x86_64"));
    assert_true(kf_krel_valid("6.12.38+deb12-amd64"));
    assert_true(kf_krel_valid("6.8.0-1015-nvidia"));
    assert_true(kf_krel_valid("0-rescue-6a1f0e9b"));
    assert_true(kf_krel_valid("1234567890123456789012345678901234567890123456789012345678901234"));
    assert_false(
        kf_krel_valid("12345678901234567890123456789012345678901234567890123456789012345"));
    assert_false(kf_krel_valid(NULL));
    assert_false(kf_krel_valid(""));
    assert_false(kf_krel_valid("v6.1"));
    assert_false(kf_krel_valid("-6.1"));
    assert_false(kf_krel_valid("6.1/../x"));
    assert_false(kf_krel_valid("6.1 x"));
    assert_false(kf_krel_valid("6.1;x"));
    assert_false(kf_krel_valid("6.1\n"));
    assert_false(kf_krel_valid("6.1~rc1"));
    assert_false(kf_krel_valid("6.1\xc3\xa9"));
}

static void test_driver_version_valid(void **state)
{
    (void)state;
    assert_true(kf_driver_version_valid("550.54.15"));
    assert_true(kf_driver_version_valid("470.82.01"));
    assert_true(kf_driver_version_valid("396.26"));
    assert_true(kf_driver_version_valid("1.2.3.4"));
    assert_false(kf_driver_version_valid("1.2.3.4.5"));
    assert_false(kf_driver_version_valid("550"));
    assert_false(kf_driver_version_valid(""));
    assert_false(kf_driver_version_valid(NULL));
    assert_false(kf_driver_version_valid(".550.54"));
    assert_false(kf_driver_version_valid("550.54."));
    assert_false(kf_driver_version_valid("550..54"));
    assert_false(kf_driver_version_valid("550.54.15 "));
    assert_false(kf_driver_version_valid("550.54.15-1"));
    assert_false(kf_driver_version_valid("v550.54"));
    assert_true(kf_driver_version_valid("1234567890.1234567890.123456789")); /* 31 bytes */
    assert_false(kf_driver_version_valid("1234567890.1234567890.1234567890"));
}

/* ------------------------------------------------------------------------ */
/* The command                                                               */

static void test_command_plain(void **state)
{
    static const char *const sections[] = {
        "uname_r",       "uname_v",      "uname_m",    "os_release",   "kernels",
        "nvidia_module", "proc_driver",  "nvidia_smi", "libnvidia_ml", "gpus",
        "secure_boot",   "kfleet_state", "end"};
    char *cmd = NULL, line[64];
    size_t i, quotes = 0;

    (void)state;
    assert_int_equal(inv_facts_command(NONCE, 0, NULL, &cmd), 0);
    assert_non_null(cmd);
    assert_true(strncmp(cmd, "sh -c 'K=$1\n", 12) == 0);
    assert_non_null(strstr(cmd, "' kfprobe '" NONCE "'"));
    assert_string_equal(strstr(cmd, "' kfprobe '"), "' kfprobe '" NONCE "'");
    /* The script is one plain single-quoted word: no quote, backslash or
     * '!' inside, so any POSIX-like login shell passes it through as is. */
    for (i = 0; cmd[i]; i++)
        quotes += cmd[i] == '\'';
    assert_int_equal(quotes, 4);
    assert_null(strchr(cmd, '\\'));
    assert_null(strchr(cmd, '!'));
    /* The nonce is an argument, never pasted into the script. */
    assert_ptr_equal(strstr(cmd, NONCE), strrchr(cmd, '\'') - strlen(NONCE));
    for (i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
        snprintf(line, sizeof(line), "\ns %s\n", sections[i]);
        assert_non_null(strstr(cmd, line));
    }
    /* Nothing may read the SSH channel. */
    assert_non_null(strstr(cmd, "\nexec </dev/null\n"));
    free(cmd);
}

static void test_command_become(void **state)
{
    char *cmd = NULL;

    (void)state;
    assert_int_equal(inv_facts_command(NONCE, 1, NULL, &cmd), 0);
    assert_true(strncmp(cmd, "sudo -n -u 'root' sh -c 'K=$1\n", 30) == 0);
    free(cmd);

    assert_int_equal(inv_facts_command(NONCE, 1, "gpu admin", &cmd), 0);
    assert_true(strncmp(cmd, "sudo -n -u 'gpu admin' sh -c '", 30) == 0);
    free(cmd);

    assert_int_equal(inv_facts_command(NONCE, 1, "o'neil;reboot", &cmd), 0);
    assert_true(strncmp(cmd, "sudo -n -u 'o'\\''neil;reboot' sh -c '", 37) == 0);
    free(cmd);

    /* become off: become_user is not used. */
    assert_int_equal(inv_facts_command(NONCE, 0, "nobody", &cmd), 0);
    assert_true(strncmp(cmd, "sh -c '", 7) == 0);
    free(cmd);
}

static void test_command_bad_args(void **state)
{
    static const char *const bad[] = {
        "",
        "0123456",
        "0123456789ABCDEF",
        "0123456789abcdeg",
        "0123456789abcdef0123456789abcdef0",
        "abcdef01'; reboot; '",
        "01234567 ",
    };
    char *cmd = (char *)"sentinel";
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cmd = (char *)"sentinel";
        assert_int_equal(inv_facts_command(bad[i], 0, NULL, &cmd), KF_EINVAL);
        assert_null(cmd);
    }
    assert_int_equal(inv_facts_command(NULL, 0, NULL, &cmd), KF_EINVAL);
    assert_int_equal(inv_facts_command(NONCE, 1, "", &cmd), KF_EINVAL);
    assert_null(cmd);
    assert_int_equal(inv_facts_command(NONCE, 0, NULL, NULL), KF_EINVAL);
    /* Both nonce length limits are fine. */
    assert_int_equal(inv_facts_command("01234567", 0, NULL, &cmd), 0);
    free(cmd);
    assert_int_equal(inv_facts_command("0123456789abcdef0123456789abcdef", 0, NULL, &cmd), 0);
    free(cmd);
}

static char *run_capture(const char *cmd, size_t *len)
{
    struct buf b;
    char chunk[4096];
    size_t n;
    FILE *p = popen(cmd, "r");

    assert_non_null(p);
    buf_init(&b, 0);
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        assert_int_equal(buf_append(&b, chunk, n), 0);
    assert_int_equal(pclose(p), 0);
    return buf_detach(&b, len);
}

static void check_local_facts(const char *out, size_t len)
{
    struct utsname u;
    struct inv_facts f;
    struct kf_err err;
    size_t i, running = 0;
    int rc;

    assert_int_equal(uname(&u), 0);
    rc = inv_facts_parse(out, len, NONCE, &f, &err);
    if (rc != 0)
        fail_msg("parse failed: %s\n--- output ---\n%.*s", kf_err_msg(&err), (int)len, out);
    assert_string_equal(f.kernel, u.release);
    assert_string_equal(f.arch, u.machine);
    for (i = 0; i < f.nkernels; i++) {
        if (f.kernels[i].running) {
            running++;
            assert_string_equal(f.kernels[i].release, u.release);
        }
    }
    assert_int_equal(running, 1);
    assert_int_not_equal(f.gpus_known, INV_UNKNOWN);
}

/* The real script, run by this machine's /bin/sh (dash on Debian), must
 * produce output the parser accepts, with this machine's kernel. */
static void test_command_runs_locally(void **state)
{
    char *cmd = NULL, *out;
    size_t len;

    (void)state;
    assert_int_equal(inv_facts_command(NONCE, 0, NULL, &cmd), 0);
    out = run_capture(cmd, &len);
    check_local_facts(out, len);
    free(out);
    free(cmd);
}

/* The same script under every other POSIX-ish shell installed here. */
static void test_command_other_shells(void **state)
{
    static const char *const shells[] = {"/bin/dash", "/bin/bash",    "/bin/busybox", "/bin/mksh",
                                         "/bin/ksh",  "/usr/bin/zsh", "/usr/bin/posh"};
    char *cmd = NULL, *out;
    size_t i, len;

    (void)state;
    assert_int_equal(inv_facts_command(NONCE, 0, NULL, &cmd), 0);
    for (i = 0; i < sizeof(shells) / sizeof(shells[0]); i++) {
        struct buf b;
        if (access(shells[i], X_OK) != 0)
            continue;
        buf_init(&b, 0);
        /* Replace the leading "sh -c" with "<shell> [sh] -c". */
        assert_int_equal(buf_printf(&b, "%s%s%s", shells[i],
                                    strstr(shells[i], "busybox") ? " sh" : "",
                                    strstr(shells[i], "zsh") ? " --emulate sh" : ""),
                         0);
        assert_int_equal(buf_puts(&b, cmd + 2), 0);
        out = run_capture(buf_cstr(&b), &len);
        check_local_facts(out, len);
        free(out);
        buf_release(&b);
    }
    free(cmd);
}

/* ------------------------------------------------------------------------ */
/* Realistic nodes                                                           */

static void test_debian12_two_gpus(void **state)
{
    struct inv_facts f;
    struct kf_err err;

    (void)state;
    assert_int_equal(parse_fixture("debian12-2gpu.out", &f, &err), 0);
    assert_string_equal(f.kernel, "6.1.0-41-amd64");
    assert_string_equal(f.kernel_build, "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)");
    assert_string_equal(f.arch, "x86_64");
    assert_string_equal(f.os_id, "debian");
    assert_string_equal(f.os_version, "12");
    assert_string_equal(f.os_like, "");
    assert_string_equal(f.os_pretty, "Debian GNU/Linux 12 (bookworm)");
    /* 6.1.0-37 is a leftover directory (no modules.dep, build or image):
     * not installed. Sorted by version, not as printed. */
    assert_int_equal(f.nkernels, 3);
    assert_kernel(&f.kernels[0], "6.1.0-41-amd64", 1, 1, 1, 1);
    assert_kernel(&f.kernels[1], "6.1.0-43-amd64", 0, 0, 0, 1);
    assert_kernel(&f.kernels[2], "6.12.38+deb12-amd64", 0, 1, 1, 1);
    assert_string_equal(f.loaded_driver, "550.54.15");
    assert_string_equal(f.userspace_driver, "550.54.15");
    /* The HDMI audio functions (0403) are not GPUs. */
    assert_int_equal(f.gpus_known, INV_YES);
    assert_int_equal(f.ngpus, 2);
    assert_string_equal(f.gpus[0].slot, "0000:17:00.0");
    assert_string_equal(f.gpus[0].id, "10de:2230");
    assert_string_equal(f.gpus[1].slot, "0000:65:00.0");
    assert_string_equal(f.gpus[1].id, "10de:2230");
    assert_int_equal(f.secure_boot, INV_NO);
    assert_string_equal(f.kfleet_driver, "550.54.15");
    assert_string_equal(f.kfleet_release, "6.1.0-41-amd64");
}

static void test_debian12_json(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    char *s;

    (void)state;
    assert_int_equal(parse_fixture("debian12-2gpu.out", &f, &err), 0);
    s = json_of(&f);
    assert_string_equal(
        s, "{\"arch\":\"x86_64\","
           "\"gpus\":[{\"id\":\"10de:2230\",\"slot\":\"0000:17:00.0\"},"
           "{\"id\":\"10de:2230\",\"slot\":\"0000:65:00.0\"}],"
           "\"kernel\":\"6.1.0-41-amd64\","
           "\"kernel_build\":\"#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)\","
           "\"kernels\":["
           "{\"build\":true,\"image\":true,\"modules_dep\":true,\"release\":\"6.1.0-41-amd64\","
           "\"running\":true},"
           "{\"build\":false,\"image\":true,\"modules_dep\":false,\"release\":\"6.1.0-43-amd64\","
           "\"running\":false},"
           "{\"build\":true,\"image\":true,\"modules_dep\":true,"
           "\"release\":\"6.12.38+deb12-amd64\",\"running\":false}],"
           "\"kfleet\":{\"current\":[],\"driver\":\"550.54.15\",\"kernel\":\"6.1.0-41-amd64\"},"
           "\"loaded_driver\":\"550.54.15\","
           "\"os\":{\"id\":\"debian\",\"like\":null,\"pretty\":\"Debian GNU/Linux 12 (bookworm)\","
           "\"version\":\"12\"},"
           "\"secure_boot\":\"disabled\","
           "\"userspace_driver\":\"550.54.15\"}");
    free(s);
}

static void test_rocky9(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t i;

    (void)state;
    /* Also: a login banner before the first marker is ignored. */
    assert_int_equal(parse_fixture("rocky9-8gpu.out", &f, &err), 0);
    assert_string_equal(f.kernel, "5.14.0-362.8.1.el9_3.x86_64");
    assert_string_equal(f.kernel_build, "#1 SMP PREEMPT_DYNAMIC Wed Nov 8 17:36:32 UTC 2023");
    assert_string_equal(f.os_id, "rocky");
    assert_string_equal(f.os_version, "9.3");
    assert_string_equal(f.os_like, "rhel centos fedora");
    assert_string_equal(f.os_pretty, "Rocky Linux 9.3 (Blue Onyx)");
    /* dracut's 0-rescue image is not a kernel to build for. */
    assert_int_equal(f.nkernels, 2);
    assert_kernel(&f.kernels[0], "5.14.0-284.30.1.el9_2.x86_64", 0, 1, 0, 1);
    assert_kernel(&f.kernels[1], "5.14.0-362.8.1.el9_3.x86_64", 1, 1, 1, 1);
    assert_string_equal(f.loaded_driver, "550.54.15");
    assert_string_equal(f.userspace_driver, "550.54.15");
    /* Eight H100s; the four NVSwitches (class 0680) are not GPUs. */
    assert_int_equal(f.gpus_known, INV_YES);
    assert_int_equal(f.ngpus, 8);
    for (i = 0; i < 8; i++)
        assert_string_equal(f.gpus[i].id, "10de:2330");
    assert_string_equal(f.gpus[0].slot, "0000:18:00.0");
    assert_string_equal(f.gpus[7].slot, "0000:db:00.0");
    assert_int_equal(f.secure_boot, INV_YES);
    assert_string_equal(f.kfleet_driver, "");
    assert_string_equal(f.kfleet_release, "");
}

static void test_no_nvidia_tools(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    char *s;

    (void)state;
    assert_int_equal(parse_fixture("notools.out", &f, &err), 0);
    assert_string_equal(f.kernel, "5.15.0-91-generic");
    assert_string_equal(f.os_id, "ubuntu");
    assert_string_equal(f.os_version, "22.04");
    assert_string_equal(f.os_like, "debian");
    assert_int_equal(f.nkernels, 1);
    assert_kernel(&f.kernels[0], "5.15.0-91-generic", 1, 1, 1, 1);
    assert_string_equal(f.loaded_driver, "");
    assert_string_equal(f.userspace_driver, "");
    assert_int_equal(f.gpus_known, INV_YES);
    assert_int_equal(f.ngpus, 0);
    assert_int_equal(f.secure_boot, INV_UNKNOWN);
    s = json_of(&f);
    assert_non_null(strstr(s, "\"gpus\":[]"));
    assert_non_null(strstr(s, "\"loaded_driver\":null"));
    assert_non_null(strstr(s, "\"userspace_driver\":null"));
    assert_non_null(strstr(s, "\"secure_boot\":\"unknown\""));
    assert_non_null(strstr(s, "\"kfleet\":null"));
    free(s);
}

/* The classic after an unattended upgrade: new userspace, old module. */
static void test_version_mismatch(void **state)
{
    struct inv_facts f;
    struct kf_err err;

    (void)state;
    assert_int_equal(parse_fixture("ubuntu22-mismatch.out", &f, &err), 0);
    assert_string_equal(f.loaded_driver, "550.54.15");
    assert_string_equal(f.userspace_driver, "550.90.07");
    assert_int_equal(f.nkernels, 2);
    assert_kernel(&f.kernels[0], "5.15.0-105-generic", 1, 1, 1, 1);
    assert_kernel(&f.kernels[1], "5.15.0-107-generic", 0, 1, 1, 1);
    assert_int_equal(f.ngpus, 1);
    assert_string_equal(f.gpus[0].id, "10de:26b9");
    /* "validation is disabled in shim": the kernel loads unsigned modules. */
    assert_int_equal(f.secure_boot, INV_NO);
}

static void test_sysfs_gpus_and_efivars(void **state)
{
    struct inv_facts f;
    struct kf_err err;

    (void)state;
    assert_int_equal(parse_fixture("al2023-sysfs.out", &f, &err), 0);
    assert_string_equal(f.kernel, "6.1.61-85.141.amzn2023.x86_64");
    assert_string_equal(f.os_id, "amzn");
    assert_string_equal(f.os_version, "2023");
    assert_string_equal(f.os_pretty, "Amazon Linux 2023");
    assert_string_equal(f.loaded_driver, "535.129.03");
    assert_string_equal(f.userspace_driver, "535.129.03");
    assert_int_equal(f.gpus_known, INV_YES);
    assert_int_equal(f.ngpus, 4);
    assert_string_equal(f.gpus[0].slot, "0000:00:1b.0");
    assert_string_equal(f.gpus[0].id, "10de:1eb8");
    assert_string_equal(f.gpus[3].slot, "0000:00:1e.0");
    /* No mokutil: the EFI variable decides. */
    assert_int_equal(f.secure_boot, INV_YES);
    assert_string_equal(f.kfleet_driver, "535.129.03");
    assert_string_equal(f.kfleet_release, "6.1.61-85.141.amzn2023.x86_64");
}

static void test_gpu_sources(void **state)
{
    static const struct {
        const char *content;
        enum inv_tristate known;
        size_t n;
        const char *slot0, *id0;
    } cases[] = {
        {"method=none\n", INV_NO, 0, NULL, NULL},
        {"method=lspci\n\n", INV_YES, 0, NULL, NULL},
        /* sysfs: audio function and NVSwitch skipped, upper case hex
         * normalised, a VMD domain with 5 digits. */
        {"method=sysfs\n10000:e1:00.0 0x10de 0x20B5 0x030200\n10000:e1:00.1 0x10de 0x1aef "
         "0x040300\n0000:05:00.0 0x10de 0x22a3 0x068000\n",
         INV_YES, 1, "10000:e1:00.0", "10de:20b5"},
        /* pciutils 2.x wrote "Class 0300:"; no domain without -D. */
        {"method=lspci\n3b:00.0 Class 0300: 10de:1db6 (rev a1)\n", INV_YES, 1, "0000:3b:00.0",
         "10de:1db6"},
        /* Another vendor's device in lspci output is not ours. */
        {"method=lspci\n0000:3b:00.0 0302: 1002:740f (rev 02)\n", INV_YES, 0, NULL, NULL},
        /* CRLF and duplicated lines. */
        {"method=lspci\r\n0000:3b:00.0 0302: 10de:2330 (rev a1)\r\n0000:3b:00.0 0302: "
         "10de:2330 (rev a1)\r\n",
         INV_YES, 1, "0000:3b:00.0", "10de:2330"},
    };
    size_t i, len;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct inv_facts f;
        struct kf_err err;
        char *out = mkout_with(&len, "gpus", cases[i].content);
        assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
        assert_int_equal(f.gpus_known, cases[i].known);
        assert_int_equal(f.ngpus, cases[i].n);
        if (cases[i].n > 0) {
            assert_string_equal(f.gpus[0].slot, cases[i].slot0);
            assert_string_equal(f.gpus[0].id, cases[i].id0);
        }
        free(out);
    }
}

static void test_gpus_missing_section_is_unknown(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len;
    char *out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "uname_m", "x86_64\n", "end", "", NULL);
    char *s;

    (void)state;
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_int_equal(f.gpus_known, INV_UNKNOWN);
    assert_int_equal(f.secure_boot, INV_UNKNOWN);
    s = json_of(&f);
    assert_non_null(strstr(s, "\"gpus\":null"));
    assert_non_null(
        strstr(s, "\"os\":{\"id\":null,\"like\":null,\"pretty\":null,\"version\":null}"));
    free(s);
    free(out);

    out = mkout_with(&len, "gpus", "method=none\n");
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    s = json_of(&f);
    assert_non_null(strstr(s, "\"gpus\":null"));
    free(s);
    free(out);
}

static void test_gpu_malformed(void **state)
{
    static const char *const bad[] = {
        "0000:3b:00.0\n",
        "method=lspci\n0000:3b:00.0 0302 10de:2330\n",
        "method=lspci\n0000:3b:00.9 0302: 10de:2330\n",
        "method=lspci\n0000:3b:00.0 0302: 10de2330\n",
        "method=lspci\n00:3b:00.0 0302: 10de:2330\n",
        "method=sysfs\n0000:3b:00.0 0x10de 0x2330\n",
        "method=sysfs\n0000:3b:00.0 0x10de 0x2330 0x0302\n",
        "method=lspci\n\x1b]0;owned\x07 0302: 10de:2330\n",
        "method=ipmi\n",
        "",
    };
    size_t i, len;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct inv_facts f;
        struct kf_err err;
        char *out = mkout_with(&len, "gpus", bad[i]);
        assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), KF_EPARSE);
        assert_true(strncmp(err.msg, "gpus: ", 6) == 0);
        assert_display_safe(err.msg);
        free(out);
    }
}

static void test_too_many_gpus(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    struct buf b;
    size_t i, len;
    char *out;

    (void)state;
    buf_init(&b, 0);
    assert_int_equal(buf_puts(&b, "method=lspci\n"), 0);
    for (i = 0; i < INV_FACTS_MAX_GPUS; i++)
        assert_int_equal(buf_printf(&b, "0000:%02zx:00.0 0302: 10de:2330 (rev a1)\n", i), 0);
    out = mkout_with(&len, "gpus", buf_cstr(&b));
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_int_equal(f.ngpus, INV_FACTS_MAX_GPUS);
    free(out);

    assert_int_equal(buf_puts(&b, "0000:ff:00.0 0302: 10de:2330 (rev a1)\n"), 0);
    out = mkout_with(&len, "gpus", buf_cstr(&b));
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), KF_EPARSE);
    assert_string_equal(err.msg, "gpus: more than 64 NVIDIA GPUs listed");
    free(out);
    buf_release(&b);
}

/* ------------------------------------------------------------------------ */
/* Drivers                                                                   */

static void test_loaded_driver_sources(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len;
    char *out;

    (void)state;
    /* No sysfs file: the proc file's first line, open-module wording. */
    out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "uname_m", "x86_64\n", "nvidia_module", "\n",
                "proc_driver",
                "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release "
                "Build  (dvs-builder@U16-I3-B03-4-3)  Tue Mar  5 22:15:33 UTC 2024\nGCC version:  "
                "gcc version 12.2.0 (Debian 12.2.0-14)\n",
                "end", "", NULL);
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_string_equal(f.loaded_driver, "550.54.15");
    free(out);

    /* The gcc version on line 2 must never be taken for the driver. */
    out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "uname_m", "x86_64\n", "proc_driver",
                "NVRM version: garbage\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
                "end", "", NULL);
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_string_equal(f.loaded_driver, "");
    free(out);

    /* A bad sysfs value falls back to proc; both bad: none. */
    out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "uname_m", "x86_64\n", "nvidia_module",
                "550.54.15;reboot\n", "proc_driver",
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 "
                "UTC 2024\n",
                "end", "", NULL);
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_string_equal(f.loaded_driver, "535.183.01");
    free(out);
}

static void test_userspace_driver_sources(void **state)
{
    static const struct {
        const char *smi, *lib, *want;
    } cases[] = {
        {"550.54.15\n\nrc=0\n", "", "550.54.15"},
        /* nvidia-smi failed: the library's version. */
        {"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make "
         "sure that the latest NVIDIA driver is installed and running.\n\nrc=9\n",
         "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1\n"
         "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15\n",
         "550.54.15"},
        {"No devices were found\n\nrc=6\n", "/usr/lib64/libnvidia-ml.so.535.129.03\n",
         "535.129.03"},
        /* Exit 0 but not a version: do not believe it. */
        {"550.54.15 (beta)\n\nrc=0\n", "", ""},
        /* Timed out (timeout(1) exits 124). */
        {"\nrc=124\n", "/usr/lib64/libnvidia-ml.so.1\n", ""},
        /* No rc line at all: the output was not what the probe prints. */
        {"550.54.15\n", "", ""},
        /* Two libraries left behind: the highest. */
        {"",
         "/usr/lib/libnvidia-ml.so.535.183.01\n/usr/lib/libnvidia-ml.so.550.54.15\n"
         "/usr/lib64/libnvidia-ml.so.550.9.1\n/usr/lib64/libnvidia-ml.so.x.y\n",
         "550.54.15"},
    };
    size_t i, len;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct inv_facts f;
        struct kf_err err;
        char *out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "uname_m", "x86_64\n", "nvidia_smi",
                          cases[i].smi, "libnvidia_ml", cases[i].lib, "end", "", NULL);
        assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
        assert_string_equal(f.userspace_driver, cases[i].want);
        free(out);
    }
}

/* ------------------------------------------------------------------------ */
/* Secure Boot                                                               */

static void test_secure_boot_variants(void **state)
{
    static const struct {
        const char *content;
        enum inv_tristate want;
    } cases[] = {
        {"method=mokutil\nSecureBoot enabled\n\nrc=0\n", INV_YES},
        {"method=mokutil\nSecureBoot disabled\n\nrc=0\n", INV_NO},
        {"method=mokutil\nSecureBoot disabled\nPlatform is in Setup Mode\n\nrc=0\n", INV_NO},
        {"method=mokutil\nSecureBoot enabled\nSecureBoot validation is disabled in shim\n\nrc=0\n",
         INV_NO},
        {"method=mokutil\nThis system doesn't support Secure Boot\n\nrc=255\n", INV_NO},
        {"method=mokutil\nEFI variables are not supported on this system\n\nrc=1\n", INV_NO},
        /* Colour codes around the words some builds print. */
        {"method=mokutil\n\x1b[32mSecureBoot enabled\n\x1b[0m\nrc=0\n", INV_YES},
        /* mokutil could not tell: the EFI variable decides. */
        {"method=mokutil\nFailed to read \"SecureBoot\" variable: Permission denied\n\nrc=255\n"
         "method=efivars\n   6   0   0   0   1\n",
         INV_YES},
        /* mokutil's answer wins over the variable. */
        {"method=mokutil\nSecureBoot disabled\n\nrc=0\nmethod=efivars\n   6   0   0   0   1\n",
         INV_NO},
        {"method=efivars\n   6   0   0   0   1\n", INV_YES},
        {"method=efivars\n   6   0   0   0   0\n", INV_NO},
        /* Wrong size or value: unknown. */
        {"method=efivars\n   6   0   0   0\n", INV_UNKNOWN},
        {"method=efivars\n   6   0   0   0   0   1\n", INV_UNKNOWN},
        {"method=efivars\n   6   0   0   0   2\n", INV_UNKNOWN},
        {"method=efivars\n", INV_UNKNOWN},
        {"", INV_UNKNOWN},
        {"SecureBoot enabled\n", INV_UNKNOWN},
    };
    size_t i, len;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct inv_facts f;
        struct kf_err err;
        char *out = mkout_with(&len, "secure_boot", cases[i].content);
        assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
        if (f.secure_boot != cases[i].want)
            fail_msg("case %zu: secure_boot %d, want %d", i, f.secure_boot, cases[i].want);
        free(out);
    }
}

/* ------------------------------------------------------------------------ */
/* Hostile and broken output                                                 */

static void test_hostile_uname_r(void **state)
{
    static const struct {
        const char *value;
        size_t len;
        const char *shown; /* what the message quotes, or NULL to skip */
    } cases[] = {
#define C(s, shown) {s, sizeof(s) - 1, shown}
        C("6.1.0-47$(reboot)", "6.1.0-47$(reboot)"),
        C("6.1.0-47;reboot", "6.1.0-47;reboot"),
        C("6.1.0-47`reboot`", "6.1.0-47`reboot`"),
        C("6.1.0-47 amd64", "6.1.0-47 amd64"),
        C("6.1.0-47|sh", "6.1.0-47|sh"),
        C("6.1.0-47/../../etc", "6.1.0-47/../../etc"),
        C("6.1.0-47'x", "6.1.0-47'x"),
        C("6.1.0-47-amd64\nrm -rf /", "6.1.0-47-amd64\\x0arm -rf /"),
        C("6.1.0-47-amd64\n@@kf:0000000000000000:uname_r\n6.1.0", NULL),
        C("6.1\x1b[2J", "6.1\\x1b[2J"),
        C("6.1\x1b]0;pwned\x07", "6.1\\x1b]0;pwned\\x07"),
        C("6.1\x9b"
          "2J",
          "6.1\\x9b2J"),
        C("6.1\0.0-evil", "6.1\\x00.0-evil"),
        C("6.1.0\r-47", "6.1.0\\x0d-47"),
        C("12345678901234567890123456789012345678901234567890123456789012345", NULL),
        C("", ""),
        C("\n", ""),
        C("amd64-6.1", "amd64-6.1"),
        C(" 6.1.0-47-amd64", " 6.1.0-47-amd64"),
        C("6.1.0-47-amd64 ", "6.1.0-47-amd64 "),
        C("6.1.0-47\\x1b", "6.1.0-47\\\\x1b"),
#undef C
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct inv_facts f;
        struct kf_err err;
        struct buf b;
        char expect[512];
        int rc;

        buf_init(&b, 0);
        assert_int_equal(buf_printf(&b, "\n@@kf:%s:uname_r\n", NONCE), 0);
        assert_int_equal(buf_append(&b, cases[i].value, cases[i].len), 0);
        assert_int_equal(
            buf_printf(&b, "\n\n@@kf:%s:uname_m\nx86_64\n\n@@kf:%s:end\n", NONCE, NONCE), 0);
        memset(&f, 0xa5, sizeof(f));
        rc = inv_facts_parse(b.data, b.len, NONCE, &f, &err);
        if (rc != KF_EUNTRUSTED)
            fail_msg("case %zu: rc %d (%s)", i, rc, kf_err_msg(&err));
        assert_int_equal(err.code, KF_EUNTRUSTED);
        assert_display_safe(err.msg);
        assert_true(strncmp(err.msg, "running kernel release '", 24) == 0);
        if (cases[i].shown != NULL) {
            snprintf(expect, sizeof(expect),
                     "running kernel release '%s' rejected: expected a digit then letters, "
                     "digits, '.', '-', '_' or '+', at most 64 bytes",
                     cases[i].shown);
            assert_string_equal(err.msg, expect);
        }
        /* A failed parse leaves zeroed facts, nothing half-filled. */
        assert_int_equal(f.nkernels, 0);
        assert_string_equal(f.kernel, "");
        buf_release(&b);
    }
}

static void test_hostile_uname_m(void **state)
{
    static const char *const bad[] = {
        "",          "x86-64",          "x86_64;id",
        "x86_64\nx", "aarch64\x1b[31m", "0123456789012345678901234567890123"};
    size_t i, len;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct inv_facts f;
        struct kf_err err;
        char *out = mkout_with(&len, "uname_m", bad[i]);
        assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), KF_EUNTRUSTED);
        assert_true(strncmp(err.msg, "machine architecture '", 22) == 0);
        assert_display_safe(err.msg);
        free(out);
    }
}

static void test_uname_v_and_os_sanitized(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len;
    char *out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "uname_v",
                      "#1 SMP \x1b[2JPREEMPT\x9b\x07 Debian\r\nsecond line\n", "uname_m",
                      "aarch64\n", "os_release",
                      "# comment\n"
                      "ID=\"debian\"\n"
                      "PRETTY_NAME=\"Debian \\\"GNU\\\"/Linux \x1b[31m12\xc3\xa9\"\n"
                      "VERSION_ID='12'\n"
                      "ID_LIKE=\"rhel  fedora\"\n"
                      "ID=debian\n",
                      "end", "", NULL);

    (void)state;
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_string_equal(f.kernel_build, "#1 SMP [2JPREEMPT Debian");
    assert_string_equal(f.arch, "aarch64");
    assert_string_equal(f.os_id, "debian");
    assert_string_equal(f.os_version, "12");
    assert_string_equal(f.os_pretty, "Debian \"GNU\"/Linux [31m12");
    /* A double space is not the spec's "space-separated list". */
    assert_string_equal(f.os_like, "");
    free(out);

    /* Identifiers that could end up in an image name are dropped when bad. */
    out = mkout_with(&len, "os_release",
                     "ID=\"debian;rm -rf\"\nVERSION_ID=\"$(id)\"\nID_LIKE=\"a b\"\n"
                     "PRETTY_NAME=\"0123456789012345678901234567890123456789012345678901234567890"
                     "12345678901234567890123456789012345678901234567890123456789012345678901234"
                     "56789\"\n");
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_string_equal(f.os_id, "");
    assert_string_equal(f.os_version, "");
    assert_string_equal(f.os_like, "a b");
    assert_int_equal(strlen(f.os_pretty), sizeof(f.os_pretty) - 1);
    free(out);

    out = mkout_with(&len, "os_release",
                     "ID=0123456789012345678901234567890123456789012345678901234567890123456789\n");
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_string_equal(f.os_id, "");
    free(out);
}

static void test_forged_marker_other_nonce(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len;
    char *out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "uname_m", "x86_64\n", "os_release",
                      "ID=debian\n"
                      "@@kf:0000000000000000:uname_r\n"
                      "6.6.6-evil\n"
                      "@@kf:" NONCE "0:uname_r\n"
                      " @@kf:" NONCE ":uname_r\n"
                      "@@KF:" NONCE ":uname_r\n"
                      "VERSION_ID=12\n",
                      "kernels", "6.1.0-41-amd64 dbi\n@@kf:deadbeefdeadbeef:end\n6.2.0-1 dbi\n",
                      "end", "", NULL);

    (void)state;
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_string_equal(f.kernel, "6.1.0-41-amd64");
    /* The forged lines were content of os_release; parsing went on. */
    assert_string_equal(f.os_id, "debian");
    assert_string_equal(f.os_version, "12");
    assert_int_equal(f.nkernels, 2);
    assert_string_equal(f.kernels[1].release, "6.2.0-1");
    free(out);

    /* The same output read with another run's nonce has no sections. */
    out = read_fixture("debian12-2gpu.out", &len);
    assert_int_equal(inv_facts_parse(out, len, "5f0c9a3e71d24b87", &f, &err), KF_EPARSE);
    assert_string_equal(err.msg, "probe output incomplete: no 'end' section");
    free(out);
}

static void test_truncated_output(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len, cut;
    char *out;

    (void)state;
    assert_int_equal(parse_fixture("truncated.out", &f, &err), KF_EPARSE);
    assert_int_equal(err.code, KF_EPARSE);
    assert_string_equal(err.msg, "probe output incomplete: no 'end' section");

    /* Cut anywhere before the end marker's newline-less tail: never OK. */
    out = read_fixture("debian12-2gpu.out", &len);
    for (cut = 0; cut < len - strlen("end\n"); cut++)
        assert_int_equal(inv_facts_parse(out, cut, NONCE, &f, &err), KF_EPARSE);
    /* The end marker without its final newline is still an end marker. */
    assert_int_equal(inv_facts_parse(out, len - 1, NONCE, &f, &err), 0);
    free(out);

    assert_int_equal(inv_facts_parse(NULL, 0, NONCE, &f, &err), KF_EPARSE);
    assert_int_equal(inv_facts_parse("", 0, NONCE, &f, &err), KF_EPARSE);
}

static void test_missing_required(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len;
    char *out;

    (void)state;
    out = mkout(&len, "uname_m", "x86_64\n", "end", "", NULL);
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), KF_EPARSE);
    assert_string_equal(err.msg, "probe output incomplete: no 'uname_r' section");
    free(out);

    out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "end", "", NULL);
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), KF_EPARSE);
    assert_string_equal(err.msg, "probe output incomplete: no 'uname_m' section");
    free(out);

    /* A section after "end" does not count. */
    out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "end", "", "uname_m", "x86_64\n", NULL);
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), KF_EPARSE);
    assert_string_equal(err.msg, "probe output incomplete: no 'uname_m' section");
    free(out);

    assert_int_equal(inv_facts_parse("x", 1, "NOTHEX!!", &f, &err), KF_EINVAL);
    assert_int_equal(inv_facts_parse(NULL, 5, NONCE, &f, &err), KF_EINVAL);
    assert_int_equal(inv_facts_parse("x", 1, NONCE, NULL, &err), KF_EINVAL);
    assert_int_equal(inv_facts_parse("x", 1, NONCE, &f, NULL), KF_EPARSE);
}

static void test_duplicate_and_unknown_sections(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len;
    char *out;

    (void)state;
    out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "uname_m", "x86_64\n", "uname_r",
                "6.6.6-evil\n", "end", "", NULL);
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), KF_EPARSE);
    assert_string_equal(err.msg, "probe output has section 'uname_r' twice");
    free(out);

    /* Unknown sections are skipped, their content with them. */
    out = mkout(&len, "uname_r", "6.1.0-41-amd64\n", "future_thing", "ID=evil\n", "uname_m",
                "x86_64\n", "end", "", NULL);
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_string_equal(f.os_id, "");
    free(out);
}

static void test_sections_out_of_order(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len;
    char *out =
        mkout(&len, "kfleet_state", "driver=550.54.15\n", "gpus",
              "method=lspci\n0000:3b:00.0 0302: 10de:2330 (rev a1)\n", "uname_m", "x86_64\n",
              "kernels", "6.1.0-40-amd64 dbi\n", "uname_r", "6.1.0-41-amd64\n", "end", "", NULL);

    (void)state;
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_string_equal(f.kernel, "6.1.0-41-amd64");
    assert_int_equal(f.nkernels, 2);
    assert_kernel(&f.kernels[0], "6.1.0-40-amd64", 0, 1, 1, 1);
    assert_kernel(&f.kernels[1], "6.1.0-41-amd64", 1, 0, 0, 0);
    assert_int_equal(f.ngpus, 1);
    assert_string_equal(f.kfleet_driver, "550.54.15");
    free(out);
}

static void test_kfleet_current(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len;
    json_t *j;
    char *s;
    char *out =
        mkout(&len, "uname_r", "6.1.0-41-amd64\n", "uname_m", "x86_64\n", "kfleet_state",
              "# kfleet node state\n"
              "driver=1.0.1\nkernel=6.12.38+deb12-amd64\n"
              "current 6.1.0-41-amd64 1.0.1 "
              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa testdrv\n"
              "current 6.12.38+deb12-amd64 1.0.0 "
              "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb nvidia\n"
              /* edited by hand into something unsafe: dropped, not fatal */
              "current 6.1;reboot 1.0.1 "
              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa testdrv\n"
              "current 6.1.0-41-amd64 1.0.1x "
              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa testdrv\n"
              "current 6.1.0-41-amd64 1.0.1 short testdrv\n"
              "current 6.1.0-41-amd64 1.0.1 "
              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa a/b\n"
              "current 6.1.0-41-amd64 1.0.1 "
              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa testdrv extra\n"
              "previous 6.1.0-41-amd64 1.0.0 "
              "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc testdrv\n",
              "end", "", NULL);

    (void)state;
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_int_equal(f.nkfleet_current, 2);
    assert_string_equal(f.kfleet_current[0].kernel, "6.1.0-41-amd64");
    assert_string_equal(f.kfleet_current[0].driver, "1.0.1");
    assert_string_equal(f.kfleet_current[0].profile, "testdrv");
    assert_string_equal(f.kfleet_current[1].kernel, "6.12.38+deb12-amd64");
    assert_string_equal(f.kfleet_current[1].profile, "nvidia");
    assert_string_equal(f.kfleet_driver, "1.0.1");
    j = inv_facts_to_json(&f);
    s = json_dumps(json_object_get(j, "kfleet"), JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(s, "{\"current\":[{\"driver\":\"1.0.1\",\"kernel\":\"6.1.0-41-amd64\","
                           "\"profile\":\"testdrv\"},{\"driver\":\"1.0.0\",\"kernel\":"
                           "\"6.12.38+deb12-amd64\",\"profile\":\"nvidia\"}],\"driver\":\"1.0.1\","
                           "\"kernel\":\"6.12.38+deb12-amd64\"}");
    free(s);
    json_decref(j);
    free(out);
}

static void test_crlf_same_as_lf(void **state)
{
    struct inv_facts a, b;
    struct kf_err err;
    struct buf crlf;
    size_t len, i;
    char *out;
    char *ja, *jb;

    (void)state;
    out = read_fixture("rocky9-8gpu.out", &len);
    buf_init(&crlf, 0);
    for (i = 0; i < len; i++) {
        if (out[i] == '\n')
            assert_int_equal(buf_append(&crlf, "\r", 1), 0);
        assert_int_equal(buf_append(&crlf, &out[i], 1), 0);
    }
    assert_int_equal(inv_facts_parse(out, len, NONCE, &a, &err), 0);
    assert_int_equal(inv_facts_parse(crlf.data, crlf.len, NONCE, &b, &err), 0);
    ja = json_of(&a);
    jb = json_of(&b);
    assert_string_equal(ja, jb);
    free(ja);
    free(jb);
    buf_release(&crlf);
    free(out);
}

static void test_kernels_invalid_skipped(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    struct buf b, o;
    size_t len;
    char *out;

    (void)state;
    buf_init(&b, 0);
    assert_int_equal(buf_puts(&b, "6.1.0-9-amd64 dbi\n"
                                  "$(reboot) dbi\n"
                                  "6.1.0 bad;name dbi\n"
                                  "6.1.0-47-amd64 dbi\n"
                                  "extramodules dbi\n"
                                  "6.1.0-x dbz\n"
                                  "6.1.0-y\n"
                                  "6.1.0-z dd\n"
                                  "6.1.0-w \n"
                                  " dbi\n"
                                  "\n"
                                  "6.1.0-\x1b[2J dbi\n"
                                  "6.1.0-50-amd64 bd\n"
                                  "6.12.38+deb12-amd64 i\n"
                                  "6.12.38+deb12-amd64 db\n"
                                  "1234567890123456789012345678901234567890123456789012345678901"
                                  "2345 dbi\n"),
                     0);
    /* A NUL inside a name: mkout() would stop at it, so append by hand. */
    assert_int_equal(buf_append(&b, "6.1.0-nul\0x dbi\n", 16), 0);
    buf_init(&o, 0);
    assert_int_equal(
        buf_printf(&o, "\n@@kf:%s:uname_r\n6.1.0-47-amd64\n\n@@kf:%s:kernels\n", NONCE, NONCE), 0);
    assert_int_equal(buf_append(&o, b.data, b.len), 0);
    assert_int_equal(buf_printf(&o, "\n@@kf:%s:uname_m\nx86_64\n\n@@kf:%s:end\n", NONCE, NONCE), 0);
    out = buf_detach(&o, &len);
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_int_equal(f.nkernels, 4);
    assert_kernel(&f.kernels[0], "6.1.0-9-amd64", 0, 1, 1, 1);
    assert_kernel(&f.kernels[1], "6.1.0-47-amd64", 1, 1, 1, 1);
    assert_kernel(&f.kernels[2], "6.1.0-50-amd64", 0, 1, 1, 0);
    /* The same release from /lib/modules and /boot: merged. */
    assert_kernel(&f.kernels[3], "6.12.38+deb12-amd64", 0, 1, 1, 1);
    free(out);
    buf_release(&b);
}

static void test_running_kernel_always_listed(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len;
    char *out;

    (void)state;
    /* Not in /lib/modules at all (a container, a netboot image). */
    out = mkout_with(&len, "kernels", "6.1.0-40-amd64 dbi\n");
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_int_equal(f.nkernels, 2);
    assert_kernel(&f.kernels[0], "6.1.0-40-amd64", 0, 1, 1, 1);
    assert_kernel(&f.kernels[1], "6.1.0-41-amd64", 1, 0, 0, 0);
    free(out);

    /* Listed with no flags: kept because it runs. */
    out = mkout_with(&len, "kernels", "6.1.0-41-amd64 -\n6.1.0-39-amd64 -\n");
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_int_equal(f.nkernels, 1);
    assert_kernel(&f.kernels[0], "6.1.0-41-amd64", 1, 0, 0, 0);
    free(out);
}

static void test_too_many_kernels(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    struct buf b;
    size_t i, len;
    char *out;

    (void)state;
    buf_init(&b, 0);
    /* 63 others plus the running one: exactly the limit. */
    for (i = 0; i < INV_FACTS_MAX_KERNELS - 1; i++)
        assert_int_equal(buf_printf(&b, "5.10.0-%zu-amd64 dbi\n", i), 0);
    out = mkout_with(&len, "kernels", buf_cstr(&b));
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_int_equal(f.nkernels, INV_FACTS_MAX_KERNELS);
    assert_string_equal(f.kernels[0].release, "5.10.0-0-amd64");
    assert_string_equal(f.kernels[1].release, "5.10.0-1-amd64");
    assert_string_equal(f.kernels[2].release, "5.10.0-2-amd64");
    assert_string_equal(f.kernels[10].release, "5.10.0-10-amd64");
    assert_string_equal(f.kernels[63].release, "6.1.0-41-amd64");
    free(out);

    assert_int_equal(buf_puts(&b, "5.10.0-99-amd64 i\n"), 0);
    out = mkout_with(&len, "kernels", buf_cstr(&b));
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), KF_EPARSE);
    assert_string_equal(err.msg, "kernels: more than 64 installed kernels; remove old ones from "
                                 "/lib/modules and /boot");
    free(out);
    buf_release(&b);
}

static void test_kernel_sort_order(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    size_t len;
    char *out = mkout_with(&len, "kernels",
                           "6.12.38+deb12-amd64 dbi\n6.1.0-50-amd64 dbi\n6.1.0-47-amd64 dbi\n"
                           "6.1.0-9-amd64 dbi\n6.1.0-41-amd64 dbi\n5.10.0-32-amd64 i\n"
                           "6.1.0-047-amd64 d\n");

    (void)state;
    assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
    assert_int_equal(f.nkernels, 7);
    assert_string_equal(f.kernels[0].release, "5.10.0-32-amd64");
    assert_string_equal(f.kernels[1].release, "6.1.0-9-amd64");
    assert_string_equal(f.kernels[2].release, "6.1.0-41-amd64");
    assert_string_equal(f.kernels[3].release, "6.1.0-047-amd64");
    assert_string_equal(f.kernels[4].release, "6.1.0-47-amd64");
    assert_string_equal(f.kernels[5].release, "6.1.0-50-amd64");
    assert_string_equal(f.kernels[6].release, "6.12.38+deb12-amd64");
    free(out);
}

static void test_kfleet_state(void **state)
{
    static const struct {
        const char *content, *driver, *kernel;
    } cases[] = {
        {"driver=550.54.15\nkernel=6.1.0-41-amd64\n", "550.54.15", "6.1.0-41-amd64"},
        {"# written by kfleet\r\nkernel=6.1.0-41-amd64\r\ndriver=550.54.15\r\nrelease=x\r\n",
         "550.54.15", "6.1.0-41-amd64"},
        {"driver=550.54.15;reboot\nkernel=../../etc\n", "", ""},
        {"driver=550.54.15\ndriver=garbage\nkernel=6.1.0-41-amd64 \n", "", ""},
        {"driver = 550.54.15\n", "", ""},
        {"", "", ""},
    };
    size_t i, len;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct inv_facts f;
        struct kf_err err;
        char *out = mkout_with(&len, "kfleet_state", cases[i].content);
        char *s;
        assert_int_equal(inv_facts_parse(out, len, NONCE, &f, &err), 0);
        assert_string_equal(f.kfleet_driver, cases[i].driver);
        assert_string_equal(f.kfleet_release, cases[i].kernel);
        s = json_of(&f);
        if (cases[i].driver[0] == '\0' && cases[i].kernel[0] == '\0')
            assert_non_null(strstr(s, "\"kfleet\":null"));
        free(s);
        free(out);
    }
}

static void test_giant_and_binary_input(void **state)
{
    struct inv_facts f;
    struct kf_err err;
    struct buf b;
    size_t i;

    (void)state;
    /* A 4 MiB line of junk in os_release and NULs everywhere else. */
    buf_init(&b, 0);
    assert_int_equal(
        buf_printf(&b, "\n@@kf:%s:uname_r\n6.1.0-41-amd64\n\n@@kf:%s:os_release\n", NONCE, NONCE),
        0);
    for (i = 0; i < 4u << 20; i++)
        assert_int_equal(buf_append(&b, i % 7 ? "A" : "\0", 1), 0);
    assert_int_equal(buf_printf(&b, "\n\n@@kf:%s:uname_m\nx86_64\n\n@@kf:%s:end\n", NONCE, NONCE),
                     0);
    assert_int_equal(inv_facts_parse(b.data, b.len, NONCE, &f, &err), 0);
    assert_string_equal(f.kernel, "6.1.0-41-amd64");
    buf_release(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_krel_valid),
        cmocka_unit_test(test_driver_version_valid),
        cmocka_unit_test(test_command_plain),
        cmocka_unit_test(test_command_become),
        cmocka_unit_test(test_command_bad_args),
        cmocka_unit_test(test_command_runs_locally),
        cmocka_unit_test(test_command_other_shells),
        cmocka_unit_test(test_debian12_two_gpus),
        cmocka_unit_test(test_debian12_json),
        cmocka_unit_test(test_rocky9),
        cmocka_unit_test(test_no_nvidia_tools),
        cmocka_unit_test(test_version_mismatch),
        cmocka_unit_test(test_sysfs_gpus_and_efivars),
        cmocka_unit_test(test_gpu_sources),
        cmocka_unit_test(test_gpus_missing_section_is_unknown),
        cmocka_unit_test(test_gpu_malformed),
        cmocka_unit_test(test_too_many_gpus),
        cmocka_unit_test(test_loaded_driver_sources),
        cmocka_unit_test(test_userspace_driver_sources),
        cmocka_unit_test(test_secure_boot_variants),
        cmocka_unit_test(test_hostile_uname_r),
        cmocka_unit_test(test_hostile_uname_m),
        cmocka_unit_test(test_uname_v_and_os_sanitized),
        cmocka_unit_test(test_forged_marker_other_nonce),
        cmocka_unit_test(test_truncated_output),
        cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_duplicate_and_unknown_sections),
        cmocka_unit_test(test_sections_out_of_order),
        cmocka_unit_test(test_kfleet_current),
        cmocka_unit_test(test_crlf_same_as_lf),
        cmocka_unit_test(test_kernels_invalid_skipped),
        cmocka_unit_test(test_running_kernel_always_listed),
        cmocka_unit_test(test_too_many_kernels),
        cmocka_unit_test(test_kernel_sort_order),
        cmocka_unit_test(test_kfleet_state),
        cmocka_unit_test(test_giant_and_binary_input),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
