/* kfleet run: the weekly job in one command.
 *
 *   lock -> facts -> plan -> build --missing -> [deploy] -> summary
 *
 * Each step is the command of the same name, run in this process with the
 * same options, so the steps behave (and journal) exactly as they do on
 * their own. A step's failure on some hosts does not stop the run: a node
 * whose facts failed keeps its last good facts (and then fails in the
 * deploy's preflight, counted), a kernel whose build failed leaves its
 * nodes skipped ("no artifact"). Usage and internal errors stop it.
 *
 * The lock is flock(2) on STATE/run.lock, released by the kernel when the
 * process ends however it ends, with "pid host start command" written in
 * the file so a second run can say who holds it. */
#include "coordinator.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int take_lock(const char *state_dir, int argc_words, char **words, int *fd_out)
{
    char path[4200], host[256] = "", holder[1024];
    struct stat st;
    ssize_t n;
    int fd, i, off;

    snprintf(path, sizeof(path), "%s/run.lock", state_dir);
    if (stat(state_dir, &st) < 0) {
        /* The state database makes the directory as it wants it (0700). */
        struct coord_db db;
        struct kf_err err;
        kf_err_clear(&err);
        if (coord_db_open(&db, state_dir, &err) < 0) {
            fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
            return KF_EXIT_ERROR;
        }
        coord_db_close(&db);
    }
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "kfleet: cannot open %s: %s\n", path, strerror(errno));
        return KF_EXIT_ERROR;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        n = pread(fd, holder, sizeof(holder) - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        fprintf(stderr,
                "kfleet: another kfleet run holds %s (%s): wait for it to end, or check that "
                "process\n",
                path, holder[0] ? holder : "no details written");
        close(fd);
        return KF_EXIT_LOCKED;
    }
    gethostname(host, sizeof(host) - 1);
    off = snprintf(holder, sizeof(holder), "pid %ld on %s since %lld:", (long)getpid(), host,
                   (long long)time(NULL));
    for (i = 0; i < argc_words && off < (int)sizeof(holder) - 2; i++)
        off += snprintf(holder + off, sizeof(holder) - (size_t)off, " %s", words[i]);
    if (ftruncate(fd, 0) == 0 && pwrite(fd, holder, strlen(holder), 0) >= 0)
        (void)pwrite(fd, "\n", 1, (off_t)strlen(holder));
    *fd_out = fd;
    return 0;
}

static const char *current_step = "";

static void step(const char *what)
{
    current_step = what;
    fflush(stdout);
    printf("\n== kfleet run: %s\n", what);
    fflush(stdout);
}

/* The worst of two exit statuses, for the run's own. */
static int worse(int a, int b)
{
    static const int rank[] = {
        [KF_EXIT_OK] = 0,    [KF_EXIT_HOSTS] = 1, [KF_EXIT_PAUSED] = 2, [KF_EXIT_HALTED] = 3,
        [KF_EXIT_USAGE] = 4, [KF_EXIT_ERROR] = 5, [KF_EXIT_LOCKED] = 6};
    int ra = a >= 0 && a <= KF_EXIT_LOCKED ? rank[a] : 5;
    int rb = b >= 0 && b <= KF_EXIT_LOCKED ? rank[b] : 5;

    return rb > ra ? b : a;
}

int cmd_run(struct coord_opts *o)
{
    struct coord_run_result res;
    char *state_dir;
    int fd = -1, rc, exit_code, saved_out = -1, json = o->json;
    const char *words[] = {"run", "--driver", o->driver ? o->driver : "?"};
    uint64_t t0 = uv_hrtime();

    if (o->driver == NULL) {
        fprintf(stderr, "kfleet: run needs --driver VERSION (the driver the fleet should run)\n");
        return KF_EXIT_USAGE;
    }
    if (o->no_deploy && o->junit != NULL) {
        fprintf(stderr, "kfleet: --junit reports a deploy's nodes; with --no-deploy there is none "
                        "(leave one of them out)\n");
        return KF_EXIT_USAGE;
    }
    if (o->missing || o->nkernels) {
        fprintf(stderr, "kfleet: run builds what is missing itself; --missing and --kernel are "
                        "build options\n");
        return KF_EXIT_USAGE;
    }
    state_dir = o->state_dir ? strdup(o->state_dir) : coord_default_state_dir();
    if (state_dir == NULL)
        return KF_EXIT_ERROR;
    rc = take_lock(state_dir, 3, (char **)words, &fd);
    free(state_dir);
    if (rc != 0)
        return rc;
    memset(&res, 0, sizeof(res));
    o->result = &res;
    if (json) {
        /* Each step's report to stderr; stdout gets one document. */
        fflush(stdout);
        saved_out = dup(STDOUT_FILENO);
        if (saved_out >= 0)
            dup2(STDERR_FILENO, STDOUT_FILENO);
        o->json = 0;
    }

    step("facts");
    exit_code = cmd_facts(o);
    if (exit_code != KF_EXIT_OK && exit_code != KF_EXIT_HOSTS)
        goto out;
    step("plan");
    rc = cmd_plan(o);
    if (rc != KF_EXIT_OK)
        goto done;
    step("build what is missing");
    o->missing = 1;
    rc = cmd_build(o);
    o->missing = 0;
    exit_code = worse(exit_code, rc);
    if (rc != KF_EXIT_OK && rc != KF_EXIT_HOSTS)
        goto out;
    if (!o->no_deploy) {
        step("deploy");
        rc = cmd_deploy(o);
        exit_code = worse(exit_code, rc);
    }
    goto out;
done:
    exit_code = worse(exit_code, rc);
out:
    fflush(stdout);
    if (saved_out >= 0) {
        dup2(saved_out, STDOUT_FILENO);
        close(saved_out);
    }
    o->json = json;
    if (json) {
        json_t *doc = json_pack(
            "{s:s,s:s,s:s,s:i,s:{s:I,s:I},s:{s:I,s:I,s:I,s:I},s:o,s:f}", "kfleet", KF_VERSION,
            "command", "run", "driver", o->driver, "exit", exit_code, "facts", "hosts",
            (json_int_t)res.facts_hosts, "failed", (json_int_t)res.facts_failed, "build", "built",
            (json_int_t)res.built, "failed", (json_int_t)res.build_failed, "stored",
            (json_int_t)res.build_stored, "not_applicable", (json_int_t)res.build_na, "deploy",
            res.rollout
                ? json_pack("{s:I,s:s,s:I,s:I,s:I,s:I}", "rollout", (json_int_t)res.rollout,
                            "status", res.rollout_status, "updated", (json_int_t)res.updated,
                            "unchanged", (json_int_t)res.unchanged, "skipped",
                            (json_int_t)res.skipped, "failed", (json_int_t)res.failed)
                : json_null(),
            "seconds", (double)(uv_hrtime() - t0) / 1e9);
        json_dumpf(doc, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(doc);
    } else if (exit_code == KF_EXIT_USAGE || exit_code == KF_EXIT_ERROR) {
        printf("\n== kfleet run: stopped at %s (exit status %d): nothing after it ran\n",
               current_step, exit_code);
    } else {
        printf("\n== kfleet run: done in %.1f s: facts %zu/%zu hosts, builds %zu made, %zu failed, "
               "%zu already stored",
               (double)(uv_hrtime() - t0) / 1e9, res.facts_hosts - res.facts_failed,
               res.facts_hosts, res.built, res.build_failed, res.build_stored);
        if (res.rollout)
            printf("; rollout %lld %s: %zu updated, %zu unchanged, %zu skipped, %zu failed",
                   res.rollout, res.rollout_status, res.updated, res.unchanged, res.skipped,
                   res.failed);
        else if (o->no_deploy)
            printf("; no deploy (--no-deploy)");
        printf("\n");
        if (exit_code == KF_EXIT_OK && res.built == 0 && res.updated == 0 && res.rollout)
            printf("the fleet is current: nothing built, nothing changed\n");
        else if (exit_code == KF_EXIT_OK && res.built == 0 && o->no_deploy)
            printf("every kernel of the fleet has its package: nothing to build\n");
    }
    o->result = NULL;
    close(fd);
    return exit_code;
}
