/* Kernel modules: the ELF .modinfo reader, the signature trailer, module
 * inspection and load order, and stripping with objcopy.
 *
 * Fixtures in tests/fixtures/ko/ are real relocatable objects made by gcc
 * and objcopy (see make.sh there); hostile inputs are made here, either by
 * changing a fixture's bytes or with mkelf(), a minimal ELF writer for any
 * class and byte order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "builder.h"
#include "testutil.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KREL "6.1.0-41-amd64"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

static char *fixture_path(const char *name)
{
    static char path[1024];

    snprintf(path, sizeof(path), "%s/ko/%s", KF_FIXTURES, name);
    return path;
}

static void copy_file(const char *from, const char *to)
{
    size_t n;
    unsigned char *p = kft_read_all(from, &n);

    kft_write_all(to, p, n);
    free(p);
}

static void assert_display_safe(const char *msg)
{
    const unsigned char *p;

    for (p = (const unsigned char *)msg; *p; p++)
        if (*p < 0x20 || *p >= 0x7f)
            fail_msg("raw byte 0x%02x in message: %s", *p, msg);
}

/* Stores v as an n-byte integer at p in the given byte order. */
static void put(unsigned char *p, uint64_t v, unsigned n, int be)
{
    unsigned i;

    for (i = 0; i < n; i++)
        p[be ? n - 1 - i : i] = (unsigned char)(v >> (8 * i));
}

/* A minimal relocatable ELF: header, the .modinfo bytes, a section name
 * table, and three section headers (null, .modinfo, .shstrtab). */
static unsigned char *mkelf(const void *modinfo, size_t mlen, int is64, int be, size_t *len)
{
    static const char names[] = "\0.modinfo\0.shstrtab";
    size_t eh = is64 ? 64 : 52, she = is64 ? 64 : 40;
    size_t moff = eh, soff = moff + mlen, shoff = (soff + sizeof(names) + 7) & ~(size_t)7;
    size_t total = shoff + 3 * she, i;
    unsigned char *p = calloc(1, total);

    assert_non_null(p);
    memcpy(p, ELFMAG, SELFMAG);
    p[EI_CLASS] = is64 ? ELFCLASS64 : ELFCLASS32;
    p[EI_DATA] = be ? ELFDATA2MSB : ELFDATA2LSB;
    p[EI_VERSION] = EV_CURRENT;
    put(p + 16, ET_REL, 2, be);
    put(p + 20, EV_CURRENT, 4, be);
    if (is64) {
        put(p + 40, shoff, 8, be);
        put(p + 52, eh, 2, be);
        put(p + 58, she, 2, be);
        put(p + 60, 3, 2, be);
        put(p + 62, 2, 2, be);
    } else {
        put(p + 32, shoff, 4, be);
        put(p + 40, eh, 2, be);
        put(p + 46, she, 2, be);
        put(p + 48, 3, 2, be);
        put(p + 50, 2, 2, be);
    }
    memcpy(p + moff, modinfo, mlen);
    memcpy(p + soff, names, sizeof(names));
    for (i = 1; i < 3; i++) {
        unsigned char *sh = p + shoff + i * she;
        uint64_t name = i == 1 ? 1 : 10, type = i == 1 ? SHT_PROGBITS : SHT_STRTAB;
        uint64_t off = i == 1 ? moff : soff, size = i == 1 ? mlen : sizeof(names);
        put(sh, name, 4, be);
        put(sh + 4, type, 4, be);
        if (is64) {
            put(sh + 24, off, 8, be);
            put(sh + 32, size, 8, be);
        } else {
            put(sh + 16, off, 4, be);
            put(sh + 20, size, 4, be);
        }
    }
    *len = total;
    return p;
}

/* Offsets of the interesting parts of a little-endian ELF64 fixture. */
struct layout {
    uint64_t shoff;
    unsigned shnum, shstrndx;
    size_t modinfo_sh;  /* offset of .modinfo's section header */
    size_t modinfo_off; /* of its contents */
    size_t modinfo_len;
    size_t name_off; /* of ".modinfo" in the name table */
};

static void layout64(const unsigned char *p, size_t len, struct layout *l)
{
    Elf64_Ehdr eh;
    Elf64_Shdr sh, str;
    unsigned i;

    memset(l, 0, sizeof(*l));
    assert_true(len >= sizeof(eh));
    memcpy(&eh, p, sizeof(eh));
    l->shoff = eh.e_shoff;
    l->shnum = eh.e_shnum;
    l->shstrndx = eh.e_shstrndx;
    memcpy(&str, p + eh.e_shoff + (size_t)eh.e_shstrndx * sizeof(sh), sizeof(str));
    for (i = 1; i < eh.e_shnum; i++) {
        memcpy(&sh, p + eh.e_shoff + (size_t)i * sizeof(sh), sizeof(sh));
        if (strcmp((const char *)p + str.sh_offset + sh.sh_name, ".modinfo") == 0) {
            l->modinfo_sh = eh.e_shoff + (size_t)i * sizeof(sh);
            l->modinfo_off = sh.sh_offset;
            l->modinfo_len = sh.sh_size;
            l->name_off = str.sh_offset + sh.sh_name;
        }
    }
    assert_true(l->modinfo_sh != 0);
}

static int parse(const unsigned char *p, size_t n, struct build_modinfo *mi, struct kf_err *err)
{
    int rc = build_modinfo_parse(p, n, "test.ko", mi, err);

    if (rc != 0)
        assert_display_safe(err->msg);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Validators                                                                */

static void test_validators(void **state)
{
    (void)state;
    assert_true(kf_krel_valid("6.1.0-41-amd64"));
    assert_true(kf_krel_valid("5.14.0-427.13.1.el9_4.x86_64"));
    assert_true(kf_krel_valid("6.8.0-1015-aws+"));
    assert_false(kf_krel_valid(""));
    assert_false(kf_krel_valid(NULL));
    assert_false(kf_krel_valid("v6.1"));
    assert_false(kf_krel_valid("6.1 x"));
    assert_false(kf_krel_valid("6.1/../x"));
    assert_false(kf_krel_valid("6.1;reboot"));
    assert_false(kf_krel_valid("6.1'x"));
    assert_true(kf_krel_valid("6123456789012345678901234567890123456789012345678901234567890123"));
    assert_false(
        kf_krel_valid("61234567890123456789012345678901234567890123456789012345678901234"));

    assert_true(kf_driver_version_valid("550.54.15"));
    assert_true(kf_driver_version_valid("535.183"));
    assert_false(kf_driver_version_valid("550"));
    assert_false(kf_driver_version_valid("550..15"));
    assert_false(kf_driver_version_valid(".550.1"));
    assert_false(kf_driver_version_valid("550.1."));
    assert_false(kf_driver_version_valid("550.1-beta"));
    assert_false(kf_driver_version_valid(NULL));

    assert_true(kf_modname_valid("nvidia_drm"));
    assert_true(kf_modname_valid("nvidia-drm"));
    assert_false(kf_modname_valid(""));
    assert_false(kf_modname_valid("nvidia drm"));
    assert_false(kf_modname_valid("../nvidia"));
    assert_false(kf_modname_valid("nvidia.ko"));
    assert_false(kf_modname_valid("n$(x)"));
}

static void test_vermagic_matches(void **state)
{
    (void)state;
    assert_true(build_vermagic_matches("6.1.0-41-amd64 SMP preempt mod_unload modversions ", KREL));
    assert_true(build_vermagic_matches("6.1.0-41-amd64", KREL));
    assert_false(build_vermagic_matches("6.1.0-41-amd64x SMP", KREL));
    assert_false(build_vermagic_matches("6.1.0-41 SMP", KREL));
    assert_false(build_vermagic_matches("6.1.0-40-amd64 SMP", KREL));
    assert_false(build_vermagic_matches(" 6.1.0-41-amd64 SMP", KREL));
    assert_false(build_vermagic_matches("", KREL));
    assert_false(build_vermagic_matches("6.1.0-41-amd64 SMP", ""));
    assert_false(build_vermagic_matches(NULL, KREL));
}

/* ------------------------------------------------------------------------ */
/* Fixtures                                                                  */

static void test_fixtures(void **state)
{
    struct build_modinfo mi;
    struct kf_err err;

    (void)state;
    assert_int_equal(build_modinfo_read(fixture_path("nvidia.ko"), &mi, &err), 0);
    assert_int_equal(mi.elf_class, 64);
    assert_false(mi.big_endian);
    assert_string_equal(mi.name, "nvidia");
    assert_string_equal(mi.version, "550.54.15");
    assert_string_equal(mi.vermagic, "6.1.0-41-amd64 SMP preempt mod_unload modversions ");
    assert_string_equal(mi.license, "Dual MIT/GPL");
    assert_string_equal(mi.srcversion, "8F3E1D0C6A7B2E4F9D1C3A5");
    assert_string_equal(mi.depends, "");
    assert_true(mi.has_depends);
    assert_false(mi.has_signature);

    assert_int_equal(build_modinfo_read(fixture_path("nvidia-drm.ko"), &mi, &err), 0);
    assert_string_equal(mi.name, "nvidia_drm");
    assert_string_equal(mi.depends, "drm,nvidia-modeset,drm_kms_helper");

    assert_int_equal(build_modinfo_read(fixture_path("i386.ko"), &mi, &err), 0);
    assert_int_equal(mi.elf_class, 32);
    assert_false(mi.big_endian);
    assert_string_equal(mi.name, "nvidia");
    assert_true(build_vermagic_matches(mi.vermagic, KREL));

    assert_int_equal(build_modinfo_read(fixture_path("be64.ko"), &mi, &err), 0);
    assert_int_equal(mi.elf_class, 64);
    assert_true(mi.big_endian);
    assert_string_equal(mi.license, "NVIDIA");
    assert_string_equal(mi.vermagic, "6.1.0-41-amd64 SMP mod_unload ");
    assert_true(mi.has_depends);

    assert_int_equal(build_modinfo_read(fixture_path("be32.ko"), &mi, &err), 0);
    assert_int_equal(mi.elf_class, 32);
    assert_true(mi.big_endian);
    assert_string_equal(mi.version, "550.54.15");
}

static void test_mkelf_all_classes(void **state)
{
    static const char info[] = "\0\0name=x_y\0\0\0version=1.2\0depends=a,b\0junk\0vermagic=6.1 SMP";
    struct build_modinfo mi;
    struct kf_err err;
    unsigned char *p;
    size_t n;
    int is64, be;

    (void)state;
    for (is64 = 0; is64 < 2; is64++) {
        for (be = 0; be < 2; be++) {
            /* sizeof - 1: the last entry has no NUL and ends with the section. */
            p = mkelf(info, sizeof(info) - 1, is64, be, &n);
            assert_int_equal(parse(p, n, &mi, &err), 0);
            assert_int_equal(mi.elf_class, is64 ? 64 : 32);
            assert_int_equal(mi.big_endian, be);
            assert_string_equal(mi.name, "x_y");
            assert_string_equal(mi.version, "1.2");
            assert_string_equal(mi.depends, "a,b");
            assert_string_equal(mi.vermagic, "6.1 SMP");
            assert_string_equal(mi.license, "");
            free(p);
        }
    }
    /* No depends entry at all. */
    p = mkelf("vermagic=6.1", 12, 1, 0, &n);
    assert_int_equal(parse(p, n, &mi, &err), 0);
    assert_false(mi.has_depends);
    free(p);
    /* An empty .modinfo is a module with nothing to say. */
    p = mkelf("", 0, 1, 0, &n);
    assert_int_equal(parse(p, n, &mi, &err), 0);
    free(p);
}

/* ------------------------------------------------------------------------ */
/* Hostile values                                                            */

static void expect_value_error(const char *info, size_t len, int code, const char *needle)
{
    struct build_modinfo mi;
    struct kf_err err;
    unsigned char *p;
    size_t n;

    p = mkelf(info, len, 1, 0, &n);
    assert_int_equal(parse(p, n, &mi, &err), code);
    if (strstr(err.msg, needle) == NULL)
        fail_msg("message '%s' lacks '%s'", err.msg, needle);
    assert_string_equal(mi.vermagic, ""); /* nothing half-filled */
    free(p);
}

static void test_hostile_values(void **state)
{
    char big[1100];

    (void)state;
    expect_value_error("vermagic=6.1\x1b[2J SMP", 20, KF_EUNTRUSTED, "6.1\\x1b[2J");
    expect_value_error("version=5\xc3\xa9", 11, KF_EUNTRUSTED, "version");
    expect_value_error("vermagic=6.1\0vermagic=6.2", 25, KF_EPARSE, "two different vermagic");
    expect_value_error("depends=\0depends=x", 18, KF_EPARSE, "two different depends");
    expect_value_error("name=../../etc", 14, KF_EUNTRUSTED, "module name");
    memcpy(big, "depends=", 8);
    memset(big + 8, 'a', sizeof(big) - 8);
    expect_value_error(big, sizeof(big), KF_EPARSE, "more than 1023");

    /* The same value twice is harmless. */
    {
        struct build_modinfo mi;
        struct kf_err err;
        size_t n;
        unsigned char *p = mkelf("license=GPL\0license=GPL\0vermagic=6.1", 36, 1, 0, &n);
        assert_int_equal(parse(p, n, &mi, &err), 0);
        assert_string_equal(mi.license, "GPL");
        free(p);
    }
}

static void expect_parse_error(const unsigned char *p, size_t n, const char *needle)
{
    struct build_modinfo mi;
    struct kf_err err;

    assert_int_equal(parse(p, n, &mi, &err), KF_EPARSE);
    if (strstr(err.msg, needle) == NULL)
        fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

/* Each case changes one field of nvidia.ko's headers. */
static void test_hostile_headers(void **state)
{
    unsigned char *orig, *p;
    struct build_modinfo mi, ref;
    struct kf_err err;
    struct layout l;
    size_t n;

    (void)state;
    orig = kft_read_all(fixture_path("nvidia.ko"), &n);
    layout64(orig, n, &l);
    assert_int_equal(parse(orig, n, &ref, &err), 0);
    p = malloc(n);
    assert_non_null(p);

#define RESET() memcpy(p, orig, n)
    RESET();
    expect_parse_error(p, 3, "not an ELF");
    p[EI_CLASS] = 3;
    expect_parse_error(p, n, "ELF class");
    RESET();
    p[EI_DATA] = 0;
    expect_parse_error(p, n, "byte order");
    RESET();
    put(p + 16, ET_EXEC, 2, 0);
    expect_parse_error(p, n, "not a relocatable");
    RESET();
    expect_parse_error(p, 40, "truncated ELF header");
    put(p + 40, n, 8, 0); /* e_shoff at the end of the file */
    expect_parse_error(p, n, "past the end");
    RESET();
    put(p + 40, UINT64_MAX - 8, 8, 0);
    expect_parse_error(p, n, "past the end");
    RESET();
    put(p + 58, 32, 2, 0); /* e_shentsize */
    expect_parse_error(p, n, "section header size");
    RESET();
    put(p + 60, 0xfeff, 2, 0); /* e_shnum */
    expect_parse_error(p, n, "do not fit");
    RESET();
    put(p + 62, l.shnum, 2, 0); /* e_shstrndx */
    expect_parse_error(p, n, "out of range");
    RESET();
    put(p + 62, 0, 2, 0);
    expect_parse_error(p, n, "out of range");
    RESET();
    put(p + 62, 1, 2, 0); /* names from a section that is not a string table */
    expect_parse_error(p, n, "name table");
    RESET();
    put(p + l.modinfo_sh + 24, UINT64_MAX - 2, 8, 0); /* .modinfo sh_offset */
    expect_parse_error(p, n, "outside the file");
    RESET();
    put(p + l.modinfo_sh + 32, UINT64_MAX, 8, 0); /* .modinfo sh_size */
    expect_parse_error(p, n, "outside the file");
    RESET();
    put(p + l.modinfo_sh + 32, n - l.modinfo_off + 1, 8, 0);
    expect_parse_error(p, n, "outside the file");
    RESET();
    put(p + l.modinfo_sh + 4, SHT_NOBITS, 4, 0);
    expect_parse_error(p, n, "outside the file");
    RESET();
    p[l.name_off + 8] = 'X'; /* ".modinfoX...": no longer the name */
    expect_parse_error(p, n, "no .modinfo");
    RESET();
    put(p + l.modinfo_sh, 0xffffffff, 4, 0); /* sh_name past the table */
    expect_parse_error(p, n, "no .modinfo");

    /* Extended numbering (more than 0xff00 sections): real count and name
     * table index in section 0. A valid file, so the same answer. */
    RESET();
    put(p + 60, 0, 2, 0);
    put(p + 62, SHN_XINDEX, 2, 0);
    put(p + l.shoff + 32, l.shnum, 8, 0);    /* section 0 sh_size */
    put(p + l.shoff + 40, l.shstrndx, 4, 0); /* section 0 sh_link */
    assert_int_equal(parse(p, n, &mi, &err), 0);
    assert_memory_equal(&mi, &ref, sizeof(mi));
    put(p + l.shoff + 32, 0, 8, 0);
    expect_parse_error(p, n, "do not fit");
#undef RESET
    free(p);
    free(orig);
}

/* Every prefix of every fixture: the section headers are at the end, so
 * each one must fail cleanly (and ASan watches every read). */
static void test_truncated_everywhere(void **state)
{
    static const char *const names[] = {"nvidia.ko", "i386.ko", "be64.ko", "be32.ko"};
    struct build_modinfo mi;
    struct kf_err err;
    unsigned char *p, *copy;
    size_t n, i, k;

    (void)state;
    for (k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        p = kft_read_all(fixture_path(names[k]), &n);
        for (i = 0; i < n; i++) {
            /* A fresh allocation of exactly i bytes, so a read past it is
             * an ASan error rather than a read of the rest of p. */
            copy = malloc(i ? i : 1);
            assert_non_null(copy);
            memcpy(copy, p, i);
            if (build_modinfo_parse(copy, i, names[k], &mi, &err) == 0)
                fail_msg("%s cut to %zu bytes parsed", names[k], i);
            assert_display_safe(err.msg);
            free(copy);
        }
        free(p);
    }
}

/* Every byte of two fixtures set to a few values: never a crash, and a
 * result that parses is well formed. */
static void test_mutations(void **state)
{
    static const char *const names[] = {"nvidia-uvm.ko", "be32.ko"};
    static const unsigned char vals[] = {0x00, 0xff, 0x7f, 0x80, 0x01};
    struct build_modinfo mi;
    struct kf_err err;
    unsigned char *p;
    size_t n, i, v, k;

    (void)state;
    for (k = 0; k < 2; k++) {
        p = kft_read_all(fixture_path(names[k]), &n);
        for (i = 0; i < n; i++) {
            unsigned char saved = p[i];
            for (v = 0; v < sizeof(vals); v++) {
                p[i] = vals[v];
                if (build_modinfo_parse(p, n, names[k], &mi, &err) == 0) {
                    assert_true(memchr(mi.vermagic, 0, sizeof(mi.vermagic)) != NULL);
                    assert_true(memchr(mi.depends, 0, sizeof(mi.depends)) != NULL);
                    assert_true(mi.name[0] == '\0' || kf_modname_valid(mi.name));
                } else {
                    assert_display_safe(err.msg);
                }
            }
            p[i] = saved;
        }
        free(p);
    }
}

static void test_read_errors(void **state)
{
    struct build_modinfo mi;
    struct kf_err err;

    (void)state;
    assert_int_equal(build_modinfo_read(kft_tmp("missing.ko"), &mi, &err), KF_ENOENT);
    assert_non_null(strstr(err.msg, "missing.ko"));
    assert_int_equal(build_modinfo_read(kft_tmpdir, &mi, &err), KF_EINVAL);
    kft_write_all(kft_tmp("empty.ko"), "", 0);
    assert_int_equal(build_modinfo_read(kft_tmp("empty.ko"), &mi, &err), KF_EPARSE);
    assert_non_null(strstr(err.msg, "empty.ko: not an ELF"));
    assert_int_equal(build_modinfo_read("/dev/zero", &mi, &err), KF_EINVAL);
}

/* ------------------------------------------------------------------------ */
/* The signature trailer                                                     */

static unsigned char *with_trailer(const unsigned char *mod, size_t n, const unsigned char ms[12],
                                   size_t siglen, size_t *total)
{
    unsigned char *p = malloc(n + siglen + 12 + BUILD_SIG_MARKER_LEN);

    assert_non_null(p);
    memcpy(p, mod, n);
    memset(p + n, 0x30, siglen);
    memcpy(p + n + siglen, ms, 12);
    memcpy(p + n + siglen + 12, BUILD_SIG_MARKER, BUILD_SIG_MARKER_LEN);
    *total = n + siglen + 12 + BUILD_SIG_MARKER_LEN;
    return p;
}

static void test_trailer(void **state)
{
    unsigned char ms[12] = {0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 10};
    struct build_modinfo mi;
    struct kf_err err;
    size_t n, total, mlen, slen;
    unsigned char *mod, *p;

    (void)state;
    mod = kft_read_all(fixture_path("nvidia.ko"), &n);
    p = with_trailer(mod, n, ms, 10, &total);
    assert_int_equal(build_sig_trailer_parse(p, total, "x", &mlen, &slen, &err), 0);
    assert_int_equal(mlen, n);
    assert_int_equal(slen, 10);
    assert_int_equal(parse(p, total, &mi, &err), 0);
    assert_true(mi.has_signature);
    assert_string_equal(mi.name, "nvidia");
    free(p);

    /* sig_len larger than what precedes it */
    ms[8] = 0x7f;
    p = with_trailer(mod, n, ms, 10, &total);
    assert_int_equal(build_sig_trailer_parse(p, total, "x", &mlen, &slen, &err), KF_EPARSE);
    assert_non_null(strstr(err.msg, "does not fit"));
    assert_int_equal(parse(p, total, &mi, &err), 0);
    assert_false(mi.has_signature);
    free(p);
    ms[8] = 0;

    ms[2] = 1; /* PKEY_ID_X509, never used by modules */
    p = with_trailer(mod, n, ms, 10, &total);
    assert_int_equal(build_sig_trailer_parse(p, total, "x", &mlen, &slen, &err), KF_EPARSE);
    assert_non_null(strstr(err.msg, "not PKCS#7"));
    free(p);
    ms[2] = 2;

    ms[3] = 5; /* signer_len must be 0 */
    p = with_trailer(mod, n, ms, 10, &total);
    assert_int_equal(build_sig_trailer_parse(p, total, "x", &mlen, &slen, &err), KF_EPARSE);
    free(p);
    ms[3] = 0;

    ms[11] = 0; /* sig_len 0 */
    p = with_trailer(mod, n, ms, 10, &total);
    assert_int_equal(build_sig_trailer_parse(p, total, "x", &mlen, &slen, &err), KF_EPARSE);
    free(p);

    /* A marker alone; and no marker. */
    assert_int_equal(
        build_sig_trailer_parse(BUILD_SIG_MARKER, BUILD_SIG_MARKER_LEN, "x", &mlen, &slen, &err),
        KF_EPARSE);
    assert_int_equal(build_sig_trailer_parse(mod, n, "x", &mlen, &slen, &err), KF_ENOENT);
    assert_int_equal(build_sig_trailer_parse(mod, 3, "x", &mlen, &slen, &err), KF_ENOENT);
    free(mod);
}

/* ------------------------------------------------------------------------ */
/* Inspection and load order                                                 */

static void test_inspect(void **state)
{
    struct build_module m;
    struct kf_err err;
    char hex[BUILD_SHA256_HEX];

    (void)state;
    assert_int_equal(build_module_inspect(fixture_path("nvidia-drm.ko"), KREL, 0, &m, &err), 0);
    assert_string_equal(m.file, "nvidia-drm.ko");
    assert_string_equal(m.name, "nvidia_drm");
    assert_int_equal(build_sha256_file(fixture_path("nvidia-drm.ko"), hex, &err), 0);
    assert_string_equal(m.sha256, hex);
    assert_int_equal(strlen(hex), 64);
    assert_false(m.stub); /* it has depends */

    /* Empty depends and small: a stub, under the threshold. */
    assert_int_equal(build_module_inspect(fixture_path("nvidia-peermem.ko"), KREL, 0, &m, &err), 0);
    assert_true(m.stub);
    assert_int_equal(build_module_inspect(fixture_path("nvidia-peermem.ko"), KREL, 1000, &m, &err),
                     0);
    assert_false(m.stub);

    assert_int_equal(build_module_inspect(fixture_path("nvidia.ko"), "6.1.0-40-amd64", 0, &m, &err),
                     KF_ENOMATCH);
    assert_non_null(strstr(err.msg, "built for kernel '6.1.0-41-amd64'"));
    assert_non_null(strstr(err.msg, "not 6.1.0-40-amd64"));

    /* The name comes from the file when .modinfo has none. */
    {
        size_t n;
        unsigned char *p = mkelf("vermagic=" KREL " SMP", 9 + sizeof(KREL) - 1 + 4, 1, 0, &n);
        kft_write_all(kft_tmp("my-mod.ko"), p, n);
        free(p);
        assert_int_equal(build_module_inspect(kft_tmp("my-mod.ko"), KREL, 0, &m, &err), 0);
        assert_string_equal(m.name, "my_mod");
        assert_true(m.stub); /* no depends entry at all */
        kft_write_all(kft_tmp("bad name.ko"), "", 0);
        assert_int_equal(build_module_inspect(kft_tmp("bad name.ko"), KREL, 0, &m, &err),
                         KF_EUNTRUSTED);
        kft_write_all(kft_tmp("nvidia.o"), "", 0);
        assert_int_equal(build_module_inspect(kft_tmp("nvidia.o"), KREL, 0, &m, &err), KF_EINVAL);
    }
    /* No vermagic: not checkable, not packaged. */
    {
        size_t n;
        unsigned char *p = mkelf("name=x", 6, 1, 0, &n);
        kft_write_all(kft_tmp("x.ko"), p, n);
        free(p);
        assert_int_equal(build_module_inspect(kft_tmp("x.ko"), KREL, 0, &m, &err), KF_EPARSE);
        assert_non_null(strstr(err.msg, "no vermagic"));
    }
}

static void test_load_order(void **state)
{
    static const char *const files[] = {"nvidia-drm.ko", "nvidia-uvm.ko", "nvidia-peermem.ko",
                                        "nvidia-modeset.ko", "nvidia.ko"};
    struct build_module mods[5];
    size_t order[5], i;
    struct kf_err err;

    (void)state;
    for (i = 0; i < 5; i++)
        assert_int_equal(build_module_inspect(fixture_path(files[i]), KREL, 0, &mods[i], &err), 0);
    /* Dependencies first, then names: whatever order the files came in. */
    assert_int_equal(build_load_order(mods, 5, order, &err), 0);
    assert_string_equal(mods[order[0]].name, "nvidia");
    assert_string_equal(mods[order[1]].name, "nvidia_modeset");
    assert_string_equal(mods[order[2]].name, "nvidia_drm");
    assert_string_equal(mods[order[3]].name, "nvidia_peermem");
    assert_string_equal(mods[order[4]].name, "nvidia_uvm");
    {
        struct build_module rev[5];
        size_t o2[5];
        for (i = 0; i < 5; i++)
            rev[i] = mods[4 - i];
        assert_int_equal(build_load_order(rev, 5, o2, &err), 0);
        for (i = 0; i < 5; i++)
            assert_string_equal(rev[o2[i]].name, mods[order[i]].name);
    }

    /* A cycle: modeset depends on drm, drm on modeset ('-' and '_' alike). */
    snprintf(mods[3].info.depends, sizeof(mods[3].info.depends), "nvidia,nvidia-drm");
    assert_int_equal(build_load_order(mods, 5, order, &err), KF_EINVAL);
    assert_non_null(strstr(err.msg, "circular"));
    /* Self-dependency is a cycle too. */
    snprintf(mods[3].info.depends, sizeof(mods[3].info.depends), "nvidia_modeset");
    assert_int_equal(build_load_order(&mods[3], 1, order, &err), KF_EINVAL);
}

/* ------------------------------------------------------------------------ */
/* Stripping                                                                 */

static int file_has(const char *path, const char *needle)
{
    size_t n;
    unsigned char *p = kft_read_all(path, &n);
    int found = memmem(p, n, needle, strlen(needle)) != NULL;

    free(p);
    return found;
}

static off_t file_size(const char *path)
{
    struct stat st;

    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static void test_strip(void **state)
{
    struct build_modinfo before, after;
    struct kf_err err;
    const char *in = kft_tmp("nvidia-uvm.ko"), *out = kft_tmp("stripped.ko");

    (void)state;
    copy_file(fixture_path("nvidia-uvm.ko"), in);
    assert_true(file_has(in, ".debug_info"));
    assert_int_equal(build_modinfo_read(in, &before, &err), 0);

    assert_int_equal(build_strip_debug(in, out, NULL, &err), 0);
    assert_false(file_has(out, ".debug_info"));
    assert_true(file_size(out) < file_size(in));
    assert_int_equal(build_modinfo_read(out, &after, &err), 0);
    assert_memory_equal(&before, &after, sizeof(before));

    /* In place. */
    assert_int_equal(build_strip_debug(in, NULL, "objcopy", &err), 0);
    assert_false(file_has(in, ".debug_info"));
    assert_int_equal(build_modinfo_read(in, &after, &err), 0);

    /* A file objcopy does not understand: its message comes back, and no
     * output is left. */
    kft_write_all(kft_tmp("text.ko"), "not an object\n", 14);
    assert_int_equal(build_strip_debug(kft_tmp("text.ko"), kft_tmp("out1.ko"), NULL, &err),
                     KF_ECMD);
    assert_non_null(strstr(err.msg, "exit status 1"));
    assert_non_null(strstr(err.msg, "file format not recognized"));
    assert_display_safe(err.msg);
    assert_int_equal(access(kft_tmp("out1.ko"), F_OK), -1);

    assert_int_equal(build_strip_debug(in, kft_tmp("out2.ko"), "/nonexistent/objcopy", &err),
                     KF_ENOENT);
    assert_int_equal(access(kft_tmp("out2.ko"), F_OK), -1);

    /* An "objcopy" that succeeds but writes something that is no module. */
    {
        const char *fake = kft_tmp("fake-objcopy");
        kft_write_all(fake, "#!/bin/sh\nprintf junk >\"$3\"\n", 28);
        assert_int_equal(chmod(fake, 0755), 0);
        assert_int_equal(build_strip_debug(in, kft_tmp("out3.ko"), fake, &err), KF_EPARSE);
        assert_non_null(strstr(err.msg, "after"));
        assert_non_null(strstr(err.msg, "not an ELF"));
        assert_int_equal(access(kft_tmp("out3.ko"), F_OK), -1);
    }
    /* The input under another name is in place: a failure keeps it. */
    kft_write_all(kft_tmp("text2.ko"), "not an object\n", 14);
    {
        char other[512];
        snprintf(other, sizeof(other), "%s/./text2.ko", kft_tmpdir);
        assert_int_equal(build_strip_debug(kft_tmp("text2.ko"), other, NULL, &err), KF_ECMD);
        assert_int_equal(access(kft_tmp("text2.ko"), F_OK), 0);
    }
    /* A name that starts with '-' is still a file to objcopy. */
    {
        char cwd[1024];
        assert_non_null(getcwd(cwd, sizeof(cwd)));
        assert_int_equal(chdir(kft_tmpdir), 0);
        copy_file(fixture_path("nvidia-modeset.ko"), "-m.ko");
        assert_int_equal(build_strip_debug("-m.ko", "-n.ko", NULL, &err), 0);
        assert_int_equal(build_modinfo_read("-n.ko", &after, &err), 0);
        assert_int_equal(chdir(cwd), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validators),
        cmocka_unit_test(test_vermagic_matches),
        cmocka_unit_test(test_fixtures),
        cmocka_unit_test(test_mkelf_all_classes),
        cmocka_unit_test(test_hostile_values),
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_read_errors),
        cmocka_unit_test(test_trailer),
        cmocka_unit_test(test_inspect),
        cmocka_unit_test(test_load_order),
        cmocka_unit_test(test_strip),
    };
    return cmocka_run_group_tests(tests, kft_setup_tmpdir, kft_teardown_tmpdir);
}
