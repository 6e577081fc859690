/* Module files: hashing, the checks made before a module is packaged, load
 * order from "depends", and stripping debug information with objcopy. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ------------------------------------------------------------------------ */
/* SHA-256                                                                   */

int build_sha256_file(const char *path, char hex[BUILD_SHA256_HEX], struct kf_err *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_MD_CTX *ctx = NULL;
    char *chunk = NULL;
    int fd = -1, rc = 0;
    ssize_t n;

    hex[0] = '\0';
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = kf_err_set(err, errno == ENOENT ? KF_ENOENT : KF_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    chunk = malloc(1 << 16);
    ctx = EVP_MD_CTX_new();
    if (chunk == NULL || ctx == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        rc = build_ssl_err(err, KF_EIO, "%s: SHA-256", path);
        goto out;
    }
    /* Streamed: a package or a module is hashed 64 KiB at a time. */
    for (;;) {
        n = read(fd, chunk, 1 << 16);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = kf_err_set(err, KF_EIO, "%s: read: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        if (EVP_DigestUpdate(ctx, chunk, (size_t)n) != 1) {
            rc = build_ssl_err(err, KF_EIO, "%s: SHA-256", path);
            goto out;
        }
    }
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1) {
        rc = build_ssl_err(err, KF_EIO, "%s: SHA-256", path);
        goto out;
    }
    build_hex(hex, md, mdlen);
out:
    EVP_MD_CTX_free(ctx);
    free(chunk);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Inspection                                                                */

/* The module name the kernel uses (/sys/module/NAME): '-' becomes '_'. */
static void kernel_name(char *s)
{
    for (; *s; s++)
        if (*s == '-')
            *s = '_';
}

int build_module_inspect(const char *path, const char *kernel_release, uint64_t stub_threshold,
                         struct build_module *m, struct kf_err *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    const char *base = strrchr(path, '/');
    struct build_map map = {NULL, 0, 0};
    char shown[160];
    size_t blen;
    int rc;

    memset(m, 0, sizeof(*m));
    base = base ? base + 1 : path;
    blen = strlen(base);
    if (blen <= 3 || blen - 3 > BUILD_MODNAME_MAX || strcmp(base + blen - 3, ".ko") != 0) {
        rc = kf_err_set(err, KF_EINVAL, "%s: a module file is named NAME.ko", path);
        goto out;
    }
    memcpy(m->file, base, blen + 1);
    memcpy(m->name, base, blen - 3);
    m->name[blen - 3] = '\0';
    if (!kf_modname_valid(m->name)) {
        rc = kf_err_set(err, KF_EUNTRUSTED, "%s: module file name '%s' is not valid", path,
                        kf_escape_to(shown, sizeof(shown), base, blen));
        goto out;
    }
    rc = build_map_open(&map, path, err);
    if (rc != 0)
        goto out;
    /* Size, hash and .modinfo all come from this one mapping, so they
     * describe the same bytes. */
    rc = build_modinfo_parse(map.data, map.len, path, &m->info, err);
    if (rc != 0)
        goto out;
    if (m->info.vermagic[0] == '\0') {
        rc = kf_err_set(err, KF_EPARSE, "%s: .modinfo has no vermagic", path);
        goto out;
    }
    if (!build_vermagic_matches(m->info.vermagic, kernel_release)) {
        rc = kf_err_set(err, KF_ENOMATCH, "%s: built for kernel '%.*s' (vermagic '%s'), not %s",
                        path, (int)strcspn(m->info.vermagic, " "), m->info.vermagic,
                        m->info.vermagic, kernel_release ? kernel_release : "(none)");
        goto out;
    }
    if (m->info.name[0] != '\0')
        snprintf(m->name, sizeof(m->name), "%s", m->info.name);
    kernel_name(m->name);
    m->size = map.len;
    if (EVP_Digest(map.data ? map.data : (const unsigned char *)"", map.len, md, &mdlen,
                   EVP_sha256(), NULL) != 1) {
        rc = build_ssl_err(err, KF_EIO, "%s: SHA-256", path);
        goto out;
    }
    build_hex(m->sha256, md, mdlen);
    if (stub_threshold == 0)
        stub_threshold = BUILD_STUB_THRESHOLD_DEFAULT;
    m->stub = m->info.depends[0] == '\0' && m->size < stub_threshold;
out:
    build_map_close(&map);
    if (rc != 0)
        memset(m, 0, sizeof(*m));
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Load order                                                                */

/* True if the comma-separated list deps names module name ('-' and '_'
 * alike, as modprobe treats them). */
static int depends_on(const char *deps, const char *name)
{
    size_t nlen = strlen(name);

    while (*deps) {
        size_t n = strcspn(deps, ","), i;
        if (n == nlen) {
            for (i = 0; i < n; i++) {
                char a = deps[i] == '-' ? '_' : deps[i];
                char b = name[i] == '-' ? '_' : name[i];
                if (a != b)
                    break;
            }
            if (i == n)
                return 1;
        }
        deps += n;
        if (*deps == ',')
            deps++;
    }
    return 0;
}

int build_load_order(const struct build_module *mods, size_t n, size_t *order, struct kf_err *err)
{
    unsigned char *placed = NULL;
    size_t k, i, j, best;
    int rc = 0;

    if (n == 0)
        return 0;
    placed = calloc(n, 1);
    if (placed == NULL)
        return kf_err_set(err, KF_ENOMEM, "out of memory");
    /* Kahn's algorithm, taking among the ready modules the one with the
     * smallest name: the order depends on the modules only, never on the
     * order a caller found their files in, so packages stay reproducible.
     * A package has a handful of modules: cubic is fine. */
    for (k = 0; k < n; k++) {
        best = n;
        for (i = 0; i < n; i++) {
            if (placed[i])
                continue;
            for (j = 0; j < n; j++)
                if (!placed[j] && depends_on(mods[i].info.depends, mods[j].name))
                    break;
            if (j == n && (best == n || strcmp(mods[i].name, mods[best].name) < 0))
                best = i;
        }
        if (best == n) {
            for (i = 0; i < n && placed[i]; i++)
                ;
            rc = kf_err_set(err, KF_EINVAL, "%s: circular module dependencies (depends=%s)",
                            mods[i].file, mods[i].info.depends);
            goto out;
        }
        placed[best] = 1;
        order[k] = best;
    }
out:
    free(placed);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Stripping                                                                 */

#define STDERR_KEEP 2048

/* A path objcopy cannot take for an option. Returns a malloc'ed string. */
static char *safe_arg(const char *path)
{
    char *s = NULL;

    if (path[0] == '-') {
        if (asprintf(&s, "./%s", path) < 0)
            s = NULL;
        return s;
    }
    return strdup(path);
}

/* True when a and b name the same existing file ("a.ko" and "./a.ko"). */
static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;

    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

int build_strip_debug(const char *in, const char *out, const char *objcopy, struct kf_err *err)
{
    const char *prog = objcopy && objcopy[0] ? objcopy : "objcopy";
    /* In place also when out is in under another name: a failure must
     * never unlink the input. */
    int inplace = out == NULL || strcmp(in, out) == 0 || same_file(in, out);
    posix_spawn_file_actions_t fa;
    int fa_ok = 0, pipefd[2] = {-1, -1}, status = 0, spawned = 0, rc = 0, e;
    char *ain = NULL, *aout = NULL, *argv[5];
    char shown[STDERR_KEEP / 4 + 8];
    struct build_modinfo mi;
    struct buf errout;
    char chunk[512];
    pid_t pid;
    ssize_t n;

    buf_init(&errout, STDERR_KEEP);
    ain = safe_arg(in);
    aout = inplace ? NULL : safe_arg(out);
    if (ain == NULL || (!inplace && aout == NULL)) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    argv[0] = (char *)prog;
    argv[1] = (char *)"--strip-debug";
    argv[2] = ain;
    argv[3] = aout; /* NULL in place: objcopy rewrites in itself */
    argv[4] = NULL;
    /* O_CLOEXEC so no other thread's child inherits the pipe and holds
     * it open past objcopy's exit. */
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        rc = kf_err_set(err, KF_EIO, "pipe: %s", strerror(errno));
        goto out;
    }
    if (posix_spawn_file_actions_init(&fa) != 0) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    fa_ok = 1;
    if (posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0) != 0 ||
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0) != 0 ||
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2) != 0) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    e = posix_spawnp(&pid, prog, &fa, NULL, argv, environ);
    if (e != 0) {
        rc = kf_err_set(err, e == ENOENT ? KF_ENOENT : KF_EIO, "%s: cannot run %s: %s", in, prog,
                        strerror(e));
        goto out;
    }
    spawned = 1;
    close(pipefd[1]);
    pipefd[1] = -1;
    /* Read to EOF (keeping the first STDERR_KEEP bytes) so objcopy never
     * blocks on a full pipe. */
    for (;;) {
        n = read(pipefd[0], chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        (void)buf_append(&errout, chunk, (size_t)n);
    }
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            rc = kf_err_set(err, KF_EIO, "%s: waitpid: %s", prog, strerror(errno));
            goto out;
        }
    }
    spawned = 0;
    while (errout.len > 0 && (errout.data[errout.len - 1] == '\n'))
        errout.data[--errout.len] = '\0';
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char how[48];
        if (WIFEXITED(status))
            snprintf(how, sizeof(how), "exit status %d", WEXITSTATUS(status));
        else
            snprintf(how, sizeof(how), "killed by signal %d", WTERMSIG(status));
        rc = kf_err_set(
            err, KF_ECMD, "%s --strip-debug %s: %s%s%s", prog, in, how, errout.len ? ": " : "",
            kf_escape_to(shown, sizeof(shown), errout.data ? errout.data : "", errout.len));
        goto out;
    }
    /* objcopy keeps unknown sections, but a wrong objcopy for the target
     * (x86 binutils on an arm64 module) can still write something that is
     * no module: check what the kernel will look for. */
    rc = build_modinfo_read(inplace ? in : out, &mi, err);
    if (rc != 0)
        kf_err_prefix(err, "after %s --strip-debug: ", prog);
out:
    if (spawned)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
    if (rc != 0 && !inplace && out != NULL)
        unlink(out);
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    buf_release(&errout);
    free(ain);
    free(aout);
    return rc;
}
