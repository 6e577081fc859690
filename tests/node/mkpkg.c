/* kf_mkpkg: makes a real kfleet package (build_package_write) for the
 * node-side tests (tests/node/test_node.sh).
 *
 *   kf_mkpkg --driver D --kernel K --out DIR/NAME.tar.gz [--salt TEXT] MODULE...
 *
 * MODULE is the path of an existing .ko file (a fixture of tests/fixtures/ko,
 * used as it is), or NAME[:DEPENDS]: a fake module this program writes the
 * way tests/fixtures/ko/make.sh does, a relocatable ELF64 object whose
 * .modinfo holds name= (NAME with '-' made '_'), version=D, vermagic="K SMP
 * mod_unload ", depends=DEPENDS (comma-separated) and a license, plus a
 * .data section with TEXT from --salt, so two packages of the same D and K
 * can differ in their bytes. The package is reproducible (fixed mtimes); no
 * module counts as a stub. Prints "SHA256 SIZE" of the package. */
#include "builder.h"

#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_MODULES 16

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "kf_mkpkg: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void put(unsigned char *buf, size_t cap, size_t *len, const void *p, size_t n)
{
    if (*len + n > cap)
        die("%s", "module too big");
    memcpy(buf + *len, p, n);
    *len += n;
}

/* Writes path: an ELF64 ET_REL with sections null, .modinfo, .data, .shstrtab. */
static void write_ko(const char *path, const char *name, const char *deps, const char *driver,
                     const char *kernel, const char *salt)
{
    static const char shstr[] = "\0.modinfo\0.data\0.shstrtab";
    unsigned char buf[8192];
    char modinfo[2048], data[512], modname[128];
    size_t len = 0, mi_off, mi_len, d_off, d_len, s_off, sh_off, i;
    Elf64_Ehdr eh;
    Elf64_Shdr sh[4];
    int n;
    FILE *f;

    snprintf(modname, sizeof(modname), "%s", name);
    for (i = 0; modname[i]; i++)
        if (modname[i] == '-')
            modname[i] = '_';
    n = snprintf(modinfo, sizeof(modinfo),
                 "name=%s%cversion=%s%clicense=Dual MIT/GPL%cdepends=%s%cvermagic=%s SMP "
                 "mod_unload %c",
                 modname, 0, driver, 0, 0, deps, 0, kernel, 0);
    if (n < 0 || (size_t)n >= sizeof(modinfo))
        die("%s: .modinfo too long", name);
    mi_len = (size_t)n;
    n = snprintf(data, sizeof(data), "kfleet-node-test %s %s", name, salt);
    if (n < 0 || (size_t)n >= sizeof(data))
        die("%s: --salt too long", name);
    d_len = (size_t)n + 1;

    memset(&eh, 0, sizeof(eh));
    len = sizeof(eh);
    mi_off = len;
    put(buf, sizeof(buf), &len, modinfo, mi_len);
    d_off = len;
    put(buf, sizeof(buf), &len, data, d_len);
    s_off = len;
    put(buf, sizeof(buf), &len, shstr, sizeof(shstr));
    while (len % 8)
        put(buf, sizeof(buf), &len, "", 1);
    sh_off = len;

    memset(sh, 0, sizeof(sh));
    sh[1].sh_name = 1; /* .modinfo */
    sh[1].sh_type = SHT_PROGBITS;
    sh[1].sh_flags = SHF_ALLOC;
    sh[1].sh_offset = mi_off;
    sh[1].sh_size = mi_len;
    sh[1].sh_addralign = 1;
    sh[2].sh_name = 10; /* .data */
    sh[2].sh_type = SHT_PROGBITS;
    sh[2].sh_flags = SHF_ALLOC | SHF_WRITE;
    sh[2].sh_offset = d_off;
    sh[2].sh_size = d_len;
    sh[2].sh_addralign = 1;
    sh[3].sh_name = 16; /* .shstrtab */
    sh[3].sh_type = SHT_STRTAB;
    sh[3].sh_offset = s_off;
    sh[3].sh_size = sizeof(shstr);
    sh[3].sh_addralign = 1;
    put(buf, sizeof(buf), &len, sh, sizeof(sh));

    memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = ET_REL;
    eh.e_machine = EM_X86_64;
    eh.e_version = EV_CURRENT;
    eh.e_shoff = sh_off;
    eh.e_ehsize = sizeof(Elf64_Ehdr);
    eh.e_shentsize = sizeof(Elf64_Shdr);
    eh.e_shnum = 4;
    eh.e_shstrndx = 3;
    memcpy(buf, &eh, sizeof(eh));

    f = fopen(path, "wb");
    if (f == NULL || fwrite(buf, 1, len, f) != len || fclose(f) != 0)
        die("cannot write %s", path);
}

int main(int argc, char **argv)
{
    const char *driver = NULL, *kernel = NULL, *out = NULL, *salt = "";
    const char *paths[MAX_MODULES];
    static char made[MAX_MODULES][4200];
    char topdir[256], workdir[4096];
    struct build_pkg p;
    struct build_pkg_result r;
    struct kf_err err;
    size_t nmods = 0;
    int i;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--driver") == 0 && i + 1 < argc)
            driver = argv[++i];
        else if (strcmp(argv[i], "--kernel") == 0 && i + 1 < argc)
            kernel = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--salt") == 0 && i + 1 < argc)
            salt = argv[++i];
        else if (argv[i][0] == '-')
            die("unknown option %s", argv[i]);
        else if (nmods == MAX_MODULES)
            die("%s", "too many modules");
        else
            paths[nmods++] = argv[i];
    }
    if (driver == NULL || kernel == NULL || out == NULL || nmods == 0)
        die("%s", "usage: kf_mkpkg --driver D --kernel K --out FILE.tar.gz [--salt T] MODULE...");

    snprintf(workdir, sizeof(workdir), "%s.mods", out);
    if (mkdir(workdir, 0755) != 0)
        die("cannot create %s: %s", workdir, strerror(errno));
    for (i = 0; i < (int)nmods; i++) {
        const char *a = paths[i];
        size_t alen = strlen(a);
        if (alen > 3 && strcmp(a + alen - 3, ".ko") == 0 && access(a, R_OK) == 0)
            continue; /* an existing module, as it is */
        {
            char name[128], deps[1024] = "";
            const char *colon = strchr(a, ':');
            size_t nlen = colon ? (size_t)(colon - a) : alen;
            if (nlen == 0 || nlen >= sizeof(name))
                die("bad module '%s'", a);
            memcpy(name, a, nlen);
            name[nlen] = '\0';
            if (colon)
                snprintf(deps, sizeof(deps), "%s", colon + 1);
            snprintf(made[i], sizeof(made[i]), "%s/%s.ko", workdir, name);
            write_ko(made[i], name, deps, driver, kernel, salt);
            paths[i] = made[i];
        }
    }

    if (build_pkg_topdir(topdir, sizeof(topdir), driver, kernel, "x86_64", &err) != 0)
        die("%s", err.msg);
    memset(&p, 0, sizeof(p));
    p.topdir = topdir;
    p.driver_version = driver;
    p.kernel_release = kernel;
    p.kernel_build = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)";
    p.arch = "x86_64";
    p.os_id = "debian";
    p.os_version = "12";
    p.profile = "test";
    p.modules = paths;
    p.nmodules = nmods;
    p.source_date_epoch = 1709294400;
    p.stub_threshold = 1; /* nothing is a stub: every module is loaded */

    build_pkg_result_init(&r);
    if (build_package_write(&p, out, &r, &err) != 0)
        die("%s", err.msg);
    printf("%s %llu\n", r.sha256, (unsigned long long)r.size);
    build_pkg_result_release(&r);

    for (i = 0; i < (int)nmods; i++)
        if (made[i][0] != '\0')
            unlink(made[i]);
    rmdir(workdir);
    return 0;
}
