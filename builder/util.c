/* File and OpenSSL helpers shared inside builder/ (see internal.h). */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int build_map_open(struct build_map *m, const char *path, struct kf_err *err)
{
    struct stat st;
    void *p;
    int fd, rc = 0;

    m->data = NULL;
    m->len = 0;
    m->mode = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kf_err_set(err, errno == ENOENT ? KF_ENOENT : KF_EIO, "%s: %s", path,
                          strerror(errno));
    if (fstat(fd, &st) != 0) {
        rc = kf_err_set(err, KF_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    /* A device or a FIFO could stream forever or block; a module is a file. */
    if (!S_ISREG(st.st_mode)) {
        rc = kf_err_set(err, KF_EINVAL, "%s: not a regular file", path);
        goto out;
    }
    m->mode = st.st_mode & 07777;
    if (st.st_size == 0)
        goto out;
    if ((uint64_t)st.st_size > SIZE_MAX) {
        rc = kf_err_set(err, KF_EINVAL, "%s: too large to map", path);
        goto out;
    }
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        rc = kf_err_set(err, errno == ENOMEM ? KF_ENOMEM : KF_EIO, "%s: mmap: %s", path,
                        strerror(errno));
        goto out;
    }
    m->data = p;
    m->len = (size_t)st.st_size;
out:
    close(fd);
    return rc;
}

void build_map_close(struct build_map *m)
{
    if (m == NULL)
        return;
    if (m->data != NULL)
        munmap((void *)m->data, m->len);
    m->data = NULL;
    m->len = 0;
}

int build_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return KF_EIO;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int build_fsync_parent(const char *path, struct kf_err *err)
{
    char *copy = strdup(path);
    int fd = -1, rc = 0;

    if (copy == NULL)
        return kf_err_set(err, KF_ENOMEM, "out of memory");
    /* dirname() may modify its argument: it gets the copy. */
    fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0)
        rc = kf_err_set(err, KF_EIO, "%s: fsync of its directory: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

int build_tmp_open(struct build_tmp *t, const char *final_path, mode_t mode, struct kf_err *err)
{
    const char *slash = strrchr(final_path, '/');
    size_t dirlen = slash ? (size_t)(slash - final_path) + 1 : 0;
    const char *base = final_path + dirlen;
    int rc = 0;

    t->fd = -1;
    t->tmp_path = NULL;
    t->final_path = strdup(final_path);
    if (*base == '\0') {
        rc = kf_err_set(err, KF_EINVAL, "%s: not a file name", final_path);
        goto out;
    }
    /* Hidden and in the same directory, so rename() is atomic and a crash
     * leaves a dot-file nobody mistakes for the real one. */
    if (t->final_path == NULL ||
        asprintf(&t->tmp_path, "%.*s.%s.XXXXXX", (int)dirlen, final_path, base) < 0) {
        t->tmp_path = NULL;
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    t->fd = mkostemp(t->tmp_path, O_CLOEXEC);
    if (t->fd < 0) {
        rc = kf_err_set(err, errno == ENOENT ? KF_ENOENT : KF_EIO, "%s: cannot create: %s",
                        final_path, strerror(errno));
        goto out;
    }
    if (fchmod(t->fd, mode) != 0) {
        rc = kf_err_set(err, KF_EIO, "%s: chmod: %s", t->tmp_path, strerror(errno));
        goto out;
    }
out:
    if (rc != 0)
        build_tmp_abort(t);
    return rc;
}

int build_tmp_write(struct build_tmp *t, const void *p, size_t n, struct kf_err *err)
{
    if (build_write_all(t->fd, p, n) != 0)
        return kf_err_set(err, KF_EIO, "%s: write: %s", t->final_path, strerror(errno));
    return 0;
}

int build_tmp_commit(struct build_tmp *t, int sync_dir, struct kf_err *err)
{
    int rc = 0;

    /* The data must be on disk before the name points at it, or a crash
     * can leave an empty file under the final name. */
    if (fsync(t->fd) != 0) {
        rc = kf_err_set(err, KF_EIO, "%s: fsync: %s", t->final_path, strerror(errno));
        goto out;
    }
    if (close(t->fd) != 0) {
        t->fd = -1;
        rc = kf_err_set(err, KF_EIO, "%s: close: %s", t->final_path, strerror(errno));
        goto out;
    }
    t->fd = -1;
    if (rename(t->tmp_path, t->final_path) != 0) {
        rc = kf_err_set(err, KF_EIO, "%s: rename: %s", t->final_path, strerror(errno));
        goto out;
    }
    free(t->tmp_path);
    t->tmp_path = NULL; /* renamed: nothing left to remove */
    if (sync_dir)
        rc = build_fsync_parent(t->final_path, err);
out:
    build_tmp_abort(t);
    return rc;
}

void build_tmp_abort(struct build_tmp *t)
{
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
    if (t->tmp_path != NULL)
        unlink(t->tmp_path);
    free(t->tmp_path);
    free(t->final_path);
    t->tmp_path = NULL;
    t->final_path = NULL;
}

int build_ssl_err(struct kf_err *err, int code, const char *fmt, ...)
{
    char msg[sizeof(err->msg)], ssl[256];
    unsigned long e = ERR_get_error();
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (e != 0) {
        ERR_error_string_n(e, ssl, sizeof(ssl));
        kf_err_set(err, code, "%s: %s", msg, ssl);
    } else {
        kf_err_set(err, code, "%s", msg);
    }
    ERR_clear_error();
    return code;
}

void build_hex(char *out, const unsigned char *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}
