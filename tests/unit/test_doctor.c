/* kfleet doctor: the probe command and the analysis of its output.
 *
 * Fixtures in tests/fixtures/doctor/ are whole probe outputs (the doctor
 * sections, then the facts probe's) modelled on the classic post-mortems;
 * the other tests build outputs from a healthy base with one section
 * replaced, so each check is seen firing and not firing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "doctor.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NONCE "5f0c9a3e71d24b86"
#define K1 "6.1.0-47-amd64"
#define K2 "6.1.0-50-amd64"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

static char *read_fixture(const char *name, size_t *len)
{
    char path[1024];
    char *p;

    snprintf(path, sizeof(path), "%s/doctor/%s", KF_FIXTURES, name);
    p = (char *)kft_read_all(path, len);
    assert_non_null(p);
    return p;
}

/* The sections of a healthy node: one kernel, one GPU on nvidia 550.54.15,
 * kfleet's modules, nouveau blacklisted, Secure Boot off, no automatic
 * upgrades. Tests replace one section at a time. */
struct section {
    const char *name;
    const char *content;
};

static const struct section base[] = {
    {"d_modules", "f=/lib/modules/" K1 "/updates/kfleet/nvidia.ko\n"
                  "version:        550.54.15\n"
                  "vermagic:       " K1 " SMP preempt mod_unload modversions \n"
                  "marker=no\n"
                  "f=/lib/modules/" K1 "/updates/kfleet/nvidia-uvm.ko\n"
                  "version:        550.54.15\n"
                  "vermagic:       " K1 " SMP preempt mod_unload modversions \n"
                  "marker=no\n"},
    {"d_dkms", ""},
    {"d_kmsg",
     "method=dmesg\n"
     "[    4.962001] NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 "
     "22:23:56 UTC 2024\n"},
    {"d_pci", "0000:3b:00.0 0x030200 nvidia 42\n"},
    {"d_iommu", "present\ndmar0\n"},
    {"d_cmdline", "BOOT_IMAGE=/boot/vmlinuz-" K1 " root=/dev/sda2 ro quiet\n"},
    {"d_nouveau", "ko=/lib/modules/" K1 "/kernel/drivers/gpu/drm/nouveau/nouveau.ko\n"
                  "/etc/modprobe.d/blacklist-nouveau.conf:blacklist nouveau\n"},
    {"d_secure", "sig_enforce=N\nmethod=keys\n"},
    {"d_upgrades", ""},
    {"uname_r", K1 "\n"},
    {"uname_v", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)\n"},
    {"uname_m", "x86_64\n"},
    {"os_release", "ID=debian\nVERSION_ID=\"12\"\n"},
    {"kernels", K1 " dbi\n"},
    {"nvidia_module", "550.54.15\n"},
    {"proc_driver", ""},
    {"nvidia_smi", "550.54.15\n\nrc=0\n"},
    {"libnvidia_ml", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15\n"},
    {"gpus", "method=lspci\n0000:3b:00.0 0302: 10de:2330 (rev a1)\n"},
    {"secure_boot", "method=mokutil\nSecureBoot disabled\n\nrc=0\n"},
    {"kfleet_state", "driver=550.54.15\nkernel=" K1 "\ncurrent " K1 " 550.54.15 "
                     "0000000000000000000000000000000000000000000000000000000000000000 nvidia\n"},
    {"end", ""},
};
#define NBASE (sizeof(base) / sizeof(base[0]))

/* The base output with (name, content) pairs replacing sections; a NULL
 * content drops the section. NULL-terminated. */
static char *mkdoc(size_t *len, ...)
{
    const char *content[NBASE];
    struct buf b;
    const char *name;
    va_list ap;
    size_t i;

    for (i = 0; i < NBASE; i++)
        content[i] = base[i].content;
    va_start(ap, len);
    while ((name = va_arg(ap, const char *)) != NULL) {
        const char *c = va_arg(ap, const char *);
        for (i = 0; i < NBASE && strcmp(base[i].name, name) != 0; i++)
            ;
        if (i == NBASE)
            fail_msg("no section %s in the base", name);
        content[i] = c;
    }
    va_end(ap);
    buf_init(&b, 0);
    for (i = 0; i < NBASE; i++)
        if (content[i] != NULL)
            assert_int_equal(buf_printf(&b, "\n@@kf:%s:%s\n%s", NONCE, base[i].name, content[i]),
                             0);
    return buf_detach(&b, len);
}

static void assert_display_safe(const char *s)
{
    const unsigned char *p;

    assert_non_null(s);
    for (p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p >= 0x7f)
            fail_msg("raw byte 0x%02x in: %s", *p, s);
}

/* Every finding is printable, one per code, sorted by severity, and the
 * counts add up. */
static void assert_report_sane(const struct deploy_doctor_report *r)
{
    size_t i, j, count[DEPLOY_DOCTOR_NSEVERITIES] = {0, 0, 0};

    for (i = 0; i < r->n; i++) {
        const struct deploy_doctor_finding *f = &r->findings[i];
        assert_display_safe(f->title);
        assert_display_safe(f->evidence);
        assert_display_safe(f->fix);
        assert_true(f->title[0] != '\0');
        assert_true(f->fix[0] != '\0');
        assert_true(strlen(f->evidence) < 4096);
        count[f->severity]++;
        if (i > 0)
            assert_true(r->findings[i - 1].severity <= f->severity);
        for (j = 0; j < i; j++)
            assert_string_not_equal(r->findings[j].code, f->code);
    }
    for (i = 0; i < DEPLOY_DOCTOR_NSEVERITIES; i++)
        assert_int_equal(count[i], r->count[i]);
}

static void analyze_ctx(const char *out, size_t len, const struct deploy_doctor_ctx *ctx,
                        struct deploy_doctor_report *r)
{
    struct kf_err err;
    int rc;

    deploy_doctor_report_init(r);
    rc = deploy_doctor_analyze(out, len, NONCE, ctx, r, &err);
    if (rc != 0)
        fail_msg("analyze failed: %s", kf_err_msg(&err));
    assert_report_sane(r);
}

static void analyze(const char *out, size_t len, struct deploy_doctor_report *r)
{
    analyze_ctx(out, len, NULL, r);
}

/* The report's codes are exactly the NULL-terminated list. */
static void assert_codes(const struct deploy_doctor_report *r, ...)
{
    const char *code;
    size_t n = 0, i;
    va_list ap;
    struct buf got;

    buf_init(&got, 0);
    for (i = 0; i < r->n; i++)
        buf_printf(&got, "%s%s", i ? " " : "", r->findings[i].code);
    va_start(ap, r);
    while ((code = va_arg(ap, const char *)) != NULL) {
        n++;
        if (deploy_doctor_find(r, code) == NULL)
            fail_msg("no finding %s; got: %s", code, buf_cstr(&got));
    }
    va_end(ap);
    if (n != r->n)
        fail_msg("want %zu findings, got %zu: %s", n, r->n, buf_cstr(&got));
    buf_release(&got);
}

static const struct deploy_doctor_finding *
must_find(const struct deploy_doctor_report *r, const char *code, enum deploy_doctor_severity sev)
{
    const struct deploy_doctor_finding *f = deploy_doctor_find(r, code);

    if (f == NULL)
        fail_msg("no finding %s", code);
    assert_int_equal(f->severity, sev);
    return f;
}

static void assert_has(const char *s, const char *sub)
{
    if (strstr(s, sub) == NULL)
        fail_msg("'%s' not in: %s", sub, s);
}

/* Analyses the base with one section replaced; the findings' codes must
 * be exactly the list. */
static void case_codes(const char *name, const char *content, struct deploy_doctor_report *r, ...)
{
    size_t len;
    char *out = mkdoc(&len, name, content, NULL);
    const char *code;
    va_list ap;
    size_t n = 0;

    analyze(out, len, r);
    free(out);
    va_start(ap, r);
    while ((code = va_arg(ap, const char *)) != NULL) {
        n++;
        if (deploy_doctor_find(r, code) == NULL)
            fail_msg("%s: no finding %s (%zu findings, first %s)", name, code, r->n,
                     r->n ? r->findings[0].code : "-");
    }
    va_end(ap);
    if (n != r->n)
        fail_msg("%s: want %zu findings, got %zu (first %s)", name, n, r->n,
                 r->n ? r->findings[0].code : "-");
}

/* Analyses the base with one section replaced, checking nothing more. */
static void case_run(const char *name, const char *content, struct deploy_doctor_report *r)
{
    size_t len;
    char *out = mkdoc(&len, name, content, NULL);

    analyze(out, len, r);
    free(out);
}

/* ------------------------------------------------------------------------ */
/* The command                                                               */

/* The script part of a command: between "sh -c '" and "' kfdoctor". */
static char *script_of(const char *cmd)
{
    const char *s = strstr(cmd, "sh -c '"), *e = strstr(cmd, "' kfdoctor '");

    assert_non_null(s);
    assert_non_null(e);
    s += 7;
    assert_true(e > s);
    return strndup(s, (size_t)(e - s));
}

static void test_command_plain(void **state)
{
    static const char *const sections[] = {"d_modules", "d_dkms",   "d_kmsg",
                                           "d_pci",     "d_iommu",  "d_cmdline",
                                           "d_nouveau", "d_secure", "d_upgrades"};
    char *cmd = NULL, *script, line[64];
    size_t i;

    (void)state;
    assert_int_equal(deploy_doctor_command(NONCE, 0, NULL, NULL, &cmd), 0);
    assert_true(strncmp(cmd, "sh -c 'K=$1\n", 12) == 0);
    /* nonce, module pattern, then the facts probe as one word. */
    assert_non_null(strstr(cmd, "' kfdoctor '" NONCE "' 'nvidia.ko*' 'sh -c '\\''K=$1\n"));
    assert_non_null(strstr(cmd, "kfprobe '\\''" NONCE "'\\'''"));
    script = script_of(cmd);
    /* One plain single-quoted word: no quote, backslash or '!' inside. */
    assert_null(strchr(script, '\''));
    assert_null(strchr(script, '\\'));
    assert_null(strchr(script, '!'));
    assert_null(strstr(script, NONCE));
    for (i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
        snprintf(line, sizeof(line), "\ns %s\n", sections[i]);
        assert_non_null(strstr(script, line));
    }
    assert_non_null(strstr(script, "\nexec </dev/null\n"));
    /* The facts probe runs last, so its end marker closes everything. */
    assert_non_null(strstr(script, "\nsh -c \"$3\"\n"));
    assert_string_equal(strstr(script, "\nsh -c \"$3\"\n"), "\nsh -c \"$3\"\n");
    free(script);
    free(cmd);

    /* A profile's module: '-' and '_' are one character, and compressed. */
    assert_int_equal(deploy_doctor_command(NONCE, 0, NULL, "kfleet-core_x", &cmd), 0);
    assert_non_null(strstr(cmd, "' 'kfleet[-_]core[-_]x.ko*' '"));
    free(cmd);
}

static void test_command_become(void **state)
{
    char *cmd = NULL;

    (void)state;
    assert_int_equal(deploy_doctor_command(NONCE, 1, NULL, NULL, &cmd), 0);
    assert_true(strncmp(cmd, "sudo -n -u 'root' sh -c 'K=$1\n", 30) == 0);
    /* The inner facts probe does not ask for sudo again. */
    assert_null(strstr(cmd + 5, "sudo"));
    free(cmd);
    assert_int_equal(deploy_doctor_command(NONCE, 1, "o'neil;reboot", NULL, &cmd), 0);
    assert_true(strncmp(cmd, "sudo -n -u 'o'\\''neil;reboot' sh -c '", 37) == 0);
    free(cmd);
    assert_int_equal(deploy_doctor_command(NONCE, 0, "nobody", NULL, &cmd), 0);
    assert_true(strncmp(cmd, "sh -c '", 7) == 0);
    free(cmd);
}

static void test_command_bad_args(void **state)
{
    static const char *const bad_nonce[] = {"", "0123456", "0123456789ABCDEF", "abcdef01'; x; '"};
    char long_name[KF_MODNAME_MAX + 2];
    const char *const bad_module[] = {"", "a b", "../nvidia", "nvidia*", "x'y", long_name};
    char *cmd;
    size_t i;

    (void)state;
    memset(long_name, 'a', sizeof(long_name) - 1); /* one byte too long */
    long_name[sizeof(long_name) - 1] = '\0';
    for (i = 0; i < sizeof(bad_nonce) / sizeof(bad_nonce[0]); i++) {
        cmd = (char *)"sentinel";
        assert_int_equal(deploy_doctor_command(bad_nonce[i], 0, NULL, NULL, &cmd), KF_EINVAL);
        assert_null(cmd);
    }
    for (i = 0; i < sizeof(bad_module) / sizeof(bad_module[0]); i++) {
        cmd = (char *)"sentinel";
        assert_int_equal(deploy_doctor_command(NONCE, 0, NULL, bad_module[i], &cmd), KF_EINVAL);
        assert_null(cmd);
    }
    assert_int_equal(deploy_doctor_command(NULL, 0, NULL, NULL, &cmd), KF_EINVAL);
    assert_int_equal(deploy_doctor_command(NONCE, 1, "", NULL, &cmd), KF_EINVAL);
    assert_int_equal(deploy_doctor_command(NONCE, 0, NULL, NULL, NULL), KF_EINVAL);
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

/* The real command, under this machine's sh and the other shells
 * installed here: its output parses, with this machine's kernel. */
static void test_command_runs_locally(void **state)
{
    static const char *const shells[] = {"/bin/sh", "/bin/dash", "/bin/bash", "/bin/busybox"};
    char *cmd = NULL, *out;
    size_t i, len;

    (void)state;
    assert_int_equal(deploy_doctor_command(NONCE, 0, NULL, NULL, &cmd), 0);
    for (i = 0; i < sizeof(shells) / sizeof(shells[0]); i++) {
        struct deploy_doctor_report r;
        struct buf b;
        if (access(shells[i], X_OK) != 0)
            continue;
        buf_init(&b, 0);
        /* "<shell> [sh] -c ...": the command's own "sh" replaced. */
        assert_int_equal(buf_printf(&b, "%s%s%s </dev/null", shells[i],
                                    strstr(shells[i], "busybox") ? " sh" : "", cmd + 2),
                         0);
        out = run_capture(buf_cstr(&b), &len);
        analyze(out, len, &r);
        assert_true(r.facts.nkernels > 0);
        deploy_doctor_report_release(&r);
        free(out);
        buf_release(&b);
    }
    free(cmd);
}

/* The script is POSIX sh as shellcheck sees it (when installed). */
static void test_command_shellcheck(void **state)
{
    char *cmd = NULL, *script;

    (void)state;
    if (!kft_have("shellcheck"))
        skip();
    assert_int_equal(kft_setup_tmpdir(NULL), 0);
    assert_int_equal(deploy_doctor_command(NONCE, 0, NULL, NULL, &cmd), 0);
    script = script_of(cmd);
    kft_write_all(kft_tmp("probe.sh"), script, strlen(script));
    assert_int_equal(kft_sh("shellcheck -s sh %s", kft_tmp("probe.sh")), 0);
    free(script);
    free(cmd);
    kft_teardown_tmpdir(NULL);
}

/* ------------------------------------------------------------------------ */
/* Fixtures: the classic cases                                               */

static void test_base_is_healthy(void **state)
{
    struct deploy_doctor_report r;
    size_t len;
    char *out = mkdoc(&len, NULL);

    (void)state;
    analyze(out, len, &r);
    assert_codes(&r, NULL);
    assert_string_equal(r.facts.kernel, K1);
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_fixture_healthy(void **state)
{
    struct deploy_doctor_report r;
    size_t len;
    char *out = read_fixture("healthy.out", &len);
    json_t *j;

    (void)state;
    analyze(out, len, &r);
    assert_codes(&r, NULL);
    assert_int_equal(r.facts.nkernels, 2);
    assert_int_equal(r.facts.ngpus, 2);
    assert_string_equal(r.facts.loaded_driver, "550.54.15");
    j = deploy_doctor_findings_json(&r);
    assert_non_null(j);
    assert_int_equal(json_array_size(j), 0);
    json_decref(j);
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_fixture_api_mismatch(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = read_fixture("api-mismatch.out", &len);

    (void)state;
    analyze(out, len, &r);
    assert_codes(&r, "driver-library-mismatch", "nvrm-api-mismatch", "loaded-differs-from-disk",
                 NULL);
    f = must_find(&r, "driver-library-mismatch", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->title, "kernel module 570.124.06, userspace 570.133.07");
    assert_has(f->evidence,
               "nvidia-smi: Failed to initialize NVML: Driver/library version mismatch (exit 18)");
    /* DKMS already built the new module: reloading is the whole fix. */
    assert_has(f->fix, "is already 570.133.07: a reload is enough");
    f = must_find(&r, "nvrm-api-mismatch", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->title, "a client of driver 570.133.07 talked to kernel module 570.124.06");
    assert_has(f->evidence, "NVRM: API mismatch: the client has the version 570.133.07, but this "
                            "kernel module has the version 570.124.06.");
    /* The timestamp is not part of the evidence: hosts group. */
    assert_null(strstr(f->evidence, "86011"));
    f = must_find(&r, "loaded-differs-from-disk", DEPLOY_DOCTOR_WARNING);
    assert_has(f->evidence, "updates/dkms/nvidia.ko.zst: version 570.133.07");
    /* Ordered: critical first, in the table's order. */
    assert_string_equal(r.findings[0].code, "driver-library-mismatch");
    assert_string_equal(r.findings[2].code, "loaded-differs-from-disk");
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_fixture_bar1(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = read_fixture("bar1-0m.out", &len);

    (void)state;
    analyze(out, len, &r);
    /* The probe failure that follows is explained by the BAR: one finding. */
    assert_codes(&r, "pci-bar-invalid", NULL);
    f = must_find(&r, "pci-bar-invalid", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->title, "(0000:00:05.0)");
    assert_has(f->title, "BAR was not assigned (0M)");
    assert_has(f->evidence, "journalctl -k -b: ");
    assert_has(f->evidence, "NVRM: BAR1 is 0M @ 0x0 (PCI:0000:00:05.0)");
    assert_has(f->fix, "Above 4G decoding");
    assert_has(f->fix, "Resizable BAR");
    assert_has(f->fix, "boot with pci=realloc");
    assert_has(f->fix, "-global q35-pcihost.pci-hole64-size=");
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_fixture_vfio(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = read_fixture("vfio-passthrough.out", &len);

    (void)state;
    analyze(out, len, &r);
    /* No driver wanted, none missing: only the note. */
    assert_codes(&r, "vfio-passthrough", NULL);
    f = must_find(&r, "vfio-passthrough", DEPLOY_DOCTOR_INFO);
    assert_has(f->title, "4 NVIDIA GPUs bound to vfio-pci: a passthrough host");
    assert_has(f->evidence,
               "/sys/bus/pci/devices/0000:1b:00.0/driver -> vfio-pci (iommu group 24)");
    assert_has(f->evidence, "IOMMU units: dmar0, dmar1, dmar2, dmar3");
    assert_has(f->evidence, "intel_iommu=on iommu=pt");
    assert_has(f->fix, "must never be loaded");
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_fixture_nouveau(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = read_fixture("nouveau-loaded.out", &len);

    (void)state;
    analyze(out, len, &r);
    assert_codes(&r, "nouveau-loaded", "kernel-without-module", NULL);
    f = must_find(&r, "nouveau-loaded", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->evidence, "/sys/module/nouveau exists; /sys/bus/pci/devices/0000:3b:00.0/driver "
                            "-> nouveau");
    assert_has(f->fix, "blacklist nouveau");
    f = must_find(&r, "kernel-without-module", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->title, "the running kernel " K1 " has no nvidia module on disk");
    assert_has(f->fix, "the artifact store was not checked");
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_fixture_secureboot_unsigned(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = read_fixture("secureboot-unsigned.out", &len);

    (void)state;
    analyze(out, len, &r);
    assert_codes(&r, "unsigned-modules-secure-boot", "module-signature-rejected", NULL);
    f = must_find(&r, "unsigned-modules-secure-boot", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->title, "4 module files are unsigned");
    assert_has(f->evidence, "Secure Boot enabled, sig_enforce=Y, lockdown=integrity");
    assert_has(f->evidence, "updates/kfleet/nvidia.ko: no module signature");
    assert_has(f->fix, "mokutil --import");
    f = must_find(&r, "module-signature-rejected", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->evidence, "Lockdown: modprobe: unsigned module loading is restricted");
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_fixture_secureboot_unenrolled(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = read_fixture("secureboot-unenrolled.out", &len);

    (void)state;
    analyze(out, len, &r);
    assert_codes(&r, "module-signer-not-enrolled", "module-signature-rejected", NULL);
    f = must_find(&r, "module-signer-not-enrolled", DEPLOY_DOCTOR_WARNING);
    assert_has(f->title, "signed by \"kfleet module signing\"");
    assert_has(f->evidence, "mokutil --list-enrolled: no subject with that CN");
    assert_has(f->evidence, "/proc/keys: 2 asymmetric keys");
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_fixture_unattended(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = read_fixture("unattended-upgrades.out", &len);

    (void)state;
    analyze(out, len, &r);
    assert_codes(&r, "kernel-without-module", "unattended-kernel-upgrades",
                 "unattended-driver-upgrades", NULL);
    f = must_find(&r, "kernel-without-module", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->title, "installed kernel 5.15.0-107-generic has no nvidia module: the next "
                         "reboot");
    f = must_find(&r, "unattended-kernel-upgrades", DEPLOY_DOCTOR_WARNING);
    assert_has(f->title, "and reboots (Automatic-Reboot)");
    assert_has(f->evidence,
               "/etc/apt/apt.conf.d/20auto-upgrades: APT::Periodic::Unattended-Upgrade \"1\"");
    assert_has(f->evidence, "matches linux-image-5.15.0-105-generic");
    assert_has(f->fix, "kfleet run --no-deploy");
    /* 50unattended-upgrades.ucf-dist is not read by apt (its name has an
     * extension other than .conf), so its blacklist does not count. */
    f = must_find(&r, "unattended-driver-upgrades", DEPLOY_DOCTOR_WARNING);
    assert_has(f->evidence, "libnvidia-compute-550, nvidia-driver-550, nvidia-utils-550");
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_fixture_leftovers(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = read_fixture("leftovers.out", &len);

    (void)state;
    analyze(out, len, &r);
    assert_codes(&r, "vermagic-mismatch", "conflicting-module-copies", "dkms-leftover", NULL);
    f = must_find(&r, "vermagic-mismatch", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->evidence,
               "/lib/modules/" K2 "/updates/kfleet/nvidia.ko: vermagic=" K1 " SMP preempt");
    assert_has(f->fix, "--kernel " K2);
    f = must_find(&r, "conflicting-module-copies", DEPLOY_DOCTOR_WARNING);
    assert_has(f->evidence, "updates/kfleet/nvidia.ko: version 550.54.15, /lib/modules/" K1
                            "/updates/dkms/nvidia.ko: version 535.183.01");
    assert_has(f->fix, "dkms remove");
    f = must_find(&r, "dkms-leftover", DEPLOY_DOCTOR_WARNING);
    assert_has(f->title, "535.183.01");
    assert_has(f->evidence, "/var/lib/dkms/nvidia-current/kernel-" K1);
    deploy_doctor_report_release(&r);
    free(out);
}

/* Every fixture, with every context the coordinator may give. */
static void test_fixtures_display_safe_json(void **state)
{
    static const char *const names[] = {"healthy.out",
                                        "api-mismatch.out",
                                        "bar1-0m.out",
                                        "vfio-passthrough.out",
                                        "nouveau-loaded.out",
                                        "secureboot-unsigned.out",
                                        "secureboot-unenrolled.out",
                                        "unattended-upgrades.out",
                                        "leftovers.out"};
    const struct deploy_doctor_package pk[] = {{"550.54.15", "5.15.0-107-generic", "x86_64"}};
    struct deploy_doctor_ctx ctx = {"570.86.15", "nvidia", "nvidia", pk, 1, 1};
    size_t i, len;

    (void)state;
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        struct deploy_doctor_report r;
        char *out = read_fixture(names[i], &len), *s;
        json_t *j;
        analyze_ctx(out, len, &ctx, &r);
        j = deploy_doctor_findings_json(&r);
        assert_non_null(j);
        assert_int_equal(json_array_size(j), r.n);
        s = json_dumps(j, JSON_COMPACT);
        assert_non_null(s);
        free(s);
        json_decref(j);
        deploy_doctor_report_release(&r);
        free(out);
    }
}

/* ------------------------------------------------------------------------ */
/* Each check, firing and not                                                */

static void test_library_mismatch_without_smi(void **state)
{
    struct deploy_doctor_report r;

    (void)state;
    /* No nvidia-smi: the loaded module against libnvidia-ml's version. */
    case_codes("nvidia_smi", "", &r, NULL); /* same versions: nothing */
    deploy_doctor_report_release(&r);
    case_codes("libnvidia_ml",
               "/usr/lib64/libnvidia-ml.so.1\n/usr/lib64/libnvidia-ml.so.550.90.07\n", &r,
               NULL); /* nvidia-smi works (rc=0): the old file is a leftover */
    deploy_doctor_report_release(&r);
    {
        size_t len;
        char *out = mkdoc(&len, "nvidia_smi", "", "libnvidia_ml",
                          "/usr/lib64/libnvidia-ml.so.550.90.07\n", NULL);
        const struct deploy_doctor_finding *f;
        analyze(out, len, &r);
        assert_codes(&r, "driver-library-mismatch", NULL);
        f = must_find(&r, "driver-library-mismatch", DEPLOY_DOCTOR_CRITICAL);
        assert_has(f->title, "kernel module 550.54.15 and userspace library 550.90.07 differ");
        assert_has(f->evidence, "/usr/lib64/libnvidia-ml.so.550.90.07");
        deploy_doctor_report_release(&r);
        free(out);
    }
}

static void test_api_mismatch_stale_and_split(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;

    (void)state;
    /* nvidia-smi works now: the log line is history, an info. */
    case_codes("d_kmsg",
               "method=dmesg\n[ 9.1] NVRM: API mismatch: the client has the version 550.54.15, "
               "but\n[ 9.1] NVRM: this kernel module has the version 535.104.05.  Please\n",
               &r, "nvrm-api-mismatch", NULL);
    f = must_find(&r, "nvrm-api-mismatch", DEPLOY_DOCTOR_INFO);
    /* The versions of the older, split message. */
    assert_has(f->title, "a client of driver 550.54.15 talked to kernel module 535.104.05");
    assert_has(f->title, "earlier in this boot");
    deploy_doctor_report_release(&r);
}

static void test_loaded_vs_disk_and_expected(void **state)
{
    struct deploy_doctor_report r;
    struct deploy_doctor_ctx ctx;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = mkdoc(&len, NULL);

    (void)state;
    memset(&ctx, 0, sizeof(ctx));
    ctx.driver = "550.54.15";
    analyze_ctx(out, len, &ctx, &r);
    assert_codes(&r, NULL);
    deploy_doctor_report_release(&r);
    ctx.driver = "570.124.06";
    analyze_ctx(out, len, &ctx, &r);
    assert_codes(&r, "driver-version-unexpected", NULL);
    f = must_find(&r, "driver-version-unexpected", DEPLOY_DOCTOR_WARNING);
    assert_has(f->title, "driver 570.124.06 (--driver)");
    assert_has(f->evidence, "/sys/module/nvidia/version: 550.54.15; /lib/modules/" K1
                            "/updates/kfleet/nvidia.ko: version 550.54.15");
    deploy_doctor_report_release(&r);
    /* A bad --driver is ignored, not trusted. */
    ctx.driver = "570;reboot";
    analyze_ctx(out, len, &ctx, &r);
    assert_codes(&r, NULL);
    deploy_doctor_report_release(&r);
    free(out);

    out = mkdoc(&len, "nvidia_module", "535.104.05\n", "nvidia_smi",
                "Failed to initialize NVML: Driver/library version mismatch\n\nrc=18\n", NULL);
    analyze(out, len, &r);
    assert_codes(&r, "driver-library-mismatch", "loaded-differs-from-disk", NULL);
    f = must_find(&r, "loaded-differs-from-disk", DEPLOY_DOCTOR_WARNING);
    assert_has(f->title, "is 535.104.05, but modprobe would now load 550.54.15");
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_kernels_and_store(void **state)
{
    const struct deploy_doctor_package pk[] = {
        {"550.54.15", K2, "x86_64"},
        {"550.54.15", "6.12.38+deb12-amd64", "aarch64"},
    };
    struct deploy_doctor_report r;
    struct deploy_doctor_ctx ctx;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = mkdoc(&len, "kernels",
                      K1 " dbi\n" K2 " dbi\n6.12.38+deb12-amd64 di\n6.1.0-37-amd64 b\n", NULL);

    (void)state;
    memset(&ctx, 0, sizeof(ctx));
    ctx.packages = pk;
    ctx.npackages = 2;
    ctx.store_checked = 1;
    analyze_ctx(out, len, &ctx, &r);
    assert_codes(&r, "kernel-without-module", NULL);
    f = must_find(&r, "kernel-without-module", DEPLOY_DOCTOR_CRITICAL);
    /* Only bootable kernels: 6.1.0-37 has nothing but headers. */
    assert_has(f->title, "2 kernels have no nvidia module");
    assert_null(strstr(f->evidence, "6.1.0-37"));
    assert_has(f->evidence, K2 ": no nvidia.ko under /lib/modules/" K2);
    assert_has(f->fix, "A package of driver 550.54.15 for " K2 " is ready in the store");
    /* The other arch's package does not count. */
    assert_has(f->fix, "No package for 6.12.38+deb12-amd64 is in the store for driver 550.54.15: "
                       "build it (kfleet build --driver 550.54.15 --kernel 6.12.38+deb12-amd64)");
    deploy_doctor_report_release(&r);

    /* Not checked: said so. */
    ctx.store_checked = 0;
    analyze_ctx(out, len, &ctx, &r);
    f = must_find(&r, "kernel-without-module", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->fix, "the artifact store was not checked");
    deploy_doctor_report_release(&r);
    free(out);

    /* A node with no GPU and no driver needs no module. */
    out = mkdoc(&len, "kernels", K1 " dbi\n" K2 " dbi\n", "gpus", "method=lspci\n", "d_pci", "",
                "nvidia_module", "", "nvidia_smi", "", "libnvidia_ml", "", "kfleet_state", "",
                "d_modules", "", NULL);
    analyze(out, len, &r);
    assert_codes(&r, NULL);
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_profile_module(void **state)
{
    struct deploy_doctor_report r;
    struct deploy_doctor_ctx ctx;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out = mkdoc(&len, "kernels", K1 " dbi\n" K2 " dbi\n", "d_modules",
                      "f=/lib/modules/" K1 "/extra/lustre/kfleet-core.ko.xz\n"
                      "version:        2.15.4\nvermagic:       " K1 " SMP mod_unload \n"
                      "f=/lib/modules/" K1 "/updates/kfleet/nvidia.ko\nversion:        550.54.15\n"
                      "f=/lib/modules/" K2 "/updates/kfleet/nvidia.ko\nversion:        550.54.15\n",
                      NULL);

    (void)state;
    memset(&ctx, 0, sizeof(ctx));
    ctx.module = "kfleet_core";
    ctx.profile = "lustre";
    analyze_ctx(out, len, &ctx, &r);
    assert_codes(&r, "kernel-without-module", NULL);
    f = must_find(&r, "kernel-without-module", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->title, "installed kernel " K2 " has no kfleet_core module");
    assert_has(f->fix, "kfleet build --profile lustre --kernel K");
    deploy_doctor_report_release(&r);
    /* nvidia itself is complete. */
    analyze(out, len, &r);
    assert_codes(&r, NULL);
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_state_mismatch(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;

    (void)state;
    case_codes("kfleet_state",
               "driver=535.104.05\nkernel=" K1 "\ncurrent " K1 " 535.104.05 "
               "0000000000000000000000000000000000000000000000000000000000000000 nvidia\n"
               "current ../../etc 1.2.3 x y\n",
               &r, "kfleet-state-mismatch", NULL);
    f = must_find(&r, "kfleet-state-mismatch", DEPLOY_DOCTOR_WARNING);
    assert_has(f->evidence, "current " K1 " 535.104.05; /lib/modules/" K1
                            "/updates/kfleet/nvidia.ko: version 550.54.15");
    deploy_doctor_report_release(&r);
}

static void test_dkms(void **state)
{
    struct deploy_doctor_report r;
    size_t len;
    char *out;

    (void)state;
    /* kfleet manages the node (the base has a state): DKMS is in the way. */
    case_codes("d_dkms",
               "/var/lib/dkms/nvidia/535.183.01\n/var/lib/dkms/nvidia/source\n"
               "/var/lib/dkms/nvidia/kernel-" K1 "-x86_64\n",
               &r, "dkms-leftover", NULL);
    deploy_doctor_report_release(&r);
    /* Not kfleet's node and no --driver: DKMS is how it is managed. */
    out = mkdoc(&len, "kfleet_state", "", "d_dkms", "/var/lib/dkms/nvidia/550.54.15\n", NULL);
    analyze(out, len, &r);
    assert_codes(&r, NULL);
    deploy_doctor_report_release(&r);
    free(out);
    /* Other package names are not NVIDIA's. */
    case_codes("d_dkms", "/var/lib/dkms/zfs/2.1.11\n/var/lib/dkms/nvidia/x;y\n", &r, NULL);
    deploy_doctor_report_release(&r);
}

static void test_nouveau_variants(void **state)
{
    static const char ko[] = "ko=/lib/modules/" K1 "/kernel/drivers/gpu/drm/nouveau/nouveau.ko\n";
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    char buf[1024];
    size_t len;
    char *out;

    (void)state;
    case_codes("d_nouveau", ko, &r, "nouveau-not-blacklisted", NULL);
    f = must_find(&r, "nouveau-not-blacklisted", DEPLOY_DOCTOR_WARNING);
    assert_has(f->evidence, "nouveau.ko exists");
    deploy_doctor_report_release(&r);
    /* A comment, an options line and another module's blacklist do not count. */
    snprintf(buf, sizeof(buf),
             "%s/etc/modprobe.d/x.conf:# blacklist nouveau\n"
             "/etc/modprobe.d/x.conf:options nouveau modeset=0\n"
             "/etc/modprobe.d/x.conf:blacklist nouveaufb\n"
             "/etc/modprobe.d/x.conf:install nouveau /sbin/modprobe --ignore-install nouveau\n",
             ko);
    case_codes("d_nouveau", buf, &r, "nouveau-not-blacklisted", NULL);
    deploy_doctor_report_release(&r);
    /* Each real way of keeping it out. */
    snprintf(buf, sizeof(buf), "%s/usr/lib/modprobe.d/nv.conf:  install nouveau /bin/false\n", ko);
    case_codes("d_nouveau", buf, &r, NULL);
    deploy_doctor_report_release(&r);
    snprintf(buf, sizeof(buf), "%s/etc/modprobe.d/nv.conf:alias nouveau off\n", ko);
    case_codes("d_nouveau", buf, &r, NULL);
    deploy_doctor_report_release(&r);
    out = mkdoc(&len, "d_nouveau", ko, "d_cmdline",
                "BOOT_IMAGE=/vmlinuz ro modprobe.blacklist=floppy,nouveau quiet\n", NULL);
    analyze(out, len, &r);
    assert_codes(&r, NULL);
    deploy_doctor_report_release(&r);
    free(out);
    /* "nouveau" inside another word of the command line does not count. */
    out = mkdoc(&len, "d_nouveau", ko, "d_cmdline", "ro xmodprobe.blacklist=nouveau\n", NULL);
    analyze(out, len, &r);
    assert_codes(&r, "nouveau-not-blacklisted", NULL);
    deploy_doctor_report_release(&r);
    free(out);
    /* No nouveau.ko for the running kernel, or no GPU: nothing to say. */
    case_codes("d_nouveau", "", &r, NULL);
    deploy_doctor_report_release(&r);
    case_codes("d_nouveau",
               "ko=/lib/modules/" K2 "/kernel/drivers/gpu/drm/nouveau/nouveau.ko\n"
               "ko=/lib/modules/" K1 "x/kernel/drivers/gpu/drm/nouveau/nouveau.ko\n",
               &r, NULL);
    deploy_doctor_report_release(&r);
    out = mkdoc(&len, "d_nouveau", ko, "d_pci", "", "gpus", "method=lspci\n", "nvidia_module", "",
                "nvidia_smi", "", "libnvidia_ml", "", "kfleet_state", "", NULL);
    analyze(out, len, &r);
    assert_codes(&r, NULL);
    deploy_doctor_report_release(&r);
    free(out);
    /* Blacklisted and loaded anyway: the initramfs. */
    snprintf(buf, sizeof(buf), "state=loaded\n%s/etc/modprobe.d/b.conf:blacklist nouveau\n", ko);
    case_codes("d_nouveau", buf, &r, "nouveau-loaded", NULL);
    f = must_find(&r, "nouveau-loaded", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->evidence, "; blacklisted in /etc/modprobe.d/b.conf:blacklist nouveau");
    assert_has(f->fix, "initramfs made before the blacklist");
    deploy_doctor_report_release(&r);
    /* Bound through PCI only. */
    case_codes("d_pci", "0000:3b:00.0 0x030200 nouveau 42\n", &r, "nouveau-loaded", NULL);
    deploy_doctor_report_release(&r);
}

static void test_kmsg_kinds(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;

    (void)state;
    case_codes("d_kmsg",
               "method=dmesg\n[ 1.0] NVRM: GPU at PCI:0000:3b:00: GPU-1a2b has fallen off the "
               "bus.\n[ 1.0] NVRM: Xid (PCI:0000:3b:00): 79, pid=0, GPU has fallen off the bus.\n"
               "[ 2.0] NVRM: Xid (PCI:0000:3b:00): 13, pid=1234, Graphics Exception\n",
               &r, "gpu-fell-off-bus", "nvrm-xid", NULL);
    f = must_find(&r, "nvrm-xid", DEPLOY_DOCTOR_WARNING);
    assert_has(f->title, "2 Xid errors");
    assert_has(f->evidence, "13, pid=1234");
    must_find(&r, "gpu-fell-off-bus", DEPLOY_DOCTOR_CRITICAL);
    deploy_doctor_report_release(&r);

    case_codes("d_kmsg",
               "method=dmesg\n[ 3.2] NVRM: The NVIDIA GPU 10de:1db4 (PCI ID: 10de:1db4)\n"
               "[ 3.2] NVRM: installed in this system is not supported by open\n"
               "[ 3.2] NVRM: nvidia.ko because it does not include the required GPU\n"
               "[ 3.3] NVRM: The NVIDIA probe routine failed for 1 device(s).\n",
               &r, "gpu-unsupported", "nvidia-probe-failed", NULL);
    deploy_doctor_report_release(&r);

    /* The region line alone is enough for the BAR finding; kern.log is
     * flagged as possibly older. */
    case_codes("d_kmsg",
               "method=kern.log\nMar  1 10:00:00 n1 kernel: [ 5.1] NVRM: This PCI I/O region "
               "assigned to your NVIDIA device is invalid: NVRM: BAR1 is 0M @ 0x0 "
               "(PCI:0000:00:05.0)\n",
               &r, "pci-bar-invalid", NULL);
    f = must_find(&r, "pci-bar-invalid", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->evidence, "/var/log/kern.log: ");
    assert_has(f->evidence, "(kern.log may be from an earlier boot)");
    deploy_doctor_report_release(&r);

    case_codes("d_kmsg", "method=none\n", &r, "kernel-log-unavailable", NULL);
    must_find(&r, "kernel-log-unavailable", DEPLOY_DOCTOR_INFO);
    deploy_doctor_report_release(&r);

    /* pci=realloc already there: the fix says so. */
    {
        size_t len;
        char *out =
            mkdoc(&len, "d_kmsg", "method=dmesg\nNVRM: BAR1 is 0M @ 0x0 (PCI:0000:00:05.0)\n",
                  "d_cmdline", "ro pci=realloc,nocrs\n", NULL);
        analyze(out, len, &r);
        f = must_find(&r, "pci-bar-invalid", DEPLOY_DOCTOR_CRITICAL);
        assert_has(f->fix, "pci=realloc is already on the kernel command line");
        deploy_doctor_report_release(&r);
        free(out);
    }
}

static void test_passthrough_variants(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out;

    (void)state;
    /* vfio-pci but no IOMMU unit: the VMs cannot use the GPUs. */
    out = mkdoc(&len, "d_pci", "0000:3b:00.0 0x030200 vfio-pci -\n", "d_iommu", "present\n",
                "nvidia_module", "", "nvidia_smi", "", "libnvidia_ml", "", "kfleet_state", "",
                "d_modules", "", NULL);
    analyze(out, len, &r);
    assert_codes(&r, "vfio-passthrough", "iommu-disabled", NULL);
    f = must_find(&r, "iommu-disabled", DEPLOY_DOCTOR_WARNING);
    assert_has(f->evidence, "/sys/class/iommu is empty");
    assert_has(f->fix, "intel_iommu=on");
    deploy_doctor_report_release(&r);
    free(out);
    /* The whole host passed through and the driver loaded anyway. */
    case_codes("d_pci", "0000:3b:00.0 0x030200 vfio-pci 42\n0000:3b:00.1 0x040300 vfio-pci 42\n",
               &r, "vfio-passthrough", "passthrough-host-has-driver", NULL);
    f = must_find(&r, "passthrough-host-has-driver", DEPLOY_DOCTOR_WARNING);
    assert_has(f->evidence, "/sys/module/nvidia/version: 550.54.15");
    f = must_find(&r, "vfio-passthrough", DEPLOY_DOCTOR_INFO);
    assert_has(f->title, "1 NVIDIA GPU bound");
    deploy_doctor_report_release(&r);
    /* Split host: one GPU for VMs, one for the driver. */
    case_codes("d_pci", "0000:3b:00.0 0x030200 vfio-pci 42\n0000:5e:00.0 0x030200 nvidia 43\n", &r,
               "vfio-passthrough", NULL);
    deploy_doctor_report_release(&r);
}

static void test_secure_boot_variants(void **state)
{
    static const char kfleet_signed[] =
        "f=/lib/modules/" K1 "/updates/kfleet/nvidia.ko\nversion:        550.54.15\n"
        "vermagic:       " K1 " SMP mod_unload \nsigner:         kfleet module signing\n"
        "marker=yes\n";
    static const char sb_on[] = "method=mokutil\nSecureBoot enabled\n\nrc=0\n";
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;
    size_t len;
    char *out;

    (void)state;
    /* Enforced by sig_enforce alone, or lockdown alone. */
    case_codes("d_secure", "sig_enforce=Y\nmethod=keys\n", &r, "unsigned-modules-secure-boot",
               NULL);
    deploy_doctor_report_release(&r);
    case_codes("d_secure", "lockdown=none [confidentiality]\n", &r, "unsigned-modules-secure-boot",
               NULL);
    deploy_doctor_report_release(&r);
    case_codes("d_secure", "sig_enforce=N\nlockdown=[none] integrity confidentiality\n", &r, NULL);
    deploy_doctor_report_release(&r);
    /* Secure Boot on but shim validation off: facts call it disabled. */
    case_codes("secure_boot",
               "method=mokutil\nSecureBoot enabled\nSecureBoot validation is disabled in shim\n",
               &r, NULL);
    deploy_doctor_report_release(&r);

    /* Compressed: only modinfo's signer tells. */
    out = mkdoc(&len, "secure_boot", sb_on, "d_modules",
                "f=/lib/modules/" K1 "/updates/kfleet/nvidia.ko.zst\nversion:        550.54.15\n"
                "vermagic:       " K1 " SMP\nmarker=no\n"
                "f=/lib/modules/" K1 "/updates/dkms/nvidia-uvm.ko.zst\nversion:        550.54.15\n"
                "vermagic:       " K1 " SMP\nsigner:         DKMS module signing key\nmarker=no\n",
                NULL);
    analyze(out, len, &r);
    assert_codes(&r, "unsigned-modules-secure-boot", NULL);
    f = must_find(&r, "unsigned-modules-secure-boot", DEPLOY_DOCTOR_CRITICAL);
    assert_has(f->title, "1 module file is unsigned");
    assert_has(f->evidence, "nvidia.ko.zst");
    deploy_doctor_report_release(&r);
    free(out);

    /* Signed by an enrolled key (mokutil, either subject format). */
    out = mkdoc(&len, "secure_boot", sb_on, "d_modules", kfleet_signed, "d_secure",
                "method=mokutil\n        Subject: O = ACME, CN = kfleet module signing\n", NULL);
    analyze(out, len, &r);
    assert_codes(&r, NULL);
    deploy_doctor_report_release(&r);
    free(out);
    /* ... or seen in /proc/keys. */
    out = mkdoc(&len, "secure_boot", sb_on, "d_modules", kfleet_signed, "d_secure",
                "method=keys\n3a0b I------ 1 perm 1f030000 0 0 asymmetri kfleet module signing: "
                "8d3f0c X509.rsa 8d3f0c []\n",
                NULL);
    analyze(out, len, &r);
    assert_codes(&r, NULL);
    deploy_doctor_report_release(&r);
    free(out);
    /* An empty MOK list is a definite no. */
    out = mkdoc(&len, "secure_boot", sb_on, "d_modules", kfleet_signed, "d_secure",
                "method=mokutil\nMokListRT is empty\n", NULL);
    analyze(out, len, &r);
    assert_codes(&r, "module-signer-not-enrolled", NULL);
    f = must_find(&r, "module-signer-not-enrolled", DEPLOY_DOCTOR_WARNING);
    assert_has(f->evidence, "MokListRT is empty");
    deploy_doctor_report_release(&r);
    free(out);
    /* Nothing to compare with: say what could not be checked. */
    out = mkdoc(&len, "secure_boot", sb_on, "d_modules", kfleet_signed, "d_secure", "", NULL);
    analyze(out, len, &r);
    assert_codes(&r, "module-signer-unchecked", NULL);
    f = must_find(&r, "module-signer-unchecked", DEPLOY_DOCTOR_INFO);
    assert_has(f->evidence, "no mokutil; /proc/keys not readable");
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_apt_variants(void **state)
{
    static const char uu_hdr[] = "uu=present\ntimer apt-daily-upgrade.timer enabled\n"
                                 "pkg=nvidia-driver-550\n"
                                 "file=/etc/apt/apt.conf.d/20auto-upgrades\n"
                                 "APT::Periodic::Unattended-Upgrade \"1\";\n";
    static const struct {
        const char *conf; /* appended as /etc/apt/apt.conf.d/60local */
        int kernels, driver;
    } cases[] = {
        {"", 1, 1},
        {"Unattended-Upgrade::Package-Blacklist { \"linux-\"; \"nvidia-\"; };\n", 0, 0},
        /* Nested scopes, the :: list form, comments of each kind. */
        {"Unattended-Upgrade {\n  Package-Blacklist {\n    \"linux-image-.*\"; // kernels\n"
         "  };\n};\n/* drivers: */ Unattended-Upgrade::Package-Blacklist:: \"^nvidia-driver\";\n",
         0, 0},
        /* Only this very kernel: the metapackage still brings new ones. */
        {"Unattended-Upgrade::Package-Blacklist { \"linux-image-6\\.1\\.0-47-amd64$\"; };\n", 1, 1},
        /* Keys are case-insensitive. */
        {"unattended-upgrade::package-blacklist { \"linux-\"; };\n", 0, 1},
        /* A later file turns it off; Enable "0" turns off all. */
        {"APT::Periodic::Unattended-Upgrade \"0\";\n", 0, 0},
        {"APT::Periodic::Enable \"0\";\n", 0, 0},
        /* A class is judged by its literal prefix: "linu" covers. */
        {"Unattended-Upgrade::Package-Blacklist { \"linu[x]-\"; \"nvidia-(driver|utils)\"; };\n", 0,
         0},
        /* A commented entry is no entry. */
        {"Unattended-Upgrade::Package-Blacklist {\n//  \"linux-\";\n# \"nvidia-\";\n};\n", 1, 1},
    };
    struct deploy_doctor_report r;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[2048];
        snprintf(buf, sizeof(buf), "%s\nfile=/etc/apt/apt.conf.d/60local\n%s\n", uu_hdr,
                 cases[i].conf);
        case_run("d_upgrades", buf, &r);
        if ((deploy_doctor_find(&r, "unattended-kernel-upgrades") != NULL) != cases[i].kernels ||
            (deploy_doctor_find(&r, "unattended-driver-upgrades") != NULL) != cases[i].driver)
            fail_msg("case %zu (%s): kernels %d driver %d", i, cases[i].conf,
                     deploy_doctor_find(&r, "unattended-kernel-upgrades") != NULL,
                     deploy_doctor_find(&r, "unattended-driver-upgrades") != NULL);
        deploy_doctor_report_release(&r);
    }
    /* Not installed, or its timer off: nothing. */
    case_codes("d_upgrades", uu_hdr + strlen("uu=present\n"), &r, NULL);
    deploy_doctor_report_release(&r);
    {
        char buf[1024];
        snprintf(buf, sizeof(buf), "uu=present\ntimer apt-daily-upgrade.timer masked\n%s",
                 strstr(uu_hdr, "pkg="));
        case_codes("d_upgrades", buf, &r, NULL);
        deploy_doctor_report_release(&r);
    }
}

static void test_dnf_variants(void **state)
{
    static const struct {
        const char *upgrades;
        int kernels;
    } cases[] = {
        {"timer dnf-automatic.timer enabled\nfile=/etc/dnf/automatic.conf\n[commands]\n"
         "upgrade_type = default\napply_updates = yes\n",
         1},
        {"timer dnf-automatic-install.timer enabled\nfile=/etc/dnf/automatic.conf\n[commands]\n"
         "apply_updates = no\n",
         1},
        /* Downloads only. */
        {"timer dnf-automatic.timer enabled\nfile=/etc/dnf/automatic.conf\n[commands]\n"
         "apply_updates = no\n",
         0},
        {"timer dnf-automatic.timer disabled\nfile=/etc/dnf/automatic.conf\n[commands]\n"
         "apply_updates = yes\n",
         0},
        {"timer dnf-automatic.timer enabled\nfile=/etc/dnf/automatic.conf\n[commands]\n"
         "apply_updates = yes\nfile=/etc/dnf/dnf.conf\n[main]\ngpgcheck=1\n"
         "exclude=kernel* kmod-nvidia*\n",
         0},
        {"timer dnf-automatic.timer enabled\nfile=/etc/dnf/automatic.conf\n[commands]\n"
         "apply_updates = yes\nfile=/etc/dnf/dnf.conf\n[main]\nexclude=nvidia*,kernel-headers\n",
         1},
        {"timer dnf-automatic.timer enabled\nfile=/etc/dnf/automatic.conf\n[commands]\n"
         "apply_updates = yes\nfile=/etc/dnf/plugins/versionlock.list\n"
         "# Added lock on Tue Mar  5\nkernel-core-0:5.14.0-362.8.1.el9_3.*\n",
         0},
        /* No automatic.conf: dnf-automatic is not installed. */
        {"timer dnf-automatic-install.timer enabled\n", 0},
    };
    struct deploy_doctor_report r;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        case_run("d_upgrades", cases[i].upgrades, &r);
        if ((deploy_doctor_find(&r, "unattended-kernel-upgrades") != NULL) != cases[i].kernels)
            fail_msg("case %zu: want %d", i, cases[i].kernels);
        deploy_doctor_report_release(&r);
    }
}

/* ------------------------------------------------------------------------ */
/* Hostile and broken output                                                 */

static void test_hostile_text_escaped(void **state)
{
    struct deploy_doctor_report r;
    const struct deploy_doctor_finding *f;

    (void)state;
    /* Terminal escapes and C1 bytes in a log line arrive as text. */
    case_codes("d_kmsg",
               "method=dmesg\n[ 1.0] NVRM: Xid (PCI:0000:3b:00): \x1b]0;pwned\x07\x1b[2J\x9b"
               "31m 79\n",
               &r, "nvrm-xid", NULL);
    f = must_find(&r, "nvrm-xid", DEPLOY_DOCTOR_WARNING);
    assert_has(f->evidence, "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m 79");
    deploy_doctor_report_release(&r);
    /* A hostile signer is shown without its control bytes. */
    {
        size_t len;
        char *out = mkdoc(&len, "secure_boot", "method=mokutil\nSecureBoot enabled\n", "d_modules",
                          "f=/lib/modules/" K1 "/updates/kfleet/nvidia.ko\nversion: 550.54.15\n"
                          "vermagic: " K1 "\nsigner: evil\x1b[2J\r\x07key\nmarker=yes\n",
                          "d_secure", "method=mokutil\nMokListRT is empty\n", NULL);
        analyze(out, len, &r);
        f = must_find(&r, "module-signer-not-enrolled", DEPLOY_DOCTOR_WARNING);
        assert_has(f->title, "\"evil[2Jkey\"");
        deploy_doctor_report_release(&r);
        free(out);
    }
}

static void test_hostile_paths_and_values(void **state)
{
    struct deploy_doctor_report r;
    size_t len;
    char *out;

    (void)state;
    /* Paths outside /lib/modules, with "..", spaces, escapes or a bad
     * release are not module files; versions that are not versions are not
     * compared. The running kernel then has no module. */
    out = mkdoc(&len, "d_modules",
                "f=/lib/modules/" K1 "/../../etc/nvidia.ko\nversion: 1.0\n"
                "f=/lib/modules/" K1 "/updates/kfleet/nv idia.ko\nversion: 1.0\n"
                "f=/lib/modules/" K1 "/updates/kfleet/\x1b[2Jnvidia.ko\nversion: 1.0\n"
                "f=/lib/modules/6.1;reboot/updates/kfleet/nvidia.ko\nversion: 1.0\n"
                "f=/tmp/nvidia.ko\nversion: 1.0\n"
                "f=/lib/modules/" K1 "/updates/kfleet/nvidia.ko.bak\nversion: 1.0\n"
                "f=/lib/modules/" K1 "/updates/kfleet/nvidia.kot\n"
                "version: 1.0\n",
                NULL);
    analyze(out, len, &r);
    assert_codes(&r, "kernel-without-module", NULL);
    deploy_doctor_report_release(&r);
    free(out);
    /* A version with a terminal escape is not a version: no mismatch. */
    out = mkdoc(&len, "d_modules",
                "f=/lib/modules/" K1 "/updates/kfleet/nvidia.ko\nversion: 570.1.2\x1b[2J\n"
                "vermagic: " K1 "\x1b[2J\n",
                NULL);
    analyze(out, len, &r);
    /* The vermagic's first word is not a valid release: a mismatch, shown escaped. */
    assert_codes(&r, "vermagic-mismatch", NULL);
    assert_has(r.findings[0].evidence, "vermagic=6.1.0-47-amd64[2J");
    deploy_doctor_report_release(&r);
    free(out);
}

static void test_hostile_sizes(void **state)
{
    struct deploy_doctor_report r;
    struct buf b;
    size_t len, i;
    char *out, *big;

    (void)state;
    /* A 2 MB log line: bounded evidence. */
    buf_init(&b, 0);
    buf_puts(&b, "method=dmesg\nNVRM: Xid (PCI:0000:3b:00): 79, ");
    for (i = 0; i < 2000000; i++)
        buf_append(&b, "A", 1);
    buf_puts(&b, "\n");
    out = mkdoc(&len, "d_kmsg", buf_cstr(&b), NULL);
    analyze(out, len, &r);
    assert_codes(&r, "nvrm-xid", NULL);
    assert_true(strlen(r.findings[0].evidence) < 2048);
    assert_has(r.findings[0].evidence, "...");
    deploy_doctor_report_release(&r);
    free(out);
    buf_release(&b);

    /* 5000 module files: at most 256 kept, the rest ignored. */
    buf_init(&b, 0);
    for (i = 0; i < 5000; i++)
        buf_printf(&b, "f=/lib/modules/" K1 "/updates/x%zu/nvidia.ko\nversion: %zu.1\n", i, i);
    out = mkdoc(&len, "d_modules", buf_cstr(&b), NULL);
    analyze(out, len, &r);
    assert_codes(&r, "conflicting-module-copies", "loaded-differs-from-disk", NULL);
    deploy_doctor_report_release(&r);
    free(out);
    buf_release(&b);

    /* Thousands of apt blacklist entries, deep braces, an unclosed comment. */
    buf_init(&b, 0);
    buf_puts(&b, "uu=present\nfile=/etc/apt/apt.conf.d/20auto-upgrades\n"
                 "APT::Periodic::Unattended-Upgrade \"1\";\n");
    for (i = 0; i < 3000; i++)
        buf_puts(&b, "a { b { c { d { e { f { g { h { i { j { \"x\"; }; }; }; }; }; }; }; };\n");
    for (i = 0; i < 3000; i++)
        buf_puts(&b, "Unattended-Upgrade::Package-Blacklist:: \"a*a*a*a*a*a*a*a*a*b\";\n");
    buf_puts(&b, "/* never closed\n");
    out = mkdoc(&len, "d_upgrades", buf_cstr(&b), NULL);
    analyze(out, len, &r);
    assert_codes(&r, "unattended-kernel-upgrades", NULL);
    deploy_doctor_report_release(&r);
    free(out);
    buf_release(&b);

    /* NUL bytes and binary garbage inside a section. */
    big = malloc(70000);
    assert_non_null(big);
    for (i = 0; i < 70000; i++)
        big[i] = (char)(i * 7919 % 256);
    out = mkdoc(&len, "d_secure", "@@BIN@@", NULL);
    {
        const char *at = strstr(out, "@@BIN@@");
        assert_non_null(at);
        buf_init(&b, 0);
        buf_append(&b, out, (size_t)(at - out));
        buf_append(&b, big, 70000);
        buf_append(&b, at + 7, len - (size_t)(at + 7 - out));
    }
    analyze(b.data, b.len, &r);
    assert_codes(&r, NULL);
    deploy_doctor_report_release(&r);
    free(out);
    buf_release(&b);
    free(big);

    /* NUL bytes inside an apt file: once a hang (a NUL matched strchr's
     * terminator), now just bytes of a name. */
    {
        static const char apt[] = "uu=present\nfile=/etc/apt/apt.conf.d/20auto-upgrades\n"
                                  "APT::Periodic::Unattended-Upgrade \"1\";\n\0\0A\0B { \"x\0\"; "
                                  "};\0\n/\0*\n";
        const char *at;
        out = mkdoc(&len, "d_upgrades", "@@APT@@", NULL);
        at = strstr(out, "@@APT@@");
        assert_non_null(at);
        buf_init(&b, 0);
        buf_append(&b, out, (size_t)(at - out));
        buf_append(&b, apt, sizeof(apt) - 1);
        buf_append(&b, at + 7, len - (size_t)(at + 7 - out));
        analyze(b.data, b.len, &r);
        assert_codes(&r, "unattended-kernel-upgrades", NULL);
        deploy_doctor_report_release(&r);
        free(out);
        buf_release(&b);
    }
}

static void test_markers(void **state)
{
    struct deploy_doctor_report r;
    struct kf_err err;
    size_t len;
    char *out;

    (void)state;
    /* Another nonce's marker is content of the section it is in. */
    case_codes("d_kmsg",
               "method=dmesg\n@@kf:0123456789abcdef:nvidia_smi\n"
               "Failed to initialize NVML: Driver/library version mismatch\n@@kf:0123456789abcdef:"
               "end\n",
               &r, NULL);
    deploy_doctor_report_release(&r);
    /* Our nonce twice for one section: the output cannot be trusted. */
    out = mkdoc(&len, "d_kmsg", "method=dmesg\n\n@@kf:" NONCE ":d_pci\n0000:3b:00.0 x vfio-pci 1\n",
                NULL);
    deploy_doctor_report_init(&r);
    assert_int_equal(deploy_doctor_analyze(out, len, NONCE, NULL, &r, &err), KF_EPARSE);
    assert_has(kf_err_msg(&err), "section 'd_pci' twice");
    assert_int_equal(r.n, 0);
    free(out);
    /* A doctor section missing, the end missing, a hostile release. */
    out = mkdoc(&len, "d_secure", NULL, NULL);
    assert_int_equal(deploy_doctor_analyze(out, len, NONCE, NULL, &r, &err), KF_EPARSE);
    assert_has(kf_err_msg(&err), "no 'd_secure' section");
    free(out);
    out = mkdoc(&len, "end", NULL, NULL);
    assert_int_equal(deploy_doctor_analyze(out, len, NONCE, NULL, &r, &err), KF_EPARSE);
    assert_has(kf_err_msg(&err), "incomplete");
    free(out);
    out = mkdoc(&len, "uname_r", "6.1\x1b[2J; reboot\n", NULL);
    assert_int_equal(deploy_doctor_analyze(out, len, NONCE, NULL, &r, &err), KF_EUNTRUSTED);
    assert_display_safe(kf_err_msg(&err));
    assert_int_equal(r.n, 0);
    assert_string_equal(r.facts.kernel, "");
    free(out);
    /* Bad arguments. */
    assert_int_equal(deploy_doctor_analyze("", 0, "xyz", NULL, &r, &err), KF_EINVAL);
    assert_int_equal(deploy_doctor_analyze(NULL, 5, NONCE, NULL, &r, &err), KF_EINVAL);
    assert_int_equal(deploy_doctor_analyze("", 0, NONCE, NULL, NULL, &err), KF_EINVAL);
    {
        struct deploy_doctor_ctx ctx;
        memset(&ctx, 0, sizeof(ctx));
        ctx.module = "../x";
        out = mkdoc(&len, NULL);
        assert_int_equal(deploy_doctor_analyze(out, len, NONCE, &ctx, &r, &err), KF_EINVAL);
        free(out);
    }
    /* A report is reusable: a second analysis replaces the first. */
    out = read_fixture("api-mismatch.out", &len);
    analyze(out, len, &r);
    free(out);
    out = mkdoc(&len, NULL);
    assert_int_equal(deploy_doctor_analyze(out, len, NONCE, NULL, &r, &err), 0);
    assert_int_equal(r.n, 0);
    free(out);
    deploy_doctor_report_release(&r);
    deploy_doctor_report_release(&r);
    assert_string_equal(deploy_doctor_severity_name(DEPLOY_DOCTOR_WARNING), "warning");
}

/* CRLF output (a pty, a Windows-edited file) reads like LF. */
static void test_crlf(void **state)
{
    struct deploy_doctor_report r;
    struct buf b;
    size_t len, i;
    char *out = read_fixture("api-mismatch.out", &len);

    (void)state;
    buf_init(&b, 0);
    for (i = 0; i < len; i++) {
        if (out[i] == '\n')
            buf_append(&b, "\r", 1);
        buf_append(&b, &out[i], 1);
    }
    analyze(b.data, b.len, &r);
    assert_codes(&r, "driver-library-mismatch", "nvrm-api-mismatch", "loaded-differs-from-disk",
                 NULL);
    deploy_doctor_report_release(&r);
    buf_release(&b);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_plain),
        cmocka_unit_test(test_command_become),
        cmocka_unit_test(test_command_bad_args),
        cmocka_unit_test(test_command_runs_locally),
        cmocka_unit_test(test_command_shellcheck),
        cmocka_unit_test(test_base_is_healthy),
        cmocka_unit_test(test_fixture_healthy),
        cmocka_unit_test(test_fixture_api_mismatch),
        cmocka_unit_test(test_fixture_bar1),
        cmocka_unit_test(test_fixture_vfio),
        cmocka_unit_test(test_fixture_nouveau),
        cmocka_unit_test(test_fixture_secureboot_unsigned),
        cmocka_unit_test(test_fixture_secureboot_unenrolled),
        cmocka_unit_test(test_fixture_unattended),
        cmocka_unit_test(test_fixture_leftovers),
        cmocka_unit_test(test_fixtures_display_safe_json),
        cmocka_unit_test(test_library_mismatch_without_smi),
        cmocka_unit_test(test_api_mismatch_stale_and_split),
        cmocka_unit_test(test_loaded_vs_disk_and_expected),
        cmocka_unit_test(test_kernels_and_store),
        cmocka_unit_test(test_profile_module),
        cmocka_unit_test(test_state_mismatch),
        cmocka_unit_test(test_dkms),
        cmocka_unit_test(test_nouveau_variants),
        cmocka_unit_test(test_kmsg_kinds),
        cmocka_unit_test(test_passthrough_variants),
        cmocka_unit_test(test_secure_boot_variants),
        cmocka_unit_test(test_apt_variants),
        cmocka_unit_test(test_dnf_variants),
        cmocka_unit_test(test_hostile_text_escaped),
        cmocka_unit_test(test_hostile_paths_and_values),
        cmocka_unit_test(test_hostile_sizes),
        cmocka_unit_test(test_markers),
        cmocka_unit_test(test_crlf),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
