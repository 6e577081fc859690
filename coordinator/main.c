/* kfleet: the command-line entry point. One function per command, in its
 * own file (cmd_*.c). */
#include "coordinator.h"

#include <signal.h>
#include <string.h>

int main(int argc, char **argv)
{
    struct coord_opts o;
    int rc;

    /* A node that hangs up must fail that node, not kill kfleet. */
    signal(SIGPIPE, SIG_IGN);
    rc = coord_parse_args(argc, argv, &o);
    if (rc < 0)
        return KF_EXIT_OK;
    if (rc > 0)
        return rc;
    if (o.verbose)
        log_set_level(LOG_DEBUG);

    if (strcmp(o.command, "hosts") == 0)
        return cmd_hosts(&o);
    if (strcmp(o.command, "facts") == 0)
        return cmd_facts(&o);
    if (strcmp(o.command, "plan") == 0)
        return cmd_plan(&o);
    if (strcmp(o.command, "build") == 0)
        return cmd_build(&o);
    if (strcmp(o.command, "builder") == 0)
        return cmd_builder(&o);
    if (strcmp(o.command, "artifacts") == 0)
        return cmd_artifacts(&o);
    if (strcmp(o.command, "keys") == 0)
        return cmd_keys(&o);
    if (strcmp(o.command, "deploy") == 0)
        return cmd_deploy(&o);
    if (strcmp(o.command, "rollback") == 0)
        return cmd_rollback(&o);
    if (strcmp(o.command, "rollout") == 0)
        return cmd_rollout(&o);
    if (strcmp(o.command, "doctor") == 0)
        return cmd_doctor(&o);
    if (strcmp(o.command, "status") == 0)
        return cmd_status(&o);
    if (strcmp(o.command, "run") == 0)
        return cmd_run(&o);
    if (strcmp(o.command, "version") == 0) {
        printf("kfleet %s\n", KF_VERSION);
        return KF_EXIT_OK;
    }
    fprintf(stderr,
            "kfleet: unknown command '%s' (commands: hosts, facts, plan, build, builder, "
            "artifacts, keys, deploy, rollback, rollout, doctor, status, run, version, help)\n",
            o.command);
    return KF_EXIT_USAGE;
}
