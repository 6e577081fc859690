/* The coordinator's internal interface: CLI options, the state database,
 * the fan-out scheduler, reports, and one entry point per command. */
#ifndef KF_COORDINATOR_H
#define KF_COORDINATOR_H

#include "common.h"
#include "inventory.h"
#include "ssh.h"
#include "proc.h"
#include "dkms.h"

#include <sqlite3.h>
#include <stdio.h>

/* Exit codes, documented in README.md and kfleet --help. */
enum {
    KF_EXIT_OK = 0,     /* every selected host answered / succeeded */
    KF_EXIT_HOSTS = 1,  /* the run went through, some hosts failed */
    KF_EXIT_USAGE = 2,  /* bad option, inventory, pattern or configuration */
    KF_EXIT_ERROR = 3,  /* kfleet itself failed (state database, memory) */
    KF_EXIT_HALTED = 4, /* a rollout stopped: a stage went over its failure budget */
    KF_EXIT_PAUSED = 5, /* a rollout waits for `kfleet rollout resume` (paused or interrupted) */
    KF_EXIT_LOCKED = 6, /* kfleet run: another run holds the state directory's lock */
};

struct coord_opts {
    const char *command;
    const char *inventory; /* -i; default $KFLEET_INVENTORY or ./inventory.yml */
    const char *limit;     /* -l pattern */
    const char *state_dir; /* --state; default see coord_default_state_dir */
    const char *config;    /* --config; default $KFLEET_CONFIG or ./kfleet.yml */
    const char *driver;    /* --driver VERSION */
    const char *profile;   /* --profile NAME */
    const char *known_hosts;
    const char *ssh_config;
    int accept_new_hostkeys;
    unsigned forks;          /* sessions at once */
    unsigned max_handshakes; /* handshakes in flight */
    unsigned connect_timeout_ms;
    unsigned auth_timeout_ms;
    unsigned command_timeout_ms;
    size_t output_limit; /* bytes of stdout kept per host */
    int json;
    int print_probe;         /* facts: print the remote command and exit */
    const char *source;      /* --source: replaces the profile's source */
    int missing;             /* build --missing */
    const char *kernels[64]; /* build --kernel K ... */
    size_t nkernels;
    int force;           /* build: rebuild what is stored; artifacts rm */
    int retry_failed;    /* build: retry keys whose last build failed */
    const char *builder; /* build, builder image: only this builder */
    const char *dir;     /* keys new --dir */
    const char *key_type;
    const char *cn;
    unsigned days;
    char **args; /* words after the command ("artifacts list") */
    size_t nargs;
    int progress; /* -1 auto (TTY), 0 off, 1 on */
    int verbose;
    int inventory_given, config_given; /* -i / --config (or their env) named them */
    /* deploy, rollback, rollout */
    const char *stages;         /* --stages "1,5,20%,100%" */
    const char *canary;         /* --canary PATTERN: the first stage */
    int shuffle;                /* --shuffle: random order after the canary */
    const char *max_fail;       /* --max-fail N|P% per stage */
    const char *max_fail_total; /* --max-fail-total N|P% */
    const char *pause;          /* --pause DURATION|manual */
    int reload;                 /* --reload: load into the running kernel */
    int auto_rollback;          /* --auto-rollback */
    int rollback_stage;         /* --rollback-stage */
    int allow_userspace_mismatch;
    unsigned transfer_forks; /* --transfer-forks N; 0: config */
    int break_lock;
    const char *junit; /* --junit FILE */
    const char *to;    /* rollback --to VERSION|none */
    /* status, run */
    int refresh;                     /* status --refresh: gather facts first */
    const char *prometheus;          /* status --prometheus FILE */
    const char *stale;               /* status --stale AGE */
    int no_deploy;                   /* run --no-deploy */
    struct coord_run_result *result; /* when set, commands report into it (kfleet run) */
};

/* What facts, build and deploy did, for kfleet run's summary. */
struct coord_run_result {
    size_t facts_hosts, facts_failed;
    size_t built, build_failed, build_stored, build_na;
    long long rollout;
    char rollout_status[16];
    size_t updated, unchanged, skipped, failed;
};

/* Parses argv into o; prints usage or a precise error itself. Returns 0, or
 * KF_EXIT_USAGE, or -1 when --help/--version was handled (exit 0). */
int coord_parse_args(int argc, char **argv, struct coord_opts *o);
void coord_usage(FILE *f, const char *command);

/* --- configuration: kfleet.yml (config.c) ----------------------------------- */

enum coord_profile_type { PROFILE_NVIDIA_RUN, PROFILE_NVIDIA_OPEN, PROFILE_KMOD };

struct coord_make_var {
    char *name;
    char *value;
};

/* A build profile: what to build and how (see contrib/kfleet.yml). */
struct coord_profile {
    char *name;
    enum coord_profile_type type;
    char *source;   /* .run package, source tree/tarball, module dir */
    int open;       /* nvidia-run: kernel-open/ (1) or kernel/ (0) */
    int peermem;    /* nvidia: also nvidia-peermem */
    char **modules; /* load order */
    size_t nmodules;
    char *kernel_min;     /* supported kernels, inclusive, "5.15"; NULL = any */
    char *kernel_max;     /* "6.12" includes every 6.12.x */
    char *headers_debian; /* package pattern with {kernel} */
    char *headers_rhel;
    char **arches; /* NULL = any */
    size_t narches;
    struct coord_make_var *make_vars;
    size_t nmake_vars;
    unsigned stub_threshold; /* bytes; 0: BUILD_STUB_THRESHOLD_DEFAULT */
    int userspace_check;     /* deploy: the node's NVIDIA userspace driver must be
                                the driver before a reload (nvidia profiles) */
};

struct coord_builder {
    char *name;
    char *host; /* "local" or an inventory host */
    unsigned slots;
    unsigned jobs; /* make -j inside a build; 0: the builder's CPU count */
    char *cache;   /* the worker's cache directory on the builder; NULL: default */
};

struct coord_config {
    char *path;
    char *store;     /* artifact store; default STATE/store */
    char *runtime;   /* podman (default) or docker, or a path to either */
    char **run_args; /* extra `run` arguments, e.g. --runtime runc */
    size_t nrun_args;
    struct coord_builder *builders; /* default: one local slot */
    size_t nbuilders;
    unsigned build_timeout; /* seconds per build; default 3600 */
    unsigned build_retries; /* requeues after a builder died; default 2 */
    char *sign_key, *sign_cert, *sign_hash;
    struct coord_profile *profiles;
    size_t nprofiles;
    struct coord_deploy_config {
        char *smi;    /* auto (default), require, skip */
        char *verify; /* a command run on the node after load; NULL: none */
        struct coord_hook_config {
            char *command;    /* "{host}" is the inventory name; NULL: none */
            int on_node;      /* run on the node (on: node) or the control host */
            unsigned timeout; /* seconds; default 600 */
        } drain, undrain;
        unsigned transfer_forks;   /* default 16 */
        unsigned transfer_timeout; /* seconds per package; default 600 */
    } deploy;
};

void coord_config_init(struct coord_config *c);
void coord_config_release(struct coord_config *c);
/* Loads kfleet.yml; a missing file gives the defaults. Errors name the file
 * and the key path. */
int coord_config_load(struct coord_config *c, const char *path, const char *state_dir,
                      struct kf_err *err);
const struct coord_profile *coord_config_profile(const struct coord_config *c, const char *name);
/* The profile a command uses: the one named, else "nvidia", else the only
 * one configured. NULL with err naming the profiles there are. */
const struct coord_profile *coord_config_select_profile(const struct coord_config *c,
                                                        const char *name, struct kf_err *err);

/* --- state database (db.c) ------------------------------------------------ */

struct coord_db {
    sqlite3 *db;
    char *path;
    sqlite3_stmt *st[8]; /* prepared statements, see db.c */
};

/* The state directory kfleet uses when --state is not given:
 * /var/lib/kfleet for root, $XDG_STATE_HOME/kfleet or ~/.local/state/kfleet
 * otherwise. Returns a malloc'ed path. */
char *coord_default_state_dir(void);

/* Opens (creating with mode 0700/0600) DIR/state.db and migrates its schema
 * to the current version. */
int coord_db_open(struct coord_db *d, const char *dir, struct kf_err *err);
void coord_db_close(struct coord_db *d);
int coord_db_schema_version(struct coord_db *d);
/* Runs SQL without parameters (pragmas, BEGIN, COMMIT). */
int coord_db_exec(struct coord_db *d, const char *sql, struct kf_err *err);

/* Records one host's facts attempt in one transaction. On success the facts
 * replace the previous ones; on failure the error is recorded and the last
 * good facts are kept (status and planning still know the node's kernels). */
int coord_db_store_facts(struct coord_db *d, const char *host, long long now,
                         const struct inv_facts *f, int code, const char *phase,
                         const char *message, struct kf_err *err);

/* --- commands --------------------------------------------------------------- */

int cmd_hosts(struct coord_opts *o);
int cmd_facts(struct coord_opts *o);
int cmd_plan(struct coord_opts *o);

/* Shared by commands: loads the inventory and selects hosts by --limit.
 * Prints the error itself and returns KF_EXIT_USAGE on failure. */
int coord_load_selection(const struct coord_opts *o, struct inventory *inv, size_t **idx,
                         size_t *n);

/* --- fan-out (sched.c) -------------------------------------------------------- */

/* Runs start(f, i) for i in 0..total-1 with at most `limit` running at once,
 * in order. Each started item calls coord_fanout_done() exactly once, from
 * start() itself or later from a loop callback. stop = 1 starts no more. */
struct coord_fanout {
    size_t total, next, running, done;
    unsigned limit;
    int stop;
    int in_pump;
    void (*start)(struct coord_fanout *f, size_t i);
    void *data;
};

void coord_fanout_init(struct coord_fanout *f, size_t total, unsigned limit,
                       void (*start)(struct coord_fanout *, size_t), void *data);
void coord_fanout_pump(struct coord_fanout *f);
void coord_fanout_done(struct coord_fanout *f);

/* The number of items of `what` that fit at once under the open-files limit
 * when each holds files_each descriptors. The soft limit is raised as far
 * as they need, within the hard one (a login shell's 1024 is less than a
 * thousand sessions need); past that, fewer than forks, with a warning
 * naming the limit (one past it would fail its host, not the run). */
unsigned coord_fit_forks(unsigned forks, unsigned files_each, const char *what);

/* The files an SSH session holds: its socket twice (libssh's copy and the
 * poll's), and a third while it connects (libuv's, before the dup). */
#define COORD_SESSION_FILES 3

/* --- grouped results (report.c) --------------------------------------------- */

/* Hosts grouped under a key (a kernel, an error reason), printed as one line
 * with the folded names: 1000 identical results are one line. */
struct coord_group {
    char *key;
    char *detail; /* first member's detail, e.g. the full error message */
    char **names;
    size_t n;
};

struct coord_groups {
    struct coord_group *g;
    size_t n;
};

void coord_groups_init(struct coord_groups *gs);
void coord_groups_release(struct coord_groups *gs);
int coord_groups_add(struct coord_groups *gs, const char *key, const char *name,
                     const char *detail);
/* Largest group first, then by key. */
void coord_groups_sort(struct coord_groups *gs);
/* The group's names folded ("node[001-040,042]") into b. */
int coord_group_fold(const struct coord_group *g, struct buf *b);

/* --- progress line (report.c) --------------------------------------------- */

struct coord_progress {
    int enabled;
    const char *label;
    size_t total, done, failed;
    int shown; /* a line is on screen */
    uint64_t last_ms;
    char extra[128]; /* shown after the counts when set */
};

void coord_progress_init(struct coord_progress *p, int mode, const char *label, size_t total);
void coord_progress_update(struct coord_progress *p, size_t done, size_t failed, int force);
void coord_progress_clear(struct coord_progress *p);

/* --- one command on every host (probe.c) -------------------------------------- */

struct coord_probe;

struct coord_probe_host {
    struct coord_probe *p;
    const struct inv_host *h;
    size_t index; /* in p->hosts */
    struct ssh_conn *conn;
    struct ssh_exec x; /* the command and its output, valid in parse and finished */
    char *cmd;
    int code; /* 0: the command ran and parse accepted its output */
    const char *phase;
    char msg[600];
    uint64_t t0_ns, t1_ns;
    unsigned retries; /* handshakes the server refused and we retried */
    int finished;
};

/* Runs one command on every host given, --forks at once, with the SSH
 * engine made from the command line (strict host keys, timeouts). Set o,
 * command, parse and optionally finished, parse_phase and data. */
struct coord_probe {
    struct coord_opts *o;
    /* The command for a host (malloc'ed into *cmd). */
    int (*command)(struct coord_probe *p, struct coord_probe_host *ph, char **cmd);
    /* The judge of a host's output: 0, or a KF_E* code with err saying why. */
    int (*parse)(struct coord_probe *p, struct coord_probe_host *ph, struct kf_err *err);
    /* Each host's end, failed or not, before its output is released. */
    void (*finished)(struct coord_probe *p, struct coord_probe_host *ph);
    const char *parse_phase; /* the phase named for parse failures; "probe" */
    void *data;
    /* results */
    struct coord_probe_host *hosts;
    size_t n, failed;
    uv_loop_t loop;
    struct ssh_engine engine;
    struct coord_fanout fan;
    struct coord_progress progress;
};

/* Runs on inv->hosts[idx[0..n-1]]; 0 when every host had its turn (each
 * host's own result is in p->hosts), KF_ENOMEM otherwise. */
int coord_probe_run(struct coord_probe *p, const struct inventory *inv, const size_t *idx, size_t n,
                    const char *label);
void coord_probe_release(struct coord_probe *p);

/* The SSH engine's settings from the command line. */
void coord_engine_opts(const struct coord_opts *o, struct ssh_engine_opts *eo);
/* 32 random hex digits: the probes' section markers. */
int coord_make_nonce(char out[33]);

/* --- plan (cmd_plan.c) ------------------------------------------------------ */

enum coord_plan_status { PLAN_STORED, PLAN_BUILD, PLAN_NA };

/* One build key of the plan and the nodes that need it. */
struct coord_plan_key {
    char kernel[INV_KREL_MAX + 1];
    char arch[32];
    char os_id[64];
    char os_version[64];
    enum coord_plan_status status;
    char reason[160];
    struct coord_groups hosts;  /* one group "all": every node needing it */
    size_t running, installed;  /* nodes running it / only having it installed */
    struct coord_groups builds; /* running nodes by uname -v */
    char artifact_build[256];   /* stored: the uname -v it was built for */
};

struct coord_plan {
    struct coord_plan_key *keys;
    size_t n;
};

/* The build keys that the selected hosts' stored facts call for, judged
 * against the profile (and, for a DKMS package, its BUILD_EXCLUSIVE_*
 * settings: dkms may be NULL) and the catalog. Hosts with no facts are
 * added to nofacts. Keys are sorted: stored, build, n/a; then by kernel. */
int coord_plan_collect(struct coord_db *db, const struct inventory *inv, const size_t *idx,
                       size_t n, const struct coord_profile *prof, const struct build_dkms *dkms,
                       const char *driver, struct coord_plan *pl, struct coord_groups *nofacts,
                       struct kf_err *err);
void coord_plan_release(struct coord_plan *pl);
/* Whether the profile builds for this kernel and architecture (its arch
 * list and kernels min/max); when not, reason says why. */
int coord_plan_kernel_applies(const struct coord_profile *p, const char *kernel, const char *arch,
                              char *reason, size_t reason_size);

/* --- driver sources (source.c) ---------------------------------------------- */

enum coord_source_kind { SRC_KBUILD, SRC_DKMS, SRC_NVIDIA_RUN, SRC_NVIDIA_OPEN };

struct coord_source {
    enum coord_source_kind kind;
    char *path;
    struct buf data; /* the bytes sent to builders (loaded only when asked) */
    char sha256[65]; /* of data: the source's name on builders */
    int has_dkms;
    struct build_dkms dkms; /* kind SRC_DKMS */
};

const char *coord_source_kind_name(enum coord_source_kind k);
void coord_source_init(struct coord_source *s);
void coord_source_release(struct coord_source *s);
/* Looks at the profile's source (override, when set, replaces the
 * profile's): the kind of build, a dkms.conf's settings, and with load the
 * bytes to send and their sha256. Errors name the profile and the path. */
int coord_source_inspect(const struct coord_profile *p, const char *override, int load,
                         struct coord_source *s, struct kf_err *err);

/* --- artifact store and build records (store.c) ----------------------------- */

/* A build key. */
struct coord_key {
    const char *profile, *driver, *kernel, *arch, *os_id, *os_version;
};

/* The package's directory name: "nvidia-driver-DRIVER-kernel-KERNEL-ARCH"
 * for NVIDIA profiles, "PROFILE-DRIVER-kernel-KERNEL-ARCH" for kmod ones. */
int coord_store_topdir(const struct coord_profile *p, const struct coord_key *k, char *out,
                       size_t outsz, struct kf_err *err);
/* The key's directory in the store: STORE/DRIVER/kernel-KERNEL for the
 * profile named "nvidia", STORE/PROFILE/DRIVER/kernel-KERNEL otherwise.
 * malloc'ed. */
char *coord_store_keydir(const struct coord_config *c, const struct coord_key *k);

struct coord_artifact {
    char profile[64], driver[64], kernel[INV_KREL_MAX + 1], arch[32], os_id[64], os_version[64];
    char path[4096]; /* the .tar.gz */
    char sha256[65];
    long long size, build_id, created_at;
};

/* Records an artifact (replacing the key's previous one). */
int coord_db_artifact_put(struct coord_db *d, const struct coord_key *k, const char *kernel_build,
                          const char *path, const char *sha256, long long size, long long build_id,
                          long long now, struct kf_err *err);
/* 1 and *a filled when the key is in the catalog, 0 when not. */
int coord_db_artifact_get(struct coord_db *d, const struct coord_key *k, struct coord_artifact *a,
                          struct kf_err *err);
/* Every artifact matching the filters (NULL: any), sorted by profile,
 * driver, kernel. *out malloc'ed. */
int coord_db_artifact_list(struct coord_db *d, const char *profile, const char *driver,
                           const char *kernel, struct coord_artifact **out, size_t *n,
                           struct kf_err *err);
int coord_db_artifact_del(struct coord_db *d, const struct coord_artifact *a, struct kf_err *err);

/* A build attempt: begin returns its id; end records the outcome. */
int coord_db_build_begin(struct coord_db *d, const struct coord_key *k, const char *inputs,
                         const char *source_sha256, long long now, long long *id,
                         struct kf_err *err);
int coord_db_build_end(struct coord_db *d, long long id, const char *builder, const char *status,
                       const char *error, const char *log_path, double seconds,
                       const char *artifact_sha256, long long now, struct kf_err *err);
/* The last finished build of the key: 1 with status, inputs hash and log
 * path filled (each buffer 4096 bytes or more), 0 when there is none. */
int coord_db_build_last(struct coord_db *d, const struct coord_key *k, char *status, char *inputs,
                        char *error, char *log_path, struct kf_err *err);

/* The load order ("a b c") in the metadata.json beside a stored package. */
int coord_store_load_order(const char *pkg_path, char *out, size_t n, struct kf_err *err);

/* Writes STORE/index.json (atomically) from the catalog: repository,
 * last_updated, drivers[] {version, profile, supported_kernels[]}. */
int coord_store_write_index(struct coord_db *d, const struct coord_config *c, long long now,
                            struct kf_err *err);

/* --- builder workers (worker.c) --------------------------------------------- */

/* Environment for every worker action: KFLEET_RUNTIME, KFLEET_RUN_ARGS,
 * KFLEET_BUILD_TIMEOUT from the configuration, plus per-build values. */
struct coord_worker_env {
    char *vars[24]; /* "NAME=VALUE" */
    size_t n;
};

int coord_worker_env_add(struct coord_worker_env *e, const char *name, const char *value);
int coord_worker_env_from_config(struct coord_worker_env *e, const struct coord_config *c);
void coord_worker_env_release(struct coord_worker_env *e);

enum coord_worker_state { W_NEW, W_CHECK, W_IMAGE, W_SOURCE, W_READY, W_DEAD };
const char *coord_worker_state_name(enum coord_worker_state s);

struct coord_lane;
typedef void (*coord_lane_cb)(struct coord_lane *l);

/* One build slot of a worker: one action at a time. */
struct coord_lane {
    struct coord_worker *worker;
    unsigned index;
    void *job; /* the build it runs, owned by the caller */
    /* transport */
    struct kf_proc *proc;  /* local */
    struct ssh_conn *conn; /* remote, kept between actions */
    int connected, conn_broken, busy;
    struct ssh_exec x;
    char *command;
    const void *in;
    size_t inlen, out_limit;
    unsigned timeout_ms;
    coord_lane_cb cb;
    /* result of the last action, valid inside cb */
    int status;      /* 0: ran to its end; KF_E* otherwise */
    int exit_status; /* the worker's exit status, -1 when none */
    struct buf *out, *err;
    char message[512]; /* why, when status != 0 */
};

struct coord_worker {
    const struct coord_builder *cfg;
    const struct inv_host *host; /* NULL: the local host */
    uv_loop_t *loop;
    struct ssh_engine *engine;
    const struct coord_worker_env *env;
    enum coord_worker_state state;
    char arch[32];
    char why[512]; /* DEAD: the reason */
    struct coord_lane *lanes;
    unsigned nlanes;
    void *owner; /* the caller's run */
};

/* Runs `worker.sh ACTION ARGS` on the lane with stdin in (kept alive by
 * the caller), stdout kept up to out_limit; cb runs once when it ended.
 * Returns <0 (and no callback) when it could not start. */
int coord_lane_exec(struct coord_lane *l, const char *const *args, size_t nargs, const void *in,
                    size_t inlen, size_t out_limit, unsigned timeout_ms, coord_lane_cb cb);
/* Stops the lane's running action (its callback still runs, or, for a
 * remote lane, the connection is closed and no callback runs). */
void coord_lane_kill(struct coord_lane *l);
/* Closes the lane's process or connection; no callback runs after. */
void coord_lane_close(struct coord_lane *l);

/* --- rollouts: stages and failure budgets (rollout.c) ----------------------- */

/* One entry of --stages: a count ("5") or a percentage ("20%"). */
struct coord_stage_spec {
    unsigned value;
    int percent;
};

#define COORD_MAX_STAGE_SPECS 32

/* Parses "1,5,20%,100%": counts >= 1, percentages 1..100. Errors name the
 * entry. */
int coord_stages_parse(const char *s, struct coord_stage_spec *out, size_t *n, struct kf_err *err);
/* Splits total nodes into stage sizes, Ansible's `serial` way: each entry
 * in turn (a percentage of total, rounded down, at least 1), the last one
 * repeating until every node has a stage, the last stage cut to what is
 * left. sizes gets at most max entries; returns the number of stages, or
 * KF_EINVAL when max is too small. total 0 gives 0 stages. */
int coord_stages_split(const struct coord_stage_spec *specs, size_t nspecs, size_t total,
                       size_t *sizes, size_t max);

/* A failure budget: "--max-fail 2" (count) or "5%" (of the stage or the
 * rollout). Unset means no limit (total) or 0 (per stage). */
struct coord_budget {
    int set;
    unsigned value;
    int percent;
};

int coord_budget_parse(const char *s, struct coord_budget *b, struct kf_err *err);
/* The number of failures allowed out of n: a count as it is, a percentage
 * of n rounded down (so 5% of a 1-node canary allows none). */
size_t coord_budget_allowed(const struct coord_budget *b, size_t n);
/* "2", "5%" or "unlimited". */
const char *coord_budget_str(const struct coord_budget *b, char *out, size_t outsz);

/* --- the rollout journal (journal.c) ------------------------------------------ */

struct coord_rollout {
    long long id;
    char kind[16]; /* deploy, rollback */
    char profile[65];
    char driver[32]; /* "" for a rollback */
    char status[16]; /* running, paused, halted, interrupted, done, aborted */
    int stage, nstages;
    char owner[129];
    char *options; /* JSON text (malloc'ed) */
    char reason[512];
    long long pid;
    long long created_at, updated_at, finished_at;
};

struct coord_rollout_node {
    char host[256];
    int stage, position;
    char state[24];
    char outcome[24]; /* "" while it runs */
    char *prior;      /* JSON text or NULL (malloc'ed) */
    char detail[300];
    char error_code[24], error_phase[24];
    char error[640];
    char note[256];
    char versions[128];
    int attempts;
    long long bytes;
    double seconds;
    long long updated_at;
};

void coord_rollout_release(struct coord_rollout *r);
void coord_rollout_nodes_free(struct coord_rollout_node *v, size_t n);

/* Creates a rollout and its nodes (state pending, the stage and position
 * given) in one transaction; *id is its number. */
int coord_journal_create(struct coord_db *d, struct coord_rollout *r, const char *const *hosts,
                         const int *stages, size_t n, long long now, struct kf_err *err);
/* 1 and *r filled, 0 when there is no such rollout. */
int coord_journal_get(struct coord_db *d, long long id, struct coord_rollout *r,
                      struct kf_err *err);
/* The newest rollouts first (at most limit). */
int coord_journal_list(struct coord_db *d, size_t limit, struct coord_rollout **out, size_t *n,
                       struct kf_err *err);
/* Status, current stage, reason (NULL keeps it), pid; records an event. */
int coord_journal_set_status(struct coord_db *d, long long id, const char *status, int stage,
                             const char *reason, long long pid, long long now, struct kf_err *err);
/* A node's new state (and an event), in one transaction. attempt_inc adds
 * one to its attempts (the node is started). */
int coord_journal_node_state(struct coord_db *d, long long id, const char *host, const char *state,
                             const char *detail, int attempt_inc, long long now,
                             struct kf_err *err);
int coord_journal_node_prior(struct coord_db *d, long long id, const char *host,
                             const char *prior_json, struct kf_err *err);
/* The node's end: outcome and, on failure, the error. */
int coord_journal_node_end(struct coord_db *d, long long id, const char *host, const char *outcome,
                           const char *error_code, const char *phase, const char *error,
                           const char *note, const char *versions, long long bytes, double seconds,
                           long long now, struct kf_err *err);
/* For the nodes of r not started yet: the version their running kernel
 * was left at by the newest earlier rollout of the same profile, when
 * there is one (what "which node is at which version" needs). */
void coord_journal_known_versions(struct coord_db *d, const struct coord_rollout *r,
                                  struct coord_rollout_node *v, size_t n);
/* Every node of the rollout, by stage then position. */
int coord_journal_nodes(struct coord_db *d, long long id, struct coord_rollout_node **out,
                        size_t *n, struct kf_err *err);
/* --- the rollout engine (cmd_deploy.c) ---------------------------------------- */

/* Continues rollout id from its journal (kfleet rollout resume); with
 * unlock, instead releases the node locks of its unfinished nodes and marks
 * it aborted (kfleet rollout abort). Returns an exit status. */
int coord_rollout_resume(struct coord_opts *o, long long id, int unlock);
/* True when the rollout is marked running and its kfleet process lives. */
int coord_rollout_alive(const struct coord_rollout *r);

/* --- rollout reports (deploy_report.c) ---------------------------------------- */

struct coord_rollout_counts {
    size_t nodes, pending, running, updated, unchanged, skipped, failed, rolled_back,
        rollback_failed;
};

/* Counts over every node (stage -1) or one stage (0-based). */
void coord_rollout_count(const struct coord_rollout_node *v, size_t n, int stage,
                         struct coord_rollout_counts *c);
/* Nodes grouped by result and error, then by the version their running
 * kernel is at, with folded host ranges. */
void coord_rollout_print(const struct coord_rollout *r, const struct coord_rollout_node *v,
                         size_t n, int verbose, FILE *f);
/* The rollout as one JSON document (new reference); see README "deploy --json". */
json_t *coord_rollout_json(const struct coord_rollout *r, const struct coord_rollout_node *v,
                           size_t n);
/* JUnit XML: a testsuite per stage, a testcase per node; written atomically. */
int coord_rollout_junit(const struct coord_rollout *r, const struct coord_rollout_node *v, size_t n,
                        const char *path, struct kf_err *err);

/* builder/worker.sh, embedded at build time. */
extern const char kf_worker_script[];

int cmd_build(struct coord_opts *o);
int cmd_builder(struct coord_opts *o);
int cmd_deploy(struct coord_opts *o);
int cmd_rollback(struct coord_opts *o);
int cmd_rollout(struct coord_opts *o);
int cmd_doctor(struct coord_opts *o);
int cmd_status(struct coord_opts *o);
int cmd_run(struct coord_opts *o);
int cmd_artifacts(struct coord_opts *o);
int cmd_keys(struct coord_opts *o);

#endif
