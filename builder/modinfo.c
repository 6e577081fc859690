/* Reading a kernel module: the ELF .modinfo section and the appended
 * signature trailer, plus the validators every other file here uses.
 *
 * A .ko comes out of a build container that ran a vendor's build system:
 * it is untrusted input. The reader does no allocation, reads every field
 * through bounds-checked helpers, and does work linear in the file size
 * (one pass over the section headers, one over .modinfo). */
#include "internal.h"

#include <elf.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* vermagic                                                                  */

int build_vermagic_matches(const char *vermagic, const char *kernel_release)
{
    size_t n;

    if (vermagic == NULL || kernel_release == NULL || kernel_release[0] == '\0')
        return 0;
    n = strcspn(vermagic, " ");
    return n == strlen(kernel_release) && memcmp(vermagic, kernel_release, n) == 0;
}

/* ------------------------------------------------------------------------ */
/* ELF                                                                       */

/* The input and how to read its integers. */
struct elf {
    const unsigned char *p;
    size_t len;
    int is64;
    int be;
    const char *what;
};

/* The fields of a section header this reader uses, widened to 64 bits. */
struct shdr {
    uint32_t name;
    uint32_t type;
    uint64_t offset;
    uint64_t size;
    uint32_t link;
};

/* Reads an n-byte unsigned integer at off; the caller has checked that
 * off + n <= len. */
static uint64_t rd(const struct elf *e, size_t off, unsigned n)
{
    uint64_t v = 0;
    unsigned i;

    for (i = 0; i < n; i++) {
        unsigned shift = e->be ? 8 * (n - 1 - i) : 8 * i;
        v |= (uint64_t)e->p[off + i] << shift;
    }
    return v;
}

/* True when [off, off + size) lies inside the input. */
static int in_bounds(const struct elf *e, uint64_t off, uint64_t size)
{
    return off <= e->len && size <= e->len - off;
}

static int read_shdr(const struct elf *e, uint64_t shoff, uint64_t idx, struct shdr *sh)
{
    size_t entsize = e->is64 ? sizeof(Elf64_Shdr) : sizeof(Elf32_Shdr);
    size_t o;

    /* The caller bounded idx by the table it checked; check again so this
     * helper is safe on its own. */
    if (idx > (e->len / entsize) || !in_bounds(e, shoff, (idx + 1) * entsize))
        return -1;
    o = (size_t)(shoff + idx * entsize);
    if (e->is64) {
        sh->name = (uint32_t)rd(e, o + 0, 4);
        sh->type = (uint32_t)rd(e, o + 4, 4);
        sh->offset = rd(e, o + 24, 8);
        sh->size = rd(e, o + 32, 8);
        sh->link = (uint32_t)rd(e, o + 40, 4);
    } else {
        sh->name = (uint32_t)rd(e, o + 0, 4);
        sh->type = (uint32_t)rd(e, o + 4, 4);
        sh->offset = rd(e, o + 16, 4);
        sh->size = rd(e, o + 20, 4);
        sh->link = (uint32_t)rd(e, o + 24, 4);
    }
    return 0;
}

/* Finds the first section named ".modinfo" and returns its bytes. */
static int find_modinfo(struct elf *e, const unsigned char **sec, size_t *seclen,
                        struct kf_err *err)
{
    static const char want[] = ".modinfo"; /* compared with its NUL */
    size_t ehsize, entsize;
    uint64_t shoff, shnum, shstrndx, i;
    struct shdr sh0, strsh, sh;
    const unsigned char *strtab;
    unsigned ident_class, ident_data;
    unsigned type;

    if (e->len < EI_NIDENT || memcmp(e->p, ELFMAG, SELFMAG) != 0)
        return kf_err_set(err, KF_EPARSE, "%s: not an ELF file", e->what);
    ident_class = e->p[EI_CLASS];
    ident_data = e->p[EI_DATA];
    if (ident_class != ELFCLASS32 && ident_class != ELFCLASS64)
        return kf_err_set(err, KF_EPARSE, "%s: unknown ELF class %u", e->what, ident_class);
    if (ident_data != ELFDATA2LSB && ident_data != ELFDATA2MSB)
        return kf_err_set(err, KF_EPARSE, "%s: unknown ELF byte order %u", e->what, ident_data);
    e->is64 = ident_class == ELFCLASS64;
    e->be = ident_data == ELFDATA2MSB;
    ehsize = e->is64 ? sizeof(Elf64_Ehdr) : sizeof(Elf32_Ehdr);
    entsize = e->is64 ? sizeof(Elf64_Shdr) : sizeof(Elf32_Shdr);
    if (e->len < ehsize)
        return kf_err_set(err, KF_EPARSE, "%s: truncated ELF header (%zu bytes)", e->what, e->len);
    type = (unsigned)rd(e, 16, 2);
    if (type != ET_REL)
        return kf_err_set(err, KF_EPARSE,
                          "%s: ELF type %u is not a relocatable object, so not a kernel module",
                          e->what, type);
    if (e->is64) {
        shoff = rd(e, 40, 8);
        if (rd(e, 58, 2) != entsize)
            return kf_err_set(err, KF_EPARSE, "%s: bad section header size %u", e->what,
                              (unsigned)rd(e, 58, 2));
        shnum = rd(e, 60, 2);
        shstrndx = rd(e, 62, 2);
    } else {
        shoff = rd(e, 32, 4);
        if (rd(e, 46, 2) != entsize)
            return kf_err_set(err, KF_EPARSE, "%s: bad section header size %u", e->what,
                              (unsigned)rd(e, 46, 2));
        shnum = rd(e, 48, 2);
        shstrndx = rd(e, 50, 2);
    }
    if (shoff == 0 || !in_bounds(e, shoff, entsize))
        return kf_err_set(err, KF_EPARSE, "%s: section headers missing or past the end", e->what);
    /* Extended numbering: with more than 0xff00 sections the real count
     * and string table index live in section 0 (ELF gABI). */
    if (read_shdr(e, shoff, 0, &sh0) != 0)
        return kf_err_set(err, KF_EPARSE, "%s: truncated section headers", e->what);
    if (shnum == 0)
        shnum = sh0.size;
    if (shstrndx == SHN_XINDEX)
        shstrndx = sh0.link;
    if (shnum == 0 || shnum > (e->len - shoff) / entsize)
        return kf_err_set(err, KF_EPARSE, "%s: %llu section headers do not fit in the file",
                          e->what, (unsigned long long)shnum);
    if (shstrndx == SHN_UNDEF || shstrndx >= shnum)
        return kf_err_set(err, KF_EPARSE, "%s: section name table index %llu out of range", e->what,
                          (unsigned long long)shstrndx);
    if (read_shdr(e, shoff, shstrndx, &strsh) != 0 || strsh.type != SHT_STRTAB ||
        !in_bounds(e, strsh.offset, strsh.size))
        return kf_err_set(err, KF_EPARSE, "%s: bad section name table", e->what);
    strtab = e->p + strsh.offset;

    for (i = 1; i < shnum; i++) {
        if (read_shdr(e, shoff, i, &sh) != 0)
            return kf_err_set(err, KF_EPARSE, "%s: truncated section headers", e->what);
        if (sh.name >= strsh.size || strsh.size - sh.name < sizeof(want) ||
            memcmp(strtab + sh.name, want, sizeof(want)) != 0)
            continue;
        if (sh.type == SHT_NOBITS || !in_bounds(e, sh.offset, sh.size))
            return kf_err_set(err, KF_EPARSE, "%s: section .modinfo (#%llu) lies outside the file",
                              e->what, (unsigned long long)i);
        *sec = e->p + sh.offset;
        *seclen = (size_t)sh.size;
        return 0;
    }
    return kf_err_set(err, KF_EPARSE, "%s: no .modinfo section: not a kernel module", e->what);
}

/* ------------------------------------------------------------------------ */
/* .modinfo entries                                                          */

struct field {
    const char *key;
    size_t off;  /* of the char array in struct build_modinfo */
    size_t size; /* of that array */
};

#define FIELD(k)                                                                                   \
    {                                                                                              \
#k, offsetof(struct build_modinfo, k), sizeof(((struct build_modinfo *)0)->k)              \
    }

static const struct field fields[] = {
    FIELD(name), FIELD(version), FIELD(vermagic), FIELD(srcversion), FIELD(license), FIELD(depends),
};

/* Stores one "key=value" entry (not NUL-terminated, n bytes) when its key is
 * one kfleet keeps. */
static int take_entry(struct build_modinfo *mi, const char *s, size_t n, const char *what,
                      struct kf_err *err)
{
    const char *eq = memchr(s, '=', n);
    char shown[256];
    size_t i, k, klen, vlen;
    const char *v;
    char *dst;

    if (eq == NULL)
        return 0; /* not key=value: the kernel ignores such strings too */
    klen = (size_t)(eq - s);
    v = eq + 1;
    vlen = n - klen - 1;
    for (k = 0; k < sizeof(fields) / sizeof(fields[0]); k++)
        if (strlen(fields[k].key) == klen && memcmp(fields[k].key, s, klen) == 0)
            break;
    if (k == sizeof(fields) / sizeof(fields[0]))
        return 0;
    for (i = 0; i < vlen; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] >= 0x7f)
            return kf_err_set(err, KF_EUNTRUSTED,
                              "%s: .modinfo: %s '%s' has a byte that is not printable ASCII", what,
                              fields[k].key, kf_escape_to(shown, sizeof(shown), v, vlen));
    if (vlen >= fields[k].size)
        return kf_err_set(err, KF_EPARSE, "%s: .modinfo: %s is %zu bytes, more than %zu", what,
                          fields[k].key, vlen, fields[k].size - 1);
    dst = (char *)mi + fields[k].off;
    if (strcmp(fields[k].key, "depends") == 0) {
        if (mi->has_depends && (strlen(dst) != vlen || memcmp(dst, v, vlen) != 0))
            goto twice;
        mi->has_depends = 1;
    } else if (dst[0] != '\0' && (strlen(dst) != vlen || memcmp(dst, v, vlen) != 0)) {
        goto twice;
    }
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
    if (fields[k].off == offsetof(struct build_modinfo, name) && !kf_modname_valid(dst))
        return kf_err_set(err, KF_EUNTRUSTED, "%s: .modinfo: module name '%s' is not valid", what,
                          kf_escape_to(shown, sizeof(shown), v, vlen));
    return 0;
twice:
    /* Tools disagree on which copy wins (the kernel takes the first,
     * modinfo(8) prints both): refuse rather than guess. */
    return kf_err_set(err, KF_EPARSE, "%s: .modinfo: two different %s entries ('%s' and '%s')",
                      what, fields[k].key, kf_escape_to(shown, sizeof(shown) / 2, dst, strlen(dst)),
                      kf_escape_to(shown + sizeof(shown) / 2, sizeof(shown) / 2, v, vlen));
}

int build_modinfo_parse(const void *data, size_t len, const char *what, struct build_modinfo *mi,
                        struct kf_err *err)
{
    struct elf e = {data, len, 0, 0, what ? what : "module"};
    const unsigned char *sec = NULL;
    size_t seclen = 0, pos = 0, module_len, sig_len;
    int rc;

    memset(mi, 0, sizeof(*mi));
    kf_err_clear(err);
    if (data == NULL && len > 0)
        return kf_err_set(err, KF_EINVAL, "%s: no data", e.what);
    rc = find_modinfo(&e, &sec, &seclen, err);
    if (rc != 0)
        goto out;
    mi->elf_class = e.is64 ? 64 : 32;
    mi->big_endian = e.be;
    /* Entries are NUL-terminated strings, with NUL padding between them
     * where the compiler aligned a variable. A last entry without its NUL
     * ends at the end of the section. */
    while (pos < seclen) {
        const unsigned char *nul = memchr(sec + pos, '\0', seclen - pos);
        size_t n = nul ? (size_t)(nul - (sec + pos)) : seclen - pos;
        if (n > 0) {
            rc = take_entry(mi, (const char *)sec + pos, n, e.what, err);
            if (rc != 0)
                goto out;
        }
        pos += n + 1;
    }
    /* A signature is "signed" only when its trailer is well formed; a bare
     * marker is reported by build_sig_trailer_parse(), not here. */
    mi->has_signature =
        build_sig_trailer_parse(data, len, e.what, &module_len, &sig_len, NULL) == 0;
out:
    if (rc != 0)
        memset(mi, 0, sizeof(*mi));
    return rc;
}

int build_modinfo_read(const char *path, struct build_modinfo *mi, struct kf_err *err)
{
    struct build_map m;
    int rc;

    memset(mi, 0, sizeof(*mi));
    rc = build_map_open(&m, path, err);
    if (rc != 0)
        return rc;
    rc = build_modinfo_parse(m.data, m.len, path, mi, err);
    build_map_close(&m);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The signature trailer                                                     */

/* struct module_signature from the kernel's include/linux/module_signature.h:
 * u8 algo, hash, id_type, signer_len, key_id_len, __pad[3]; __be32 sig_len. */
#define MODSIG_SIZE 12
#define PKEY_ID_PKCS7 2

int build_sig_trailer_parse(const void *data, size_t len, const char *what, size_t *module_len,
                            size_t *sig_len, struct kf_err *err)
{
    const unsigned char *p = data;
    const unsigned char *ms;
    uint32_t sl;
    size_t rest;
    int i;

    *module_len = 0;
    *sig_len = 0;
    what = what ? what : "module";
    if (p == NULL || len < BUILD_SIG_MARKER_LEN ||
        memcmp(p + len - BUILD_SIG_MARKER_LEN, BUILD_SIG_MARKER, BUILD_SIG_MARKER_LEN) != 0)
        return kf_err_set(err, KF_ENOENT, "%s: no appended signature", what);
    rest = len - BUILD_SIG_MARKER_LEN;
    if (rest < MODSIG_SIZE)
        return kf_err_set(err, KF_EPARSE, "%s: signature marker without signature header", what);
    ms = p + rest - MODSIG_SIZE;
    rest -= MODSIG_SIZE;
    if (ms[2] != PKEY_ID_PKCS7)
        return kf_err_set(err, KF_EPARSE,
                          "%s: signature id type %u is not PKCS#7 (2), the only one kernels accept",
                          what, ms[2]);
    /* As the kernel's mod_check_sig(): for PKCS#7 everything but sig_len
     * lives inside the CMS, so these must be zero. */
    for (i = 0; i < 8; i++)
        if (i != 2 && ms[i] != 0)
            return kf_err_set(err, KF_EPARSE, "%s: signature header byte %d is %u, not 0", what, i,
                              ms[i]);
    sl = (uint32_t)ms[8] << 24 | (uint32_t)ms[9] << 16 | (uint32_t)ms[10] << 8 | ms[11];
    if (sl == 0 || sl > rest)
        return kf_err_set(err, KF_EPARSE, "%s: signature length %u does not fit in the file", what,
                          (unsigned)sl);
    *module_len = rest - sl;
    *sig_len = sl;
    return 0;
}
