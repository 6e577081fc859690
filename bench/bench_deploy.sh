#!/usr/bin/env bash
# Deploying one package to a 100-node local fleet, in one run, three ways,
# each doing the same work on every node: send the package, check its
# sha256, unpack it, run its install.sh (modules into updates/kfleet,
# depmod) and load the modules:
#   kfleet deploy --stages 100% --reload        (one libuv loop, libssh, node.sh)
#   ansible-playbook: copy, unarchive, command sh install.sh --load
#   parallel-scp + parallel-ssh: sha256sum -c, tar -xzf, sh install.sh --load
# for two packages: the fixture module set as built (about 10 KiB) and the
# same set carrying 24 MiB of incompressible data in kfleet_core (the size
# of a stripped NVIDIA package), so transfers weigh as they do for real.
# Then the same deploy again, with nothing to do (kfleet and Ansible check
# and change nothing; the pssh script has no such check and redoes it).
# Between runs the nodes are reset to nothing (their trees on the host).
#
#   sudo bench/bench_deploy.sh [--nodes 100] [--runs 3]
# Writes bench/out/deploy-*.txt and prints Markdown tables for RESULTS.md.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
NODES=100
RUNS=3
while [ $# -gt 0 ]; do
	case "$1" in
	--nodes) NODES=$2; shift 2 ;;
	--runs) RUNS=$2; shift 2 ;;
	*) echo "usage: $0 [--nodes N] [--runs N]" >&2; exit 2 ;;
	esac
done
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
for i in $(seq 1 "$NODES"); do
	printf 'node%03d kernel=%s os=debian:12 gpus=1\n' "$i" "$K"
done >"$work/spec"
tests/fleet/testfleet.sh up --dir "$fleet" --spec "$work/spec" --base-port 27500 >/dev/null
key=$fleet/id_ed25519
kh=$fleet/known_hosts

# The two sources: the fixture as it is, and the fixture with 24 MiB of
# random bytes in kfleet_core (an assembler file that .incbin's them).
cp -R tests/fixtures/kmod/kfleet-test-driver "$work/src-small"
cp -R tests/fixtures/kmod/kfleet-test-driver "$work/src-big"
sed -i 's/^PACKAGE_VERSION=.*/PACKAGE_VERSION="2.0.0"/' "$work/src-big/dkms.conf"
head -c $((24 * 1024 * 1024)) /dev/urandom >"$work/src-big/kfleet-core/pad.bin"
cat >"$work/src-big/kfleet-core/pad.S" <<'EOF'
/* 24 MiB of incompressible data: a package of NVIDIA's size. */
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
kfl() { "$KFLEET" -i "$fleet/inventory.yml" --known-hosts "$kh" --ssh-config none --state "$work/state" \
	--config "$work/kfleet.yml" "$@"; }
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

for size in small big; do
	if [ $size = small ]; then pkg=$pkg_small drv=1.0.0; else pkg=$pkg_big drv=2.0.0; fi
	top=$(tar -tzf "$pkg" | awk -F/ 'NR == 1 { print $1 }')
	playbook "$pkg" "$top"
	for run in $(seq "$RUNS"); do
		reset
		measure "kfleet-$size" "$KFLEET" -i "$fleet/inventory.yml" --known-hosts "$kh" --ssh-config none \
			--state "$work/state" --config "$work/kfleet.yml" deploy --profile bench --driver $drv \
			--stages 100% --forks "$NODES" --reload --no-progress
		check $drv "kfleet $size"
		measure "kfleet-$size-again" "$KFLEET" -i "$fleet/inventory.yml" --known-hosts "$kh" --ssh-config none \
			--state "$work/state" --config "$work/kfleet.yml" deploy --profile bench --driver $drv \
			--stages 100% --forks "$NODES" --reload --no-progress
		reset
		measure "ansible-$size" ansible-playbook -i "$fleet/inventory.yml" -f "$NODES" "$work/deploy.yml"
		check $drv "ansible $size"
		measure "ansible-$size-again" ansible-playbook -i "$fleet/inventory.yml" -f "$NODES" "$work/deploy.yml"
		reset
		pssh_deploy "pssh-$size" "$pkg" "$top"
		check $drv "pssh $size"
		echo "bench: $size package, run $run of $RUNS done" >&2
	done
done
grep -q "nothing to do: all $NODES nodes are at" "$out/deploy-kfleet-small-again.txt" ||
	{ echo "bench: kfleet's second deploy was not a no-op" >&2; exit 1; }
size_small=$(stat -c %s "$pkg_small")
size_big=$(stat -c %s "$pkg_big")

python3 - "$work/times" "$NODES" "$size_small" "$size_big" "$RUNS" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 5:
        rows[p[0]].append((float(p[1]), float(p[2]) + float(p[3]), int(p[4])))
nodes, small, big, runs = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def med(name, i):
    return statistics.median(r[i] for r in rows[name])
for size, b in (("small", small), ("big", big)):
    print(f"\n### Package of {b / 1048576:.2f} MiB to {nodes} nodes (median of {runs} runs)\n")
    print("| tool | wall s | client CPU s | peak RSS MiB | again (no-op) wall s | again client CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for t in ("kfleet", "ansible", "pssh"):
        n = f"{t}-{size}"
        again = f"{n}-again"
        a = (f"{med(again, 0):.2f} | {med(again, 1):.2f}" if again in rows else "- | -")
        print(f"| {t} | {med(n,0):.2f} | {med(n,1):.2f} | {med(n,2)/1024:.1f} | {a} |")
    k, a, p = (med(f"{t}-{size}", 0) for t in ("kfleet", "ansible", "pssh"))
    print(f"\nwall: ansible / kfleet = {a/k:.1f}x, pssh / kfleet = {p/k:.1f}x")
PY
