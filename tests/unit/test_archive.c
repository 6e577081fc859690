/* builder/archive.c: source tarballs for builders, unpacking their results. */
#include "builder.h"
#include "testutil.h"

#include <archive.h>
#include <archive_entry.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static void make_tree(const char *root)
{
    assert_int_equal(kft_sh("mkdir -p '%s/sub' && printf 'obj-m := a.o\\n' > '%s/Kbuild' && "
                            "printf 'int x;\\n' > '%s/sub/a.c' && printf '#!/bin/sh\\n' > "
                            "'%s/run.sh' && chmod 755 '%s/run.sh' && "
                            "printf junk > '%s/sub/a.o' && printf junk > '%s/a.ko' && "
                            "printf junk > '%s/.a.o.cmd'",
                            root, root, root, root, root, root, root, root),
                     0);
}

static void test_source_tar_reproducible(void **state)
{
    struct buf a, b;
    char sa[BUILD_SHA256_HEX], sb[BUILD_SHA256_HEX];
    struct kf_err err;
    (void)state;

    make_tree(kft_tmp("t1"));
    buf_init(&a, 0);
    buf_init(&b, 0);
    assert_int_equal(build_source_tar(kft_tmp("t1"), "src", 0, &a, sa, &err), 0);
    /* The same tree elsewhere, made later: the same bytes. */
    sleep(1);
    make_tree(kft_tmp("t2"));
    assert_int_equal(build_source_tar(kft_tmp("t2"), "src", 0, &b, sb, &err), 0);
    assert_string_equal(sa, sb);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    /* Build leftovers are left out. */
    assert_null(memmem(a.data, a.len, "src/sub/a.o", 11));
    assert_null(memmem(a.data, a.len, "src/a.ko", 8));
    assert_null(memmem(a.data, a.len, ".a.o.cmd", 8));
    assert_non_null(memmem(a.data, a.len, "src/sub/a.c", 11));
    /* A changed file changes the hash. */
    assert_int_equal(kft_sh("printf 'int y;\\n' > '%s/sub/a.c'", kft_tmp("t2")), 0);
    buf_reset(&b);
    assert_int_equal(build_source_tar(kft_tmp("t2"), "src", 0, &b, sb, &err), 0);
    assert_string_not_equal(sa, sb);
    /* Round trip through build_untar. */
    assert_int_equal(mkdir(kft_tmp("x1"), 0700), 0);
    assert_int_equal(build_untar(a.data, a.len, kft_tmp("x1"), 1 << 20, &err), 0);
    assert_int_equal(kft_sh("test -f '%s/src/run.sh' && grep -q 'int x' '%s/src/sub/a.c'",
                            kft_tmp("x1"), kft_tmp("x1")),
                     0);
    buf_release(&a);
    buf_release(&b);
}

static void test_source_tar_refuses_symlink(void **state)
{
    struct buf a;
    char sa[BUILD_SHA256_HEX];
    struct kf_err err;
    (void)state;

    make_tree(kft_tmp("t3"));
    assert_int_equal(kft_sh("ln -s /etc/passwd '%s/sub/link'", kft_tmp("t3")), 0);
    buf_init(&a, 0);
    assert_int_equal(build_source_tar(kft_tmp("t3"), "src", 0, &a, sa, &err), KF_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "sub/link"));
    buf_release(&a);
}

/* A tar in memory with one member of the given type and path. */
static void one_member(struct buf *out, const char *path, mode_t type, const char *link)
{
    struct archive *w = archive_write_new();
    struct archive_entry *e = archive_entry_new();
    size_t used = 0;

    assert_int_equal(buf_reserve(out, 1 << 16), 0);
    archive_write_set_format_pax_restricted(w);
    assert_int_equal(archive_write_open_memory(w, out->data, out->cap, &used), ARCHIVE_OK);
    archive_entry_set_pathname(e, path);
    archive_entry_set_filetype(e, type);
    archive_entry_set_perm(e, 0644);
    if (link)
        archive_entry_set_symlink(e, link);
    archive_entry_set_size(e, type == AE_IFREG ? 3 : 0);
    assert_int_equal(archive_write_header(w, e), ARCHIVE_OK);
    if (type == AE_IFREG)
        archive_write_data(w, "abc", 3);
    archive_write_close(w);
    archive_write_free(w);
    archive_entry_free(e);
    out->len = used;
}

static void test_untar_refuses(void **state)
{
    static const struct {
        const char *path;
        mode_t type;
        const char *link;
        int code;
    } cases[] = {
        {"../escape", AE_IFREG, NULL, KF_EUNTRUSTED},
        {"a/../../escape", AE_IFREG, NULL, KF_EUNTRUSTED},
        {"/etc/escape", AE_IFREG, NULL, KF_EUNTRUSTED},
        {"modules/x.ko", AE_IFLNK, "/etc/passwd", KF_EUNTRUSTED},
        {"dev", AE_IFCHR, NULL, KF_EUNTRUSTED},
    };
    struct kf_err err;
    size_t i;
    (void)state;

    assert_int_equal(mkdir(kft_tmp("x2"), 0700), 0);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b;
        buf_init(&b, 0);
        one_member(&b, cases[i].path, cases[i].type, cases[i].link);
        assert_int_equal(build_untar(b.data, b.len, kft_tmp("x2"), 1 << 20, &err), cases[i].code);
        buf_release(&b);
    }
    /* Nothing was written. */
    assert_int_equal(kft_sh("[ -z \"$(ls -A '%s')\" ]", kft_tmp("x2")), 0);
    {
        struct buf b;
        buf_init(&b, 0);
        one_member(&b, "./build.log", AE_IFREG, NULL);
        assert_int_equal(build_untar(b.data, b.len, kft_tmp("x2"), 2, &err), KF_ETRUNC);
        assert_int_equal(build_untar(b.data, b.len, kft_tmp("x2"), 1 << 20, &err), 0);
        assert_int_equal(kft_sh("grep -q abc '%s/build.log'", kft_tmp("x2")), 0);
        buf_release(&b);
    }
}

static void test_write_file_atomic(void **state)
{
    struct kf_err err;
    struct stat st;
    (void)state;

    assert_int_equal(build_write_file_atomic(kft_tmp("f.json"), "{}\n", 3, 0644, &err), 0);
    assert_int_equal(build_write_file_atomic(kft_tmp("f.json"), "[1]\n", 4, 0644, &err), 0);
    assert_int_equal(stat(kft_tmp("f.json"), &st), 0);
    assert_int_equal(st.st_size, 4);
    assert_int_equal(st.st_mode & 0777, 0644);
    /* no temporary file left beside it */
    assert_int_equal(kft_sh("[ $(ls -A '%s' | grep -c f.json) = 1 ]", kft_tmpdir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_source_tar_reproducible),
        cmocka_unit_test(test_source_tar_refuses_symlink),
        cmocka_unit_test(test_untar_refuses),
        cmocka_unit_test(test_write_file_atomic),
    };

    return cmocka_run_group_tests(tests, kft_setup_tmpdir, kft_teardown_tmpdir);
}
