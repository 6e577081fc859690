#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "common.h"
#include "testutil.h"

char kft_tmpdir[64];

int kft_setup_tmpdir(void **state)
{
    (void)state;
    snprintf(kft_tmpdir, sizeof(kft_tmpdir), "/tmp/kf-test-XXXXXX");
    assert_non_null(mkdtemp(kft_tmpdir));
    return 0;
}

int kft_teardown_tmpdir(void **state)
{
    (void)state;
    assert_int_equal(kft_sh("rm -rf '%s'", kft_tmpdir), 0);
    return 0;
}

const char *kft_tmp(const char *name)
{
    static char path[8][512];
    static int next;

    next = (next + 1) % 8;
    snprintf(path[next], sizeof(path[next]), "%s/%s", kft_tmpdir, name);
    return path[next];
}

unsigned char *kft_read_all(const char *path, size_t *len)
{
    struct buf b;
    char chunk[4096];
    size_t n;
    FILE *fp = fopen(path, "rb");

    if (fp == NULL)
        fail_msg("cannot open %s", path);
    buf_init(&b, 0);
    while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0)
        assert_int_equal(buf_append(&b, chunk, n), 0);
    fclose(fp);
    return (unsigned char *)buf_detach(&b, len);
}

void kft_write_all(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");

    assert_non_null(fp);
    assert_int_equal(fwrite(p, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

int kft_sh(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    int st;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int kft_have(const char *tool)
{
    return kft_sh("command -v %s >/dev/null 2>&1", tool) == 0;
}
