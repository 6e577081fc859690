#!/usr/bin/env bash
# kfleet build against real Debian kernel headers in podman, in one run:
#   1. cold: a fresh base image (debootstrap downloads the archive), a fresh
#      headers layer (apt downloads the headers) and the build, for
#      6.1.0-47-amd64, with its own image tag and cache directory (the
#      builder's real images and cache are left alone);
#   2. warm: the same kernel again (--force) on the normal images;
#   3. a second kernel of the same driver (6.12.117+deb12-amd64);
#   4. a 3-kernel matrix (--kernel K1 --kernel K2 --kernel K3 --force) on
#      one builder slot, then on two;
#   5. `kfleet build --missing` with nothing missing, on the stored facts of
#      a 1000-node fleet (cloned from real `kfleet facts` of test nodes);
#   6. what an operator would otherwise run: a plain `podman run ... make
#      modules` in the same headers image (and an empty container), and the
#      DKMS model (every node compiles for itself) as arithmetic.
# Each kfleet run is measured for wall time, the CPU of the kfleet process
# itself, of kfleet and the children it waited for (worker script, podman
# clients), and of the whole machine (/proc/stat: the containers too).
#
#   sudo bench/bench_build.sh [--runs 3] [--noop-runs 5] [--nodes 1000]
# Writes bench/out/build-*.txt and prints Markdown tables for RESULTS.md.
# Makes and removes its own images (TAG benchcold<pid>); never touches the
# images localhost/kfleet-builder:debian12* that existed before it nor
# /var/cache/kfleet/builder's debootstrap tarball and .debs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
RUNS=3
NOOP_RUNS=5
NODES=1000
while [ $# -gt 0 ]; do
	case "$1" in
	--runs) RUNS=$2; shift 2 ;;
	--noop-runs) NOOP_RUNS=$2; shift 2 ;;
	--nodes) NODES=$2; shift 2 ;;
	*) echo "usage: $0 [--runs N] [--noop-runs N] [--nodes N]" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "bench: needs root (rootful podman, debootstrap, test fleet)" >&2; exit 2; }

contrib/install-deps.sh --bench >/dev/null
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DKF_TESTS=OFF >/dev/null
cmake --build build-bench -j"$(nproc)" --target kfleet >/dev/null
KFLEET=$here/build-bench/kfleet
out=$here/bench/out
mkdir -p "$out"
rm -f "$out"/build-*

K1=6.1.0-47-amd64
K2=6.12.117+deb12-amd64
K3=6.1.0-47-cloud-amd64
IMAGE=localhost/kfleet-builder
RUN_ARGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
for t in "$IMAGE:debian12" "$IMAGE:debian12-$K1" "$IMAGE:debian12-${K2//+/_}"; do
	podman image exists "$t" || { echo "bench: $t is missing (make it with kfleet build first)" >&2; exit 2; }
done
# Under /var/tmp: the cold base image's debootstrap root and tarballs are
# about 1 GiB, and /tmp may be small.
work=$(mktemp -d /var/tmp/kfleet-bench-build.XXXXXX)
cold_tag=benchcold$$
cold_cache=$work/cold-cache
fleet=$work/fleet
# The cloud kernel's layer is made by the warm-up below when missing: remove
# it again at the end then, as the machine was.
k3_layer=$IMAGE:debian12-$K3
k3_existed=0
podman image exists "$k3_layer" && k3_existed=1
cleanup() {
	tests/fleet/testfleet.sh down --dir "$fleet" >/dev/null 2>&1 || true
	podman rmi -f "$IMAGE:$cold_tag-$K1" "$IMAGE:$cold_tag" >/dev/null 2>&1 || true
	if [ "$k3_existed" = 0 ]; then podman rmi "$k3_layer" >/dev/null 2>&1 || true; fi
	# debootstrap mounts /proc and /sys in its target; the worker unmounts
	# them, but never delete through a mount.
	awk -v p="$work/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r |
		while read -r m; do umount -l "$m" || true; done
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# The source: the fixture module set, a DKMS package (version 1.0.0).
cp -R tests/fixtures/kmod/kfleet-test-driver "$work/src"
for slots in 1 2; do
	cat >"$work/kfleet-s$slots.yml" <<-EOF
		container:
		  run_args: [--runtime, runc, --ulimit, "nofile=1024:1024", --ulimit, "nproc=4096:4096"]
		builders:
		  - {name: local, host: local, slots: $slots}
		build: {timeout: 1800}
		profiles:
		  testdrv:
		    type: kmod
		    source: $work/src
		    stub_threshold: 1024
	EOF
done

# measure.py NAME OUTFILE [--watch DIR] -- CMD...: runs CMD with stdout and
# stderr to OUTFILE, each line prefixed with the seconds since the start;
# appends "NAME rc wall self_cpu tree_cpu machine_cpu maxrss_kb" to
# $work/times. self_cpu: user+sys of CMD's process alone (read from its
# zombie before reaping it); tree_cpu: of CMD and the children it waited
# for; machine_cpu: busy time of all CPUs (/proc/stat), containers included.
# --watch DIR notes when the worker's debootstrap and root tarballs appear.
cat >"$work/measure.py" <<'PY'
import os, subprocess, sys, threading, time
name, outfile = sys.argv[1], sys.argv[2]
args = sys.argv[3:]
watch = None
if args[0] == "--watch":
    watch, args = args[1], args[2:]
assert args[0] == "--"
cmd = args[1:]
tck = os.sysconf("SC_CLK_TCK")
def busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / tck   # all but idle and iowait
out = open(outfile, "w")
lock = threading.Lock()
def emit(t, text):
    with lock:
        out.write(f"{t:9.3f} {text}\n")
        out.flush()
done = threading.Event()
t0 = time.monotonic()
def watcher():
    seen = set()
    while not done.is_set():
        try:
            names = os.listdir(watch)
        except OSError:
            names = []
        for n in names:
            if n in seen:
                continue
            if (n.startswith("debootstrap-") and n.endswith(".tgz")) or \
               (n.startswith("rootfs-") and n.endswith(".tar")):
                seen.add(n)
                emit(time.monotonic() - t0, f"# watch: {n} appeared")
        done.wait(0.1)
b0 = busy()
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
if watch:
    threading.Thread(target=watcher, daemon=True).start()
for line in iter(p.stdout.readline, b""):
    emit(time.monotonic() - t0, line.decode("utf-8", "replace").rstrip("\n"))
os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
wall = time.monotonic() - t0
st = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
self_cpu = (int(st[11]) + int(st[12])) / tck
_, status, ru = os.wait4(p.pid, 0)
p.returncode = rc = os.waitstatus_to_exitcode(status)
machine = busy() - b0
done.set()
emit(wall, f"# exit {rc}, wall {wall:.2f} s, loadavg {open('/proc/loadavg').read().strip()}")
with open(os.environ["BENCH_TIMES"], "a") as f:
    f.write(f"{name} {rc} {wall:.3f} {self_cpu:.3f} {ru.ru_utime + ru.ru_stime:.3f} "
            f"{machine:.3f} {ru.ru_maxrss}\n")
sys.exit(rc)
PY
export BENCH_TIMES=$work/times
: >"$BENCH_TIMES"

# measure NAME CMD...: CMD's output to $out/build-NAME.txt; fails the bench
# (with the tail) when CMD fails.
measure() {
	local name=$1
	shift
	python3 "$work/measure.py" "$name" "$out/build-$name.txt" -- "$@" || {
		echo "bench: $name failed; see $out/build-$name.txt" >&2
		tail -15 "$out/build-$name.txt" >&2
		exit 1
	}
}
# kfleet build on the normal images, with 1 or 2 slots.
kb1=("$KFLEET" --state "$work/state" --config "$work/kfleet-s1.yml" build --profile testdrv)
kb2=("$KFLEET" --state "$work/state" --config "$work/kfleet-s2.yml" build --profile testdrv)
want() { # want NAME TEXT: the run's output must say TEXT
	grep -qF -- "$2" "$out/build-$1.txt" || { echo "bench: $1: no '$2' in its output" >&2; exit 1; }
}

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "host kernel: $(uname -r)"
	echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc)"
	echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
	echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
	echo "podman: $(podman --version)"
	echo "runc: $(runc --version | head -n 1)"
	echo "debootstrap: $(dpkg-query -W -f='${Version}' debootstrap)"
	echo "kfleet: $("$KFLEET" version)"
	echo "loadavg at start: $(cat /proc/loadavg)"
	echo "apt archives: $(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
		awk '$1 == "URIs:" || $1 == "deb" {print $2}' | sort -u | paste -sd ' ')"
} >"$out/build-env.txt"

# ---- 1. cold: fresh tag and cache: debootstrap, headers, compile, package ----
echo "bench: cold build (debootstrap + headers download), a few minutes" >&2
KFLEET_BUILDER_TAG=$cold_tag KFLEET_BUILDER_CACHE=$cold_cache \
	python3 "$work/measure.py" cold "$out/build-cold.txt" --watch "$cold_cache" -- \
	"$KFLEET" --state "$work/state-cold" --config "$work/kfleet-s1.yml" build --profile testdrv \
	--kernel "$K1" || { tail -20 "$out/build-cold.txt" >&2; exit 1; }
want cold "1 built, 0 failed"
cp "$work"/state-cold/logs/builds/*"-$K1.log" "$out/build-cold-build.log"
du -sb "$cold_cache"/debootstrap-*.tgz "$cold_cache"/rootfs-*.tar "$cold_cache/apt-archives" \
	>"$out/build-cold-sizes.txt"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F ":$cold_tag" \
	>>"$out/build-cold-sizes.txt" || true
podman rmi "$IMAGE:$cold_tag-$K1" "$IMAGE:$cold_tag" >/dev/null
rm -rf --one-file-system "$cold_cache"

# ---- 2, 3. warm builds on the normal images: K1, then K2, in turn ----------
# One untimed build first: it sends the source to the builder's cache.
"${kb1[@]}" --kernel "$K1" --force >"$out/build-warmup.txt" 2>&1 || { cat "$out/build-warmup.txt" >&2; exit 1; }
for run in $(seq "$RUNS"); do
	measure "warm-$run" "${kb1[@]}" --kernel "$K1" --force
	want "warm-$run" "1 built, 0 failed"
	measure "second-$run" "${kb1[@]}" --kernel "$K2" --force
	want "second-$run" "1 built, 0 failed"
	echo "bench: warm builds, run $run of $RUNS done" >&2
done

# ---- 4. three kernels on 1 slot and on 2 -------------------------------------
# The cloud kernel's layer is made here when missing (headers cached after).
measure k3-warmup "${kb1[@]}" --kernel "$K3" --force
want k3-warmup "1 built, 0 failed"
# (the only build of K3 in this state directory so far)
cp "$work"/state/logs/builds/*"-$K3.log" "$out/build-k3-warmup-build.log"
for run in $(seq "$RUNS"); do
	measure "matrix-s1-$run" "${kb1[@]}" --kernel "$K1" --kernel "$K2" --kernel "$K3" --force
	want "matrix-s1-$run" "3 built, 0 failed"
	measure "matrix-s2-$run" "${kb2[@]}" --kernel "$K1" --kernel "$K2" --kernel "$K3" --force
	want "matrix-s2-$run" "3 built, 0 failed"
	echo "bench: matrix, run $run of $RUNS done" >&2
done

# ---- 5. build --missing, nothing missing, on NODES nodes' facts ------------
# Real facts from four test nodes (running and installed-only kernels), then
# cloned in the state database to NODES hosts, node i like template i mod 4.
cat >"$work/spec" <<EOF
tmpl1 kernel=$K1 installed=$K1,$K2 os=debian:12 gpus=8
tmpl2 kernel=$K2 installed=$K2 os=debian:12 gpus=8
tmpl3 kernel=$K3 installed=$K3,$K1 os=debian:12 gpus=8
tmpl4 kernel=$K1 installed=$K1 os=debian:12 gpus=8
EOF
port=29400
while ss -ltn | awk '{print $4}' | grep -qE ":($port|$((port + 1))|$((port + 2))|$((port + 3))|$((port + 4)))\$"; do
	port=$((port + 10))
done
tests/fleet/testfleet.sh up --dir "$fleet" --spec "$work/spec" --base-port "$port" >/dev/null
"$KFLEET" -i "$fleet/inventory.yml" --known-hosts "$fleet/known_hosts" --ssh-config none \
	--state "$work/state" facts --no-progress >"$out/build-facts-templates.txt"
grep -q "4 answered, 0 failed" "$out/build-facts-templates.txt" || { echo "bench: template facts failed" >&2; exit 1; }
tests/fleet/testfleet.sh down --dir "$fleet" >/dev/null
sqlite3 "$work/state/state.db" <<EOF
BEGIN;
CREATE TEMP TABLE n(i INTEGER PRIMARY KEY);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $NODES)
INSERT INTO n SELECT i FROM c;
INSERT INTO hosts(name, first_seen, last_seen)
  SELECT printf('gpu%04d', i), h.first_seen, h.last_seen FROM n
  JOIN hosts h ON h.name = 'tmpl' || ((i - 1) % 4 + 1);
INSERT INTO facts(host, gathered_at, ok, error_code, error_phase, error, last_ok_at, kernel,
  kernel_build, arch, os_id, os_version, os_pretty, loaded_driver, userspace_driver,
  secure_boot, gpus, facts_json)
  SELECT printf('gpu%04d', i), gathered_at, ok, error_code, error_phase, error, last_ok_at,
  kernel, kernel_build, arch, os_id, os_version, os_pretty, loaded_driver, userspace_driver,
  secure_boot, gpus, facts_json FROM n JOIN facts f ON f.host = 'tmpl' || ((i - 1) % 4 + 1);
INSERT INTO host_kernels(host, release, running, modules_dep, build, image)
  SELECT printf('gpu%04d', i), release, running, modules_dep, build, image FROM n
  JOIN host_kernels k ON k.host = 'tmpl' || ((i - 1) % 4 + 1);
DELETE FROM host_kernels WHERE host LIKE 'tmpl%';
DELETE FROM facts WHERE host LIKE 'tmpl%';
DELETE FROM hosts WHERE name LIKE 'tmpl%';
COMMIT;
EOF
{
	echo "all:"
	echo "  hosts:"
	for i in $(seq "$NODES"); do
		printf '    gpu%04d: {ansible_host: 10.1.%d.%d}\n' "$i" $((i / 250)) $((i % 250 + 1))
	done
} >"$work/fleet.yml"
sqlite3 "$work/state/state.db" \
	"SELECT (SELECT count(*) FROM hosts), (SELECT count(*) FROM host_kernels), (SELECT count(*) FROM host_kernels WHERE running = 0), (SELECT count(*) FROM artifacts)" \
	>"$out/build-noop-db.txt"
"$KFLEET" -i "$work/fleet.yml" --state "$work/state" --config "$work/kfleet-s1.yml" \
	plan --profile testdrv --json >"$out/build-noop-plan.json"
python3 - "$out/build-noop-plan.json" "$NODES" <<'PY' || { echo "bench: the plan is not 3 stored keys" >&2; exit 1; }
import json, sys
doc = json.load(open(sys.argv[1]))
keys = doc["keys"]
assert len(keys) == 3 and all(k["status"] == "stored" for k in keys), keys
assert sum(k["nodes_running"] for k in keys) == int(sys.argv[2])
PY
: >"$work/noop-times"
for run in $(seq "$NOOP_RUNS"); do
	/usr/bin/time -f "noop %e %U %S %M" -a -o "$work/noop-times" \
		"$KFLEET" -i "$work/fleet.yml" --state "$work/state" --config "$work/kfleet-s1.yml" \
		build --profile testdrv --missing >"$out/build-noop-$run.txt" 2>&1 ||
		{ cat "$out/build-noop-$run.txt" >&2; exit 1; }
	want "noop-$run" "nothing to build: 0 built, 0 failed, 3 already stored"
done
cp "$work/noop-times" "$out/build-noop-times.txt"

# ---- 6. by hand: the container and make floor -------------------------------
# The worker's own podman arguments, without kfleet: an empty container, and
# the module built with the kernel's compiler in the same headers image.
img1=$IMAGE:debian12-$K1
podman_run=(podman run "${RUN_ARGS[@]}" --pull=never --rm --network=none --cap-drop=ALL
	--security-opt=no-new-privileges)
for run in $(seq "$RUNS"); do
	measure "empty-$run" "${podman_run[@]}" "$img1" true
	rm -rf "$work/manual-src"
	cp -R "$work/src" "$work/manual-src"
	# shellcheck disable=SC2016  # expanded in the container
	measure "manual-$run" "${podman_run[@]}" -v "$work/manual-src:/usr/src/kfleet-build:rw" \
		-e LC_ALL=C.UTF-8 "$img1" bash -c 'TIMEFORMAT="# make in the container: %R %U %S"
		time make -C /lib/modules/'"$K1"'/build M=/usr/src/kfleet-build CC="$(cat /etc/kfleet-kernel-cc)" \
			-j"$(nproc)" KFLEET_DRIVER_VERSION=1.0.0 modules'
	[ "$(find "$work/manual-src" -name '*.ko' | wc -l)" = 4 ] || { echo "bench: manual build made no 4 modules" >&2; exit 1; }
done
cp "$BENCH_TIMES" "$out/build-times.txt"
echo "loadavg at end: $(cat /proc/loadavg)" >>"$out/build-env.txt"

# ---- report -------------------------------------------------------------------
python3 - "$out" "$RUNS" "$NODES" "$K1" "$K2" "$K3" <<'PY' | tee "$out/build-summary.md"
import collections, re, statistics, sys
out, runs, nodes, K1, K2, K3 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7]
rows = collections.defaultdict(list)
for line in open(f"{out}/build-times.txt"):
    p = line.split()
    rows[re.sub(r"-\d+$", "", p[0])].append([float(x) for x in p[2:]])
def med(name, i):
    return statistics.median(r[i] for r in rows[name])
WALL, SELF, TREE, MACH, RSS = range(5)

# Cold: phases from the timestamped output, the watched files and the
# worker's notes in the build log (whole seconds since the worker started).
def cold_report():
    cold = open(f"{out}/build-cold.txt").read().splitlines()
    def at(pat):
        for l in cold:
            if re.search(pat, l):
                return float(l.split()[0])
        return None
    t_img = at(r"preparing the base image")
    t_deb = at(r"# watch: debootstrap-")
    t_root = at(r"# watch: rootfs-")
    t_src = at(r"sending the source")
    t_start = at(r"  start +")
    t_ok = at(r"  ok +")
    t_end = rows["cold"][0][WALL]
    log = open(f"{out}/build-cold-build.log").read()
    def note(pat):
        m = re.search(r"kfleet-worker: \[(\d+)s\] " + pat, log)
        return int(m.group(1)) if m else None
    n_layer, n_commit = note("installing "), note("committing ")
    n_made, n_build = note(r"made localhost"), note("building ")
    m = re.search(r"kfleet-worker: \[\d+s\] built \d+ modules for \S+ in (\d+)s", log)
    n_compile = int(m.group(1)) if m else None
    fetched = re.findall(r"^Fetched ([\d.,]+ [kMG]?B) in (\S+)", log, re.M)
    print(f"### Cold build of {K1} (fresh image tag and cache; one run)\n")
    print("| phase | s | from |")
    print("|---|---:|---|")
    def ph(name, a, b, src):
        if a is not None and b is not None:
            print(f"| {name} | {b - a:.1f} | {src} |")
    ph("kfleet start, `check` (root, podman, runc)", 0.0, t_img, "kfleet output")
    ph("base image: debootstrap `--make-tarball` (downloads)", t_img, t_deb, "cache file appears")
    ph("base image: debootstrap `--unpack-tarball` + root tar", t_deb, t_root, "cache file appears")
    ph("base image: `podman import`", t_root, t_src, "kfleet output")
    ph("source upload to the builder cache", t_src, t_start, "kfleet output")
    if n_layer is not None and n_commit is not None and n_made is not None:
        print(f"| headers layer: apt-get update, download, install headers + gcc-12 | {n_commit - n_layer} | worker notes (1 s steps) |")
        print(f"| headers layer: `podman commit` | {n_made - n_commit} | worker notes (1 s steps) |")
    if n_compile is not None:
        print(f"| compile container (dkms MAKE, vermagic check) | {n_compile} | worker notes (1 s steps) |")
    if t_ok is not None and t_start is not None and n_build is not None and n_compile is not None:
        print(f"| worker rest + tar + kfleet checks, strip, package, store | {t_ok - t_start - n_build - n_compile:.1f} | difference |")
    print(f"| **total wall** | **{t_end:.1f}** | |")
    print(f"\napt in the headers layer: " + "; ".join(f"fetched {a} in {b}" for a, b in fetched))
    print(f"kfleet CPU {rows['cold'][0][SELF]:.2f} s, kfleet + children {rows['cold'][0][TREE]:.1f} s, "
          f"machine CPU {rows['cold'][0][MACH]:.1f} s\n")

if "cold" in rows:
    cold_report()

print(f"### Builds on cached images (median of {runs} runs)\n")
print("| run | wall s | kfleet CPU s | kfleet + children CPU s | machine CPU s |")
print("|---|---:|---:|---:|---:|")
def line(label, name):
    print(f"| {label} | {med(name, WALL):.2f} | {med(name, SELF):.3f} | {med(name, TREE):.2f} | {med(name, MACH):.2f} |")
line(f"warm: {K1} again (--force)", "warm")
line(f"second kernel: {K2}", "second")
w = rows["k3-warmup"][0]
made = "headers layer made" if "made in this build" in open(f"{out}/build-k3-warmup-build.log").read() \
    else "headers layer cached"
print(f"| (warm-up, 1 run: {K3}, {made}) | {w[WALL]:.2f} | {w[SELF]:.3f} | {w[TREE]:.2f} | {w[MACH]:.2f} |")
line("matrix: 3 kernels, 1 slot", "matrix-s1")
line("matrix: 3 kernels, 2 slots", "matrix-s2")
line(f"by hand: `podman run ... true` in the {K1} image", "empty")
line(f"by hand: `podman run ... make modules` in the {K1} image", "manual")

inner = []
for i in range(1, runs + 1):
    for l in open(f"{out}/build-manual-{i}.txt"):
        m = re.search(r"# make in the container: (\S+) (\S+) (\S+)", l)
        if m:
            inner.append([float(x) for x in m.groups()])
mk_wall = statistics.median(x[0] for x in inner)
mk_cpu = statistics.median(x[1] + x[2] for x in inner)
print(f"\nmake inside the manual container (median): wall {mk_wall:.2f} s, CPU (user+sys) {mk_cpu:.2f} s")
s1, s2 = med("matrix-s1", WALL), med("matrix-s2", WALL)
print(f"matrix: 2 slots / 1 slot wall = {s2 / s1:.2f}; per kernel: {s1 / 3:.2f} s on 1 slot, {s2 / 3:.2f} s on 2 slots")
print(f"kfleet's own CPU (10 ms clock ticks) / wall: warm {med('warm', SELF) / med('warm', WALL) * 100:.1f} %, "
      f"matrix 1 slot {med('matrix-s1', SELF) / s1 * 100:.1f} %")

noop = [[float(x) for x in l.split()[1:]] for l in open(f"{out}/build-noop-times.txt")]
db = open(f"{out}/build-noop-db.txt").read().strip().split("|")
nw = statistics.median(r[0] for r in noop)
nc = statistics.median(r[1] + r[2] for r in noop)
nr = statistics.median(r[3] for r in noop)
print(f"\n### `kfleet build --missing`, nothing missing ({db[0]} hosts, {db[1]} host kernels of which "
      f"{db[2]} installed-only, {db[3]} stored artifacts; median of {len(noop)} runs)\n")
print("| wall s | CPU s | peak RSS MiB | target |")
print("|---:|---:|---:|---|")
print(f"| {nw:.3f} | {nc:.3f} | {nr / 1024:.1f} | < 1 s: {'met' if nw < 1 else 'NOT met'} |")

pairs = int(db[1])
kb = med("warm", MACH)
print(f"\n### DKMS model (arithmetic)\n")
print(f"One compile of the module set: {mk_cpu:.2f} s CPU (make in the container, median). DKMS "
      f"compiles on every node for every installed kernel: {db[0]} nodes with {pairs} "
      f"(node, kernel) pairs = {pairs} x {mk_cpu:.2f} = {pairs * mk_cpu:.0f} CPU-s across the fleet "
      f"(plus headers and a compiler on every node). kfleet: 3 keys x {kb:.2f} CPU-s "
      f"(machine CPU of one warm build, container and packaging included) = {3 * kb:.1f} CPU-s "
      f"on one builder, {pairs * mk_cpu / (3 * kb):.0f}x less.")
PY
