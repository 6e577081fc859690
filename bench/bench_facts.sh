#!/usr/bin/env bash
# Fact gathering on a 100-node local fleet, in one run, three ways:
#   kfleet facts                         (one libuv loop, libssh)
#   parallel-ssh -p 100 "<the same probe command>"   (one OpenSSH client per node)
#   ansible all -m setup -a gather_subset=min -f 100
# each measured for wall time, client CPU (user+sys of the tool and the
# children it waited for) and peak RSS (of its largest process); then kfleet
# holding 1000 sessions open at once, for its memory.
#
#   bench/bench_facts.sh [--nodes 100] [--sessions 1000] [--runs 3]
# Writes bench/out/facts-*.txt and prints a Markdown table for RESULTS.md.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
NODES=100
SESSIONS=1000
RUNS=3
while [ $# -gt 0 ]; do
	case "$1" in
	--nodes) NODES=$2; shift 2 ;;
	--sessions) SESSIONS=$2; shift 2 ;;
	--runs) RUNS=$2; shift 2 ;;
	*) echo "usage: $0 [--nodes N] [--sessions N] [--runs N]" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "bench: needs root (test fleet)" >&2; exit 2; }

contrib/install-deps.sh --bench >/dev/null
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DKF_TESTS=OFF >/dev/null
cmake --build build-bench -j"$(nproc)" --target kfleet >/dev/null
KFLEET=$here/build-bench/kfleet
out=$here/bench/out
mkdir -p "$out"
work=$(mktemp -d /tmp/kfleet-bench.XXXXXX)
fleet=$work/fleet
big=$work/big
cleanup() {
	tests/fleet/testfleet.sh down --dir "$fleet" >/dev/null 2>&1 || true
	tests/fleet/testfleet.sh down --dir "$big" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

tests/fleet/testfleet.sh spec --nodes "$NODES" >"$work/spec"
tests/fleet/testfleet.sh up --dir "$fleet" --spec "$work/spec" --base-port 27000 >/dev/null
key=$fleet/id_ed25519
kh=$fleet/known_hosts

# The same remote command kfleet runs, for parallel-ssh.
probe=$("$KFLEET" facts --print-probe)
awk -F'\t' '!/^#/ {print "root@127.0.0.1:" $2}' "$fleet/expected.tsv" >"$work/pssh-hosts"

# measure NAME CMD...: appends "name wall user sys maxrss_kb" to $work/times
measure() {
	local name=$1
	shift
	/usr/bin/time -f "$name %e %U %S %M" -a -o "$work/times" "$@" >"$out/facts-$name.txt" 2>&1 || {
		echo "bench: $name failed; see $out/facts-$name.txt" >&2
		tail -5 "$out/facts-$name.txt" >&2
		exit 1
	}
}
: >"$work/times"
export ANSIBLE_HOST_KEY_CHECKING=True ANSIBLE_SSH_ARGS="-o UserKnownHostsFile=$kh -o ControlMaster=no"
export ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 ANSIBLE_LOCAL_TEMP=$work/ansible-tmp
for run in $(seq "$RUNS"); do
	measure kfleet "$KFLEET" facts -i "$fleet/inventory.yml" --known-hosts "$kh" --ssh-config none \
		--state "$work/state" --forks "$NODES" --no-progress
	measure pssh parallel-ssh -h "$work/pssh-hosts" -p "$NODES" -t 60 -o "$work/pssh-out" \
		-x "-i $key -o UserKnownHostsFile=$kh -o StrictHostKeyChecking=yes -o BatchMode=yes" "$probe"
	measure ansible ansible all -i "$fleet/inventory.yml" -m setup -a gather_subset=min -f "$NODES"
	echo "bench: run $run of $RUNS done" >&2
done
# Every tool must have reached every node, or the comparison means nothing.
[ "$(find "$work/pssh-out" -type f | wc -l)" = "$NODES" ] || { echo "bench: pssh missed nodes" >&2; exit 1; }
grep -q "$NODES answered, 0 failed" "$out/facts-kfleet.txt" || { echo "bench: kfleet missed nodes" >&2; exit 1; }
[ "$(grep -c 'SUCCESS' "$out/facts-ansible.txt")" = "$NODES" ] || { echo "bench: ansible missed nodes" >&2; exit 1; }

# 1000 sessions open at once: 200 nodes whose probe sleeps, 5 inventory
# aliases each, --forks 1000. If the sessions did not overlap the run would
# take several times the sleep.
tests/fleet/testfleet.sh down --dir "$fleet" >/dev/null
nodes_big=$((SESSIONS / 5))
SLEEP=45
tests/fleet/testfleet.sh spec --nodes "$nodes_big" | sed "s/fault=none/fault=slow=$SLEEP/" >"$work/spec-big"
tests/fleet/testfleet.sh up --dir "$big" --spec "$work/spec-big" --base-port 28000 >/dev/null
{
	echo "all:"
	echo "  vars: {ansible_user: root, ansible_ssh_private_key_file: $big/id_ed25519}"
	echo "  hosts:"
	awk -F'\t' '!/^#/ {for (i = 1; i <= 5; i++) printf "    %s-s%d: {ansible_host: 127.0.0.1, ansible_port: %s}\n", $1, i, $2}' "$big/expected.tsv"
} >"$work/big.yml"
measure kfleet-1000 "$KFLEET" facts -i "$work/big.yml" --known-hosts "$big/known_hosts" \
	--ssh-config none --state "$work/state-big" --forks "$SESSIONS" --max-handshakes 64 \
	--auth-timeout 60s --command-timeout 120s --no-progress
grep -q "$SESSIONS answered, 0 failed" "$out/facts-kfleet-1000.txt" || { echo "bench: 1000-session run missed sessions" >&2; exit 1; }

# Report: the median of the runs for each tool.
python3 - "$work/times" "$NODES" "$SESSIONS" "$SLEEP" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 5:
        rows[p[0]].append((float(p[1]), float(p[2]) + float(p[3]), int(p[4])))
nodes, sessions, sleep = sys.argv[2], sys.argv[3], sys.argv[4]
def med(name, i):
    return statistics.median(r[i] for r in rows[name])
print(f"| tool ({nodes} nodes, median of {len(rows['kfleet'])} runs) | wall s | client CPU s | peak RSS MiB |")
print("|---|---:|---:|---:|")
for name in ("kfleet", "pssh", "ansible"):
    print(f"| {name} | {med(name,0):.2f} | {med(name,1):.2f} | {med(name,2)/1024:.1f} |")
k, p, a = (med(n, 0) for n in ("kfleet", "pssh", "ansible"))
kc, pc = med("kfleet", 1), med("pssh", 1)
print()
print(f"kfleet wall / pssh wall = {k/p:.2f} (target <= 0.5); kfleet CPU / pssh CPU = {kc/pc:.3f} (target <= 0.2); ansible wall / kfleet wall = {a/k:.1f}x (target >= 10x)")
w, c, m = rows["kfleet-1000"][0]
print(f"kfleet with {sessions} sessions open at once (probe sleeps {sleep} s): wall {w:.1f} s, client CPU {c:.2f} s, peak RSS {m/1024:.1f} MiB (target <= 64 MiB)")
PY
