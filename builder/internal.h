/* Helpers shared by the files of builder/ and by nothing else. This is not
 * an interface: only the .c files of builder/ include it; everything other modules may
 * call is in builder.h. */
#ifndef KF_BUILDER_INTERNAL_H
#define KF_BUILDER_INTERNAL_H

#include "builder.h"

#include <stddef.h>
#include <sys/types.h>

/* A file mapped read-only. An empty file has data NULL and len 0. */
struct build_map {
    const unsigned char *data;
    size_t len;
    mode_t mode; /* permission bits of the file */
};

/* Maps a regular file read-only (a .ko can be 90 MB: it is never copied
 * into memory). Anything but a regular file is refused. */
int build_map_open(struct build_map *m, const char *path, struct kf_err *err);
void build_map_close(struct build_map *m);

/* A file written under a temporary name in the directory of its final
 * path, made visible by build_tmp_commit() (fsync, rename, fsync of the
 * directory) or removed by build_tmp_abort(). Either way, call one of the
 * two once build_tmp_open() succeeded. */
struct build_tmp {
    int fd;
    char *tmp_path;
    char *final_path;
};

int build_tmp_open(struct build_tmp *t, const char *final_path, mode_t mode, struct kf_err *err);
/* Writes all of p, retrying short writes. */
int build_tmp_write(struct build_tmp *t, const void *p, size_t n, struct kf_err *err);
/* fsync and rename; with sync_dir the directory is fsynced too. */
int build_tmp_commit(struct build_tmp *t, int sync_dir, struct kf_err *err);
void build_tmp_abort(struct build_tmp *t);

/* fsyncs the directory that holds path. */
int build_fsync_parent(const char *path, struct kf_err *err);

/* write(2) all of p to fd, retrying on EINTR and short writes; -errno-style
 * failure is reported as KF_EIO with errno left set. */
int build_write_all(int fd, const void *p, size_t n);

/* Sets err to code with the message fmt, followed by ": " and the oldest
 * OpenSSL error of this thread's queue (when there is one), and clears the
 * queue. Returns code. */
int build_ssl_err(struct kf_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A firmware file name for a package: a relative path of components of
 * [A-Za-z0-9._+-], none empty or starting with '.', at most 200 bytes. */
int build_fw_name_valid(const char *s);

/* Lower-case hex of n bytes into out (2n + 1 bytes). */
void build_hex(char *out, const unsigned char *p, size_t n);

#endif
