/* The asynchronous SSH transport: many libssh 0.10 sessions driven by one
 * libuv loop (see shared/docs/libssh-on-libuv.md for the facts it follows).
 *
 * An engine holds what sessions share: the loop, loaded private keys, the
 * known_hosts policy, and the cap on handshakes in flight. A connection
 * (struct ssh_conn) is one host: resolve, TCP connect (every address tried),
 * SSH handshake, strict host key check, public-key auth; then any number of
 * commands, one at a time, each with bounded stdout/stderr buffers, optional
 * stdin, and a timeout. Every phase has a deadline; a failure fails the one
 * connection, never the loop. All callbacks run on the loop thread. */
#ifndef KF_SSH_H
#define KF_SSH_H

#include "buf.h"
#include "error.h"

#include <libssh/libssh.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct ssh_conn;

struct ssh_engine_opts {
    const char *known_hosts;     /* NULL: ~/.ssh/known_hosts */
    const char *ssh_config;      /* NULL: ~/.ssh/config when it exists; "none": no file */
    int accept_new_hostkeys;     /* record unknown keys (trust on first use) */
    unsigned max_handshakes;     /* handshakes in flight; 0: 32 */
    unsigned connect_timeout_ms; /* name lookup + TCP connect; 0: 10 s */
    unsigned auth_timeout_ms;    /* SSH handshake + host key + auth; 0: 20 s */
    unsigned handshake_retries;  /* handshakes dropped by the server (MaxStartups)
                                    retried with backoff; 0: 5 */
};

struct ssh_key_entry {
    char *path;
    ssh_key key; /* NULL if it failed to load; error kept in msg */
    char msg[256];
};

struct ssh_engine {
    uv_loop_t *loop;
    struct ssh_engine_opts opts; /* strings owned */
    char *home;
    struct ssh_key_entry *keys; /* loaded once, shared by all sessions */
    size_t nkeys;
    unsigned handshakes;                    /* in flight */
    struct ssh_conn *wait_head, *wait_tail; /* waiting for a handshake slot */
    /* Counters for reports and tests. */
    uint64_t handshake_retries;
    unsigned max_handshakes_seen;
};

/* Fills defaults for zero fields and copies the strings. */
int ssh_engine_init(struct ssh_engine *e, uv_loop_t *loop, const struct ssh_engine_opts *o);
/* Call after every connection is closed and the loop has run their closes. */
void ssh_engine_release(struct ssh_engine *e);

/* Where to connect, with Ansible's meaning: dest is ansible_host or the
 * inventory name; ~/.ssh/config's Host blocks match dest and may give
 * HostName, Port, User and IdentityFile; port, user and key_file given here
 * win over the config. */
struct ssh_target {
    const char *name;     /* for messages (inventory name) */
    const char *dest;     /* host to reach; NULL: name */
    int port;             /* 0: config, else 22 */
    const char *user;     /* NULL: config, else the local user */
    const char *key_file; /* NULL: config IdentityFile, else default keys */
};

typedef void (*ssh_conn_cb)(struct ssh_conn *c, int status, void *arg);

/* Starts connecting. on_ready runs once, with 0 when the session is
 * authenticated and ready for ssh_conn_exec(), or a KF_E* code (see
 * ssh_conn_error() for the message). *out is valid until ssh_conn_close().
 * Returns an error only for bad arguments or no memory (no callback then). */
int ssh_conn_start(struct ssh_engine *e, const struct ssh_target *t, ssh_conn_cb on_ready,
                   void *arg, struct ssh_conn **out);

/* One remote command. Fill the inputs, call ssh_conn_exec(); the outputs are
 * valid in on_done and until the struct is released with ssh_exec_release(). */
struct ssh_exec {
    /* inputs */
    const char *command;
    const void *stdin_data; /* sent, then EOF; not copied: keep it alive */
    size_t stdin_len;
    size_t out_limit;    /* bytes kept of stdout; 0: 1 MiB. More cuts the command */
    size_t err_limit;    /* bytes kept of stderr; 0: 64 KiB. More is dropped */
    unsigned timeout_ms; /* 0: 60 s */
    /* outputs */
    struct buf out;
    struct buf err;
    size_t stdin_sent;    /* bytes of stdin_data sent so far (progress) */
    int exit_status;      /* -1 when none was sent */
    char exit_signal[32]; /* "" or the signal name ("KILL") */
};

void ssh_exec_init(struct ssh_exec *x);
void ssh_exec_release(struct ssh_exec *x);

/* Runs x->command on a ready connection. on_done gets 0 when the command ran
 * to its end (look at exit_status: any value is a success here), KF_ETRUNC
 * when stdout passed out_limit (the command was stopped and its output cut),
 * KF_ETIMEDOUT, or a transport error; after an error other than KF_ETRUNC
 * the connection can run no more commands. */
int ssh_conn_exec(struct ssh_conn *c, struct ssh_exec *x, ssh_conn_cb on_done, void *arg);

/* Tears the connection down (politely when it is healthy). No callback runs
 * after this; memory is released once libuv has closed the handles. Safe to
 * call from inside a callback of the same connection. */
void ssh_conn_close(struct ssh_conn *c);

/* What went wrong, for a person: names the phase and the cause. */
const char *ssh_conn_error(const struct ssh_conn *c);
/* The phase a failure happened in: "connect", "handshake", "hostkey",
 * "auth", "command". */
const char *ssh_conn_phase(const struct ssh_conn *c);
/* Handshake attempts that were refused by the server and retried. */
unsigned ssh_conn_retries(const struct ssh_conn *c);

#endif
