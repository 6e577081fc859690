/* install.sh and uninstall.sh: the two scripts inside a package, for nodes
 * that do not have kfleet (and for kfleet's deployer, which runs them too).
 *
 * Rules for the generated text:
 * - POSIX sh only (dash, busybox ash): no arrays, no [[ ]], no local. It
 *   must pass `shellcheck -s sh` (tests/unit/test_package.c runs it).
 * - Values are never pasted as code. Each is validated again here (a
 *   kernel release, module names, file names, a driver version) and then
 *   written as ONE single-quoted word by kf_shquote(), as an assignment at
 *   the top; the body only refers to the variables, always double-quoted
 *   except in `for x in $LIST`, where the validated names split on spaces
 *   by design.
 * - Every path starts with $ROOT (KFLEET_ROOT, default empty), so a test
 *   can run the scripts in a temporary directory with stub depmod,
 *   modprobe and uname first in PATH. */
#include "internal.h"

#include <string.h>

int build_fw_name_valid(const char *s)
{
    size_t n, i;
    int start = 1;

    if (s == NULL)
        return 0;
    n = strnlen(s, 201);
    if (n == 0 || n > 200)
        return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (c == '/') {
            if (start)
                return 0;
            start = 1;
            continue;
        }
        if (start && c == '.')
            return 0;
        start = 0;
        if (!(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') &&
            c != '.' && c != '_' && c != '-' && c != '+')
            return 0;
    }
    return !start;
}

static int sha_valid(const char *s)
{
    return s != NULL && strspn(s, "0123456789abcdef") == 64 && s[64] == '\0';
}

static int check_mods(const struct build_module *mods, size_t n, struct kf_err *err)
{
    size_t i, len;

    if (n == 0)
        return kf_err_set(err, KF_EINVAL, "a package needs at least one module");
    for (i = 0; i < n; i++) {
        len = strnlen(mods[i].file, sizeof(mods[i].file));
        if (!kf_modname_valid(mods[i].name) || len <= 3 || len >= sizeof(mods[i].file) ||
            strcmp(mods[i].file + len - 3, ".ko") != 0)
            return kf_err_set(err, KF_EUNTRUSTED, "module %zu: bad name or file name", i);
        {
            char stem[BUILD_MODNAME_MAX + 1];
            memcpy(stem, mods[i].file, len - 3);
            stem[len - 3] = '\0';
            if (!kf_modname_valid(stem))
                return kf_err_set(err, KF_EUNTRUSTED, "module %zu: bad file name", i);
        }
        if (!sha_valid(mods[i].sha256))
            return kf_err_set(err, KF_EINVAL, "%s: no sha256", mods[i].file);
    }
    return 0;
}

/* Appends VAR='v1 v2 ...': the module files or names of one kind, in load
 * order or (L_UNLOAD) reversed. */
enum list_kind { L_FILES, L_LOAD, L_UNLOAD, L_VERSIONED };

static int put_list(struct buf *b, const char *var, const struct build_module *mods, size_t n,
                    enum list_kind kind)
{
    struct buf v;
    size_t k, i;
    int rc = 0;

    buf_init(&v, 0);
    for (k = 0; k < n && rc == 0; k++) {
        i = kind == L_UNLOAD ? n - 1 - k : k;
        if ((kind == L_LOAD || kind == L_VERSIONED) && mods[i].stub)
            continue;
        if (kind == L_VERSIONED && mods[i].info.version[0] == '\0')
            continue;
        if (v.len > 0)
            rc = buf_puts(&v, " ");
        if (rc == 0)
            rc = buf_puts(&v, kind == L_FILES ? mods[i].file : mods[i].name);
    }
    if (rc == 0)
        rc = buf_printf(b, "%s=", var);
    if (rc == 0)
        rc = kf_shquote(b, v.len ? buf_cstr(&v) : "");
    if (rc == 0)
        rc = buf_puts(b, "\n");
    buf_release(&v);
    return rc;
}

static int put_var(struct buf *b, const char *var, const char *value)
{
    int rc = buf_printf(b, "%s=", var);

    if (rc == 0)
        rc = kf_shquote(b, value);
    if (rc == 0)
        rc = buf_puts(b, "\n");
    return rc;
}

/* The part both scripts share after their variables. */
static const char common_body[] =
    "ROOT=${KFLEET_ROOT:-}\n"
    "DEST=$ROOT/lib/modules/$KERNEL/updates/kfleet\n"
    /* depmod and modprobe live in sbin, which a non-root PATH may lack;
     * appended, so a test's stubs earlier in PATH still win. */
    "PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin\n"
    "\n"
    "die() {\n"
    "\techo \"$ME: $*\" >&2\n"
    "\texit 1\n"
    "}\n"
    "\n"
    "kmod_modprobe() {\n"
    "\tif [ -n \"$ROOT\" ]; then\n"
    "\t\tmodprobe -d \"$ROOT\" \"$@\"\n"
    "\telse\n"
    "\t\tmodprobe \"$@\"\n"
    "\tfi\n"
    "}\n"
    "\n"
    "kmod_depmod() {\n"
    "\tif [ -n \"$ROOT\" ]; then\n"
    "\t\tdepmod -b \"$ROOT\" -a \"$KERNEL\"\n"
    "\telse\n"
    "\t\tdepmod -a \"$KERNEL\"\n"
    "\tfi\n"
    "}\n"
    "\n"
    /* Reverse load order: nvidia_drm before nvidia_modeset before nvidia.
     * modprobe -r also removes dependencies nothing else uses; the test
     * of /sys/module makes that harmless. */
    "unload_all() { # all | mine (only modules of version DRIVER)\n"
    "\tfor m in $UNLOAD; do\n"
    "\t\t[ -d \"$ROOT/sys/module/$m\" ] || continue\n"
    "\t\tif [ \"$1\" = mine ] && [ -f \"$ROOT/sys/module/$m/version\" ]; then\n"
    "\t\t\tv=$(cat \"$ROOT/sys/module/$m/version\" 2>/dev/null) || v=\n"
    "\t\t\t[ \"$v\" = \"$DRIVER\" ] || continue\n"
    "\t\tfi\n"
    "\t\tkmod_modprobe -r \"$m\" ||\n"
    "\t\t\tdie \"cannot unload $m: stop what uses the GPU (nvidia-persistenced, X, jobs)\"\n"
    "\tdone\n"
    "}\n";

static int put_header(struct buf *b, const char *me, const char *kernel, const char *driver,
                      const struct build_module *mods, size_t n)
{
    int install = strcmp(me, "install.sh") == 0;
    int rc = buf_printf(b, "#!/bin/sh\n");

    if (rc == 0 && install)
        rc = buf_printf(b,
                        "# install.sh: NVIDIA driver %s kernel modules for Linux %s, packaged\n"
                        "# by kfleet %s. Needs sh, cp, mv, mkdir, rm, cat, sha256sum and kmod;\n"
                        "# kfleet itself need not be installed.\n"
                        "#\n"
                        "#   sh install.sh         check the files, copy the modules to\n"
                        "#                         /lib/modules/%s/updates/kfleet/, copy missing\n"
                        "#                         firmware, run depmod; nothing is loaded\n"
                        "#   sh install.sh --load  then unload the running modules and load these\n"
                        "#                         (only when the running kernel is %s)\n"
                        "#\n"
                        "# Running it again is harmless. KFLEET_ROOT, when set, is put in front\n"
                        "# of every path, and depmod and modprobe get it as their base (tests).\n",
                        driver, kernel, KF_VERSION, kernel, kernel);
    else if (rc == 0)
        rc = buf_printf(b,
                        "# uninstall.sh: removes the NVIDIA driver %s kernel modules for Linux %s\n"
                        "# that install.sh put in /lib/modules/%s/updates/kfleet/: unloads them\n"
                        "# first when they are loaded (and are this version), then runs depmod.\n"
                        "# Firmware stays: other kernels' packages of this driver use it too.\n"
                        "# Running it again is harmless. KFLEET_ROOT as for install.sh.\n",
                        driver, kernel, kernel);
    if (rc == 0)
        rc = buf_puts(b, "set -eu\n\nME=");
    if (rc == 0)
        rc = kf_shquote(b, me);
    if (rc == 0)
        rc = buf_puts(b, "\n");
    if (rc == 0)
        rc = put_var(b, "KERNEL", kernel);
    if (rc == 0)
        rc = put_var(b, "DRIVER", driver);
    if (rc == 0)
        rc = buf_puts(b, "# Module files, in load order.\n");
    if (rc == 0)
        rc = put_list(b, "FILES", mods, n, L_FILES);
    if (rc == 0 && install)
        rc = buf_puts(b, "# Modules to load, in order (stubs are installed, never loaded).\n");
    if (rc == 0 && install)
        rc = put_list(b, "LOAD", mods, n, L_LOAD);
    if (rc == 0)
        rc = buf_puts(b, "# Modules to unload, in order: all of them, reversed.\n");
    if (rc == 0)
        rc = put_list(b, "UNLOAD", mods, n, L_UNLOAD);
    if (rc == 0 && install)
        rc = buf_puts(b, "# Modules whose /sys/module/NAME/version must be DRIVER.\n");
    if (rc == 0 && install)
        rc = put_list(b, "VERSIONED", mods, n, L_VERSIONED);
    return rc;
}

static int check_common(const char *kernel, const char *driver, const struct build_module *mods,
                        size_t n, struct kf_err *err)
{
    if (!kf_krel_valid(kernel))
        return kf_err_set(err, KF_EUNTRUSTED, "kernel release not valid for a script");
    if (!kf_driver_version_valid(driver))
        return kf_err_set(err, KF_EUNTRUSTED, "driver version not valid for a script");
    return check_mods(mods, n, err);
}

/* Appends: check 'PATH' 'SHA256' */
static int put_check(struct buf *b, const char *dir, const char *name, const char *sha)
{
    struct buf path;
    int rc;

    buf_init(&path, 0);
    rc = buf_printf(&path, "%s/%s", dir, name);
    if (rc == 0)
        rc = buf_puts(b, "check ");
    if (rc == 0)
        rc = kf_shquote(b, buf_cstr(&path));
    if (rc == 0)
        rc = buf_puts(b, " ");
    if (rc == 0)
        rc = kf_shquote(b, sha);
    if (rc == 0)
        rc = buf_puts(b, "\n");
    buf_release(&path);
    return rc;
}

int build_install_sh(struct buf *out, const char *kernel_release, const char *driver_version,
                     const struct build_module *mods, size_t n, const struct build_pkg_file *fw,
                     const char (*fw_sha256)[BUILD_SHA256_HEX], size_t nfw, struct kf_err *err)
{
    struct buf fwlist;
    size_t i;
    int rc;

    buf_init(&fwlist, 0);
    rc = check_common(kernel_release, driver_version, mods, n, err);
    if (rc != 0)
        goto out;
    for (i = 0; i < nfw; i++) {
        if (!build_fw_name_valid(fw[i].name) || fw_sha256 == NULL || !sha_valid(fw_sha256[i])) {
            rc = kf_err_set(err, KF_EUNTRUSTED, "firmware %zu: name or sha256 not valid", i);
            goto out;
        }
        if ((i > 0 && (rc = buf_puts(&fwlist, " ")) != 0) ||
            (rc = buf_puts(&fwlist, fw[i].name)) != 0)
            goto nomem;
    }
    rc = put_header(out, "install.sh", kernel_release, driver_version, mods, n);
    if (rc == 0)
        rc = buf_puts(out, "# Firmware files under /lib/firmware/, installed when missing.\n");
    if (rc == 0)
        rc = put_var(out, "FIRMWARE", fwlist.len ? buf_cstr(&fwlist) : "");
    if (rc == 0)
        rc = buf_puts(out, common_body);
    if (rc == 0)
        rc = buf_puts(
            out,
            "\n"
            "usage() {\n"
            "\techo \"usage: $ME [--load]\"\n"
            "}\n"
            "\n"
            "load=0\n"
            "for arg in \"$@\"; do\n"
            "\tcase $arg in\n"
            "\t--load) load=1 ;;\n"
            "\t-h | --help)\n"
            "\t\tusage\n"
            "\t\texit 0\n"
            "\t\t;;\n"
            "\t*)\n"
            "\t\tusage >&2\n"
            "\t\tdie \"unknown argument: $arg\"\n"
            "\t\t;;\n"
            "\tesac\n"
            "done\n"
            "\n"
            "case $0 in\n"
            "*/*) HERE=${0%/*} ;;\n"
            "*) HERE=. ;;\n"
            "esac\n"
            "\n"
            /* Refused before anything changes: modprobe loads from the
             * running kernel's tree, so loading needs that kernel. */
            "if [ \"$load\" = 1 ]; then\n"
            "\trunning=$(uname -r)\n"
            "\t[ \"$running\" = \"$KERNEL\" ] ||\n"
            "\t\tdie \"the running kernel is $running, not $KERNEL: install without --load\"\n"
            "fi\n"
            "\n"
            /* The package must be whole before the node changes at all. */
            "check() {\n"
            "\t[ -f \"$HERE/$1\" ] || die \"$1 is missing from the package\"\n"
            "\tsum=$(sha256sum <\"$HERE/$1\") || die \"sha256sum $1 failed\"\n"
            "\t[ \"${sum%% *}\" = \"$2\" ] || die \"$1: sha256 mismatch: the package is damaged\"\n"
            "}\n");
    for (i = 0; rc == 0 && i < n; i++)
        rc = put_check(out, "modules", mods[i].file, mods[i].sha256);
    for (i = 0; rc == 0 && i < nfw; i++)
        rc = put_check(out, "firmware", fw[i].name, fw_sha256[i]);
    if (rc != 0)
        goto nomem;
    rc = buf_puts(
        out, "\n"
             "mkdir -p \"$DEST\"\n"
             /* Copied under a temporary name and renamed, so depmod or a module
              * load never sees half a file. */
             "for f in $FILES; do\n"
             "\tcp \"$HERE/modules/$f\" \"$DEST/.$f.new\"\n"
             "\tchmod 0644 \"$DEST/.$f.new\"\n"
             "\tmv -f \"$DEST/.$f.new\" \"$DEST/$f\"\n"
             "done\n"
             /* A module an older kfleet package had and this one has not would
              * otherwise stay, of the old version, in depmod's view. */
             "for old in \"$DEST\"/*.ko; do\n"
             "\t[ -e \"$old\" ] || continue\n"
             "\tcase \" $FILES \" in\n"
             "\t*\" ${old##*/} \"*) ;;\n"
             "\t*) rm -f \"$old\" ;;\n"
             "\tesac\n"
             "done\n"
             "for f in $FIRMWARE; do\n"
             "\t[ -f \"$HERE/firmware/$f\" ] || die \"firmware/$f is missing from the package\"\n"
             "\t[ -e \"$ROOT/lib/firmware/$f\" ] && continue\n"
             "\tcase $f in\n"
             "\t*/*) mkdir -p \"$ROOT/lib/firmware/${f%/*}\" ;;\n"
             "\tesac\n"
             "\tcp \"$HERE/firmware/$f\" \"$ROOT/lib/firmware/$f.new\"\n"
             "\tchmod 0644 \"$ROOT/lib/firmware/$f.new\"\n"
             "\tmv -f \"$ROOT/lib/firmware/$f.new\" \"$ROOT/lib/firmware/$f\"\n"
             "done\n"
             "kmod_depmod || die \"depmod -a $KERNEL failed\"\n"
             "\n"
             "if [ \"$load\" = 1 ]; then\n"
             "\tunload_all all\n"
             "\tfor m in $LOAD; do\n"
             "\t\tkmod_modprobe \"$m\" || die \"modprobe $m failed (see dmesg)\"\n"
             "\tdone\n"
             "\tfor m in $VERSIONED; do\n"
             "\t\tv=$(cat \"$ROOT/sys/module/$m/version\" 2>/dev/null) ||\n"
             "\t\t\tdie \"$m: no /sys/module/$m/version after loading\"\n"
             "\t\t[ \"$v\" = \"$DRIVER\" ] || die \"$m: version $v is loaded, not $DRIVER\"\n"
             "\tdone\n"
             "\techo \"$ME: NVIDIA $DRIVER modules installed and loaded for $KERNEL\"\n"
             "else\n"
             "\techo \"$ME: NVIDIA $DRIVER modules installed for $KERNEL\"\n"
             "fi\n");
    if (rc == 0)
        goto out;
nomem:
    rc = kf_err_set(err, KF_ENOMEM, "out of memory");
out:
    buf_release(&fwlist);
    return rc;
}

int build_uninstall_sh(struct buf *out, const char *kernel_release, const char *driver_version,
                       const struct build_module *mods, size_t n, struct kf_err *err)
{
    int rc;

    rc = check_common(kernel_release, driver_version, mods, n, err);
    if (rc != 0)
        return rc;
    rc = put_header(out, "uninstall.sh", kernel_release, driver_version, mods, n);
    if (rc == 0)
        rc = buf_puts(out, common_body);
    if (rc == 0)
        rc = buf_puts(out, "\n"
                           "for arg in \"$@\"; do\n"
                           "\techo \"usage: $ME\" >&2\n"
                           "\tdie \"unknown argument: $arg\"\n"
                           "done\n"
                           "\n"
                           /* Loaded modules of another kernel came from another tree; and
                            * of this kernel, only this driver version is ours to unload. */
                           "if [ \"$(uname -r)\" = \"$KERNEL\" ]; then\n"
                           "\tunload_all mine\n"
                           "fi\n"
                           "for f in $FILES; do\n"
                           "\trm -f \"$DEST/$f\"\n"
                           "done\n"
                           "rmdir \"$DEST\" 2>/dev/null || true\n"
                           "if [ -d \"$ROOT/lib/modules/$KERNEL\" ]; then\n"
                           "\tkmod_depmod || die \"depmod -a $KERNEL failed\"\n"
                           "fi\n"
                           "echo \"$ME: NVIDIA $DRIVER modules removed for $KERNEL\"\n");
    if (rc != 0)
        return kf_err_set(err, KF_ENOMEM, "out of memory");
    return 0;
}
