/* A profile's driver source, as the control host sees it before a build:
 * what kind of build it calls for, the bytes sent to builders, and their
 * sha256 (the name of the source on every builder).
 *
 *   profile type  source                         kind        bytes sent
 *   nvidia-run    NVIDIA-Linux-*.run             nvidia-run  the file
 *   nvidia-open   directory | tarball            nvidia-open tar of the dir | the file
 *   kmod          directory | tarball            kbuild, or dkms when a
 *                                                dkms.conf is at its top
 *
 * A directory is sent as build_source_tar() makes it: the same tree gives
 * the same sha256 wherever it is, and leftovers of a local build are left
 * out. */
#include "coordinator.h"
#include "builder.h"
#include "dkms.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SOURCE_FILE_MAX ((size_t)4 << 30) /* 4 GiB: far above any driver */

const char *coord_source_kind_name(enum coord_source_kind k)
{
    switch (k) {
    case SRC_KBUILD:
        return "kbuild";
    case SRC_DKMS:
        return "dkms";
    case SRC_NVIDIA_RUN:
        return "nvidia-run";
    case SRC_NVIDIA_OPEN:
        return "nvidia-open";
    }
    return "?";
}

void coord_source_init(struct coord_source *s)
{
    memset(s, 0, sizeof(*s));
    buf_init(&s->data, 0);
    build_dkms_init(&s->dkms);
}

void coord_source_release(struct coord_source *s)
{
    free(s->path);
    buf_release(&s->data);
    build_dkms_release(&s->dkms);
    memset(s, 0, sizeof(*s));
}

static int read_file(const char *path, struct buf *b, struct kf_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    ssize_t r;

    if (fd < 0)
        return kf_err_set(err, errno == ENOENT ? KF_ENOENT : KF_EIO, "%s: %s", path,
                          strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > SOURCE_FILE_MAX) {
        close(fd);
        return kf_err_set(err, KF_EINVAL, "%s: not a regular file of at most 4 GiB", path);
    }
    if (buf_reserve(b, (size_t)st.st_size + 1) < 0) {
        close(fd);
        return kf_err_set(err, KF_ENOMEM, "out of memory reading %s", path);
    }
    while ((r = read(fd, b->data + b->len, b->cap - b->len - 1)) > 0) {
        b->len += (size_t)r;
        if (b->len + 1 >= b->cap && buf_reserve(b, 1 << 20) < 0) {
            close(fd);
            return kf_err_set(err, KF_ENOMEM, "out of memory reading %s", path);
        }
    }
    close(fd);
    if (r < 0)
        return kf_err_set(err, KF_EIO, "%s: %s", path, strerror(errno));
    return 0;
}

static int sha256_buf(const struct buf *b, char hex[BUILD_SHA256_HEX], struct kf_err *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0, i;

    if (EVP_Digest(b->len ? b->data : "", b->len, md, &n, EVP_sha256(), NULL) != 1)
        return kf_err_set(err, KF_EIO, "SHA-256 failed");
    for (i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* A dkms.conf at the top of a tarball, or one directory down (the usual
 * NAME-VERSION/ top directory): its text into conf. 1 found, 0 not. */
static int tarball_dkms_conf(const char *path, struct buf *conf, struct kf_err *err)
{
    struct archive *a = archive_read_new();
    struct archive_entry *ae;
    int rc = 0, r;

    if (a == NULL)
        return kf_err_set(err, KF_ENOMEM, "out of memory");
    archive_read_support_format_all(a);
    archive_read_support_filter_all(a);
    if (archive_read_open_filename(a, path, 65536) != ARCHIVE_OK) {
        rc = kf_err_set(err, KF_EPARSE, "%s: %s", path, archive_error_string(a));
        goto out;
    }
    while ((r = archive_read_next_header(a, &ae)) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(ae), *slash;
        if (strncmp(name, "./", 2) == 0)
            name += 2;
        slash = strchr(name, '/');
        if (strcmp(name, "dkms.conf") == 0 ||
            (slash && strchr(slash + 1, '/') == NULL && strcmp(slash + 1, "dkms.conf") == 0)) {
            char chunk[8192];
            la_ssize_t n;
            if (archive_entry_size(ae) > (1 << 20)) {
                rc = kf_err_set(err, KF_EINVAL, "%s: %s is larger than 1 MiB", path, name);
                goto out;
            }
            while ((n = archive_read_data(a, chunk, sizeof(chunk))) > 0)
                if (buf_append(conf, chunk, (size_t)n) < 0) {
                    rc = kf_err_set(err, KF_ENOMEM, "out of memory");
                    goto out;
                }
            rc = n < 0 ? kf_err_set(err, KF_EPARSE, "%s: %s", path, archive_error_string(a)) : 1;
            goto out;
        }
    }
    if (r != ARCHIVE_EOF)
        rc = kf_err_set(err, KF_EPARSE, "%s: %s", path, archive_error_string(a));
out:
    archive_read_free(a);
    return rc;
}

int coord_source_inspect(const struct coord_profile *p, const char *override, int load,
                         struct coord_source *s, struct kf_err *err)
{
    const char *path = override ? override : p->source;
    struct stat st;
    int rc = 0, is_dir;

    if (path == NULL || path[0] == '\0')
        return kf_err_set(err, KF_EINVAL,
                          "profile %s has no source: set profiles.%s.source in kfleet.yml or "
                          "give --source PATH",
                          p->name, p->name);
    if ((s->path = strdup(path)) == NULL)
        return kf_err_set(err, KF_ENOMEM, "out of memory");
    if (stat(path, &st) < 0)
        return kf_err_set(err, KF_ENOENT, "profile %s: source %s: %s", p->name, path,
                          strerror(errno));
    is_dir = S_ISDIR(st.st_mode);
    if (!is_dir && !S_ISREG(st.st_mode))
        return kf_err_set(err, KF_EINVAL, "profile %s: source %s is not a file or directory",
                          p->name, path);

    switch (p->type) {
    case PROFILE_NVIDIA_RUN:
        if (is_dir)
            return kf_err_set(err, KF_EINVAL,
                              "profile %s (nvidia-run): source %s is a directory; give the "
                              "NVIDIA-Linux-ARCH-VERSION.run file",
                              p->name, path);
        s->kind = SRC_NVIDIA_RUN;
        break;
    case PROFILE_NVIDIA_OPEN:
        s->kind = SRC_NVIDIA_OPEN;
        break;
    case PROFILE_KMOD: {
        struct buf conf;
        char cpath[4096];
        buf_init(&conf, 0);
        s->kind = SRC_KBUILD;
        if (is_dir) {
            snprintf(cpath, sizeof(cpath), "%s/dkms.conf", path);
            if (access(cpath, F_OK) == 0) {
                rc = build_dkms_load(cpath, &s->dkms, err);
                s->kind = SRC_DKMS;
            } else {
                char kb[4096], mk[4096];
                snprintf(kb, sizeof(kb), "%s/Kbuild", path);
                snprintf(mk, sizeof(mk), "%s/Makefile", path);
                if (access(kb, F_OK) != 0 && access(mk, F_OK) != 0)
                    rc = kf_err_set(err, KF_EINVAL,
                                    "profile %s (kmod): %s has none of dkms.conf, Kbuild and "
                                    "Makefile",
                                    p->name, path);
            }
        } else {
            rc = tarball_dkms_conf(path, &conf, err);
            if (rc == 1) {
                snprintf(cpath, sizeof(cpath), "%s:dkms.conf", path);
                rc = build_dkms_parse(conf.data, conf.len, cpath, &s->dkms, err);
                s->kind = SRC_DKMS;
            }
        }
        buf_release(&conf);
        if (rc < 0)
            return rc;
        break;
    }
    }
    s->has_dkms = s->kind == SRC_DKMS;
    if (!load)
        return 0;
    if (is_dir)
        rc = build_source_tar(path, "src", 0, &s->data, s->sha256, err);
    else if ((rc = read_file(path, &s->data, err)) == 0)
        rc = sha256_buf(&s->data, s->sha256, err);
    if (rc < 0)
        kf_err_prefix(err, "profile %s: ", p->name);
    return rc;
}
