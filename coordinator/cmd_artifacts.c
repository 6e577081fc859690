/* kfleet artifacts list|show|verify|rm|gc, and kfleet keys new.
 *
 * The catalog (state database) says what the store holds; verify checks
 * that the files still say the same: the tar.gz's sha256 against the
 * catalog and its .sha256 file, every module inside against the
 * package's own metadata.json, and, when the configuration has a signing
 * certificate, every signed module's signature. gc removes what the
 * catalog does not know (temporary files of an interrupted write, files of
 * a removed artifact) and never touches a cataloged artifact. */
#include "coordinator.h"
#include "builder.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct art_ctx {
    struct coord_opts *o;
    struct coord_config cfg;
    struct coord_db db;
    char *state_dir;
    struct coord_artifact *v;
    size_t n;
};

static int ctx_open(struct art_ctx *c, struct coord_opts *o)
{
    struct kf_err err;

    memset(c, 0, sizeof(*c));
    c->o = o;
    coord_config_init(&c->cfg);
    c->state_dir = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
    if (c->state_dir == NULL)
        return KF_EXIT_ERROR;
    if (coord_config_load(&c->cfg, o->config, c->state_dir, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_USAGE;
    }
    if (coord_db_open(&c->db, c->state_dir, &err) < 0 ||
        coord_db_artifact_list(&c->db, o->profile, o->driver, o->nkernels ? o->kernels[0] : NULL,
                               &c->v, &c->n, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_ERROR;
    }
    return 0;
}

static void ctx_close(struct art_ctx *c)
{
    free(c->v);
    coord_db_close(&c->db);
    coord_config_release(&c->cfg);
    free(c->state_dir);
}

static void sort_artifacts(struct coord_artifact *v, size_t n)
{
    size_t i, j;

    for (i = 1; i < n; i++) /* insertion sort: catalogs are small */
        for (j = i; j > 0; j--) {
            const struct coord_artifact *a = &v[j - 1], *b = &v[j];
            int c = strcmp(a->profile, b->profile);
            if (c == 0)
                c = strverscmp(a->driver, b->driver);
            if (c == 0)
                c = strverscmp(a->kernel, b->kernel);
            if (c <= 0)
                break;
            struct coord_artifact t = v[j - 1];
            v[j - 1] = v[j];
            v[j] = t;
        }
}

static json_t *artifact_json(const struct coord_artifact *a)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:{s:s,s:s},s:s,s:s,s:I,s:I,s:I}", "profile", a->profile,
                     "driver", a->driver, "kernel", a->kernel, "arch", a->arch, "os", "id",
                     a->os_id, "version", a->os_version, "path", a->path, "sha256", a->sha256,
                     "size", (json_int_t)a->size, "build_id", (json_int_t)a->build_id, "created_at",
                     (json_int_t)a->created_at);
}

static int art_list(struct art_ctx *c)
{
    size_t i;

    if (c->o->json) {
        json_t *arr = json_array();
        for (i = 0; i < c->n; i++)
            json_array_append_new(arr, artifact_json(&c->v[i]));
        json_dumpf(arr, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(arr);
        return KF_EXIT_OK;
    }
    if (c->n == 0) {
        printf("no artifacts in %s\n", c->cfg.store);
        return KF_EXIT_OK;
    }
    printf("%-12s %-14s %-28s %-8s %-10s %9s  %-20s %s\n", "PROFILE", "DRIVER", "KERNEL", "ARCH",
           "OS", "SIZE", "CREATED", "SHA256");
    for (i = 0; i < c->n; i++) {
        const struct coord_artifact *a = &c->v[i];
        char when[32], os[140];
        time_t t = (time_t)a->created_at;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%SZ", &tm);
        snprintf(os, sizeof(os), "%s %s", a->os_id, a->os_version);
        printf("%-12s %-14s %-28s %-8s %-10s %8.1fK  %-20s %.12s\n", a->profile, a->driver,
               a->kernel, a->arch, os, (double)a->size / 1024, when, a->sha256);
    }
    printf("%zu artifact%s in %s\n", c->n, c->n == 1 ? "" : "s", c->cfg.store);
    return KF_EXIT_OK;
}

/* The directory of an artifact's files: where its tar.gz is. */
static void art_dir(const struct coord_artifact *a, char *out, size_t n)
{
    const char *slash = strrchr(a->path, '/');

    snprintf(out, n, "%.*s", slash ? (int)(slash - a->path) : 1, slash ? a->path : ".");
}

static int art_show(struct art_ctx *c)
{
    size_t i;
    int rc = KF_EXIT_OK;

    if (c->n == 0) {
        fprintf(stderr, "kfleet: no artifact matches (see kfleet artifacts list)\n");
        return KF_EXIT_HOSTS;
    }
    for (i = 0; i < c->n; i++) {
        const struct coord_artifact *a = &c->v[i];
        char dir[4096], md[4200];
        json_error_t je;
        json_t *m, *doc;
        art_dir(a, dir, sizeof(dir));
        snprintf(md, sizeof(md), "%s/metadata.json", dir);
        m = json_load_file(md, 0, &je);
        if (m == NULL) {
            fprintf(stderr, "kfleet: %s: %s\n", md, je.text);
            rc = KF_EXIT_HOSTS;
        }
        doc = artifact_json(a);
        json_object_set_new(doc, "metadata", m ? m : json_null());
        json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
        fputc('\n', stdout);
        json_decref(doc);
    }
    return rc;
}

/* ---- verify ---------------------------------------------------------------- */

static int sha_file_says(const char *path, char *out, size_t n)
{
    char line[512];
    FILE *f = fopen(path, "r");

    if (f == NULL)
        return -1;
    if (fgets(line, sizeof(line), f) == NULL) {
        fclose(f);
        return -1;
    }
    fclose(f);
    snprintf(out, n, "%.64s", line);
    return 0;
}

struct member {
    char name[256];
    char sha256[65];
    char *tmp; /* a copy on disk, for the signature check */
};

/* Checks one package's contents; problems are appended to why. */
static void verify_archive(struct art_ctx *c, const struct coord_artifact *a, struct buf *why)
{
    struct archive *ar = archive_read_new();
    struct archive_entry *ae;
    struct member *mem = NULL;
    size_t nmem = 0, i, k;
    json_t *md = NULL, *m;
    char tmpdir[4200];
    int r;

    snprintf(tmpdir, sizeof(tmpdir), "%s/tmp/verify-XXXXXX", c->state_dir);
    {
        char base[4200];
        snprintf(base, sizeof(base), "%s/tmp", c->state_dir);
        mkdir(base, 0700);
    }
    if (mkdtemp(tmpdir) == NULL) {
        buf_printf(why, "cannot make a temporary directory: %s; ", strerror(errno));
        archive_read_free(ar);
        return;
    }
    archive_read_support_format_tar(ar);
    archive_read_support_filter_gzip(ar);
    if (archive_read_open_filename(ar, a->path, 65536) != ARCHIVE_OK) {
        buf_printf(why, "cannot read the archive: %s; ", archive_error_string(ar));
        goto out;
    }
    while ((r = archive_read_next_header(ar, &ae)) == ARCHIVE_OK) {
        const char *p = archive_entry_pathname(ae), *rel = strchr(p, '/');
        if (rel == NULL)
            continue;
        rel++;
        if (strcmp(rel, "metadata.json") == 0) {
            struct buf b;
            char chunk[8192];
            la_ssize_t n;
            json_error_t je;
            buf_init(&b, 4 << 20);
            while ((n = archive_read_data(ar, chunk, sizeof(chunk))) > 0)
                buf_append(&b, chunk, (size_t)n);
            md = json_loadb(b.data ? b.data : "", b.len, 0, &je);
            if (md == NULL)
                buf_printf(why, "metadata.json in the archive does not parse: %s; ", je.text);
            buf_release(&b);
        } else if (strncmp(rel, "modules/", 8) == 0 && archive_entry_filetype(ae) == AE_IFREG) {
            EVP_MD_CTX *h = EVP_MD_CTX_new();
            unsigned char dg[32], chunk[65536];
            unsigned dl = 0;
            la_ssize_t n;
            char tp[4400];
            int fd;
            struct member *nm = realloc(mem, (nmem + 1) * sizeof(*mem));
            if (nm == NULL || h == NULL) {
                EVP_MD_CTX_free(h);
                buf_puts(why, "out of memory; ");
                goto out;
            }
            mem = nm;
            memset(&mem[nmem], 0, sizeof(mem[nmem]));
            snprintf(mem[nmem].name, sizeof(mem[nmem].name), "%s", rel + 8);
            snprintf(tp, sizeof(tp), "%s/%zu.ko", tmpdir, nmem);
            fd = open(tp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            EVP_DigestInit_ex(h, EVP_sha256(), NULL);
            while ((n = archive_read_data(ar, chunk, sizeof(chunk))) > 0) {
                EVP_DigestUpdate(h, chunk, (size_t)n);
                if (fd >= 0 && write(fd, chunk, (size_t)n) != n) {
                    close(fd);
                    fd = -1;
                }
            }
            EVP_DigestFinal_ex(h, dg, &dl);
            EVP_MD_CTX_free(h);
            for (k = 0; k < dl; k++)
                snprintf(mem[nmem].sha256 + 2 * k, 3, "%02x", dg[k]);
            if (fd >= 0) {
                close(fd);
                mem[nmem].tmp = strdup(tp);
            }
            nmem++;
        }
    }
    if (r != ARCHIVE_EOF)
        buf_printf(why, "archive damaged: %s; ", archive_error_string(ar));
    if (md == NULL) {
        if (r == ARCHIVE_EOF)
            buf_puts(why, "no metadata.json in the archive; ");
        goto out;
    }
    json_array_foreach(json_object_get(md, "modules"), k, m)
    {
        const char *file = json_string_value(json_object_get(m, "file"));
        const char *sha = json_string_value(json_object_get(m, "sha256"));
        int found = 0;
        for (i = 0; file && i < nmem; i++) {
            if (strcmp(mem[i].name, file) != 0)
                continue;
            found = 1;
            if (sha == NULL || strcmp(sha, mem[i].sha256) != 0)
                buf_printf(why, "modules/%s: sha256 %.12s, metadata.json says %.12s; ", file,
                           mem[i].sha256, sha ? sha : "(none)");
            if (mem[i].tmp != NULL) {
                /* The module's own vermagic, as the kernel's loader reads it. */
                struct build_modinfo mi;
                struct kf_err err;
                kf_err_clear(&err);
                if (build_modinfo_read(mem[i].tmp, &mi, &err) < 0)
                    buf_printf(why, "modules/%s: %s; ", file, kf_err_msg(&err));
                else if (!build_vermagic_matches(mi.vermagic, a->kernel))
                    buf_printf(why, "modules/%s is built for '%.64s', not kernel %s; ", file,
                               mi.vermagic, a->kernel);
            }
            if (json_is_true(json_object_get(m, "signed")) && c->cfg.sign_cert && mem[i].tmp) {
                struct kf_err err;
                if (build_verify_module_signature(mem[i].tmp, c->cfg.sign_cert, &err) < 0)
                    buf_printf(why, "modules/%s: signature: %s; ", file, kf_err_msg(&err));
            }
        }
        if (!found)
            buf_printf(why, "modules/%s is in metadata.json but not in the archive; ",
                       file ? file : "?");
    }
    if (nmem != json_array_size(json_object_get(md, "modules")))
        buf_printf(why, "the archive has %zu modules, metadata.json lists %zu; ", nmem,
                   json_array_size(json_object_get(md, "modules")));
    if (strcmp(json_string_value(json_object_get(md, "kernel_version")) ?: "", a->kernel) != 0)
        buf_printf(why, "metadata.json is for kernel %s, the catalog says %s; ",
                   json_string_value(json_object_get(md, "kernel_version")) ?: "?", a->kernel);
out:
    for (i = 0; i < nmem; i++) {
        if (mem[i].tmp)
            unlink(mem[i].tmp);
        free(mem[i].tmp);
    }
    free(mem);
    rmdir(tmpdir);
    json_decref(md);
    archive_read_free(ar);
}

static int art_verify(struct art_ctx *c)
{
    size_t i, bad = 0;

    for (i = 0; i < c->n; i++) {
        const struct coord_artifact *a = &c->v[i];
        char sha[BUILD_SHA256_HEX], said[80], sidecar[4200];
        struct kf_err err;
        struct stat st;
        struct buf why;

        buf_init(&why, 0);
        if (stat(a->path, &st) < 0) {
            buf_printf(&why, "%s: %s; ", a->path, strerror(errno));
        } else {
            if ((long long)st.st_size != a->size)
                buf_printf(&why, "size %lld, the catalog says %lld; ", (long long)st.st_size,
                           a->size);
            if (build_sha256_file(a->path, sha, &err) < 0)
                buf_printf(&why, "%s; ", kf_err_msg(&err));
            else if (strcmp(sha, a->sha256) != 0)
                buf_printf(&why, "sha256 %.12s, the catalog says %.12s; ", sha, a->sha256);
            snprintf(sidecar, sizeof(sidecar), "%s.sha256", a->path);
            if (sha_file_says(sidecar, said, sizeof(said)) < 0)
                buf_printf(&why, "%s missing; ", sidecar);
            else if (strcmp(said, a->sha256) != 0)
                buf_printf(&why, "%s says %.12s, the catalog %.12s; ", sidecar, said, a->sha256);
            verify_archive(c, a, &why);
        }
        if (why.len) {
            bad++;
            printf("BAD  %s %s %s: %.*s\n", a->profile, a->driver, a->kernel,
                   (int)(why.len >= 2 ? why.len - 2 : why.len), why.data);
        } else {
            printf("ok   %s %s %s  %.12s\n", a->profile, a->driver, a->kernel, a->sha256);
        }
        buf_release(&why);
    }
    printf("%zu artifact%s verified, %zu bad\n", c->n, c->n == 1 ? "" : "s", bad);
    return bad ? KF_EXIT_HOSTS : KF_EXIT_OK;
}

/* ---- rm and gc -------------------------------------------------------------- */

static int art_rm(struct art_ctx *c)
{
    struct kf_err err;
    size_t i;

    if (c->o->driver == NULL) {
        fprintf(stderr, "kfleet: artifacts rm needs --driver VERSION (and --kernel K for one "
                        "kernel)\n");
        return KF_EXIT_USAGE;
    }
    if (c->n == 0) {
        fprintf(stderr, "kfleet: no artifact matches (see kfleet artifacts list)\n");
        return KF_EXIT_HOSTS;
    }
    for (i = 0; i < c->n; i++) {
        const struct coord_artifact *a = &c->v[i];
        char dir[4096], p[4300];
        /* The catalog row first: a key not in the catalog is not offered
         * to deploys even when removing a file below fails. */
        if (coord_db_artifact_del(&c->db, a, &err) < 0) {
            fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
            return KF_EXIT_ERROR;
        }
        art_dir(a, dir, sizeof(dir));
        unlink(a->path);
        snprintf(p, sizeof(p), "%s.sha256", a->path);
        unlink(p);
        snprintf(p, sizeof(p), "%s/metadata.json", dir);
        unlink(p);
        rmdir(dir); /* only when empty */
        printf("removed %s %s %s (%s)\n", a->profile, a->driver, a->kernel, a->path);
    }
    if (coord_store_write_index(&c->db, &c->cfg, (long long)time(NULL), &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_ERROR;
    }
    return KF_EXIT_OK;
}

static struct art_ctx *gc_ctx;
static size_t gc_removed;

static int gc_known(const char *path)
{
    size_t i;

    for (i = 0; i < gc_ctx->n; i++) {
        const struct coord_artifact *a = &gc_ctx->v[i];
        char dir[4096];
        size_t pl = strlen(a->path);
        art_dir(a, dir, sizeof(dir));
        if (strncmp(path, a->path, pl) == 0 &&
            (path[pl] == '\0' || strcmp(path + pl, ".sha256") == 0))
            return 1;
        if (strncmp(path, dir, strlen(dir)) == 0 &&
            strcmp(path + strlen(dir), "/metadata.json") == 0)
            return 1;
    }
    return 0;
}

static int gc_visit(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    const char *base = p + f->base;

    (void)st;
    if (f->level == 0)
        return 0;
    if (flag == FTW_DP) {
        if (rmdir(p) == 0) /* empty directories only */
            printf("removed empty directory %s\n", p);
        return 0;
    }
    if (f->level == 1 && strcmp(base, "index.json") == 0)
        return 0;
    if (!gc_known(p)) {
        if (unlink(p) == 0) {
            printf("removed %s%s\n", p, base[0] == '.' ? " (an interrupted write)" : "");
            gc_removed++;
        } else {
            fprintf(stderr, "kfleet: cannot remove %s: %s\n", p, strerror(errno));
        }
    }
    return 0;
}

static int art_gc(struct art_ctx *c)
{
    char tmp[4200];
    struct kf_err err;

    /* Every artifact, not just the filtered ones. */
    free(c->v);
    c->v = NULL;
    if (coord_db_artifact_list(&c->db, NULL, NULL, NULL, &c->v, &c->n, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_ERROR;
    }
    gc_ctx = c;
    gc_removed = 0;
    if (access(c->cfg.store, F_OK) == 0)
        nftw(c->cfg.store, gc_visit, 16, FTW_DEPTH | FTW_PHYS);
    snprintf(tmp, sizeof(tmp), "%s/tmp", c->state_dir);
    if (access(tmp, F_OK) == 0)
        nftw(tmp, gc_visit, 16, FTW_DEPTH | FTW_PHYS);
    printf("%zu file%s removed; %zu artifact%s kept\n", gc_removed, gc_removed == 1 ? "" : "s",
           c->n, c->n == 1 ? "" : "s");
    return KF_EXIT_OK;
}

int cmd_artifacts(struct coord_opts *o)
{
    struct art_ctx c;
    const char *sub = o->nargs > 0 ? o->args[0] : "list";
    int rc;

    if (o->nargs > 1 || (strcmp(sub, "list") && strcmp(sub, "show") && strcmp(sub, "verify") &&
                         strcmp(sub, "rm") && strcmp(sub, "gc"))) {
        fprintf(stderr, "kfleet: usage: kfleet artifacts list|show|verify|rm|gc [--profile P] "
                        "[--driver V] [--kernel K]\n");
        return KF_EXIT_USAGE;
    }
    rc = ctx_open(&c, o);
    if (rc == 0) {
        sort_artifacts(c.v, c.n);
        if (strcmp(sub, "list") == 0)
            rc = art_list(&c);
        else if (strcmp(sub, "show") == 0)
            rc = art_show(&c);
        else if (strcmp(sub, "verify") == 0)
            rc = art_verify(&c);
        else if (strcmp(sub, "rm") == 0)
            rc = art_rm(&c);
        else
            rc = art_gc(&c);
    }
    ctx_close(&c);
    return rc;
}

/* kfleet keys new [--dir D] [--type rsa|rsa2048|rsa3072|rsa4096|p384] [--cn NAME] [--days N] */
int cmd_keys(struct coord_opts *o)
{
    struct kf_err err;
    struct buf mok;
    char *state_dir = NULL, dir[4200];
    int rc;

    if (o->nargs != 1 || strcmp(o->args[0], "new") != 0) {
        fprintf(stderr, "kfleet: usage: kfleet keys new [--dir DIR] "
                        "[--type rsa|rsa2048|rsa3072|rsa4096|p384] [--cn NAME] [--days N]\n");
        return KF_EXIT_USAGE;
    }
    if (o->dir == NULL) {
        state_dir = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
        if (state_dir == NULL)
            return KF_EXIT_ERROR;
        snprintf(dir, sizeof(dir), "%s/keys", state_dir);
        free(state_dir);
        mkdir(dir, 0700);
    } else {
        snprintf(dir, sizeof(dir), "%s", o->dir);
    }
    buf_init(&mok, 0);
    rc = build_keys_new(dir, o->key_type ? o->key_type : "rsa",
                        o->cn ? o->cn : "kfleet module signing key", o->days ? o->days : 3650, &mok,
                        &err);
    if (rc < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        buf_release(&mok);
        return rc == KF_EEXIST || rc == KF_EINVAL || rc == KF_EUNSUPPORTED ? KF_EXIT_USAGE
                                                                           : KF_EXIT_ERROR;
    }
    printf("created %s/signing_key.pem (private, 0600), %s/signing_cert.der and "
           "%s/signing_cert.pem\n",
           dir, dir, dir);
    printf("\nEnrol the certificate on each Secure Boot node (then reboot and confirm in "
           "MokManager):\n  %s\n",
           buf_cstr(&mok));
    printf("\nSign builds with it (kfleet.yml):\n  signing: {key: %s/signing_key.pem, cert: "
           "%s/signing_cert.der}\n",
           dir, dir);
    buf_release(&mok);
    return KF_EXIT_OK;
}
