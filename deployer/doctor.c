/* kfleet doctor: the read-only node probe and the analysis of its output.
 *
 * The probe prints raw observations in sections, like the facts probe
 * (inventory/facts.c), and then runs the facts probe itself, so one SSH
 * command answers both and the facts parser validates what they share
 * (kernels, driver versions, GPUs, Secure Boot). Every judgement is made
 * here in C, where it is tested: which module file modprobe would load,
 * which kernel a vermagic names, what a kernel log line means, whether an
 * apt blacklist entry covers the kernel packages.
 *
 * Node output is untrusted: values are validated (common/valid.h) before
 * they are compared or quoted as values, and every other piece of node
 * text in a finding goes through kf_escape, so findings are printable
 * ASCII whatever the node sent. Each section's work and memory are
 * bounded: a node can make its own report long, not kfleet slow. */
#include "doctor.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* The probe script                                                          */

/* The same rules as the facts probe (see inventory/facts.c): POSIX sh, no
 * single quote, backslash or '!' anywhere (it travels as one single-quoted
 * word through the login shell; tests/unit/test_doctor.c checks), constant
 * text (nonce, module pattern and the facts command arrive as $1, $2,
 * $3), no stdin, every tool optional, raw data printed with printf "%s".
 * Nothing here writes anywhere but stdout. The facts probe runs last: its
 * end marker then proves that the whole output arrived. */
static const char probe_script[] =
    "K=$1\n"
    "P=$2\n"
    "exec </dev/null\n"
    "LC_ALL=C\n"
    "export LC_ALL\n"
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH\n"
    "export PATH\n"
    "s() { echo; echo \"@@kf:$K:$1\"; }\n"
    "have() { command -v \"$1\" >/dev/null 2>&1; }\n"
    "run() { if have timeout; then timeout 20 \"$@\"; else \"$@\"; fi; }\n"
    "NL=\"\n\"\n"
    "MI=0\n"
    "have modinfo && MI=1\n"
    "TL=0\n"
    "have tail && TL=1\n"
    "last() { if [ \"$TL\" = 1 ]; then tail -n \"$1\"; else cat; fi; }\n"
    /* One module file: its path, what modinfo says of it (or, without
     * kmod, the .modinfo strings of an uncompressed one), and whether it
     * ends with the signature marker. A compressed module carries its
     * signature inside, so only modinfo's signer tells for those. */
    "kofile() {\n"
    "    printf \"f=%s\" \"$1\"\n"
    "    echo\n"
    "    if [ \"$MI\" = 1 ]; then\n"
    "        modinfo \"$1\" 2>/dev/null | sed -n -e \"/^version:/p\" -e \"/^vermagic:/p\" "
    "-e \"/^signer:/p\"\n"
    "    else\n"
    "        case $1 in\n"
    "        *.ko) tr -c \"[:print:]\" \"$NL\" <\"$1\" 2>/dev/null | sed -n -e "
    "\"s/^version=/version: "
    "/p\" -e \"s/^vermagic=/vermagic: /p\" | last 4 ;;\n"
    "        esac\n"
    "    fi\n"
    "    if [ \"$TL\" = 1 ]; then\n"
    "        case $(tail -c 28 \"$1\" 2>/dev/null) in\n"
    "        \"~Module signature appended~\") echo marker=yes ;;\n"
    "        *) echo marker=no ;;\n"
    "        esac\n"
    "    fi\n"
    "}\n"
    /* NVIDIA's modules and the profile's module, wherever they are under
     * /lib/modules (kfleet's updates/kfleet, DKMS's updates/dkms, a
     * distribution's kernel/drivers/video or extra/). Without find, the
     * usual places. At most 256 files. */
    "s d_modules\n"
    "if have find; then\n"
    "    find /lib/modules/ \"(\" -name \"nvidia*.ko*\" -o -name \"$P\" \")\" -type f 2>/dev/null\n"
    "else\n"
    "    for k in /lib/modules/*; do\n"
    "        # shellcheck disable=SC2231\n"
    "        for f in \"$k\"/updates/nvidia*.ko* \"$k\"/updates/*/nvidia*.ko* "
    "\"$k\"/extra/nvidia*.ko* "
    "\"$k\"/extra/*/nvidia*.ko* \"$k\"/kernel/drivers/video/nvidia*.ko* "
    "\"$k\"/kernel/drivers/video/*/nvidia*.ko* \"$k\"/updates/$P \"$k\"/updates/*/$P "
    "\"$k\"/extra/$P \"$k\"/extra/*/$P; do\n"
    "            [ -f \"$f\" ] && printf \"%s\" \"$f\" && echo\n"
    "        done\n"
    "    done\n"
    "fi | {\n"
    "    n=0\n"
    "    while IFS= read -r f; do\n"
    "        n=$((n + 1))\n"
    "        [ \"$n\" -le 256 ] || break\n"
    "        kofile \"$f\"\n"
    "    done\n"
    "}\n"
    /* DKMS's own records: /var/lib/dkms/PACKAGE/VERSION and the
     * kernel-RELEASE-ARCH links of what it installed. */
    "s d_dkms\n"
    "for d in /var/lib/dkms/nvidia*/*; do\n"
    "    [ -e \"$d\" ] || [ -L \"$d\" ] || continue\n"
    "    printf \"%s\" \"$d\"\n"
    "    echo\n"
    "done\n"
    /* The kernel log of this boot (dmesg needs root or
     * kernel.dmesg_restrict=0; the journal keeps it too, and shows a user
     * without the right group nothing, with status 0), else kern.log,
     * which may reach back to earlier boots. The last 300 lines that
     * matter; the first line says where they came from. */
    "s d_kmsg\n"
    "R=\"NVRM|nvidia|nouveau|lockdown|module verification|unsigned module|unavailable "
    "key|rejected by service|PKCS#7\"\n"
    "if have dmesg && dmesg >/dev/null 2>&1; then\n"
    "    echo method=dmesg\n"
    "    dmesg 2>/dev/null | grep -i -E \"$R\" | last 300\n"
    "elif have journalctl && j=$(journalctl -k -b -n 1 -q --no-pager 2>/dev/null) &&\n"
    "    [ -n \"$j\" ]; then\n"
    "    echo method=journal\n"
    "    journalctl -k -b -q --no-pager 2>/dev/null | grep -i -E \"$R\" | last 300\n"
    "elif [ -f /var/log/kern.log ] && [ -r /var/log/kern.log ]; then\n"
    "    echo method=kern.log\n"
    "    grep -i -E \"$R\" /var/log/kern.log 2>/dev/null | last 300\n"
    "else\n"
    "    echo method=none\n"
    "fi\n"
    /* Every NVIDIA PCI function: "<slot> <class> <driver> <iommu group>",
     * "-" for none; the driver is the name its sysfs link points to. */
    "s d_pci\n"
    "for d in /sys/bus/pci/devices/*; do\n"
    "    [ -r \"$d/vendor\" ] || continue\n"
    "    v=\n"
    "    read -r v <\"$d/vendor\"\n"
    "    [ \"$v\" = 0x10de ] || continue\n"
    "    c=\n"
    "    read -r c 2>/dev/null <\"$d/class\"\n"
    "    dr=-\n"
    "    if [ -e \"$d/driver\" ] || [ -L \"$d/driver\" ]; then\n"
    "        if have readlink; then dr=$(readlink \"$d/driver\"); else dr=$(ls -ld \"$d/driver\"); "
    "fi\n"
    "    fi\n"
    "    g=-\n"
    "    if [ -e \"$d/iommu_group\" ] || [ -L \"$d/iommu_group\" ]; then\n"
    "        if have readlink; then g=$(readlink \"$d/iommu_group\"); else g=$(ls -ld "
    "\"$d/iommu_group\"); fi\n"
    "    fi\n"
    "    printf \"%s %s %s %s\" \"${d##*/}\" \"${c:--}\" \"${dr##*/}\" \"${g##*/}\"\n"
    "    echo\n"
    "done\n"
    "s d_iommu\n"
    "if [ -d /sys/class/iommu ]; then\n"
    "    echo present\n"
    "    for d in /sys/class/iommu/*; do\n"
    "        [ -e \"$d\" ] || [ -L \"$d\" ] || continue\n"
    "        printf \"%s\" \"${d##*/}\"\n"
    "        echo\n"
    "    done\n"
    "fi\n"
    "s d_cmdline\n"
    "[ -r /proc/cmdline ] && cat /proc/cmdline 2>/dev/null\n"
    /* nouveau: loaded, available (for which kernels: the parser keeps the
     * running one's), and every modprobe.d line that names it
     * ("FILE:LINE"; /dev/null makes grep print the file name even for one
     * file). */
    "s d_nouveau\n"
    "[ -d /sys/module/nouveau ] && echo state=loaded\n"
    "for f in /lib/modules/*/kernel/drivers/gpu/drm/nouveau/nouveau.ko*; do\n"
    "    [ -e \"$f\" ] && printf \"ko=%s\" \"$f\" && echo\n"
    "done\n"
    "grep -i -s nouveau /etc/modprobe.d/*.conf /run/modprobe.d/*.conf "
    "/usr/local/lib/modprobe.d/*.conf /usr/lib/modprobe.d/*.conf /lib/modprobe.d/*.conf "
    "/dev/null 2>/dev/null\n"
    /* Module signature enforcement and the keys the kernel trusts: the
     * MOK list as mokutil shows it (subject lines), and the asymmetric
     * keys of the kernel's keyrings that this user may see. */
    "s d_secure\n"
    "e=/sys/module/module/parameters/sig_enforce\n"
    "[ -r \"$e\" ] && printf \"sig_enforce=\" && cat \"$e\" 2>/dev/null\n"
    "e=/sys/kernel/security/lockdown\n"
    "[ -r \"$e\" ] && printf \"lockdown=\" && cat \"$e\" 2>/dev/null\n"
    "if have mokutil; then\n"
    "    echo method=mokutil\n"
    "    run mokutil --list-enrolled 2>&1 | grep -i -E \"Subject:|is empty|not supported\" | last "
    "64\n"
    "fi\n"
    "if [ -r /proc/keys ]; then\n"
    "    echo method=keys\n"
    "    grep asymmetri /proc/keys 2>/dev/null | last 64\n"
    "fi\n"
    /* Automatic upgrades: unattended-upgrades and its apt configuration,
     * the installed kernel and NVIDIA packages (dpkg's file lists),
     * dnf-automatic's configuration, and whether their timers are on. */
    "s d_upgrades\n"
    "if [ -e /usr/bin/unattended-upgrade ] || [ -e /var/lib/dpkg/info/unattended-upgrades.list ]; "
    "then\n"
    "    echo uu=present\n"
    "fi\n"
    "if have systemctl; then\n"
    "    for t in apt-daily-upgrade.timer dnf-automatic.timer dnf-automatic-install.timer; do\n"
    "        printf \"timer %s %s\" \"$t\" \"$(systemctl is-enabled \"$t\" 2>/dev/null)\"\n"
    "        echo\n"
    "    done\n"
    "fi\n"
    "for f in /var/lib/dpkg/info/*nvidia*.list /var/lib/dpkg/info/linux-image-*.list; do\n"
    "    [ -e \"$f\" ] || continue\n"
    "    f=${f##*/}\n"
    "    printf \"pkg=%s\" \"${f%.list}\"\n"
    "    echo\n"
    "done\n"
    "for f in /etc/apt/apt.conf.d/* /etc/dnf/automatic.conf /etc/dnf/dnf.conf "
    "/etc/dnf/plugins/versionlock.list; do\n"
    "    [ -f \"$f\" ] || continue\n"
    "    printf \"file=%s\" \"$f\"\n"
    "    echo\n"
    "    cat \"$f\" 2>/dev/null\n"
    "    echo\n"
    "done\n"
    "sh -c \"$3\"\n";

/* ------------------------------------------------------------------------ */
/* Small byte helpers (ASCII only: node data must not depend on locale)      */

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_alnum(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_print(unsigned char c)
{
    return c >= 0x20 && c < 0x7f;
}

static int to_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* c is one of set's characters (never true for NUL, unlike strchr). */
static int in_set(char c, const char *set)
{
    return c != '\0' && strchr(set, c) != NULL;
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

/* The offset of lit in s, or -1. Bounded: n * strlen(lit). */
static long span_find(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit), i;

    for (i = 0; l <= n && i <= n - l; i++)
        if (s[i] == lit[0] && memcmp(s + i, lit, l) == 0)
            return (long)i;
    return -1;
}

static int span_contains(const char *s, size_t n, const char *lit)
{
    return span_find(s, n, lit) >= 0;
}

static int ci_eq(const char *a, const char *b)
{
    for (; *a != '\0' && *b != '\0'; a++, b++)
        if (to_lower((unsigned char)*a) != to_lower((unsigned char)*b))
            return 0;
    return *a == *b;
}

static void copy_span(char *dst, size_t dstsz, const char *s, size_t n)
{
    if (n >= dstsz)
        n = dstsz - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* Printable ASCII only, truncated to fit: for node text that is compared
 * or shown, never used in a path or command. */
static void copy_printable(char *dst, size_t dstsz, const char *s, size_t n)
{
    size_t i, o = 0;

    for (i = 0; i < n && o + 1 < dstsz; i++)
        if (is_print((unsigned char)s[i]))
            dst[o++] = s[i];
    dst[o] = '\0';
}

static void trim(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

/* Lines of a byte range: no NUL needed, a last line without '\n' counts,
 * one trailing '\r' is dropped. */
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

/* The word starting at s[*i] (up to a space or tab), skipping blanks
 * first; 0 when there is none. */
static int next_word(const char *s, size_t n, size_t *i, const char **w, size_t *wn)
{
    while (*i < n && (s[*i] == ' ' || s[*i] == '\t'))
        (*i)++;
    if (*i == n)
        return 0;
    *w = s + *i;
    while (*i < n && s[*i] != ' ' && s[*i] != '\t')
        (*i)++;
    *wn = (size_t)(s + *i - *w);
    return 1;
}

/* Driver versions (already valid): numeric, part by part. */
static int ver_cmp(const char *a, const char *b)
{
    while (*a != '\0' || *b != '\0') {
        unsigned long long x = 0, y = 0;
        while (is_digit((unsigned char)*a))
            x = x * 10 + (unsigned)(*a++ - '0');
        while (is_digit((unsigned char)*b))
            y = y * 10 + (unsigned)(*b++ - '0');
        if (x != y)
            return x < y ? -1 : 1;
        if (*a == '.')
            a++;
        if (*b == '.')
            b++;
    }
    return 0;
}

/* A driver version from the first word of s, validated, into out. */
static int take_version(const char *s, size_t n, char *out, size_t outsz)
{
    size_t i = 0, wn;
    const char *w;

    out[0] = '\0';
    if (!next_word(s, n, &i, &w, &wn))
        return 0;
    /* "570.124.06." at the end of a sentence. */
    while (wn > 0 && (w[wn - 1] == '.' || w[wn - 1] == ','))
        wn--;
    if (!kf_driver_version_valid_n(w, wn) || wn >= outsz)
        return 0;
    copy_span(out, outsz, w, wn);
    return 1;
}

/* "0000:3b:00.0": 4 to 8 hex digits of domain, bus, device, function. */
static int pci_slot_valid(const char *s, size_t n)
{
    size_t dom, i;

    if (n < 12 || n > 16)
        return 0;
    dom = n - 8;
    for (i = 0; i < dom; i++)
        if (!is_hex((unsigned char)s[i]))
            return 0;
    s += dom;
    return s[0] == ':' && is_hex((unsigned char)s[1]) && is_hex((unsigned char)s[2]) &&
           s[3] == ':' && is_hex((unsigned char)s[4]) && is_hex((unsigned char)s[5]) &&
           s[6] == '.' && s[7] >= '0' && s[7] <= '7';
}

static int name_valid_n(const char *s, size_t n, size_t max)
{
    size_t i;

    if (n == 0 || n > max)
        return 0;
    for (i = 0; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
            return 0;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Patterns: apt's Package-Blacklist entries and dnf's exclude globs         */

/* A compiled pattern: literal bytes, any one byte, any run of bytes.
 * Matching is the classic wildcard walk with one backtrack point, so it
 * is O(text * pattern) whatever a node wrote. */
#define PAT_MAX 64
enum { PAT_LIT, PAT_ONE, PAT_ANY };

struct pattern {
    unsigned char kind[PAT_MAX];
    char c[PAT_MAX];
    size_t n;
};

static int pat_add(struct pattern *p, int kind, char c)
{
    if (p->n == PAT_MAX)
        return -1;
    if (kind == PAT_ANY && p->n > 0 && p->kind[p->n - 1] == PAT_ANY)
        return 0;
    p->kind[p->n] = (unsigned char)kind;
    p->c[p->n] = c;
    p->n++;
    return 0;
}

static int pat_match(const struct pattern *p, const char *t)
{
    size_t pi = 0, ti = 0, tn = strlen(t), star_p = (size_t)-1, star_t = 0;

    while (ti < tn) {
        if (pi < p->n &&
            (p->kind[pi] == PAT_ONE || (p->kind[pi] == PAT_LIT && p->c[pi] == t[ti]))) {
            pi++;
            ti++;
        } else if (pi < p->n && p->kind[pi] == PAT_ANY) {
            star_p = pi++;
            star_t = ti;
        } else if (star_p != (size_t)-1) {
            pi = star_p + 1;
            ti = ++star_t;
        } else {
            return 0;
        }
    }
    while (pi < p->n && p->kind[pi] == PAT_ANY)
        pi++;
    return pi == p->n;
}

/* unattended-upgrades matches Package-Blacklist entries as Python regular
 * expressions from the start of the package name (re.match). The common
 * forms are compiled exactly: literals, '.', '.*', '\.' escapes, a
 * leading '^' and a trailing '$'. Anything richer ('[', '(', '|', '+',
 * '?', '{', a '*' after something else) is judged by its literal prefix,
 * which can only say "covered" for names the entry really could match. */
static int regex_covers(const char *re, const char *name)
{
    struct pattern p;
    size_t i = 0, n = strlen(re);
    int anchored_end = 0;

    memset(&p, 0, sizeof(p));
    if (n > 0 && re[0] == '^')
        i = 1;
    if (n > i && re[n - 1] == '$' && (n < 2 || re[n - 2] != '\\')) {
        anchored_end = 1;
        n--;
    }
    for (; i < n; i++) {
        char c = re[i];
        int rc;
        if (c == '\\' && i + 1 < n && !is_alnum((unsigned char)re[i + 1])) {
            rc = pat_add(&p, PAT_LIT, re[++i]);
        } else if (c == '.' && i + 1 < n && re[i + 1] == '*') {
            rc = pat_add(&p, PAT_ANY, 0);
            i++;
        } else if (c == '.') {
            rc = pat_add(&p, PAT_ONE, 0);
        } else if (in_set(c, "[]()|+?{}*\\^$")) {
            /* Unsupported: the literal prefix so far, then anything. */
            anchored_end = 0;
            if (pat_add(&p, PAT_ANY, 0) < 0)
                return 0;
            break;
        } else {
            rc = pat_add(&p, PAT_LIT, c);
        }
        if (rc < 0)
            return 0;
    }
    if (!anchored_end && pat_add(&p, PAT_ANY, 0) < 0)
        return 0;
    return pat_match(&p, name);
}

/* A dnf exclude / versionlock glob ('*', '?'; a '[' class ends the
 * pattern with a wildcard, the same conservative rule as above). */
static int glob_covers(const char *g, size_t n, const char *name)
{
    struct pattern p;
    size_t i;

    memset(&p, 0, sizeof(p));
    for (i = 0; i < n; i++) {
        int rc;
        if (g[i] == '*')
            rc = pat_add(&p, PAT_ANY, 0);
        else if (g[i] == '?')
            rc = pat_add(&p, PAT_ONE, 0);
        else if (g[i] == '[') {
            if (pat_add(&p, PAT_ANY, 0) < 0)
                return 0;
            break;
        } else
            rc = pat_add(&p, PAT_LIT, g[i]);
        if (rc < 0)
            return 0;
    }
    return p.n > 0 && pat_match(&p, name);
}

/* ------------------------------------------------------------------------ */
/* The probe command                                                         */

/* The module's file name as a find/case glob: '-' and '_' are the same
 * character in a module name, and the file may be compressed. */
static int module_glob(struct buf *b, const char *module)
{
    int rc = 0;

    for (; rc == 0 && *module != '\0'; module++)
        rc = (*module == '-' || *module == '_') ? buf_puts(b, "[-_]") : buf_append(b, module, 1);
    return rc == 0 ? buf_puts(b, ".ko*") : rc;
}

int deploy_doctor_command(const char *nonce, int become, const char *become_user,
                          const char *module, char **cmd)
{
    struct buf b, glob;
    char *facts = NULL;
    int rc;

    buf_init(&b, 0);
    buf_init(&glob, 0);
    if (cmd == NULL)
        return KF_EINVAL;
    *cmd = NULL;
    if (module == NULL)
        module = "nvidia";
    if (!kf_modname_valid(module) || (become && become_user != NULL && become_user[0] == '\0'))
        return KF_EINVAL;
    /* Validates the nonce too. Without become: the whole command is
     * already under sudo when it has to be. */
    rc = inv_facts_command(nonce, 0, NULL, &facts);
    if (rc < 0)
        goto out;
    rc = module_glob(&glob, module);
    if (rc < 0)
        goto out;
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
    if (rc == 0)
        rc = buf_puts(&b, " kfdoctor ");
    if (rc == 0)
        rc = kf_shquote(&b, nonce);
    if (rc == 0)
        rc = buf_puts(&b, " ");
    if (rc == 0)
        rc = kf_shquote(&b, buf_cstr(&glob));
    if (rc == 0)
        rc = buf_puts(&b, " ");
    if (rc == 0)
        rc = kf_shquote(&b, facts);
    if (rc < 0)
        goto out;
    *cmd = buf_detach(&b, NULL);
    if (*cmd == NULL)
        rc = KF_ENOMEM;
out:
    free(facts);
    buf_release(&glob);
    buf_release(&b);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Sections                                                                  */

enum sec_id {
    SEC_MODULES,
    SEC_DKMS,
    SEC_KMSG,
    SEC_PCI,
    SEC_IOMMU,
    SEC_CMDLINE,
    SEC_NOUVEAU,
    SEC_SECURE,
    SEC_UPGRADES,
    SEC_NVIDIA_SMI, /* the facts probe's, read raw here too */
    SEC_LIBNVIDIA_ML,
    SEC_KFLEET_STATE,
    SEC_END,
    SEC_COUNT,
    SEC_FIRST_FACTS = SEC_NVIDIA_SMI
};

static const char *const sec_names[SEC_COUNT] = {
    "d_modules",    "d_dkms",       "d_kmsg",   "d_pci",      "d_iommu",
    "d_cmdline",    "d_nouveau",    "d_secure", "d_upgrades", "nvidia_smi",
    "libnvidia_ml", "kfleet_state", "end",
};

struct sections {
    const char *p[SEC_COUNT];
    size_t n[SEC_COUNT];
    int seen[SEC_COUNT];
};

/* As inv_facts_parse splits its own: text before the first marker and
 * after "end" is ignored, a marker of another nonce is content, a marker
 * with our nonce and a name we do not read closes the section before it,
 * and a section we read twice is an error. */
static int split_sections(const char *out, size_t len, const char *nonce, struct sections *sec,
                          struct kf_err *err)
{
    char prefix[48];
    size_t plen, n;
    struct lines it = {out, len};
    const char *line;
    int cur = -1, i;

    memset(sec, 0, sizeof(*sec));
    plen = (size_t)snprintf(prefix, sizeof(prefix), "@@kf:%s:", nonce);
    while (lines_next(&it, &line, &n)) {
        if (n < plen || memcmp(line, prefix, plen) != 0)
            continue;
        if (cur >= 0)
            sec->n[cur] = (size_t)(line - sec->p[cur]);
        cur = -1;
        for (i = 0; i < SEC_COUNT; i++)
            if (span_eq(line + plen, n - plen, sec_names[i]))
                cur = i;
        if (cur < 0)
            continue;
        if (sec->seen[cur])
            return kf_err_set(err, KF_EPARSE, "probe output has section '%s' twice",
                              sec_names[cur]);
        sec->seen[cur] = 1;
        sec->p[cur] = it.p;
        if (cur == SEC_END)
            return 0;
    }
    if (cur >= 0)
        sec->n[cur] = (size_t)(out + len - sec->p[cur]);
    return 0;
}

static void sec_lines(const struct sections *sec, int id, struct lines *it)
{
    it->p = sec->p[id];
    it->left = sec->seen[id] ? sec->n[id] : 0;
}

/* ------------------------------------------------------------------------ */
/* What the sections say                                                     */

#define MAX_FILES 256
#define MAX_DKMS 32
#define MAX_PCI 64
#define MAX_KMSG_KEEP 8
#define MAX_KEYS 64
#define MAX_PKGS 64
#define MAX_BLACKLIST 64
#define SHOW 240 /* bytes of node text quoted in a finding */

enum loc { LOC_KFLEET, LOC_DKMS, LOC_UPDATES, LOC_KERNEL, LOC_EXTRA, LOC_OTHER };

struct modfile {
    char path[200];                /* validated shape: [A-Za-z0-9._+/-] */
    char kernel[KF_KREL_MAX + 1];  /* the /lib/modules/K it is in */
    char name[KF_MODNAME_MAX + 1]; /* module name, '-' written '_' */
    enum loc loc;
    int compressed;
    char version[KF_DRIVER_MAX + 1]; /* valid, or "" */
    int has_version;                 /* a version line was seen (the first one counts) */
    int has_vermagic;
    char vermagic[120];              /* printable copy */
    char vm_kernel[KF_KREL_MAX + 1]; /* its first word when a valid release */
    char signer[96];                 /* printable copy, "" unsigned or unknown */
    int marker;                      /* -1 unknown, 0 no signature marker, 1 marker */
};

struct dkms_entry {
    char pkg[32];
    char version[KF_DRIVER_MAX + 1]; /* a registered version, or "" */
    char kernel[KF_KREL_MAX + 1];    /* an installed-for link, or "" */
};

struct pcidev {
    char slot[17];
    char klass[9]; /* "0x030200" */
    char driver[33];
    char group[12];
};

enum kmsg_kind {
    KM_API,
    KM_BAR,
    KM_BAR_REGION,
    KM_PROBE,
    KM_FELL,
    KM_XID,
    KM_UNSUPPORTED,
    KM_SIGREJ,
    KM_COUNT
};

struct kmsg_hit {
    unsigned count;
    char first[4 * SHOW + 8]; /* escaped: kf_escape_to shows a quarter of its size */
    char last[4 * SHOW + 8];
    char lastraw[SHOW]; /* printable copy, for value extraction */
};

struct state_line {
    char kernel[KF_KREL_MAX + 1];
    char driver[KF_DRIVER_MAX + 1];
};

/* apt.conf, as far as unattended-upgrades is concerned. */
struct aptconf {
    char uu[16]; /* APT::Periodic::Unattended-Upgrade */
    char uu_where[120];
    int uu_set;
    char enable[16]; /* APT::Periodic::Enable */
    int enable_set;
    int reboot; /* Unattended-Upgrade::Automatic-Reboot "true" */
    char blacklist[MAX_BLACKLIST][64];
    size_t nblacklist;
};

struct dnfconf {
    int present;       /* /etc/dnf/automatic.conf exists */
    int apply_updates; /* [commands] apply_updates = yes */
    char excludes[MAX_BLACKLIST][64];
    size_t nexcludes;
    int kernel_locked; /* a versionlock entry for kernel* */
};

struct dctx {
    const struct deploy_doctor_ctx *ctx;
    const char *module; /* normalised: '_' */
    char module_norm[KF_MODNAME_MAX + 1];
    struct inv_facts *f;

    struct modfile files[MAX_FILES];
    size_t nfiles;

    struct dkms_entry dkms[MAX_DKMS];
    size_t ndkms;

    int kmsg_method; /* 0 none/unknown, 1 dmesg, 2 journal, 3 kern.log */
    struct kmsg_hit km[KM_COUNT];
    char api_client[KF_DRIVER_MAX + 1], api_module[KF_DRIVER_MAX + 1];

    struct pcidev pci[MAX_PCI];
    size_t npci;

    int iommu_present; /* /sys/class/iommu exists */
    char iommu_units[160];
    size_t niommu;

    char cmdline[512];

    int nouveau_loaded;
    int nouveau_ko;
    char nouveau_ko_path[4 * 160];
    int nouveau_blacklisted;
    char nouveau_blacklist_where[4 * 200];

    int sig_enforce; /* -1 unknown, 0, 1 */
    char lockdown[24];
    int mok_method, mok_empty, mok_unsupported;
    char mok_cn[MAX_KEYS][96];
    size_t nmok;
    int keys_method;
    char keys[MAX_KEYS][160];
    size_t nkeys;

    int uu_present;
    char timer_apt[16], timer_dnf[16], timer_dnf_install[16];
    char pkgs[MAX_PKGS][64];
    size_t npkgs;
    struct aptconf apt;
    struct dnfconf dnf;

    int smi_present, smi_rc, smi_mismatch;
    char smi_line[4 * SHOW + 8]; /* escaped */
    char nvml_lib[KF_DRIVER_MAX + 1];
    char lib_version[KF_DRIVER_MAX + 1]; /* highest libnvidia-ml.so.X.Y.Z */
    char lib_path[4 * 160];

    struct state_line state[INV_FACTS_MAX_KERNELS];
    size_t nstate;

    struct deploy_doctor_report *r;
    int nomem;
};

/* --- d_modules ------------------------------------------------------------ */

static enum loc loc_of(const char *rel)
{
    if (strncmp(rel, "updates/kfleet/", 15) == 0)
        return LOC_KFLEET;
    if (strncmp(rel, "updates/dkms/", 13) == 0)
        return LOC_DKMS;
    if (strncmp(rel, "updates/", 8) == 0)
        return LOC_UPDATES;
    if (strncmp(rel, "kernel/", 7) == 0)
        return LOC_KERNEL;
    if (strncmp(rel, "extra/", 6) == 0)
        return LOC_EXTRA;
    return LOC_OTHER;
}

static void norm_modname(char *dst, size_t dstsz, const char *s, size_t n)
{
    size_t i;

    copy_span(dst, dstsz, s, n);
    for (i = 0; dst[i] != '\0'; i++)
        if (dst[i] == '-')
            dst[i] = '_';
}

/* "f=/lib/modules/K/REL/NAME.ko[.xz|.zst|.gz]" with a valid K, a
 * plain-character path and no "..": anything else is not a module file
 * we will talk about. */
static int start_file(struct dctx *c, const char *p, size_t n)
{
    static const char root[] = "/lib/modules/";
    static const char *const sfx[] = {".ko", ".ko.xz", ".ko.zst", ".ko.gz"};
    struct modfile *m;
    const char *k, *slash, *base;
    size_t kn, i, bn, s;

    if (c->nfiles == MAX_FILES || n >= sizeof(c->files[0].path) || !span_starts(p, n, root))
        return 0;
    for (i = 0; i < n; i++)
        if (!is_alnum((unsigned char)p[i]) && !in_set(p[i], "._+/-"))
            return 0;
    if (span_contains(p, n, "/../") || span_contains(p, n, "//"))
        return 0;
    k = p + strlen(root);
    slash = memchr(k, '/', (size_t)(p + n - k));
    if (slash == NULL)
        return 0;
    kn = (size_t)(slash - k);
    if (!kf_krel_valid_n(k, kn))
        return 0;
    base = p + n;
    while (base > slash + 1 && base[-1] != '/')
        base--;
    bn = (size_t)(p + n - base);
    for (s = 0; s < sizeof(sfx) / sizeof(sfx[0]); s++) {
        size_t l = strlen(sfx[s]);
        if (bn > l && memcmp(base + bn - l, sfx[s], l) == 0) {
            bn -= l;
            break;
        }
    }
    if (s == sizeof(sfx) / sizeof(sfx[0]) || !name_valid_n(base, bn, KF_MODNAME_MAX) ||
        memchr(base, '.', bn) != NULL)
        return 0;
    m = &c->files[c->nfiles++];
    memset(m, 0, sizeof(*m));
    copy_span(m->path, sizeof(m->path), p, n);
    copy_span(m->kernel, sizeof(m->kernel), k, kn);
    norm_modname(m->name, sizeof(m->name), base, bn);
    m->loc = loc_of(slash + 1);
    m->compressed = s > 0;
    m->marker = -1;
    return 1;
}

static void parse_modules(struct dctx *c, const struct sections *sec)
{
    struct lines it;
    const char *line;
    size_t n;
    int cur = 0; /* the last "f=" line started a record */

    sec_lines(sec, SEC_MODULES, &it);
    while (lines_next(&it, &line, &n)) {
        struct modfile *m = c->nfiles > 0 ? &c->files[c->nfiles - 1] : NULL;
        const char *v;
        size_t vn;
        if (span_starts(line, n, "f=")) {
            cur = start_file(c, line + 2, n - 2);
            continue;
        }
        if (!cur || m == NULL)
            continue;
        if (span_starts(line, n, "marker=")) {
            if (m->marker < 0)
                m->marker = span_eq(line, n, "marker=yes") ? 1 : 0;
            continue;
        }
        v = memchr(line, ':', n);
        if (v == NULL)
            continue;
        vn = (size_t)(line + n - v - 1);
        v++;
        trim(&v, &vn);
        if (span_starts(line, n, "version:") && !m->has_version) {
            m->has_version = 1;
            if (kf_driver_version_valid_n(v, vn))
                copy_span(m->version, sizeof(m->version), v, vn);
        } else if (span_starts(line, n, "vermagic:") && !m->has_vermagic) {
            size_t i = 0, wn;
            const char *w;
            m->has_vermagic = 1;
            copy_printable(m->vermagic, sizeof(m->vermagic), v, vn);
            if (next_word(v, vn, &i, &w, &wn) && kf_krel_valid_n(w, wn))
                copy_span(m->vm_kernel, sizeof(m->vm_kernel), w, wn);
        } else if (span_starts(line, n, "signer:") && m->signer[0] == '\0') {
            copy_printable(m->signer, sizeof(m->signer), v, vn);
        }
    }
}

/* --- d_dkms --------------------------------------------------------------- */

static void parse_dkms(struct dctx *c, const struct sections *sec)
{
    static const char root[] = "/var/lib/dkms/";
    struct lines it;
    const char *line;
    size_t n;

    sec_lines(sec, SEC_DKMS, &it);
    while (lines_next(&it, &line, &n) && c->ndkms < MAX_DKMS) {
        struct dkms_entry *d = &c->dkms[c->ndkms];
        const char *pkg, *x, *slash;
        size_t pn, xn;
        if (!span_starts(line, n, root))
            continue;
        pkg = line + strlen(root);
        slash = memchr(pkg, '/', (size_t)(line + n - pkg));
        if (slash == NULL)
            continue;
        pn = (size_t)(slash - pkg);
        x = slash + 1;
        xn = (size_t)(line + n - x);
        if (!span_starts(pkg, pn, "nvidia") || !name_valid_n(pkg, pn, sizeof(d->pkg) - 1))
            continue;
        memset(d, 0, sizeof(*d));
        copy_span(d->pkg, sizeof(d->pkg), pkg, pn);
        if (kf_driver_version_valid_n(x, xn)) {
            copy_span(d->version, sizeof(d->version), x, xn);
        } else if (span_starts(x, xn, "kernel-")) {
            /* kernel-RELEASE-ARCH: the release is all but the last part. */
            size_t e = xn;
            while (e > 7 && x[e - 1] != '-')
                e--;
            if (e <= 8 || !kf_krel_valid_n(x + 7, e - 8))
                continue;
            copy_span(d->kernel, sizeof(d->kernel), x + 7, e - 8);
        } else {
            continue;
        }
        c->ndkms++;
    }
}

/* --- d_kmsg --------------------------------------------------------------- */

static const char *kmsg_source(const struct dctx *c)
{
    switch (c->kmsg_method) {
    case 1:
        return "dmesg";
    case 2:
        return "journalctl -k -b";
    case 3:
        return "/var/log/kern.log";
    }
    return "kernel log";
}

static void kmsg_keep(struct dctx *c, enum kmsg_kind k, const char *line, size_t n)
{
    struct kmsg_hit *h = &c->km[k];
    char show[4 * SHOW + 8];

    /* The log line without the printk timestamp, which differs per host
     * and would split a group of identical findings. */
    if (n > 0 && line[0] == '[') {
        const char *e = memchr(line, ']', n < 32 ? n : 32);
        if (e != NULL) {
            n -= (size_t)(e + 1 - line);
            line = e + 1;
            trim(&line, &n);
        }
    }
    kf_escape_to(show, sizeof(show), line, n);
    if (h->count++ == 0)
        memcpy(h->first, show, sizeof(show));
    memcpy(h->last, show, sizeof(show));
    copy_printable(h->lastraw, sizeof(h->lastraw), line, n);
}

static void parse_kmsg(struct dctx *c, const struct sections *sec)
{
    static const char api_client[] = "the client has the version ";
    static const char api_module[] = "this kernel module has the version ";
    struct lines it;
    const char *line;
    size_t n;
    int first = 1;

    sec_lines(sec, SEC_KMSG, &it);
    while (lines_next(&it, &line, &n)) {
        long at;
        if (n == 0)
            continue;
        if (first) {
            first = 0;
            c->kmsg_method = span_eq(line, n, "method=dmesg")      ? 1
                             : span_eq(line, n, "method=journal")  ? 2
                             : span_eq(line, n, "method=kern.log") ? 3
                                                                   : 0;
            if (span_starts(line, n, "method="))
                continue;
        }
        /* Older drivers split the message over several "NVRM:" lines:
         * the versions are taken wherever they are. */
        if (span_contains(line, n, "NVRM: API mismatch"))
            kmsg_keep(c, KM_API, line, n);
        if (c->km[KM_API].count > 0 && (at = span_find(line, n, api_client)) >= 0) {
            size_t o = (size_t)at + strlen(api_client);
            take_version(line + o, n - o, c->api_client, sizeof(c->api_client));
        }
        if (c->km[KM_API].count > 0 && (at = span_find(line, n, api_module)) >= 0) {
            size_t o = (size_t)at + strlen(api_module);
            take_version(line + o, n - o, c->api_module, sizeof(c->api_module));
        }
        if (span_contains(line, n, "NVRM: BAR") && span_contains(line, n, " is 0M @ 0x"))
            kmsg_keep(c, KM_BAR, line, n);
        if (span_contains(line, n, "PCI I/O region assigned to your NVIDIA device is invalid"))
            kmsg_keep(c, KM_BAR_REGION, line, n);
        if (span_contains(line, n, "NVIDIA probe routine failed") ||
            span_contains(line, n, "None of the NVIDIA devices were initialized") ||
            span_contains(line, n, "RmInitAdapter failed"))
            kmsg_keep(c, KM_PROBE, line, n);
        if (span_contains(line, n, "fallen off the bus"))
            kmsg_keep(c, KM_FELL, line, n);
        if (span_contains(line, n, "NVRM: Xid ("))
            kmsg_keep(c, KM_XID, line, n);
        if (span_contains(line, n, "NVRM:") &&
            (span_contains(line, n, "is not supported by") ||
             span_contains(line, n, "supported through the NVIDIA")))
            kmsg_keep(c, KM_UNSUPPORTED, line, n);
        if (span_contains(line, n, "Loading of unsigned module is rejected") ||
            span_contains(line, n, "Loading of module with unavailable key is rejected") ||
            span_contains(line, n, "Key was rejected by service") ||
            span_contains(line, n, "unsigned module loading is restricted") ||
            span_contains(line, n, "PKCS#7 signature not signed with a trusted key"))
            kmsg_keep(c, KM_SIGREJ, line, n);
    }
}

/* --- d_pci, d_iommu, d_cmdline ---------------------------------------------- */

static void parse_pci(struct dctx *c, const struct sections *sec)
{
    struct lines it;
    const char *line;
    size_t n;

    sec_lines(sec, SEC_PCI, &it);
    while (lines_next(&it, &line, &n) && c->npci < MAX_PCI) {
        struct pcidev *d = &c->pci[c->npci];
        const char *w[5];
        size_t wn[5], i = 0, k;
        for (k = 0; k < 5 && next_word(line, n, &i, &w[k], &wn[k]); k++)
            ;
        if (k != 4 || !pci_slot_valid(w[0], wn[0]))
            continue;
        memset(d, 0, sizeof(*d));
        copy_span(d->slot, sizeof(d->slot), w[0], wn[0]);
        for (i = 0; d->slot[i] != '\0'; i++)
            d->slot[i] = (char)to_lower((unsigned char)d->slot[i]);
        if (wn[1] == 8 && span_starts(w[1], wn[1], "0x") && is_hex((unsigned char)w[1][2]))
            copy_span(d->klass, sizeof(d->klass), w[1], wn[1]);
        if (!span_eq(w[2], wn[2], "-") && name_valid_n(w[2], wn[2], sizeof(d->driver) - 1))
            copy_span(d->driver, sizeof(d->driver), w[2], wn[2]);
        if (!span_eq(w[3], wn[3], "-") && name_valid_n(w[3], wn[3], sizeof(d->group) - 1))
            copy_span(d->group, sizeof(d->group), w[3], wn[3]);
        c->npci++;
    }
}

static int pci_is_gpu(const struct pcidev *d)
{
    return strncmp(d->klass, "0x03", 4) == 0;
}

static int pci_is_passthrough(const struct pcidev *d)
{
    return strcmp(d->driver, "vfio-pci") == 0 || strcmp(d->driver, "pci-stub") == 0;
}

static void parse_iommu(struct dctx *c, const struct sections *sec)
{
    struct lines it;
    const char *line;
    size_t n;

    sec_lines(sec, SEC_IOMMU, &it);
    while (lines_next(&it, &line, &n)) {
        if (span_eq(line, n, "present")) {
            c->iommu_present = 1;
        } else if (c->iommu_present && name_valid_n(line, n, 32)) {
            size_t l = strlen(c->iommu_units);
            if (c->niommu++ < 4 && l + n + 3 < sizeof(c->iommu_units))
                snprintf(c->iommu_units + l, sizeof(c->iommu_units) - l, "%s%.*s", l ? ", " : "",
                         (int)n, line);
        }
    }
}

static void parse_cmdline(struct dctx *c, const struct sections *sec)
{
    struct lines it;
    const char *line;
    size_t n;

    sec_lines(sec, SEC_CMDLINE, &it);
    while (lines_next(&it, &line, &n))
        if (n > 0) {
            copy_printable(c->cmdline, sizeof(c->cmdline), line, n);
            break;
        }
}

/* A word of the kernel command line: "intel_iommu=on" or, with a value
 * list, "modprobe.blacklist=a,nouveau". */
static int cmdline_has(const struct dctx *c, const char *key, const char *item)
{
    const char *s = c->cmdline, *w;
    size_t n = strlen(s), i = 0, wn, kl = strlen(key);

    while (next_word(s, n, &i, &w, &wn)) {
        if (wn <= kl || memcmp(w, key, kl) != 0 || w[kl] != '=')
            continue;
        if (item == NULL)
            return 1;
        w += kl + 1;
        wn -= kl + 1;
        while (wn > 0) {
            const char *comma = memchr(w, ',', wn);
            size_t in = comma ? (size_t)(comma - w) : wn;
            if (span_eq(w, in, item))
                return 1;
            if (comma == NULL)
                break;
            wn -= in + 1;
            w = comma + 1;
        }
    }
    return 0;
}

/* --- d_nouveau ------------------------------------------------------------- */

static void parse_nouveau(struct dctx *c, const struct sections *sec)
{
    struct lines it;
    const char *line;
    size_t n;

    sec_lines(sec, SEC_NOUVEAU, &it);
    while (lines_next(&it, &line, &n)) {
        const char *colon, *v, *w1, *w2, *w3;
        size_t vn, i = 0, n1, n2, n3 = 0;
        if (span_eq(line, n, "state=loaded")) {
            c->nouveau_loaded = 1;
            continue;
        }
        if (span_starts(line, n, "ko=/lib/modules/")) {
            /* Only the running kernel's copy matters here. */
            const char *k = line + 16, *e = memchr(k, '/', n - 16);
            if (e != NULL && span_eq(k, (size_t)(e - k), c->f->kernel)) {
                c->nouveau_ko = 1;
                kf_escape_to(c->nouveau_ko_path, sizeof(c->nouveau_ko_path), line + 3, n - 3);
            }
            continue;
        }
        /* FILE:LINE from modprobe.d. */
        if (n == 0 || line[0] != '/' || (colon = memchr(line, ':', n)) == NULL)
            continue;
        v = colon + 1;
        vn = (size_t)(line + n - v);
        if (!next_word(v, vn, &i, &w1, &n1) || w1[0] == '#' || !next_word(v, vn, &i, &w2, &n2))
            continue;
        if (!span_eq(w2, n2, "nouveau"))
            continue;
        if (!next_word(v, vn, &i, &w3, &n3))
            w3 = "";
        /* "blacklist nouveau" stops loading by alias (what udev does);
         * "install nouveau /bin/false" (or true) stops modprobe itself. */
        if (span_eq(w1, n1, "blacklist") ||
            (span_eq(w1, n1, "install") && n3 > 0 &&
             (span_contains(w3, n3, "/false") || span_contains(w3, n3, "/true"))) ||
            (span_eq(w1, n1, "alias") && span_eq(w3, n3, "off"))) {
            if (!c->nouveau_blacklisted)
                kf_escape_to(c->nouveau_blacklist_where, sizeof(c->nouveau_blacklist_where), line,
                             n);
            c->nouveau_blacklisted = 1;
        }
    }
}

/* --- d_secure -------------------------------------------------------------- */

static void parse_secure(struct dctx *c, const struct sections *sec)
{
    struct lines it;
    const char *line;
    size_t n;
    int mode = 0;

    c->sig_enforce = -1;
    sec_lines(sec, SEC_SECURE, &it);
    while (lines_next(&it, &line, &n)) {
        if (span_starts(line, n, "sig_enforce=")) {
            const char *v = line + 12;
            size_t vn = n - 12;
            trim(&v, &vn);
            c->sig_enforce = (span_eq(v, vn, "Y") || span_eq(v, vn, "1"))   ? 1
                             : (span_eq(v, vn, "N") || span_eq(v, vn, "0")) ? 0
                                                                            : -1;
        } else if (span_starts(line, n, "lockdown=")) {
            /* "none [integrity] confidentiality": the bracketed one. */
            const char *o = memchr(line, '[', n), *e;
            if (o != NULL && (e = memchr(o, ']', (size_t)(line + n - o))) != NULL &&
                name_valid_n(o + 1, (size_t)(e - o - 1), sizeof(c->lockdown) - 1))
                copy_span(c->lockdown, sizeof(c->lockdown), o + 1, (size_t)(e - o - 1));
        } else if (span_eq(line, n, "method=mokutil")) {
            mode = 1;
            c->mok_method = 1;
        } else if (span_eq(line, n, "method=keys")) {
            mode = 2;
            c->keys_method = 1;
        } else if (mode == 1) {
            long at = span_find(line, n, "CN");
            if (span_contains(line, n, "is empty"))
                c->mok_empty = 1;
            else if (span_contains(line, n, "not supported"))
                c->mok_unsupported = 1;
            else if (at >= 0 && c->nmok < MAX_KEYS) {
                /* "Subject: O=x, CN=Name" or "Subject: CN = Name, O = x". */
                const char *v = line + at + 2, *end = line + n;
                size_t vn;
                while (v < end && *v == ' ')
                    v++;
                if (v == end || *v != '=')
                    continue;
                v++;
                while (v < end && *v == ' ')
                    v++;
                vn = (size_t)(end - v);
                if (memchr(v, ',', vn) != NULL)
                    vn = (size_t)((const char *)memchr(v, ',', vn) - v);
                trim(&v, &vn);
                copy_printable(c->mok_cn[c->nmok++], sizeof(c->mok_cn[0]), v, vn);
            }
        } else if (mode == 2 && c->nkeys < MAX_KEYS && n > 0) {
            copy_printable(c->keys[c->nkeys++], sizeof(c->keys[0]), line, n);
        }
    }
}

/* --- d_upgrades: apt.conf and dnf ------------------------------------------ */

/* apt.conf syntax: "A::B "v";", "A { B "v"; C { "item"; }; };", "A:: "item";",
 * comments //, / * * / and # (also #clear and #include, ignored here). Keys
 * are case-insensitive. Only the few keys unattended-upgrades reads are
 * kept. */
#define APT_DEPTH 8

static void apt_value(struct dctx *c, const char *file, const char *key, int list, const char *v,
                      size_t vn)
{
    struct aptconf *a = &c->apt;

    if (list) {
        if (ci_eq(key, "Unattended-Upgrade::Package-Blacklist") && a->nblacklist < MAX_BLACKLIST)
            copy_printable(a->blacklist[a->nblacklist++], sizeof(a->blacklist[0]), v, vn);
        return;
    }
    if (ci_eq(key, "APT::Periodic::Unattended-Upgrade")) {
        copy_printable(a->uu, sizeof(a->uu), v, vn);
        snprintf(a->uu_where, sizeof(a->uu_where), "%s", file);
        a->uu_set = 1;
    } else if (ci_eq(key, "APT::Periodic::Enable")) {
        copy_printable(a->enable, sizeof(a->enable), v, vn);
        a->enable_set = 1;
    } else if (ci_eq(key, "Unattended-Upgrade::Automatic-Reboot")) {
        a->reboot = span_eq(v, vn, "true") || span_eq(v, vn, "1") || span_eq(v, vn, "yes");
    }
}

static void apt_parse(struct dctx *c, const char *file, const char *p, size_t n)
{
    char scope[APT_DEPTH][128], pending[128], key[APT_DEPTH * 130 + 130];
    size_t depth = 0, skipped = 0, i = 0, k;
    int have_pending = 0;

    while (i < n) {
        char ch = p[i];
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
            i++;
        } else if (ch == '/' && i + 1 < n && p[i + 1] == '/') {
            while (i < n && p[i] != '\n')
                i++;
        } else if (ch == '/' && i + 1 < n && p[i + 1] == '*') {
            long e = span_find(p + i + 2, n - i - 2, "*/");
            i = e < 0 ? n : i + 2 + (size_t)e + 2;
        } else if (ch == '#') {
            while (i < n && p[i] != '\n')
                i++;
        } else if (ch == '"') {
            size_t s = ++i, vn;
            int list;
            while (i < n && p[i] != '"' && p[i] != '\n')
                i++;
            vn = i - s;
            if (i < n && p[i] == '"')
                i++;
            if (skipped > 0)
                continue;
            /* "Name:: "item";" appends to the list Name. */
            list = !have_pending ||
                   (strlen(pending) >= 2 && strcmp(pending + strlen(pending) - 2, "::") == 0);
            if (have_pending && list)
                pending[strlen(pending) - 2] = '\0';
            key[0] = '\0';
            for (k = 0; k < depth; k++)
                snprintf(key + strlen(key), sizeof(key) - strlen(key), "%s%s", k ? "::" : "",
                         scope[k]);
            if (have_pending)
                snprintf(key + strlen(key), sizeof(key) - strlen(key), "%s%s", depth ? "::" : "",
                         pending);
            apt_value(c, file, key, list, p + s, vn);
            have_pending = 0;
        } else if (ch == '{') {
            i++;
            if (depth < APT_DEPTH && skipped == 0) {
                snprintf(scope[depth++], sizeof(scope[0]), "%s", have_pending ? pending : "");
            } else {
                skipped++;
            }
            have_pending = 0;
        } else if (ch == '}') {
            i++;
            if (skipped > 0)
                skipped--;
            else if (depth > 0)
                depth--;
            have_pending = 0;
        } else if (ch == ';') {
            i++;
            have_pending = 0;
        } else {
            /* A name; any other byte (a NUL, a stray quote) is one. */
            size_t s = i++;
            while (i < n && !in_set(p[i], " \t\r\n{};\"") && p[i] != '\0')
                i++;
            copy_printable(pending, sizeof(pending), p + s, i - s);
            have_pending = 1;
        }
    }
}

/* dnf's INI files: [commands] apply_updates, [main]/[base] exclude and
 * excludepkgs; versionlock.list names locked packages. */
static void dnf_parse(struct dctx *c, const char *file, const char *p, size_t n)
{
    struct lines it = {p, n};
    const char *line;
    size_t ln;
    char section[32] = "";
    int versionlock = strstr(file, "versionlock") != NULL;

    if (strcmp(file, "/etc/dnf/automatic.conf") == 0)
        c->dnf.present = 1;
    while (lines_next(&it, &line, &ln)) {
        const char *eq, *v;
        size_t kn, vn;
        trim(&line, &ln);
        if (ln == 0 || line[0] == '#' || line[0] == ';')
            continue;
        if (versionlock) {
            if (span_starts(line, ln, "kernel"))
                c->dnf.kernel_locked = 1;
            continue;
        }
        if (line[0] == '[') {
            copy_printable(section, sizeof(section), line + 1, ln > 2 ? ln - 2 : 0);
            continue;
        }
        eq = memchr(line, '=', ln);
        if (eq == NULL)
            continue;
        kn = (size_t)(eq - line);
        v = eq + 1;
        vn = (size_t)(line + ln - v);
        while (kn > 0 && (line[kn - 1] == ' ' || line[kn - 1] == '\t'))
            kn--;
        trim(&v, &vn);
        if (strcmp(section, "commands") == 0 && span_eq(line, kn, "apply_updates")) {
            c->dnf.apply_updates = span_eq(v, vn, "yes") || span_eq(v, vn, "True") ||
                                   span_eq(v, vn, "true") || span_eq(v, vn, "1");
        } else if ((strcmp(section, "main") == 0 || strcmp(section, "base") == 0) &&
                   (span_eq(line, kn, "exclude") || span_eq(line, kn, "excludepkgs"))) {
            size_t i = 0;
            while (i < vn && c->dnf.nexcludes < MAX_BLACKLIST) {
                size_t s;
                while (i < vn && (v[i] == ' ' || v[i] == ','))
                    i++;
                s = i;
                while (i < vn && v[i] != ' ' && v[i] != ',')
                    i++;
                if (i > s)
                    copy_printable(c->dnf.excludes[c->dnf.nexcludes++], sizeof(c->dnf.excludes[0]),
                                   v + s, i - s);
            }
        }
    }
}

/* apt reads the files of apt.conf.d whose names are made of letters,
 * digits, '_', '-' and '.' and have no extension or ".conf". */
static int apt_file_read(const char *base)
{
    size_t n = strlen(base);
    const char *dot = strrchr(base, '.');

    return name_valid_n(base, n, 120) && (dot == NULL || strcmp(dot, ".conf") == 0);
}

static void parse_upgrades(struct dctx *c, const struct sections *sec)
{
    static const char aptdir[] = "/etc/apt/apt.conf.d/";
    struct lines it;
    const char *line, *body = NULL;
    char file[128] = "";
    size_t n;

    sec_lines(sec, SEC_UPGRADES, &it);
    for (;;) {
        int more = lines_next(&it, &line, &n);
        /* A file's content runs to the next "file=" line (or the end). */
        if (body != NULL && (!more || span_starts(line, n, "file="))) {
            size_t bn = (size_t)((more ? line : it.p) - body);
            if (strncmp(file, aptdir, strlen(aptdir)) == 0) {
                if (apt_file_read(file + strlen(aptdir)))
                    apt_parse(c, file, body, bn);
            } else {
                dnf_parse(c, file, body, bn);
            }
            body = NULL;
        }
        if (!more)
            break;
        if (span_starts(line, n, "file=")) {
            copy_printable(file, sizeof(file), line + 5, n - 5);
            if (strncmp(file, aptdir, strlen(aptdir)) == 0 ||
                strcmp(file, "/etc/dnf/automatic.conf") == 0 ||
                strcmp(file, "/etc/dnf/dnf.conf") == 0 ||
                strcmp(file, "/etc/dnf/plugins/versionlock.list") == 0)
                body = it.p;
            continue;
        }
        if (body != NULL)
            continue;
        if (span_eq(line, n, "uu=present")) {
            c->uu_present = 1;
        } else if (span_starts(line, n, "timer ")) {
            size_t i = 6, wn, sn;
            const char *w, *st;
            char *dst;
            if (!next_word(line, n, &i, &w, &wn))
                continue;
            if (!next_word(line, n, &i, &st, &sn))
                st = "", sn = 0;
            dst = span_eq(w, wn, "apt-daily-upgrade.timer")       ? c->timer_apt
                  : span_eq(w, wn, "dnf-automatic.timer")         ? c->timer_dnf
                  : span_eq(w, wn, "dnf-automatic-install.timer") ? c->timer_dnf_install
                                                                  : NULL;
            if (dst != NULL)
                copy_printable(dst, sizeof(c->timer_apt), st, sn);
        } else if (span_starts(line, n, "pkg=") && c->npkgs < MAX_PKGS) {
            const char *p = line + 4, *colon;
            size_t pn = n - 4;
            colon = memchr(p, ':', pn);
            if (colon != NULL)
                pn = (size_t)(colon - p);
            if (name_valid_n(p, pn, sizeof(c->pkgs[0]) - 1))
                copy_span(c->pkgs[c->npkgs++], sizeof(c->pkgs[0]), p, pn);
        }
    }
}

/* --- the facts probe's sections, read raw -------------------------------------- */

static void parse_smi(struct dctx *c, const struct sections *sec)
{
    struct lines it;
    const char *line;
    size_t n;

    c->smi_rc = -1;
    sec_lines(sec, SEC_NVIDIA_SMI, &it);
    while (lines_next(&it, &line, &n)) {
        if (n == 0)
            continue;
        c->smi_present = 1;
        if (span_starts(line, n, "rc=")) {
            int v = 0;
            size_t i;
            for (i = 3; i < n && i < 6 && is_digit((unsigned char)line[i]); i++)
                v = v * 10 + (line[i] - '0');
            if (i == n && n > 3)
                c->smi_rc = v;
        } else if (span_contains(line, n, "Driver/library version mismatch")) {
            c->smi_mismatch = 1;
            kf_escape_to(c->smi_line, sizeof(c->smi_line), line, n);
        } else if (span_starts(line, n, "NVML library version:")) {
            take_version(line + 21, n - 21, c->nvml_lib, sizeof(c->nvml_lib));
        } else if (c->smi_line[0] == '\0') {
            kf_escape_to(c->smi_line, sizeof(c->smi_line), line, n);
        }
    }
}

static void parse_libs(struct dctx *c, const struct sections *sec)
{
    static const char lib[] = "libnvidia-ml.so.";
    struct lines it;
    const char *line;
    size_t n;

    sec_lines(sec, SEC_LIBNVIDIA_ML, &it);
    while (lines_next(&it, &line, &n)) {
        size_t base = n;
        char v[KF_DRIVER_MAX + 1];
        while (base > 0 && line[base - 1] != '/')
            base--;
        if (!span_starts(line + base, n - base, lib) ||
            !kf_driver_version_valid_n(line + base + strlen(lib), n - base - strlen(lib)))
            continue;
        copy_span(v, sizeof(v), line + base + strlen(lib), n - base - strlen(lib));
        if (c->lib_version[0] == '\0' || ver_cmp(v, c->lib_version) > 0) {
            memcpy(c->lib_version, v, sizeof(v));
            kf_escape_to(c->lib_path, sizeof(c->lib_path), line, n);
        }
    }
}

/* "current KERNEL DRIVER SHA256 PROFILE" lines of /var/lib/kfleet/state. */
static void parse_state(struct dctx *c, const struct sections *sec)
{
    struct lines it;
    const char *line;
    size_t n;

    sec_lines(sec, SEC_KFLEET_STATE, &it);
    while (lines_next(&it, &line, &n) && c->nstate < INV_FACTS_MAX_KERNELS) {
        const char *w[3];
        size_t wn[3], i = 0, k;
        for (k = 0; k < 3 && next_word(line, n, &i, &w[k], &wn[k]); k++)
            ;
        if (k < 3 || !span_eq(w[0], wn[0], "current") || !kf_krel_valid_n(w[1], wn[1]) ||
            !kf_driver_version_valid_n(w[2], wn[2]))
            continue;
        copy_span(c->state[c->nstate].kernel, sizeof(c->state[0].kernel), w[1], wn[1]);
        copy_span(c->state[c->nstate].driver, sizeof(c->state[0].driver), w[2], wn[2]);
        c->nstate++;
    }
}

/* ------------------------------------------------------------------------ */
/* Findings                                                                  */

/* Every code, in report order within a severity. The codes are an
 * interface: scripts match on them. */
enum code {
    C_DRIVER_LIBRARY_MISMATCH,
    C_NVRM_API_MISMATCH,
    C_KERNEL_WITHOUT_MODULE,
    C_VERMAGIC_MISMATCH,
    C_PCI_BAR_INVALID,
    C_NVIDIA_PROBE_FAILED,
    C_GPU_FELL_OFF_BUS,
    C_GPU_UNSUPPORTED,
    C_NOUVEAU_LOADED,
    C_UNSIGNED_MODULES,
    C_SIGNATURE_REJECTED,
    C_LOADED_DIFFERS,
    C_DRIVER_UNEXPECTED,
    C_CONFLICTING_COPIES,
    C_KFLEET_STATE_MISMATCH,
    C_DKMS_LEFTOVER,
    C_NOUVEAU_NOT_BLACKLISTED,
    C_PASSTHROUGH_DRIVER,
    C_IOMMU_DISABLED,
    C_SIGNER_NOT_ENROLLED,
    C_UU_KERNELS,
    C_UU_DRIVER,
    C_NVRM_XID,
    C_VFIO_PASSTHROUGH,
    C_SIGNER_UNCHECKED,
    C_KMSG_UNAVAILABLE,
    C_COUNT
};

static const char *const code_names[C_COUNT] = {
    "driver-library-mismatch",
    "nvrm-api-mismatch",
    "kernel-without-module",
    "vermagic-mismatch",
    "pci-bar-invalid",
    "nvidia-probe-failed",
    "gpu-fell-off-bus",
    "gpu-unsupported",
    "nouveau-loaded",
    "unsigned-modules-secure-boot",
    "module-signature-rejected",
    "loaded-differs-from-disk",
    "driver-version-unexpected",
    "conflicting-module-copies",
    "kfleet-state-mismatch",
    "dkms-leftover",
    "nouveau-not-blacklisted",
    "passthrough-host-has-driver",
    "iommu-disabled",
    "module-signer-not-enrolled",
    "unattended-kernel-upgrades",
    "unattended-driver-upgrades",
    "nvrm-xid",
    "vfio-passthrough",
    "module-signer-unchecked",
    "kernel-log-unavailable",
};

const char *deploy_doctor_severity_name(enum deploy_doctor_severity s)
{
    switch (s) {
    case DEPLOY_DOCTOR_CRITICAL:
        return "critical";
    case DEPLOY_DOCTOR_WARNING:
        return "warning";
    case DEPLOY_DOCTOR_INFO:
        return "info";
    }
    return "unknown";
}

/* A finding being written: three bounded texts. */
struct draft {
    struct buf t[3]; /* title, evidence, fix */
};

enum { T_TITLE, T_EVIDENCE, T_FIX };

static void draft_init(struct draft *d)
{
    size_t i;

    for (i = 0; i < 3; i++)
        buf_init(&d->t[i], 2048);
}

static void draft_release(struct draft *d)
{
    size_t i;

    for (i = 0; i < 3; i++)
        buf_release(&d->t[i]);
}

static void put(struct dctx *c, struct draft *d, int which, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Appends text built from constants and validated values. A value cut at
 * the buffer's limit is fine (KF_ETRUNC); running out of memory is not. */
static void put(struct dctx *c, struct draft *d, int which, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (buf_puts(&d->t[which], tmp) == KF_ENOMEM)
        c->nomem = 1;
}

static void emit(struct dctx *c, enum deploy_doctor_severity sev, enum code code, struct draft *d)
{
    struct deploy_doctor_report *r = c->r;
    struct deploy_doctor_finding *grown, *fi;
    size_t i;

    for (i = 0; i < r->n; i++)
        if (r->findings[i].code == code_names[code])
            goto out; /* one finding per code: the checks never ask twice */
    grown = realloc(r->findings, (r->n + 1) * sizeof(*grown));
    if (grown == NULL) {
        c->nomem = 1;
        goto out;
    }
    r->findings = grown;
    fi = &r->findings[r->n];
    fi->severity = sev;
    fi->code = code_names[code];
    fi->title = buf_detach(&d->t[T_TITLE], NULL);
    fi->evidence = buf_detach(&d->t[T_EVIDENCE], NULL);
    fi->fix = buf_detach(&d->t[T_FIX], NULL);
    if (fi->title == NULL || fi->evidence == NULL || fi->fix == NULL) {
        free(fi->title);
        free(fi->evidence);
        free(fi->fix);
        c->nomem = 1;
        goto out;
    }
    r->n++;
    r->count[sev]++;
out:
    draft_release(d);
    draft_init(d);
}

/* --- helpers for the checks -------------------------------------------------- */

static const struct inv_kernel *find_kernel(const struct dctx *c, const char *rel)
{
    size_t i;

    for (i = 0; i < c->f->nkernels; i++)
        if (strcmp(c->f->kernels[i].release, rel) == 0)
            return &c->f->kernels[i];
    return NULL;
}

/* A kernel that can boot or is running: not a leftover headers link. */
static int kernel_bootable(const struct inv_kernel *k)
{
    return k->running || k->has_modules_dep || k->has_image;
}

/* The copy of module `name` modprobe would load for kernel: depmod's
 * default order is updates/ (kfleet's copy first when it has one), the
 * kernel's own tree, then the rest. NULL when there is none. */
static const struct modfile *picked(const struct dctx *c, const char *kernel, const char *name)
{
    static const enum loc order[] = {LOC_KFLEET, LOC_UPDATES, LOC_DKMS,
                                     LOC_KERNEL, LOC_EXTRA,   LOC_OTHER};
    size_t o, i;

    for (o = 0; o < sizeof(order) / sizeof(order[0]); o++)
        for (i = 0; i < c->nfiles; i++)
            if (c->files[i].loc == order[o] && strcmp(c->files[i].kernel, kernel) == 0 &&
                strcmp(c->files[i].name, name) == 0)
                return &c->files[i];
    return NULL;
}

static const char *state_driver(const struct dctx *c, const char *kernel)
{
    size_t i;

    for (i = 0; i < c->nstate; i++)
        if (strcmp(c->state[i].kernel, kernel) == 0)
            return c->state[i].driver;
    return NULL;
}

/* The driver the node should have for a kernel: --driver, else what
 * kfleet installed there, else what it runs. NULL when nothing says. */
static const char *wanted_driver(const struct dctx *c, const char *kernel)
{
    const char *d;

    if (c->ctx->driver != NULL && kf_driver_version_valid(c->ctx->driver))
        return c->ctx->driver;
    if ((d = state_driver(c, kernel)) != NULL)
        return d;
    if (c->f->kfleet_driver[0] != '\0')
        return c->f->kfleet_driver;
    if (c->f->loaded_driver[0] != '\0')
        return c->f->loaded_driver;
    if (c->f->userspace_driver[0] != '\0')
        return c->f->userspace_driver;
    return NULL;
}

static const struct deploy_doctor_package *store_find(const struct dctx *c, const char *driver,
                                                      const char *kernel)
{
    size_t i;

    for (i = 0; i < c->ctx->npackages; i++) {
        const struct deploy_doctor_package *p = &c->ctx->packages[i];
        if (p->kernel == NULL || p->driver == NULL || strcmp(p->kernel, kernel) != 0)
            continue;
        if (driver != NULL && strcmp(p->driver, driver) != 0)
            continue;
        if (p->arch != NULL && strcmp(p->arch, c->f->arch) != 0)
            continue;
        return p;
    }
    return NULL;
}

static size_t gpus_total(const struct dctx *c)
{
    size_t i, n = 0;

    if (c->npci == 0)
        return c->f->gpus_known == INV_YES ? c->f->ngpus : 0;
    for (i = 0; i < c->npci; i++)
        n += pci_is_gpu(&c->pci[i]);
    return n;
}

static size_t gpus_passthrough(const struct dctx *c)
{
    size_t i, n = 0;

    for (i = 0; i < c->npci; i++)
        n += pci_is_gpu(&c->pci[i]) && pci_is_passthrough(&c->pci[i]);
    return n;
}

/* Whether the node is meant to run the module at all: it has GPUs that
 * are not passed through, or runs or has a driver, or kfleet put one
 * there. A kmod profile's module counts when any copy of it exists. */
static int uses_module(const struct dctx *c)
{
    size_t i, g = gpus_total(c);

    if (c->nstate > 0 || c->f->kfleet_driver[0] != '\0')
        return 1;
    if (strcmp(c->module, "nvidia") != 0) {
        for (i = 0; i < c->nfiles; i++)
            if (strcmp(c->files[i].name, c->module) == 0)
                return 1;
        return 0;
    }
    if (g > 0 && gpus_passthrough(c) == g)
        return 0;
    return g > 0 || c->f->loaded_driver[0] != '\0' || c->f->userspace_driver[0] != '\0';
}

static int enforcing(const struct dctx *c)
{
    return c->f->secure_boot == INV_YES || c->sig_enforce == 1 ||
           (c->lockdown[0] != '\0' && strcmp(c->lockdown, "none") != 0);
}

static void put_enforcing(struct dctx *c, struct draft *d, int which)
{
    const char *sep = "";

    if (c->f->secure_boot == INV_YES) {
        put(c, d, which, "Secure Boot enabled");
        sep = ", ";
    }
    if (c->sig_enforce == 1) {
        put(c, d, which, "%ssig_enforce=Y", sep);
        sep = ", ";
    }
    if (c->lockdown[0] != '\0' && strcmp(c->lockdown, "none") != 0)
        put(c, d, which, "%slockdown=%s", sep, c->lockdown);
}

static const char fixes_reload[] =
    "Reboot the node, or stop what uses the GPUs and reload the modules (modprobe -r nvidia_drm "
    "nvidia_modeset nvidia_uvm nvidia; modprobe nvidia), so that the kernel module and the "
    "userspace libraries are the same version.";

/* --- the checks ---------------------------------------------------------------- */

static void check_driver_library(struct dctx *c, struct draft *d)
{
    const struct inv_facts *f = c->f;
    const char *user = c->lib_version[0] ? c->lib_version : c->nvml_lib[0] ? c->nvml_lib : NULL;
    const struct modfile *disk = picked(c, f->kernel, "nvidia");

    if (c->smi_mismatch) {
        put(c, d, T_TITLE, "nvidia-smi: Driver/library version mismatch");
        if (f->loaded_driver[0] || user)
            put(c, d, T_TITLE, ": kernel module %s, userspace %s",
                f->loaded_driver[0] ? f->loaded_driver : "unknown", user ? user : "unknown");
        put(c, d, T_EVIDENCE, "nvidia-smi: %s", c->smi_line);
        if (c->smi_rc >= 0)
            put(c, d, T_EVIDENCE, " (exit %d)", c->smi_rc);
    } else if (f->loaded_driver[0] && c->lib_version[0] &&
               strcmp(f->loaded_driver, c->lib_version) != 0 && c->smi_rc != 0) {
        put(c, d, T_TITLE, "kernel module %s and userspace library %s differ", f->loaded_driver,
            c->lib_version);
        put(c, d, T_EVIDENCE, "/sys/module/nvidia/version: %s; %s", f->loaded_driver, c->lib_path);
        user = c->lib_version;
    } else {
        return;
    }
    put(c, d, T_FIX, "%s", fixes_reload);
    if (disk != NULL && disk->version[0] && user != NULL && strcmp(disk->version, user) == 0)
        put(c, d, T_FIX, " The module on disk (%s) is already %s: a reload is enough.", disk->path,
            user);
    else if (user != NULL && kf_driver_version_valid(user))
        put(c, d, T_FIX,
            " The module on disk for %s is %s: install driver %s's modules for it first "
            "(kfleet build --driver %s --kernel %s, then kfleet deploy), or go back to the "
            "userspace of the loaded module.",
            f->kernel, disk && disk->version[0] ? disk->version : "missing", user, user, f->kernel);
    emit(c, DEPLOY_DOCTOR_CRITICAL, C_DRIVER_LIBRARY_MISMATCH, d);
}

static void check_api_mismatch(struct dctx *c, struct draft *d)
{
    const struct kmsg_hit *h = &c->km[KM_API];
    /* nvidia-smi works now: the message is history of this boot. */
    int stale = c->smi_present && c->smi_rc == 0 && !c->smi_mismatch;

    if (h->count == 0)
        return;
    put(c, d, T_TITLE, "NVRM: API mismatch");
    if (c->api_client[0] && c->api_module[0])
        put(c, d, T_TITLE, ": a client of driver %s talked to kernel module %s", c->api_client,
            c->api_module);
    if (stale)
        put(c, d, T_TITLE, " (earlier in this boot; nvidia-smi works now)");
    put(c, d, T_EVIDENCE, "%s: %s", kmsg_source(c), h->last);
    if (h->count > 1)
        put(c, d, T_EVIDENCE, " (%u such lines)", h->count);
    put(c, d, T_FIX, "%s", fixes_reload);
    if (c->api_client[0])
        put(c, d, T_FIX,
            " If the clients are right (driver %s), deploy that driver's modules for this kernel "
            "(kfleet deploy --driver %s).",
            c->api_client, c->api_client);
    emit(c, stale ? DEPLOY_DOCTOR_INFO : DEPLOY_DOCTOR_CRITICAL, C_NVRM_API_MISMATCH, d);
}

static void check_loaded_vs_disk(struct dctx *c, struct draft *d)
{
    const struct inv_facts *f = c->f;
    const struct modfile *m = picked(c, f->kernel, "nvidia");

    if (!f->loaded_driver[0] || m == NULL || !m->version[0] ||
        strcmp(m->version, f->loaded_driver) == 0)
        return;
    put(c, d, T_TITLE,
        "the loaded nvidia module is %s, but modprobe would now load %s: a reload or reboot "
        "changes the driver",
        f->loaded_driver, m->version);
    put(c, d, T_EVIDENCE, "/sys/module/nvidia/version: %s; %s: version %s", f->loaded_driver,
        m->path, m->version);
    put(c, d, T_FIX,
        "If %s is the driver this node should run (a deploy not yet reloaded), reload it in a "
        "maintenance window (kfleet deploy --reload) or let the next reboot do it; if not, "
        "install %s's modules again (kfleet deploy --driver %s).",
        m->version, f->loaded_driver, f->loaded_driver);
    emit(c, DEPLOY_DOCTOR_WARNING, C_LOADED_DIFFERS, d);
}

static void check_expected_driver(struct dctx *c, struct draft *d)
{
    const struct inv_facts *f = c->f;
    const char *want = c->ctx->driver;
    size_t i, bad = 0;

    if (want == NULL || !kf_driver_version_valid(want) || !uses_module(c))
        return;
    if (f->loaded_driver[0] && strcmp(f->loaded_driver, want) != 0) {
        put(c, d, T_EVIDENCE, "/sys/module/nvidia/version: %s", f->loaded_driver);
        bad++;
    }
    for (i = 0; i < f->nkernels; i++) {
        const struct modfile *m = picked(c, f->kernels[i].release, "nvidia");
        if (m == NULL || !m->version[0] || strcmp(m->version, want) == 0)
            continue;
        if (bad++ < 4)
            put(c, d, T_EVIDENCE, "%s%s: version %s", bad > 1 ? "; " : "", m->path, m->version);
    }
    if (bad == 0) {
        draft_release(d);
        draft_init(d);
        return;
    }
    put(c, d, T_TITLE, "the node does not run or hold driver %s (--driver)", want);
    put(c, d, T_FIX, "Deploy driver %s to this node (kfleet deploy --driver %s).", want, want);
    emit(c, DEPLOY_DOCTOR_WARNING, C_DRIVER_UNEXPECTED, d);
}

static void check_vermagic(struct dctx *c, struct draft *d)
{
    size_t i, bad = 0;
    const struct modfile *first = NULL;

    for (i = 0; i < c->nfiles; i++) {
        const struct modfile *m = &c->files[i];
        const struct inv_kernel *k = find_kernel(c, m->kernel);
        if (k == NULL || !kernel_bootable(k) || !m->has_vermagic)
            continue;
        if (m->vm_kernel[0] && strcmp(m->vm_kernel, m->kernel) == 0)
            continue;
        if (bad++ == 0)
            first = m;
        if (bad <= 3)
            put(c, d, T_EVIDENCE, "%s%s: vermagic=%s", bad > 1 ? "; " : "", m->path, m->vermagic);
    }
    if (first == NULL)
        return;
    if (bad > 3)
        put(c, d, T_EVIDENCE, " (and %zu more)", bad - 3);
    if (bad == 1)
        put(c, d, T_TITLE,
            "%s was built for %s, not %s: modprobe fails with \"Exec format error\" there",
            first->path, first->vm_kernel[0] ? first->vm_kernel : "another kernel", first->kernel);
    else
        put(c, d, T_TITLE,
            "%zu module files were built for another kernel than the one they are installed "
            "for: modprobe fails with \"Exec format error\"",
            bad);
    put(c, d, T_FIX,
        "Build the modules for the kernel they are installed for (kfleet build --kernel %s) and "
        "deploy them; remove stray copies and run depmod -a %s.",
        first->kernel, first->kernel);
    emit(c, DEPLOY_DOCTOR_CRITICAL, C_VERMAGIC_MISMATCH, d);
}

static void check_kernels(struct dctx *c, struct draft *d)
{
    const struct inv_facts *f = c->f;
    size_t i, missing = 0, ready = 0, unbuilt = 0;
    const char *first = NULL, *mod = c->module;
    char prof[KF_MODNAME_MAX + 16] = "";
    int running_missing = 0;

    if (!uses_module(c))
        return;
    /* Commands for another profile than the default name it. */
    if (c->ctx->profile != NULL && strcmp(c->ctx->profile, "nvidia") != 0 &&
        kf_modname_valid(c->ctx->profile))
        snprintf(prof, sizeof(prof), " --profile %s", c->ctx->profile);
    for (i = 0; i < f->nkernels; i++) {
        const struct inv_kernel *k = &f->kernels[i];
        const char *drv;
        const struct deploy_doctor_package *p;
        size_t j;
        int any = 0;
        if (!kernel_bootable(k))
            continue;
        for (j = 0; j < c->nfiles && !any; j++)
            any = strcmp(c->files[j].kernel, k->release) == 0 && strcmp(c->files[j].name, mod) == 0;
        if (any)
            continue;
        if (missing++ == 0)
            first = k->release;
        running_missing |= k->running;
        put(c, d, T_EVIDENCE, "%s%s%s: no %s.ko under /lib/modules/%s", missing > 1 ? "; " : "",
            k->release, k->running ? " (running)" : "", mod, k->release);
        drv = wanted_driver(c, k->release);
        if (!c->ctx->store_checked)
            continue;
        p = store_find(c, drv, k->release);
        if (p != NULL) {
            put(c, d, T_FIX,
                "%sA package of driver %s for %s is ready in the store: deploy it "
                "(kfleet deploy%s --driver %s -l HOST).",
                ready + unbuilt ? " " : "", p->driver, k->release, prof, p->driver);
            ready++;
        } else {
            put(c, d, T_FIX,
                "%sNo package for %s is in the store%s%s: build it (kfleet build%s "
                "--driver %s --kernel %s), then deploy it.",
                ready + unbuilt ? " " : "", k->release, drv ? " for driver " : "", drv ? drv : "",
                prof, drv ? drv : "VERSION", k->release);
            unbuilt++;
        }
    }
    if (missing == 0)
        return;
    if (missing == 1 && running_missing)
        put(c, d, T_TITLE, "the running kernel %s has no %s module on disk%s", first, mod,
            f->loaded_driver[0] ? ": the next reload or reboot leaves the GPUs without a driver"
                                : ": the GPUs have no driver");
    else if (missing == 1)
        put(c, d, T_TITLE,
            "installed kernel %s has no %s module: the next reboot into it leaves the GPUs "
            "without a driver",
            first, mod);
    else
        put(c, d, T_TITLE,
            "%zu kernels have no %s module%s: booting them leaves the GPUs without "
            "a driver",
            missing, mod, running_missing ? " (the running one among them)" : "");
    if (!c->ctx->store_checked)
        put(c, d, T_FIX,
            "Build and deploy the driver for each of them before the node reboots "
            "(kfleet build%s --kernel K, kfleet deploy); the artifact store was not "
            "checked.",
            prof);
    else
        put(c, d, T_FIX,
            " Do it before the node reboots, or remove the kernels that are not "
            "wanted.");
    emit(c, DEPLOY_DOCTOR_CRITICAL, C_KERNEL_WITHOUT_MODULE, d);
}

/* Copies of one module for one kernel in more than one version. */
static void check_copies(struct dctx *c, struct draft *d)
{
    size_t i, j, bad = 0;
    int dkms = 0, distro = 0;
    const char *kernel = NULL;

    for (i = 0; i < c->nfiles; i++) {
        const struct modfile *a = &c->files[i];
        int dup = 0;
        if (!a->version[0] || find_kernel(c, a->kernel) == NULL)
            continue;
        /* Report each (kernel, module) once: at its first versioned copy. */
        for (j = 0; j < i && !dup; j++)
            dup = c->files[j].version[0] && strcmp(c->files[j].kernel, a->kernel) == 0 &&
                  strcmp(c->files[j].name, a->name) == 0;
        if (dup)
            continue;
        for (j = i + 1; j < c->nfiles; j++) {
            const struct modfile *b = &c->files[j];
            if (!b->version[0] || strcmp(b->kernel, a->kernel) != 0 ||
                strcmp(b->name, a->name) != 0 || strcmp(b->version, a->version) == 0)
                continue;
            if (bad++ < 3)
                put(c, d, T_EVIDENCE, "%s%s: version %s, %s: version %s", bad > 1 ? "; " : "",
                    a->path, a->version, b->path, b->version);
            kernel = a->kernel;
            dkms |= a->loc == LOC_DKMS || b->loc == LOC_DKMS;
            distro |= a->loc == LOC_KERNEL || a->loc == LOC_EXTRA || a->loc == LOC_OTHER ||
                      b->loc == LOC_KERNEL || b->loc == LOC_EXTRA || b->loc == LOC_OTHER;
            break;
        }
    }
    if (bad == 0)
        return;
    put(c, d, T_TITLE,
        "%s: the same module is installed in different versions; which one modprobe loads "
        "depends on depmod's search order%s",
        kernel, bad > 1 ? " (and other kernels or modules)" : "");
    put(c, d, T_FIX, "Keep one copy per kernel.");
    if (dkms)
        put(c, d, T_FIX,
            " Remove DKMS's (dkms remove nvidia/VERSION --all, and the nvidia-dkms / "
            "nvidia-kernel-dkms package).");
    if (distro)
        put(c, d, T_FIX,
            " Remove the distribution's NVIDIA kernel module package (Debian/Ubuntu: "
            "linux-modules-nvidia-*, nvidia-kernel-*; RHEL: kmod-nvidia*).");
    put(c, d, T_FIX, " Then run depmod -a for each kernel.");
    emit(c, DEPLOY_DOCTOR_WARNING, C_CONFLICTING_COPIES, d);
}

static void check_state(struct dctx *c, struct draft *d)
{
    size_t i, bad = 0;

    for (i = 0; i < c->nstate; i++) {
        const struct state_line *s = &c->state[i];
        const struct modfile *m = NULL;
        size_t j;
        for (j = 0; j < c->nfiles && m == NULL; j++)
            if (c->files[j].loc == LOC_KFLEET && strcmp(c->files[j].kernel, s->kernel) == 0 &&
                strcmp(c->files[j].name, c->module) == 0 && c->files[j].version[0])
                m = &c->files[j];
        if (m == NULL || strcmp(m->version, s->driver) == 0)
            continue;
        if (bad++ < 3)
            put(c, d, T_EVIDENCE, "%s/var/lib/kfleet/state: current %s %s; %s: version %s",
                bad > 1 ? "; " : "", s->kernel, s->driver, m->path, m->version);
    }
    if (bad == 0)
        return;
    put(c, d, T_TITLE, "kfleet's modules on disk are not the version kfleet installed");
    put(c, d, T_FIX,
        "Something other than kfleet replaced files in updates/kfleet/: find out "
        "what (a package's hook, a person), then deploy the intended driver again "
        "(kfleet deploy).");
    emit(c, DEPLOY_DOCTOR_WARNING, C_KFLEET_STATE_MISMATCH, d);
}

static void check_dkms(struct dctx *c, struct draft *d)
{
    size_t i, shown = 0;
    const char *want = c->ctx->driver;
    int managed = c->nstate > 0 || c->f->kfleet_driver[0] != '\0', other = 0;
    char ver[KF_DRIVER_MAX + 1] = "";

    for (i = 0; i < c->ndkms; i++) {
        const struct dkms_entry *e = &c->dkms[i];
        if (e->version[0] && want != NULL && strcmp(e->version, want) != 0)
            other = 1;
        if (e->version[0] && !ver[0])
            snprintf(ver, sizeof(ver), "%s", e->version);
        if (shown++ < 4)
            put(c, d, T_EVIDENCE, "%s/var/lib/dkms/%s/%s%s", shown > 1 ? "; " : "", e->pkg,
                e->version[0] ? e->version : "kernel-", e->version[0] ? "" : e->kernel);
    }
    if (c->ndkms == 0 || !(managed || other)) {
        draft_release(d);
        draft_init(d);
        return;
    }
    put(c, d, T_TITLE,
        "DKMS still manages an NVIDIA driver%s%s: it builds and installs it for every new "
        "kernel, beside kfleet's modules",
        ver[0] ? " " : "", ver);
    put(c, d, T_FIX,
        "Remove it: dkms remove nvidia/%s --all, and remove the package that installed it "
        "(nvidia-dkms-*, nvidia-kernel-dkms); then depmod -a for each kernel.",
        ver[0] ? ver : "VERSION");
    emit(c, DEPLOY_DOCTOR_WARNING, C_DKMS_LEFTOVER, d);
}

static void check_nouveau(struct dctx *c, struct draft *d)
{
    size_t i, gpus = gpus_total(c);
    const struct pcidev *bound = NULL;
    int cmdline_bl = cmdline_has(c, "modprobe.blacklist", "nouveau") ||
                     cmdline_has(c, "rd.driver.blacklist", "nouveau") ||
                     cmdline_has(c, "module_blacklist", "nouveau");

    for (i = 0; i < c->npci && bound == NULL; i++)
        if (strcmp(c->pci[i].driver, "nouveau") == 0)
            bound = &c->pci[i];
    if (c->nouveau_loaded || bound != NULL) {
        put(c, d, T_TITLE, "nouveau is loaded%s: the nvidia module cannot bind the GPUs it holds",
            bound ? " and bound to a GPU" : "");
        if (c->nouveau_loaded)
            put(c, d, T_EVIDENCE, "/sys/module/nouveau exists");
        if (bound != NULL)
            put(c, d, T_EVIDENCE, "%s/sys/bus/pci/devices/%s/driver -> nouveau",
                c->nouveau_loaded ? "; " : "", bound->slot);
        if (c->nouveau_blacklisted || cmdline_bl) {
            put(c, d, T_EVIDENCE, "; blacklisted in %s",
                c->nouveau_blacklisted ? c->nouveau_blacklist_where : "/proc/cmdline");
            put(c, d, T_FIX,
                "nouveau is blacklisted but was loaded anyway, most likely from an "
                "initramfs made before the blacklist: rebuild it (update-initramfs "
                "-u, or dracut -f) and reboot.");
        } else {
            put(c, d, T_FIX,
                "Blacklist it: a file /etc/modprobe.d/blacklist-nouveau.conf with the lines "
                "\"blacklist nouveau\" and \"options nouveau modeset=0\", rebuild the initramfs "
                "(update-initramfs -u, or dracut -f) and reboot; or boot with "
                "modprobe.blacklist=nouveau.");
        }
        emit(c, DEPLOY_DOCTOR_CRITICAL, C_NOUVEAU_LOADED, d);
        return;
    }
    if (gpus == 0 || !c->nouveau_ko || c->nouveau_blacklisted || cmdline_bl)
        return;
    put(c, d, T_TITLE,
        "nouveau is not blacklisted: when the nvidia module is missing (a new "
        "kernel, a failed deploy) nouveau takes the GPUs");
    put(c, d, T_EVIDENCE,
        "%s exists; no \"blacklist nouveau\" in /etc/modprobe.d, /run/modprobe.d, "
        "/usr/lib/modprobe.d; /proc/cmdline has no modprobe.blacklist=nouveau",
        c->nouveau_ko_path);
    put(c, d, T_FIX,
        "Add /etc/modprobe.d/blacklist-nouveau.conf with \"blacklist nouveau\" and \"options "
        "nouveau modeset=0\", then rebuild the initramfs (update-initramfs -u, or dracut -f).");
    emit(c, DEPLOY_DOCTOR_WARNING, C_NOUVEAU_NOT_BLACKLISTED, d);
}

/* The advice for unassigned BARs, which firmware or a VM's PCI hole causes. */
static void put_bar_fix(struct dctx *c, struct draft *d)
{
    put(c, d, T_FIX,
        "The firmware did not give the GPU's BARs address space. On bare metal: enable \"Above "
        "4G decoding\" and 64-bit BARs / Resizable BAR (or MMIO above 4G) in the firmware "
        "setup%s. In a VM: give the guest a larger 64-bit PCI hole (QEMU: -global "
        "q35-pcihost.pci-hole64-size=2048G or more than the GPUs' memory together; libvirt: "
        "<pcihole64 unit=\"G\">2048</pcihole64>; VMware: pciPassthru.use64bitMMIO=TRUE and "
        "pciPassthru.64bitMMIOSizeGB; Hyper-V: Set-VM -HighMemoryMappedIoSpace), with OVMF/UEFI "
        "firmware.",
        cmdline_has(c, "pci", "realloc") ? " (pci=realloc is already on the kernel command line)"
                                         : ", and boot with pci=realloc");
}

/* Kernel log lines that are a finding on their own: the first line of a
 * probe failure (the cause comes first), the last of the others. */
static const struct {
    enum kmsg_kind kind;
    enum code code;
    int first;
    const char *title, *fix;
} kmsg_checks[] = {
    {KM_PROBE, C_NVIDIA_PROBE_FAILED, 1, "the nvidia module did not initialise the GPUs",
     "Read the NVRM lines before this one in the kernel log (dmesg | grep NVRM): typical causes "
     "are a module/GPU mismatch (an open-module-only GPU on the proprietary modules or the "
     "reverse), a GPU held by another driver (nouveau, vfio-pci), or firmware PCI resources."},
    {KM_FELL, C_GPU_FELL_OFF_BUS, 0, "a GPU has fallen off the bus",
     "The GPU stopped answering on PCIe (Xid 79): drain the node and power-cycle it; if it "
     "repeats, check power, cooling and the riser, and have the GPU replaced."},
    {KM_UNSUPPORTED, C_GPU_UNSUPPORTED, 0,
     "the installed driver does not support a GPU of this node",
     "Use a driver branch (or module flavour: open or proprietary) that supports this GPU, as the "
     "message says, in the node's kfleet profile."},
    {KM_SIGREJ, C_SIGNATURE_REJECTED, 0, "the kernel refused a module for its signature",
     "Sign the modules with a key the kernel trusts (kfleet keys new, signing in kfleet.yml, "
     "kfleet build --force) and enroll its certificate on the node (mokutil --import, confirmed "
     "at the next boot)."},
};

static void check_kmsg(struct dctx *c, struct draft *d)
{
    const char *src = kmsg_source(c);
    const char *old = c->kmsg_method == 3 ? " (kern.log may be from an earlier boot)" : "";
    const struct kmsg_hit *bar = c->km[KM_BAR].count ? &c->km[KM_BAR] : &c->km[KM_BAR_REGION];
    size_t i;

    if (bar->count > 0) {
        const char *pci = strstr(bar->lastraw, "PCI:");
        size_t pn = 0;
        if (pci != NULL) {
            pci += 4;
            while (pci[pn] != '\0' && pci[pn] != ')' && pn < 16)
                pn++;
        }
        put(c, d, T_TITLE, "NVRM: the GPU's PCI I/O region is invalid");
        if (pci != NULL && pci_slot_valid(pci, pn))
            put(c, d, T_TITLE, " (%.*s)", (int)pn, pci);
        if (c->km[KM_BAR].count)
            put(c, d, T_TITLE, ": a BAR was not assigned (0M), the driver cannot use the GPU");
        put(c, d, T_EVIDENCE, "%s: %s%s", src, bar->last, old);
        put_bar_fix(c, d);
        emit(c, DEPLOY_DOCTOR_CRITICAL, C_PCI_BAR_INVALID, d);
    }
    for (i = 0; i < sizeof(kmsg_checks) / sizeof(kmsg_checks[0]); i++) {
        const struct kmsg_hit *h = &c->km[kmsg_checks[i].kind];
        /* A probe failure after an invalid BAR is that BAR's doing. */
        if (h->count == 0 || (kmsg_checks[i].kind == KM_PROBE && bar->count > 0))
            continue;
        put(c, d, T_TITLE, "%s", kmsg_checks[i].title);
        put(c, d, T_EVIDENCE, "%s: %s%s", src, kmsg_checks[i].first ? h->first : h->last, old);
        put(c, d, T_FIX, "%s", kmsg_checks[i].fix);
        emit(c, DEPLOY_DOCTOR_CRITICAL, kmsg_checks[i].code, d);
    }
    if (c->km[KM_XID].count > 0) {
        put(c, d, T_TITLE, "NVRM reported %u Xid error%s", c->km[KM_XID].count,
            c->km[KM_XID].count == 1 ? "" : "s");
        put(c, d, T_EVIDENCE, "%s: %s%s", src, c->km[KM_XID].last, old);
        put(c, d, T_FIX,
            "Look the Xid number up in NVIDIA's Xid catalogue: some are "
            "application faults (13, 31, 43), others hardware or driver trouble "
            "(48, 63, 64, 74, 79, 94, 95) that need a drain and a reset.");
        emit(c, DEPLOY_DOCTOR_WARNING, C_NVRM_XID, d);
    }
    if (c->kmsg_method == 0) {
        put(c, d, T_TITLE, "the kernel log could not be read: NVRM load errors were not checked");
        put(c, d, T_EVIDENCE, "dmesg, journalctl -k -b and /var/log/kern.log gave nothing");
        put(c, d, T_FIX,
            "Run kfleet doctor as root (ansible_become), or allow the user to read "
            "the kernel log (kernel.dmesg_restrict=0, or the adm/systemd-journal "
            "group).");
        emit(c, DEPLOY_DOCTOR_INFO, C_KMSG_UNAVAILABLE, d);
    }
}

static void check_passthrough(struct dctx *c, struct draft *d)
{
    size_t i, n = gpus_passthrough(c), shown = 0;
    int cmdline_iommu = cmdline_has(c, "intel_iommu", "on") || cmdline_has(c, "amd_iommu", "on");

    if (n == 0)
        return;
    for (i = 0; i < c->npci; i++) {
        const struct pcidev *p = &c->pci[i];
        if (!pci_is_gpu(p) || !pci_is_passthrough(p) || shown++ >= 4)
            continue;
        put(c, d, T_EVIDENCE, "%s/sys/bus/pci/devices/%s/driver -> %s (iommu group %s)",
            shown > 1 ? "; " : "", p->slot, p->driver, p->group[0] ? p->group : "none");
    }
    put(c, d, T_EVIDENCE, "; IOMMU units: %s", c->niommu ? c->iommu_units : "none");
    if (cmdline_has(c, "intel_iommu", NULL) || cmdline_has(c, "amd_iommu", NULL) ||
        cmdline_has(c, "iommu", NULL))
        put(c, d, T_EVIDENCE, " (cmdline:%s%s%s)",
            cmdline_has(c, "intel_iommu", "on") ? " intel_iommu=on" : "",
            cmdline_has(c, "amd_iommu", "on") ? " amd_iommu=on" : "",
            cmdline_has(c, "iommu", "pt") ? " iommu=pt" : "");
    put(c, d, T_TITLE, "%zu NVIDIA GPU%s bound to %s: a passthrough host", n, n == 1 ? "" : "s",
        "vfio-pci");
    put(c, d, T_FIX,
        "The GPUs belong to virtual machines: the NVIDIA driver must never be loaded on this "
        "host. Keep it out of kfleet deploys (e.g. a 'passthrough' group and -l "
        "'all:!passthrough') "
        "and bind the GPUs to vfio-pci at boot (vfio-pci.ids=10de:DEVICE) so that neither nvidia "
        "nor nouveau can take them.");
    emit(c, DEPLOY_DOCTOR_INFO, C_VFIO_PASSTHROUGH, d);

    if (c->iommu_present && c->niommu == 0) {
        put(c, d, T_TITLE, "GPUs are bound to vfio-pci but the IOMMU is off: VMs cannot use them");
        put(c, d, T_EVIDENCE, "/sys/class/iommu is empty; /proc/cmdline: %.160s", c->cmdline);
        put(c, d, T_FIX, "%s",
            cmdline_iommu ? "The command line asks for the IOMMU but none came up: enable VT-d "
                            "(Intel) or AMD-Vi/IOMMU in the firmware setup."
                          : "Enable VT-d (Intel) or AMD-Vi in the firmware setup and boot with "
                            "intel_iommu=on (Intel) or amd_iommu=on, plus iommu=pt.");
        emit(c, DEPLOY_DOCTOR_WARNING, C_IOMMU_DISABLED, d);
    }
    if (n == gpus_total(c) && (c->f->loaded_driver[0] || c->f->kfleet_driver[0] || c->nstate > 0)) {
        put(c, d, T_TITLE, "a passthrough host has the NVIDIA driver %s",
            c->f->loaded_driver[0] ? "loaded" : "installed by kfleet");
        if (c->f->loaded_driver[0])
            put(c, d, T_EVIDENCE, "/sys/module/nvidia/version: %s", c->f->loaded_driver);
        else
            put(c, d, T_EVIDENCE, "/var/lib/kfleet/state: driver=%s",
                c->f->kfleet_driver[0] ? c->f->kfleet_driver : c->state[0].driver);
        put(c, d, T_FIX,
            "Remove it (kfleet rollback --to none for each kernel, then reboot) and "
            "take the host out of the groups kfleet deploys to.");
        emit(c, DEPLOY_DOCTOR_WARNING, C_PASSTHROUGH_DRIVER, d);
    }
}

static int signed_file(const struct modfile *m)
{
    return m->marker == 1 || m->signer[0] != '\0';
}

static int unsigned_file(const struct modfile *m)
{
    /* A compressed module's marker is inside the compressed data: only
     * modinfo's signer can tell, and it is absent without kmod. */
    if (m->marker == 0 && !m->compressed)
        return m->signer[0] == '\0';
    return m->compressed && m->signer[0] == '\0' && m->has_vermagic;
}

static int signer_enrolled(const struct dctx *c, const char *signer)
{
    size_t i;

    for (i = 0; i < c->nmok; i++)
        if (strcmp(c->mok_cn[i], signer) == 0)
            return 1;
    for (i = 0; i < c->nkeys; i++)
        if (strstr(c->keys[i], signer) != NULL)
            return 1;
    return 0;
}

static void check_signatures(struct dctx *c, struct draft *d)
{
    size_t i, bad = 0;
    const struct modfile *first = NULL, *kf = NULL;

    if (!enforcing(c))
        return;
    for (i = 0; i < c->nfiles; i++) {
        const struct modfile *m = &c->files[i];
        const struct inv_kernel *k = find_kernel(c, m->kernel);
        if (k == NULL || !kernel_bootable(k))
            continue;
        if (m->loc == LOC_KFLEET && signed_file(m) && m->signer[0] && kf == NULL &&
            !signer_enrolled(c, m->signer))
            kf = m;
        if (!unsigned_file(m))
            continue;
        if (bad++ == 0)
            first = m;
    }
    if (first != NULL) {
        put(c, d, T_TITLE,
            "%zu module file%s unsigned while module signatures are enforced: the kernel "
            "refuses %s (\"Key was rejected by service\")",
            bad, bad == 1 ? " is" : "s are", bad == 1 ? "it" : "them");
        put_enforcing(c, d, T_EVIDENCE);
        put(c, d, T_EVIDENCE,
            "; %s: no module signature (no \"~Module signature appended~\" at "
            "its end)",
            first->path);
        if (bad > 1)
            put(c, d, T_EVIDENCE, " (and %zu more)", bad - 1);
        put(c, d, T_FIX,
            "Sign the modules: create a key (kfleet keys new), set it as the "
            "signing key in kfleet.yml, rebuild (kfleet build --force) and deploy; "
            "enroll the certificate on each node (mokutil --import, confirmed at "
            "the next boot). Or turn Secure Boot off in the firmware setup.");
        emit(c, DEPLOY_DOCTOR_CRITICAL, C_UNSIGNED_MODULES, d);
    }
    if (kf == NULL)
        return;
    if (c->nmok > 0 || c->mok_empty || c->nkeys > 0) {
        put(c, d, T_TITLE,
            "kfleet's modules are signed by \"%s\", which the node does not list "
            "as enrolled",
            kf->signer);
        put(c, d, T_EVIDENCE, "%s: signer %s; ", kf->path, kf->signer);
        if (c->mok_method)
            put(c, d, T_EVIDENCE, "mokutil --list-enrolled: %s",
                c->mok_empty ? "MokListRT is empty" : "no subject with that CN");
        if (c->keys_method)
            put(c, d, T_EVIDENCE, "%s/proc/keys: %zu asymmetric keys, none named so",
                c->mok_method ? "; " : "", c->nkeys);
        put(c, d, T_FIX,
            "Enroll the signing certificate: mokutil --import kfleet.der (from "
            "kfleet keys new), then confirm the enrolment in MokManager at the next "
            "boot; until then the kernel refuses these modules.");
        emit(c, DEPLOY_DOCTOR_WARNING, C_SIGNER_NOT_ENROLLED, d);
        return;
    }
    put(c, d, T_TITLE, "could not check that \"%s\", the signer of kfleet's modules, is enrolled",
        kf->signer);
    put(c, d, T_EVIDENCE, "%s: signer %s; %s; %s", kf->path, kf->signer,
        c->mok_method ? (c->mok_unsupported ? "mokutil: EFI variables not supported"
                                            : "mokutil --list-enrolled showed no keys")
                      : "no mokutil",
        c->keys_method ? "/proc/keys shows no asymmetric keys to this user"
                       : "/proc/keys not readable");
    put(c, d, T_FIX,
        "Check by hand (mokutil --list-enrolled as root) or run kfleet doctor as "
        "root, and enroll the certificate if it is missing.");
    emit(c, DEPLOY_DOCTOR_INFO, C_SIGNER_UNCHECKED, d);
}

/* The flavour of a kernel release: "amd64" of "6.1.0-47-amd64", "generic"
 * of "5.15.0-105-generic": the name of its metapackage's suffix. */
static void kernel_flavour(const char *krel, char *out, size_t outsz)
{
    const char *dash = strrchr(krel, '-');

    snprintf(out, outsz, "%s", dash != NULL && dash[1] != '\0' ? dash + 1 : krel);
}

static int apt_blacklisted(const struct dctx *c, const char *pkg)
{
    size_t i;

    for (i = 0; i < c->apt.nblacklist; i++)
        if (c->apt.blacklist[i][0] != '\0' && regex_covers(c->apt.blacklist[i], pkg))
            return 1;
    return 0;
}

static void check_upgrades(struct dctx *c, struct draft *d)
{
    const struct inv_facts *f = c->f;
    char img[KF_KREL_MAX + 32], meta[96], fl[KF_KREL_MAX + 1];
    int apt_on = 0, dnf_on = 0;
    size_t i, loose = 0;

    /* apt: the periodic setting must be set and non-zero, Enable not "0",
     * and its timer (when systemd says) not disabled. */
    if (c->uu_present && c->apt.uu_set && c->apt.uu[0] != '\0' && strcmp(c->apt.uu, "0") != 0 &&
        !(c->apt.enable_set && strcmp(c->apt.enable, "0") == 0) &&
        strcmp(c->timer_apt, "disabled") != 0 && strcmp(c->timer_apt, "masked") != 0)
        apt_on = 1;
    if (c->dnf.present && (strcmp(c->timer_dnf_install, "enabled") == 0 ||
                           (strcmp(c->timer_dnf, "enabled") == 0 && c->dnf.apply_updates)))
        dnf_on = 1;

    if (apt_on) {
        snprintf(img, sizeof(img), "linux-image-%s", f->kernel);
        kernel_flavour(f->kernel, fl, sizeof(fl));
        snprintf(meta, sizeof(meta), "linux-image-%s", fl);
        if (!(apt_blacklisted(c, img) && apt_blacklisted(c, meta))) {
            put(c, d, T_TITLE,
                "unattended-upgrades installs kernel updates by itself%s: kfleet needs a package "
                "for each new kernel before the node reboots into it",
                c->apt.reboot ? " and reboots (Automatic-Reboot)" : "");
            put(c, d, T_EVIDENCE,
                "%s: APT::Periodic::Unattended-Upgrade \"%s\"; no "
                "Unattended-Upgrade::Package-Blacklist entry matches %s",
                c->apt.uu_where, c->apt.uu, apt_blacklisted(c, img) ? meta : img);
            if (c->timer_apt[0])
                put(c, d, T_EVIDENCE, "; apt-daily-upgrade.timer %s", c->timer_apt);
            put(c, d, T_FIX,
                "Schedule kfleet run --no-deploy (facts, plan and build) often enough, e.g. "
                "daily from a systemd timer, that a package is ready for every new kernel "
                "before the reboot; or hold kernels back: add \"linux-\" to "
                "Unattended-Upgrade::Package-Blacklist and change kernels through kfleet "
                "rollouts.");
            emit(c, DEPLOY_DOCTOR_WARNING, C_UU_KERNELS, d);
        }
        for (i = 0; i < c->npkgs; i++) {
            if (strstr(c->pkgs[i], "nvidia") == NULL || apt_blacklisted(c, c->pkgs[i]))
                continue;
            if (loose++ < 4)
                put(c, d, T_EVIDENCE, "%s%s",
                    loose > 1 ? ", " : "installed and not blacklisted: ", c->pkgs[i]);
        }
        if (loose > 0) {
            if (loose > 4)
                put(c, d, T_EVIDENCE, " (and %zu more)", loose - 4);
            put(c, d, T_TITLE,
                "unattended-upgrades may upgrade the NVIDIA packages: the userspace then no "
                "longer matches the loaded module (\"Driver/library version mismatch\") until "
                "the node reboots");
            put(c, d, T_FIX,
                "Add \"nvidia-\" and \"libnvidia-\" (and the other NVIDIA package "
                "names) to Unattended-Upgrade::Package-Blacklist, and upgrade the "
                "driver through kfleet.");
            emit(c, DEPLOY_DOCTOR_WARNING, C_UU_DRIVER, d);
        }
    }
    if (dnf_on) {
        int covered = c->dnf.kernel_locked;
        for (i = 0; i < c->dnf.nexcludes && !covered; i++)
            covered = glob_covers(c->dnf.excludes[i], strlen(c->dnf.excludes[i]), "kernel-core");
        if (!covered) {
            put(c, d, T_TITLE,
                "dnf-automatic installs kernel updates by itself: kfleet needs a "
                "package for each new kernel before the node reboots into it");
            put(c, d, T_EVIDENCE, "%s; /etc/dnf: no exclude or versionlock covers kernel-core",
                strcmp(c->timer_dnf_install, "enabled") == 0
                    ? "dnf-automatic-install.timer enabled"
                    : "dnf-automatic.timer enabled, apply_updates = yes");
            put(c, d, T_FIX,
                "Schedule kfleet run --no-deploy (facts, plan and build) often enough that a "
                "package is ready for every new kernel before the reboot; or add "
                "exclude=kernel* to /etc/dnf/dnf.conf (or a versionlock) and change kernels "
                "through kfleet rollouts.");
            emit(c, DEPLOY_DOCTOR_WARNING, C_UU_KERNELS, d);
        }
    }
    draft_release(d);
    draft_init(d);
}

/* ------------------------------------------------------------------------ */
/* Analysis                                                                  */

void deploy_doctor_report_init(struct deploy_doctor_report *r)
{
    memset(r, 0, sizeof(*r));
}

void deploy_doctor_report_release(struct deploy_doctor_report *r)
{
    size_t i;

    if (r == NULL)
        return;
    for (i = 0; i < r->n; i++) {
        free(r->findings[i].title);
        free(r->findings[i].evidence);
        free(r->findings[i].fix);
    }
    free(r->findings);
    deploy_doctor_report_init(r);
}

static int code_index(const char *code)
{
    int i;

    for (i = 0; i < C_COUNT; i++)
        if (code == code_names[i])
            return i;
    return C_COUNT;
}

static int cmp_finding(const void *a, const void *b)
{
    const struct deploy_doctor_finding *x = a, *y = b;

    if (x->severity != y->severity)
        return x->severity < y->severity ? -1 : 1;
    return code_index(x->code) - code_index(y->code);
}

int deploy_doctor_analyze(const char *out, size_t len, const char *nonce,
                          const struct deploy_doctor_ctx *ctx, struct deploy_doctor_report *r,
                          struct kf_err *err)
{
    static const struct deploy_doctor_ctx no_ctx;
    struct sections sec;
    struct draft d;
    struct dctx *c = NULL;
    int rc, i;

    kf_err_clear(err);
    if (r == NULL)
        return kf_err_set(err, KF_EINVAL, "deploy_doctor_analyze: no report to fill");
    deploy_doctor_report_release(r);
    if (ctx == NULL)
        ctx = &no_ctx;
    if (ctx->module != NULL && !kf_modname_valid(ctx->module))
        return kf_err_set(err, KF_EINVAL, "deploy_doctor_analyze: bad module name");
    /* Validates the nonce and the output's completeness, and gives the
     * facts every check compares with. */
    rc = inv_facts_parse(out, len, nonce, &r->facts, err);
    if (rc < 0)
        return rc;
    if (out == NULL)
        out = "";
    rc = split_sections(out, len, nonce, &sec, err);
    if (rc < 0)
        goto out;
    for (i = 0; i < SEC_FIRST_FACTS; i++) {
        if (!sec.seen[i]) {
            rc = kf_err_set(err, KF_EPARSE, "doctor probe output incomplete: no '%s' section",
                            sec_names[i]);
            goto out;
        }
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    c->ctx = ctx;
    c->f = &r->facts;
    c->r = r;
    norm_modname(c->module_norm, sizeof(c->module_norm), ctx->module ? ctx->module : "nvidia",
                 strlen(ctx->module ? ctx->module : "nvidia"));
    c->module = c->module_norm;

    parse_modules(c, &sec);
    parse_dkms(c, &sec);
    parse_kmsg(c, &sec);
    parse_pci(c, &sec);
    parse_iommu(c, &sec);
    parse_cmdline(c, &sec);
    parse_nouveau(c, &sec);
    parse_secure(c, &sec);
    parse_upgrades(c, &sec);
    parse_smi(c, &sec);
    parse_libs(c, &sec);
    parse_state(c, &sec);

    draft_init(&d);
    check_driver_library(c, &d);
    check_api_mismatch(c, &d);
    check_loaded_vs_disk(c, &d);
    check_expected_driver(c, &d);
    check_vermagic(c, &d);
    check_kernels(c, &d);
    check_copies(c, &d);
    check_state(c, &d);
    check_dkms(c, &d);
    check_nouveau(c, &d);
    check_kmsg(c, &d);
    check_passthrough(c, &d);
    check_signatures(c, &d);
    check_upgrades(c, &d);
    draft_release(&d);
    if (c->nomem) {
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        goto out;
    }
    if (r->n > 1)
        qsort(r->findings, r->n, sizeof(r->findings[0]), cmp_finding);
    rc = 0;
out:
    free(c);
    if (rc < 0)
        deploy_doctor_report_release(r);
    return rc;
}

const struct deploy_doctor_finding *deploy_doctor_find(const struct deploy_doctor_report *r,
                                                       const char *code)
{
    size_t i;

    for (i = 0; r != NULL && code != NULL && i < r->n; i++)
        if (strcmp(r->findings[i].code, code) == 0)
            return &r->findings[i];
    return NULL;
}

json_t *deploy_doctor_findings_json(const struct deploy_doctor_report *r)
{
    json_t *a = json_array();
    size_t i;

    if (a == NULL)
        return NULL;
    for (i = 0; i < r->n; i++) {
        const struct deploy_doctor_finding *f = &r->findings[i];
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "severity",
                              deploy_doctor_severity_name(f->severity), "code", f->code, "title",
                              f->title, "evidence", f->evidence, "fix", f->fix);
        if (o == NULL || json_array_append_new(a, o) < 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}
