/* Local child processes: see proc.h.
 *
 * State: RUNNING until the process has exited AND both output pipes have
 * reached EOF (or the 5 s drain grace after the exit has passed); then the
 * callback runs once (DONE). The record is freed by kf_proc_free(), which
 * closes every handle; the last close callback frees the memory. */
#include "proc.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define PROC_OUT_LIMIT_DEFAULT (1024 * 1024)
#define PROC_ERR_LIMIT_DEFAULT (64 * 1024)
#define PROC_GRACE_MS 5000

struct kf_proc {
    uv_loop_t *loop;
    uv_process_t process;
    uv_pipe_t in, out, err;
    uv_timer_t deadline; /* the timeout, then the SIGKILL grace */
    uv_timer_t drain;    /* after the exit: how long to wait for EOF */
    uv_write_t write_req;
    uv_buf_t in_buf;
    kf_proc_cb cb;
    void *arg;
    struct buf obuf, ebuf;
    int status;   /* what the callback will report */
    int exited;   /* exit_cb ran */
    int out_open; /* stdout not yet at EOF */
    int err_open; /* stderr not yet at EOF */
    int in_open;  /* stdin handle not yet closed */
    int stopping; /* SIGTERM sent to the group */
    int done;     /* callback ran */
    int freed;    /* kf_proc_free called */
    int handles;  /* open handles, freed at 0 */
    int exit_status;
    int term_signal;
    int pid;
};

static void on_close(uv_handle_t *h)
{
    struct kf_proc *p = h->data;

    if (--p->handles == 0) {
        buf_release(&p->obuf);
        buf_release(&p->ebuf);
        free(p);
    }
}

static void close_handle(struct kf_proc *p, uv_handle_t *h)
{
    (void)p;
    if (!uv_is_closing(h))
        uv_close(h, on_close);
}

static void signal_group(struct kf_proc *p, int sig)
{
    if (p->exited)
        return;
    /* The child leads its own session (UV_PROCESS_DETACHED): -pid is its
     * group. Fall back to the child alone if the group is already gone. */
    if (kill(-p->pid, sig) < 0 && errno == ESRCH)
        (void)kill(p->pid, sig);
}

static void finish(struct kf_proc *p)
{
    if (p->done || !p->exited || p->out_open || p->err_open)
        return;
    p->done = 1;
    uv_timer_stop(&p->deadline);
    uv_timer_stop(&p->drain);
    p->cb(p, p->status, p->arg);
}

static void on_kill_grace(uv_timer_t *t)
{
    struct kf_proc *p = t->data;

    signal_group(p, SIGKILL);
}

static void stop_process(struct kf_proc *p, int status)
{
    if (p->status == 0)
        p->status = status;
    if (p->stopping || p->exited)
        return;
    p->stopping = 1;
    signal_group(p, SIGTERM);
    uv_timer_stop(&p->deadline);
    uv_timer_start(&p->deadline, on_kill_grace, PROC_GRACE_MS, 0);
}

static void on_timeout(uv_timer_t *t)
{
    stop_process(t->data, KF_ETIMEDOUT);
}

static void close_output(struct kf_proc *p, uv_pipe_t *pipe)
{
    int *open = pipe == &p->out ? &p->out_open : &p->err_open;

    if (*open) {
        *open = 0;
        uv_read_stop((uv_stream_t *)pipe);
    }
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct kf_proc *p = t->data;

    /* A grandchild holds the pipes: report what there is. */
    close_output(p, &p->out);
    close_output(p, &p->err);
    finish(p);
}

static void on_exit_cb(uv_process_t *proc, int64_t exit_status, int term_signal)
{
    struct kf_proc *p = proc->data;

    p->exited = 1;
    p->exit_status = term_signal ? -1 : (int)exit_status;
    p->term_signal = term_signal;
    uv_timer_stop(&p->deadline);
    if (p->out_open || p->err_open)
        uv_timer_start(&p->drain, on_drain_timeout, PROC_GRACE_MS, 0);
    finish(p);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    static char scratch[64 * 1024];
    (void)h;
    (void)suggested;
    /* Reads are consumed synchronously in on_read: one buffer serves all. */
    b->base = scratch;
    b->len = sizeof(scratch);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct kf_proc *p = s->data;
    int is_out = s == (uv_stream_t *)&p->out;

    if (n > 0) {
        int r = buf_append(is_out ? &p->obuf : &p->ebuf, b->base, (size_t)n);
        if (r == KF_ETRUNC && is_out) {
            close_output(p, &p->out);
            stop_process(p, KF_ETRUNC);
        } else if (r == KF_ENOMEM) {
            stop_process(p, KF_ENOMEM);
        }
    } else if (n < 0) {
        close_output(p, is_out ? &p->out : &p->err);
    }
    finish(p);
}

static void on_write(uv_write_t *req, int status)
{
    struct kf_proc *p = req->data;

    /* EPIPE: the child did not want all of its stdin; not our failure. */
    (void)status;
    if (p->in_open) {
        p->in_open = 0;
        close_handle(p, (uv_handle_t *)&p->in);
    }
}

int kf_proc_start(uv_loop_t *loop, const struct kf_proc_opts *o, kf_proc_cb cb, void *arg,
                  struct kf_proc **out, struct kf_err *err)
{
    uv_process_options_t po;
    uv_stdio_container_t stdio[3];
    struct kf_proc *p;
    int r;

    if (o == NULL || o->argv == NULL || o->argv[0] == NULL || cb == NULL)
        return kf_err_set(err, KF_EINVAL, "kf_proc_start: no command");
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return kf_err_set(err, KF_ENOMEM, "out of memory");
    p->loop = loop;
    p->cb = cb;
    p->arg = arg;
    buf_init(&p->obuf, o->out_limit ? o->out_limit : PROC_OUT_LIMIT_DEFAULT);
    buf_init(&p->ebuf, o->err_limit ? o->err_limit : PROC_ERR_LIMIT_DEFAULT);
    uv_pipe_init(loop, &p->in, 0);
    uv_pipe_init(loop, &p->out, 0);
    uv_pipe_init(loop, &p->err, 0);
    uv_timer_init(loop, &p->deadline);
    uv_timer_init(loop, &p->drain);
    p->in.data = p->out.data = p->err.data = p->deadline.data = p->drain.data = p;
    p->process.data = p;
    p->handles = 5;

    memset(&po, 0, sizeof(po));
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)&p->in;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&p->out;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&p->err;
    po.file = o->argv[0];
    po.args = (char **)o->argv;
    po.stdio = stdio;
    po.stdio_count = 3;
    po.exit_cb = on_exit_cb;
    po.flags = UV_PROCESS_DETACHED; /* setsid(): its own process group */
    r = uv_spawn(loop, &p->process, &po);
    if (r < 0) {
        kf_err_set(err, r == UV_ENOENT ? KF_ENOENT : KF_EIO, "cannot run %s: %s", o->argv[0],
                   uv_strerror(r));
        /* uv_spawn leaves the process handle initialised: close it too. */
        p->handles++;
        p->done = p->freed = 1;
        close_handle(p, (uv_handle_t *)&p->process);
        close_handle(p, (uv_handle_t *)&p->in);
        close_handle(p, (uv_handle_t *)&p->out);
        close_handle(p, (uv_handle_t *)&p->err);
        close_handle(p, (uv_handle_t *)&p->deadline);
        close_handle(p, (uv_handle_t *)&p->drain);
        return err ? err->code : KF_EIO;
    }
    p->handles++; /* the process handle */
    p->pid = p->process.pid;
    p->out_open = p->err_open = 1;
    p->in_open = 1;
    uv_read_start((uv_stream_t *)&p->out, on_alloc, on_read);
    uv_read_start((uv_stream_t *)&p->err, on_alloc, on_read);
    if (o->stdin_len > 0) {
        p->in_buf = uv_buf_init((char *)o->stdin_data, (unsigned)o->stdin_len);
        p->write_req.data = p;
        if (o->stdin_len > UINT32_MAX ||
            uv_write(&p->write_req, (uv_stream_t *)&p->in, &p->in_buf, 1, on_write) < 0) {
            p->in_open = 0;
            close_handle(p, (uv_handle_t *)&p->in);
        }
    } else {
        p->in_open = 0;
        close_handle(p, (uv_handle_t *)&p->in);
    }
    if (o->timeout_ms > 0)
        uv_timer_start(&p->deadline, on_timeout, o->timeout_ms, 0);
    *out = p;
    return 0;
}

void kf_proc_kill(struct kf_proc *p)
{
    if (p != NULL && !p->done)
        stop_process(p, KF_ECANCELED);
}

struct buf *kf_proc_stdout(struct kf_proc *p)
{
    return &p->obuf;
}

struct buf *kf_proc_stderr(struct kf_proc *p)
{
    return &p->ebuf;
}

int kf_proc_exit_status(const struct kf_proc *p)
{
    return p->exit_status;
}

int kf_proc_term_signal(const struct kf_proc *p)
{
    return p->term_signal;
}

int kf_proc_pid(const struct kf_proc *p)
{
    return p->pid;
}

void kf_proc_free(struct kf_proc *p)
{
    if (p == NULL || p->freed)
        return;
    p->freed = 1;
    if (!p->exited)
        signal_group(p, SIGKILL);
    close_output(p, &p->out);
    close_output(p, &p->err);
    /* With the process still running (freed before its callback) its exit
     * is no longer of interest: closing the handle stops watching it. */
    close_handle(p, (uv_handle_t *)&p->process);
    if (p->in_open) {
        p->in_open = 0;
        close_handle(p, (uv_handle_t *)&p->in);
    }
    close_handle(p, (uv_handle_t *)&p->out);
    close_handle(p, (uv_handle_t *)&p->err);
    close_handle(p, (uv_handle_t *)&p->deadline);
    close_handle(p, (uv_handle_t *)&p->drain);
}
