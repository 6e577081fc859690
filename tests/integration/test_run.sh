#!/usr/bin/env bash
# kfleet run and kfleet status on a fleet of real sshd nodes, with real
# podman builds:
#   - one `kfleet run` goes from nothing (no facts, no packages) to a
#     verified staged rollout; the second run does nothing and says so;
#   - a run while another holds the lock says who holds it (exit 6);
#   - an "unattended upgrade" installs a new kernel on a node: status says
#     drifted and that no package is stored; `run --no-deploy` builds just
#     that kernel; status says the package is stored; `run` deploys it and
#     status is current again;
#   - status: unreachable with its reason, mismatch of module and
#     userspace, --json, --prometheus (atomic, escaped).
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || fail "needs root (rootful podman, sshd nodes): run sudo tests/run.sh"
for t in podman runc debootstrap python3 flock; do
	command -v "$t" >/dev/null || fail "needs $t: run contrib/install-deps.sh"
done

K1=6.1.0-47-amd64
K2=6.12.117+deb12-amd64
K3=6.1.0-47-cloud-amd64
{
	for i in 1 2 3 4 5 6 7 8; do
		if ((i % 2)); then k=$K1; else k=$K2; fi
		printf 'node%03d kernel=%s os=debian:12 gpus=1\n' "$i" "$k"
	done
	echo "node009 kernel=$K1 os=debian:12 fault=unreachable"
	echo "node010 kernel=$K1 os=debian:12 gpus=2 driver=550.54.15 userspace=550.40.07"
} >"$WORK/spec"
"$FLEET_SH" up --dir "$FLEET" --spec "$WORK/spec" --base-port "$(pick_base_port 10)" >/dev/null

cp -R "$KF_SOURCE_DIR/tests/fixtures/kmod/kfleet-test-driver" "$WORK/src"
cat >"$WORK/kfleet.yml" <<EOF
container:
  run_args: [--runtime, runc, --ulimit, "nofile=1024:1024", --ulimit, "nproc=4096:4096"]
builders:
  - {name: local, host: local, slots: 2}
build: {timeout: 900}
profiles:
  testdrv:
    type: kmod
    source: $WORK/src
    stub_threshold: 1024
  nvidia:
    type: nvidia-run
EOF
kr() { kf --config "$WORK/kfleet.yml" "$@"; }
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
NODES='node00*:!node009'

# ---- from nothing to a verified staged rollout, in one command --------------
rc=0
kr run --profile testdrv --driver 1.0.0 -l "$NODES" --stages 1,100% --reload >"$WORK/run1.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || { cat "$WORK/run1.out"; fail "first run exited $rc"; }
for s in "== kfleet run: facts" "== kfleet run: plan" "== kfleet run: build what is missing" \
	"== kfleet run: deploy" "2 built, 0 failed" "8 updated, 0 unchanged"; do
	grep -qF "$s" "$WORK/run1.out" || { cat "$WORK/run1.out"; fail "first run: no '$s'"; }
done
for i in 1 2 3 4 5 6 7 8; do
	n=$(printf 'node%03d' "$i")
	[ "$(cat "$FLEET/nodes/$n/fs/sys/module/kfleet_core/version" 2>/dev/null)" = 1.0.0 ] ||
		fail "$n: kfleet_core not loaded at 1.0.0 after kfleet run"
done
ok "one kfleet run: facts, plan, 2 kernels built in podman, staged rollout to 8 nodes, loaded"

rc=0
kr run --profile testdrv --driver 1.0.0 -l "$NODES" --stages 1,100% --reload --json >"$WORK/run2.json" 2>"$WORK/run2.err" || rc=$?
[ "$rc" = 0 ] || { cat "$WORK/run2.err"; fail "second run exited $rc"; }
[ "$(jget "$WORK/run2.json" '(d["build"]["built"], d["deploy"]["updated"], d["deploy"]["unchanged"])')" = "(0, 0, 8)" ] ||
	{ cat "$WORK/run2.json"; fail "the second run should build and change nothing"; }
grep -q "nothing to do: all 8 nodes are at testdrv 1.0.0" "$WORK/run2.err" || fail "second run: no 'nothing to do'"
ok "the second run builds nothing, changes nothing, says so; --json is one document on stdout"

# ---- the run lock ---------------------------------------------------------------
"$KFLEET" -i "$FLEET/inventory.yml" --known-hosts "$FLEET/known_hosts" --ssh-config none \
	--state "$WORK/state" --config "$WORK/kfleet.yml" run --profile testdrv --driver 1.0.0 \
	-l "$NODES" --stages 1,100% --pause 60s >"$WORK/held.out" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
	grep -q "pausing" "$WORK/held.out" && break
	sleep 0.1
done
grep -q "pausing" "$WORK/held.out" || { kill "$pid"; cat "$WORK/held.out"; fail "the first run did not reach its pause"; }
rc=0
kr run --profile testdrv --driver 1.0.0 -l "$NODES" >"$WORK/locked.out" 2>&1 || rc=$?
kill -INT "$pid"
wait "$pid" || true
[ "$rc" = 6 ] || { cat "$WORK/locked.out"; fail "a second run exited $rc, want 6"; }
grep -q "another kfleet run holds $WORK/state/run.lock (pid $pid on " "$WORK/locked.out" ||
	{ cat "$WORK/locked.out"; fail "the second run does not say who holds the lock"; }
ok "a run while another holds the lock: exit 6, names the holder (pid $pid)"

# ---- drift after an unattended upgrade ---------------------------------------
mkdir -p "$FLEET/nodes/node003/fs/lib/modules/$K3"
: >"$FLEET/nodes/node003/fs/lib/modules/$K3/modules.dep"
rc=0
kr status --profile testdrv -l "$NODES" --refresh --json >"$WORK/st1.json" 2>"$WORK/st1.err" || rc=$?
[ "$rc" = 1 ] || { cat "$WORK/st1.err"; fail "status with a drifted node: exit $rc, want 1"; }
python3 - "$WORK/st1.json" "$K3" <<'PY' || fail "status: drift"
import json, sys
d, k3 = json.load(open(sys.argv[1])), sys.argv[2]
by = {h["name"]: h for h in d["hosts"]}
n3 = by["node003"]
assert n3["state"] == "drifted", n3
assert f"{k3} (installed, not running) has no testdrv driver" in n3["detail"], n3["detail"]
assert "no package stored: kfleet build --missing" in n3["detail"], n3["detail"]
assert d["summary"]["current"] == 7 and d["summary"]["drifted"] == 1, d["summary"]
PY
kr run --profile testdrv --driver 1.0.0 -l "$NODES" --no-deploy >"$WORK/nd.out" 2>&1 || { cat "$WORK/nd.out"; fail "run --no-deploy"; }
grep -q "1 built, 0 failed, 2 already stored" "$WORK/nd.out" || { cat "$WORK/nd.out"; fail "--no-deploy should build just $K3"; }
grep -q "== kfleet run: deploy" "$WORK/nd.out" && fail "--no-deploy deployed"
rc=0
kr status --profile testdrv -l node003 >"$WORK/st2.out" 2>&1 || rc=$?
grep -q "the package is stored: kfleet deploy fixes it" "$WORK/st2.out" || { cat "$WORK/st2.out"; fail "status after --no-deploy"; }
kr run --profile testdrv --driver 1.0.0 -l "$NODES" --stages 100% >"$WORK/fix.out" 2>&1 || { cat "$WORK/fix.out"; fail "run to fix the drift"; }
kr status --profile testdrv -l "$NODES" --refresh >"$WORK/st3.out" 2>/dev/null || { cat "$WORK/st3.out"; fail "status after the fix"; }
grep -q "the fleet is current: every host at testdrv 1.0.0" "$WORK/st3.out" || { cat "$WORK/st3.out"; fail "not current after the fix"; }
ok "a new installed kernel: drifted (no package), run --no-deploy builds only it, run deploys it, current"

# ---- unreachable, mismatch, Prometheus -------------------------------------------
kr facts -l 'node009:node010' >/dev/null 2>&1 || true
rc=0
kr status --profile nvidia -l 'node009:node010' --json --prometheus "$WORK/kfleet.prom" >"$WORK/st4.json" 2>&1 || rc=$?
[ "$rc" = 1 ] || { cat "$WORK/st4.json"; fail "status unreachable/mismatch: exit $rc"; }
python3 - "$WORK/st4.json" "$WORK/kfleet.prom" <<'PY' || fail "unreachable, mismatch, prometheus"
import json, re, sys
d = json.load(open(sys.argv[1]))
by = {h["name"]: h for h in d["hosts"]}
assert by["node009"]["state"] == "unreachable" and "connection refused" in by["node009"]["detail"], by["node009"]
m = by["node010"]
assert m["state"] == "mismatch" and "loaded module 550.54.15, userspace driver 550.40.07" in m["detail"], m
prom = open(sys.argv[2]).read()
assert re.search(r'^kfleet_nodes\{profile="nvidia",state="unreachable"\} 1$', prom, re.M), prom
assert re.search(r'^kfleet_nodes\{profile="nvidia",state="mismatch"\} 1$', prom, re.M), prom
assert re.search(r'^kfleet_node_info\{host="node010",state="mismatch",kernel="6\.1\.0-47-amd64",'
                 r'driver="",loaded_driver="550\.54\.15",userspace_driver="550\.40\.07",'
                 r'target_driver=""\} 1$', prom, re.M), prom
PY
ls "$WORK"/kfleet.prom.*.tmp >/dev/null 2>&1 && fail "a temporary Prometheus file was left"
ok "status: unreachable with its reason, module/userspace mismatch, Prometheus textfile"
