/* dkms.conf, read without running it.
 *
 * An out-of-tree module packaged for DKMS describes itself in dkms.conf, a
 * bash fragment that DKMS sources. The real build runs DKMS-style inside a
 * sandboxed container, whose bash sources the file; the control host only
 * needs the package's identity, its modules and where they land, and the
 * kernels and architectures it is restricted to, to plan builds and to
 * check packages. It must learn them without executing anything, and
 * without guessing: kfleet accepts the assignment subset of bash and
 * refuses everything else, naming the line.
 *
 * Accepted, with bash's meaning:
 *   # comments      whole lines, and after a blank outside quotes
 *   NAME=VALUE      NAME [A-Za-z_][A-Za-z0-9_]*, no blanks around '='
 *   NAME[N]=VALUE   N decimal, 0 to 255 (no leading zeros: bash reads 010
 *                   as octal); NAME and NAME[0] are the same variable
 *   export NAME=VALUE (not NAME[N]: bash refuses that), and several
 *                   assignments on one line
 *   VALUE           unquoted text, 'single quoted', "double quoted" (a
 *                   backslash escapes only $ ` " \ and newline), or a
 *                   concatenation; quotes may span lines; backslash-newline
 *                   continues a line outside single quotes
 *   $NAME, ${NAME}, ${NAME:-word} and the other ${...} forms that cannot
 *                   assign or run anything, in unquoted and double-quoted
 *                   text
 * Refused (KF_EPARSE, "WHAT:LINE: ..."): any other line (if, functions,
 * unset, ...), ; & | < > ( ) outside quotes, command substitution $(...)
 * or `...` and arithmetic $((...)) $[...] outside single quotes, ${...}
 * that assigns (${X=y}, ${X:=y}) or evaluates arithmetic (subscripts other
 * than numbers, ${X:offset} with anything but numbers), quotes inside
 * ${...}, $'...' and $"...", a line continuation inside or right after a
 * $NAME (bash joins the name), tilde expansion, NAME+=, assignments to
 * bash's read-only variables (UID, EUID, PPID, ...), control characters
 * (a CRLF file included) and NUL bytes.
 *
 * Values are kept as bash holds them after quote removal, with $-references
 * verbatim: MAKE[0] and CLEAN keep "${kernelver}" for the container's bash
 * to expand. Where kfleet itself needs the value (the identity, module
 * names, locations, the exclusivity patterns, AUTOINSTALL), $PACKAGE_NAME
 * and $PACKAGE_VERSION (with or without braces) are replaced by their values
 * at the time of the assignment, as bash does; using one before it is
 * assigned is an error. Any other reference is an error there, except in
 * locations, which keep a $NAME or ${NAME} verbatim (DKMS expands them in
 * the build); a literal '$' (quoted or escaped) in a location is refused so
 * that kept references stay unambiguous.
 *
 * Variables kfleet does not use (PRE_BUILD, POST_INSTALL, REMAKE_INITRD,
 * NO_WEAK_MODULES, STRIP[], BUILD_EXCLUSIVE_CONFIG, ...) are checked for
 * syntax and ignored. MAKE[n] for n > 0 together with MAKE_MATCH[n] (a make
 * command for the kernels that match) is refused as unsupported: kfleet
 * would build with the wrong command.
 *
 * Nothing here keeps global state; every function may run on any thread. */
#ifndef KF_BUILDER_DKMS_H
#define KF_BUILDER_DKMS_H

#include "common.h"

#include <stddef.h>

#define BUILD_DKMS_FILE_MAX (1024 * 1024) /* bytes of a dkms.conf */
#define BUILD_DKMS_VALUE_MAX 4096         /* bytes of one value */
#define BUILD_DKMS_MODULES_MAX 256        /* indices 0 to 255 */
#define BUILD_DKMS_NAME_MAX 64            /* bytes of PACKAGE_NAME, PACKAGE_VERSION */

/* One module of the package: index i of the BUILT_MODULE_NAME,
 * BUILT_MODULE_LOCATION, DEST_MODULE_LOCATION and DEST_MODULE_NAME arrays.
 * Every string is set (malloc'ed), "" when the variable is unset. */
struct build_dkms_module {
    char *name;           /* BUILT_MODULE_NAME[i]: required, kf_modname_valid,
                             the module is NAME.ko */
    char *built_location; /* BUILT_MODULE_LOCATION[i]: the directory under the
                             build directory where NAME.ko appears ("" = the
                             build directory itself) */
    char *dest_location;  /* DEST_MODULE_LOCATION[i]: under
                             /lib/modules/KERNEL, "/kernel/drivers/video";
                             starts with /kernel, /updates or /extra as DKMS
                             requires ("" = DKMS's default) */
    char *dest_name;      /* DEST_MODULE_NAME[i]: kf_modname_valid, the name
                             it is installed as ("" = name) */
};

/* A location is a path below its base: a leading '/' is DKMS's way of
 * writing that, not an absolute path. Components of [A-Za-z0-9._+~-] or
 * $NAME / ${NAME} references kept for DKMS, never "..". */

/* What kfleet knows of a dkms.conf. Strings are malloc'ed. */
struct build_dkms {
    char *package_name;                /* required: 1 to 64 of [A-Za-z0-9_-], starting
                                          with a letter or digit */
    char *package_version;             /* required: 1 to 64 of [A-Za-z0-9.+~_-],
                                          starting with a letter or digit */
    struct build_dkms_module *modules; /* indices 0..nmodules-1, no gaps */
    size_t nmodules;                   /* 1 to BUILD_DKMS_MODULES_MAX */
    char *make;                        /* MAKE[0] after quote removal, $-references
                                          verbatim; NULL when unset (DKMS's default
                                          make command applies) */
    char *clean;                       /* CLEAN, the same way; NULL when unset */
    char *exclusive_kernel;            /* BUILD_EXCLUSIVE_KERNEL, a POSIX ERE matched
                                          against the kernel release; NULL when unset or
                                          empty (DKMS ignores an empty one) */
    char *exclusive_arch;              /* BUILD_EXCLUSIVE_ARCH, an ERE matched against
                                          uname -m ("x86_64"); NULL when unset or empty */
    int autoinstall;                   /* AUTOINSTALL: 1 when it starts with y or Y (DKMS's
                                          test), 0 otherwise, -1 when unset */
};

/* Makes d empty (autoinstall -1); build_dkms_release() is then safe. */
void build_dkms_init(struct build_dkms *d);

/* Frees what d holds and makes it empty again. */
void build_dkms_release(struct build_dkms *d);

/* Parses the len bytes of text as a dkms.conf (see the top of this file).
 * what names the input in messages ("nvidia-550.54.15/dkms.conf"; NULL =
 * "dkms.conf"); values taken from the file are shown display-safe
 * (kf_escape_to). d is initialised here and holds the result on success;
 * on failure it is left empty and err says "WHAT:LINE: what was wrong".
 * KF_EPARSE for anything the file says, KF_EINVAL for bad arguments,
 * KF_ENOMEM. Any bytes are safe (fuzzed). Checked as well: PACKAGE_NAME and
 * PACKAGE_VERSION set, at least one module, no gaps between module indices
 * (DKMS counts the elements and reads 0..count-1), no location or name set
 * for an index without BUILT_MODULE_NAME, module names (and installed
 * names, '-' and '_' alike) unique, exclusivity patterns that compile, and
 * the bounds above (file, value, index). */
int build_dkms_parse(const char *text, size_t len, const char *what, struct build_dkms *d,
                     struct kf_err *err);

/* build_dkms_parse() on a regular file of at most BUILD_DKMS_FILE_MAX bytes;
 * messages name path. KF_ENOENT when it does not exist, KF_EIO when it
 * cannot be read. */
int build_dkms_load(const char *path, struct build_dkms *d, struct kf_err *err);

/* Whether the package builds for kernel (a kernel release, uname -r) and
 * arch (uname -m), as DKMS decides with BUILD_EXCLUSIVE_KERNEL and
 * BUILD_EXCLUSIVE_ARCH (bash's =~, a POSIX ERE that matches anywhere unless
 * anchored). 1 when it does; 0 when it does not, with the reason in why
 * (when why is not NULL), e.g.
 *   BUILD_EXCLUSIVE_KERNEL "^5\." does not match 6.1.0-47-amd64
 * and a negative KF_E* code when a pattern does not compile (KF_EINVAL, the
 * message names the variable and the package), or an argument is NULL. */
int build_dkms_applies(const struct build_dkms *d, const char *kernel, const char *arch, char *why,
                       size_t whysz, struct kf_err *err);

#endif
