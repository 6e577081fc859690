/* The interface of inventory/: Ansible-format YAML inventories, host
 * patterns, and node facts (the remote probe and the parser of its output).
 *
 * Everything here is synchronous and does no network I/O: the coordinator
 * runs the probe over SSH and hands its output to inv_facts_parse(). */
#ifndef KF_INVENTORY_H
#define KF_INVENTORY_H

#include "common.h"
#include "ssh.h"

#include <jansson.h>
#include <stddef.h>

/* ------------------------------------------------------------------------ */
/* Inventory                                                                 */

/* Where something was defined, for messages ("inventory.yml:12:5"). */
struct inv_loc {
    int line; /* 1-based; 0 = unknown */
    int col;  /* 1-based */
};

struct inv_host {
    char *name;         /* inventory name, unique */
    struct inv_loc loc; /* first definition */
    json_t *vars;       /* effective variables (object, owned): group vars by
                           depth then name, host vars last; see inventory.c */
    char **groups;      /* every group the host is in, ancestors and "all"
                           included, sorted by name */
    size_t ngroups;

    /* Connection settings resolved from vars. NULL/0 = not set, in which
     * case ~/.ssh/config and the SSH defaults decide. */
    char *address;         /* ansible_host (or ansible_ssh_host) */
    int port;              /* ansible_port (or ansible_ssh_port), 1..65535 */
    char *user;            /* ansible_user (or ansible_ssh_user) */
    char *key_file;        /* ansible_ssh_private_key_file */
    int become;            /* ansible_become: run commands through sudo -n */
    char *become_user;     /* ansible_become_user (default root when become) */
    char *connection;      /* ansible_connection, NULL = ssh */
    char *proxy_jump;      /* -o ProxyJump=X or -J X in ansible_ssh_common_args */
    char *ssh_common_args; /* the raw ansible_ssh_common_args */
};

struct inv_group {
    char *name;
    struct inv_loc loc;
    json_t *vars;    /* the group's own vars (object, owned) */
    char **children; /* direct child group names, in definition order */
    size_t nchildren;
    char **hosts; /* direct member host names, in definition order */
    size_t nhosts;
};

struct inventory {
    char *path;             /* file name used in messages */
    struct inv_host *hosts; /* in order of first definition */
    size_t nhosts;
    struct inv_group *groups; /* "all" and "ungrouped" always exist */
    size_t ngroups;
};

void inv_init(struct inventory *inv);
void inv_release(struct inventory *inv);

/* Parses an Ansible YAML inventory. On failure inv is left empty and err
 * says where and what: "inv.yml:12:5: host 'gpu[01:x]': bad range: ...".
 * Duplicate mapping keys, a group that is its own ancestor, a host given
 * two different values for one variable in two places, and a bad
 * connection variable (port not in 1..65535, become not a boolean) are
 * errors. Input of any size and shape is safe (fuzzed). */
int inv_load_file(struct inventory *inv, const char *path, struct kf_err *err);
int inv_load_buffer(struct inventory *inv, const char *name, const char *data, size_t len,
                    struct kf_err *err);

/* Any YAML document (a configuration file) as JSON, with the inventory's
 * rules: anchors and << merge keys, YAML 1.1 scalars as Ansible reads them,
 * duplicate keys an error, alias bombs, depth and size bounded; errors say
 * FILE:LINE:COL. An empty document gives JSON null. *out is a new
 * reference. */
int inv_yaml_to_json(const char *name, const char *data, size_t len, json_t **out,
                     struct kf_err *err);
int inv_yaml_load_file(const char *path, json_t **out, struct kf_err *err);

const struct inv_host *inv_find_host(const struct inventory *inv, const char *name);

/* The SSH target of a host (its strings point into h). The connection
 * settings kfleet does not support are KF_EUNSUPPORTED, with why saying so
 * in words an operator can act on: an ansible_connection other than ssh,
 * a ProxyJump. */
int inv_host_ssh_target(const struct inv_host *h, struct ssh_target *t, char *why, size_t n);
const struct inv_group *inv_find_group(const struct inventory *inv, const char *name);

/* Expands Ansible host ranges: "gpu[01:03]" -> gpu01 gpu02 gpu03,
 * "node[a:c]", "x[0:10:5]" (stride), several ranges in one name. The
 * result (*out, *n) is a malloc'ed array of malloc'ed strings; free with
 * kf_strv_free. More than INV_RANGE_MAX names is an error. */
#define INV_RANGE_MAX 1000000
int inv_expand_range(const char *pattern, char ***out, size_t *n, struct kf_err *err);

/* Selects hosts with an Ansible host pattern (what --limit takes):
 * "all" or "*", a group, a host, globs ("gpu0*"), "~regex" (POSIX ERE),
 * union "a:b" or "a,b", intersection ":&b", exclusion ":!b". Regular terms
 * are applied first, then intersections, then exclusions, as Ansible does.
 * A term that matches nothing is warned about (log_warn). *idx receives
 * malloc'ed indices into inv->hosts in inventory order. NULL or "" = all. */
int inv_select(const struct inventory *inv, const char *pattern, size_t **idx, size_t *n,
               struct kf_err *err);

/* ------------------------------------------------------------------------ */
/* Facts                                                                     */

#define INV_KREL_MAX KF_KREL_MAX /* bytes of a kernel release, as uname's limit */
#define INV_FACTS_MAX_KERNELS 64
#define INV_FACTS_MAX_GPUS 64

/* Kernel releases and driver versions are checked with common/valid.h
 * (kf_krel_valid, kf_driver_version_valid) before any use. */

enum inv_tristate { INV_UNKNOWN = 0, INV_YES, INV_NO };

struct inv_kernel {
    char release[INV_KREL_MAX + 1];
    unsigned running : 1;
    unsigned has_modules_dep : 1; /* /lib/modules/R/modules.dep */
    unsigned has_build : 1;       /* /lib/modules/R/build exists (headers) */
    unsigned has_image : 1;       /* /boot/vmlinuz-R */
};

struct inv_gpu {
    char slot[32]; /* PCI address "0000:3b:00.0" */
    char id[16];   /* vendor:device "10de:2330" */
};

struct inv_facts {
    char kernel[INV_KREL_MAX + 1];                    /* uname -r, validated */
    char kernel_build[256];                           /* uname -v, control bytes removed */
    char arch[32];                                    /* uname -m: [A-Za-z0-9_]+ */
    char os_id[64];                                   /* os-release ID ("debian") */
    char os_version[64];                              /* VERSION_ID ("12") */
    char os_like[128];                                /* ID_LIKE */
    char os_pretty[128];                              /* PRETTY_NAME */
    struct inv_kernel kernels[INV_FACTS_MAX_KERNELS]; /* installed, sorted;
                                       the running one always included */
    size_t nkernels;
    char loaded_driver[32];       /* /sys/module/nvidia/version, "" = none */
    char userspace_driver[32];    /* nvidia-smi or libnvidia-ml, "" = unknown */
    enum inv_tristate gpus_known; /* INV_NO: no way to list PCI devices */
    struct inv_gpu gpus[INV_FACTS_MAX_GPUS];
    size_t ngpus;
    enum inv_tristate secure_boot;         /* mokutil or efivars; unknown if neither */
    char kfleet_driver[32];                /* from /var/lib/kfleet/state, "" = none */
    char kfleet_release[INV_KREL_MAX + 1]; /* kernel kfleet last installed for */
    /* The state's "current KERNEL DRIVER SHA PROFILE" lines: the release
     * kfleet installed for each kernel (deployer/NODE.md). */
    struct inv_kfleet_current {
        char kernel[INV_KREL_MAX + 1];
        char driver[32];
        char profile[65];
    } kfleet_current[INV_FACTS_MAX_KERNELS];
    size_t nkfleet_current;
};

/* Builds the ONE remote command that gathers a node's facts: a POSIX sh
 * script that needs no tool beyond sh, uname, cat and ls, prints sections
 * marked with "@@kf:<nonce>:<name>", and never fails for a missing tool.
 * nonce: [0-9a-f]{8,32}, chosen per run so node output cannot forge a
 * section marker by accident. With become, the script runs under
 * "sudo -n" (as become_user, root when NULL). *cmd is malloc'ed. */
int inv_facts_command(const char *nonce, int become, const char *become_user, char **cmd);

/* Parses the probe's stdout. Everything in it is untrusted: a kernel
 * release that fails kf_krel_valid(), a missing section, or a malformed
 * line is KF_EUNTRUSTED / KF_EPARSE with a display-safe message naming the
 * section and value ("running kernel release '6.1\x1b[2J' rejected: ..."). */
int inv_facts_parse(const char *out, size_t len, const char *nonce, struct inv_facts *f,
                    struct kf_err *err);

/* The facts as a JSON object (new reference). */
json_t *inv_facts_to_json(const struct inv_facts *f);

#endif
