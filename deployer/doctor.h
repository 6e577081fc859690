/* kfleet doctor: a read-only diagnosis of a node.
 *
 * deploy_doctor_command() builds ONE remote command that looks at
 * everything the diagnosis needs (module files on disk, the kernel log,
 * PCI drivers, nouveau, Secure Boot, automatic upgrades) and then runs the
 * facts probe of inventory/ (inv_facts_command), so one SSH command gives
 * both; deploy_doctor_analyze() turns its output into findings. The
 * analysis is a pure function: no I/O, and everything the node printed is
 * untrusted (validated with common/valid.h before use, shown through
 * kf_escape). Synchronous; the coordinator runs the command over SSH. */
#ifndef KF_DOCTOR_H
#define KF_DOCTOR_H

#include "common.h"
#include "inventory.h"

#include <jansson.h>
#include <stddef.h>

enum deploy_doctor_severity {
    DEPLOY_DOCTOR_CRITICAL = 0, /* the GPU does not work, or will not after the next reboot */
    DEPLOY_DOCTOR_WARNING,      /* works now, but something will break it */
    DEPLOY_DOCTOR_INFO,         /* worth knowing; changes nothing by itself */
};
#define DEPLOY_DOCTOR_NSEVERITIES 3

/* "critical", "warning", "info". */
const char *deploy_doctor_severity_name(enum deploy_doctor_severity s);

/* One finding. code is a stable name scripts can match on (a static
 * string, see the table in doctor.c: "driver-library-mismatch", ...); a
 * report holds at most one finding per code. title, evidence and fix are
 * malloc'ed, one line each, printable ASCII only (node text escaped):
 * title says what is wrong, evidence the exact line or value seen on the
 * node, fix what to do about it. */
struct deploy_doctor_finding {
    enum deploy_doctor_severity severity;
    const char *code;
    char *title;
    char *evidence;
    char *fix;
};

struct deploy_doctor_report {
    struct inv_facts facts; /* the node's facts (the probe includes the facts probe) */
    struct deploy_doctor_finding *findings;
    size_t n;
    size_t count[DEPLOY_DOCTOR_NSEVERITIES]; /* findings per severity */
};

void deploy_doctor_report_init(struct deploy_doctor_report *r);
void deploy_doctor_report_release(struct deploy_doctor_report *r);

/* A package the artifact store holds (the coordinator reads its catalog). */
struct deploy_doctor_package {
    const char *driver;
    const char *kernel;
    const char *arch; /* NULL: any */
};

/* What the analysis knows beside the node's output. All optional. */
struct deploy_doctor_ctx {
    const char *driver;  /* the driver the node should run (--driver); NULL: unknown */
    const char *module;  /* the profile's first module; NULL: "nvidia" */
    const char *profile; /* named in the fixes' kfleet commands; NULL: "nvidia" */
    const struct deploy_doctor_package *packages;
    size_t npackages;
    int store_checked; /* 0: the store was not looked at (say so rather than "not built") */
};

/* The one remote command: a POSIX sh script that needs nothing beyond sh,
 * uname and cat (every other tool is optional and its absence is part of
 * the answer), reads no stdin, changes nothing on the node, prints
 * sections marked "@@kf:<nonce>:<name>" and ends with the facts probe's
 * sections and its end marker. nonce: [0-9a-f]{8,32}; module: a module
 * name (kf_modname_valid), NULL for "nvidia". With become the whole
 * command runs under "sudo -n -u USER" (root when NULL). *cmd is
 * malloc'ed. */
int deploy_doctor_command(const char *nonce, int become, const char *become_user,
                          const char *module, char **cmd);

/* Parses the command's stdout and fills r (which must be initialised) with
 * the node's facts and findings. An output the facts parser rejects (cut
 * short, a hostile kernel release...) or that lacks a doctor section is an
 * error (KF_EPARSE / KF_EUNTRUSTED, display-safe message) and r is left
 * empty; anything odd inside a doctor section is skipped, never trusted.
 * Input of any size and shape is safe (fuzzed). */
int deploy_doctor_analyze(const char *out, size_t len, const char *nonce,
                          const struct deploy_doctor_ctx *ctx, struct deploy_doctor_report *r,
                          struct kf_err *err);

/* The finding with this code, or NULL. */
const struct deploy_doctor_finding *deploy_doctor_find(const struct deploy_doctor_report *r,
                                                       const char *code);

/* The findings as a JSON array of {severity, code, title, evidence, fix},
 * most severe first (new reference; NULL when out of memory). */
json_t *deploy_doctor_findings_json(const struct deploy_doctor_report *r);

#endif
