/* dkms.conf without bash (builder/dkms.c): the fixture package, texts
 * modelled on the dkms.conf files NVIDIA, Debian and OpenZFS ship, the
 * bash rules of the accepted subset, DKMS's exclusivity test, and every
 * refusal with the line it names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "dkms.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define WHAT "pkg/dkms.conf"

/* Three lines that make a complete package, for the error cases: the line
 * under test is line 4. */
#define HDR "PACKAGE_NAME=pkg\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=mod\n"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

static void assert_display_safe(const char *msg)
{
    const unsigned char *p;

    for (p = (const unsigned char *)msg; *p; p++)
        if (*p < 0x20 || *p >= 0x7f)
            fail_msg("raw byte 0x%02x in message: %s", *p, msg);
}

static void parse_ok(const char *text, struct build_dkms *d)
{
    struct kf_err err;
    int rc = build_dkms_parse(text, strlen(text), WHAT, d, &err);

    if (rc != 0)
        fail_msg("parse failed (%d): %s\n--- text:\n%s", rc, err.msg, text);
}

/* Parses n bytes, expects code and a message holding where (the
 * "WHAT:LINE:" prefix) and needle; d must come back empty. */
static void check_error_n(const char *text, size_t n, int code, const char *where,
                          const char *needle)
{
    struct build_dkms d;
    struct kf_err err;
    int rc = build_dkms_parse(text, n, WHAT, &d, &err);

    if (rc != code)
        fail_msg("expected %d, got %d (%s)\n--- text:\n%.*s", code, rc, rc ? err.msg : "", (int)n,
                 text);
    if (where != NULL && strstr(err.msg, where) == NULL)
        fail_msg("\"%s\" not in message: %s", where, err.msg);
    if (needle != NULL && strstr(err.msg, needle) == NULL)
        fail_msg("\"%s\" not in message: %s", needle, err.msg);
    assert_int_equal(err.code, code);
    assert_display_safe(err.msg);
    assert_null(d.package_name);
    assert_null(d.package_version);
    assert_null(d.modules);
    assert_int_equal(d.nmodules, 0);
    assert_null(d.make);
    assert_int_equal(d.autoinstall, -1);
}

static void check_error(const char *text, const char *where, const char *needle)
{
    check_error_n(text, strlen(text), KF_EPARSE, where, needle);
}

static void assert_module(const struct build_dkms *d, size_t i, const char *name, const char *built,
                          const char *dest, const char *dest_name)
{
    assert_true(i < d->nmodules);
    assert_string_equal(d->modules[i].name, name);
    assert_string_equal(d->modules[i].built_location, built);
    assert_string_equal(d->modules[i].dest_location, dest);
    assert_string_equal(d->modules[i].dest_name, dest_name);
}

/* ------------------------------------------------------------------------ */
/* Real packages                                                             */

static void test_fixture(void **state)
{
    char path[1024], why[256];
    struct build_dkms d;
    struct kf_err err;
    static const char *const names[] = {"kfleet_core", "kfleet_modeset", "kfleet_drm",
                                        "kfleet_uvm"};
    size_t i;

    (void)state;
    snprintf(path, sizeof(path), "%s/kmod/kfleet-test-driver/dkms.conf", KF_FIXTURES);
    assert_int_equal(build_dkms_load(path, &d, &err), 0);
    assert_string_equal(d.package_name, "kfleet-test-driver");
    assert_string_equal(d.package_version, "1.0.0");
    assert_int_equal(d.nmodules, 4);
    for (i = 0; i < 4; i++)
        assert_module(&d, i, names[i], ".", "/updates/dkms", "");
    /* Kept for the container's bash: ${PACKAGE_VERSION} too. */
    assert_string_equal(d.make, "make KERNEL_SRC=${kernel_source_dir} "
                                "KFLEET_DRIVER_VERSION=${PACKAGE_VERSION} modules");
    assert_string_equal(d.clean, "make KERNEL_SRC=${kernel_source_dir} clean");
    assert_null(d.exclusive_kernel);
    assert_null(d.exclusive_arch);
    assert_int_equal(d.autoinstall, 1);
    assert_int_equal(build_dkms_applies(&d, "6.1.0-47-amd64", "x86_64", why, sizeof(why), &err), 1);
    assert_string_equal(why, "");
    build_dkms_release(&d);
    build_dkms_release(&d); /* twice is fine */
    assert_null(d.package_name);
    assert_int_equal(d.autoinstall, -1);
}

/* What nvidia-installer writes from its dkms.conf template. */
static const char nvidia_conf[] =
    "# DKMS configuration for the NVIDIA kernel module.  -*- sh -*-\n"
    "\n"
    "# The version of DKMS used must be at least 2.1.0.0 to support multiple\n"
    "# modules per package.\n"
    "\n"
    "PACKAGE_NAME=\"nvidia\"\n"
    "PACKAGE_VERSION=\"550.54.15\"\n"
    "AUTOINSTALL=\"yes\"\n"
    "\n"
    "# By default, DKMS will add KERNELRELEASE to the make command line; however,\n"
    "# this will cause the kernel module build to infer that it is being built\n"
    "# as part of the kernel build, and the Kbuild sanity checks will fail.\n"
    "MAKE[0]=\"'make' -j16 NV_EXCLUDE_BUILD_MODULES='' KERNEL_UNAME=${kernelver} "
    "IGNORE_CC_MISMATCH=1 modules\"\n"
    "\n"
    "# The list of kernel modules will be generated by nvidia-installer at runtime.\n"
    "BUILT_MODULE_NAME[0]=\"nvidia\"\n"
    "DEST_MODULE_LOCATION[0]=\"/kernel/drivers/video\"\n"
    "BUILT_MODULE_NAME[1]=\"nvidia-uvm\"\n"
    "DEST_MODULE_LOCATION[1]=\"/kernel/drivers/video\"\n"
    "BUILT_MODULE_NAME[2]=\"nvidia-modeset\"\n"
    "DEST_MODULE_LOCATION[2]=\"/kernel/drivers/video\"\n"
    "BUILT_MODULE_NAME[3]=\"nvidia-drm\"\n"
    "DEST_MODULE_LOCATION[3]=\"/kernel/drivers/video\"\n"
    "BUILT_MODULE_NAME[4]=\"nvidia-peermem\"\n"
    "DEST_MODULE_LOCATION[4]=\"/kernel/drivers/video\"\n";

static void test_nvidia(void **state)
{
    static const char *const names[] = {"nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm",
                                        "nvidia-peermem"};
    struct build_dkms d;
    struct kf_err err;
    size_t i;

    (void)state;
    parse_ok(nvidia_conf, &d);
    assert_string_equal(d.package_name, "nvidia");
    assert_string_equal(d.package_version, "550.54.15");
    assert_int_equal(d.nmodules, 5);
    for (i = 0; i < 5; i++)
        assert_module(&d, i, names[i], "", "/kernel/drivers/video", "");
    assert_string_equal(d.make, "'make' -j16 NV_EXCLUDE_BUILD_MODULES='' "
                                "KERNEL_UNAME=${kernelver} IGNORE_CC_MISMATCH=1 modules");
    assert_null(d.clean);
    assert_int_equal(d.autoinstall, 1);
    assert_int_equal(build_dkms_applies(&d, "6.12.117+deb12-amd64", "aarch64", NULL, 0, &err), 1);
    build_dkms_release(&d);
}

/* Debian's nvidia-kernel-dkms: renamed modules, a make command continued
 * over two lines inside its quotes, ${parallel_jobs+-j$parallel_jobs}, and
 * an exclusivity pattern. */
static const char debian_nvidia_conf[] =
    "PACKAGE_NAME=\"nvidia-current\"\n"
    "PACKAGE_VERSION=\"525.147.05\"\n"
    "CLEAN=\"make clean\"\n"
    "BUILT_MODULE_NAME[0]=\"nvidia\"\n"
    "DEST_MODULE_NAME[0]=\"$PACKAGE_NAME\"\n"
    "BUILT_MODULE_LOCATION[0]=\"\"\n"
    "DEST_MODULE_LOCATION[0]=\"/updates/dkms\"\n"
    "BUILT_MODULE_NAME[1]=\"nvidia-modeset\"\n"
    "DEST_MODULE_NAME[1]=\"${PACKAGE_NAME}-modeset\"\n"
    "DEST_MODULE_LOCATION[1]=\"/updates/dkms\"\n"
    "BUILT_MODULE_NAME[2]=\"nvidia-drm\"\n"
    "DEST_MODULE_NAME[2]=\"$PACKAGE_NAME-drm\"\n"
    "DEST_MODULE_LOCATION[2]=\"/updates/dkms\"\n"
    "MAKE[0]=\"env NV_VERBOSE=1 \\\n"
    "    make ${parallel_jobs+-j$parallel_jobs} modules KERNEL_UNAME=${kernelver}\"\n"
    "AUTOINSTALL=yes\n"
    "BUILD_EXCLUSIVE_KERNEL=\"^(4\\.(1[5-9]|[2-9][0-9])|[5-9])\"\n";

static void test_debian_nvidia(void **state)
{
    struct build_dkms d;
    struct kf_err err;
    char why[256];

    (void)state;
    parse_ok(debian_nvidia_conf, &d);
    assert_string_equal(d.package_name, "nvidia-current");
    assert_string_equal(d.package_version, "525.147.05");
    assert_int_equal(d.nmodules, 3);
    assert_module(&d, 0, "nvidia", "", "/updates/dkms", "nvidia-current");
    assert_module(&d, 1, "nvidia-modeset", "", "/updates/dkms", "nvidia-current-modeset");
    assert_module(&d, 2, "nvidia-drm", "", "/updates/dkms", "nvidia-current-drm");
    assert_string_equal(d.make, "env NV_VERBOSE=1     make ${parallel_jobs+-j$parallel_jobs} "
                                "modules KERNEL_UNAME=${kernelver}");
    assert_string_equal(d.clean, "make clean");
    assert_string_equal(d.exclusive_kernel, "^(4\\.(1[5-9]|[2-9][0-9])|[5-9])");
    assert_int_equal(d.autoinstall, 1);
    assert_int_equal(build_dkms_applies(&d, "6.1.0-47-amd64", "x86_64", why, sizeof(why), &err), 1);
    assert_int_equal(build_dkms_applies(&d, "4.19.0-27-amd64", "x86_64", why, sizeof(why), &err),
                     1);
    assert_int_equal(build_dkms_applies(&d, "4.9.0-19-amd64", "x86_64", why, sizeof(why), &err), 0);
    assert_string_equal(why, "BUILD_EXCLUSIVE_KERNEL \"^(4\\.(1[5-9]|[2-9][0-9])|[5-9])\" does "
                             "not match 4.9.0-19-amd64");
    build_dkms_release(&d);
}

/* OpenZFS's dkms.conf, less the $(...) in PRE_BUILD and STRIP[0] (see
 * test_zfs_command_substitution): multi-line values of variables kfleet
 * ignores, ${...} with operators in them, module directories. */
static const char zfs_conf[] = "PACKAGE_NAME=\"zfs\"\n"
                               "PACKAGE_VERSION=\"2.1.11\"\n"
                               "PACKAGE_CONFIG=\"/etc/sysconfig/zfs\"\n"
                               "NO_WEAK_MODULES=\"yes\"\n"
                               "PRE_BUILD=\"configure\n"
                               "  --prefix=/usr\n"
                               "  --with-config=kernel\n"
                               "  --with-linux=\\\"${kernel_source_dir/%build/source}\\\"\n"
                               "  --with-linux-obj=\\\"${kernel_source_dir}\\\"\n"
                               "\"\n"
                               "POST_BUILD=\"scripts/dkms.postbuild\n"
                               "  -n ${PACKAGE_NAME}\n"
                               "  -v ${PACKAGE_VERSION}\n"
                               "  -a ${arch}\n"
                               "  -k ${kernelver}\n"
                               "  -t ${dkms_tree}\n"
                               "\"\n"
                               "AUTOINSTALL=\"yes\"\n"
                               "REMAKE_INITRD=\"no\"\n"
                               "MAKE[0]=\"make\"\n"
                               "STRIP[0]=\"${ZFS_DKMS_DISABLE_STRIP,,}\"\n"
                               "STRIP[1]=\"${STRIP[0]}\"\n"
                               "BUILT_MODULE_NAME[0]=\"zavl\"\n"
                               "BUILT_MODULE_LOCATION[0]=\"module/avl/\"\n"
                               "DEST_MODULE_LOCATION[0]=\"/extra\"\n"
                               "BUILT_MODULE_NAME[1]=\"znvpair\"\n"
                               "BUILT_MODULE_LOCATION[1]=\"module/nvpair/\"\n"
                               "DEST_MODULE_LOCATION[1]=\"/extra\"\n"
                               "BUILT_MODULE_NAME[2]=\"zfs\"\n"
                               "BUILT_MODULE_LOCATION[2]=\"module/zfs/\"\n"
                               "DEST_MODULE_LOCATION[2]=\"/extra\"\n"
                               "BUILT_MODULE_NAME[3]=\"spl\"\n"
                               "BUILT_MODULE_LOCATION[3]=\"module/spl/\"\n"
                               "DEST_MODULE_LOCATION[3]=\"/extra\"\n";

static void test_zfs(void **state)
{
    struct build_dkms d;

    (void)state;
    parse_ok(zfs_conf, &d);
    assert_string_equal(d.package_name, "zfs");
    assert_string_equal(d.package_version, "2.1.11");
    assert_int_equal(d.nmodules, 4);
    assert_module(&d, 0, "zavl", "module/avl/", "/extra", "");
    assert_module(&d, 1, "znvpair", "module/nvpair/", "/extra", "");
    assert_module(&d, 2, "zfs", "module/zfs/", "/extra", "");
    assert_module(&d, 3, "spl", "module/spl/", "/extra", "");
    assert_string_equal(d.make, "make");
    assert_int_equal(d.autoinstall, 1);
    build_dkms_release(&d);
}

/* The real STRIP[0] of OpenZFS runs a command when bash sources the file:
 * refused, on the line where the $( is. */
static void test_zfs_command_substitution(void **state)
{
    (void)state;
    check_error(HDR "STRIP[0]=\"$(\n"
                    "  [[ -r ${PACKAGE_CONFIG} ]] \\\\\n"
                    "  && echo -n no\n"
                    ")\"\n",
                WHAT ":4: ", "shell code (command substitution): STRIP[0]=\"$(");
}

/* ------------------------------------------------------------------------ */
/* The bash subset                                                           */

static void test_syntax(void **state)
{
    struct build_dkms d;

    (void)state;
    parse_ok("# comment\n"
             "   # indented comment\n"
             "export PACKAGE_NAME=demo   # a comment after a blank\n"
             "PACKAGE_VERSION='2.0'\"-\"rc1  # concatenation\n"
             "PACKAGE_VERSION=\"$PACKAGE_VERSION\"~git+1\n" /* 2.0-rc1~git+1 */
             "BUILT_MODULE_NAME=\"$PACKAGE_NAME\"\n"        /* NAME is NAME[0] */
             "BUILT_MODULE_LOCATION[0]=src/${PACKAGE_NAME}-$PACKAGE_VERSION/\\\n"
             "kernel\n"
             "DEST_MODULE_LOCATION[0]='/kernel/extra'\n"
             "BUILT_MODULE_NAME[1]=demo_extra DEST_MODULE_LOCATION[1]=/updates/${kernelver}\n"
             "BUILT_MODULE_LOCATION[1]=lib\n"
             "MAKE[0]='make -C ${kernel_source_dir} M=$PWD'\" \\$HOME \\\\ \\x \\\"q\\\"\"\n"
             "MAKE[1]=\"make other\"\n" /* no MAKE_MATCH[1]: DKMS ignores it */
             "MAKE_MATCH[2]=\"^5\"\n"   /* no MAKE[2] */
             "CLEAN=\"make clean\"\n"
             "CLEAN=\"make distclean\"\n" /* the later assignment wins */
             "PACKAGE_NAME[1]=ignored\n"
             "AUTOINSTALL=No\n"
             "BUILD_EXCLUSIVE_KERNEL='^6\\.1\\..*$'\n"
             "BUILD_EXCLUSIVE_ARCH=\"^(x86_64|aarch64)$\"\n"
             "POST_INSTALL=\"scripts/post-install ${kernelver} $1 $@ ${#x} ${!y} ${z:1:2}\"\n"
             "NO_WEAK_MODULES=yes\n"
             "weird=$ dollar=a$ ref=$\n"
             "\\\n"
             "  X=1\n",
             &d);
    assert_string_equal(d.package_name, "demo");
    assert_string_equal(d.package_version, "2.0-rc1~git+1");
    assert_int_equal(d.nmodules, 2);
    assert_module(&d, 0, "demo", "src/demo-2.0-rc1~git+1/kernel", "/kernel/extra", "");
    assert_module(&d, 1, "demo_extra", "lib", "/updates/${kernelver}", "");
    assert_string_equal(d.make, "make -C ${kernel_source_dir} M=$PWD $HOME \\ \\x \"q\"");
    assert_string_equal(d.clean, "make distclean");
    assert_int_equal(d.autoinstall, 0);
    assert_string_equal(d.exclusive_kernel, "^6\\.1\\..*$");
    assert_string_equal(d.exclusive_arch, "^(x86_64|aarch64)$");
    build_dkms_release(&d);

    /* Values are resolved at the time of the assignment, as bash does. */
    parse_ok("PACKAGE_NAME=one\n"
             "BUILT_MODULE_NAME[0]=$PACKAGE_NAME\n"
             "PACKAGE_NAME=two\n"
             "PACKAGE_VERSION=1\n"
             "BUILD_EXCLUSIVE_KERNEL=\"\"\n" /* DKMS ignores an empty one */
             "AUTOINSTALL=\"\"\n"
             "CLEAN=make#not-a-comment #a comment\n",
             &d);
    assert_string_equal(d.package_name, "two");
    assert_module(&d, 0, "one", "", "", "");
    assert_null(d.exclusive_kernel);
    assert_int_equal(d.autoinstall, 0);
    assert_string_equal(d.clean, "make#not-a-comment");
    build_dkms_release(&d);

    /* No final newline; a backslash at the very end stays. */
    parse_ok("PACKAGE_NAME=p\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=m\nPOST_BUILD=x\\", &d);
    assert_int_equal(d.autoinstall, -1);
    assert_null(d.make);
    assert_null(d.clean);
    build_dkms_release(&d);
}

/* ------------------------------------------------------------------------ */
/* BUILD_EXCLUSIVE_*                                                         */

static void test_exclusive(void **state)
{
    struct build_dkms d, hand;
    struct kf_err err;
    char why[256], small[16];

    (void)state;
    parse_ok(HDR "BUILD_EXCLUSIVE_KERNEL=\"^(5\\.|6\\.[0-5]\\.)\"\n"
                 "BUILD_EXCLUSIVE_ARCH=\"x86_64|aarch64\"\n",
             &d);
    assert_string_equal(d.exclusive_kernel, "^(5\\.|6\\.[0-5]\\.)");
    assert_int_equal(build_dkms_applies(&d, "6.1.0-47-amd64", "x86_64", why, sizeof(why), &err), 1);
    assert_string_equal(why, "");
    assert_int_equal(build_dkms_applies(&d, "5.10.0-32-amd64", "aarch64", why, sizeof(why), &err),
                     1);
    assert_int_equal(
        build_dkms_applies(&d, "6.12.117+deb12-amd64", "x86_64", why, sizeof(why), &err), 0);
    assert_string_equal(
        why, "BUILD_EXCLUSIVE_KERNEL \"^(5\\.|6\\.[0-5]\\.)\" does not match 6.12.117+deb12-amd64");
    assert_int_equal(build_dkms_applies(&d, "6.1.0-47-amd64", "ppc64le", why, sizeof(why), &err),
                     0);
    assert_string_equal(why, "BUILD_EXCLUSIVE_ARCH \"x86_64|aarch64\" does not match ppc64le");
    /* why may be NULL or small. */
    assert_int_equal(build_dkms_applies(&d, "4.19.0-1", "x86_64", NULL, 0, &err), 0);
    assert_int_equal(build_dkms_applies(&d, "4.19.0-1", "x86_64", small, sizeof(small), &err), 0);
    assert_int_equal(strlen(small), sizeof(small) - 1);
    /* A kernel string from elsewhere is shown display-safe. */
    assert_int_equal(build_dkms_applies(&d, "7\x1b[31m", "x86_64", why, sizeof(why), &err), 0);
    assert_display_safe(why);
    assert_int_equal(build_dkms_applies(&d, NULL, "x86_64", why, sizeof(why), &err), KF_EINVAL);
    assert_int_equal(build_dkms_applies(NULL, "6.1.0", "x86_64", why, sizeof(why), &err),
                     KF_EINVAL);
    build_dkms_release(&d);

    /* A pattern that does not compile: at parse time with its line... */
    check_error(HDR "BUILD_EXCLUSIVE_KERNEL=\"^(5\\.\"\n", WHAT ":4: ",
                "BUILD_EXCLUSIVE_KERNEL \"^(5\\.\" is not a valid extended regular expression");
    check_error(HDR "BUILD_EXCLUSIVE_ARCH=\"x86_64[\"\n", WHAT ":4: ", "BUILD_EXCLUSIVE_ARCH");
    /* ...and in a struct filled by hand, from applies(). */
    build_dkms_init(&hand);
    hand.package_name = "handmade";
    hand.exclusive_arch = "(x86";
    assert_int_equal(build_dkms_applies(&hand, "6.1.0-47-amd64", "x86_64", why, sizeof(why), &err),
                     KF_EINVAL);
    assert_non_null(strstr(err.msg, "handmade: BUILD_EXCLUSIVE_ARCH \"(x86\""));
    /* A reference kfleet cannot know is refused rather than guessed. */
    check_error(HDR "BUILD_EXCLUSIVE_KERNEL=\"^${kernel_major}\\.\"\n",
                WHAT ":4: ", "does not expand ${kernel_major}");
}

/* ------------------------------------------------------------------------ */
/* Refusals                                                                  */

static void test_shell_code(void **state)
{
    (void)state;
    check_error(HDR "if [ -n \"$x\" ]; then\n  MAKE[0]=make\nfi\n", WHAT ":4: ",
                "kfleet reads dkms.conf assignments only; this line is shell code: if [ -n \"$x\" "
                "]; then");
    check_error(HDR "post_build() {\n  echo hi\n}\n", WHAT ":4: ", "shell code: post_build() {");
    check_error(HDR "make modules\n", WHAT ":4: ", "shell code: make modules");
    check_error(HDR "unset MAKE\n", WHAT ":4: ", "shell code: unset MAKE");
    check_error(HDR "export\n", WHAT ":4: ", "shell code: export");
    check_error(HDR "export -n X\n", WHAT ":4: ", "shell code");
    check_error(HDR "PACKAGE_NAME = \"x\"\n", WHAT ":4: ", "no blanks around '='");
    check_error(HDR "CLEAN= make clean\n", WHAT ":4: ", "shell code: CLEAN= make clean");
    check_error(HDR "MAKE[0]=make; echo pwned\n", WHAT ":4: ", "shell code");
    check_error(HDR "MAKE[0]=make && rm -rf /\n", WHAT ":4: ", "shell code");
    check_error(HDR "MAKE[0]=make | tee log\n", WHAT ":4: ", "shell code");
    check_error(HDR "MAKE[0]=make >log\n", WHAT ":4: ", "shell code");
    check_error(HDR "MAKE[0]=make &\n", WHAT ":4: ", "shell code");
    check_error(HDR "STRIP=(yes no)\n", WHAT ":4: ", "shell code (an array assignment)");
    /* Command substitution and arithmetic, in every context but '...'. */
    check_error(HDR "MAKE[0]=\"make -j$(nproc) KVER=${kernelver}\"\n",
                WHAT ":4: ", "shell code (command substitution): MAKE[0]=\"make -j$(nproc)");
    check_error(HDR "MAKE[0]=make\\ -j$(nproc)\n", WHAT ":4: ", "command substitution");
    check_error(HDR "MAKE[0]=\"make -j`nproc`\"\n", WHAT ":4: ", "command substitution");
    check_error(HDR "MAKE[0]=make`nproc`\n", WHAT ":4: ", "command substitution");
    check_error(HDR "MAKE[0]=\"make -j$((2 * 4))\"\n", WHAT ":4: ", "command substitution");
    check_error(HDR "MAKE[0]=\"make -j$[2 * 4]\"\n", WHAT ":4: ", "arithmetic expansion");
    check_error(HDR "MAKE[0]=\"${X:-$(id)}\"\n", WHAT ":4: ", "command substitution");
    check_error(HDR "MAKE[0]=\"${X:-`id`}\"\n", WHAT ":4: ", "command substitution");
    /* On a continuation line: the line of the $( is named. */
    check_error(HDR "PRE_BUILD=\"configure\n  --prefix=/usr\n  --jobs=$(nproc)\"\n",
                WHAT ":6: ", "shell code (command substitution):   --jobs=$(nproc)\"");
    /* A line shown in a message is display-safe. */
    check_error(HDR "if \xff\xfe then\n", WHAT ":4: ", "shell code: if \\xff\\xfe then");
}

static void test_unsupported(void **state)
{
    struct build_dkms d;

    (void)state;
    /* Single quotes keep everything: no error for $( there. */
    parse_ok(HDR "MAKE[0]='make -j$(nproc) `x`; a && b'\n", &d);
    assert_string_equal(d.make, "make -j$(nproc) `x`; a && b");
    build_dkms_release(&d);

    check_error(HDR "MAKE[1]=\"make OLD=1\"\nMAKE_MATCH[1]=\"^4\\.\"\n", WHAT ":5: ",
                "MAKE_MATCH[1] with MAKE[1] (line 4) selects a make command by kernel");
    check_error(HDR "MAKE_MATCH[3]=\"^4\\.\"\n\nMAKE[3]=\"make OLD=1\"\n",
                WHAT ":6: ", "MAKE[3] with MAKE_MATCH[3] (line 4)");
    check_error(HDR "CLEAN+=\" more\"\n", WHAT ":4: ", "CLEAN+=: appending is not supported");
    /* bash refuses this itself and assigns nothing. */
    check_error(HDR "export MAKE[0]=make\n", WHAT ":4: ", "not a valid identifier");
    check_error(HDR "UID=0 MAKE[0]=make\n", WHAT ":4: ", "UID is read-only in bash");
    /* bash joins a name across a line continuation: $PACKAGE_VERSION1 here. */
    check_error(HDR "BUILD_EXCLUSIVE_ARCH=\"$PACKAGE_VERSION\\\n1\"\n",
                WHAT ":4: ", "a $NAME split by a line continuation");
    check_error(HDR "MAKE[0]=$\\\nkernelver\n", WHAT ":4: ", "right after '$'");
    check_error(HDR "BUILT_MODULE_LOCATION[0]=~/src\n", WHAT ":4: ", "tilde expansion");
    check_error(HDR "X=a:~/src\n", WHAT ":4: ", "tilde expansion");
    check_error(HDR "MAKE[0]=$'make\\n'\n", WHAT ":4: ", "$'...'");
    check_error(HDR "MAKE[0]=\"${X:=y}\"\n", WHAT ":4: ", "that assigns a variable");
    check_error(HDR "MAKE[0]=\"${PACKAGE_NAME=y}\"\n", WHAT ":4: ", "that assigns a variable");
    check_error(HDR "MAKE[0]=\"${A[i=1]}\"\n", WHAT ":4: ", "not a number");
    check_error(HDR "MAKE[0]=\"${A:n}\"\n", WHAT ":4: ", "arithmetic");
    check_error(HDR "MAKE[0]=\"${A:-\"x\"}\"\n", WHAT ":4: ", "quotes");
    check_error(HDR "MAKE[0]=\"${}\"\n", WHAT ":4: ", "without a parameter name");
    check_error(HDR "MAKE[0]=\"${A\n}\"\n", WHAT ":4: ", "with this operator");
    check_error(HDR "MAKE[0]=${A:-x\n", WHAT ":4: ", "across lines");
    check_error(HDR "MAKE[0]=${A:-x", WHAT ":4: ", "unterminated ${...}");
    check_error(HDR "MAKE[0]=${A:-${B:-${C:-${D:-${E:-${F:-${G:-${H:-${I}}}}}}}}}\n",
                WHAT ":4: ", "nested");
    check_error(HDR "BUILT_MODULE_NAME[$i]=x\n", WHAT ":4: ", "decimal number");
    check_error(HDR "BUILT_MODULE_NAME[1+1]=x\n", WHAT ":4: ", "decimal number");
    check_error(HDR "BUILT_MODULE_NAME[010]=x\n", WHAT ":4: ", "leading zero");
    check_error(HDR "BUILT_MODULE_NAME[256]=x\n", WHAT ":4: ", "out of range (0 to 255)");
    check_error(HDR "STRIP[99999999999999999999]=x\n", WHAT ":4: ", "out of range");
}

static void test_content_errors(void **state)
{
    (void)state;
    /* Gaps and modules without a name. */
    check_error("PACKAGE_NAME=p\nPACKAGE_VERSION=1\n"
                "BUILT_MODULE_NAME[0]=a\n"
                "BUILT_MODULE_NAME[2]=c\n",
                WHAT ":4: ", "BUILT_MODULE_NAME[2] is set but BUILT_MODULE_NAME[1] is missing");
    check_error("PACKAGE_NAME=p\nPACKAGE_VERSION=1\n"
                "BUILT_MODULE_NAME[0]=a\n"
                "DEST_MODULE_LOCATION[0]=/extra\n"
                "DEST_MODULE_LOCATION[1]=/extra\n",
                WHAT ":5: ", "DEST_MODULE_LOCATION[1] is set but BUILT_MODULE_NAME[1] is not");
    check_error("PACKAGE_NAME=p\nPACKAGE_VERSION=1\n"
                "BUILT_MODULE_LOCATION[0]=src\n",
                WHAT ":3: ", "BUILT_MODULE_LOCATION[0] is set but BUILT_MODULE_NAME[0] is not");
    /* Missing identity, no modules: the whole file is at fault. */
    check_error("PACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=m\n", WHAT ": ",
                "PACKAGE_NAME is not set");
    check_error("PACKAGE_NAME=p\nBUILT_MODULE_NAME[0]=m\n", WHAT ": ",
                "PACKAGE_VERSION is not set");
    check_error("PACKAGE_NAME=p\nPACKAGE_VERSION=1\nMAKE[0]=make\n", WHAT ": ", "no module");
    check_error("", WHAT ": ", "PACKAGE_NAME is not set");

    /* Names and versions that would not be safe in paths and commands. */
    check_error(HDR "BUILT_MODULE_NAME[1]=\"nvidia.ko\"\n",
                WHAT ":4: ", "BUILT_MODULE_NAME[1] \"nvidia.ko\" is not a valid module name");
    check_error(HDR "BUILT_MODULE_NAME[1]=\"../evil\"\n", WHAT ":4: ", "not a valid module name");
    check_error(HDR "BUILT_MODULE_NAME[1]=\"\"\n", WHAT ":4: ", "not a valid module name");
    check_error(HDR "DEST_MODULE_NAME[0]=\"a b\"\n", WHAT ":4: ", "not a valid module name");
    /* Single-quoted: bash holds a literal $, so does kfleet. */
    check_error(HDR "BUILT_MODULE_NAME[1]='$PACKAGE_NAME'\n",
                WHAT ":4: ", "\"$PACKAGE_NAME\" is not a valid module name");
    check_error("PACKAGE_NAME=\"-rf\"\n", WHAT ":1: ", "PACKAGE_NAME \"-rf\" is not valid");
    check_error("PACKAGE_NAME=\"a/b\"\n", WHAT ":1: ", "PACKAGE_NAME \"a/b\" is not valid");
    check_error("PACKAGE_NAME=p\nPACKAGE_VERSION=\"..\"\n",
                WHAT ":2: ", "PACKAGE_VERSION \"..\" is not valid");
    check_error("PACKAGE_NAME=p\nPACKAGE_VERSION=\"1.0 beta\"\n",
                WHAT ":2: ", "PACKAGE_VERSION \"1.0 beta\" is not valid");
    check_error("PACKAGE_NAME=p\nPACKAGE_VERSION=\"1.0/x\"\n", WHAT ":2: ", "not valid");
    check_error("PACKAGE_NAME=p\nPACKAGE_VERSION=\"${kernelver}\"\n",
                WHAT ":2: ", "PACKAGE_VERSION: kfleet does not expand ${kernelver} here");
    check_error("PACKAGE_NAME=p\nPACKAGE_VERSION=\"${PACKAGE_NAME:-x}\"\n",
                WHAT ":2: ", "does not expand ${PACKAGE_NAME:-x}");
    check_error("PACKAGE_NAME=\"$PACKAGE_VERSION\"\nPACKAGE_VERSION=1\n",
                WHAT ":1: ", "$PACKAGE_VERSION is used before it is assigned");
    check_error(HDR "BUILT_MODULE_NAME[1]=\"${PACKAGE_NAME}_$arch\"\n",
                WHAT ":4: ", "does not expand $arch");
    check_error(HDR "AUTOINSTALL=$yes\n", WHAT ":4: ", "AUTOINSTALL: kfleet does not expand");

    /* Locations. */
    check_error(HDR "BUILT_MODULE_LOCATION[0]=\"../../etc\"\n", WHAT ":4: ",
                "BUILT_MODULE_LOCATION[0] \"../../etc\": a location may not have a '..' "
                "component");
    check_error(HDR "DEST_MODULE_LOCATION[0]=\"/kernel/../../../etc\"\n", WHAT ":4: ", "'..'");
    check_error(HDR "BUILT_MODULE_LOCATION[0]=\"src/..\"\n", WHAT ":4: ", "'..'");
    check_error(HDR "DEST_MODULE_LOCATION[0]=\"/lib/firmware\"\n",
                WHAT ":4: ", "must start with /kernel, /updates or /extra");
    check_error(HDR "DEST_MODULE_LOCATION[0]=\"/kernelx\"\n", WHAT ":4: ", "must start with");
    check_error(HDR "BUILT_MODULE_LOCATION[0]='$HOME/src'\n",
                WHAT ":4: ", "a quoted or escaped '$' is not allowed");
    check_error(HDR "BUILT_MODULE_LOCATION[0]=\"${x:-y}\"\n",
                WHAT ":4: ", "does not expand ${x:-y}");
    check_error(HDR "BUILT_MODULE_LOCATION[0]=\"a b\"\n", WHAT ":4: ", "only letters, digits");

    /* Duplicates. */
    check_error(HDR "BUILT_MODULE_NAME[1]=mod\n",
                WHAT ":4: ", "BUILT_MODULE_NAME[1] \"mod\" repeats BUILT_MODULE_NAME[0]");
    check_error(HDR "BUILT_MODULE_NAME[1]=other\nDEST_MODULE_NAME[1]=mod\n",
                WHAT ":5: ", "modules 0 and 1 would both be installed as mod");
    check_error("PACKAGE_NAME=p\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=nvidia-drm\n"
                "BUILT_MODULE_NAME[1]=nvidia_drm\n",
                WHAT ":4: ", "would both be installed as nvidia_drm");
}

static void test_lexical_errors(void **state)
{
    static const char nul[] = HDR "MAKE[0]=\"make\0 x\"\n";
    char *big;
    size_t n;

    (void)state;
    check_error(HDR "\nMAKE[0]=\"make\n  modules\n", WHAT ":5: ", "unterminated double quote");
    check_error(HDR "CLEAN='make clean\n\n\n", WHAT ":4: ", "unterminated single quote");
    check_error(HDR "CLEAN=\"make clean\\\"\n", WHAT ":4: ", "unterminated double quote");
    check_error_n(nul, sizeof(nul) - 1, KF_EPARSE, WHAT ":4: ", "a NUL byte");
    check_error_n("\0", 1, KF_EPARSE, WHAT ":1: ", "a NUL byte");
    check_error(HDR "CLEAN=\"make clean\"\r\n", WHAT ":4: ", "carriage return");
    check_error(HDR "CLEAN=\"make \x1b[31m\"\n", WHAT ":4: ", "control character \\x1b");

    /* A value of more than 4096 bytes, however it is made up. */
    big = malloc(8192);
    assert_non_null(big);
    n = (size_t)snprintf(big, 8192, HDR "\nPOST_BUILD=\"");
    memset(big + n, 'a', 4097);
    snprintf(big + n + 4097, 8192 - n - 4097, "\"\n");
    check_error(big, WHAT ":5: ", "a value longer than 4096 bytes");
    n = (size_t)snprintf(big, 8192, HDR "\n\nPOST_BUILD=");
    memset(big + n, 'a', 4097);
    big[n + 4097] = '\0';
    check_error(big, WHAT ":6: ", "a value longer than 4096 bytes");
    /* 4096 is fine. */
    n = (size_t)snprintf(big, 8192, HDR "POST_BUILD='");
    memset(big + n, 'a', 4096);
    snprintf(big + n + 4096, 8192 - n - 4096, "'\n");
    {
        struct build_dkms d;

        parse_ok(big, &d);
        build_dkms_release(&d);
    }
    free(big);

    /* More than 1 MiB of comments: refused as a whole. */
    big = malloc(BUILD_DKMS_FILE_MAX + 2);
    assert_non_null(big);
    memset(big, '#', BUILD_DKMS_FILE_MAX + 1);
    big[BUILD_DKMS_FILE_MAX + 1] = '\0';
    check_error_n(big, BUILD_DKMS_FILE_MAX + 1, KF_EPARSE, WHAT ": ", "at most 1048576");
    free(big);

    check_error_n(NULL, 5, KF_EINVAL, NULL, NULL);
}

/* ------------------------------------------------------------------------ */
/* Files                                                                     */

static void test_load(void **state)
{
    struct build_dkms d;
    struct kf_err err;
    char *big;

    (void)state;
    kft_write_all(kft_tmp("dkms.conf"), nvidia_conf, strlen(nvidia_conf));
    assert_int_equal(build_dkms_load(kft_tmp("dkms.conf"), &d, &err), 0);
    assert_int_equal(d.nmodules, 5);
    build_dkms_release(&d);

    kft_write_all(kft_tmp("bad.conf"), HDR "fi\n", strlen(HDR "fi\n"));
    assert_int_equal(build_dkms_load(kft_tmp("bad.conf"), &d, &err), KF_EPARSE);
    assert_non_null(strstr(err.msg, kft_tmp("bad.conf")));
    assert_non_null(strstr(err.msg, "bad.conf:4: "));
    assert_null(d.package_name);

    assert_int_equal(build_dkms_load(kft_tmp("missing.conf"), &d, &err), KF_ENOENT);
    assert_int_equal(build_dkms_load(kft_tmpdir, &d, &err), KF_EINVAL);
    assert_non_null(strstr(err.msg, "not a regular file"));
    assert_int_equal(mkfifo(kft_tmp("fifo"), 0600), 0);
    assert_int_equal(build_dkms_load(kft_tmp("fifo"), &d, &err), KF_EINVAL);

    big = malloc(BUILD_DKMS_FILE_MAX + 1);
    assert_non_null(big);
    memset(big, '\n', BUILD_DKMS_FILE_MAX + 1);
    kft_write_all(kft_tmp("big.conf"), big, BUILD_DKMS_FILE_MAX + 1);
    free(big);
    assert_int_equal(build_dkms_load(kft_tmp("big.conf"), &d, &err), KF_EPARSE);
    assert_non_null(strstr(err.msg, "at most 1048576"));
    assert_null(d.package_name);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture),
        cmocka_unit_test(test_nvidia),
        cmocka_unit_test(test_debian_nvidia),
        cmocka_unit_test(test_zfs),
        cmocka_unit_test(test_zfs_command_substitution),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_exclusive),
        cmocka_unit_test(test_shell_code),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_content_errors),
        cmocka_unit_test(test_lexical_errors),
        cmocka_unit_test(test_load),
    };

    return cmocka_run_group_tests(tests, kft_setup_tmpdir, kft_teardown_tmpdir);
}
