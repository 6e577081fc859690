/* kf_stream: streams a large stdin through the SSH engine to many hosts at
 * once and checks that each one received every byte, for the engine's
 * regression tests (tests/integration/test_stream.sh).
 *
 *   kf_stream -i INVENTORY --known-hosts FILE --mib N [--forks K] [--timeout S]
 *
 * Every host of the inventory runs `sha256sum` with N MiB of pseudo-random
 * bytes on its stdin; the tool prints "HOST ok SECONDS" when the node's sum
 * is the local one, "HOST FAILED reason" otherwise, and exits 1 when any
 * host failed. The engine sends stdin only as the peer's window and
 * libssh's buffer allow, so this exercises the window refills, the
 * buffered-write flushes and, with a node stopped mid-transfer, that one
 * stalled peer holds back no other session. */
#include "inventory.h"
#include "ssh.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

struct host {
    const struct inv_host *h;
    struct ssh_conn *conn;
    struct ssh_exec x;
    uint64_t t0;
    int done, ok;
    char why[600];
};

static unsigned char *data;
static size_t data_len;
static char want[65];
static unsigned forks = 100, running, next_host, nhosts, failed;
static unsigned timeout_s = 300;
static struct host *hosts;
static struct ssh_engine engine;

static void start_next(void);

static void finish(struct host *h, int ok, const char *why)
{
    h->done = 1;
    h->ok = ok;
    snprintf(h->why, sizeof(h->why), "%s", why ? why : "");
    if (ok)
        printf("%s ok %.2f\n", h->h->name, (double)(uv_hrtime() - h->t0) / 1e9);
    else {
        printf("%s FAILED %s\n", h->h->name, h->why);
        failed++;
    }
    fflush(stdout);
    ssh_exec_release(&h->x);
    if (h->conn)
        ssh_conn_close(h->conn);
    h->conn = NULL;
    running--;
    start_next();
}

static void on_done(struct ssh_conn *c, int status, void *arg)
{
    struct host *h = arg;
    char got[65] = "";

    if (status < 0) {
        finish(h, 0, ssh_conn_error(c));
        return;
    }
    snprintf(got, sizeof(got), "%.64s", h->x.out.data ? h->x.out.data : "");
    if (h->x.stdin_sent != data_len) {
        char why[128];
        snprintf(why, sizeof(why), "sent %zu of %zu bytes", h->x.stdin_sent, data_len);
        finish(h, 0, why);
    } else if (strcmp(got, want) != 0) {
        finish(h, 0, "the node's sha256 differs: bytes lost or reordered");
    } else {
        finish(h, 1, NULL);
    }
}

static void on_ready(struct ssh_conn *c, int status, void *arg)
{
    struct host *h = arg;

    if (status < 0) {
        finish(h, 0, ssh_conn_error(c));
        return;
    }
    ssh_exec_init(&h->x);
    h->x.command = "sha256sum";
    h->x.stdin_data = data;
    h->x.stdin_len = data_len;
    h->x.timeout_ms = timeout_s * 1000;
    if (ssh_conn_exec(c, &h->x, on_done, h) < 0)
        finish(h, 0, "cannot start the command");
}

static void start_next(void)
{
    while (running < forks && next_host < nhosts) {
        struct host *h = &hosts[next_host++];
        struct ssh_target t;
        char why[300];
        running++;
        h->t0 = uv_hrtime();
        if (inv_host_ssh_target(h->h, &t, why, sizeof(why)) < 0 ||
            ssh_conn_start(&engine, &t, on_ready, h, &h->conn) < 0) {
            h->conn = NULL;
            finish(h, 0, "cannot connect");
        }
    }
}

int main(int argc, char **argv)
{
    struct inventory inv;
    struct ssh_engine_opts eo;
    struct kf_err err;
    const char *invpath = NULL, *kh = NULL;
    unsigned mib = 32, i;
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen;
    uv_loop_t loop;

    for (i = 1; i + 1 < (unsigned)argc; i += 2) {
        if (strcmp(argv[i], "-i") == 0)
            invpath = argv[i + 1];
        else if (strcmp(argv[i], "--known-hosts") == 0)
            kh = argv[i + 1];
        else if (strcmp(argv[i], "--mib") == 0)
            mib = (unsigned)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--forks") == 0)
            forks = (unsigned)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--timeout") == 0)
            timeout_s = (unsigned)atoi(argv[i + 1]);
        else
            break;
    }
    if (invpath == NULL || kh == NULL || mib == 0 || forks == 0 || i != (unsigned)argc) {
        fprintf(stderr, "usage: kf_stream -i INVENTORY --known-hosts FILE --mib N [--forks K] "
                        "[--timeout S]\n");
        return 2;
    }
    data_len = (size_t)mib << 20;
    data = malloc(data_len);
    if (data == NULL)
        return 3;
    for (i = 0; i < data_len / 8; i++) { /* xorshift: incompressible, the same every run */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(data + (size_t)i * 8, &x, 8);
    }
    EVP_Digest(data, data_len, md, &mdlen, EVP_sha256(), NULL);
    for (i = 0; i < 32; i++)
        snprintf(want + 2 * i, 3, "%02x", md[i]);
    kf_err_clear(&err);
    inv_init(&inv);
    if (inv_load_file(&inv, invpath, &err) < 0) {
        fprintf(stderr, "kf_stream: %s\n", kf_err_msg(&err));
        return 2;
    }
    nhosts = (unsigned)inv.nhosts;
    hosts = calloc(nhosts ? nhosts : 1, sizeof(*hosts));
    for (i = 0; i < nhosts; i++)
        hosts[i].h = &inv.hosts[i];
    uv_loop_init(&loop);
    memset(&eo, 0, sizeof(eo));
    eo.known_hosts = kh;
    eo.ssh_config = "none";
    if (ssh_engine_init(&engine, &loop, &eo) < 0)
        return 3;
    start_next();
    uv_run(&loop, UV_RUN_DEFAULT);
    ssh_engine_release(&engine);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(hosts);
    free(data);
    inv_release(&inv);
    return failed ? 1 : 0;
}
