/* Node facts: the one remote probe command, and the parser of its output.
 *
 * The probe is a static POSIX sh script that prints raw tool output in
 * sections ("@@kf:<nonce>:<name>" on a line of its own); every decision
 * (which kernels count, which PCI functions are GPUs, which version wins)
 * is made here in C, where it can be tested, rather than in shell on a
 * node. Everything the node prints is untrusted: values are validated
 * before they are copied into struct inv_facts, the parser does no
 * allocation and a bounded amount of work per input byte, and every
 * message that quotes node data goes through kf_escape_to(). */
#include "inventory.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* The probe script                                                          */

/* Rules for this text, so it survives every hop unchanged:
 * - POSIX sh only (dash, busybox ash, bash --posix): no arrays, no [[ ]],
 *   no local, no $'..'.
 * - No single quote, no backslash and no '!' anywhere: the script travels
 *   as one single-quoted word through the user's login shell (and fish
 *   interprets backslashes inside single quotes), so the quoting stays
 *   one plain layer. tests/unit/test_facts.c checks this.
 * - The nonce is not pasted in: it arrives as $1 (sh -c SCRIPT kfprobe
 *   NONCE), so the text is constant.
 * - Every tool is optional except uname and cat; a missing one prints
 *   nothing (or "method=none") and the probe goes on. No "set -e".
 * - Raw data is printed with printf "%s" (dash's echo interprets
 *   backslashes in its arguments); echo is used only for constant text. */
static const char probe_script[] =
    "K=$1\n"
    /* Nothing below may read the SSH channel: a tool waiting on stdin
     * would hang the probe until the coordinator's timeout. */
    "exec </dev/null\n"
    /* English tool messages (mokutil, nvidia-smi are matched on text). The
     * sbin directories come first: lspci and mokutil live there on some
     * distributions, a non-root PATH often lacks them, and a user's own
     * ~/bin must not shadow a system tool. */
    "LC_ALL=C\n"
    "export LC_ALL\n"
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH\n"
    "export PATH\n"
    /* A section marker. The empty line first puts the marker at the start
     * of a line even when the previous output had no final newline; the
     * parser ignores the empty lines this adds. */
    "s() { echo; echo \"@@kf:$K:$1\"; }\n"
    "have() { command -v \"$1\" >/dev/null 2>&1; }\n"
    /* nvidia-smi can block for minutes on a GPU that fell off the bus;
     * where timeout(1) exists, bound each optional tool with it. */
    "run() { if have timeout; then timeout 20 \"$@\"; else \"$@\"; fi; }\n"
    "s uname_r\n"
    "uname -r\n"
    "s uname_v\n"
    "uname -v\n"
    "s uname_m\n"
    "uname -m\n"
    /* -f, not -r: a regular file, never a device that streams forever. */
    "s os_release\n"
    "if [ -f /etc/os-release ]; then cat /etc/os-release 2>/dev/null\n"
    "elif [ -f /usr/lib/os-release ]; then cat /usr/lib/os-release 2>/dev/null; fi\n"
    /* One line per candidate kernel: "<release> <flags>", flags from
     * d (modules.dep), b (build: headers; -e follows the link, so a
     * dangling one does not count) and i (/boot/vmlinuz-<release>), or "-"
     * for none. Then images in /boot that have no /lib/modules directory. */
    "s kernels\n"
    "for d in /lib/modules/*; do\n"
    "    [ -d \"$d\" ] || continue\n"
    "    n=${d#/lib/modules/}\n"
    "    f=\n"
    "    [ -e \"$d/modules.dep\" ] && f=${f}d\n"
    "    [ -e \"$d/build\" ] && f=${f}b\n"
    "    [ -e \"/boot/vmlinuz-$n\" ] && f=${f}i\n"
    "    printf \"%s %s\" \"$n\" \"${f:--}\"\n"
    "    echo\n"
    "done\n"
    "for v in /boot/vmlinuz-*; do\n"
    "    [ -e \"$v\" ] || continue\n"
    "    n=${v#/boot/vmlinuz-}\n"
    "    [ -d \"/lib/modules/$n\" ] && continue\n"
    "    printf \"%s i\" \"$n\"\n"
    "    echo\n"
    "done\n"
    /* The loaded driver, from the module itself and from its proc file
     * (older drivers and some kernels have only one of them). */
    "s nvidia_module\n"
    "[ -f /sys/module/nvidia/version ] && cat /sys/module/nvidia/version 2>/dev/null\n"
    "s proc_driver\n"
    "[ -f /proc/driver/nvidia/version ] && cat /proc/driver/nvidia/version 2>/dev/null\n"
    /* The userspace driver. nvidia-smi fails with a message (version
     * mismatch, no driver loaded, no devices) and a non-zero status when
     * it cannot answer, so its status goes on a line of its own. */
    "s nvidia_smi\n"
    "if have nvidia-smi; then\n"
    "    run nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1\n"
    "    r=$?\n"
    "    echo\n"
    "    echo \"rc=$r\"\n"
    "fi\n"
    "s libnvidia_ml\n"
    "for d in /usr/lib /usr/lib64 /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu; do\n"
    "    for f in \"$d\"/libnvidia-ml.so.*; do\n"
    "        [ -e \"$f\" ] || continue\n"
    "        printf \"%s\" \"$f\"\n"
    "        echo\n"
    "    done\n"
    "done\n"
    /* NVIDIA PCI functions: lspci when it exists and works, else sysfs
     * ("<slot> <vendor> <device> <class>", read with the builtin read so
     * a few hundred devices cost no forks; its status is ignored because
     * read returns 1 for a last line without newline, value still set),
     * else nothing. The first line says which. */
    "s gpus\n"
    "if have lspci && g=$(run lspci -D -n -d 10de: 2>/dev/null); then\n"
    "    echo method=lspci\n"
    "    printf \"%s\" \"$g\"\n"
    "    echo\n"
    "elif [ -d /sys/bus/pci/devices ]; then\n"
    "    echo method=sysfs\n"
    "    for d in /sys/bus/pci/devices/*; do\n"
    "        [ -r \"$d/vendor\" ] || continue\n"
    "        v=\n"
    "        read -r v <\"$d/vendor\"\n"
    "        [ \"$v\" = 0x10de ] || continue\n"
    "        i=\n"
    "        c=\n"
    "        read -r i 2>/dev/null <\"$d/device\"\n"
    "        read -r c 2>/dev/null <\"$d/class\"\n"
    "        printf \"%s %s %s %s\" \"${d##*/}\" \"$v\" \"$i\" \"$c\"\n"
    "        echo\n"
    "    done\n"
    "else\n"
    "    echo method=none\n"
    "fi\n"
    /* Secure Boot: mokutil's answer (it also knows when shim validation
     * is off) and the raw EFI variable (4 attribute bytes, then 1 = on). */
    "s secure_boot\n"
    "if have mokutil; then\n"
    "    echo method=mokutil\n"
    "    run mokutil --sb-state 2>&1\n"
    "    r=$?\n"
    "    echo\n"
    "    echo \"rc=$r\"\n"
    "fi\n"
    "e=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c\n"
    "if [ -f \"$e\" ] && have od; then\n"
    "    echo method=efivars\n"
    "    od -An -tu1 \"$e\" 2>/dev/null\n"
    "fi\n"
    "s kfleet_state\n"
    "[ -f /var/lib/kfleet/state ] && cat /var/lib/kfleet/state 2>/dev/null\n"
    /* Without this line the parser treats the output as cut short. */
    "s end\n";

/* ------------------------------------------------------------------------ */
/* Small byte helpers (ASCII only: node data must not depend on locale)      */

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_print(unsigned char c)
{
    return c >= 0x20 && c < 0x7f;
}

static char to_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static int span_eq(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit);

    return n == l && memcmp(s, lit, l) == 0;
}

static int span_starts(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit);

    return n >= l && memcmp(s, lit, l) == 0;
}

/* memmem() is a GNU extension; this bounded search is all we need. */
static int span_contains(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit), i;

    for (i = 0; l <= n && i <= n - l; i++)
        if (memcmp(s + i, lit, l) == 0)
            return 1;
    return 0;
}

/* Copies n bytes that were already validated to fit. */
static void copy_span(char *dst, size_t dstsz, const char *s, size_t n)
{
    if (n >= dstsz)
        n = dstsz - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* Copies only printable ASCII, dropping everything else (control bytes,
 * and bytes >= 0x80 since 0x9b is a C1 CSI on some terminals), truncating
 * to fit. For display-only fields such as uname -v and PRETTY_NAME. */
static void copy_printable(char *dst, size_t dstsz, const char *s, size_t n)
{
    size_t i, o = 0;

    for (i = 0; i < n && o + 1 < dstsz; i++)
        if (is_print((unsigned char)s[i]))
            dst[o++] = s[i];
    dst[o] = '\0';
}

/* Splits s at runs of spaces and tabs into at most max tokens; returns the
 * number of tokens found, which may exceed max (the rest are not stored). */
struct tok {
    const char *p;
    size_t n;
};

static size_t split_ws(const char *s, size_t n, struct tok *t, size_t max)
{
    size_t i = 0, count = 0;

    while (i < n) {
        size_t start;
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i == n)
            break;
        start = i;
        while (i < n && s[i] != ' ' && s[i] != '\t')
            i++;
        if (count < max) {
            t[count].p = s + start;
            t[count].n = i - start;
        }
        count++;
    }
    return count;
}

/* Iterates over lines of a byte range: no NUL termination assumed, a last
 * line without '\n' still counts, and one trailing '\r' (CRLF output from
 * a pty or a Windows-edited file) is dropped. */
struct lines {
    const char *p;
    size_t left;
};

static int lines_next(struct lines *it, const char **line, size_t *n)
{
    const char *nl;
    size_t len;

    if (it->left == 0)
        return 0;
    nl = memchr(it->p, '\n', it->left);
    len = nl != NULL ? (size_t)(nl - it->p) : it->left;
    *line = it->p;
    *n = len;
    it->p += nl != NULL ? len + 1 : len;
    it->left -= nl != NULL ? len + 1 : len;
    if (*n > 0 && (*line)[*n - 1] == '\r')
        (*n)--;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Validators                                                                */

static int nonce_valid(const char *s)
{
    size_t n, i;

    if (s == NULL)
        return 0;
    n = strnlen(s, 33);
    if (n < 8 || n > 32)
        return 0;
    for (i = 0; i < n; i++)
        if (!is_digit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
            return 0;
    return 1;
}

/* Version-aware order, like sort -V for kernel releases: runs of digits
 * compare by value ("6.1.0-47" < "6.1.0-50" < "6.12.38"), other bytes by
 * value, a string that is a prefix of another first. Runs of equal value
 * that differ in leading zeros, and nothing else, tie-break on strcmp so
 * the order is total and deterministic. */
static int vercmp(const char *a, const char *b)
{
    const char *pa = a, *pb = b;

    while (*pa != '\0' && *pb != '\0') {
        if (is_digit((unsigned char)*pa) && is_digit((unsigned char)*pb)) {
            const char *sa = pa, *sb = pb, *ea, *eb;
            int c;
            while (*sa == '0')
                sa++;
            while (*sb == '0')
                sb++;
            for (ea = sa; is_digit((unsigned char)*ea); ea++)
                ;
            for (eb = sb; is_digit((unsigned char)*eb); eb++)
                ;
            /* Without leading zeros, a longer run is a larger number. */
            if (ea - sa != eb - sb)
                return ea - sa < eb - sb ? -1 : 1;
            c = memcmp(sa, sb, (size_t)(ea - sa));
            if (c != 0)
                return c < 0 ? -1 : 1;
            pa = ea;
            pb = eb;
        } else {
            if (*pa != *pb)
                return (unsigned char)*pa < (unsigned char)*pb ? -1 : 1;
            pa++;
            pb++;
        }
    }
    if (*pa != *pb)
        return *pa == '\0' ? -1 : 1;
    return strcmp(a, b);
}

/* ------------------------------------------------------------------------ */
/* The probe command                                                         */

int inv_facts_command(const char *nonce, int become, const char *become_user, char **cmd)
{
    struct buf b;
    int rc;

    buf_init(&b, 0);
    if (cmd == NULL)
        return KF_EINVAL;
    *cmd = NULL;
    /* An empty become_user is a configuration mistake, not "root". */
    if (!nonce_valid(nonce) || (become && become_user != NULL && become_user[0] == '\0'))
        return KF_EINVAL;

    if (become) {
        rc = buf_puts(&b, "sudo -n -u ");
        if (rc == 0)
            rc = kf_shquote(&b, become_user != NULL ? become_user : "root");
        if (rc == 0)
            rc = buf_puts(&b, " ");
        if (rc < 0)
            goto out;
    }
    rc = buf_puts(&b, "sh -c ");
    if (rc == 0)
        rc = kf_shquote(&b, probe_script);
    /* $0 names the script in sh's own error messages; $1 is the nonce. */
    if (rc == 0)
        rc = buf_puts(&b, " kfprobe ");
    if (rc == 0)
        rc = kf_shquote(&b, nonce);
    if (rc < 0)
        goto out;
    *cmd = buf_detach(&b, NULL);
    if (*cmd == NULL)
        rc = KF_ENOMEM;
out:
    buf_release(&b);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Sections                                                                  */

enum sec_id {
    SEC_UNAME_R,
    SEC_UNAME_V,
    SEC_UNAME_M,
    SEC_OS_RELEASE,
    SEC_KERNELS,
    SEC_NVIDIA_MODULE,
    SEC_PROC_DRIVER,
    SEC_NVIDIA_SMI,
    SEC_LIBNVIDIA_ML,
    SEC_GPUS,
    SEC_SECURE_BOOT,
    SEC_KFLEET_STATE,
    SEC_END,
    SEC_COUNT
};

static const char *const sec_names[SEC_COUNT] = {
    "uname_r",       "uname_v",      "uname_m",    "os_release",   "kernels",
    "nvidia_module", "proc_driver",  "nvidia_smi", "libnvidia_ml", "gpus",
    "secure_boot",   "kfleet_state", "end",
};

struct sections {
    const char *p[SEC_COUNT]; /* content: from after the marker line ... */
    size_t n[SEC_COUNT];      /* ... to the start of the next marker line */
    int seen[SEC_COUNT];
};

static int sec_lookup(const char *name, size_t n)
{
    int i;

    for (i = 0; i < SEC_COUNT; i++)
        if (span_eq(name, n, sec_names[i]))
            return i;
    return -1;
}

/* Finds the sections of our nonce. Output before the first marker (login
 * banners, shell rc noise) and after the end marker is ignored; a marker
 * line for another nonce is ordinary content of the section it is in; a
 * marker with our nonce and an unknown name closes the current section and
 * its content is skipped. A known section twice is an error: the nonce is
 * fresh per run, so a repeat means the output cannot be trusted to say
 * which copy is real. */
static int split_sections(const char *out, size_t len, const char *nonce, struct sections *sec,
                          struct kf_err *err)
{
    char prefix[48];
    size_t plen;
    struct lines it = {out, len};
    const char *line;
    size_t n;
    int cur = -1;

    memset(sec, 0, sizeof(*sec));
    plen = (size_t)snprintf(prefix, sizeof(prefix), "@@kf:%s:", nonce);
    while (lines_next(&it, &line, &n)) {
        int id;
        if (n < plen || memcmp(line, prefix, plen) != 0)
            continue;
        if (cur >= 0)
            sec->n[cur] = (size_t)(line - sec->p[cur]);
        id = sec_lookup(line + plen, n - plen);
        cur = id;
        if (id < 0)
            continue;
        if (sec->seen[id])
            return kf_err_set(err, KF_EPARSE, "probe output has section '%s' twice", sec_names[id]);
        sec->seen[id] = 1;
        sec->p[id] = it.p;
        if (id == SEC_END)
            return 0;
    }
    if (cur >= 0)
        sec->n[cur] = (size_t)(out + len - sec->p[cur]);
    return 0;
}

/* A one-value section (uname -r): its content without the trailing line
 * ends the probe adds. Anything else, inner newlines included, stays and
 * is judged by the validator. */
static void sec_value(const struct sections *sec, int id, const char **p, size_t *n)
{
    *p = sec->p[id];
    *n = sec->n[id];
    while (*n > 0 && ((*p)[*n - 1] == '\n' || (*p)[*n - 1] == '\r'))
        (*n)--;
}

/* The first line of a section (possibly empty). */
static void sec_first_line(const struct sections *sec, int id, const char **p, size_t *n)
{
    struct lines it = {sec->p[id], sec->n[id]};

    *p = sec->p[id];
    *n = 0;
    (void)lines_next(&it, p, n);
}

/* ------------------------------------------------------------------------ */
/* Section parsers                                                           */

#define SHOW_MAX 300 /* display copy of a node value: 75 bytes shown */

static int parse_uname(const struct sections *sec, struct inv_facts *f, struct kf_err *err)
{
    char show[SHOW_MAX];
    const char *p;
    size_t n, i;

    sec_value(sec, SEC_UNAME_R, &p, &n);
    if (!kf_krel_valid_n(p, n))
        return kf_err_set(err, KF_EUNTRUSTED,
                          "running kernel release '%s' rejected: expected a digit then letters, "
                          "digits, '.', '-', '_' or '+', at most %d bytes",
                          kf_escape_to(show, sizeof(show), p, n), INV_KREL_MAX);
    copy_span(f->kernel, sizeof(f->kernel), p, n);

    /* The architecture picks a builder image, so it is validated, not
     * cleaned up. */
    sec_value(sec, SEC_UNAME_M, &p, &n);
    for (i = 0; i < n; i++)
        if (!is_alpha((unsigned char)p[i]) && !is_digit((unsigned char)p[i]) && p[i] != '_')
            break;
    if (n == 0 || i < n || n >= sizeof(f->arch))
        return kf_err_set(err, KF_EUNTRUSTED,
                          "machine architecture '%s' rejected: expected letters, digits or '_', "
                          "at most %zu bytes",
                          kf_escape_to(show, sizeof(show), p, n), sizeof(f->arch) - 1);
    copy_span(f->arch, sizeof(f->arch), p, n);

    /* uname -v is shown, never used: clean it rather than fail a host. */
    if (sec->seen[SEC_UNAME_V]) {
        sec_first_line(sec, SEC_UNAME_V, &p, &n);
        copy_printable(f->kernel_build, sizeof(f->kernel_build), p, n);
    }
    return 0;
}

/* Unquotes one os-release value the way the file's shell-like syntax
 * defines it: "..." with \" \\ \$ \` escapes, '...' literally, or a bare
 * word. Only printable ASCII is kept; *too_long is set if out was too
 * small. */
static void os_unquote(const char *v, size_t n, char *out, size_t outsz, int *too_long)
{
    size_t i = 0, o = 0;
    char q = 0;

    *too_long = 0;
    if (n > 0 && (v[0] == '"' || v[0] == '\'')) {
        q = v[0];
        i = 1;
    } else {
        while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
    }
    for (; i < n; i++) {
        char c = v[i];
        if (q != 0 && c == q)
            break;
        if (q == '"' && c == '\\' && i + 1 < n &&
            (v[i + 1] == '"' || v[i + 1] == '\\' || v[i + 1] == '$' || v[i + 1] == '`'))
            c = v[++i];
        if (!is_print((unsigned char)c))
            continue;
        if (o + 1 >= outsz) {
            *too_long = 1;
            break;
        }
        out[o++] = c;
    }
    out[o] = '\0';
}

/* An os-release identifier as the spec defines ID and VERSION_ID
 * (0-9, a-z, '.', '_', '-'; upper case tolerated), with single spaces
 * allowed between words for ID_LIKE. These may choose a builder image,
 * so a bad one is dropped rather than cleaned up. */
static int os_ident_valid(const char *s, int spaces)
{
    size_t i;

    if (s[0] == '\0')
        return 0;
    for (i = 0; s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_alpha(c) || is_digit(c) || c == '.' || c == '_' || c == '-')
            continue;
        if (spaces && c == ' ' && i > 0 && s[i + 1] != '\0' && s[i + 1] != ' ')
            continue;
        return 0;
    }
    return 1;
}

static void parse_os_release(const struct sections *sec, struct inv_facts *f)
{
    struct lines it = {sec->p[SEC_OS_RELEASE], sec->n[SEC_OS_RELEASE]};
    const char *line;
    size_t n;

    while (lines_next(&it, &line, &n)) {
        struct {
            const char *key;
            char *dst;
            size_t dstsz;
            int kind; /* 0 ident, 1 ident with spaces, 2 display text */
        } const map[] = {
            {"ID=", f->os_id, sizeof(f->os_id), 0},
            {"VERSION_ID=", f->os_version, sizeof(f->os_version), 0},
            {"ID_LIKE=", f->os_like, sizeof(f->os_like), 1},
            {"PRETTY_NAME=", f->os_pretty, sizeof(f->os_pretty), 2},
        };
        char val[256];
        size_t k;
        int too_long;

        for (k = 0; k < sizeof(map) / sizeof(map[0]); k++) {
            size_t kl = strlen(map[k].key);
            if (!span_starts(line, n, map[k].key))
                continue;
            os_unquote(line + kl, n - kl, val, map[k].dstsz, &too_long);
            /* Later assignments win, as when the file is sourced. */
            if (map[k].kind == 2)
                copy_span(map[k].dst, map[k].dstsz, val, strlen(val));
            else if (!too_long && os_ident_valid(val, map[k].kind == 1))
                copy_span(map[k].dst, map[k].dstsz, val, strlen(val));
            else
                map[k].dst[0] = '\0';
            break;
        }
    }
}

enum { KFL_DEP = 1, KFL_BUILD = 2, KFL_IMAGE = 4 };

static int add_kernel(struct inv_facts *f, const char *rel, size_t n, unsigned flags,
                      struct kf_err *err)
{
    size_t i;

    for (i = 0; i < f->nkernels; i++) {
        struct inv_kernel *k = &f->kernels[i];
        if (span_eq(rel, n, k->release)) {
            /* Merge: the same release may come from /lib/modules and /boot. */
            k->has_modules_dep |= (flags & KFL_DEP) != 0;
            k->has_build |= (flags & KFL_BUILD) != 0;
            k->has_image |= (flags & KFL_IMAGE) != 0;
            return 0;
        }
    }
    /* Fail rather than truncate: a silently shortened list would leave
     * installed kernels without the driver after their next boot. */
    if (f->nkernels == INV_FACTS_MAX_KERNELS)
        return kf_err_set(err, KF_EPARSE,
                          "kernels: more than %d installed kernels; remove old ones from "
                          "/lib/modules and /boot",
                          INV_FACTS_MAX_KERNELS);
    memset(&f->kernels[f->nkernels], 0, sizeof(f->kernels[0]));
    copy_span(f->kernels[f->nkernels].release, sizeof(f->kernels[0].release), rel, n);
    f->kernels[f->nkernels].has_modules_dep = (flags & KFL_DEP) != 0;
    f->kernels[f->nkernels].has_build = (flags & KFL_BUILD) != 0;
    f->kernels[f->nkernels].has_image = (flags & KFL_IMAGE) != 0;
    f->nkernels++;
    return 0;
}

/* "dbi" in any order, each at most once, or "-" for none; -1 if neither. */
static int kernel_flags(const char *s, size_t n)
{
    unsigned flags = 0, bit;
    size_t i;

    if (span_eq(s, n, "-"))
        return 0;
    if (n == 0)
        return -1;
    for (i = 0; i < n; i++) {
        bit = s[i] == 'd' ? KFL_DEP : s[i] == 'b' ? KFL_BUILD : s[i] == 'i' ? KFL_IMAGE : 0;
        if (bit == 0 || (flags & bit))
            return -1;
        flags |= bit;
    }
    return (int)flags;
}

static int cmp_kernel(const void *a, const void *b)
{
    return vercmp(((const struct inv_kernel *)a)->release, ((const struct inv_kernel *)b)->release);
}

/* Needs f->kernel (the running release) already set. Lines that are not
 * "<valid release> <flags>" are skipped, not fatal: names under
 * /lib/modules and /boot are whatever a package left behind, and only the
 * running kernel's name has to be right. */
static int parse_kernels(const struct sections *sec, struct inv_facts *f, struct kf_err *err)
{
    struct lines it = {sec->p[SEC_KERNELS], sec->n[SEC_KERNELS]};
    char show[SHOW_MAX];
    const char *line;
    size_t n, i;
    int rc;

    while (lines_next(&it, &line, &n)) {
        size_t sp = n;
        int flags;
        if (n == 0)
            continue;
        while (sp > 0 && line[sp - 1] != ' ')
            sp--;
        flags = sp > 0 ? kernel_flags(line + sp, n - sp) : -1;
        if (flags < 0 || !kf_krel_valid_n(line, sp - 1)) {
            log_debug("facts: ignoring kernel entry '%s'",
                      kf_escape_to(show, sizeof(show), line, n));
            continue;
        }
        /* dracut's rescue image (/boot/vmlinuz-0-rescue-<machine-id>) is a
         * copy of some other kernel and has no modules tree of its own. */
        if (span_starts(line, sp - 1, "0-rescue-"))
            continue;
        if (flags == 0 && !span_eq(line, sp - 1, f->kernel))
            continue; /* a leftover directory, not an installed kernel */
        rc = add_kernel(f, line, sp - 1, (unsigned)flags, err);
        if (rc < 0)
            return rc;
    }
    /* The running kernel is always listed, even when /lib/modules lacks it
     * (a container, a netboot image, a kernel built elsewhere). */
    rc = add_kernel(f, f->kernel, strlen(f->kernel), 0, err);
    if (rc < 0)
        return rc;
    for (i = 0; i < f->nkernels; i++)
        f->kernels[i].running = strcmp(f->kernels[i].release, f->kernel) == 0;
    qsort(f->kernels, f->nkernels, sizeof(f->kernels[0]), cmp_kernel);
    return 0;
}

/* The loaded kernel module's version: /sys/module/nvidia/version, else
 * the first version-looking word of /proc/driver/nvidia/version's first
 * line ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue
 * Mar  5 ..."; the open modules say "... Open Kernel Module for x86_64
 * 550.54.15  Release Build ..."). The second line holds the gcc version,
 * which would look like a driver version, so it is never read. */
static void parse_loaded_driver(const struct sections *sec, struct inv_facts *f)
{
    struct tok t[32];
    const char *p;
    size_t n, nt, i;

    if (sec->seen[SEC_NVIDIA_MODULE]) {
        sec_value(sec, SEC_NVIDIA_MODULE, &p, &n);
        if (kf_driver_version_valid_n(p, n)) {
            copy_span(f->loaded_driver, sizeof(f->loaded_driver), p, n);
            return;
        }
    }
    if (!sec->seen[SEC_PROC_DRIVER])
        return;
    sec_first_line(sec, SEC_PROC_DRIVER, &p, &n);
    if (!span_starts(p, n, "NVRM version:"))
        return;
    nt = split_ws(p, n, t, sizeof(t) / sizeof(t[0]));
    for (i = 0; i < nt && i < sizeof(t) / sizeof(t[0]); i++) {
        if (kf_driver_version_valid_n(t[i].p, t[i].n)) {
            copy_span(f->loaded_driver, sizeof(f->loaded_driver), t[i].p, t[i].n);
            return;
        }
    }
}

/* nvidia-smi's answer when it exited 0 with a version on its first line
 * (one line per GPU, all equal); else the highest libnvidia-ml.so.<X.Y.Z>
 * installed (a leftover older library can sit beside the current one);
 * else unknown. */
static void parse_userspace_driver(const struct sections *sec, struct inv_facts *f)
{
    struct lines it;
    const char *line, *first = NULL;
    size_t n, first_n = 0;
    int status = -1;

    if (sec->seen[SEC_NVIDIA_SMI]) {
        it.p = sec->p[SEC_NVIDIA_SMI];
        it.left = sec->n[SEC_NVIDIA_SMI];
        while (lines_next(&it, &line, &n)) {
            if (span_starts(line, n, "rc=")) {
                status = span_eq(line, n, "rc=0") ? 0 : 1;
            } else if (first == NULL && n > 0) {
                first = line;
                first_n = n;
            }
        }
        while (first != NULL && first_n > 0 && first[first_n - 1] == ' ')
            first_n--;
        if (status == 0 && first != NULL && kf_driver_version_valid_n(first, first_n)) {
            copy_span(f->userspace_driver, sizeof(f->userspace_driver), first, first_n);
            return;
        }
    }
    if (!sec->seen[SEC_LIBNVIDIA_ML])
        return;
    it.p = sec->p[SEC_LIBNVIDIA_ML];
    it.left = sec->n[SEC_LIBNVIDIA_ML];
    while (lines_next(&it, &line, &n)) {
        static const char lib[] = "libnvidia-ml.so.";
        char ver[KF_DRIVER_MAX + 1];
        size_t base = n;
        while (base > 0 && line[base - 1] != '/')
            base--;
        if (!span_starts(line + base, n - base, lib))
            continue;
        line += base + strlen(lib);
        n -= base + strlen(lib);
        /* libnvidia-ml.so.1 is the soname link; only X.Y[.Z] names count. */
        if (!kf_driver_version_valid_n(line, n))
            continue;
        copy_span(ver, sizeof(ver), line, n);
        if (f->userspace_driver[0] == '\0' || vercmp(ver, f->userspace_driver) > 0)
            memcpy(f->userspace_driver, ver, sizeof(ver));
    }
}

/* "0000:3b:00.0" (domain of 4 to 8 hex digits) or "3b:00.0" (lspci
 * without domains: domain 0). Written lower case into out. */
static int pci_slot(const char *s, size_t n, char *out, size_t outsz)
{
    const char *bdf;
    size_t dom, i;

    if (n < 7)
        return 0;
    bdf = s + n - 7;
    if (!is_hex((unsigned char)bdf[0]) || !is_hex((unsigned char)bdf[1]) || bdf[2] != ':' ||
        !is_hex((unsigned char)bdf[3]) || !is_hex((unsigned char)bdf[4]) || bdf[5] != '.' ||
        bdf[6] < '0' || bdf[6] > '7')
        return 0;
    dom = n - 7;
    if (dom != 0) {
        if (dom < 5 || dom > 9 || s[dom - 1] != ':')
            return 0;
        for (i = 0; i + 1 < dom; i++)
            if (!is_hex((unsigned char)s[i]))
                return 0;
    }
    if (dom + 7 + (dom == 0 ? 5 : 0) >= outsz)
        return 0;
    if (dom == 0)
        memcpy(out, "0000:", 5);
    for (i = 0; i < n; i++)
        out[(dom == 0 ? 5 : 0) + i] = to_lower(s[i]);
    out[(dom == 0 ? 5 : 0) + n] = '\0';
    return 1;
}

static int hex_n(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (!is_hex((unsigned char)s[i]))
            return 0;
    return 1;
}

static int add_gpu(struct inv_facts *f, const char *slot, const char *vendor, const char *device,
                   struct kf_err *err)
{
    size_t i;

    for (i = 0; i < f->ngpus; i++)
        if (strcmp(f->gpus[i].slot, slot) == 0)
            return 0;
    if (f->ngpus == INV_FACTS_MAX_GPUS)
        return kf_err_set(err, KF_EPARSE, "gpus: more than %d NVIDIA GPUs listed",
                          INV_FACTS_MAX_GPUS);
    snprintf(f->gpus[f->ngpus].slot, sizeof(f->gpus[0].slot), "%s", slot);
    snprintf(f->gpus[f->ngpus].id, sizeof(f->gpus[0].id), "%.4s:%.4s", vendor, device);
    for (i = 0; f->gpus[f->ngpus].id[i] != '\0'; i++)
        f->gpus[f->ngpus].id[i] = to_lower(f->gpus[f->ngpus].id[i]);
    f->ngpus++;
    return 0;
}

static int cmp_gpu(const void *a, const void *b)
{
    return strcmp(((const struct inv_gpu *)a)->slot, ((const struct inv_gpu *)b)->slot);
}

/* One PCI function. lspci -D -n: "0000:3b:00.0 0302: 10de:2330 (rev a1)"
 * (pciutils before 3.0 wrote "Class 0302:"); sysfs: "0000:3b:00.0 0x10de
 * 0x2330 0x030200". Only class 03xx (VGA, 3D, other display controller)
 * is a GPU; the audio function (0403) of a graphics card and NVSwitch
 * bridges (0680) are not. Tool output has a fixed shape, so a line that
 * does not fit it means the output is not what we think and is an error. */
static int parse_gpu_line(struct inv_facts *f, int sysfs, const char *line, size_t n,
                          struct kf_err *err)
{
    char slot[32], show[SHOW_MAX];
    struct tok t[6];
    size_t nt, c;

    nt = split_ws(line, n, t, 6);
    if (nt == 0)
        return 0;
    if (nt > 6)
        nt = 6;
    if (sysfs) {
        if (nt != 4 || !pci_slot(t[0].p, t[0].n, slot, sizeof(slot)) || t[1].n != 6 ||
            t[2].n != 6 || t[3].n != 8 || !span_starts(t[1].p, 2, "0x") ||
            !span_starts(t[2].p, 2, "0x") || !span_starts(t[3].p, 2, "0x") ||
            !hex_n(t[1].p + 2, 4) || !hex_n(t[2].p + 2, 4) || !hex_n(t[3].p + 2, 6))
            goto bad;
        if (!span_eq(t[1].p, t[1].n, "0x10de") || !span_starts(t[3].p, t[3].n, "0x03"))
            return 0;
        return add_gpu(f, slot, t[1].p + 2, t[2].p + 2, err);
    }
    c = nt > 1 && span_eq(t[1].p, t[1].n, "Class") ? 2 : 1;
    if (nt < c + 2 || !pci_slot(t[0].p, t[0].n, slot, sizeof(slot)) || t[c].n != 5 ||
        !hex_n(t[c].p, 4) || t[c].p[4] != ':' || t[c + 1].n != 9 || !hex_n(t[c + 1].p, 4) ||
        t[c + 1].p[4] != ':' || !hex_n(t[c + 1].p + 5, 4))
        goto bad;
    if (!span_starts(t[c + 1].p, 4, "10de") || !span_starts(t[c].p, 2, "03"))
        return 0;
    return add_gpu(f, slot, t[c + 1].p, t[c + 1].p + 5, err);
bad:
    return kf_err_set(err, KF_EPARSE, "gpus: malformed %s line '%s'", sysfs ? "sysfs" : "lspci",
                      kf_escape_to(show, sizeof(show), line, n));
}

static int parse_gpus(const struct sections *sec, struct inv_facts *f, struct kf_err *err)
{
    struct lines it = {sec->p[SEC_GPUS], sec->n[SEC_GPUS]};
    char show[SHOW_MAX];
    const char *line;
    size_t n;
    int method = -1; /* 0 lspci, 1 sysfs, 2 none */
    int rc;

    if (!sec->seen[SEC_GPUS])
        return 0; /* gpus_known stays INV_UNKNOWN */
    while (lines_next(&it, &line, &n)) {
        if (n == 0)
            continue;
        if (method < 0) {
            if (span_eq(line, n, "method=lspci"))
                method = 0;
            else if (span_eq(line, n, "method=sysfs"))
                method = 1;
            else if (span_eq(line, n, "method=none"))
                method = 2;
            else
                return kf_err_set(err, KF_EPARSE, "gpus: expected a method line, got '%s'",
                                  kf_escape_to(show, sizeof(show), line, n));
            continue;
        }
        if (method == 2)
            continue;
        rc = parse_gpu_line(f, method == 1, line, n, err);
        if (rc < 0)
            return rc;
    }
    if (method < 0)
        return kf_err_set(err, KF_EPARSE, "gpus: expected a method line, got nothing");
    f->gpus_known = method == 2 ? INV_NO : INV_YES;
    qsort(f->gpus, f->ngpus, sizeof(f->gpus[0]), cmp_gpu);
    return 0;
}

/* mokutil --sb-state says "SecureBoot enabled" / "SecureBoot disabled",
 * adds "SecureBoot validation is disabled in shim" when shim's MokSBState
 * is set (the kernel then treats Secure Boot as off and loads unsigned
 * modules), and on non-UEFI machines says "This system doesn't support
 * Secure Boot" or "EFI variables are not supported on this system".
 * Substrings are matched so colour codes some builds add do not matter.
 * efivars: od prints the 4 attribute bytes and the value byte. mokutil's
 * answer wins when it gave one. */
static void parse_secure_boot(const struct sections *sec, struct inv_facts *f)
{
    struct lines it = {sec->p[SEC_SECURE_BOOT], sec->n[SEC_SECURE_BOOT]};
    enum inv_tristate mok = INV_UNKNOWN, efi = INV_UNKNOWN;
    int mode = 0, shim_off = 0, efi_done = 0;
    const char *line;
    size_t n;

    if (!sec->seen[SEC_SECURE_BOOT])
        return;
    while (lines_next(&it, &line, &n)) {
        if (span_eq(line, n, "method=mokutil")) {
            mode = 1;
        } else if (span_eq(line, n, "method=efivars")) {
            mode = 2;
        } else if (mode == 1) {
            if (span_contains(line, n, "SecureBoot validation is disabled in shim"))
                shim_off = 1;
            else if (mok == INV_UNKNOWN && span_contains(line, n, "SecureBoot enabled"))
                mok = INV_YES;
            else if (mok == INV_UNKNOWN &&
                     (span_contains(line, n, "SecureBoot disabled") ||
                      span_contains(line, n, "doesn't support Secure Boot") ||
                      span_contains(line, n, "EFI variables are not supported")))
                mok = INV_NO;
        } else if (mode == 2 && !efi_done) {
            struct tok t[6];
            size_t nt = split_ws(line, n, t, 6);
            if (nt == 0)
                continue;
            efi_done = 1;
            if (nt == 5 && span_eq(t[4].p, t[4].n, "1"))
                efi = INV_YES;
            else if (nt == 5 && span_eq(t[4].p, t[4].n, "0"))
                efi = INV_NO;
        }
    }
    if (mok == INV_YES && shim_off)
        mok = INV_NO;
    f->secure_boot = mok != INV_UNKNOWN ? mok : efi;
}

/* "KERNEL DRIVER SHA256 PROFILE" of a state's current line: kept (and *n
 * counted) only when every word passes its rule. */
static void parse_kfleet_current(const char *p, size_t n, struct inv_kfleet_current *c,
                                 size_t *count)
{
    const char *w[4];
    size_t wn[4], i = 0, k = 0, j;

    while (k < 4 && i < n) {
        while (i < n && p[i] == ' ')
            i++;
        w[k] = p + i;
        while (i < n && p[i] != ' ')
            i++;
        wn[k] = (size_t)(p + i - w[k]);
        if (wn[k] > 0)
            k++;
    }
    while (i < n && p[i] == ' ')
        i++;
    if (k != 4 || i != n || !kf_krel_valid_n(w[0], wn[0]) ||
        !kf_driver_version_valid_n(w[1], wn[1]) || wn[2] != 64 || wn[3] > 64)
        return;
    for (j = 0; j < wn[3]; j++)
        if (!((w[3][j] >= 'a' && w[3][j] <= 'z') || (w[3][j] >= 'A' && w[3][j] <= 'Z') ||
              (w[3][j] >= '0' && w[3][j] <= '9') || w[3][j] == '_' || w[3][j] == '-'))
            return;
    copy_span(c->kernel, sizeof(c->kernel), w[0], wn[0]);
    copy_span(c->driver, sizeof(c->driver), w[1], wn[1]);
    copy_span(c->profile, sizeof(c->profile), w[3], wn[3]);
    (*count)++;
}

/* /var/lib/kfleet/state: "key=value" lines written by kfleet's node side.
 * A node may have edited it, so values are validated; a bad one is left
 * "" (as if kfleet never installed there) rather than failing the host. */
static void parse_kfleet_state(const struct sections *sec, struct inv_facts *f)
{
    struct lines it = {sec->p[SEC_KFLEET_STATE], sec->n[SEC_KFLEET_STATE]};
    const char *line;
    size_t n;

    if (!sec->seen[SEC_KFLEET_STATE])
        return;
    while (lines_next(&it, &line, &n)) {
        if (span_starts(line, n, "driver=")) {
            f->kfleet_driver[0] = '\0';
            if (kf_driver_version_valid_n(line + 7, n - 7))
                copy_span(f->kfleet_driver, sizeof(f->kfleet_driver), line + 7, n - 7);
        } else if (span_starts(line, n, "kernel=")) {
            f->kfleet_release[0] = '\0';
            if (kf_krel_valid_n(line + 7, n - 7))
                copy_span(f->kfleet_release, sizeof(f->kfleet_release), line + 7, n - 7);
        } else if (span_starts(line, n, "current ") && f->nkfleet_current < INV_FACTS_MAX_KERNELS) {
            parse_kfleet_current(line + 8, n - 8, &f->kfleet_current[f->nkfleet_current],
                                 &f->nkfleet_current);
        }
    }
}

int inv_facts_parse(const char *out, size_t len, const char *nonce, struct inv_facts *f,
                    struct kf_err *err)
{
    static const int required[] = {SEC_END, SEC_UNAME_R, SEC_UNAME_M};
    struct sections sec;
    size_t i;
    int rc;

    kf_err_clear(err);
    if (f == NULL)
        return kf_err_set(err, KF_EINVAL, "inv_facts_parse: no facts to fill");
    memset(f, 0, sizeof(*f));
    if ((out == NULL && len > 0) || !nonce_valid(nonce))
        return kf_err_set(err, KF_EINVAL, "inv_facts_parse: bad output or nonce");
    if (out == NULL)
        out = "";

    rc = split_sections(out, len, nonce, &sec, err);
    if (rc < 0)
        goto out;
    /* "end" first: when output was cut, that is the real cause. */
    for (i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (!sec.seen[required[i]]) {
            rc = kf_err_set(err, KF_EPARSE, "probe output incomplete: no '%s' section",
                            sec_names[required[i]]);
            goto out;
        }
    }
    rc = parse_uname(&sec, f, err);
    if (rc < 0)
        goto out;
    if (sec.seen[SEC_OS_RELEASE])
        parse_os_release(&sec, f);
    rc = parse_kernels(&sec, f, err);
    if (rc < 0)
        goto out;
    parse_loaded_driver(&sec, f);
    parse_userspace_driver(&sec, f);
    rc = parse_gpus(&sec, f, err);
    if (rc < 0)
        goto out;
    parse_secure_boot(&sec, f);
    parse_kfleet_state(&sec, f);
out:
    /* A failed parse leaves no half-filled facts behind. */
    if (rc < 0)
        memset(f, 0, sizeof(*f));
    return rc;
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                      */

static json_t *str_or_null(const char *s)
{
    return s[0] != '\0' ? json_string(s) : json_null();
}

static const char *tristate_name(enum inv_tristate t)
{
    return t == INV_YES ? "enabled" : t == INV_NO ? "disabled" : "unknown";
}

json_t *inv_facts_to_json(const struct inv_facts *f)
{
    json_t *o = NULL, *os = NULL, *kernels = NULL, *gpus = NULL, *kf = NULL;
    size_t i;
    int bad = 0; /* any failed allocation or insertion: the result is NULL */

    if (f == NULL)
        return NULL;
    o = json_object();
    os = json_object();
    kernels = json_array();
    gpus = f->gpus_known == INV_YES ? json_array() : json_null();
    /* "kfleet": null when kfleet never installed anything there. */
    kf = f->kfleet_driver[0] != '\0' || f->kfleet_release[0] != '\0' || f->nkfleet_current > 0
             ? json_object()
             : json_null();
    if (o == NULL || os == NULL || kernels == NULL || gpus == NULL || kf == NULL) {
        bad = 1;
        goto out;
    }

    bad |= json_object_set_new(os, "id", str_or_null(f->os_id));
    bad |= json_object_set_new(os, "version", str_or_null(f->os_version));
    bad |= json_object_set_new(os, "like", str_or_null(f->os_like));
    bad |= json_object_set_new(os, "pretty", str_or_null(f->os_pretty));

    for (i = 0; i < f->nkernels && i < INV_FACTS_MAX_KERNELS; i++) {
        const struct inv_kernel *k = &f->kernels[i];
        bad |= json_array_append_new(
            kernels, json_pack("{s:s, s:b, s:b, s:b, s:b}", "release", k->release, "running",
                               (int)k->running, "modules_dep", (int)k->has_modules_dep, "build",
                               (int)k->has_build, "image", (int)k->has_image));
    }
    /* gpus: null when the node had no way to list PCI devices (or the
     * section was missing), [] when it had and found none. */
    for (i = 0; json_is_array(gpus) && i < f->ngpus && i < INV_FACTS_MAX_GPUS; i++)
        bad |= json_array_append_new(
            gpus, json_pack("{s:s, s:s}", "slot", f->gpus[i].slot, "id", f->gpus[i].id));
    if (json_is_object(kf)) {
        json_t *cur = json_array();
        bad |= json_object_set_new(kf, "driver", str_or_null(f->kfleet_driver));
        bad |= json_object_set_new(kf, "kernel", str_or_null(f->kfleet_release));
        for (i = 0; cur != NULL && i < f->nkfleet_current; i++)
            bad |= json_array_append_new(cur, json_pack("{s:s, s:s, s:s}", "kernel",
                                                        f->kfleet_current[i].kernel, "driver",
                                                        f->kfleet_current[i].driver, "profile",
                                                        f->kfleet_current[i].profile));
        bad |= json_object_set_new(kf, "current", cur ? cur : json_array());
    }

    bad |= json_object_set_new(o, "kernel", json_string(f->kernel));
    bad |= json_object_set_new(o, "kernel_build", json_string(f->kernel_build));
    bad |= json_object_set_new(o, "arch", json_string(f->arch));
    bad |= json_object_set_new(o, "os", os);
    os = NULL; /* transferred */
    bad |= json_object_set_new(o, "kernels", kernels);
    kernels = NULL; /* transferred */
    bad |= json_object_set_new(o, "loaded_driver", str_or_null(f->loaded_driver));
    bad |= json_object_set_new(o, "userspace_driver", str_or_null(f->userspace_driver));
    bad |= json_object_set_new(o, "gpus", gpus);
    gpus = NULL; /* transferred */
    bad |= json_object_set_new(o, "secure_boot", json_string(tristate_name(f->secure_boot)));
    bad |= json_object_set_new(o, "kfleet", kf);
    kf = NULL; /* transferred */
out:
    json_decref(kf);
    json_decref(gpus);
    json_decref(kernels);
    json_decref(os);
    if (bad) {
        json_decref(o);
        o = NULL;
    }
    return o;
}
