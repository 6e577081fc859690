/* Local child processes on the libuv loop, shaped like ssh_exec: a command
 * gets a stdin buffer, its stdout and stderr are kept up to limits, it has a
 * deadline, and one callback reports how it ended.
 *
 * The child runs in its own process group (a new session), so stopping it
 * (timeout, kf_proc_kill, stdout over its limit) reaches everything it
 * started: SIGTERM to the group, then SIGKILL 5 s later if it is still
 * there. A child that exits while a grandchild keeps its pipes open is
 * reported 5 s after its exit with what was read by then. */
#ifndef KF_PROC_H
#define KF_PROC_H

#include "buf.h"
#include "error.h"

#include <stddef.h>
#include <uv.h>

struct kf_proc;

/* status: 0 when the process ran to its exit (any exit status: look at
 * kf_proc_exit_status), KF_ETRUNC when stdout passed out_limit (the process
 * was stopped), KF_ETIMEDOUT, or KF_ECANCELED after kf_proc_kill(). */
typedef void (*kf_proc_cb)(struct kf_proc *p, int status, void *arg);

struct kf_proc_opts {
    char *const *argv;      /* argv[0] is looked up in PATH */
    const void *stdin_data; /* written, then EOF; not copied: keep it alive */
    size_t stdin_len;
    size_t out_limit;    /* bytes kept of stdout; 0: 1 MiB. More stops the process */
    size_t err_limit;    /* bytes kept of stderr; 0: 64 KiB. More is dropped */
    unsigned timeout_ms; /* 0: none */
};

/* Starts the process. On success the callback runs exactly once, later,
 * from the loop. Errors (the program cannot be started, no memory) are
 * returned here and no callback runs. */
int kf_proc_start(uv_loop_t *loop, const struct kf_proc_opts *o, kf_proc_cb cb, void *arg,
                  struct kf_proc **out, struct kf_err *err);

/* Stops the process group (SIGTERM, then SIGKILL after 5 s); the callback
 * then reports KF_ECANCELED. Does nothing once the callback has run. */
void kf_proc_kill(struct kf_proc *p);

/* Outputs, valid from the callback until kf_proc_free(). */
struct buf *kf_proc_stdout(struct kf_proc *p);
struct buf *kf_proc_stderr(struct kf_proc *p);
int kf_proc_exit_status(const struct kf_proc *p); /* -1 when killed by a signal */
int kf_proc_term_signal(const struct kf_proc *p); /* 0 or the signal number */
int kf_proc_pid(const struct kf_proc *p);

/* Releases the process record; call from or after the callback. Memory
 * goes once libuv has closed the handles (run the loop). */
void kf_proc_free(struct kf_proc *p);

#endif
