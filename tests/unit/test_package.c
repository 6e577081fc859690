/* Packages: reproducibility (byte-identical tar.gz, a changed module byte
 * changes the sha256), the archive's layout and entry attributes,
 * metadata.json, failures that leave nothing behind, and install.sh /
 * uninstall.sh run for real with /bin/sh in a temporary root, with stub
 * depmod, modprobe and uname first in PATH. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "builder.h"
#include "testutil.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define KREL "6.1.0-41-amd64"
#define DRIVER "550.54.15"
#define EPOCH 1709294400 /* 2024-03-01T12:00:00Z */
#define TOP "nvidia-driver-" DRIVER "-kernel-" KREL "-x86_64"
#define FW_NAME "nvidia/" DRIVER "/gsp_ga10x.bin"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

static int same_file(const char *a, const char *b)
{
    size_t na, nb;
    unsigned char *pa = kft_read_all(a, &na), *pb = kft_read_all(b, &nb);
    int same = na == nb && memcmp(pa, pb, na) == 0;

    free(pa);
    free(pb);
    return same;
}

static size_t dir_count(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;

    assert_non_null(d);
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static char *file_text(const char *path)
{
    size_t n;

    return (char *)kft_read_all(path, &n);
}

/* The five NVIDIA module fixtures, stripped into kft_tmpdir/mods/ (as the
 * builder does before packaging), and one firmware file. */
static const char *const mod_files[] = {"nvidia.ko", "nvidia-modeset.ko", "nvidia-drm.ko",
                                        "nvidia-uvm.ko", "nvidia-peermem.ko"};
static char mod_paths[5][512];
static const char *mods[5];
static char fw_path[512];
static struct build_pkg_file fw[1];

static int setup(void **state)
{
    char from[1024];
    struct kf_err err;
    int i;

    kft_setup_tmpdir(state);
    assert_int_equal(mkdir(kft_tmp("mods"), 0755), 0);
    for (i = 0; i < 5; i++) {
        snprintf(from, sizeof(from), "%s/ko/%s", KF_FIXTURES, mod_files[i]);
        snprintf(mod_paths[i], sizeof(mod_paths[i]), "%s/mods/%s", kft_tmpdir, mod_files[i]);
        if (build_strip_debug(from, mod_paths[i], NULL, &err) != 0)
            fail_msg("strip: %s", err.msg);
        mods[i] = mod_paths[i];
    }
    snprintf(fw_path, sizeof(fw_path), "%s/gsp_ga10x.bin", kft_tmpdir);
    kft_write_all(fw_path, "GSP firmware stand-in\n\0\1\2", 25);
    fw[0].src = fw_path;
    fw[0].name = FW_NAME;
    return 0;
}

static void base_pkg(struct build_pkg *p)
{
    memset(p, 0, sizeof(*p));
    p->topdir = TOP;
    p->driver_version = DRIVER;
    p->kernel_release = KREL;
    p->kernel_build = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)";
    p->arch = "x86_64";
    p->os_id = "debian";
    p->os_version = "12";
    p->compiler = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0";
    p->build_host = "builder-1";
    p->profile = "nvidia-run";
    p->source_sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    p->modules = mods;
    p->nmodules = 5;
    p->firmware = fw;
    p->nfirmware = 1;
    p->source_date_epoch = EPOCH;
    /* The fixtures are KiB: nvidia.ko (empty depends, 3.6 KiB stripped)
     * must not count as a stub, nvidia-peermem.ko (1.5 KiB) must. */
    p->stub_threshold = 3000;
}

static void write_pkg(const struct build_pkg *p, const char *dest, struct build_pkg_result *r)
{
    struct kf_err err;

    if (build_package_write(p, dest, r, &err) != 0)
        fail_msg("package: %s", err.msg);
}

/* ------------------------------------------------------------------------ */
/* Reproducibility                                                           */

static void test_reproducible(void **state)
{
    struct build_pkg p;
    struct build_pkg_result r1, r2;
    char hex[BUILD_SHA256_HEX], want[256];
    struct kf_err err;
    char *line;

    (void)state;
    base_pkg(&p);
    assert_int_equal(mkdir(kft_tmp("out1"), 0755), 0);
    assert_int_equal(mkdir(kft_tmp("out2"), 0755), 0);
    write_pkg(&p, kft_tmp("out1/" TOP ".tar.gz"), &r1);
    /* Another directory, a second later: the same bytes. */
    sleep(1);
    write_pkg(&p, kft_tmp("out2/" TOP ".tar.gz"), &r2);
    assert_true(same_file(kft_tmp("out1/" TOP ".tar.gz"), kft_tmp("out2/" TOP ".tar.gz")));
    assert_string_equal(r1.sha256, r2.sha256);
    assert_int_equal(r1.size, r2.size);
    assert_int_equal(r1.nstubs, 1);

    /* The streamed hash is the file's hash; the .sha256 file says so in
     * sha256sum's format, and sha256sum agrees. */
    assert_int_equal(build_sha256_file(kft_tmp("out1/" TOP ".tar.gz"), hex, &err), 0);
    assert_string_equal(hex, r1.sha256);
    line = file_text(kft_tmp("out1/" TOP ".tar.gz.sha256"));
    snprintf(want, sizeof(want), "%s  %s.tar.gz\n", hex, TOP);
    assert_string_equal(line, want);
    free(line);
    if (kft_have("sha256sum"))
        assert_int_equal(
            kft_sh("cd '%s' && sha256sum -c --quiet '%s.tar.gz.sha256'", kft_tmp("out1"), TOP), 0);
    if (kft_have("gzip"))
        assert_int_equal(kft_sh("gzip -t '%s'", kft_tmp("out1/" TOP ".tar.gz")), 0);
    /* The gzip header's MTIME field (bytes 4-7) is zero. */
    {
        size_t n;
        unsigned char *z = kft_read_all(kft_tmp("out1/" TOP ".tar.gz"), &n);
        assert_true(n > 10);
        assert_int_equal(z[0], 0x1f);
        assert_int_equal(z[1], 0x8b);
        assert_int_equal(z[4] | z[5] | z[6] | z[7], 0);
        free(z);
    }
    /* No temporary file is left beside it. */
    assert_int_equal(dir_count(kft_tmp("out1")), 2);

    /* Rewriting the same path replaces it with the same bytes. */
    write_pkg(&p, kft_tmp("out1/" TOP ".tar.gz"), NULL);
    assert_true(same_file(kft_tmp("out1/" TOP ".tar.gz"), kft_tmp("out2/" TOP ".tar.gz")));
    assert_int_equal(dir_count(kft_tmp("out1")), 2);

    /* The same modules given in another order: the same package, since
     * the load order comes from the dependencies. */
    {
        const char *shuffled[5] = {mods[4], mods[2], mods[3], mods[0], mods[1]};
        struct build_pkg q = p;
        struct build_pkg_result r3;
        q.modules = shuffled;
        write_pkg(&q, kft_tmp("out2/" TOP ".tar.gz"), &r3);
        assert_string_equal(r3.sha256, r1.sha256);
        build_pkg_result_release(&r3);
    }
    build_pkg_result_release(&r1);
    build_pkg_result_release(&r2);
}

static void test_one_byte_changes_hash(void **state)
{
    struct build_pkg p;
    struct build_pkg_result r1, r2;
    unsigned char *m, *hit;
    size_t n;

    (void)state;
    base_pkg(&p);
    assert_int_equal(mkdir(kft_tmp("out3"), 0755), 0);
    write_pkg(&p, kft_tmp("out3/a.tar.gz"), &r1);
    m = kft_read_all(mods[3], &n);
    hit = memmem(m, n, "kfleet-fixture-payload", 22);
    assert_non_null(hit);
    hit[0] = 'K';
    kft_write_all(mods[3], m, n);
    write_pkg(&p, kft_tmp("out3/b.tar.gz"), &r2);
    assert_string_not_equal(r1.sha256, r2.sha256);
    hit[0] = 'k';
    kft_write_all(mods[3], m, n);
    free(m);
    write_pkg(&p, kft_tmp("out3/c.tar.gz"), NULL);
    assert_true(same_file(kft_tmp("out3/a.tar.gz"), kft_tmp("out3/c.tar.gz")));
    build_pkg_result_release(&r1);
    build_pkg_result_release(&r2);
}

/* ------------------------------------------------------------------------ */
/* Layout                                                                    */

struct listed {
    char path[256];
    unsigned mode;
    int dir;
};

static void test_layout(void **state)
{
    static const char *const want[] = {
        TOP "/",
        TOP "/README.txt",
        TOP "/firmware/",
        TOP "/firmware/nvidia/",
        TOP "/firmware/nvidia/" DRIVER "/",
        TOP "/firmware/" FW_NAME,
        TOP "/install.sh",
        TOP "/metadata.json",
        TOP "/modules/",
        TOP "/modules/nvidia-drm.ko",
        TOP "/modules/nvidia-modeset.ko",
        TOP "/modules/nvidia-peermem.ko",
        TOP "/modules/nvidia-uvm.ko",
        TOP "/modules/nvidia.ko",
        TOP "/uninstall.sh",
    };
    const size_t nwant = sizeof(want) / sizeof(want[0]);
    struct build_pkg p;
    struct build_pkg_result r;
    struct archive *a;
    struct archive_entry *e;
    size_t i = 0;
    char *meta = NULL;

    (void)state;
    base_pkg(&p);
    assert_int_equal(mkdir(kft_tmp("out4"), 0755), 0);
    write_pkg(&p, kft_tmp("out4/p.tar.gz"), &r);

    a = archive_read_new();
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    assert_int_equal(archive_read_open_filename(a, kft_tmp("out4/p.tar.gz"), 10240), ARCHIVE_OK);
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        const char *path = archive_entry_pathname(e);
        int dir = archive_entry_filetype(e) == AE_IFDIR;
        unsigned mode = archive_entry_perm(e);
        assert_true(i < nwant);
        assert_string_equal(path, want[i]);
        assert_int_equal(archive_entry_uid(e), 0);
        assert_int_equal(archive_entry_gid(e), 0);
        assert_string_equal(archive_entry_uname(e), "root");
        assert_string_equal(archive_entry_gname(e), "root");
        assert_int_equal(archive_entry_mtime(e), EPOCH);
        assert_int_equal(archive_entry_mtime_nsec(e), 0);
        if (dir || strstr(path, "install.sh") != NULL)
            assert_int_equal(mode, 0755);
        else
            assert_int_equal(mode, 0644);
        assert_true(dir || archive_entry_filetype(e) == AE_IFREG);
        if (strcmp(path, TOP "/metadata.json") == 0) {
            size_t n = (size_t)archive_entry_size(e);
            meta = calloc(1, n + 1);
            assert_int_equal(archive_read_data(a, meta, n), (la_ssize_t)n);
        }
        i++;
    }
    /* Plain ustar: nothing needed a pax extended header. */
    assert_int_equal(archive_format(a), ARCHIVE_FORMAT_TAR_USTAR);
    archive_read_free(a);
    assert_int_equal(i, nwant);

    /* metadata.json: what was written is what the result holds. */
    {
        json_error_t je;
        json_t *m = json_loads(meta, 0, &je), *mods_j, *m0, *lo, *fwj;
        char *again;
        assert_non_null(m);
        assert_true(json_equal(m, r.metadata));
        /* Stable text: sorted keys, two-space indent, ASCII. */
        again = json_dumps(m, JSON_SORT_KEYS | JSON_INDENT(2) | JSON_ENSURE_ASCII);
        assert_string_equal(again, meta);
        free(again);
        assert_string_equal(json_string_value(json_object_get(m, "driver_version")), DRIVER);
        assert_string_equal(json_string_value(json_object_get(m, "kernel_version")), KREL);
        assert_string_equal(json_string_value(json_object_get(m, "build_date")),
                            "2024-03-01T12:00:00Z");
        assert_string_equal(json_string_value(json_object_get(m, "architecture")), "x86_64");
        assert_string_equal(json_string_value(json_object_get(json_object_get(m, "os"), "id")),
                            "debian");
        assert_string_equal(json_string_value(json_object_get(m, "kfleet_version")), KF_VERSION);
        assert_string_equal(json_string_value(json_object_get(m, "profile")), "nvidia-run");
        assert_true(json_is_null(json_object_get(m, "signer")));
        assert_non_null(json_object_get(m, "kernel_build"));
        assert_non_null(json_object_get(m, "compiler"));
        assert_non_null(json_object_get(m, "build_host"));
        assert_non_null(json_object_get(m, "source_sha256"));

        lo = json_object_get(m, "load_order");
        assert_int_equal(json_array_size(lo), 4);
        assert_string_equal(json_string_value(json_array_get(lo, 0)), "nvidia");
        assert_string_equal(json_string_value(json_array_get(lo, 1)), "nvidia_modeset");
        assert_string_equal(json_string_value(json_array_get(lo, 2)), "nvidia_drm");
        assert_string_equal(json_string_value(json_array_get(lo, 3)), "nvidia_uvm");

        mods_j = json_object_get(m, "modules");
        assert_int_equal(json_array_size(mods_j), 5);
        m0 = json_array_get(mods_j, 2);
        assert_string_equal(json_string_value(json_object_get(m0, "name")), "nvidia_drm");
        assert_string_equal(json_string_value(json_object_get(m0, "file")), "nvidia-drm.ko");
        assert_string_equal(json_string_value(json_object_get(m0, "version")), DRIVER);
        assert_int_equal(json_array_size(json_object_get(m0, "depends")), 3);
        assert_string_equal(json_string_value(json_array_get(json_object_get(m0, "depends"), 1)),
                            "nvidia-modeset");
        assert_true(json_is_false(json_object_get(m0, "signed")));
        assert_true(json_is_false(json_object_get(m0, "stub")));
        assert_int_equal(strlen(json_string_value(json_object_get(m0, "sha256"))), 64);
        assert_true(json_integer_value(json_object_get(m0, "size")) > 1000);
        m0 = json_array_get(mods_j, 3);
        assert_string_equal(json_string_value(json_object_get(m0, "name")), "nvidia_peermem");
        assert_true(json_is_true(json_object_get(m0, "stub")));

        fwj = json_array_get(json_object_get(m, "firmware"), 0);
        assert_string_equal(json_string_value(json_object_get(fwj, "file")), FW_NAME);
        assert_int_equal(json_integer_value(json_object_get(fwj, "size")), 25);
        json_decref(m);
    }
    free(meta);
    build_pkg_result_release(&r);
}

static void test_topdir(void **state)
{
    char out[256];
    struct kf_err err;

    (void)state;
    assert_int_equal(build_pkg_topdir(out, sizeof(out), DRIVER, KREL, "x86_64", &err), 0);
    assert_string_equal(out, TOP);
    assert_int_equal(build_pkg_topdir(out, sizeof(out), DRIVER, "6.1/../x", "x86_64", &err),
                     KF_EUNTRUSTED);
    assert_int_equal(build_pkg_topdir(out, sizeof(out), "550", KREL, "x86_64", &err), KF_EINVAL);
    assert_int_equal(build_pkg_topdir(out, sizeof(out), DRIVER, KREL, "x86-64", &err), KF_EINVAL);
    assert_int_equal(build_pkg_topdir(out, 10, DRIVER, KREL, "x86_64", &err), KF_ETRUNC);
}

/* ------------------------------------------------------------------------ */
/* Failures                                                                  */

static void expect_fail(const struct build_pkg *p, const char *dest, int code, const char *needle)
{
    struct build_pkg_result r;
    struct kf_err err;
    int rc;

    rc = build_package_write(p, dest, &r, &err);
    if (rc != code)
        fail_msg("expected %s, got %s: %s", kf_errname(code), kf_errname(rc), err.msg);
    if (needle != NULL && strstr(err.msg, needle) == NULL)
        fail_msg("message '%s' lacks '%s'", err.msg, needle);
    assert_null(r.metadata);
}

static void test_failures_leave_nothing(void **state)
{
    const char *dest = kft_tmp("out5/p.tar.gz");
    const char *twice[6];
    struct build_pkg p;

    (void)state;
    assert_int_equal(mkdir(kft_tmp("out5"), 0755), 0);

    base_pkg(&p);
    p.kernel_release = "6.1.0-40-amd64";
    expect_fail(&p, dest, KF_ENOMATCH, "built for kernel '6.1.0-41-amd64'");
    base_pkg(&p);
    p.driver_version = "550.54.14";
    expect_fail(&p, dest, KF_ENOMATCH, "module version 550.54.15 is not driver version");
    base_pkg(&p);
    p.kernel_release = "6.1'; reboot; '";
    expect_fail(&p, dest, KF_EUNTRUSTED, "rejected");
    base_pkg(&p);
    p.topdir = "../evil";
    expect_fail(&p, dest, KF_EINVAL, "top directory");
    base_pkg(&p);
    p.arch = "x86 64";
    expect_fail(&p, dest, KF_EINVAL, "architecture");
    base_pkg(&p);
    p.source_sha256 = "xyz";
    expect_fail(&p, dest, KF_EINVAL, "source_sha256");
    base_pkg(&p);
    p.source_date_epoch = -1;
    expect_fail(&p, dest, KF_EINVAL, "SOURCE_DATE_EPOCH");
    base_pkg(&p);
    p.compiler = "gcc \xff\xfe";
    expect_fail(&p, dest, KF_EINVAL, "UTF-8");
    base_pkg(&p);
    p.signer_subject = "CN=kfleet";
    expect_fail(&p, dest, KF_EINVAL, "not signed");
    base_pkg(&p);
    memcpy(twice, mods, sizeof(mods));
    twice[5] = mods[0];
    p.modules = twice;
    p.nmodules = 6;
    expect_fail(&p, dest, KF_EINVAL, "twice");
    base_pkg(&p);
    p.nmodules = 0;
    expect_fail(&p, dest, KF_EINVAL, "at least one module");
    base_pkg(&p);
    {
        struct build_pkg_file bad[1] = {{fw_path, "../../etc/passwd"}};
        p.firmware = bad;
        expect_fail(&p, dest, KF_EINVAL, "firmware");
    }
    base_pkg(&p);
    {
        const char *missing[1] = {kft_tmp("mods/nvidia-missing.ko")};
        p.modules = missing;
        p.nmodules = 1;
        expect_fail(&p, dest, KF_ENOENT, "nvidia-missing.ko");
    }
    base_pkg(&p);
    expect_fail(&p, kft_tmp("out5/bad name.tar.gz"), KF_EINVAL, "package file name");
    expect_fail(&p, kft_tmp("no-such-dir/p.tar.gz"), KF_ENOENT, "cannot create");
    /* None of it left a file, temporary or final. */
    assert_int_equal(dir_count(kft_tmp("out5")), 0);

    /* A failure does not touch an existing package. */
    write_pkg(&p, dest, NULL);
    {
        size_t n0, n1;
        unsigned char *before = kft_read_all(dest, &n0), *after;
        p.kernel_release = "6.1.0-40-amd64";
        expect_fail(&p, dest, KF_ENOMATCH, NULL);
        after = kft_read_all(dest, &n1);
        assert_int_equal(n0, n1);
        assert_memory_equal(before, after, n0);
        free(before);
        free(after);
    }
    assert_int_equal(dir_count(kft_tmp("out5")), 2);
}

/* ------------------------------------------------------------------------ */
/* Scripts                                                                   */

static void test_script_values(void **state)
{
    struct build_module m[1];
    struct kf_err err;
    struct buf b;

    (void)state;
    buf_init(&b, 0);
    memset(m, 0, sizeof(m));
    snprintf(m[0].file, sizeof(m[0].file), "nvidia.ko");
    snprintf(m[0].name, sizeof(m[0].name), "nvidia");
    memset(m[0].sha256, 'a', 64);
    assert_int_equal(build_install_sh(&b, KREL, DRIVER, m, 1, NULL, NULL, 0, &err), 0);
    assert_non_null(strstr(buf_cstr(&b), "\nKERNEL='" KREL "'\n"));
    assert_non_null(strstr(buf_cstr(&b), "\nDRIVER='" DRIVER "'\n"));
    assert_non_null(strstr(buf_cstr(&b), "\nFILES='nvidia.ko'\n"));
    assert_non_null(strstr(buf_cstr(&b), "\nFIRMWARE=''\n"));
    buf_reset(&b);
    assert_int_equal(build_install_sh(&b, "6.1'$(reboot)'", DRIVER, m, 1, NULL, NULL, 0, &err),
                     KF_EUNTRUSTED);
    assert_int_equal(build_install_sh(&b, KREL, "550;x", m, 1, NULL, NULL, 0, &err), KF_EUNTRUSTED);
    snprintf(m[0].name, sizeof(m[0].name), "nv$(id)");
    assert_int_equal(build_install_sh(&b, KREL, DRIVER, m, 1, NULL, NULL, 0, &err), KF_EUNTRUSTED);
    assert_int_equal(build_uninstall_sh(&b, KREL, DRIVER, m, 1, &err), KF_EUNTRUSTED);
    snprintf(m[0].name, sizeof(m[0].name), "nvidia");
    snprintf(m[0].file, sizeof(m[0].file), "nv idia.ko");
    assert_int_equal(build_install_sh(&b, KREL, DRIVER, m, 1, NULL, NULL, 0, &err), KF_EUNTRUSTED);
    snprintf(m[0].file, sizeof(m[0].file), "nvidia.ko");
    m[0].sha256[3] = 'Z';
    assert_int_equal(build_install_sh(&b, KREL, DRIVER, m, 1, NULL, NULL, 0, &err), KF_EINVAL);
    buf_release(&b);
}

/* The stub tools: a log of every call, and a /sys/module that modprobe
 * fills and empties under $KFLEET_ROOT. */
static void make_stubs(void)
{
    static const char depmod[] = "#!/bin/sh\necho \"depmod $*\" >>\"$STUB_LOG\"\n";
    static const char uname_s[] = "#!/bin/sh\necho \"$STUB_UNAME\"\n";
    static const char modprobe[] =
        "#!/bin/sh\n"
        "echo \"modprobe $*\" >>\"$STUB_LOG\"\n"
        "[ \"$1\" = -d ] && shift 2\n"
        "if [ \"$1\" = -r ]; then\n"
        "\trm -rf \"$KFLEET_ROOT/sys/module/$2\"\n"
        "else\n"
        "\tmkdir -p \"$KFLEET_ROOT/sys/module/$1\"\n"
        "\techo \"$STUB_VERSION\" >\"$KFLEET_ROOT/sys/module/$1/version\"\n"
        "fi\n";

    assert_int_equal(mkdir(kft_tmp("stubs"), 0755), 0);
    kft_write_all(kft_tmp("stubs/depmod"), depmod, strlen(depmod));
    kft_write_all(kft_tmp("stubs/uname"), uname_s, strlen(uname_s));
    kft_write_all(kft_tmp("stubs/modprobe"), modprobe, strlen(modprobe));
    assert_int_equal(kft_sh("chmod 0755 '%s/stubs/'*", kft_tmpdir), 0);
}

/* Runs a package script: cwd, script path, arguments, uname -r answer,
 * version the stub modprobe loads. Returns the exit status. */
static int run_script(const char *root, const char *cwd, const char *script, const char *args,
                      const char *uname_r, const char *version)
{
    return kft_sh("cd '%s' && env KFLEET_ROOT='%s' PATH='%s/stubs':\"$PATH\" STUB_LOG='%s/log' "
                  "STUB_UNAME='%s' STUB_VERSION='%s' /bin/sh %s %s >>'%s/out' 2>&1",
                  cwd, root, kft_tmpdir, kft_tmpdir, uname_r, version, script, args, kft_tmpdir);
}

static char *take_log(void)
{
    size_t n;
    char *s;

    if (access(kft_tmp("log"), F_OK) != 0)
        return strdup("");
    s = (char *)kft_read_all(kft_tmp("log"), &n);
    unlink(kft_tmp("log"));
    return s;
}

static void assert_log(const char *want)
{
    char *got = take_log();

    if (strcmp(got, want) != 0)
        fail_msg("stub log:\n%s\nwanted:\n%s", got, want);
    free(got);
}

static void assert_out_has(const char *needle)
{
    char *out = file_text(kft_tmp("out"));

    if (strstr(out, needle) == NULL)
        fail_msg("script output lacks '%s':\n%s", needle, out);
    free(out);
}

#define DEST "/lib/modules/" KREL "/updates/kfleet"

static void test_install_uninstall(void **state)
{
    char root[512], pkg[512], root_dep[600], want[4096];
    struct build_pkg p;
    struct stat st;
    int i;

    (void)state;
    if (!kft_have("tar")) {
        print_message("tar not found: install.sh test skipped\n");
        skip();
    }
    base_pkg(&p);
    assert_int_equal(mkdir(kft_tmp("out6"), 0755), 0);
    write_pkg(&p, kft_tmp("out6/" TOP ".tar.gz"), NULL);
    assert_int_equal(kft_sh("cd '%s' && tar -xzf '%s.tar.gz'", kft_tmp("out6"), TOP), 0);
    snprintf(pkg, sizeof(pkg), "%s/out6/%s", kft_tmpdir, TOP);
    snprintf(root, sizeof(root), "%s/root", kft_tmpdir);
    snprintf(root_dep, sizeof(root_dep), "%s/lib/modules/%s", root, KREL);
    assert_int_equal(kft_sh("mkdir -p '%s' '%s/sys/module'", root_dep, root), 0);
    make_stubs();

    /* The generated scripts are POSIX sh, as shellcheck sees them. */
    if (kft_have("shellcheck"))
        assert_int_equal(kft_sh("shellcheck -s sh '%s/install.sh' '%s/uninstall.sh'", pkg, pkg), 0);
    else
        print_message("shellcheck not found: lint of the scripts skipped\n");

    /* Install, from the package directory: files, firmware, depmod. */
    assert_int_equal(run_script(root, pkg, "install.sh", "", "6.1.0-99-other", ""), 0);
    snprintf(want, sizeof(want), "depmod -b %s -a %s\n", root, KREL);
    assert_log(want);
    for (i = 0; i < 5; i++) {
        char installed[1024];
        snprintf(installed, sizeof(installed), "%s%s/%s", root, DEST, mod_files[i]);
        assert_true(same_file(installed, mods[i]));
        assert_int_equal(stat(installed, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0644);
    }
    assert_true(same_file(kft_tmp("root/lib/firmware/" FW_NAME), fw_path));
    assert_int_equal(dir_count(kft_tmp("root" DEST)), 5); /* no temporary files */

    /* Again, from another directory, with a stale module of an older
     * package in place: it goes, the rest is the same. */
    kft_write_all(kft_tmp("root" DEST "/nvidia-old.ko"), "x", 1);
    assert_int_equal(run_script(root, "/", kft_tmp("out6/" TOP "/install.sh"), "", KREL, ""), 0);
    assert_log(want);
    assert_int_equal(dir_count(kft_tmp("root" DEST)), 5);
    assert_int_equal(access(kft_tmp("root" DEST "/nvidia-old.ko"), F_OK), -1);

    /* --load on another kernel: refused before anything changes. */
    assert_int_equal(run_script(root, pkg, "install.sh", "--load", "6.1.0-99-other", DRIVER), 1);
    assert_log("");
    assert_out_has("the running kernel is 6.1.0-99-other");
    assert_int_equal(run_script(root, pkg, "install.sh", "--bogus", KREL, DRIVER), 1);
    assert_log("");

    /* --load: nothing loaded yet, so only loads, in order, without the
     * stub; then every version is checked. */
    assert_int_equal(run_script(root, pkg, "install.sh", "--load", KREL, DRIVER), 0);
    snprintf(want, sizeof(want),
             "depmod -b %s -a %s\n"
             "modprobe -d %s nvidia\n"
             "modprobe -d %s nvidia_modeset\n"
             "modprobe -d %s nvidia_drm\n"
             "modprobe -d %s nvidia_uvm\n",
             root, KREL, root, root, root, root);
    assert_log(want);
    assert_int_equal(access(kft_tmp("root/sys/module/nvidia_peermem"), F_OK), -1);

    /* --load again: unloads in reverse order first. */
    assert_int_equal(run_script(root, pkg, "install.sh", "--load", KREL, DRIVER), 0);
    snprintf(want, sizeof(want),
             "depmod -b %s -a %s\n"
             "modprobe -d %s -r nvidia_uvm\n"
             "modprobe -d %s -r nvidia_drm\n"
             "modprobe -d %s -r nvidia_modeset\n"
             "modprobe -d %s -r nvidia\n"
             "modprobe -d %s nvidia\n"
             "modprobe -d %s nvidia_modeset\n"
             "modprobe -d %s nvidia_drm\n"
             "modprobe -d %s nvidia_uvm\n",
             root, KREL, root, root, root, root, root, root, root, root);
    assert_log(want);

    /* A loaded version that is not the driver's: an error. */
    assert_int_equal(run_script(root, pkg, "install.sh", "--load", KREL, "535.183.01"), 1);
    assert_out_has("nvidia: version 535.183.01 is loaded, not " DRIVER);
    free(take_log());

    /* Uninstall while another driver version is loaded: not ours, so not
     * unloaded; our files go. */
    assert_int_equal(run_script(root, pkg, "uninstall.sh", "", KREL, ""), 0);
    snprintf(want, sizeof(want), "depmod -b %s -a %s\n", root, KREL);
    assert_log(want);
    assert_int_equal(access(kft_tmp("root" DEST), F_OK), -1);
    assert_int_equal(access(kft_tmp("root/sys/module/nvidia"), F_OK), 0);
    /* Firmware stays (shared by every kernel's package of this driver). */
    assert_int_equal(access(kft_tmp("root/lib/firmware/" FW_NAME), F_OK), 0);

    /* Install and load ours, then uninstall: unloads in reverse order. */
    assert_int_equal(kft_sh("rm -rf '%s/sys/module/'*", root), 0);
    assert_int_equal(run_script(root, pkg, "install.sh", "--load", KREL, DRIVER), 0);
    free(take_log());
    assert_int_equal(run_script(root, pkg, "uninstall.sh", "", KREL, ""), 0);
    snprintf(want, sizeof(want),
             "modprobe -d %s -r nvidia_uvm\n"
             "modprobe -d %s -r nvidia_drm\n"
             "modprobe -d %s -r nvidia_modeset\n"
             "modprobe -d %s -r nvidia\n"
             "depmod -b %s -a %s\n",
             root, root, root, root, root, KREL);
    assert_log(want);
    assert_int_equal(dir_count(kft_tmp("root/sys/module")), 0);
    /* Twice is fine. */
    assert_int_equal(run_script(root, pkg, "uninstall.sh", "", KREL, ""), 0);
    snprintf(want, sizeof(want), "depmod -b %s -a %s\n", root, KREL);
    assert_log(want);

    /* A damaged package changes nothing on the node. */
    {
        size_t n;
        unsigned char *m = kft_read_all(kft_tmp("out6/" TOP "/modules/nvidia-uvm.ko"), &n);
        m[n / 2] ^= 1;
        kft_write_all(kft_tmp("out6/" TOP "/modules/nvidia-uvm.ko"), m, n);
        free(m);
    }
    assert_int_equal(run_script(root, pkg, "install.sh", "", KREL, ""), 1);
    assert_out_has("modules/nvidia-uvm.ko: sha256 mismatch");
    assert_log("");
    assert_int_equal(access(kft_tmp("root" DEST), F_OK), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_one_byte_changes_hash),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_topdir),
        cmocka_unit_test(test_failures_leave_nothing),
        cmocka_unit_test(test_script_values),
        cmocka_unit_test(test_install_uninstall),
    };
    return cmocka_run_group_tests(tests, setup, kft_teardown_tmpdir);
}
