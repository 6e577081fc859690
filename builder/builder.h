/* The interface of builder/: what happens to kernel modules between the
 * compiler and the artifact store.
 *
 *   .ko (untrusted ELF) --build_modinfo_read--> name, version, vermagic, ...
 *   build_strip_debug   objcopy --strip-debug, .modinfo checked after
 *   build_sign_module   the kernel's appended PKCS#7 signature, in C
 *   build_package_write reproducible tar.gz + .sha256, with metadata.json,
 *                       install.sh, uninstall.sh and README.txt inside
 *   build_keys_new      a signing key and a certificate for MOK enrolment
 *
 * Everything here blocks (file I/O, hashing, signing, one child process for
 * objcopy): the coordinator calls it from uv_queue_work. Nothing keeps
 * global state, so calls on different threads do not interfere. Every
 * function returns 0 or a negative KF_E* code and, on failure, fills err
 * (which may be NULL) with a message naming the file and what was wrong;
 * bytes taken from a module are shown display-safe (kf_escape_to). */
#ifndef KF_BUILDER_H
#define KF_BUILDER_H

#include "common.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Values that reach paths, scripts and file names are checked with
 * common/valid.h (kf_krel_valid, kf_driver_version_valid, kf_modname_valid). */
#define BUILD_KREL_MAX KF_KREL_MAX
#define BUILD_DRIVER_MAX KF_DRIVER_MAX
#define BUILD_MODNAME_MAX KF_MODNAME_MAX

/* ------------------------------------------------------------------------ */
/* .modinfo                                                                  */

/* The 28-byte marker that ends a module with an appended signature. */
#define BUILD_SIG_MARKER "~Module signature appended~\n"
#define BUILD_SIG_MARKER_LEN 28

/* What kfleet needs from a module's .modinfo section. A string field is ""
 * when its key is absent. Values are never cut short: a value with a byte
 * that is not printable ASCII (KF_EUNTRUSTED), or longer than its field
 * (KF_EPARSE), is an error. */
struct build_modinfo {
    char name[BUILD_MODNAME_MAX + 1]; /* "nvidia_drm" (modpost of recent kernels) */
    char version[64];                 /* MODULE_VERSION: "550.54.15" */
    char vermagic[256];               /* "6.1.0-41-amd64 SMP preempt mod_unload ..." */
    char srcversion[64];
    char license[128];
    char depends[1024]; /* comma-separated, as modpost writes it */
    int has_depends;    /* a "depends=" entry exists (possibly empty) */
    int has_signature;  /* a well-formed signature trailer ends the file
                           (build_sig_trailer_parse) */
    int elf_class;      /* 32 or 64 */
    int big_endian;
};

/* Parses a module held in memory. Accepts ELF32 and ELF64, either byte
 * order, of type ET_REL (what every .ko is), including extended section
 * numbering; finds ".modinfo" through the section-name string table (the
 * first such section, as the kernel's loader does) and splits its
 * NUL-separated key=value entries. Every offset and size is checked against
 * len, so any input is safe (fuzzed). A key kept here that appears twice
 * with different values is an error. what names the input in messages. */
int build_modinfo_parse(const void *data, size_t len, const char *what, struct build_modinfo *mi,
                        struct kf_err *err);

/* build_modinfo_parse() on a file (mapped read-only, never read whole). */
int build_modinfo_read(const char *path, struct build_modinfo *mi, struct kf_err *err);

/* True when the first word of vermagic (up to the first space) equals
 * kernel_release exactly: the check the kernel itself makes at load time. */
int build_vermagic_matches(const char *vermagic, const char *kernel_release);

/* Where the appended signature of a module in memory lies. Checks the
 * marker and the 12-byte struct module_signature before it as the kernel's
 * mod_check_sig() does (id_type 2 = PKCS#7, algo, hash, signer and key id
 * lengths 0, sig_len within the file). On success *module_len is the size
 * of the unsigned module and the DER signature is the *sig_len bytes after
 * it. KF_ENOENT when there is no marker, KF_EPARSE when the trailer is
 * malformed. */
int build_sig_trailer_parse(const void *data, size_t len, const char *what, size_t *module_len,
                            size_t *sig_len, struct kf_err *err);

/* ------------------------------------------------------------------------ */
/* Module files                                                              */

#define BUILD_SHA256_HEX 65 /* 64 hex digits and a NUL */

/* SHA-256 of a file, streamed (OpenSSL EVP), as lower-case hex. */
int build_sha256_file(const char *path, char hex[BUILD_SHA256_HEX], struct kf_err *err);

/* A module that compiled to almost nothing (nvidia-peermem without the
 * Mellanox OFED headers) has no dependencies and is a few KiB: with no
 * "depends" (absent or empty) and fewer bytes than the threshold, a module
 * is flagged as a stub. Real NVIDIA modules are megabytes. */
#define BUILD_STUB_THRESHOLD_DEFAULT (16 * 1024)

/* One module file as it goes into a package. */
struct build_module {
    char file[BUILD_MODNAME_MAX + 4]; /* base name in modules/: "nvidia-drm.ko" */
    char name[BUILD_MODNAME_MAX + 1]; /* as in /sys/module: "nvidia_drm" */
    uint64_t size;
    char sha256[BUILD_SHA256_HEX];
    struct build_modinfo info;
    int stub; /* see BUILD_STUB_THRESHOLD_DEFAULT */
};

/* Reads and checks one module for kernel_release: the base name must be
 * NAME.ko with a valid NAME, .modinfo must parse, vermagic must match
 * kernel_release (KF_ENOMATCH otherwise, saying which kernel it is for).
 * The name is .modinfo's "name" or else the file name, '-' made '_'.
 * stub_threshold 0 means BUILD_STUB_THRESHOLD_DEFAULT. */
int build_module_inspect(const char *path, const char *kernel_release, uint64_t stub_threshold,
                         struct build_module *m, struct kf_err *err);

/* Orders modules so that each comes after the modules of the set it
 * depends on ("depends", '-' and '_' alike; modules outside the set, like
 * drm, are ignored); among modules free to go next, the smallest name
 * first, so the result does not depend on the order of mods:
 * nvidia, nvidia_modeset, nvidia_drm, nvidia_peermem, nvidia_uvm.
 * order[0..n-1] receives indices into mods. A cycle is KF_EINVAL. */
int build_load_order(const struct build_module *mods, size_t n, size_t *order, struct kf_err *err);

/* Runs `objcopy --strip-debug in out` (objcopy: the program to use, NULL =
 * "objcopy" from PATH; a cross objcopy for another architecture) through
 * posix_spawn, no shell. A failure reports objcopy's exit status and
 * stderr; on failure out is removed. out NULL or equal to in strips in
 * place (objcopy replaces the file itself). The result must still have a
 * .modinfo section. An appended signature does not survive (it is not part
 * of the ELF): strip first, then sign. */
int build_strip_debug(const char *in, const char *out, const char *objcopy, struct kf_err *err);

/* ------------------------------------------------------------------------ */
/* Signing (the kernel's appended-signature format)                          */

/* Signs a module as the kernel's scripts/sign-file does: a detached CMS
 * SignedData over the module bytes (no certificates, no signed attributes,
 * issuer and serial as signer id), DER-encoded, then a struct
 * module_signature {0, 0, id_type 2, 0, 0, pad, be32 sig_len}, then
 * BUILD_SIG_MARKER. hash: "sha256" (NULL), "sha384" or "sha512".
 * key_path: an unencrypted PEM private key, RSA (>= 2048 bits) or ECDSA
 * P-384; Ed25519 and other types are refused (KF_EUNSUPPORTED) because the
 * kernel cannot verify them. cert_path: the X.509 certificate of that key,
 * PEM or DER; NULL reads it from key_path (the kernel's signing_key.pem
 * holds both). A module that is already signed is refused (KF_EEXIST):
 * strip it again (build_strip_debug drops the old signature) to re-sign,
 * so a signature is never silently replaced. out NULL or equal to in
 * replaces in; the output is written to a temporary file and renamed. */
int build_sign_module(const char *in, const char *out, const char *key_path, const char *cert_path,
                      const char *hash, struct kf_err *err);

/* Verifies a signed module against cert_path (PEM or DER): the trailer as
 * build_sig_trailer_parse(), then the detached CMS over the module bytes
 * with that certificate as the signer (its chain is not checked: trust is
 * the kernel's keyring's business). KF_ENOENT: not signed; KF_EAUTH: the
 * signature does not verify with this certificate. */
int build_verify_module_signature(const char *path, const char *cert_path, struct kf_err *err);

/* ------------------------------------------------------------------------ */
/* Keys                                                                      */

/* Creates in dir (made 0700 when missing) a new signing key and a
 * self-signed certificate fit for MOK enrolment and module signing:
 *   signing_key.pem   the private key, PKCS#8 PEM, mode 0600
 *   signing_cert.der  the certificate, DER (what mokutil --import takes)
 *   signing_cert.pem  the same certificate, PEM
 * X.509v3 with basicConstraints CA:FALSE, keyUsage digitalSignature,
 * extendedKeyUsage codeSigning, subject and authority key identifiers.
 * type: "rsa" (= "rsa4096", the kernel's default), "rsa2048", "rsa3072",
 * "rsa4096" or "p384". cn: the subject common name, 1-64 printable ASCII
 * characters. days: validity, 1 to 36500. Existing files are never
 * replaced (KF_EEXIST); on failure none of the three is left. On success
 * the command to enrol the certificate, `mokutil --import '<dir>/signing_cert.der'`
 * (quoted), is appended to mokutil_cmd when it is not NULL. */
int build_keys_new(const char *dir, const char *type, const char *cn, unsigned days,
                   struct buf *mokutil_cmd, struct kf_err *err);

/* The subject of a certificate (PEM or DER) as one RFC 2253 line ("CN=x")
 * and its key id: the subjectKeyIdentifier as lower-case hex, or the SHA-1
 * of the public key when the certificate has none (what the kernel shows).
 * For metadata.json's "signer". */
int build_cert_describe(const char *cert_path, char *subject, size_t subject_size, char *key_id,
                        size_t key_id_size, struct kf_err *err);

/* ------------------------------------------------------------------------ */
/* Packages                                                                  */

/* A firmware file shipped with the modules (NVIDIA GSP firmware). name is
 * its path under /lib/firmware, relative ("nvidia/550.54.15/gsp_ga10x.bin"):
 * components of [A-Za-z0-9._+-], none starting with '.'. */
struct build_pkg_file {
    const char *src;
    const char *name;
};

/* What goes into a package. Strings NULL or "" are unknown and written as
 * JSON null in metadata.json; the ones marked "required" must be set. */
struct build_pkg {
    const char *topdir;         /* required: the archive's top directory,
                                   "nvidia-driver-550.54.15-kernel-6.1.0-41-amd64-x86_64"
                                   (see build_pkg_topdir) */
    const char *driver_version; /* required, kf_driver_version_valid */
    const char *kernel_release; /* required, kf_krel_valid */
    const char *kernel_build;   /* uname -v of the target kernel */
    const char *arch;           /* required: "x86_64", [A-Za-z0-9_]+ */
    const char *os_id;          /* "debian" */
    const char *os_version;     /* "12" */
    const char *compiler;       /* "gcc (Debian 12.2.0-14) 12.2.0" */
    const char *build_host;
    const char *profile;        /* build profile name */
    const char *source_sha256;  /* of the driver source (.run or tarball) */
    const char *const *modules; /* required: paths of the .ko files, already
                                   stripped (and signed); base names unique */
    size_t nmodules;
    const struct build_pkg_file *firmware;
    size_t nfirmware;
    int64_t source_date_epoch;  /* >= 0: every mtime, and build_date */
    uint64_t stub_threshold;    /* 0 = BUILD_STUB_THRESHOLD_DEFAULT */
    const char *signer_subject; /* NULL = not signed by kfleet; when set,
                                   every module must carry a signature */
    const char *signer_key_id;
};

struct build_pkg_result {
    char sha256[BUILD_SHA256_HEX]; /* of the .tar.gz */
    uint64_t size;                 /* bytes of the .tar.gz */
    size_t nstubs;                 /* modules flagged "stub" */
    json_t *metadata;              /* metadata.json as written (owned) */
};

void build_pkg_result_init(struct build_pkg_result *r);
void build_pkg_result_release(struct build_pkg_result *r);

/* Writes "nvidia-driver-DRIVER-kernel-KERNEL-ARCH" into out after checking
 * the three values. */
int build_pkg_topdir(char *out, size_t outsz, const char *driver, const char *kernel,
                     const char *arch, struct kf_err *err);

/* Writes the package dest (a path ending in .tar.gz, by convention
 * TOPDIR.tar.gz) and dest.sha256 ("HEX  BASENAME\n", for sha256sum -c).
 * Layout under TOPDIR/: modules/NAME.ko, firmware/ (when there is firmware),
 * metadata.json, install.sh, uninstall.sh, README.txt.
 *
 * Checks first: each module as build_module_inspect() (vermagic for
 * kernel_release), a module's version, when it has one, equal to
 * driver_version, names and file names unique, dependencies acyclic.
 *
 * Reproducible: the same inputs give a byte-identical file. pax_restricted
 * tar with entries sorted by path, uid/gid 0, owner root:root, mode 0644
 * (0755 for directories and the two scripts), every mtime =
 * source_date_epoch, gzip without a timestamp; metadata.json with sorted
 * keys. Files are hashed as they are archived, and a module that changed
 * since it was checked is an error.
 *
 * Atomic: both files are written to temporary files in dest's directory,
 * fsynced, renamed, and the directory fsynced; on failure neither is left
 * (an existing dest is replaced only on success). result may be NULL. */
int build_package_write(const struct build_pkg *p, const char *dest,
                        struct build_pkg_result *result, struct kf_err *err);

/* The pieces of a package, public for tests and for the coordinator's
 * "show" commands. mods are in load order (build_load_order), stubs
 * included: stubs are installed but never loaded. */

/* metadata.json (new reference in *out): driver_version, kernel_version,
 * kernel_build, build_date (ISO 8601 UTC from source_date_epoch),
 * architecture, os {id, version}, compiler, build_host, profile, modules
 * [{name, file, size, sha256, vermagic, version, depends [..], signed,
 * stub}], load_order [names of the non-stub modules], firmware [{file,
 * size, sha256}], source_sha256, kfleet_version, signer (null or {subject,
 * key_id}). fw_sha256 and fw_size run parallel to p->firmware. */
int build_metadata(const struct build_pkg *p, const struct build_module *mods, size_t n,
                   const char (*fw_sha256)[BUILD_SHA256_HEX], const uint64_t *fw_size, json_t **out,
                   struct kf_err *err);

/* install.sh: a POSIX sh script that, on a node without kfleet, checks the
 * sha256 of the modules and firmware (fw_sha256 parallel to fw), copies
 * modules/NAME.ko to /lib/modules/KERNEL/updates/kfleet/ (removing .ko
 * files an older kfleet package left there), copies firmware that is
 * missing, and runs depmod -a KERNEL; with --load (refused unless uname -r
 * is KERNEL) it unloads the package's modules in reverse order, loads the
 * non-stub ones with modprobe in load order and checks that
 * /sys/module/NAME/version is the driver version for each module that has
 * a version. Running it twice is fine. Every path is prefixed with
 * $KFLEET_ROOT (default empty), and depmod/modprobe get it with -b/-d, so
 * it can run in a test root. Embedded values are validated again here and
 * single-quoted. */
int build_install_sh(struct buf *out, const char *kernel_release, const char *driver_version,
                     const struct build_module *mods, size_t n, const struct build_pkg_file *fw,
                     const char (*fw_sha256)[BUILD_SHA256_HEX], size_t nfw, struct kf_err *err);

/* uninstall.sh: unloads the package's modules in reverse order (when they
 * are loaded, the running kernel is KERNEL, and, for a module with a
 * version, the loaded one is driver_version: another driver is not ours),
 * removes the package's files from /lib/modules/KERNEL/updates/kfleet/ and
 * runs depmod. Firmware stays: it belongs to the driver version, which
 * other kernels' packages (and the userspace driver) share. Running it
 * twice is fine. */
int build_uninstall_sh(struct buf *out, const char *kernel_release, const char *driver_version,
                       const struct build_module *mods, size_t n, struct kf_err *err);

/* ------------------------------------------------------------------------ */
/* Archives between the control host and builders (archive.c)               */

/* The directory dir as one uncompressed tar in out (appended), every member
 * under the top directory top ("src"), sorted by name, owner root, modes
 * 0644/0755 (executable bits kept), mtimes = mtime: the same tree gives the
 * same bytes, whose sha256 names the source on builders. Leftovers of an
 * earlier build (*.o, *.ko, *.mod, *.mod.c, *.cmd, Module.symvers,
 * modules.order) and .git are left out. Symlinks, devices and the like are
 * refused (KF_EUNSUPPORTED): on the builder they could point anywhere. */
int build_source_tar(const char *dir, const char *top, int64_t mtime, struct buf *out,
                     char sha256[BUILD_SHA256_HEX], struct kf_err *err);

/* Unpacks a tar (optionally gzip) held in memory under dir, which must
 * exist. Only regular files and directories with relative paths free of
 * ".." are accepted (anything else fails the whole archive, KF_EUNTRUSTED);
 * modes become 0644/0755, owners the caller; existing files are never
 * overwritten; more than max_bytes of file data is KF_ETRUNC. On failure
 * what was written stays: unpack into a fresh directory and remove it. */
int build_untar(const void *data, size_t len, const char *dir, uint64_t max_bytes,
                struct kf_err *err);

/* Writes a whole file atomically: a temporary file in the same directory,
 * fsync, rename over path, fsync of the directory. */
int build_write_file_atomic(const char *path, const void *p, size_t n, unsigned mode,
                            struct kf_err *err);

#endif
