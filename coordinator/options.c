/* Command-line parsing shared by every command. Options may stand before or
 * after the command name ("kfleet -i inv.yml facts" = "kfleet facts -i
 * inv.yml"), as with git's and ansible's global options. */
#include "coordinator.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

enum {
    OPT_STATE = 256,
    OPT_KNOWN_HOSTS,
    OPT_ACCEPT_NEW,
    OPT_SSH_CONFIG,
    OPT_CONNECT_TIMEOUT,
    OPT_AUTH_TIMEOUT,
    OPT_COMMAND_TIMEOUT,
    OPT_MAX_HANDSHAKES,
    OPT_OUTPUT_LIMIT,
    OPT_JSON,
    OPT_PROGRESS,
    OPT_NO_PROGRESS,
    OPT_VERSION,
    OPT_PRINT_PROBE,
    OPT_CONFIG,
    OPT_DRIVER,
    OPT_PROFILE,
    OPT_SOURCE,
    OPT_MISSING,
    OPT_KERNEL,
    OPT_FORCE,
    OPT_RETRY_FAILED,
    OPT_BUILDER,
    OPT_DIR,
    OPT_KEY_TYPE,
    OPT_CN,
    OPT_DAYS,
    OPT_STAGES,
    OPT_CANARY,
    OPT_SHUFFLE,
    OPT_MAX_FAIL,
    OPT_MAX_FAIL_TOTAL,
    OPT_PAUSE,
    OPT_RELOAD,
    OPT_AUTO_ROLLBACK,
    OPT_ROLLBACK_STAGE,
    OPT_ALLOW_MISMATCH,
    OPT_TRANSFER_FORKS,
    OPT_BREAK_LOCK,
    OPT_JUNIT,
    OPT_TO,
    OPT_REFRESH,
    OPT_PROMETHEUS,
    OPT_STALE,
    OPT_NO_DEPLOY,
};

static const struct option long_opts[] = {
    {"inventory", required_argument, NULL, 'i'},
    {"limit", required_argument, NULL, 'l'},
    {"forks", required_argument, NULL, 'f'},
    {"state", required_argument, NULL, OPT_STATE},
    {"known-hosts", required_argument, NULL, OPT_KNOWN_HOSTS},
    {"accept-new-hostkeys", no_argument, NULL, OPT_ACCEPT_NEW},
    {"ssh-config", required_argument, NULL, OPT_SSH_CONFIG},
    {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
    {"auth-timeout", required_argument, NULL, OPT_AUTH_TIMEOUT},
    {"command-timeout", required_argument, NULL, OPT_COMMAND_TIMEOUT},
    {"max-handshakes", required_argument, NULL, OPT_MAX_HANDSHAKES},
    {"output-limit", required_argument, NULL, OPT_OUTPUT_LIMIT},
    {"json", no_argument, NULL, OPT_JSON},
    {"progress", no_argument, NULL, OPT_PROGRESS},
    {"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {"print-probe", no_argument, NULL, OPT_PRINT_PROBE},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"driver", required_argument, NULL, OPT_DRIVER},
    {"profile", required_argument, NULL, OPT_PROFILE},
    {"source", required_argument, NULL, OPT_SOURCE},
    {"missing", no_argument, NULL, OPT_MISSING},
    {"kernel", required_argument, NULL, OPT_KERNEL},
    {"force", no_argument, NULL, OPT_FORCE},
    {"retry-failed", no_argument, NULL, OPT_RETRY_FAILED},
    {"builder", required_argument, NULL, OPT_BUILDER},
    {"dir", required_argument, NULL, OPT_DIR},
    {"type", required_argument, NULL, OPT_KEY_TYPE},
    {"cn", required_argument, NULL, OPT_CN},
    {"days", required_argument, NULL, OPT_DAYS},
    {"stages", required_argument, NULL, OPT_STAGES},
    {"canary", required_argument, NULL, OPT_CANARY},
    {"shuffle", no_argument, NULL, OPT_SHUFFLE},
    {"max-fail", required_argument, NULL, OPT_MAX_FAIL},
    {"max-fail-total", required_argument, NULL, OPT_MAX_FAIL_TOTAL},
    {"pause", required_argument, NULL, OPT_PAUSE},
    {"reload", no_argument, NULL, OPT_RELOAD},
    {"auto-rollback", no_argument, NULL, OPT_AUTO_ROLLBACK},
    {"rollback-stage", no_argument, NULL, OPT_ROLLBACK_STAGE},
    {"allow-userspace-mismatch", no_argument, NULL, OPT_ALLOW_MISMATCH},
    {"transfer-forks", required_argument, NULL, OPT_TRANSFER_FORKS},
    {"break-lock", no_argument, NULL, OPT_BREAK_LOCK},
    {"junit", required_argument, NULL, OPT_JUNIT},
    {"to", required_argument, NULL, OPT_TO},
    {"refresh", no_argument, NULL, OPT_REFRESH},
    {"prometheus", required_argument, NULL, OPT_PROMETHEUS},
    {"stale", required_argument, NULL, OPT_STALE},
    {"no-deploy", no_argument, NULL, OPT_NO_DEPLOY},
    {NULL, 0, NULL, 0},
};

static int known_command(const char *c)
{
    static const char *const commands[] = {
        "hosts",    "facts",   "plan",   "build",  "builder", "artifacts", "keys", "deploy",
        "rollback", "rollout", "doctor", "status", "run",     "version",   "help", NULL};
    size_t i;

    for (i = 0; commands[i] != NULL; i++)
        if (strcmp(c, commands[i]) == 0)
            return 1;
    return 0;
}

void coord_usage(FILE *f, const char *command)
{
    if (command != NULL && strcmp(command, "hosts") == 0) {
        fputs("usage: kfleet hosts [-i INVENTORY] [-l PATTERN] [--json]\n"
              "\n"
              "Lists the hosts the pattern selects, with their connection settings and groups.\n"
              "\n"
              "examples:\n"
              "  kfleet hosts -i inventory.yml\n"
              "  kfleet hosts -l 'gpu:&rack1:!gpu007' --json\n",
              f);
        return;
    }
    if (command != NULL && strcmp(command, "plan") == 0) {
        fputs("usage: kfleet plan --driver VERSION [--profile NAME] [-l PATTERN] [--json]\n"
              "\n"
              "From the stored facts (run kfleet facts first), lists the unique builds the\n"
              "fleet needs: one per (profile, driver, kernel, architecture, distro), from every\n"
              "running AND every installed-but-not-running kernel (the next reboot). Each is\n"
              "stored already, to build, or not applicable with the reason. Nodes running the\n"
              "same release with different kernel builds (uname -v) are reported.\n"
              "The profile comes from --config (kfleet.yml); without one, 'nvidia' is the\n"
              "NVIDIA driver's open kernel modules.\n"
              "\n"
              "examples:\n"
              "  kfleet plan --driver 550.54.15\n"
              "  kfleet plan --driver 550.54.15 --profile lustre -l storage --json\n",
              f);
        return;
    }
    if (command != NULL && strcmp(command, "build") == 0) {
        fputs("usage: kfleet build (--missing [-l PATTERN] | --kernel K ...) [--driver VERSION]\n"
              "                    [--profile NAME] [--source PATH] [--force] [--retry-failed]\n"
              "                    [--builder NAME] [--json]\n"
              "\n"
              "Builds each needed (driver, kernel) once in a container on the builders of\n"
              "kfleet.yml, checks every module's vermagic, strips (and signs) the modules, and\n"
              "stores a reproducible package in the artifact store.\n"
              "\n"
              "  --missing       every running and installed kernel of the selected hosts\n"
              "                  (stored facts: run kfleet facts first) that is not stored\n"
              "  --kernel K      this kernel (repeat for more)\n"
              "  --force         rebuild what is already stored\n"
              "  --retry-failed  build keys whose last build failed with the same inputs\n"
              "  --builder NAME  use only this builder\n"
              "  --source PATH   the driver source instead of the profile's\n"
              "\n"
              "Exit: 0 all built or stored, 1 a build failed or was skipped, 2 usage, 3 internal.\n"
              "Logs: STATE/logs/builds/ID-KERNEL.log; Ctrl-C stops the running containers.\n"
              "\n"
              "Examples:\n"
              "  kfleet build --driver 550.54.15 --source NVIDIA-Linux-x86_64-550.54.15.run "
              "--missing\n"
              "  kfleet build --profile lustre --kernel 6.1.0-47-amd64 --force\n",
              f);
        return;
    }
    if (command != NULL && strcmp(command, "artifacts") == 0) {
        fputs("usage: kfleet artifacts [list|show|verify|rm|gc] [--profile P] [--driver V]\n"
              "                        [--kernel K] [--json]\n"
              "\n"
              "  list    the catalog: profile, driver, kernel, size, sha256 (default)\n"
              "  show    catalog entry and metadata.json of each match\n"
              "  verify  re-hash each package, check its modules against its metadata.json\n"
              "          and, with signing configured, each module's signature\n"
              "  rm      remove the matching packages (needs --driver)\n"
              "  gc      remove store files the catalog does not know (interrupted writes)\n"
              "\n"
              "examples:\n"
              "  kfleet artifacts list --driver 550.54.15\n"
              "  kfleet artifacts show --kernel 6.1.0-47-amd64 --json\n"
              "  kfleet artifacts verify\n"
              "  kfleet artifacts rm --driver 535.104.05\n",
              f);
        return;
    }
    if (command != NULL && strcmp(command, "deploy") == 0) {
        fputs("usage: kfleet deploy --driver VERSION [--profile NAME] [-l PATTERN]\n"
              "                     [--stages LIST] [--canary PATTERN] [--shuffle]\n"
              "                     [--max-fail N|P%] [--max-fail-total N|P%]\n"
              "                     [--pause DURATION|manual] [--reload] [--auto-rollback]\n"
              "                     [--rollback-stage] [--allow-userspace-mismatch]\n"
              "                     [-f FORKS] [--transfer-forks N] [--break-lock]\n"
              "                     [--json] [--junit FILE]\n"
              "\n"
              "Puts the stored package of each of a node's kernels (running and installed) on\n"
              "every selected node, in stages, and verifies it. Per node: a preflight check\n"
              "(a package for every kernel, architecture, free space, Secure Boot needs signed\n"
              "modules, the userspace driver, the node's lock), then the package is streamed\n"
              "over SSH (skipped when the node holds it; its sha256 is checked on the node),\n"
              "installed to /lib/modules/K/updates/kfleet, depmod, and with --reload loaded\n"
              "into the running kernel and verified (modules loaded, version, nvidia-smi).\n"
              "The previous release stays on the node for rollback. Every step is journaled in\n"
              "the state database first: `kfleet rollout resume ID` finishes an interrupted\n"
              "rollout. Running it again when the fleet is current changes nothing.\n"
              "\n"
              "  --stages LIST        stage sizes, counts or percentages, the last repeating\n"
              "                       (default 1,10%,100%: a canary, 10%, then the rest)\n"
              "  --canary PATTERN     the nodes of the first stage (default: the first node\n"
              "                       by name, or the first after --shuffle)\n"
              "  --max-fail N|P%      failures allowed per stage before the rollout halts\n"
              "                       (default 0); unreachable and timed-out nodes count\n"
              "  --max-fail-total N|P%  failures allowed over the whole rollout\n"
              "  --pause DURATION     wait between stages (10m); 'manual' stops after each\n"
              "                       stage until kfleet rollout resume ID\n"
              "  --reload             unload the old modules and load the new ones (drain and\n"
              "                       undrain hooks of kfleet.yml run around it); without it\n"
              "                       the modules are installed for the next boot\n"
              "  --auto-rollback      a node that fails is put back to what it had, and\n"
              "                       verified again\n"
              "  --rollback-stage     when a stage halts, roll back every node of that stage\n"
              "  --allow-userspace-mismatch  reload even when the node's userspace driver is\n"
              "                       another version (nvidia-smi would fail until it is updated)\n"
              "  --transfer-forks N   packages sent at once (default deploy.transfer_forks, 16)\n"
              "  --break-lock         take over a node another (dead) deploy left locked\n"
              "  --junit FILE         a JUnit XML report (one testcase per node)\n"
              "\n"
              "Exit: 0 every node updated or already current; 1 some nodes failed or were\n"
              "skipped within the budget; 4 halted (a stage went over its budget); 5 paused or\n"
              "interrupted (resumable); 2 usage or configuration; 3 internal error.\n"
              "Logs: STATE/logs/rollouts/ID/HOST.log. Ctrl-C once: running nodes finish, no new\n"
              "one starts; twice: stop now. Both leave the rollout resumable.\n"
              "\n"
              "examples:\n"
              "  kfleet deploy --driver 550.54.15 --stages 1,5,20%,100% --max-fail 5% --reload\n"
              "  kfleet deploy --driver 550.54.15 -l rack1 --canary gpu001 --auto-rollback\n"
              "  kfleet deploy --driver 550.54.15 --pause manual --junit deploy.xml --json\n",
              f);
        return;
    }
    if (command != NULL && strcmp(command, "rollback") == 0) {
        fputs(
            "usage: kfleet rollback [-l PATTERN] [--profile NAME] [--to VERSION|none] [--reload]\n"
            "                       [-f FORKS] [--break-lock] [--json] [--junit FILE]\n"
            "\n"
            "Puts every kernel of the selected nodes back to its previous kfleet release\n"
            "(kept on the node: no transfer), or to --to VERSION (a release the node holds),\n"
            "or --to none (kfleet's modules removed, the kernel's or distribution's found\n"
            "again). With --reload the modules of the running kernel are reloaded. Each node\n"
            "is verified after. Journaled like a deploy (kfleet rollout list).\n"
            "\n"
            "Exit: 0 all rolled back or nothing to do, 1 some failed, 2 usage, 3 internal.\n"
            "\n"
            "examples:\n"
            "  kfleet rollback -l 'gpu0[01-10]' --reload\n"
            "  kfleet rollback --to 550.54.15 -l rack2\n",
            f);
        return;
    }
    if (command != NULL && strcmp(command, "rollout") == 0) {
        fputs("usage: kfleet rollout list [--json]\n"
              "       kfleet rollout show ID [--json] [-v]\n"
              "       kfleet rollout resume ID [--break-lock] [--json] [--junit FILE]\n"
              "       kfleet rollout abort ID\n"
              "\n"
              "  list    the rollouts, newest first: status, stage, node counts\n"
              "  show    one rollout: stages, nodes by outcome with folded host ranges, errors,\n"
              "          which nodes are at which version\n"
              "  resume  continues a paused, interrupted or halted rollout (also one whose\n"
              "          kfleet was killed): nodes caught mid-step are finished from where the\n"
              "          journal says they were, failed nodes of a halted stage are retried\n"
              "  abort   ends a rollout for good and releases the node locks it holds\n"
              "\n"
              "examples:\n"
              "  kfleet rollout list\n"
              "  kfleet rollout resume 12\n",
              f);
        return;
    }
    if (command != NULL && strcmp(command, "run") == 0) {
        fputs("usage: kfleet run --driver VERSION [--profile NAME] [-l PATTERN] [--no-deploy]\n"
              "                  [deploy options] [--json] [--junit FILE]\n"
              "\n"
              "The weekly job in one command: kfleet facts (every node), plan, build what is\n"
              "missing (every running and installed kernel, once, in containers), then a\n"
              "staged deploy with the deploy options (--stages, --max-fail, --reload, ...),\n"
              "and a summary. A lock in the state directory (STATE/run.lock) keeps two runs\n"
              "from overlapping: the second says who holds it. A run that builds nothing and\n"
              "changes nothing says the fleet is current. --no-deploy builds ahead only: the\n"
              "packages are ready before any node reboots into a new kernel (the safe\n"
              "scheduled default, contrib/systemd/kfleet-rebuild.timer).\n"
              "With --json, each step's report goes to stderr and stdout gets one document.\n"
              "\n"
              "Exit: the worst of the steps: 0 all current, 1 some hosts or builds failed\n"
              "within budget, 4 the rollout halted, 5 paused or interrupted, 2 usage, 3\n"
              "internal, 6 another kfleet run holds the lock.\n"
              "\n"
              "examples:\n"
              "  kfleet run --driver 550.54.15 --no-deploy\n"
              "  kfleet run --driver 550.54.15 --stages 1,10%,100% --max-fail 2% --reload "
              "--junit run.xml\n",
              f);
        return;
    }
    if (command != NULL && strcmp(command, "status") == 0) {
        fputs("usage: kfleet status [--driver VERSION] [--profile NAME] [-l PATTERN] [--refresh]\n"
              "                     [--stale AGE] [--json] [--prometheus FILE] [-v]\n"
              "\n"
              "Where the fleet stands, from the stored facts and rollouts (nothing runs on the\n"
              "nodes unless --refresh gathers facts first). Each host is one of: current (every\n"
              "kernel at the target driver), behind (a kernel or the loaded module at another\n"
              "version, or not managed by kfleet yet), mismatch (loaded module and userspace\n"
              "driver differ), drifted (a running or installed kernel without a driver: the next\n"
              "boot into it loses the GPU; says whether the package is stored), stale (facts\n"
              "older than --stale, default 7d), unreachable (the last facts attempt failed, or\n"
              "never gathered). The target is --driver, else the last finished deploy's driver,\n"
              "else the newest in the store. --prometheus writes a node_exporter textfile\n"
              "(counts per state, a kfleet_node_info line per node) atomically.\n"
              "\n"
              "Exit: 0 every host current, 1 some need attention, 2 usage, 3 internal.\n"
              "\n"
              "examples:\n"
              "  kfleet status --refresh\n"
              "  kfleet status --json | jq '.hosts[] | select(.state == \"drifted\")'\n"
              "  kfleet status --prometheus /var/lib/node_exporter/textfile/kfleet.prom\n",
              f);
        return;
    }
    if (command != NULL && strcmp(command, "doctor") == 0) {
        fputs(
            "usage: kfleet doctor [-l PATTERN] [--driver VERSION] [--profile NAME] [--json] [-v]\n"
            "                     [--print-probe]\n"
            "\n"
            "Read-only diagnosis of every selected node over SSH; each finding has a\n"
            "severity, the evidence seen on the node and the fix: driver/library version\n"
            "mismatch, modules whose vermagic matches no kernel, installed kernels without a\n"
            "driver (the next reboot loses the GPU), nouveau, NVRM errors in the kernel log\n"
            "(BAR1 / invalid PCI I/O region), GPUs bound to vfio-pci, Secure Boot with\n"
            "unsigned modules, unattended upgrades of kernels or drivers.\n"
            "--driver: the version the nodes should run; --profile: the profile whose module\n"
            "every kernel needs (default nvidia). Findings are grouped by severity and code;\n"
            "-v adds each host's.\n"
            "\n"
            "Exit: 0 nothing above info, 1 warnings or critical findings (or hosts that did\n"
            "not answer), 2 usage, 3 internal.\n"
            "\n"
            "examples:\n"
            "  kfleet doctor\n"
            "  kfleet doctor -l gpu017 -v\n"
            "  kfleet doctor --json > doctor.json\n"
            "  kfleet doctor --print-probe   # the command run on each node\n",
            f);
        return;
    }
    if (command != NULL && strcmp(command, "keys") == 0) {
        fputs("usage: kfleet keys new [--dir DIR] [--type rsa|rsa2048|rsa3072|rsa4096|p384]\n"
              "                       [--cn NAME] [--days N]\n"
              "\n"
              "Creates a module signing key and a DER certificate for MOK enrolment in DIR\n"
              "(default STATE/keys) and prints the mokutil --import line to run on nodes.\n"
              "Then set signing: {key: DIR/signing_key.pem, cert: DIR/signing_cert.der} in\n"
              "kfleet.yml: every module built after that is signed.\n"
              "\n"
              "examples:\n"
              "  kfleet keys new --dir /etc/kfleet/keys --cn 'GPU fleet module signing'\n"
              "  kfleet keys new --type p384 --days 3650\n",
              f);
        return;
    }
    if (command != NULL && strcmp(command, "builder") == 0) {
        fputs("usage: kfleet builder image [--builder NAME] [--force]\n"
              "\n"
              "Makes the Debian 12 base image on every builder of kfleet.yml (debootstrap from\n"
              "the builder's own apt sources; no registry). kfleet build does this itself\n"
              "when an image is missing; kernel header layers are made per kernel on first use.\n"
              "Where a registry is reachable, contrib/builder/Containerfile.debian12 makes the\n"
              "same image.\n"
              "\n"
              "examples:\n"
              "  kfleet builder image\n"
              "  kfleet builder image --builder big --force\n",
              f);
        return;
    }
    if (command != NULL && strcmp(command, "facts") == 0) {
        fputs(
            "usage: kfleet facts [-i INVENTORY] [-l PATTERN] [-f FORKS] [--json] [--print-probe]\n"
            "                    [options]\n"
            "\n"
            "Gathers every selected node's facts over SSH, in parallel, with ONE remote\n"
            "command per node: running and installed kernels, architecture, OS, NVIDIA GPUs,\n"
            "loaded and userspace driver versions, Secure Boot state, what kfleet installed.\n"
            "Facts are stored in the state database; the report groups hosts by kernel and\n"
            "failed hosts by reason.\n"
            "\n"
            "examples:\n"
            "  kfleet facts -i inventory.yml\n"
            "  kfleet facts -l 'gpu*' --forks 200 --json > facts.json\n"
            "  kfleet facts --accept-new-hostkeys     # first contact: record host keys\n"
            "  kfleet facts --print-probe             # show the command run on each node\n"
            "\n"
            "exit status: 0 every host answered, 1 some hosts failed, 2 usage or\n"
            "configuration error, 3 internal error (e.g. state database).\n",
            f);
        return;
    }
    fputs("usage: kfleet [OPTIONS] COMMAND [OPTIONS]\n"
          "\n"
          "Builds out-of-tree kernel modules (the NVIDIA driver first) once per kernel in a\n"
          "GPU fleet and deploys them over SSH.\n"
          "\n"
          "commands:\n"
          "  hosts        list the hosts an inventory pattern selects\n"
          "  facts        gather kernels, OS, GPUs and driver versions from every node\n"
          "  plan         list the builds the fleet needs (from stored facts)\n"
          "  build        build what is missing, in containers on the builders\n"
          "  artifacts    list, show, verify, rm, gc the artifact store\n"
          "  builder      builder image: prepare the builders' base image\n"
          "  deploy       install the stored packages on the nodes, in staged rollouts\n"
          "  rollback     put nodes back to their previous release\n"
          "  rollout      list, show, resume, abort rollouts\n"
          "  doctor       diagnose driver problems on the nodes (read-only)\n"
          "  status       where the fleet stands: current, behind, drifted, unreachable\n"
          "  run          facts, plan, build what is missing, staged deploy (the weekly job)\n"
          "  keys         keys new: a module signing key and MOK certificate\n"
          "  version      print the version\n"
          "  help [CMD]   this text, or a command's\n"
          "\n"
          "options:\n"
          "  -i, --inventory FILE     Ansible YAML inventory (default: $KFLEET_INVENTORY,\n"
          "                           else ./inventory.yml)\n"
          "  -l, --limit PATTERN      host pattern: group, host, glob 'gpu0*', '~regex',\n"
          "                           union 'a:b' or 'a,b', intersection ':&b', exclusion ':!b'\n"
          "  -f, --forks N            SSH sessions at once (default 64)\n"
          "      --max-handshakes N   SSH handshakes in flight (default 32)\n"
          "      --config FILE        kfleet.yml: build profiles, builders, store\n"
          "                           (default $KFLEET_CONFIG, else ./kfleet.yml; optional)\n"
          "      --driver VERSION     driver version to plan, build or deploy\n"
          "      --profile NAME       build profile from the config (default nvidia)\n"
          "      --state DIR          state directory (default /var/lib/kfleet for root,\n"
          "                           else $XDG_STATE_HOME/kfleet)\n"
          "      --known-hosts FILE   known_hosts file (default ~/.ssh/known_hosts)\n"
          "      --accept-new-hostkeys  record unknown host keys (a changed key always fails)\n"
          "      --ssh-config FILE    ssh config for Host aliases (default ~/.ssh/config;\n"
          "                           'none' for no file)\n"
          "      --connect-timeout T  name lookup + TCP connect (default 10s)\n"
          "      --auth-timeout T     SSH handshake + authentication (default 20s)\n"
          "      --command-timeout T  remote command (default 60s)\n"
          "      --output-limit BYTES stdout kept per host; more cuts the command (default 1M)\n"
          "      --json               machine-readable output on stdout\n"
          "      --progress, --no-progress  live progress line (default: when stderr is a TTY)\n"
          "  -v, --verbose            debug logging; all failure details\n"
          "  -h, --help               help; 'kfleet help facts' for a command\n"
          "      --version            print the version\n"
          "\n"
          "Timeouts take a unit: 500ms, 10s, 2m (seconds without one). --pause takes\n"
          "30s, 10m or 1h (or manual), status --stale 7d, 12h or 30m (days without one).\n",
          f);
}

/* "10", "10s", "500ms", "2m" -> milliseconds; 0 and garbage are errors. */
static int parse_duration(const char *s, unsigned *ms)
{
    char *end;
    double v = strtod(s, &end);
    double mult = 1000;

    if (end == s || v <= 0)
        return -1;
    if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "s") == 0 || *end == '\0')
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else
        return -1;
    if (v * mult > 86400000.0 || v * mult < 1)
        return -1;
    *ms = (unsigned)(v * mult);
    return 0;
}

static int parse_uint(const char *s, unsigned min, unsigned max, unsigned *out)
{
    char *end;
    unsigned long v;

    if (*s == '-' || *s == '\0')
        return -1;
    v = strtoul(s, &end, 10);
    if (*end != '\0' || v < min || v > max)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    unsigned long long v;

    if (*s == '-' || *s == '\0')
        return -1;
    v = strtoull(s, &end, 10);
    if (*end == 'K' || *end == 'k')
        v *= 1024, end++;
    else if (*end == 'M' || *end == 'm')
        v *= 1024 * 1024, end++;
    if (*end != '\0' || v < 1024 || v > 1024ULL * 1024 * 1024)
        return -1;
    *out = (size_t)v;
    return 0;
}

int coord_parse_args(int argc, char **argv, struct coord_opts *o)
{
    const char *env;
    int c, want_help = 0;

    memset(o, 0, sizeof(*o));
    o->forks = 64;
    o->progress = -1;
    env = getenv("KFLEET_INVENTORY");
    o->inventory = env && *env ? env : "inventory.yml";
    o->inventory_given = env && *env;
    env = getenv("KFLEET_CONFIG");
    o->config = env && *env ? env : "kfleet.yml";
    o->config_given = env && *env;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":i:l:f:vh", long_opts, NULL)) != -1) {
        const char *bad = NULL;
        switch (c) {
        case 'i':
            o->inventory = optarg;
            o->inventory_given = 1;
            break;
        case 'l':
            o->limit = optarg;
            break;
        case 'f':
            if (parse_uint(optarg, 1, 100000, &o->forks) < 0)
                bad = "--forks takes a number from 1 to 100000";
            break;
        case OPT_STATE:
            o->state_dir = optarg;
            break;
        case OPT_KNOWN_HOSTS:
            o->known_hosts = optarg;
            break;
        case OPT_ACCEPT_NEW:
            o->accept_new_hostkeys = 1;
            break;
        case OPT_SSH_CONFIG:
            o->ssh_config = optarg;
            break;
        case OPT_CONNECT_TIMEOUT:
            if (parse_duration(optarg, &o->connect_timeout_ms) < 0)
                bad = "--connect-timeout takes a duration like 10s or 500ms";
            break;
        case OPT_AUTH_TIMEOUT:
            if (parse_duration(optarg, &o->auth_timeout_ms) < 0)
                bad = "--auth-timeout takes a duration like 20s";
            break;
        case OPT_COMMAND_TIMEOUT:
            if (parse_duration(optarg, &o->command_timeout_ms) < 0)
                bad = "--command-timeout takes a duration like 60s or 2m";
            break;
        case OPT_MAX_HANDSHAKES:
            if (parse_uint(optarg, 1, 10000, &o->max_handshakes) < 0)
                bad = "--max-handshakes takes a number from 1 to 10000";
            break;
        case OPT_OUTPUT_LIMIT:
            if (parse_size(optarg, &o->output_limit) < 0)
                bad = "--output-limit takes a size from 1K to 1024M, like 256K or 4M";
            break;
        case OPT_JSON:
            o->json = 1;
            break;
        case OPT_CONFIG:
            o->config = optarg;
            o->config_given = 1;
            break;
        case OPT_STAGES:
            o->stages = optarg;
            break;
        case OPT_CANARY:
            o->canary = optarg;
            break;
        case OPT_SHUFFLE:
            o->shuffle = 1;
            break;
        case OPT_MAX_FAIL:
            o->max_fail = optarg;
            break;
        case OPT_MAX_FAIL_TOTAL:
            o->max_fail_total = optarg;
            break;
        case OPT_PAUSE:
            o->pause = optarg;
            break;
        case OPT_RELOAD:
            o->reload = 1;
            break;
        case OPT_AUTO_ROLLBACK:
            o->auto_rollback = 1;
            break;
        case OPT_ROLLBACK_STAGE:
            o->rollback_stage = 1;
            break;
        case OPT_ALLOW_MISMATCH:
            o->allow_userspace_mismatch = 1;
            break;
        case OPT_TRANSFER_FORKS:
            if (parse_uint(optarg, 1, 10000, &o->transfer_forks) < 0)
                bad = "--transfer-forks takes a number from 1 to 10000";
            break;
        case OPT_BREAK_LOCK:
            o->break_lock = 1;
            break;
        case OPT_JUNIT:
            o->junit = optarg;
            break;
        case OPT_REFRESH:
            o->refresh = 1;
            break;
        case OPT_PROMETHEUS:
            o->prometheus = optarg;
            break;
        case OPT_STALE:
            o->stale = optarg;
            break;
        case OPT_NO_DEPLOY:
            o->no_deploy = 1;
            break;
        case OPT_TO:
            if (strcmp(optarg, "none") != 0 && !kf_driver_version_valid(optarg))
                bad = "--to takes a driver version like 550.54.15, or none";
            o->to = optarg;
            break;
        case OPT_DRIVER:
            if (!kf_driver_version_valid(optarg))
                bad = "--driver takes a driver version like 550.54.15";
            o->driver = optarg;
            break;
        case OPT_PROFILE:
            o->profile = optarg;
            break;
        case OPT_SOURCE:
            o->source = optarg;
            break;
        case OPT_MISSING:
            o->missing = 1;
            break;
        case OPT_KERNEL:
            if (!kf_krel_valid(optarg))
                bad = "--kernel takes a kernel release like 6.1.0-47-amd64";
            else if (o->nkernels == sizeof(o->kernels) / sizeof(o->kernels[0]))
                bad = "at most 64 --kernel options";
            else
                o->kernels[o->nkernels++] = optarg;
            break;
        case OPT_FORCE:
            o->force = 1;
            break;
        case OPT_RETRY_FAILED:
            o->retry_failed = 1;
            break;
        case OPT_BUILDER:
            o->builder = optarg;
            break;
        case OPT_DIR:
            o->dir = optarg;
            break;
        case OPT_KEY_TYPE:
            o->key_type = optarg;
            break;
        case OPT_CN:
            o->cn = optarg;
            break;
        case OPT_DAYS:
            if (parse_uint(optarg, 1, 36500, &o->days) < 0)
                bad = "--days takes a number of days from 1 to 36500";
            break;
        case OPT_PRINT_PROBE:
            o->print_probe = 1;
            break;
        case OPT_PROGRESS:
            o->progress = 1;
            break;
        case OPT_NO_PROGRESS:
            o->progress = 0;
            break;
        case 'v':
            o->verbose++;
            break;
        case 'h':
            want_help = 1; /* after the loop: the command word is known then */
            break;
        case OPT_VERSION:
            printf("kfleet %s\n", KF_VERSION);
            return -1;
        case ':':
            fprintf(stderr, "kfleet: option '%s' needs a value (see kfleet --help)\n",
                    argv[optind - 1]);
            return KF_EXIT_USAGE;
        default:
            fprintf(stderr, "kfleet: unknown option '%s' (see kfleet --help)\n", argv[optind - 1]);
            return KF_EXIT_USAGE;
        }
        if (bad != NULL) {
            fprintf(stderr, "kfleet: bad value '%s': %s\n", optarg, bad);
            return KF_EXIT_USAGE;
        }
    }
    if (want_help) {
        if (optind < argc && !known_command(argv[optind])) {
            fprintf(stderr, "kfleet: no command '%s' (see kfleet --help)\n", argv[optind]);
            return KF_EXIT_USAGE;
        }
        coord_usage(stdout, optind < argc ? argv[optind] : NULL);
        return -1;
    }
    if (optind >= argc) {
        coord_usage(stderr, NULL);
        return KF_EXIT_USAGE;
    }
    o->command = argv[optind++];
    if (strcmp(o->command, "help") == 0) {
        if (optind < argc && !known_command(argv[optind])) {
            fprintf(stderr, "kfleet: no command '%s' (see kfleet --help)\n", argv[optind]);
            return KF_EXIT_USAGE;
        }
        coord_usage(stdout, optind < argc ? argv[optind] : NULL);
        return -1;
    }
    /* Words after the command (getopt_long moved options before them):
     * "artifacts list", "keys new". Commands without any refuse them. */
    o->args = argv + optind;
    o->nargs = (size_t)(argc - optind);
    if (o->nargs > 0 && strcmp(o->command, "artifacts") != 0 && strcmp(o->command, "keys") != 0 &&
        strcmp(o->command, "builder") != 0 && strcmp(o->command, "rollout") != 0) {
        fprintf(stderr, "kfleet: unexpected argument '%s' (see kfleet help %s)\n", argv[optind],
                o->command);
        return KF_EXIT_USAGE;
    }
    if (o->command_timeout_ms == 0)
        o->command_timeout_ms = 60000;
    return 0;
}
