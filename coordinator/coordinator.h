/* The coordinator's internal interface: CLI options, the state database,
 * the fan-out scheduler, reports, and one entry point per command. */
#ifndef KF_COORDINATOR_H
#define KF_COORDINATOR_H

#include "common.h"
#include "inventory.h"
#include "ssh.h"

#include <sqlite3.h>
#include <stdio.h>

/* Exit codes, documented in README.md and kfleet --help. */
enum {
    KF_EXIT_OK = 0,    /* every selected host answered / succeeded */
    KF_EXIT_HOSTS = 1, /* the run went through, some hosts failed */
    KF_EXIT_USAGE = 2, /* bad option, inventory, pattern or configuration */
    KF_EXIT_ERROR = 3, /* kfleet itself failed (state database, memory) */
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
    int print_probe; /* facts: print the remote command and exit */
    int progress;    /* -1 auto (TTY), 0 off, 1 on */
    int verbose;
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
};

struct coord_builder {
    char *name;
    char *host; /* "local" or an inventory host */
    unsigned slots;
};

struct coord_config {
    char *path;
    char *store;     /* artifact store; default STATE/store */
    char *runtime;   /* podman (default) or docker, or a path to either */
    char **run_args; /* extra `run` arguments, e.g. --runtime runc */
    size_t nrun_args;
    struct coord_builder *builders; /* default: one local slot */
    size_t nbuilders;
    char *sign_key, *sign_cert, *sign_hash;
    struct coord_profile *profiles;
    size_t nprofiles;
};

void coord_config_init(struct coord_config *c);
void coord_config_release(struct coord_config *c);
/* Loads kfleet.yml; a missing file gives the defaults. Errors name the file
 * and the key path. */
int coord_config_load(struct coord_config *c, const char *path, const char *state_dir,
                      struct kf_err *err);
const struct coord_profile *coord_config_profile(const struct coord_config *c, const char *name);

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
};

void coord_progress_init(struct coord_progress *p, int mode, const char *label, size_t total);
void coord_progress_update(struct coord_progress *p, size_t done, size_t failed, int force);
void coord_progress_clear(struct coord_progress *p);

#endif
