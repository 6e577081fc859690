/* The asynchronous SSH transport: libssh 0.10 sessions on one libuv loop.
 *
 * One connection is an explicit state machine (enum conn_state), advanced by
 * conn_step() after every poll event and timer until it stops making
 * progress: libssh may hold decrypted data that produces no new fd event
 * (the "drain rule" of docs/libssh-on-libuv.md).
 *
 * Socket ownership. libuv makes the TCP connection (uv_tcp_t, every address
 * tried in turn). Once connected, the socket is dup'ed twice: libssh gets one
 * copy through SSH_OPTIONS_FD, our uv_poll_t watches the other, and the
 * uv_tcp_t is closed. libssh closes its copy on some error paths and not on
 * others; we never close a number libssh may have closed (see io_teardown),
 * and our own copy keeps the socket alive for the poll until uv_close.
 *
 * Everything that belongs to one TCP attempt (the uv handles, the two fds,
 * the ssh_session and its channel) lives in a struct attempt. A handshake
 * refused by the server (MaxStartups drops connections before the banner)
 * discards the attempt and starts a new one after a backoff; a discarded
 * attempt frees itself when libuv has closed its handles, so the connection
 * never waits on it. */
#include "ssh.h"

#include "log.h"
#include "text.h"

#include <errno.h>
#include <fcntl.h>
#include <libssh/callbacks.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (32 * 1024)

/* After "too many open files": what the operator can do about it. */
#define FILES_HINT " (kfleet's open-files limit, ulimit -n: lower --forks or raise the limit)"

enum conn_state {
    CS_NEW,       /* settings resolved; start deferred to the loop */
    CS_WAIT_SLOT, /* queued for a handshake slot */
    CS_RESOLVE,   /* uv_getaddrinfo in flight */
    CS_TCP,       /* uv_tcp_connect in flight */
    CS_HANDSHAKE, /* ssh_connect returning SSH_AGAIN */
    CS_AUTH,      /* ssh_userauth_publickey returning SSH_AUTH_AGAIN */
    CS_BACKOFF,   /* waiting to retry a refused handshake */
    CS_READY,     /* authenticated, idle (poll stopped) */
    CS_CHAN_OPEN, /* ssh_channel_open_session */
    CS_EXEC_REQ,  /* ssh_channel_request_exec */
    CS_RUNNING,   /* streaming stdin/stdout/stderr */
    CS_FAILED,    /* terminal: waiting for ssh_conn_close */
};

static const char *const state_names[] = {
    "new",     "wait-slot", "resolve",   "tcp",      "handshake", "auth",
    "backoff", "ready",     "chan-open", "exec-req", "running",   "failed",
};

struct attempt {
    struct ssh_conn *c; /* NULL once detached from its connection */
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_poll_t poll;
    int open_handles; /* handles not yet closed + requests in flight */
    int tcp_live;     /* tcp handle initialised and not closed */
    int poll_live;
    int pollfd; /* ours, closed after the poll handle is closed */
    int libfd;  /* libssh's copy */
    ssh_session s;
    ssh_channel ch;
    struct ssh_channel_callbacks_struct chcb;
};

struct gai_req {
    uv_getaddrinfo_t req;
    struct ssh_conn *c; /* NULL once the connection gave up on it */
};

struct ssh_conn {
    struct ssh_engine *e;
    enum conn_state state;
    int closing;
    int has_slot;
    int ready_reported;
    struct ssh_conn *wait_next;

    /* Settings, resolved from the target and ssh config at start. */
    char *name;
    char *host;
    unsigned port;
    char *user;
    char **keys;
    size_t nkeys;
    size_t key_idx;
    char *settings_error;

    /* Name resolution and TCP attempts. */
    struct gai_req *gai;
    struct addrinfo *ai;
    struct addrinfo *ai_next;
    char last_connect_error[160];
    struct attempt *a;
    unsigned retries;

    uv_timer_t timer; /* phase deadline, start kick, backoff */

    ssh_conn_cb cb;
    void *cb_arg;
    struct ssh_exec *x;
    size_t in_sent;
    int eof_sent;
    int out_eof;
    int err_eof;

    unsigned poll_errors; /* consecutive poll errors */
    struct kf_err err;
    const char *phase;
};

static void conn_step(struct ssh_conn *c);
static void conn_fail(struct ssh_conn *c, int code, const char *phase, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void slot_acquire(struct ssh_conn *c);
static void attempt_start(struct ssh_conn *c);

/* ------------------------------------------------------------------------ */
/* Engine                                                                    */

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);

    if (p != NULL)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* "~/x" and "%d/x" (libssh's spelling of the home directory) to a path. */
static char *expand_home(const char *home, const char *p)
{
    if (strncmp(p, "~/", 2) == 0 || strncmp(p, "%d/", 3) == 0)
        return path_join(home, strchr(p, '/') + 1);
    return strdup(p);
}

int ssh_engine_init(struct ssh_engine *e, uv_loop_t *loop, const struct ssh_engine_opts *o)
{
    const char *home = getenv("HOME");
    struct passwd *pw;
    char *cfg = NULL;

    memset(e, 0, sizeof(*e));
    e->loop = loop;
    if (home == NULL || home[0] == '\0') {
        pw = getpwuid(getuid());
        home = pw ? pw->pw_dir : "/";
    }
    e->home = strdup(home);
    if (e->home == NULL)
        goto nomem;
    e->opts = *o;
    e->opts.known_hosts =
        o->known_hosts ? strdup(o->known_hosts) : path_join(e->home, ".ssh/known_hosts");
    if (e->opts.known_hosts == NULL)
        goto nomem;
    if (o->ssh_config == NULL) {
        cfg = path_join(e->home, ".ssh/config");
        if (cfg == NULL)
            goto nomem;
        if (access(cfg, F_OK) != 0) {
            free(cfg);
            cfg = NULL;
        }
    } else if (strcmp(o->ssh_config, "none") != 0) {
        cfg = strdup(o->ssh_config);
        if (cfg == NULL)
            goto nomem;
    }
    e->opts.ssh_config = cfg;
    if (e->opts.max_handshakes == 0)
        e->opts.max_handshakes = 32;
    if (e->opts.connect_timeout_ms == 0)
        e->opts.connect_timeout_ms = 10000;
    if (e->opts.auth_timeout_ms == 0)
        e->opts.auth_timeout_ms = 20000;
    if (e->opts.handshake_retries == 0)
        e->opts.handshake_retries = 5;
    return 0;
nomem:
    ssh_engine_release(e);
    return KF_ENOMEM;
}

void ssh_engine_release(struct ssh_engine *e)
{
    size_t i;

    if (e == NULL)
        return;
    for (i = 0; i < e->nkeys; i++) {
        free(e->keys[i].path);
        ssh_key_free(e->keys[i].key);
    }
    free(e->keys);
    free((char *)e->opts.known_hosts);
    free((char *)e->opts.ssh_config);
    free(e->home);
    memset(e, 0, sizeof(*e));
}

/* Loads a private key once for all sessions (a small blocking file read,
 * done the first time a key is needed). Returns the entry, or NULL on OOM. */
static const struct ssh_key_entry *engine_key(struct ssh_engine *e, const char *path)
{
    struct ssh_key_entry *k, *grown;
    size_t i;

    for (i = 0; i < e->nkeys; i++)
        if (strcmp(e->keys[i].path, path) == 0)
            return &e->keys[i];
    grown = realloc(e->keys, (e->nkeys + 1) * sizeof(*e->keys));
    if (grown == NULL)
        return NULL;
    e->keys = grown;
    k = &e->keys[e->nkeys];
    memset(k, 0, sizeof(*k));
    k->path = strdup(path);
    if (k->path == NULL)
        return NULL;
    e->nkeys++;
    if (access(path, R_OK) != 0) {
        snprintf(k->msg, sizeof(k->msg), "cannot read private key %s: %s", path, strerror(errno));
    } else if (ssh_pki_import_privkey_file(path, NULL, NULL, NULL, &k->key) != SSH_OK) {
        k->key = NULL;
        snprintf(k->msg, sizeof(k->msg),
                 "cannot load private key %s: not a private key, or protected by a passphrase "
                 "(kfleet never prompts; use an unencrypted deploy key)",
                 path);
    }
    return k;
}

/* ------------------------------------------------------------------------ */
/* Settings: target + ssh config                                             */

static int strv_push(char ***v, size_t *n, char *s)
{
    char **grown;

    if (s == NULL)
        return KF_ENOMEM;
    grown = realloc(*v, (*n + 1) * sizeof(**v));
    if (grown == NULL) {
        free(s);
        return KF_ENOMEM;
    }
    *v = grown;
    (*v)[(*n)++] = s;
    return 0;
}

/* Resolves where and as whom to connect, the way OpenSSH would for
 * `ssh -p PORT -l USER -i KEY DEST`: the config's Host blocks match DEST,
 * and what the inventory gives wins. A configuration kfleet cannot honour
 * (ProxyJump/ProxyCommand) is refused here, with the reason. */
static int conn_settings(struct ssh_conn *c, const struct ssh_target *t)
{
    struct ssh_engine *e = c->e;
    const char *dest = t->dest ? t->dest : t->name;
    char *v = NULL;
    unsigned port = 0;
    int off = 0, rc = KF_ENOMEM;
    ssh_session tmp = ssh_new();
    static const char *const defaults[] = {".ssh/id_ed25519", ".ssh/id_ecdsa", ".ssh/id_rsa"};
    char msg[512];

    msg[0] = '\0';
    if (tmp == NULL)
        return KF_ENOMEM;
    ssh_options_set(tmp, SSH_OPTIONS_PROCESS_CONFIG, &off);
    if (ssh_options_set(tmp, SSH_OPTIONS_HOST, dest) < 0) {
        snprintf(msg, sizeof(msg), "bad host name '%s'", dest);
        rc = KF_ECONFIG;
        goto out;
    }
    if (e->opts.ssh_config != NULL && ssh_options_parse_config(tmp, e->opts.ssh_config) < 0) {
        snprintf(msg, sizeof(msg), "cannot parse ssh config %s", e->opts.ssh_config);
        rc = KF_ECONFIG;
        goto out;
    }
    if (ssh_options_get(tmp, SSH_OPTIONS_PROXYCOMMAND, &v) == SSH_OK) {
        snprintf(msg, sizeof(msg),
                 "ssh config %s sets ProxyJump/ProxyCommand for '%s'; kfleet does not support "
                 "jump hosts yet: reach the node directly",
                 e->opts.ssh_config, dest);
        ssh_string_free_char(v);
        rc = KF_EUNSUPPORTED;
        goto out;
    }
    if (ssh_options_get(tmp, SSH_OPTIONS_HOST, &v) == SSH_OK) {
        c->host = strdup(v);
        ssh_string_free_char(v);
    } else {
        c->host = strdup(dest);
    }
    if (c->host == NULL)
        goto out;
    if (ssh_options_get_port(tmp, &port) < 0 || port == 0)
        port = 22;
    c->port = t->port > 0 ? (unsigned)t->port : port;

    if (t->user != NULL) {
        c->user = strdup(t->user);
    } else if (ssh_options_get(tmp, SSH_OPTIONS_USER, &v) == SSH_OK) {
        c->user = strdup(v);
        ssh_string_free_char(v);
    } else {
        struct passwd *pw = getpwuid(getuid());
        c->user = strdup(pw ? pw->pw_name : "root");
    }
    if (c->user == NULL)
        goto out;

    /* libssh keeps IdentityFile entries from the config in front of its
     * built-in defaults, which it spells "%d/id_...": the first entry tells
     * whether the config named a key. */
    v = NULL;
    if (t->key_file == NULL && ssh_options_get(tmp, SSH_OPTIONS_IDENTITY, &v) == SSH_OK &&
        strncmp(v, "%d/", 3) == 0) {
        ssh_string_free_char(v);
        v = NULL;
    }
    if (t->key_file != NULL) {
        if (strv_push(&c->keys, &c->nkeys, expand_home(e->home, t->key_file)) < 0)
            goto out;
    } else if (v != NULL) {
        rc = strv_push(&c->keys, &c->nkeys, expand_home(e->home, v));
        ssh_string_free_char(v);
        if (rc < 0)
            goto out;
    } else {
        size_t i;
        for (i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
            char *p = path_join(e->home, defaults[i]);
            if (p != NULL && access(p, F_OK) != 0) {
                free(p);
                continue;
            }
            if (strv_push(&c->keys, &c->nkeys, p) < 0)
                goto out;
        }
        if (c->nkeys == 0) {
            snprintf(msg, sizeof(msg),
                     "no private key to try: set ansible_ssh_private_key_file, an IdentityFile in "
                     "ssh config, or create %s/.ssh/id_ed25519",
                     e->home);
            rc = KF_ECONFIG;
            goto out;
        }
    }
    rc = 0;
out:
    ssh_free(tmp);
    if (rc < 0 && msg[0] != '\0')
        c->settings_error = strdup(msg);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Connection life cycle                                                     */

static void set_state(struct ssh_conn *c, enum conn_state s)
{
    if (c->state != s)
        log_debug("%s: %s -> %s", c->name, state_names[c->state], state_names[s]);
    c->state = s;
}

static void conn_free(struct ssh_conn *c)
{
    kf_strv_free(c->keys, c->nkeys);
    free(c->name);
    free(c->host);
    free(c->user);
    free(c->settings_error);
    if (c->ai != NULL)
        uv_freeaddrinfo(c->ai);
    free(c);
}

static void on_timer_closed(uv_handle_t *h)
{
    conn_free(h->data);
}

static void timer_arm(struct ssh_conn *c, uv_timer_cb cb, uint64_t ms)
{
    uv_timer_start(&c->timer, cb, ms, 0);
}

static const char *hostport(const struct ssh_conn *c, char *out, size_t n)
{
    if (c->port == 22)
        snprintf(out, n, "%s", c->host);
    else
        snprintf(out, n, "[%s]:%u", c->host, c->port);
    return out;
}

/* Hands the user callback its result. The callback may close the
 * connection; callers check c->closing afterwards. */
static void conn_report(struct ssh_conn *c, int status)
{
    ssh_conn_cb cb = c->cb;

    c->cb = NULL;
    if (cb != NULL && !c->closing)
        cb(c, status, c->cb_arg);
}

/* --- attempts ------------------------------------------------------------ */

static void attempt_maybe_free(struct attempt *a)
{
    if (a->open_handles == 0)
        free(a);
}

static void on_attempt_handle_closed(uv_handle_t *h)
{
    struct attempt *a = h->data;

    if (h == (uv_handle_t *)&a->poll && a->pollfd >= 0) {
        close(a->pollfd);
        a->pollfd = -1;
    }
    a->open_handles--;
    attempt_maybe_free(a);
}

/* Ends an attempt: frees the libssh session (with a polite disconnect only
 * when asked and the session still holds its socket), and closes the
 * handles. The attempt frees itself once libuv is done with it. */
static void io_teardown(struct ssh_conn *c, int polite)
{
    struct attempt *a = c->a;

    if (a == NULL)
        return;
    c->a = NULL;
    a->c = NULL;
    if (a->ch != NULL) {
        ssh_channel_free(a->ch);
        a->ch = NULL;
    }
    if (a->s != NULL) {
        /* libssh still owning its fd means it has not closed it. After
         * ssh_disconnect libssh forgets the fd without closing it, so we
         * close it; ssh_free alone closes it itself. When libssh already
         * dropped it (error paths close it), its number may be reused by
         * now and must not be closed again. */
        if (ssh_get_fd(a->s) != SSH_INVALID_SOCKET && polite) {
            ssh_disconnect(a->s);
            ssh_free(a->s);
            close(a->libfd);
        } else {
            ssh_free(a->s);
        }
        a->s = NULL;
        a->libfd = -1;
    } else if (a->libfd >= 0) {
        close(a->libfd);
        a->libfd = -1;
    }
    if (a->poll_live) {
        a->poll_live = 0;
        uv_close((uv_handle_t *)&a->poll, on_attempt_handle_closed);
    } else if (a->pollfd >= 0) {
        close(a->pollfd);
        a->pollfd = -1;
    }
    if (a->tcp_live) {
        a->tcp_live = 0;
        uv_close((uv_handle_t *)&a->tcp, on_attempt_handle_closed);
    }
    attempt_maybe_free(a);
}

static void slot_release(struct ssh_conn *c)
{
    struct ssh_engine *e = c->e;

    if (!c->has_slot)
        return;
    c->has_slot = 0;
    e->handshakes--;
    while (e->wait_head != NULL && e->handshakes < e->opts.max_handshakes) {
        struct ssh_conn *next = e->wait_head;
        e->wait_head = next->wait_next;
        if (e->wait_head == NULL)
            e->wait_tail = NULL;
        next->wait_next = NULL;
        slot_acquire(next);
    }
}

static void wait_remove(struct ssh_conn *c)
{
    struct ssh_engine *e = c->e;
    struct ssh_conn **pp, *prev = NULL;

    for (pp = &e->wait_head; *pp != NULL; prev = *pp, pp = &(*pp)->wait_next) {
        if (*pp == c) {
            *pp = c->wait_next;
            if (e->wait_tail == c)
                e->wait_tail = prev;
            c->wait_next = NULL;
            return;
        }
    }
}

static void conn_fail(struct ssh_conn *c, int code, const char *phase, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    kf_err_setv(&c->err, code, fmt, ap);
    va_end(ap);
    c->phase = phase;
    log_debug("%s: failed in %s: %s", c->name, phase, c->err.msg);
    set_state(c, CS_FAILED);
    uv_timer_stop(&c->timer);
    slot_release(c);
    wait_remove(c);
    if (c->gai != NULL) {
        c->gai->c = NULL;
        uv_cancel((uv_req_t *)&c->gai->req);
        c->gai = NULL;
    }
    io_teardown(c, 0);
    conn_report(c, code);
}

/* --- timers ---------------------------------------------------------------- */

static void on_deadline(uv_timer_t *t)
{
    struct ssh_conn *c = t->data;
    char hp[300];

    switch (c->state) {
    case CS_RESOLVE:
    case CS_TCP:
        conn_fail(c, KF_ETIMEDOUT, "connect", "connect to %s timed out after %u ms",
                  hostport(c, hp, sizeof(hp)), c->e->opts.connect_timeout_ms);
        break;
    case CS_HANDSHAKE:
    case CS_AUTH:
        conn_fail(c, KF_ETIMEDOUT, c->state == CS_AUTH ? "auth" : "handshake",
                  "SSH %s with %s timed out after %u ms (no answer: node hung or stopped?)",
                  c->state == CS_AUTH ? "authentication" : "handshake", hostport(c, hp, sizeof(hp)),
                  c->e->opts.auth_timeout_ms);
        break;
    case CS_CHAN_OPEN:
    case CS_EXEC_REQ:
    case CS_RUNNING:
        conn_fail(c, KF_ETIMEDOUT, "command", "command timed out after %u ms",
                  c->x ? c->x->timeout_ms : 0);
        break;
    default:
        break;
    }
}

static void on_start_timer(uv_timer_t *t)
{
    struct ssh_conn *c = t->data;

    if (c->state == CS_NEW || c->state == CS_BACKOFF)
        slot_acquire(c);
    else if (c->state == CS_FAILED && !c->ready_reported)
        conn_report(c, c->err.code); /* a settings error from ssh_conn_start */
}

/* --- resolve and TCP --------------------------------------------------------- */

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct gai_req *g = (struct gai_req *)req;
    struct ssh_conn *c = g->c;

    free(g);
    if (c == NULL) { /* the connection gave up on this lookup */
        if (res != NULL)
            uv_freeaddrinfo(res);
        return;
    }
    c->gai = NULL;
    if (status < 0) {
        conn_fail(c, KF_EDNS, "connect", "cannot resolve '%s': %s", c->host, uv_strerror(status));
        return;
    }
    c->ai = res;
    c->ai_next = res;
    attempt_start(c);
}

static void start_resolve(struct ssh_conn *c)
{
    struct addrinfo hints;
    char port[16];
    int rc;

    set_state(c, CS_RESOLVE);
    timer_arm(c, on_deadline, c->e->opts.connect_timeout_ms);
    if (c->ai != NULL) { /* a retry reuses the addresses */
        c->ai_next = c->ai;
        attempt_start(c);
        return;
    }
    c->gai = calloc(1, sizeof(*c->gai));
    if (c->gai == NULL) {
        conn_fail(c, KF_ENOMEM, "connect", "out of memory");
        return;
    }
    c->gai->c = c;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%u", c->port);
    rc = uv_getaddrinfo(c->e->loop, &c->gai->req, on_resolved, c->host, port, &hints);
    if (rc < 0) {
        free(c->gai);
        c->gai = NULL;
        conn_fail(c, KF_EDNS, "connect", "cannot resolve '%s': %s", c->host, uv_strerror(rc));
    }
}

static void slot_acquire(struct ssh_conn *c)
{
    struct ssh_engine *e = c->e;

    if (e->handshakes >= e->opts.max_handshakes) {
        set_state(c, CS_WAIT_SLOT);
        if (e->wait_tail != NULL)
            e->wait_tail->wait_next = c;
        else
            e->wait_head = c;
        e->wait_tail = c;
        return;
    }
    e->handshakes++;
    if (e->handshakes > e->max_handshakes_seen)
        e->max_handshakes_seen = e->handshakes;
    c->has_slot = 1;
    start_resolve(c);
}

static void backoff(struct ssh_conn *c, const char *why);

static int handshake_retryable(const struct ssh_conn *c)
{
    /* A server over its MaxStartups closes new connections before it
     * sends its banner: that is "try again later", not a dead host. */
    return c->state == CS_HANDSHAKE && c->a != NULL &&
           (c->a->s == NULL || ssh_get_serverbanner(c->a->s) == NULL) &&
           c->retries < c->e->opts.handshake_retries;
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct attempt *a = h->data;
    struct ssh_conn *c = a->c;
    socklen_t len = sizeof(int);
    int soerr = 0;

    if (c == NULL)
        return;
    if (status < 0) {
        /* libuv reports POLLERR (e.g. a connection reset by a server over
         * its MaxStartups) as an error. The socket's pending error says
         * what happened; classify it here rather than hope libssh reads it
         * on its next call. */
        if (getsockopt(a->pollfd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr != 0) {
            if (handshake_retryable(c))
                backoff(c, strerror(soerr));
            else
                conn_fail(c, soerr == ECONNRESET ? KF_ECLOSED : KF_EIO,
                          c->state == CS_HANDSHAKE ? "handshake"
                          : c->state == CS_AUTH    ? "auth"
                                                   : "command",
                          "connection error: %s", strerror(soerr));
            return;
        }
        if (++c->poll_errors > 3) {
            conn_fail(c, KF_EIO, c->state == CS_RUNNING ? "command" : "handshake",
                      "socket error: %s", uv_strerror(status));
            return;
        }
    } else {
        c->poll_errors = 0;
    }
    conn_step(c);
}

static int attempt_session(struct ssh_conn *c, struct attempt *a)
{
    int strict = 1, off = 0, on = 1;
    socket_t fd = a->libfd;

    a->s = ssh_new();
    if (a->s == NULL)
        return KF_ENOMEM;
    ssh_options_set(a->s, SSH_OPTIONS_PROCESS_CONFIG, &off);
    if (ssh_options_set(a->s, SSH_OPTIONS_HOST, c->host) < 0 ||
        ssh_options_set(a->s, SSH_OPTIONS_PORT, &c->port) < 0 ||
        ssh_options_set(a->s, SSH_OPTIONS_USER, c->user) < 0 ||
        ssh_options_set(a->s, SSH_OPTIONS_KNOWNHOSTS, c->e->opts.known_hosts) < 0 ||
        ssh_options_set(a->s, SSH_OPTIONS_STRICTHOSTKEYCHECK, &strict) < 0 ||
        ssh_options_set(a->s, SSH_OPTIONS_NODELAY, &on) < 0 ||
        ssh_options_set(a->s, SSH_OPTIONS_FD, &fd) < 0)
        return KF_ESSH;
    ssh_set_blocking(a->s, 0);
    return 0;
}

static void on_tcp_connected(uv_connect_t *req, int status)
{
    struct attempt *a = req->data;
    struct ssh_conn *c = a->c;
    uv_os_fd_t fd;
    char hp[300];
    int rc;

    a->open_handles--; /* the request */
    if (c == NULL) {
        attempt_maybe_free(a);
        return;
    }
    if (status < 0) {
        snprintf(c->last_connect_error, sizeof(c->last_connect_error), "%s", uv_strerror(status));
        io_teardown(c, 0);
        if (c->ai_next != NULL) {
            attempt_start(c);
            return;
        }
        conn_fail(c,
                  status == UV_ECONNREFUSED ? KF_ECONNREFUSED
                  : status == UV_ETIMEDOUT  ? KF_ETIMEDOUT
                                            : KF_EUNREACH,
                  "connect", "cannot connect to %s: %s", hostport(c, hp, sizeof(hp)),
                  c->last_connect_error);
        return;
    }
    uv_tcp_nodelay(&a->tcp, 1);
    uv_tcp_keepalive(&a->tcp, 1, 30);
    if (uv_fileno((uv_handle_t *)&a->tcp, &fd) < 0 ||
        (a->pollfd = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0 ||
        (a->libfd = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0) {
        int e = errno;
        conn_fail(c, KF_EIO, "connect", "cannot duplicate socket: %s%s", strerror(e),
                  e == EMFILE || e == ENFILE ? FILES_HINT : "");
        return;
    }
    /* Our copies keep the socket open; libuv's handle is no longer needed. */
    a->tcp_live = 0;
    uv_close((uv_handle_t *)&a->tcp, on_attempt_handle_closed);

    rc = uv_poll_init_socket(c->e->loop, &a->poll, a->pollfd);
    if (rc < 0) {
        conn_fail(c, KF_EIO, "connect", "cannot watch socket: %s", uv_strerror(rc));
        return;
    }
    a->poll.data = a;
    a->poll_live = 1;
    a->open_handles++;
    rc = attempt_session(c, a);
    if (rc < 0) {
        conn_fail(c, rc, "handshake", "cannot set up SSH session: %s", kf_strerror(rc));
        return;
    }
    set_state(c, CS_HANDSHAKE);
    timer_arm(c, on_deadline, c->e->opts.auth_timeout_ms);
    conn_step(c);
}

static void attempt_start(struct ssh_conn *c)
{
    struct addrinfo *ai = c->ai_next;
    struct attempt *a;
    int rc;

    c->ai_next = ai->ai_next;
    a = calloc(1, sizeof(*a));
    if (a == NULL) {
        conn_fail(c, KF_ENOMEM, "connect", "out of memory");
        return;
    }
    a->c = c;
    a->pollfd = -1;
    a->libfd = -1;
    c->a = a;
    c->poll_errors = 0;
    set_state(c, CS_TCP);
    rc = uv_tcp_init(c->e->loop, &a->tcp);
    if (rc < 0) {
        conn_fail(c, KF_EIO, "connect", "cannot create socket: %s", uv_strerror(rc));
        return;
    }
    a->tcp.data = a;
    a->tcp_live = 1;
    a->open_handles++;
    a->creq.data = a;
    rc = uv_tcp_connect(&a->creq, &a->tcp, ai->ai_addr, on_tcp_connected);
    if (rc == UV_EMFILE || rc == UV_ENFILE) {
        /* Our limit, not the host's fault: another address would not help. */
        conn_fail(c, KF_EIO, "connect", "cannot open a socket: %s%s", uv_strerror(rc), FILES_HINT);
        return;
    }
    if (rc < 0) {
        snprintf(c->last_connect_error, sizeof(c->last_connect_error), "%s", uv_strerror(rc));
        io_teardown(c, 0);
        if (c->ai_next != NULL) {
            attempt_start(c);
            return;
        }
        conn_fail(c, KF_EUNREACH, "connect", "cannot connect to %s: %s", c->host,
                  c->last_connect_error);
        return;
    }
    a->open_handles++; /* the request */
}

/* --- the state machine ------------------------------------------------------ */

/* libssh 0.10 may switch the socket to blocking mode inside ssh_connect; the
 * flag lives on the open file description, shared by both copies. */
static void io_nonblock(struct attempt *a)
{
    int fl = fcntl(a->pollfd, F_GETFL);

    if (fl >= 0 && !(fl & O_NONBLOCK))
        fcntl(a->pollfd, F_SETFL, fl | O_NONBLOCK);
}

static void io_arm(struct ssh_conn *c)
{
    struct attempt *a = c->a;
    int ev = UV_READABLE;

    if (a == NULL || !a->poll_live)
        return;
    if (c->state == CS_READY || c->state == CS_FAILED) {
        /* Idle: nothing reads the socket, and a level-triggered readable
         * fd would spin the loop. Pending bytes wait in the kernel. */
        uv_poll_stop(&a->poll);
        return;
    }
    if (a->s != NULL && (ssh_get_poll_flags(a->s) & SSH_WRITE_PENDING))
        ev |= UV_WRITABLE;
    uv_poll_start(&a->poll, ev, on_poll);
}

static void backoff(struct ssh_conn *c, const char *why)
{
    uint64_t ms = 100u << (c->retries < 5 ? c->retries : 5);

    ms += (uint64_t)(rand() % 100);
    c->retries++;
    c->e->handshake_retries++;
    log_debug("%s: handshake refused (%s); retry %u in %llu ms", c->name, why, c->retries,
              (unsigned long long)ms);
    io_teardown(c, 0);
    slot_release(c);
    set_state(c, CS_BACKOFF);
    timer_arm(c, on_start_timer, ms);
}

/* Strict host key check: a known key must match; an unknown one is
 * recorded only with --accept-new-hostkeys; a changed one always fails and
 * is never replaced. Returns 0 to go on. */
static int check_hostkey(struct ssh_conn *c)
{
    struct attempt *a = c->a;
    const char *kh = c->e->opts.known_hosts;
    ssh_key key = NULL;
    unsigned char *hash = NULL;
    size_t hlen = 0;
    char *fp = NULL, hp[300], fpbuf[160];
    const char *ktype = "unknown";
    enum ssh_known_hosts_e st;

    hostport(c, hp, sizeof(hp));
    if (ssh_get_server_publickey(a->s, &key) == SSH_OK) {
        ktype = ssh_key_type_to_char(ssh_key_type(key));
        if (ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &hash, &hlen) == 0)
            fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hlen);
    }
    snprintf(fpbuf, sizeof(fpbuf), "%s %s", ktype ? ktype : "?", fp ? fp : "?");
    ssh_clean_pubkey_hash(&hash);
    ssh_string_free_char(fp);
    ssh_key_free(key);

    st = ssh_session_is_known_server(a->s);
    switch (st) {
    case SSH_KNOWN_HOSTS_OK:
        return 0;
    case SSH_KNOWN_HOSTS_CHANGED:
    case SSH_KNOWN_HOSTS_OTHER:
        conn_fail(c, KF_EHOSTKEY_CHANGED, "hostkey",
                  "HOST KEY CHANGED for %s: it now offers %s, which does not match %s. This can "
                  "mean an attack, or a reinstalled node. kfleet never replaces a known key: "
                  "check the node, then remove the old entry with ssh-keygen -R '%s' -f %s",
                  hp, fpbuf, kh, hp, kh);
        return -1;
    case SSH_KNOWN_HOSTS_UNKNOWN:
    case SSH_KNOWN_HOSTS_NOT_FOUND:
        if (!c->e->opts.accept_new_hostkeys) {
            conn_fail(c, KF_EHOSTKEY_UNKNOWN, "hostkey",
                      "host key for %s is not known (%s); check it, then add it to %s, or run "
                      "with --accept-new-hostkeys to record new keys on first use",
                      hp, fpbuf, kh);
            return -1;
        }
        if (ssh_session_update_known_hosts(a->s) != SSH_OK) {
            conn_fail(c, KF_EIO, "hostkey", "cannot record host key of %s in %s: %s", hp, kh,
                      ssh_get_error(a->s));
            return -1;
        }
        log_info("%s: recorded new host key %s for %s in %s", c->name, fpbuf, hp, kh);
        return 0;
    case SSH_KNOWN_HOSTS_ERROR:
    default:
        conn_fail(c, KF_ESSH, "hostkey", "cannot check host key of %s against %s: %s", hp, kh,
                  ssh_get_error(a->s));
        return -1;
    }
}

static int step_handshake(struct ssh_conn *c)
{
    struct attempt *a = c->a;
    int rc = ssh_connect(a->s);

    io_nonblock(a);
    if (rc == SSH_AGAIN)
        return 0;
    if (rc != SSH_OK) {
        if (handshake_retryable(c)) {
            backoff(c, ssh_get_error(a->s));
            return 0;
        }
        conn_fail(c, KF_ESSH, "handshake", "SSH handshake failed: %s%s", ssh_get_error(a->s),
                  c->retries ? " (after retries: server refusing connections, see MaxStartups)"
                             : "");
        return 0;
    }
    if (check_hostkey(c) < 0)
        return 0;
    set_state(c, CS_AUTH);
    c->key_idx = 0;
    return 1;
}

static int step_auth(struct ssh_conn *c)
{
    struct attempt *a = c->a;
    const struct ssh_key_entry *k;
    int rc;

    for (;;) {
        if (c->key_idx >= c->nkeys) {
            struct buf b;
            size_t i;
            buf_init(&b, 400);
            for (i = 0; i < c->nkeys; i++)
                buf_printf(&b, "%s%s", i ? ", " : "", c->keys[i]);
            conn_fail(c, KF_EAUTH, "auth", "permission denied for user '%s' (publickey), tried: %s",
                      c->user, buf_cstr(&b));
            buf_release(&b);
            return 0;
        }
        k = engine_key(c->e, c->keys[c->key_idx]);
        if (k == NULL) {
            conn_fail(c, KF_ENOMEM, "auth", "out of memory");
            return 0;
        }
        if (k->key == NULL) {
            if (c->nkeys == 1) {
                conn_fail(c, KF_EAUTH, "auth", "%s", k->msg);
                return 0;
            }
            c->key_idx++;
            continue;
        }
        break;
    }
    rc = ssh_userauth_publickey(a->s, NULL, k->key);
    switch (rc) {
    case SSH_AUTH_AGAIN:
        return 0;
    case SSH_AUTH_SUCCESS:
        uv_timer_stop(&c->timer);
        slot_release(c);
        set_state(c, CS_READY);
        c->ready_reported = 1;
        conn_report(c, 0);
        return 1;
    case SSH_AUTH_DENIED:
    case SSH_AUTH_PARTIAL:
        c->key_idx++;
        return 1;
    default:
        conn_fail(c, KF_ESSH, "auth", "authentication error: %s", ssh_get_error(a->s));
        return 0;
    }
}

static void exec_finish(struct ssh_conn *c, int status)
{
    struct attempt *a = c->a;

    uv_timer_stop(&c->timer);
    if (a->ch != NULL) {
        ssh_channel_close(a->ch);
        ssh_channel_free(a->ch);
        a->ch = NULL;
    }
    set_state(c, CS_READY);
    c->x = NULL;
    conn_report(c, status);
}

static void on_exit_signal(ssh_session s, ssh_channel ch, const char *signal, int core,
                           const char *errmsg, const char *lang, void *userdata)
{
    struct attempt *a = userdata;

    if (a->c != NULL && a->c->x != NULL)
        snprintf(a->c->x->exit_signal, sizeof(a->c->x->exit_signal), "%s", signal);
}

static int read_stream(struct ssh_conn *c, int is_stderr, int *progress)
{
    struct attempt *a = c->a;
    struct buf *b = is_stderr ? &c->x->err : &c->x->out;
    char tmp[16384];
    int n;

    for (;;) {
        n = ssh_channel_read_nonblocking(a->ch, tmp, sizeof(tmp), is_stderr);
        if (n == SSH_EOF) {
            int *eof = is_stderr ? &c->err_eof : &c->out_eof;
            /* Seeing EOF is progress: the packets that carried it may also
             * have carried the other stream's last data. */
            if (!*eof)
                *progress = 1;
            *eof = 1;
            return 0;
        }
        if (n == SSH_ERROR) {
            conn_fail(c, KF_ESSH, "command", "SSH error while reading output: %s",
                      ssh_get_error(a->s));
            return -1;
        }
        if (n == 0)
            return 0;
        *progress = 1;
        if (buf_append(b, tmp, (size_t)n) == KF_ETRUNC && !is_stderr) {
            /* Memory stays bounded: stop the command rather than read a
             * node's endless output. */
            exec_finish(c, KF_ETRUNC);
            return -1;
        }
    }
}

static int step_running(struct ssh_conn *c)
{
    struct attempt *a = c->a;
    struct ssh_exec *x = c->x;
    int progress = 0, rc, held_back, pending, window_shut;

    /* stdin: only while the remote window is open and libssh has flushed
     * what it holds, so at most one chunk is buffered per session. */
    while (c->in_sent < x->stdin_len && !(ssh_get_poll_flags(a->s) & SSH_WRITE_PENDING)) {
        uint32_t win = ssh_channel_window_size(a->ch);
        size_t n = x->stdin_len - c->in_sent;
        if (win == 0)
            break;
        if (n > CHUNK)
            n = CHUNK;
        if (n > win)
            n = win;
        rc = ssh_channel_write(a->ch, (const char *)x->stdin_data + c->in_sent, (uint32_t)n);
        if (rc < 0) {
            conn_fail(c, KF_ESSH, "command", "SSH error while sending input: %s",
                      ssh_get_error(a->s));
            return 0;
        }
        if (rc == 0)
            break;
        c->in_sent += (size_t)rc;
        x->stdin_sent = c->in_sent;
        progress = 1;
    }
    if (c->in_sent == x->stdin_len && !c->eof_sent) {
        rc = ssh_channel_send_eof(a->ch);
        if (rc == SSH_OK) {
            c->eof_sent = 1;
            progress = 1;
        } else if (rc != SSH_AGAIN) {
            conn_fail(c, KF_ESSH, "command", "SSH error while closing input: %s",
                      ssh_get_error(a->s));
            return 0;
        }
    }
    /* Input held back, because libssh still held earlier bytes or the
     * peer's window was full: reading below flushes what libssh holds
     * (libssh writes while it polls) and takes in the peer's window
     * adjustments, and then no fd event wakes us to send the rest, since
     * the peer waits for that input. Either change is progress. */
    held_back = c->in_sent < x->stdin_len || !c->eof_sent;
    pending = (ssh_get_poll_flags(a->s) & SSH_WRITE_PENDING) != 0;
    window_shut = c->in_sent < x->stdin_len && ssh_channel_window_size(a->ch) == 0;
    if (read_stream(c, 0, &progress) < 0 || read_stream(c, 1, &progress) < 0)
        return 0;
    if (held_back && ((pending && !(ssh_get_poll_flags(a->s) & SSH_WRITE_PENDING)) ||
                      (window_shut && ssh_channel_window_size(a->ch) > 0)))
        progress = 1;
    if (c->out_eof && c->err_eof) {
        x->exit_status = ssh_channel_get_exit_status(a->ch);
        if (x->exit_status != -1 || x->exit_signal[0] != '\0' || ssh_channel_is_closed(a->ch)) {
            exec_finish(c, 0);
            return 0;
        }
    } else if (ssh_channel_is_closed(a->ch) && !progress) {
        /* Reading one stream may process the packets that carry the other
         * stream's last data, its EOF and the close together: a closed
         * channel is an error only once a whole round read nothing. */
        conn_fail(c, KF_ECLOSED, "command", "connection closed while the command ran");
        return 0;
    }
    return progress;
}

static void conn_step(struct ssh_conn *c)
{
    struct attempt *a;
    int progress, rc;

    do {
        progress = 0;
        if (c->closing)
            return;
        a = c->a;
        switch (c->state) {
        case CS_HANDSHAKE:
            progress = step_handshake(c);
            break;
        case CS_AUTH:
            progress = step_auth(c);
            break;
        case CS_CHAN_OPEN:
            rc = ssh_channel_open_session(a->ch);
            if (rc == SSH_OK) {
                set_state(c, CS_EXEC_REQ);
                progress = 1;
            } else if (rc != SSH_AGAIN) {
                conn_fail(c, KF_ESSH, "command", "cannot open a session channel: %s",
                          ssh_get_error(a->s));
            }
            break;
        case CS_EXEC_REQ:
            rc = ssh_channel_request_exec(a->ch, c->x->command);
            if (rc == SSH_OK) {
                set_state(c, CS_RUNNING);
                progress = 1;
            } else if (rc != SSH_AGAIN) {
                conn_fail(c, KF_ESSH, "command", "cannot start the command: %s",
                          ssh_get_error(a->s));
            }
            break;
        case CS_RUNNING:
            progress = step_running(c);
            break;
        default:
            break;
        }
    } while (progress);
    if (!c->closing)
        io_arm(c);
}

/* ------------------------------------------------------------------------ */
/* Public API                                                                */

int ssh_conn_start(struct ssh_engine *e, const struct ssh_target *t, ssh_conn_cb on_ready,
                   void *arg, struct ssh_conn **out)
{
    struct ssh_conn *c;
    int rc;

    *out = NULL;
    if (t == NULL || t->name == NULL || on_ready == NULL)
        return KF_EINVAL;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return KF_ENOMEM;
    c->e = e;
    c->name = strdup(t->name);
    if (c->name == NULL) {
        free(c);
        return KF_ENOMEM;
    }
    rc = uv_timer_init(e->loop, &c->timer);
    if (rc < 0) {
        conn_free(c);
        return KF_EIO;
    }
    c->timer.data = c;
    c->cb = on_ready;
    c->cb_arg = arg;
    set_state(c, CS_NEW);
    rc = conn_settings(c, t);
    if (rc < 0) {
        /* Reported through the callback like any other failure, but from
         * the loop (on_start_timer), never from inside this call. */
        kf_err_set(&c->err, rc, "%s", c->settings_error ? c->settings_error : kf_strerror(rc));
        c->phase = "connect";
        set_state(c, CS_FAILED);
    }
    uv_timer_start(&c->timer, on_start_timer, 0, 0);
    *out = c;
    return 0;
}

int ssh_conn_exec(struct ssh_conn *c, struct ssh_exec *x, ssh_conn_cb on_done, void *arg)
{
    if (c->state != CS_READY || c->a == NULL || c->closing)
        return KF_EINVAL;
    c->a->ch = ssh_channel_new(c->a->s);
    if (c->a->ch == NULL)
        return KF_ENOMEM;
    ssh_callbacks_init(&c->a->chcb);
    c->a->chcb.userdata = c->a;
    c->a->chcb.channel_exit_signal_function = on_exit_signal;
    ssh_set_channel_callbacks(c->a->ch, &c->a->chcb);
    buf_reset(&x->out);
    buf_reset(&x->err);
    x->out.limit = x->out_limit ? x->out_limit : 1024 * 1024;
    x->err.limit = x->err_limit ? x->err_limit : 64 * 1024;
    if (x->timeout_ms == 0)
        x->timeout_ms = 60000;
    x->exit_status = -1;
    x->exit_signal[0] = '\0';
    c->x = x;
    c->in_sent = 0;
    c->eof_sent = 0;
    c->out_eof = 0;
    c->err_eof = 0;
    c->cb = on_done;
    c->cb_arg = arg;
    set_state(c, CS_CHAN_OPEN);
    timer_arm(c, on_deadline, x->timeout_ms);
    conn_step(c);
    return 0;
}

void ssh_conn_close(struct ssh_conn *c)
{
    if (c == NULL || c->closing)
        return;
    c->closing = 1;
    c->cb = NULL;
    slot_release(c);
    wait_remove(c);
    if (c->gai != NULL) {
        c->gai->c = NULL;
        uv_cancel((uv_req_t *)&c->gai->req);
        c->gai = NULL;
    }
    /* Say goodbye only to a healthy, idle session: a failed or stalled
     * peer gets no more writes. */
    io_teardown(c, c->state == CS_READY);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}

const char *ssh_conn_error(const struct ssh_conn *c)
{
    return kf_err_msg(&c->err);
}

const char *ssh_conn_phase(const struct ssh_conn *c)
{
    return c->phase ? c->phase : "";
}

unsigned ssh_conn_retries(const struct ssh_conn *c)
{
    return c->retries;
}

void ssh_exec_init(struct ssh_exec *x)
{
    memset(x, 0, sizeof(*x));
    buf_init(&x->out, 0);
    buf_init(&x->err, 0);
    x->exit_status = -1;
}

void ssh_exec_release(struct ssh_exec *x)
{
    if (x == NULL)
        return;
    buf_release(&x->out);
    buf_release(&x->err);
}
