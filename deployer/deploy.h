/* The interface of deployer/: what happens on one node when a package is
 * deployed to it, rolled back, or verified.
 *
 *   deploy_node_command   the remote command line: deployer/node.sh (carried
 *                         inside kfleet) with one action and its options
 *   deploy_check_parse    the node's own account of itself (node.sh check),
 *                         parsed as untrusted input
 *   struct deploy_node    one node's deploy as an explicit state machine over
 *                         one SSH connection: connect, check (preflight),
 *                         transfer, install, drain, load, verify, undrain,
 *                         rollback, unlock
 *
 * The deployer knows nodes, packages and the node-side program; it does not
 * know rollouts, stages or the state database. The coordinator gives each
 * node a table of callbacks (struct deploy_node_ops): it journals every
 * state before the deployer acts on it, finds the stored package for a
 * kernel, hands out transfer slots with the package's bytes (read once for
 * all nodes), and learns when the node is done. Everything runs on the
 * loop thread. */
#ifndef KF_DEPLOY_H
#define KF_DEPLOY_H

#include "common.h"
#include "inventory.h"
#include "proc.h"
#include "ssh.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

/* deployer/node.sh, embedded at build time (see deployer/NODE.md). */
extern const char kf_node_script[];
extern const size_t kf_node_script_len;

#define DEPLOY_MAX_KERNELS INV_FACTS_MAX_KERNELS
#define DEPLOY_MAX_RELEASES 128
#define DEPLOY_MAX_MODULES 16
#define DEPLOY_OWNER_MAX 128
#define DEPLOY_PROFILE_MAX 64

/* Node-side exit codes (NODE.md). */
enum {
    DEPLOY_X_OK = 0,
    DEPLOY_X_USAGE = 2,
    DEPLOY_X_LOCKED = 10,
    DEPLOY_X_SHA256 = 11,
    DEPLOY_X_SPACE = 12,
    DEPLOY_X_BUSY = 13,
    DEPLOY_X_MODPROBE = 14,
    DEPLOY_X_VERIFY = 15,
    DEPLOY_X_MISSING = 16,
    DEPLOY_X_PACKAGE = 17,
    DEPLOY_X_ENV = 20,
};

/* ------------------------------------------------------------------------ */
/* The remote command                                                        */

/* "[sudo -n -u USER] sh -c SCRIPT kfleet-node ACTION ARG...", every word
 * quoted with kf_shquote. args are the option words ("--driver",
 * "550.54.15", ...), passed as they are: node.sh validates them again.
 * *cmd is malloc'ed. */
int deploy_node_command(int become, const char *become_user, const char *action,
                        const char *const *args, size_t nargs, char **cmd);

/* True when s can be a lock owner (1 to 128 of [A-Za-z0-9._:@-]) or a
 * profile name (1 to 64 of [A-Za-z0-9_-]). */
int deploy_owner_valid(const char *s);
int deploy_profile_valid(const char *s);

/* ------------------------------------------------------------------------ */
/* The node's account of itself: `node.sh check`                              */

enum deploy_files {
    DEPLOY_FILES_UNKNOWN = 0,
    DEPLOY_FILES_OK,
    DEPLOY_FILES_CHANGED,
    DEPLOY_FILES_MISSING
};

/* A release on the node: held (unpacked in releases/), current or previous
 * for a kernel (profile "" for held ones). */
struct deploy_rel {
    char kernel[KF_KREL_MAX + 1];
    char driver[KF_DRIVER_MAX + 1];
    char sha256[65];
    char profile[DEPLOY_PROFILE_MAX + 1];
};

struct deploy_loaded {
    char name[KF_MODNAME_MAX + 1];
    int loaded;       /* in /sys/module */
    char version[64]; /* "" when loaded without a version file */
};

struct deploy_check {
    int protocol;
    char arch[32];
    char running[KF_KREL_MAX + 1];
    char kernels[DEPLOY_MAX_KERNELS][KF_KREL_MAX + 1]; /* sorted, running included */
    size_t nkernels;
    char os_id[64], os_version[64]; /* "" when unknown */
    long long free_var_kib;         /* -1: unknown */
    long long free_mod_kib;
    struct deploy_rel held[DEPLOY_MAX_RELEASES];
    size_t nheld;
    struct deploy_rel current[DEPLOY_MAX_KERNELS];
    size_t ncurrent;
    struct deploy_rel previous[DEPLOY_MAX_KERNELS];
    size_t nprevious;
    char files_kernel[DEPLOY_MAX_KERNELS][KF_KREL_MAX + 1];
    enum deploy_files files[DEPLOY_MAX_KERNELS];
    size_t nfiles;
    struct deploy_loaded loaded[DEPLOY_MAX_MODULES];
    size_t nloaded;
    char userspace[64]; /* "" unknown or absent */
    int smi_present;
    enum inv_tristate secure_boot;
    int sig_enforce; /* 1, 0, -1 unknown */
    int locked;
    char lock_owner[DEPLOY_OWNER_MAX + 1];
    long long lock_since;
    char missing_tools[256]; /* "" when none */
};

/* Parses check's stdout (which must end in "ok check"). Every value is
 * validated; a line that breaks the rules is KF_EUNTRUSTED with the line
 * shown escaped, a missing required record (node, arch, running) or the
 * last line KF_EPARSE. Unknown tags are ignored (a newer node.sh). */
int deploy_check_parse(const char *out, size_t len, struct deploy_check *c, struct kf_err *err);

const struct deploy_rel *deploy_check_current(const struct deploy_check *c, const char *kernel);
const struct deploy_rel *deploy_check_previous(const struct deploy_check *c, const char *kernel);
int deploy_check_holds(const struct deploy_check *c, const char *driver, const char *kernel,
                       const char *sha256);
enum deploy_files deploy_check_files(const struct deploy_check *c, const char *kernel);
const struct deploy_loaded *deploy_check_loaded(const struct deploy_check *c, const char *name);

/* How an action ended, from its last stdout line ("ok ACTION" or "error
 * WORD MESSAGE") and exit status. ok is 1 only for "ok ACTION" with exit 0.
 * A node that printed neither gets word "protocol" and a message naming
 * the exit status and the last line seen (escaped). */
struct deploy_result {
    int ok;
    int exit_status;
    char word[16];
    char msg[512]; /* display-safe */
};

void deploy_result_parse(const char *out, size_t len, const char *action, int exit_status,
                         struct deploy_result *r);

/* ------------------------------------------------------------------------ */
/* Packages as the deployer sees them                                        */

/* One stored package (a build key's tar.gz), shared by every node that
 * needs it; filled by the coordinator from the catalog and metadata.json. */
struct deploy_pkg {
    char profile[DEPLOY_PROFILE_MAX + 1];
    char driver[KF_DRIVER_MAX + 1];
    char kernel[KF_KREL_MAX + 1];
    char arch[32], os_id[64], os_version[64];
    char sha256[65];
    uint64_t size;         /* bytes of the .tar.gz */
    uint64_t module_bytes; /* of the modules unpacked */
    char path[4096];
    char load[DEPLOY_MAX_MODULES * (KF_MODNAME_MAX + 1)];   /* "a b c": load order */
    char unload[DEPLOY_MAX_MODULES * (KF_MODNAME_MAX + 1)]; /* "c b a" */
    char version_module[KF_MODNAME_MAX + 1]; /* whose /sys/module/M/version is the driver */
    int is_signed;
};

/* ------------------------------------------------------------------------ */
/* What a node had before a rollout: the rollback target                     */

struct deploy_prior_kernel {
    char kernel[KF_KREL_MAX + 1];
    char driver[KF_DRIVER_MAX + 1]; /* "" = no kfleet release */
    char sha256[65];
};

struct deploy_prior {
    int set;
    struct deploy_prior_kernel k[DEPLOY_MAX_KERNELS];
    size_t n;
    int loaded; /* the version module was loaded */
    char loaded_version[64];
};

/* {"kernels": {"K": {"driver": D|null, "sha256": S|null}}, "loaded": V|null}.
 * from_json validates every value (the journal is ours, but a person may
 * have edited it). */
json_t *deploy_prior_to_json(const struct deploy_prior *p);
int deploy_prior_from_json(const json_t *j, struct deploy_prior *p, struct kf_err *err);
const struct deploy_prior_kernel *deploy_prior_kernel(const struct deploy_prior *p,
                                                      const char *kernel);

/* ------------------------------------------------------------------------ */
/* One node                                                                  */

enum deploy_mode {
    DEPLOY_MODE_INSTALL,  /* deploy the run's driver */
    DEPLOY_MODE_ROLLBACK, /* put kernels back (to prior, --to, or previous) */
    DEPLOY_MODE_UNLOCK,   /* release the run's lock only (rollout abort) */
};

/* The states, journaled by name before the step they announce. */
enum deploy_state {
    DS_PENDING,
    DS_CONNECT,
    DS_CHECK,
    DS_TRANSFER,
    DS_INSTALL,
    DS_DRAIN,
    DS_LOAD,
    DS_VERIFY,
    DS_UNDRAIN,
    DS_ROLLBACK,
    DS_ROLLBACK_VERIFY,
    DS_UNLOCK,
    DS_DONE,
};

const char *deploy_state_name(enum deploy_state s);
/* The state of a name, or -1. */
int deploy_state_from_name(const char *name);

enum deploy_outcome {
    DO_NONE,            /* not finished (interrupted or still running) */
    DO_UPDATED,         /* at the target, verified */
    DO_UNCHANGED,       /* was at the target already */
    DO_SKIPPED,         /* refused in preflight for a missing input; nothing changed */
    DO_FAILED,          /* failed; nothing changed or left as it failed */
    DO_ROLLED_BACK,     /* failed, then put back to its prior state and verified */
    DO_ROLLBACK_FAILED, /* failed, and the rollback failed too: look at it */
};

const char *deploy_outcome_name(enum deploy_outcome o);
int deploy_outcome_from_name(const char *name);
/* Outcomes that count against a failure budget. */
int deploy_outcome_is_failure(enum deploy_outcome o);

struct deploy_node;

/* Hooks run before load (drain) and after verify (undrain): a shell command
 * with "{host}" replaced by the inventory name (quoted as one word), run on
 * the control host (sh -c) or on the node (over the node's connection). */
struct deploy_hook {
    const char *command; /* NULL: none */
    int on_node;
    unsigned timeout_ms;
};

/* Settings shared by every node of a run. Strings are borrowed. */
struct deploy_node_opts {
    enum deploy_mode mode;
    const char *profile;
    const char *driver; /* the target (install mode) */
    const char *owner;  /* the lock owner: "rollout-ID@HOST" */
    int reload;         /* load the new modules into the running kernel */
    int auto_rollback;
    int userspace_check; /* refuse a reload when the NVIDIA userspace driver differs */
    int allow_userspace_mismatch;
    int break_lock;
    const char *smi;            /* auto, require, skip (nvidia-smi after a reload) */
    const char *verify_command; /* NULL: none */
    const char *rollback_to;    /* rollback mode: NULL (prior, else previous), "none", or D */
    const char *modules;        /* the profile's module names, "a b c" (check reports them) */
    struct deploy_hook drain, undrain;
    unsigned command_timeout_ms;
    unsigned transfer_timeout_ms;
    size_t out_limit;
};

struct deploy_node_ops {
    /* Called before the side effect of each new state, with a short detail
     * ("install 6.1.0-47-amd64 1.0.1"). A negative return (the journal
     * could not be written) fails the node before it acts. */
    int (*journal)(struct deploy_node *n, enum deploy_state s, const char *detail);
    /* The prior state was learnt (first check of the node in this rollout):
     * store it before anything changes. Negative: fail the node. */
    int (*save_prior)(struct deploy_node *n, const struct deploy_prior *p);
    /* The package for one of the node's kernels: 1 and *pkg set; 0 none
     * stored (reason says what to do); -1 the kernel is not applicable to
     * the profile (reason says why: that kernel is left alone). */
    int (*pick)(struct deploy_node *n, const char *kernel, const char *arch, const char *os_id,
                const char *os_version, const struct deploy_pkg **pkg, char *reason,
                size_t reason_size);
    /* The node wants to send pkg: call deploy_node_transfer_go() when a
     * transfer slot is free and the bytes are loaded, or
     * deploy_node_transfer_fail() (never from inside this call). */
    void (*transfer_wait)(struct deploy_node *n, const struct deploy_pkg *pkg);
    /* The transfer ended (its slot is free again); bytes were sent. */
    void (*transfer_end)(struct deploy_node *n, const struct deploy_pkg *pkg, uint64_t bytes);
    /* The node is done (outcome set), or was cancelled (DO_NONE). Called
     * once; the node may be released from here on. */
    void (*done)(struct deploy_node *n);
};

/* A kernel of the node and what this run does for it. */
struct deploy_kernel {
    char kernel[KF_KREL_MAX + 1];
    const struct deploy_pkg *pkg; /* NULL: not applicable */
    char na_reason[400];
    int running;
    int transfer, install;          /* install mode: steps to do */
    int verify;                     /* verify it at the target (the rollout moves it) */
    int changed;                    /* moved by this run (or by the run it resumes) */
    char target[KF_DRIVER_MAX + 1]; /* rollback: the driver, or "" = none */
    int rollback;                   /* roll this kernel back */
    int rolled_back, verify_rb, reload_rb;
};

struct deploy_node {
    /* set by the caller before deploy_node_start */
    const struct inv_host *h;
    const struct deploy_node_opts *o;
    const struct deploy_node_ops *ops;
    struct ssh_engine *engine;
    uv_loop_t *loop;
    FILE *log;                 /* per-host log, may be NULL; not closed here */
    struct deploy_prior prior; /* set when known (resume, --rollback-stage) */
    void *data;                /* the caller's */

    /* progress and result */
    enum deploy_state state;
    enum deploy_outcome outcome;
    int code;       /* KF_E* of the failure, 0 */
    char phase[24]; /* the state it failed in */
    char msg[640];  /* why, for a person (display-safe) */
    char note[256]; /* a remark on success ("not reloaded: ...") */
    uint64_t bytes_sent;
    uint64_t t0_ns, t1_ns;
    struct deploy_check check;
    int have_check;
    struct deploy_kernel k[DEPLOY_MAX_KERNELS];
    size_t nk;
    int reloaded;       /* this run loaded modules */
    char versions[128]; /* the node's driver after this run, for reports */

    /* internal */
    struct ssh_conn *conn;
    struct ssh_exec x;
    int x_init;
    char *cmd;
    const char *pending_action;
    void (*pending_cb)(struct deploy_node *, const struct deploy_result *);
    size_t cursor; /* the kernel a per-kernel step is at */
    int phase_i;   /* install steps: 0 transfer, 1 install, 2 drain, 3 load, 4 verify, 5 done */
    int rb_phase;  /* rollback steps: 0 drain, 1 rollback, 2 verify, 3 done */
    int rb_done;
    int need_reload;
    int rolling_back, rollback_failed;
    int skipped;
    int after_failure, skip_undrain, undrain_tried;
    int drained, hook_done_drain, hook_done_undrain;
    int hold_lock, unlocked;
    int cancelled;
    const void *xfer_data;
    size_t xfer_len;
    const struct deploy_pkg *xfer_pkg;
    struct kf_proc *hook_proc;
    int hook_which; /* 0 drain, 1 undrain */
    int failed_step;
    unsigned nactions; /* node.sh actions run: a bound against a looping step */
    char vmod[KF_MODNAME_MAX + 1];
    uv_timer_t defer;
    int defer_init;
    int finished;
};

/* Zeroes n; the caller then sets h, o, ops, engine, loop (and log, prior,
 * data). */
void deploy_node_init(struct deploy_node *n);
/* Starts: connect, then the mode's steps. ops->done runs once at the end,
 * always later from the loop (never from inside this call). Returns <0 only
 * for bad arguments or no memory (no callback then). */
int deploy_node_start(struct deploy_node *n);
/* Stops the node now (second Ctrl-C): the connection is closed, no more
 * steps run, the outcome stays DO_NONE (the journal keeps the state it
 * reached: the rollout can be resumed). ops->done still runs, later. */
void deploy_node_cancel(struct deploy_node *n);
/* Releases what the node holds; call from ops->done or after it, then run
 * the loop so libuv can close the handles. */
void deploy_node_release(struct deploy_node *n);

/* Answers to ops->transfer_wait. data stays valid until transfer_end. */
void deploy_node_transfer_go(struct deploy_node *n, const void *data, size_t len);
void deploy_node_transfer_fail(struct deploy_node *n, int code, const char *msg);

#endif
