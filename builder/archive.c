/* Archives that travel between the control host and builders:
 *   build_source_tar  a source directory as one reproducible tar in memory
 *                     (what is uploaded to builders, named by its sha256);
 *   build_untar       a builder's result (modules, build.log, ...) unpacked
 *                     under a fresh directory, refusing anything but plain
 *                     files and directories inside it;
 * and build_write_file_atomic for small files of the artifact store. */
#include "internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SOURCE_MAX_FILES 200000
#define SOURCE_MAX_DEPTH 64

struct src_entry {
    char *rel; /* path under the top directory */
    int dir;
    mode_t mode;
    off_t size;
};

struct src_list {
    struct src_entry *v;
    size_t n, cap;
};

static void src_list_release(struct src_list *l)
{
    size_t i;

    for (i = 0; i < l->n; i++)
        free(l->v[i].rel);
    free(l->v);
}

/* Build outputs of an earlier build in the tree: the worker deletes them
 * anyway; leaving them out keeps the source hash stable. */
static int is_build_output(const char *name)
{
    static const char *const suffixes[] = {".o", ".ko", ".mod", ".mod.c", ".cmd", NULL};
    size_t n = strlen(name), i;

    if (strcmp(name, "Module.symvers") == 0 || strcmp(name, "modules.order") == 0 ||
        strcmp(name, ".git") == 0)
        return 1;
    for (i = 0; suffixes[i]; i++) {
        size_t k = strlen(suffixes[i]);
        if (n > k && strcmp(name + n - k, suffixes[i]) == 0)
            return 1;
    }
    return 0;
}

static int walk(const char *root, const char *rel, int depth, struct src_list *l,
                struct kf_err *err)
{
    char path[4096];
    struct dirent **names = NULL;
    int n, i, rc = 0;

    if (depth > SOURCE_MAX_DEPTH)
        return kf_err_set(err, KF_EINVAL, "%s/%s: directories nested too deep", root, rel);
    snprintf(path, sizeof(path), "%s%s%s", root, rel[0] ? "/" : "", rel);
    n = scandir(path, &names, NULL, alphasort);
    if (n < 0)
        return kf_err_set(err, KF_EIO, "%s: %s", path, strerror(errno));
    for (i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        char child[4096], full[4096];
        struct stat st;

        if (rc != 0 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || is_build_output(name))
            continue;
        if ((size_t)snprintf(child, sizeof(child), "%s%s%s", rel, rel[0] ? "/" : "", name) >=
                sizeof(child) ||
            (size_t)snprintf(full, sizeof(full), "%s/%s", root, child) >= sizeof(full)) {
            rc = kf_err_set(err, KF_EINVAL, "%s/%s: path too long", path, name);
            continue;
        }
        if (lstat(full, &st) < 0) {
            rc = kf_err_set(err, KF_EIO, "%s: %s", full, strerror(errno));
            continue;
        }
        if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
            /* A symlink could point out of the tree on the builder. */
            rc = kf_err_set(err, KF_EUNSUPPORTED,
                            "%s: only regular files and directories can be sent to builders", full);
            continue;
        }
        if (l->n == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 256;
            struct src_entry *v = realloc(l->v, cap * sizeof(*v));
            if (v == NULL) {
                rc = kf_err_set(err, KF_ENOMEM, "out of memory");
                continue;
            }
            l->v = v, l->cap = cap;
        }
        if (l->n >= SOURCE_MAX_FILES) {
            rc = kf_err_set(err, KF_EINVAL, "%s: more than %d files", root, SOURCE_MAX_FILES);
            continue;
        }
        l->v[l->n].rel = strdup(child);
        if (l->v[l->n].rel == NULL) {
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
            continue;
        }
        l->v[l->n].dir = S_ISDIR(st.st_mode);
        l->v[l->n].mode = (st.st_mode & 0111) || S_ISDIR(st.st_mode) ? 0755 : 0644;
        l->v[l->n].size = st.st_size;
        l->n++;
        if (S_ISDIR(st.st_mode))
            rc = walk(root, child, depth + 1, l, err);
    }
    for (i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

static la_ssize_t mem_write(struct archive *a, void *arg, const void *p, size_t n)
{
    (void)a;
    return buf_append(arg, p, n) == 0 ? (la_ssize_t)n : -1;
}

int build_source_tar(const char *dir, const char *top, int64_t mtime, struct buf *out,
                     char sha256[BUILD_SHA256_HEX], struct kf_err *err)
{
    struct src_list l = {NULL, 0, 0};
    struct archive *a = NULL;
    struct archive_entry *ae = NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    size_t i;
    int rc;

    rc = walk(dir, "", 0, &l, err);
    if (rc < 0)
        goto out;
    a = archive_write_new();
    ae = archive_entry_new();
    if (a == NULL || ae == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
        archive_write_open(a, out, NULL, mem_write, NULL) != ARCHIVE_OK) {
        rc = kf_err_set(err, KF_EIO, "libarchive: %s", archive_error_string(a));
        goto out;
    }
    for (i = 0; i <= l.n && rc == 0; i++) {
        char name[4200], full[4200];
        const struct src_entry *e = i ? &l.v[i - 1] : NULL;
        int fd = -1;

        snprintf(name, sizeof(name), "%s%s%s", top, e ? "/" : "", e ? e->rel : "");
        archive_entry_clear(ae);
        archive_entry_set_pathname(ae, name);
        archive_entry_set_filetype(ae, !e || e->dir ? AE_IFDIR : AE_IFREG);
        archive_entry_set_perm(ae, e ? e->mode : 0755);
        archive_entry_set_size(ae, !e || e->dir ? 0 : (la_int64_t)e->size);
        archive_entry_set_uid(ae, 0);
        archive_entry_set_gid(ae, 0);
        archive_entry_set_uname(ae, "root");
        archive_entry_set_gname(ae, "root");
        archive_entry_set_mtime(ae, (time_t)mtime, 0);
        if (e && !e->dir) {
            snprintf(full, sizeof(full), "%s/%s", dir, e->rel);
            fd = open(full, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (fd < 0) {
                rc = kf_err_set(err, KF_EIO, "%s: %s", full, strerror(errno));
                break;
            }
        }
        if (archive_write_header(a, ae) != ARCHIVE_OK) {
            rc = kf_err_set(err, KF_EIO, "%s: %s", name, archive_error_string(a));
        } else if (fd >= 0) {
            char chunk[65536];
            off_t left = e->size;
            ssize_t r;
            while (left > 0 && (r = read(fd, chunk, sizeof(chunk))) > 0) {
                if (r > left)
                    r = (ssize_t)left;
                if (archive_write_data(a, chunk, (size_t)r) != r) {
                    rc = kf_err_set(err, KF_EIO, "%s: %s", name, archive_error_string(a));
                    break;
                }
                left -= r;
            }
            if (rc == 0 && left != 0)
                rc = kf_err_set(err, KF_EIO, "%s/%s: changed while being read", dir, e->rel);
        }
        if (fd >= 0)
            close(fd);
    }
    if (rc == 0 && archive_write_close(a) != ARCHIVE_OK)
        rc = kf_err_set(err, KF_EIO, "libarchive: %s", archive_error_string(a));
    if (rc == 0 && EVP_Digest(out->data, out->len, md, &mdlen, EVP_sha256(), NULL) != 1)
        rc = kf_err_set(err, KF_EIO, "SHA-256 failed");
    if (rc == 0)
        build_hex(sha256, md, mdlen);
out:
    if (ae)
        archive_entry_free(ae);
    if (a)
        archive_write_free(a);
    src_list_release(&l);
    return rc;
}

/* A member path is taken only when it is relative and every component is a
 * plain name: no "..", no empty component. */
static int member_path_ok(const char *p)
{
    const char *c = p;

    if (strncmp(c, "./", 2) == 0)
        c += 2;
    if (*c == '\0' || *c == '/')
        return *c == '\0'; /* "." or "./" is the top itself */
    while (*c) {
        const char *end = strchr(c, '/');
        size_t n = end ? (size_t)(end - c) : strlen(c);
        if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        c += n;
        if (*c == '/')
            c++;
    }
    return 1;
}

static int copy_data(struct archive *in, struct archive *out)
{
    const void *block;
    size_t size;
    la_int64_t offset;
    int r;

    while ((r = archive_read_data_block(in, &block, &size, &offset)) == ARCHIVE_OK)
        if (archive_write_data_block(out, block, size, offset) != ARCHIVE_OK)
            return -1;
    return r == ARCHIVE_EOF ? 0 : -1;
}

int build_untar(const void *data, size_t len, const char *dir, uint64_t max_bytes,
                struct kf_err *err)
{
    struct archive *a = archive_read_new(), *w = archive_write_disk_new();
    struct archive_entry *ae;
    uint64_t total = 0;
    int rc = 0, r;

    if (a == NULL || w == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    archive_read_support_format_tar(a);
    archive_read_support_filter_gzip(a);
    /* Member paths are checked below and made absolute under dir, so
     * NOABSOLUTEPATHS cannot be used; symlink members are refused. */
    archive_write_disk_set_options(w, ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                          ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                                          ARCHIVE_EXTRACT_NO_OVERWRITE);
    if (archive_read_open_memory(a, data, len) != ARCHIVE_OK) {
        rc = kf_err_set(err, KF_EPARSE, "builder output: %s", archive_error_string(a));
        goto out;
    }
    while ((r = archive_read_next_header(a, &ae)) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(ae);
        mode_t type = archive_entry_filetype(ae);
        char full[4096], show[128];

        kf_escape_to(show, sizeof(show), name ? name : "", name ? strlen(name) : 0);
        if (name == NULL || !member_path_ok(name))
            rc = kf_err_set(err, KF_EUNTRUSTED, "builder output: refused member '%s'", show);
        else if (type != AE_IFREG && type != AE_IFDIR)
            rc = kf_err_set(err, KF_EUNTRUSTED,
                            "builder output: '%s' is not a plain file or directory", show);
        else if ((total += (uint64_t)archive_entry_size(ae)) > max_bytes)
            rc = kf_err_set(err, KF_ETRUNC, "builder output: more than %llu bytes",
                            (unsigned long long)max_bytes);
        if (rc < 0)
            break;
        if (strcmp(name, ".") == 0 || strcmp(name, "./") == 0)
            continue;
        snprintf(full, sizeof(full), "%s/%s", dir, name);
        archive_entry_set_pathname(ae, full);
        archive_entry_set_perm(ae, type == AE_IFDIR ? 0755 : 0644);
        archive_entry_set_uid(ae, getuid());
        archive_entry_set_gid(ae, getgid());
        if (archive_write_header(w, ae) != ARCHIVE_OK ||
            (type == AE_IFREG && copy_data(a, w) < 0) ||
            archive_write_finish_entry(w) != ARCHIVE_OK) {
            rc = kf_err_set(err, KF_EIO, "builder output: %s: %s", show, archive_error_string(w));
            break;
        }
    }
    if (rc == 0 && r != ARCHIVE_EOF)
        rc = kf_err_set(err, KF_EPARSE, "builder output: %s", archive_error_string(a));
out:
    if (a)
        archive_read_free(a);
    if (w)
        archive_write_free(w);
    return rc;
}

int build_write_file_atomic(const char *path, const void *p, size_t n, unsigned mode,
                            struct kf_err *err)
{
    struct build_tmp t;
    int rc = build_tmp_open(&t, path, mode, err);

    if (rc < 0)
        return rc;
    if ((rc = build_tmp_write(&t, p, n, err)) < 0) {
        build_tmp_abort(&t);
        return rc;
    }
    return build_tmp_commit(&t, 1, err);
}
