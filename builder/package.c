/* Packages: the reproducible tar.gz that carries one driver's modules for
 * one kernel, with metadata.json, install.sh, uninstall.sh and README.txt,
 * and the .sha256 file beside it.
 *
 * "Reproducible" means: the same module bytes and the same struct build_pkg
 * give the same tar.gz, byte for byte, on any host and at any time. So
 * nothing of the build host leaks in: no mtime but source_date_epoch, no
 * owner but root, no mode but 0644/0755, entries in a fixed (sorted) order,
 * pax_restricted (which writes extended headers only when a value does not
 * fit ustar, and then deterministically), and gzip without its timestamp. */
#include "internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TEXT_MAX 1024 /* bytes of a free-text field (compiler, uname -v) */

/* ------------------------------------------------------------------------ */
/* Values                                                                    */

static int arch_valid(const char *s)
{
    size_t n, i;

    if (s == NULL)
        return 0;
    n = strnlen(s, 32);
    if (n == 0 || n > 31)
        return 0;
    for (i = 0; i < n; i++)
        if (!(s[i] >= '0' && s[i] <= '9') && !(s[i] >= 'a' && s[i] <= 'z') &&
            !(s[i] >= 'A' && s[i] <= 'Z') && s[i] != '_')
            return 0;
    return 1;
}

/* The top directory: one path component of [A-Za-z0-9._+-], not starting
 * with '.', at most 200 bytes. */
static int topdir_valid(const char *s)
{
    return build_fw_name_valid(s) && strchr(s, '/') == NULL;
}

static int set(const char *s)
{
    return s != NULL && s[0] != '\0';
}

int build_pkg_topdir(char *out, size_t outsz, const char *driver, const char *kernel,
                     const char *arch, struct kf_err *err)
{
    int n;

    if (outsz > 0)
        out[0] = '\0';
    if (!kf_driver_version_valid(driver))
        return kf_err_set(err, KF_EINVAL, "driver version not valid");
    if (!kf_krel_valid(kernel))
        return kf_err_set(err, KF_EUNTRUSTED, "kernel release not valid");
    if (!arch_valid(arch))
        return kf_err_set(err, KF_EINVAL, "architecture not valid");
    n = snprintf(out, outsz, "nvidia-driver-%s-kernel-%s-%s", driver, kernel, arch);
    if (n < 0 || (size_t)n >= outsz)
        return kf_err_set(err, KF_ETRUNC, "package name longer than %zu bytes", outsz);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* metadata.json                                                             */

/* A JSON string, or null for an unknown value. Fails on invalid UTF-8. */
static json_t *str_or_null(const char *s)
{
    return set(s) ? json_string(s) : json_null();
}

/* json_object_set_new that remembers a failure (a NULL value is one). */
static void put(json_t *o, const char *key, json_t *v, int *bad)
{
    if (v == NULL || json_object_set_new(o, key, v) != 0)
        *bad = 1;
}

static json_t *depends_array(const char *deps, int *bad)
{
    json_t *a = json_array();
    size_t n;

    if (a == NULL) {
        *bad = 1;
        return NULL;
    }
    while (*deps) {
        n = strcspn(deps, ",");
        if (n > 0 && json_array_append_new(a, json_stringn(deps, n)) != 0)
            *bad = 1;
        deps += n;
        if (*deps == ',')
            deps++;
    }
    return a;
}

int build_metadata(const struct build_pkg *p, const struct build_module *mods, size_t n,
                   const char (*fw_sha256)[BUILD_SHA256_HEX], const uint64_t *fw_size, json_t **out,
                   struct kf_err *err)
{
    json_t *o = json_object(), *os = NULL, *ms = NULL, *lo = NULL, *fw = NULL, *m, *signer;
    char date[32];
    struct tm tm;
    time_t t = (time_t)p->source_date_epoch;
    size_t i;
    int bad = 0, rc = 0;

    *out = NULL;
    if (o == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    if (gmtime_r(&t, &tm) == NULL || strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
        rc = kf_err_set(err, KF_EINVAL, "SOURCE_DATE_EPOCH %lld is not a date",
                        (long long)p->source_date_epoch);
        goto out;
    }
    put(o, "driver_version", json_string(p->driver_version), &bad);
    put(o, "kernel_version", json_string(p->kernel_release), &bad);
    put(o, "kernel_build", str_or_null(p->kernel_build), &bad);
    put(o, "build_date", json_string(date), &bad);
    put(o, "architecture", json_string(p->arch), &bad);
    put(o, "compiler", str_or_null(p->compiler), &bad);
    put(o, "build_host", str_or_null(p->build_host), &bad);
    put(o, "profile", str_or_null(p->profile), &bad);
    put(o, "source_sha256", str_or_null(p->source_sha256), &bad);
    put(o, "kfleet_version", json_string(KF_VERSION), &bad);
    if (bad) {
        rc = kf_err_set(err, KF_EINVAL,
                        "metadata: a text value is not valid UTF-8 (kernel_build, compiler, "
                        "build_host, profile, source_sha256)");
        goto out;
    }
    os = json_object();
    put(os, "id", str_or_null(p->os_id), &bad);
    put(os, "version", str_or_null(p->os_version), &bad);
    put(o, "os", os, &bad);

    ms = json_array();
    lo = json_array();
    for (i = 0; i < n && ms != NULL && lo != NULL; i++) {
        m = json_object();
        if (m == NULL) {
            bad = 1;
            break;
        }
        put(m, "name", json_string(mods[i].name), &bad);
        put(m, "file", json_string(mods[i].file), &bad);
        put(m, "size", json_integer((json_int_t)mods[i].size), &bad);
        put(m, "sha256", json_string(mods[i].sha256), &bad);
        put(m, "vermagic", json_string(mods[i].info.vermagic), &bad);
        put(m, "version", str_or_null(mods[i].info.version), &bad);
        put(m, "depends", depends_array(mods[i].info.depends, &bad), &bad);
        put(m, "signed", json_boolean(mods[i].info.has_signature), &bad);
        put(m, "stub", json_boolean(mods[i].stub), &bad);
        if (json_array_append_new(ms, m) != 0)
            bad = 1;
        if (!mods[i].stub && json_array_append_new(lo, json_string(mods[i].name)) != 0)
            bad = 1;
    }
    put(o, "modules", ms, &bad);
    put(o, "load_order", lo, &bad);

    fw = json_array();
    for (i = 0; i < p->nfirmware && fw != NULL; i++) {
        m = json_object();
        if (m == NULL) {
            bad = 1;
            break;
        }
        put(m, "file", json_string(p->firmware[i].name), &bad);
        put(m, "size", json_integer((json_int_t)fw_size[i]), &bad);
        put(m, "sha256", json_string(fw_sha256[i]), &bad);
        if (json_array_append_new(fw, m) != 0)
            bad = 1;
    }
    put(o, "firmware", fw, &bad);

    if (set(p->signer_subject)) {
        signer = json_object();
        if (signer != NULL) {
            put(signer, "subject", json_string(p->signer_subject), &bad);
            put(signer, "key_id", str_or_null(p->signer_key_id), &bad);
        }
        put(o, "signer", signer, &bad);
    } else {
        put(o, "signer", json_null(), &bad);
    }
    if (bad) {
        rc = kf_err_set(err, KF_EINVAL, "metadata: a value is not valid UTF-8, or out of memory");
        goto out;
    }
    *out = o;
    o = NULL; /* transferred */
out:
    json_decref(o);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* README.txt                                                                */

/* Depends on p and the modules only (never on where the package is
 * written), like everything in the archive. */
static int readme(struct buf *b, const struct build_pkg *p, const struct build_module *mods,
                  size_t n, const char *date)
{
    char shown[256];
    size_t i, stubs = 0;
    int rc;

    rc = buf_printf(b,
                    "NVIDIA driver %s kernel modules for Linux %s (%s)\n"
                    "Packaged by kfleet %s; build date %s.\n"
                    "\n"
                    "Check the archive:   sha256sum -c %s.tar.gz.sha256\n"
                    "Install (as root, in this directory):\n"
                    "  sh install.sh          copy the modules to\n"
                    "                         /lib/modules/%s/updates/kfleet/ and run depmod\n"
                    "  sh install.sh --load   also replace the loaded modules (the running\n"
                    "                         kernel must be %s)\n"
                    "  sh uninstall.sh        unload them (if loaded) and remove them\n"
                    "\n"
                    "Load order:",
                    p->driver_version, p->kernel_release, p->arch, KF_VERSION, date, p->topdir,
                    p->kernel_release, p->kernel_release);
    for (i = 0; rc == 0 && i < n; i++) {
        if (mods[i].stub)
            stubs++;
        else
            rc = buf_printf(b, " %s", mods[i].name);
    }
    if (rc == 0 && stubs > 0) {
        rc = buf_puts(b, "\nStubs (installed, not loaded: they compiled to almost nothing, "
                         "e.g. nvidia-peermem\nwithout the Mellanox OFED headers):");
        for (i = 0; rc == 0 && i < n; i++)
            if (mods[i].stub)
                rc = buf_printf(b, " %s", mods[i].name);
    }
    if (rc == 0 && set(p->signer_subject))
        rc = buf_printf(
            b, "\nSigned for Secure Boot by: %s\n",
            kf_escape_to(shown, sizeof(shown), p->signer_subject, strlen(p->signer_subject)));
    else if (rc == 0)
        rc = buf_puts(b, "\nNot signed: with Secure Boot on, the kernel refuses these modules.\n");
    if (rc == 0)
        rc = buf_puts(b, "\nmetadata.json lists each module's sha256, vermagic and version, the "
                         "compiler,\nand the kernel build this package was made for.\n");
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The archive                                                               */

enum entry_kind { E_DIR, E_DISK, E_MEM };

struct entry {
    char *path; /* in the archive; directories end in '/' */
    enum entry_kind kind;
    mode_t mode;
    const char *src;    /* E_DISK: the file */
    const char *sha256; /* E_DISK: what it hashed to when checked */
    uint64_t size;
    const char *mem; /* E_MEM */
};

struct entries {
    struct entry *v;
    size_t n, cap;
};

static int add_entry(struct entries *es, enum entry_kind kind, mode_t mode, const char *src,
                     const char *sha256, uint64_t size, const char *mem, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

static int add_entry(struct entries *es, enum entry_kind kind, mode_t mode, const char *src,
                     const char *sha256, uint64_t size, const char *mem, const char *fmt, ...)
{
    struct entry *e;
    va_list ap;
    int n;

    if (es->n == es->cap) {
        size_t cap = es->cap ? es->cap * 2 : 16;
        struct entry *v = realloc(es->v, cap * sizeof(*v));
        if (v == NULL)
            return KF_ENOMEM;
        es->v = v;
        es->cap = cap;
    }
    e = &es->v[es->n];
    memset(e, 0, sizeof(*e));
    va_start(ap, fmt);
    n = vasprintf(&e->path, fmt, ap);
    va_end(ap);
    if (n < 0)
        return KF_ENOMEM;
    e->kind = kind;
    e->mode = mode;
    e->src = src;
    e->sha256 = sha256;
    e->size = size;
    e->mem = mem;
    es->n++;
    return 0;
}

static void entries_release(struct entries *es)
{
    size_t i;

    for (i = 0; i < es->n; i++)
        free(es->v[i].path);
    free(es->v);
    es->v = NULL;
    es->n = es->cap = 0;
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->path, ((const struct entry *)b)->path);
}

/* Where libarchive's output goes: the temporary file, and a running
 * SHA-256 of every byte, so the package is hashed without reading it back. */
struct sink {
    int fd;
    EVP_MD_CTX *md;
    uint64_t size;
    int failed_errno;
};

static la_ssize_t sink_write(struct archive *a, void *arg, const void *p, size_t n)
{
    struct sink *s = arg;

    if (build_write_all(s->fd, p, n) != 0) {
        s->failed_errno = errno;
        archive_set_error(a, errno, "write: %s", strerror(errno));
        return -1;
    }
    if (EVP_DigestUpdate(s->md, p, n) != 1) {
        archive_set_error(a, EIO, "SHA-256 failed");
        return -1;
    }
    s->size += n;
    return (la_ssize_t)n;
}

/* Streams one file into the archive, hashing it again: a module that
 * changed since it was checked would make metadata.json lie. */
static int copy_file(struct archive *a, const struct entry *e, struct kf_err *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    char hex[BUILD_SHA256_HEX], *chunk = NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint64_t total = 0;
    unsigned mdlen = 0;
    int fd = -1, rc = 0;
    ssize_t n;

    chunk = malloc(1 << 16);
    if (ctx == NULL || chunk == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    fd = open(e->src, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = kf_err_set(err, KF_EIO, "%s: %s", e->src, strerror(errno));
        goto out;
    }
    for (;;) {
        n = read(fd, chunk, 1 << 16);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = kf_err_set(err, KF_EIO, "%s: read: %s", e->src, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        total += (uint64_t)n;
        if (total > e->size)
            break;
        if (EVP_DigestUpdate(ctx, chunk, (size_t)n) != 1 ||
            archive_write_data(a, chunk, (size_t)n) != n) {
            rc = kf_err_set(err, KF_EIO, "%s: archiving: %s", e->src, archive_error_string(a));
            goto out;
        }
    }
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1) {
        rc = kf_err_set(err, KF_EIO, "%s: SHA-256 failed", e->src);
        goto out;
    }
    build_hex(hex, md, mdlen);
    if (total != e->size || strcmp(hex, e->sha256) != 0) {
        rc = kf_err_set(err, KF_EIO, "%s: changed while it was being packaged", e->src);
        goto out;
    }
out:
    if (fd >= 0)
        close(fd);
    free(chunk);
    EVP_MD_CTX_free(ctx);
    return rc;
}

static int write_archive(struct archive *a, const struct entries *es, int64_t mtime,
                         struct kf_err *err)
{
    struct archive_entry *ae = archive_entry_new2(a);
    size_t i;
    int rc = 0;

    if (ae == NULL)
        return kf_err_set(err, KF_ENOMEM, "out of memory");
    for (i = 0; i < es->n; i++) {
        const struct entry *e = &es->v[i];
        archive_entry_clear(ae);
        archive_entry_set_pathname(ae, e->path);
        archive_entry_set_filetype(ae, e->kind == E_DIR ? AE_IFDIR : AE_IFREG);
        archive_entry_set_perm(ae, e->mode);
        archive_entry_set_size(ae, e->kind == E_DIR ? 0 : (la_int64_t)e->size);
        archive_entry_set_uid(ae, 0);
        archive_entry_set_gid(ae, 0);
        archive_entry_set_uname(ae, "root");
        archive_entry_set_gname(ae, "root");
        archive_entry_set_mtime(ae, (time_t)mtime, 0);
        if (archive_write_header(a, ae) != ARCHIVE_OK) {
            rc = kf_err_set(err, KF_EIO, "%s: %s", e->path, archive_error_string(a));
            goto out;
        }
        if (e->kind == E_DISK) {
            rc = copy_file(a, e, err);
            if (rc != 0)
                goto out;
        } else if (e->kind == E_MEM && e->size > 0) {
            if (archive_write_data(a, e->mem, (size_t)e->size) != (la_ssize_t)e->size) {
                rc = kf_err_set(err, KF_EIO, "%s: %s", e->path, archive_error_string(a));
                goto out;
            }
        }
    }
out:
    archive_entry_free(ae);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* build_package_write                                                       */

void build_pkg_result_init(struct build_pkg_result *r)
{
    memset(r, 0, sizeof(*r));
}

void build_pkg_result_release(struct build_pkg_result *r)
{
    if (r == NULL)
        return;
    json_decref(r->metadata);
    build_pkg_result_init(r);
}

static int text_ok(const char *s)
{
    return s == NULL || strnlen(s, TEXT_MAX + 1) <= TEXT_MAX;
}

static int check_pkg(const struct build_pkg *p, struct kf_err *err)
{
    char shown[128];

    if (!set(p->topdir) || !topdir_valid(p->topdir))
        return kf_err_set(
            err, KF_EINVAL, "package top directory '%s' is not a valid name",
            p->topdir ? kf_escape_to(shown, sizeof(shown), p->topdir, strlen(p->topdir)) : "");
    if (!kf_driver_version_valid(p->driver_version))
        return kf_err_set(err, KF_EINVAL, "driver version is not digits and dots");
    if (!kf_krel_valid(p->kernel_release))
        return kf_err_set(err, KF_EUNTRUSTED, "kernel release '%s' rejected",
                          p->kernel_release ? kf_escape_to(shown, sizeof(shown), p->kernel_release,
                                                           strlen(p->kernel_release))
                                            : "");
    if (!arch_valid(p->arch))
        return kf_err_set(err, KF_EINVAL, "architecture is not [A-Za-z0-9_]+");
    if (set(p->source_sha256) &&
        (strspn(p->source_sha256, "0123456789abcdef") != 64 || p->source_sha256[64] != '\0'))
        return kf_err_set(err, KF_EINVAL, "source_sha256 is not 64 lower-case hex digits");
    /* Year 9999 at most: build_date is ISO 8601 with four digits. */
    if (p->source_date_epoch < 0 || p->source_date_epoch > 253402300799LL)
        return kf_err_set(err, KF_EINVAL, "SOURCE_DATE_EPOCH %lld out of range",
                          (long long)p->source_date_epoch);
    if (p->nmodules == 0 || p->modules == NULL)
        return kf_err_set(err, KF_EINVAL, "a package needs at least one module");
    if (p->nfirmware > 0 && p->firmware == NULL)
        return kf_err_set(err, KF_EINVAL, "firmware list missing");
    if (!text_ok(p->kernel_build) || !text_ok(p->os_id) || !text_ok(p->os_version) ||
        !text_ok(p->compiler) || !text_ok(p->build_host) || !text_ok(p->profile) ||
        !text_ok(p->signer_subject) || !text_ok(p->signer_key_id))
        return kf_err_set(err, KF_EINVAL, "a text value is longer than %d bytes", TEXT_MAX);
    return 0;
}

/* Every module checked, unique, consistent with the driver version and
 * the signer, then put in load order. */
static int load_modules(const struct build_pkg *p, struct build_module **out, const char ***srcs,
                        struct kf_err *err)
{
    struct build_module *mods = NULL, *ordered = NULL;
    const char **paths = NULL;
    size_t *order = NULL, i, j, n = p->nmodules;
    int rc = 0;

    *out = NULL;
    *srcs = NULL;
    mods = calloc(n, sizeof(*mods));
    ordered = calloc(n, sizeof(*ordered));
    order = calloc(n, sizeof(*order));
    paths = calloc(n, sizeof(*paths));
    if (mods == NULL || ordered == NULL || order == NULL || paths == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    for (i = 0; i < n; i++) {
        if (p->modules[i] == NULL) {
            rc = kf_err_set(err, KF_EINVAL, "module %zu: no path", i);
            goto out;
        }
        rc = build_module_inspect(p->modules[i], p->kernel_release, p->stub_threshold, &mods[i],
                                  err);
        if (rc != 0)
            goto out;
        if (mods[i].info.version[0] != '\0' &&
            strcmp(mods[i].info.version, p->driver_version) != 0) {
            rc = kf_err_set(err, KF_ENOMATCH, "%s: module version %s is not driver version %s",
                            p->modules[i], mods[i].info.version, p->driver_version);
            goto out;
        }
        if (set(p->signer_subject) && !mods[i].info.has_signature) {
            rc = kf_err_set(err, KF_EINVAL, "%s: not signed, but the package names a signer",
                            p->modules[i]);
            goto out;
        }
        for (j = 0; j < i; j++) {
            if (strcmp(mods[j].file, mods[i].file) == 0 ||
                strcmp(mods[j].name, mods[i].name) == 0) {
                rc = kf_err_set(err, KF_EINVAL, "%s: module %s is in the package twice",
                                p->modules[i], mods[i].name);
                goto out;
            }
        }
    }
    rc = build_load_order(mods, n, order, err);
    if (rc != 0)
        goto out;
    for (i = 0; i < n; i++) {
        ordered[i] = mods[order[i]];
        paths[i] = p->modules[order[i]];
    }
    *out = ordered;
    *srcs = paths;
    ordered = NULL; /* transferred */
    paths = NULL;   /* transferred */
out:
    free(order);
    free(mods);
    free(ordered);
    free(paths);
    return rc;
}

/* Hashes and sizes the firmware, and checks its names. */
static int load_firmware(const struct build_pkg *p, char (*sha)[BUILD_SHA256_HEX], uint64_t *size,
                         struct kf_err *err)
{
    struct stat st;
    size_t i, j;
    int rc;

    for (i = 0; i < p->nfirmware; i++) {
        const struct build_pkg_file *f = &p->firmware[i];
        if (f->src == NULL || !build_fw_name_valid(f->name))
            return kf_err_set(err, KF_EINVAL, "firmware %zu: name '%s' is not valid", i,
                              f->name ? f->name : "");
        for (j = 0; j < i; j++)
            if (strcmp(p->firmware[j].name, f->name) == 0)
                return kf_err_set(err, KF_EINVAL, "firmware %s is in the package twice", f->name);
        if (stat(f->src, &st) != 0 || !S_ISREG(st.st_mode))
            return kf_err_set(err, KF_ENOENT, "%s: not a readable file", f->src);
        size[i] = (uint64_t)st.st_size;
        rc = build_sha256_file(f->src, sha[i], err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Adds "topdir/firmware/" and every directory on the way to each firmware
 * file; duplicates are removed after sorting. */
static int add_fw_dirs(struct entries *es, const char *top, const char *name)
{
    const char *slash;
    int rc = 0;

    for (slash = strchr(name, '/'); rc == 0 && slash != NULL; slash = strchr(slash + 1, '/'))
        rc = add_entry(es, E_DIR, 0755, NULL, NULL, 0, NULL, "%s/firmware/%.*s/", top,
                       (int)(slash - name), name);
    return rc;
}

int build_package_write(const struct build_pkg *p, const char *dest,
                        struct build_pkg_result *result, struct kf_err *err)
{
    struct build_tmp tar = {-1, NULL, NULL}, sumf = {-1, NULL, NULL};
    struct buf install, uninstall, rd, sumline;
    struct build_module *mods = NULL;
    const char **srcs = NULL;
    char(*fw_sha)[BUILD_SHA256_HEX] = NULL;
    uint64_t *fw_size = NULL;
    struct entries es = {NULL, 0, 0};
    struct sink sink = {-1, NULL, 0, 0};
    struct archive *a = NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    char hex[BUILD_SHA256_HEX], date[32];
    const char *base;
    json_t *meta = NULL;
    char *meta_text = NULL, *sumpath = NULL;
    int tar_open = 0, sum_open = 0, tar_renamed = 0, rc = 0;
    size_t i, k, stubs = 0;
    time_t t;
    struct tm tm;

    buf_init(&install, 0);
    buf_init(&uninstall, 0);
    buf_init(&rd, 0);
    buf_init(&sumline, 0);
    if (result != NULL)
        build_pkg_result_init(result);
    kf_err_clear(err);

    if (dest == NULL || dest[0] == '\0') {
        rc = kf_err_set(err, KF_EINVAL, "no package path");
        goto out;
    }
    base = strrchr(dest, '/');
    base = base ? base + 1 : dest;
    /* The base name goes into the .sha256 file, read by sha256sum -c. */
    if (!topdir_valid(base)) {
        rc = kf_err_set(err, KF_EINVAL, "%s: package file name must be [A-Za-z0-9._+-]", dest);
        goto out;
    }
    rc = check_pkg(p, err);
    if (rc != 0)
        goto out;
    rc = load_modules(p, &mods, &srcs, err);
    if (rc != 0)
        goto out;
    for (i = 0; i < p->nmodules; i++)
        stubs += mods[i].stub != 0;
    if (p->nfirmware > 0) {
        fw_sha = calloc(p->nfirmware, sizeof(*fw_sha));
        fw_size = calloc(p->nfirmware, sizeof(*fw_size));
        if (fw_sha == NULL || fw_size == NULL) {
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
            goto out;
        }
    }
    rc = load_firmware(p, fw_sha, fw_size, err);
    if (rc != 0)
        goto out;

    /* The generated files, in memory. */
    rc = build_metadata(p, mods, p->nmodules, (const char(*)[BUILD_SHA256_HEX])fw_sha, fw_size,
                        &meta, err);
    if (rc != 0)
        goto out;
    meta_text = json_dumps(meta, JSON_SORT_KEYS | JSON_INDENT(2) | JSON_ENSURE_ASCII);
    if (meta_text == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    rc = build_install_sh(&install, p->kernel_release, p->driver_version, mods, p->nmodules,
                          p->firmware, (const char(*)[BUILD_SHA256_HEX])fw_sha, p->nfirmware, err);
    if (rc == 0)
        rc = build_uninstall_sh(&uninstall, p->kernel_release, p->driver_version, mods, p->nmodules,
                                err);
    if (rc != 0)
        goto out;
    t = (time_t)p->source_date_epoch;
    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (readme(&rd, p, mods, p->nmodules, date) != 0) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }

    /* The entries, then one fixed order for them. */
    rc = add_entry(&es, E_DIR, 0755, NULL, NULL, 0, NULL, "%s/", p->topdir);
    rc = rc ? rc : add_entry(&es, E_DIR, 0755, NULL, NULL, 0, NULL, "%s/modules/", p->topdir);
    for (i = 0; rc == 0 && i < p->nmodules; i++)
        rc = add_entry(&es, E_DISK, 0644, srcs[i], mods[i].sha256, mods[i].size, NULL,
                       "%s/modules/%s", p->topdir, mods[i].file);
    if (rc == 0 && p->nfirmware > 0)
        rc = add_entry(&es, E_DIR, 0755, NULL, NULL, 0, NULL, "%s/firmware/", p->topdir);
    for (i = 0; rc == 0 && i < p->nfirmware; i++) {
        rc = add_fw_dirs(&es, p->topdir, p->firmware[i].name);
        if (rc == 0)
            rc = add_entry(&es, E_DISK, 0644, p->firmware[i].src, fw_sha[i], fw_size[i], NULL,
                           "%s/firmware/%s", p->topdir, p->firmware[i].name);
    }
    rc = rc ? rc
            : add_entry(&es, E_MEM, 0644, NULL, NULL, strlen(meta_text), meta_text,
                        "%s/metadata.json", p->topdir);
    rc = rc ? rc
            : add_entry(&es, E_MEM, 0755, NULL, NULL, install.len, install.data, "%s/install.sh",
                        p->topdir);
    rc = rc ? rc
            : add_entry(&es, E_MEM, 0755, NULL, NULL, uninstall.len, uninstall.data,
                        "%s/uninstall.sh", p->topdir);
    rc = rc ? rc
            : add_entry(&es, E_MEM, 0644, NULL, NULL, rd.len, rd.data, "%s/README.txt", p->topdir);
    if (rc != 0) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    qsort(es.v, es.n, sizeof(es.v[0]), entry_cmp);
    for (i = 1, k = 1; i < es.n; i++) {
        if (strcmp(es.v[i].path, es.v[k - 1].path) == 0) {
            if (es.v[i].kind != E_DIR) {
                rc = kf_err_set(err, KF_EINVAL, "%s: two files with this name", es.v[i].path);
                goto out;
            }
            free(es.v[i].path);
            continue;
        }
        es.v[k++] = es.v[i];
    }
    if (es.n > 0)
        es.n = k;

    /* The archive, into a temporary file beside dest. */
    rc = build_tmp_open(&tar, dest, 0644, err);
    if (rc != 0)
        goto out;
    tar_open = 1;
    sink.fd = tar.fd;
    sink.md = EVP_MD_CTX_new();
    a = archive_write_new();
    if (sink.md == NULL || a == NULL || EVP_DigestInit_ex(sink.md, EVP_sha256(), NULL) != 1) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    /* zlib, not an external gzip (ARCHIVE_WARN), whose output could differ
     * between hosts; no timestamp; and no padding after the gzip stream
     * (bytes_in_last_block 1), which gzip -t would call trailing garbage. */
    if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
        archive_write_add_filter_gzip(a) != ARCHIVE_OK ||
        archive_write_set_filter_option(a, "gzip", "timestamp", NULL) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
        archive_write_open(a, &sink, NULL, sink_write, NULL) != ARCHIVE_OK) {
        rc = kf_err_set(err, KF_EIO, "%s: libarchive: %s", dest, archive_error_string(a));
        goto out;
    }
    rc = write_archive(a, &es, p->source_date_epoch, err);
    if (rc != 0) {
        kf_err_prefix(err, "%s: ", dest);
        goto out;
    }
    if (archive_write_close(a) != ARCHIVE_OK) {
        rc = kf_err_set(err, KF_EIO, "%s: %s", dest, archive_error_string(a));
        goto out;
    }
    if (EVP_DigestFinal_ex(sink.md, md, &mdlen) != 1) {
        rc = kf_err_set(err, KF_EIO, "%s: SHA-256 failed", dest);
        goto out;
    }
    build_hex(hex, md, mdlen);

    /* The .sha256 file, also beside dest; both are complete and synced
     * before either takes its final name. */
    if (buf_printf(&sumline, "%s  %s\n", hex, base) != 0) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    if (asprintf(&sumpath, "%s.sha256", dest) < 0) {
        sumpath = NULL;
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    rc = build_tmp_open(&sumf, sumpath, 0644, err);
    if (rc != 0)
        goto out;
    sum_open = 1;
    rc = build_tmp_write(&sumf, sumline.data, sumline.len, err);
    if (rc != 0)
        goto out;
    if (fsync(sumf.fd) != 0) {
        rc = kf_err_set(err, KF_EIO, "%s.sha256: fsync: %s", dest, strerror(errno));
        goto out;
    }
    tar_open = 0;
    rc = build_tmp_commit(&tar, 0, err);
    if (rc != 0)
        goto out;
    tar_renamed = 1;
    sum_open = 0;
    rc = build_tmp_commit(&sumf, 1, err);
    if (rc != 0)
        goto out;

    if (result != NULL) {
        memcpy(result->sha256, hex, sizeof(hex));
        result->size = sink.size;
        result->nstubs = stubs;
        result->metadata = meta;
        meta = NULL; /* transferred */
    }
out:
    if (a != NULL)
        archive_write_free(a);
    EVP_MD_CTX_free(sink.md);
    if (tar_open)
        build_tmp_abort(&tar);
    if (sum_open)
        build_tmp_abort(&sumf);
    /* A .sha256 that could not be put beside it makes the package useless
     * to a node: take the package (and a .sha256 renamed before a failed
     * directory fsync) away too. */
    if (rc != 0 && tar_renamed) {
        unlink(dest);
        unlink(sumpath);
    }
    free(sumpath);
    entries_release(&es);
    free(meta_text);
    json_decref(meta);
    free(fw_sha);
    free(fw_size);
    free(mods);
    free(srcs);
    buf_release(&install);
    buf_release(&uninstall);
    buf_release(&rd);
    buf_release(&sumline);
    return rc;
}
