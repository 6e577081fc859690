#!/usr/bin/env bash
# README command (1): installs kfleet's dependencies, builds it, starts the
# built-in demo fleet and runs the main job on it, step by step:
#
#   24 real sshd nodes on 127.0.0.1 (each in its own mount namespace with
#   its own /lib/modules, /boot, /sys/module, OS and GPUs) on three real
#   Debian kernels: 6.1.0-47-amd64 and 6.12.117+deb12-amd64 running, and
#   6.1.0-50-amd64 installed but not running on every third node (their
#   next reboot). Two nodes are broken on purpose: one unreachable, one
#   whose host key changed. On node013 the new modules fail to load.
#
#   kfleet facts -> plan -> build --missing (podman, once per kernel) ->
#   build again (nothing to do) -> a staged deploy with --reload and
#   --auto-rollback (node013 fails and is rolled back) -> kfleet status ->
#   kfleet doctor (a BAR1 error, nouveau, a driver/library mismatch seeded on
#   three nodes) -> kfleet run --no-deploy (the weekly job: nothing to do)
#
# The fleet is stopped again when the demo ends.
#
#   contrib/demo.sh [--keep]     --keep leaves the fleet running in .demo/
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
keep=0
[ "${1:-}" = "--keep" ] && keep=1

if [ "$(id -u)" != 0 ]; then
	echo "demo.sh: the demo fleet runs sshd nodes in mount namespaces and podman builds: run as root (sudo)" >&2
	exit 2
fi
t0=$(date +%s)
step() { printf '\n\033[1m==> [%3ss] %s\033[0m\n' "$(($(date +%s) - t0))" "$*"; }
# run CMD...: runs a kfleet command, shows its exit status (kfleet's exit
# statuses say what happened: 1 = some hosts failed, 4 = halted, ...).
run() {
	local rc=0
	"$@" || rc=$?
	printf '(exit status %s)\n' "$rc"
}

step "installing dependencies (Debian packages)"
contrib/install-deps.sh
step "building kfleet"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target kfleet
kfleet=$here/build/kfleet

demo=$here/.demo
fleet=$demo/fleet
tests/fleet/testfleet.sh down --dir "$fleet" >/dev/null 2>&1 || true
if [ "$keep" = 0 ]; then
	trap 'tests/fleet/testfleet.sh down --dir "$fleet" >/dev/null 2>&1 || true' EXIT
fi
rm -rf "$demo/state"
mkdir -p "$demo"
K1=6.1.0-47-amd64
K2=6.12.117+deb12-amd64
K3=6.1.0-50-amd64
{
	for i in $(seq 1 22); do
		if ((i % 2)); then k=$K1; else k=$K2; fi
		inst=$k
		((i % 3 == 0)) && inst="$k,$K3"
		extra=""
		# What kfleet doctor finds: node013's new module fails to load,
		# node019 runs nouveau, node021's NVIDIA module and userspace library
		# differ (node017 gets an NVRM BAR1 error in its kernel log below).
		[ "$i" = 13 ] && extra="modprobe_fail=kfleet_drm"
		[ "$i" = 19 ] && extra="nouveau=loaded pci_driver=nouveau"
		[ "$i" = 21 ] && extra="driver=550.54.15 userspace=550.40.07"
		printf 'node%03d kernel=%s installed=%s os=debian:12 gpus=%d %s\n' \
			"$i" "$k" "$inst" $((i % 4 + 1)) "$extra"
	done
	echo "node023 kernel=$K1 os=debian:12 gpus=2 fault=unreachable"
	echo "node024 kernel=$K2 os=debian:12 gpus=2 fault=hostkey"
} >"$demo/spec"
step "starting the demo fleet: 24 sshd nodes, kernels $K1 and $K2 running, $K3 installed on every third"
tests/fleet/testfleet.sh up --dir "$fleet" --spec "$demo/spec" --base-port 23000
cat >"$fleet/nodes/node017/fs/usr/local/etc/testnode.dmesg" <<'EOF'
[    4.120183] nvidia: loading out-of-tree module taints kernel.
[    4.133521] NVRM: This PCI I/O region assigned to your NVIDIA device is invalid:
[    4.133522] NVRM: BAR1 is 0M @ 0x0 (PCI:0000:1b:00.0)
[    4.133530] nvidia: probe of 0000:1b:00.0 failed with error -1
EOF

# The driver: the fixture module set (four modules, one exporting symbols
# the others use, packaged for DKMS, version 1.0.0) stands in for the NVIDIA
# driver, whose source cannot be downloaded here. Podman needs runc and
# explicit ulimits on hosts with hybrid cgroups: configuration, not code.
cat >"$demo/kfleet.yml" <<EOF
container:
  run_args: [--runtime, runc, --ulimit, "nofile=1024:1024", --ulimit, "nproc=4096:4096"]
builders:
  - {name: local, host: local, slots: 2}
profiles:
  demo-driver:
    type: kmod
    source: $here/tests/fixtures/kmod/kfleet-test-driver
    stub_threshold: 1024
EOF
k=("$kfleet" -i "$fleet/inventory.yml" --known-hosts "$fleet/known_hosts" --ssh-config none
	--state "$demo/state" --config "$demo/kfleet.yml")

step "kfleet hosts -l 'debian:!node00*'   (the Ansible inventory, Ansible host patterns)"
run "${k[@]}" hosts -l 'debian:!node00*'
step "kfleet facts   (one SSH command per node, all nodes at once)"
run "${k[@]}" facts
step "kfleet plan --driver 1.0.0   (every running AND installed kernel, once)"
run "${k[@]}" plan --driver 1.0.0
step "kfleet build --missing   (one podman build per kernel; the first run makes the builder images)"
run "${k[@]}" build --missing
step "kfleet build --missing   (again: everything is stored, nothing is built)"
run "${k[@]}" build --missing
step "kfleet artifacts list"
run "${k[@]}" artifacts list
step "kfleet deploy: stages 1,5,50%,100%, --max-fail 1, --reload, --auto-rollback (the two broken nodes left out with -l)"
echo "node013's modprobe refuses the new kfleet_drm (its testnode.conf says modprobe_fail=kfleet_drm):"
echo "it fails verification, is rolled back to what it had, and the rollout goes on within its budget."
run "${k[@]}" deploy --driver 1.0.0 -l 'all:!node023:!node024' --stages 1,5,50%,100% \
	--max-fail 1 --reload --auto-rollback --junit "$demo/deploy.xml"
step "kfleet status --refresh   (facts again, then where every node stands)"
run "${k[@]}" status --refresh
step "kfleet doctor   (read-only diagnosis: evidence and the fix for each finding)"
run "${k[@]}" doctor -l 'all:!node023:!node024'
step "kfleet run --driver 1.0.0 --no-deploy   (the weekly job, as the systemd timer runs it)"
run "${k[@]}" run --driver 1.0.0 --no-deploy -l 'all:!node023:!node024'
step "done in $(($(date +%s) - t0)) s"
echo "Artifact store: $demo/state/store   (index.json, PROFILE/DRIVER/kernel-KERNEL/*.tar.gz)"
echo "Rollout logs:   $demo/state/logs/rollouts/   JUnit: $demo/deploy.xml"
echo "State database: $demo/state/state.db   (kfleet rollout list; kfleet rollout show 1)"
if [ "$keep" = 1 ]; then
	echo "The fleet is still running; stop it with: tests/fleet/testfleet.sh down --dir $fleet"
fi
