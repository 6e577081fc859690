#!/usr/bin/env bash
# Deploying one package to a 100-node local fleet, in one run, three ways,
# each doing the same work on every node: send the package, check its
# sha256, unpack it, run its install.sh (modules into updates/kfleet,
# depmod) and load the modules:
#   kfleet deploy --stages 100% --reload        (one libuv loop, libssh, node.sh)
#   ansible-playbook -f 50: copy, unarchive, command sh install.sh --load
#   parallel-scp + parallel-ssh: sha256sum -c, tar -xzf, sh install.sh --load
# and, as the floor no tool can go below here, the pssh script's node-side
# work with no SSH at all: the package copied into each node's tree and the
# same commands run inside the node's mount namespace (nsenter), 100 at once.
# The 100 nodes share this host's cores and disk, so for the 50 MiB package
# that floor, not the tools, sets most of the wall time.
# for two packages: the fixture module set as built (about 10 KiB) and the
# same set carrying 50 MiB of incompressible data in kfleet_core (twice a
# stripped NVIDIA package), so transfers weigh as they do for real.
# For the small package, the same deploy again, with nothing to do (kfleet
# and Ansible check and change nothing; the pssh script has no such check
# and redoes it). Between runs the nodes are reset to nothing (their trees
# on the host). kfleet and pssh run --runs times, Ansible --ansible-runs
# times (it takes minutes a run: the median of one is what it is).
# Last, the fleet grows to --big-nodes nodes and kfleet deploys the 50 MiB
# package once more, for its peak RSS there. 500 nodes holding the package,
# its unpacked release and the installed modules would need 75 GB of disk
# here, so while that deploy runs the harness deletes each node's release
# and installed modules once the node's log says it ended (the node's
# state and /sys/module, which the check reads, stay).
#
#   sudo bench/bench_deploy.sh [--nodes 100] [--runs 3] [--ansible-runs 1] [--big-nodes 500]
#                              [--tools kfleet,ansible,pssh,floor]
# (--big-nodes 0 skips the last part; --tools picks what runs at --nodes.)
# Writes bench/out/deploy-*.txt and prints Markdown tables for RESULTS.md.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
NODES=100
RUNS=3
ARUNS=1
BIG_NODES=500
TOOLS=kfleet,ansible,pssh,floor
while [ $# -gt 0 ]; do
	case "$1" in
	--nodes) NODES=$2; shift 2 ;;
	--runs) RUNS=$2; shift 2 ;;
	--ansible-runs) ARUNS=$2; shift 2 ;;
	--big-nodes) BIG_NODES=$2; shift 2 ;;
	--tools) TOOLS=$2; shift 2 ;;
	*) echo "usage: $0 [--nodes N] [--runs N] [--ansible-runs N] [--big-nodes N] [--tools LIST]" >&2; exit 2 ;;
	esac
done
for t in ${TOOLS//,/ }; do
	case $t in kfleet | ansible | pssh | floor) ;; *) echo "bench: unknown tool '$t' in --tools" >&2; exit 2 ;; esac
done
want() { [[ ,$TOOLS, == *,$1,* ]]; }
[ "$(id -u)" = 0 ] || { echo "bench: needs root (rootful podman, test fleet)" >&2; exit 2; }

contrib/install-deps.sh --bench >/dev/null
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DKF_TESTS=OFF >/dev/null
cmake --build build-bench -j"$(nproc)" --target kfleet >/dev/null
KFLEET=$here/build-bench/kfleet
out=$here/bench/out
mkdir -p "$out"
rm -f "$out"/deploy-*
work=$(mktemp -d /var/tmp/kfleet-bench-deploy.XXXXXX)
fleet=$work/fleet
cleanup() {
	tests/fleet/testfleet.sh down --dir "$fleet" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

K=6.1.0-47-amd64
spec() { # spec N: a fleet of N nodes on one kernel
	local i
	for i in $(seq 1 "$1"); do
		printf 'node%03d kernel=%s os=debian:12 gpus=1\n' "$i" "$K"
	done >"$work/spec"
}
spec "$NODES"
tests/fleet/testfleet.sh up --dir "$fleet" --spec "$work/spec" --base-port 27500 >/dev/null
key=$fleet/id_ed25519
kh=$fleet/known_hosts

# The two sources: the fixture as it is, and the fixture with 50 MiB of
# random bytes in kfleet_core (an assembler file that .incbin's them).
cp -R tests/fixtures/kmod/kfleet-test-driver "$work/src-small"
cp -R tests/fixtures/kmod/kfleet-test-driver "$work/src-big"
sed -i 's/^PACKAGE_VERSION=.*/PACKAGE_VERSION="2.0.0"/' "$work/src-big/dkms.conf"
head -c $((50 * 1024 * 1024)) /dev/urandom >"$work/src-big/kfleet-core/pad.bin"
cat >"$work/src-big/kfleet-core/pad.S" <<'EOF'
/* 50 MiB of incompressible data: twice a stripped NVIDIA package. */
	.section .rodata.kfleet_pad, "a"
	.incbin "pad.bin"
EOF
# shellcheck disable=SC2016 # $(src) is Kbuild's, not the shell's
sed -i 's|^kfleet_core-y := kfleet-core/core-main.o kfleet-core/core-ref.o|kfleet_core-y := kfleet-core/core-main.o kfleet-core/core-ref.o kfleet-core/pad.o\nasflags-y += -I$(src)/kfleet-core|' \
	"$work/src-big/Kbuild"
grep -q 'pad.o' "$work/src-big/Kbuild" || { echo "bench: could not add the padding to the Kbuild" >&2; exit 1; }
cat >"$work/kfleet.yml" <<EOF
container:
  run_args: [--runtime, runc, --ulimit, "nofile=1024:1024", --ulimit, "nproc=4096:4096"]
builders:
  - {name: local, host: local, slots: 1}
deploy:
  transfer_forks: 32
profiles:
  bench:
    type: kmod
    source: $work/src-small
    stub_threshold: 1024
EOF
KFL=("$KFLEET" -i "$fleet/inventory.yml" --known-hosts "$kh" --ssh-config none --state "$work/state"
	--config "$work/kfleet.yml")
kfl() { "${KFL[@]}" "$@"; }
kfl_deploy() { # kfl_deploy NAME DRIVER: the measured kfleet deploy to every node
	measure "$1" "${KFL[@]}" deploy --profile bench --driver "$2" --stages 100% --forks "$NODES" \
		--reload --no-progress
}
kfl facts --no-progress >/dev/null
kfl build --profile bench --missing >"$out/deploy-build-small.txt" 2>&1
kfl build --profile bench --source "$work/src-big" --missing >"$out/deploy-build-big.txt" 2>&1
pkg_small=$(kfl artifacts list --json --driver 1.0.0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["path"])')
pkg_big=$(kfl artifacts list --json --driver 2.0.0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["path"])')

awk '!/^#/ {print "root@127.0.0.1:" $2}' "$fleet/nodes.tsv" >"$work/pssh-hosts"
export ANSIBLE_HOST_KEY_CHECKING=True ANSIBLE_SSH_ARGS="-o UserKnownHostsFile=$kh -o ControlMaster=no"
export ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 ANSIBLE_LOCAL_TEMP=$work/ansible-tmp
PSSH_SSH="-i $key -o UserKnownHostsFile=$kh -o StrictHostKeyChecking=yes -o BatchMode=yes"

# reset: every node back to nothing kfleet, Ansible or pssh put there.
reset() {
	local d
	for d in "$fleet"/nodes/*/fs; do
		rm -rf "$d/var/lib/kfleet" "$d/var/lib/bench" "$d/lib/modules/$K/updates" \
			"$d"/sys/module/kfleet_*
	done
}

# measure NAME CMD...: appends "name wall user sys maxrss_kb" to $work/times.
: >"$work/times"
measure() {
	local name=$1
	shift
	/usr/bin/time -f "$name %e %U %S %M" -a -o "$work/times" "$@" >"$out/deploy-$name.txt" 2>&1 || {
		echo "bench: $name failed; see $out/deploy-$name.txt" >&2
		tail -5 "$out/deploy-$name.txt" >&2
		exit 1
	}
}

# check DRIVER: every node has the package's modules loaded at DRIVER.
check() {
	local n bad=0
	for n in "$fleet"/nodes/*/fs; do
		[ "$(cat "$n/sys/module/kfleet_core/version" 2>/dev/null)" = "$1" ] || bad=$((bad + 1))
	done
	[ "$bad" = 0 ] || { echo "bench: $bad nodes not at $1 after $2" >&2; exit 1; }
}

playbook() { # playbook PKG TOPDIR
	cat >"$work/deploy.yml" <<EOF
- hosts: all
  gather_facts: false
  tasks:
    - file: {path: /var/lib/bench/rel, state: directory}
    - copy: {src: "$1", dest: /var/lib/bench/pkg.tar.gz}
    - unarchive: {src: /var/lib/bench/pkg.tar.gz, dest: /var/lib/bench/rel, remote_src: true}
    - command: sh /var/lib/bench/rel/$2/install.sh --load
      register: r
      changed_when: "'already' not in r.stdout"
EOF
}

pssh_deploy() { # pssh_deploy NAME PKG TOPDIR
	local sum
	sum=$(sha256sum <"$2" | cut -c1-64)
	measure "$1" sh -c "parallel-ssh -h '$work/pssh-hosts' -p $NODES -t 300 -x '$PSSH_SSH' 'mkdir -p /var/lib/bench/rel' >/dev/null &&
		parallel-scp -h '$work/pssh-hosts' -p $NODES -t 300 -x '$PSSH_SSH' '$2' /var/lib/bench/pkg.tar.gz &&
		parallel-ssh -h '$work/pssh-hosts' -p $NODES -t 300 -x '$PSSH_SSH' \
		'echo $sum\ \ /var/lib/bench/pkg.tar.gz | sha256sum -c --quiet && tar -xzf /var/lib/bench/pkg.tar.gz -C /var/lib/bench/rel && sh /var/lib/bench/rel/$3/install.sh --load'"
}

# floor_deploy NAME PKG TOPDIR: pssh_deploy's node-side commands, no SSH.
cat >"$work/floor-node.sh" <<'EOF'
# floor-node.sh NODEDIR PKG SUM TOPDIR: one node's share of the floor.
pid=$(cat "$1/pid") || exit 1
nsenter -t "$pid" -m env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	sh -c 'mkdir -p /var/lib/bench/rel && cat >/var/lib/bench/pkg.tar.gz &&
		echo "$1  /var/lib/bench/pkg.tar.gz" | sha256sum -c --quiet &&
		tar -xzf /var/lib/bench/pkg.tar.gz -C /var/lib/bench/rel &&
		sh "/var/lib/bench/rel/$2/install.sh" --load >/dev/null' floor "$3" "$4" <"$2"
EOF
floor_deploy() {
	local sum
	sum=$(sha256sum <"$2" | cut -c1-64)
	measure "$1" sh -c "awk '!/^#/ {print \"$fleet/nodes/\" \$1}' '$fleet/nodes.tsv' |
		xargs -P $NODES -I{} sh '$work/floor-node.sh' {} '$2' $sum '$3'"
}

for size in small big; do
	if [ $size = small ]; then pkg=$pkg_small drv=1.0.0; else pkg=$pkg_big drv=2.0.0; fi
	top=$(tar -tzf "$pkg" | awk -F/ 'NR == 1 { print $1 }')
	playbook "$pkg" "$top"
	for run in $(seq "$RUNS"); do
		if want kfleet; then
			reset
			kfl_deploy "kfleet-$size" $drv
			check $drv "kfleet $size"
			[ $size = big ] || kfl_deploy "kfleet-$size-again" $drv
		fi
		if want ansible && [ "$run" -le "$ARUNS" ]; then
			reset
			measure "ansible-$size" ansible-playbook -i "$fleet/inventory.yml" -f 50 "$work/deploy.yml"
			check $drv "ansible $size"
			[ $size = big ] || measure "ansible-$size-again" ansible-playbook -i "$fleet/inventory.yml" -f 50 "$work/deploy.yml"
		fi
		if want pssh; then
			reset
			pssh_deploy "pssh-$size" "$pkg" "$top"
			check $drv "pssh $size"
		fi
		if want floor; then
			reset
			floor_deploy "floor-$size" "$pkg" "$top"
			check $drv "floor $size"
		fi
		echo "bench: $size package, run $run of $RUNS done" >&2
	done
done
reset

# The fleet at --big-nodes: facts, then the 50 MiB package to every node,
# the harness cleaning behind kfleet as the header says.
if want kfleet && [ "$BIG_NODES" -gt 0 ]; then
	tests/fleet/testfleet.sh down --dir "$fleet" >/dev/null
	spec "$BIG_NODES"
	tests/fleet/testfleet.sh up --dir "$fleet" --spec "$work/spec" --base-port 27500 >/dev/null
	measure "kfleet-facts-$BIG_NODES" "${KFL[@]}" facts --no-progress
	clean_behind() { # clean_behind LOGDIR-PARENT: until $work/stop-cleaning exists
		local d f h
		mkdir -p "$work/cleaned"
		while :; do
			for d in "$1"/*/; do
				[ -d "$d" ] || continue
				for f in "$d"*.log; do
					[ -f "$f" ] || continue
					h=$(basename "$f" .log)
					[ -e "$work/cleaned/$h" ] && continue
					grep -q 'end: ' "$f" || continue
					rm -rf "$fleet/nodes/$h/fs/var/lib/kfleet/releases" "$fleet/nodes/$h/fs/lib/modules/$K/updates"
					touch "$work/cleaned/$h"
				done
			done
			[ -e "$work/stop-cleaning" ] && return 0
			sleep 1
		done
	}
	# Only this deploy's logs: the earlier ones name nodes that ended long ago.
	mv "$work/state/logs/rollouts" "$work/state/logs/rollouts-$NODES"
	mkdir -p "$work/state/logs/rollouts"
	clean_behind "$work/state/logs/rollouts" &
	cleaner=$!
	kfl_deploy "kfleet-big-$BIG_NODES" 2.0.0
	touch "$work/stop-cleaning"
	wait "$cleaner"
	check 2.0.0 "kfleet big at $BIG_NODES nodes"
	grep -q "$BIG_NODES updated" "$out/deploy-kfleet-big-$BIG_NODES.txt" ||
		{ echo "bench: kfleet did not update all $BIG_NODES nodes" >&2; exit 1; }
fi
if want kfleet; then
	grep -q "nothing to do: all $NODES nodes are at" "$out/deploy-kfleet-small-again.txt" ||
		{ echo "bench: kfleet's second deploy was not a no-op" >&2; exit 1; }
fi
size_small=$(stat -c %s "$pkg_small")
size_big=$(stat -c %s "$pkg_big")
cp "$work/times" "$out/deploy-times.txt"

python3 - "$work/times" "$NODES" "$size_small" "$size_big" "$RUNS" "$ARUNS" "$BIG_NODES" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 5:
        rows[p[0]].append((float(p[1]), float(p[2]) + float(p[3]), int(p[4])))
nodes, small, big = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
runs, aruns, bign = sys.argv[5], sys.argv[6], sys.argv[7]
def med(name, i):
    return statistics.median(r[i] for r in rows[name])
def rng(name):
    w = [r[0] for r in rows[name]]
    return f"{min(w):.1f}-{max(w):.1f}" if len(w) > 1 else "-"
def n_of(name):
    return len(rows[name])
for size, b in (("small", small), ("big", big)):
    print(f"\n### Package of {b / 1048576:.2f} MiB to {nodes} nodes\n")
    print("| tool | runs | wall s (median) | wall range | client CPU s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for t in ("kfleet", "ansible", "pssh", "floor"):
        for n in (f"{t}-{size}", f"{t}-{size}-again"):
            if n not in rows:
                continue
            label = t + (" again (no-op)" if n.endswith("again") else "")
            if t == "floor":
                label = "floor: node-side work, no SSH"
            print(f"| {label} | {n_of(n)} | {med(n,0):.2f} | {rng(n)} | {med(n,1):.2f} | {med(n,2)/1024:.1f} |")
    k = f"kfleet-{size}"
    ratios = [f"{t} / kfleet = {med(f'{t}-{size}', 0) / med(k, 0):.2f}x"
              for t in ("ansible", "pssh") if k in rows and f"{t}-{size}" in rows]
    if ratios:
        print("\nwall: " + ", ".join(ratios))
f, d = f"kfleet-facts-{bign}", f"kfleet-big-{bign}"
if d in rows:
    print(f"\n### kfleet at {bign} nodes\n")
    print("| step | wall s | client CPU s | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    print(f"| facts | {med(f,0):.2f} | {med(f,1):.2f} | {med(f,2)/1024:.1f} |")
    print(f"| deploy {big / 1048576:.2f} MiB | {med(d,0):.2f} | {med(d,1):.2f} | {med(d,2)/1024:.1f} |")
    print(f"\npeak RSS: {med(d,2)/1024:.1f} MiB at {bign} nodes, {med('kfleet-big',2)/1024:.1f} MiB at {nodes}")
PY
