#!/usr/bin/env bash
# kfleet deploy on a fleet of 112 real sshd nodes on three kernels, with
# packages built for real in podman (the fixture module set, versions 1.0.0
# and 1.0.1):
#   - a clean staged rollout (1,5,20%,100%) with --reload: every node's
#     files, modules.dep, state and /sys/module checked; JUnit and JSON;
#   - the same deploy again changes nothing and says so;
#   - an upgrade where modprobe of the new version fails on two nodes of
#     stage 3: the stage goes over --max-fail, the rollout halts, the
#     running nodes finish and no new one starts, --auto-rollback puts both
#     back (files and /sys/module), the report says which node is at which
#     version; then `rollout resume` retries them and finishes;
#   - unreachable, changed host key, hanging (SIGSTOP) and full-disk nodes
#     fail with their own reasons and count against the budget;
#   - a damaged package in the store changes nothing on the node;
#   - --pause manual, then resume; Ctrl-C, then resume;
#   - SIGKILL of kfleet in the middle of a stage: another deploy is refused
#     by the node locks, `rollout resume` finishes, and every node is whole;
#   - kfleet rollback by hand, to the previous release and to none;
#   - Secure Boot refuses an unsigned package; a node whose NVIDIA userspace
#     is another version is installed, not reloaded; drain and undrain
#     hooks; --rollback-stage; --max-fail-total; --canary and --shuffle.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || fail "needs root (rootful podman, sshd nodes): run sudo tests/run.sh"
for t in podman runc debootstrap sqlite3 python3; do
	command -v "$t" >/dev/null || fail "needs $t: run contrib/install-deps.sh"
done

K1=6.1.0-47-amd64
K2=6.12.117+deb12-amd64
K3=6.1.0-47-cloud-amd64
KS=("$K1" "$K2" "$K3")
{
	for i in $(seq 1 100); do
		k=${KS[$((i % 3))]}
		inst=$k
		# every fourth node has a second kernel installed: its next boot
		if ((i % 4 == 0)); then
			if [ "$k" = "$K2" ]; then inst="$k,$K1"; else inst="$k,$K2"; fi
		fi
		printf 'node%03d kernel=%s installed=%s os=debian:12 gpus=1\n' "$i" "$k" "$inst"
	done
	echo "node101 kernel=$K1 os=debian:12 fault=unreachable"
	echo "node102 kernel=$K1 os=debian:12 fault=hostkey"
	echo "node103 kernel=$K1 os=debian:12 fault=stop"
	echo "node104 kernel=$K1 os=debian:12 disk=512"
	echo "node105 kernel=$K1 os=debian:12"
	echo "node106 kernel=$K1 os=debian:12"
	echo "node107 kernel=$K1 os=debian:12 sb=enabled"
	echo "node108 kernel=$K1 os=debian:12 gpus=1 userspace=0.9.0"
	for i in 109 110 111 112; do echo "node$i kernel=$K1 os=debian:12"; done
} >"$WORK/spec"
"$FLEET_SH" up --dir "$FLEET" --spec "$WORK/spec" --base-port "$(pick_base_port 112)" >/dev/null

for v in 1.0.0 1.0.1; do
	cp -R "$KF_SOURCE_DIR/tests/fixtures/kmod/kfleet-test-driver" "$WORK/src-$v"
	sed -i "s/^PACKAGE_VERSION=.*/PACKAGE_VERSION=\"$v\"/" "$WORK/src-$v/dkms.conf"
done
cat >"$WORK/kfleet.yml" <<EOF
container:
  run_args: [--runtime, runc, --ulimit, "nofile=1024:1024", --ulimit, "nproc=4096:4096"]
builders:
  - {name: local, host: local, slots: 2}
build: {timeout: 900}
deploy:
  transfer_forks: 8
profiles:
  testdrv:
    type: kmod
    source: $WORK/src-1.0.0
    stub_threshold: 1024
    # the fixture pretends to be NVIDIA's: check the userspace driver
    userspace_check: true
EOF
kd() { kf --config "$WORK/kfleet.yml" "$@"; }
ALL='node0*:node100'

kd facts >/dev/null 2>&1 || true # the fault nodes fail
for v in 1.0.0 1.0.1; do
	kd build --profile testdrv --source "$WORK/src-$v" --missing -l "$ALL" >"$WORK/build-$v.out" 2>&1 ||
		{ cat "$WORK/build-$v.out"; fail "build $v"; }
done
[ "$(kd artifacts list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 6 ] ||
	fail "want 6 packages (2 drivers x 3 kernels)"
ok "built 1.0.0 and 1.0.1 for three kernels in podman"

# check_nodes DRIVER LOADED PATTERN...: every named node (glob on names) has
# DRIVER current for each of its kernels, the modules in updates/kfleet with
# the package's bytes and in modules.dep, no lock left, and, with LOADED=1,
# the four modules loaded at DRIVER in /sys/module.
check_nodes() {
	python3 - "$FLEET" "$WORK/state/store/testdrv" "$@" <<'PY'
import fnmatch, hashlib, io, os, sys, tarfile
fleet, store, driver, loaded = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
pats = sys.argv[5:]
mods = ["kfleet_core", "kfleet_modeset", "kfleet_drm", "kfleet_uvm"]
spec = {}
for l in open(os.path.join(fleet, "spec")):
    f = l.split()
    if not f or f[0].startswith("#"):
        continue
    kv = dict(x.split("=", 1) for x in f[1:])
    ks = set(kv.get("installed", kv["kernel"]).split(",")) | {kv["kernel"]}
    spec[f[0]] = (kv["kernel"], sorted(ks))
pkgs = {}
def pkg(k):
    if k not in pkgs:
        d = os.path.join(store, driver, "kernel-" + k)
        tgz = [x for x in os.listdir(d) if x.endswith(".tar.gz")][0]
        with tarfile.open(os.path.join(d, tgz)) as t:
            pkgs[k] = {os.path.basename(m.name): hashlib.sha256(t.extractfile(m).read()).hexdigest()
                       for m in t.getmembers() if m.name.endswith(".ko")}
    return pkgs[k]
bad = []
names = [n for n in spec if any(fnmatch.fnmatch(n, p) for p in pats)]
assert names, pats
for n in names:
    fs = os.path.join(fleet, "nodes", n, "fs")
    running, kernels = spec[n]
    state = open(os.path.join(fs, "var/lib/kfleet/state")).read().split("\n")
    for k in kernels:
        cur = [l for l in state if l.startswith("current " + k + " ")]
        if len(cur) != 1 or cur[0].split()[2] != driver:
            bad.append(f"{n}: {k}: current {cur} not {driver}")
            continue
        upd = os.path.join(fs, "lib/modules", k, "updates/kfleet")
        have = {f: hashlib.sha256(open(os.path.join(upd, f), "rb").read()).hexdigest()
                for f in os.listdir(upd)} if os.path.isdir(upd) else {}
        if have != pkg(k):
            bad.append(f"{n}: {k}: updates/kfleet differs from the {driver} package")
        dep = open(os.path.join(fs, "lib/modules", k, "modules.dep")).read()
        for m in mods:
            if f"updates/kfleet/{m}.ko:" not in dep:
                bad.append(f"{n}: {k}: {m} not in modules.dep")
    if os.path.exists(os.path.join(fs, "var/lib/kfleet/lock")):
        bad.append(f"{n}: lock left")
    if loaded:
        for m in mods:
            p = os.path.join(fs, "sys/module", m, "version")
            v = open(p).read().strip() if os.path.exists(p) else None
            if v != driver:
                bad.append(f"{n}: /sys/module/{m}/version is {v}, not {driver}")
if bad:
    print("\n".join(bad[:20]) + (f"\n... {len(bad)} problems" if len(bad) > 20 else ""))
    sys.exit(1)
print(f"{len(names)} nodes at {driver}")
PY
}

# jget FILE PYTHON-EXPRESSION: evaluates it over the JSON document d.
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# ---- a clean staged rollout ------------------------------------------------
rc=0
kd deploy --profile testdrv --driver 1.0.0 -l "$ALL" --stages 1,5,20%,100% --reload \
	--junit "$WORK/deploy1.xml" --json >"$WORK/deploy1.json" 2>"$WORK/deploy1.err" || rc=$?
[ "$rc" = 0 ] || { cat "$WORK/deploy1.err"; fail "clean rollout exited $rc"; }
[ "$(jget "$WORK/deploy1.json" 'd["summary"]["updated"]')" = 100 ] || fail "want 100 updated"
[ "$(jget "$WORK/deploy1.json" '[s["nodes"] for s in d["stages"]]')" = "[1, 5, 20, 74]" ] ||
	fail "stages: $(jget "$WORK/deploy1.json" '[s["nodes"] for s in d["stages"]]')"
[ "$(jget "$WORK/deploy1.json" 'd["status"]')" = "done" ] || fail "rollout not done"
check_nodes 1.0.0 1 'node0*' node100 >"$WORK/check1.out" || { cat "$WORK/check1.out"; fail "nodes after the clean rollout"; }
python3 - "$WORK/deploy1.xml" <<'PY' || fail "JUnit report"
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
cases = r.findall(".//testcase")
assert len(cases) == 100 and r.get("failures") == "0", (len(cases), r.attrib)
assert len(r.findall("testsuite")) == 4
PY
id1=$(jget "$WORK/deploy1.json" 'd["rollout"]')
[ -s "$WORK/state/logs/rollouts/$id1/node050.log" ] || fail "no per-host log"
ok "clean rollout of 1.0.0 to 100 nodes in stages 1,5,20,74: files, modules.dep, /sys/module, JUnit"

# ---- the same deploy again: nothing to do ----------------------------------
# Under 100 open files for 100 nodes: an ended node's log is closed (held
# open, the logs alone would take every file the sessions need).
(
	ulimit -n 100
	kd deploy --profile testdrv --driver 1.0.0 -l "$ALL" --stages 1,5,20%,100% --reload --forks 8
) >"$WORK/deploy2.out" 2>&1 || { cat "$WORK/deploy2.out"; fail "second deploy"; }
! grep -q 'warning' "$WORK/deploy2.out" || { cat "$WORK/deploy2.out"; fail "second deploy: a warning"; }
grep -q "nothing to do: all 100 nodes are at testdrv 1.0.0 already" "$WORK/deploy2.out" ||
	{ cat "$WORK/deploy2.out"; fail "the second deploy should say nothing to do"; }
id2=$(sed -n 's/^rollout \([0-9]*\) done.*/\1/p' "$WORK/deploy2.out")
[ "$(sqlite3 "$WORK/state/state.db" "SELECT count(*) FROM rollout_events WHERE rollout_id = $id2 AND state IN ('transferring','installing','loading')")" = 0 ] ||
	fail "the second deploy changed something"
ok "the same deploy again changes nothing and says so (100 nodes in 100 open files)"

# ---- an upgrade where the new modules fail to load on two nodes ------------
conf() { echo "$FLEET/nodes/$1/fs/usr/local/etc/testnode.conf"; }
for n in node010 node020; do echo "modprobe_fail=kfleet_drm@1.0.1" >>"$(conf $n)"; done
rc=0
kd deploy --profile testdrv --driver 1.0.1 -l "$ALL" --stages 1,5,20%,100% --max-fail 1 --reload \
	--auto-rollback --forks 4 --json >"$WORK/up.json" 2>"$WORK/up.err" || rc=$?
[ "$rc" = 4 ] || { cat "$WORK/up.err"; fail "upgrade over budget exited $rc, want 4 (halted)"; }
idu=$(jget "$WORK/up.json" 'd["rollout"]')
python3 - "$WORK/up.json" <<'PY' || { cat "$WORK/up.err"; fail "halted rollout report"; }
import json, sys
d = json.load(open(sys.argv[1]))
assert d["status"] == "halted" and d["stage"] == 3, (d["status"], d["stage"])
by = {n["name"]: n for n in d["nodes"]}
for n in ("node010", "node020"):
    assert by[n]["outcome"] == "rolled_back", by[n]
    assert "Exec format error" in by[n]["error"]["message"], by[n]["error"]
    assert by[n]["version"] == "1.0.0", by[n]
assert all(by["node%03d" % i]["outcome"] == "updated" for i in range(1, 7)), "stages 1-2"
# stage 4 never started; its nodes are where the last rollout left them
assert all(by["node%03d" % i]["state"] == "pending" and by["node%03d" % i]["version"] == "1.0.0"
           for i in range(27, 101)), "stage 4 must not start"
assert d["stages"][2]["rolled_back"] == 2 and d["stages"][3]["not_started"] == 74
PY
check_nodes 1.0.0 1 node010 node020 >/dev/null || fail "rolled-back nodes are not whole at 1.0.0"
check_nodes 1.0.0 1 'node02[7-9]' 'node0[3-9]*' node100 >/dev/null || fail "stage 4 was touched"
kd rollout show "$idu" >"$WORK/show.out"
grep -q "rolled back .* 2  node\[010,020\]" "$WORK/show.out" || { cat "$WORK/show.out"; fail "show: rolled back group"; }
grep -qE "^  1\.0\.0 +76  node\[010,020,027-100\]" "$WORK/show.out" || { cat "$WORK/show.out"; fail "show: who is at 1.0.0"; }
ok "modprobe fails on 2 nodes of stage 3: halted at --max-fail 1, both rolled back (files, /sys/module), stage 4 untouched"

for n in node010 node020; do sed -i '/^modprobe_fail=/d' "$(conf $n)"; done
kd rollout resume "$idu" >"$WORK/resume1.out" 2>&1 || { cat "$WORK/resume1.out"; fail "resume of the halted rollout"; }
grep -q "retrying the failed nodes" "$WORK/resume1.out" || fail "resume does not say it retries"
check_nodes 1.0.1 1 'node0*' node100 >"$WORK/check2.out" || { cat "$WORK/check2.out"; fail "after resume"; }
ok "rollout resume retries the failed nodes and finishes: 100 nodes at 1.0.1"

# ---- nodes that cannot be deployed -----------------------------------------
"$FLEET_SH" stop --dir "$FLEET" node103
rc=0
kd deploy --profile testdrv --driver 1.0.1 -l 'node10[1-4]' --stages 100% --max-fail 3 \
	--connect-timeout 3s --auth-timeout 5s --command-timeout 5s --json >"$WORK/faults.json" 2>"$WORK/faults.err" || rc=$?
"$FLEET_SH" cont --dir "$FLEET" node103
[ "$rc" = 4 ] || { cat "$WORK/faults.err"; fail "4 failed nodes over --max-fail 3: exit $rc, want 4"; }
python3 - "$WORK/faults.json" <<'PY' || { cat "$WORK/faults.err"; fail "fault reasons"; }
import json, sys
d = json.load(open(sys.argv[1]))
by = {n["name"]: n for n in d["nodes"]}
want = {"node101": ("CONNREFUSED", "refused"), "node102": ("HOSTKEY_CHANGED", "HOST KEY CHANGED"),
        "node103": ("TIMEDOUT", "timed out"), "node104": ("IO", "not enough space in /var/lib/kfleet")}
for n, (code, text) in want.items():
    e = by[n]["error"]
    assert by[n]["outcome"] == "failed" and e and e["code"] == code and text in e["message"], (n, by[n])
assert d["summary"]["failed"] == 4
PY
ok "unreachable, changed host key, hanging and full-disk nodes: failed with their reasons, counted (halted)"

# ---- a damaged package in the store -----------------------------------------
snap() { (cd "$FLEET/nodes/node105/fs" && find var/lib lib/modules sys/module -printf '%p %s\n' | sort); }
snap >"$WORK/n105.before"
art=$(kd artifacts list --json --driver 1.0.1 --kernel "$K1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["path"])')
cp "$art" "$WORK/good.tgz"
printf 'X' | dd of="$art" bs=1 seek=100 conv=notrunc status=none
rc=0
kd deploy --profile testdrv --driver 1.0.1 -l node105 --stages 100% >"$WORK/bad.out" 2>&1 || rc=$?
cp "$WORK/good.tgz" "$art"
[ "$rc" = 4 ] || { cat "$WORK/bad.out"; fail "damaged package: exit $rc"; }
grep -q "is damaged (sha256 .*, the catalog says .*): nothing was sent" "$WORK/bad.out" ||
	{ cat "$WORK/bad.out"; fail "the damaged package is not reported"; }
snap >"$WORK/n105.after"
diff "$WORK/n105.before" "$WORK/n105.after" || fail "a damaged package changed the node"
ok "a damaged package in the store: refused before sending, nothing on the node changed"

# ---- --pause manual, then resume ---------------------------------------------
rc=0
kd deploy --profile testdrv --driver 1.0.1 -l 'node10[5-6]' --stages 1,100% --pause manual >"$WORK/pause.out" 2>&1 || rc=$?
[ "$rc" = 5 ] || { cat "$WORK/pause.out"; fail "--pause manual: exit $rc, want 5"; }
idp=$(sed -n 's/^rollout \([0-9]*\) paused.*/\1/p' "$WORK/pause.out")
if [ -z "$idp" ] || ! grep -q "resume with: kfleet rollout resume $idp" "$WORK/pause.out"; then
	cat "$WORK/pause.out"
	fail "no resume hint"
fi
check_nodes 1.0.1 0 node105 >/dev/null || fail "stage 1 not done before the pause"
[ -e "$FLEET/nodes/node106/fs/var/lib/kfleet/state" ] && fail "stage 2 ran before resume"
kd rollout resume "$idp" >"$WORK/pause2.out" 2>&1 || { cat "$WORK/pause2.out"; fail "resume after pause"; }
check_nodes 1.0.1 0 node105 node106 >/dev/null || fail "after resuming the pause"
ok "--pause manual stops after stage 1 (exit 5); resume runs stage 2"

# ---- SIGKILL in the middle of a stage, then resume -------------------------
"$KFLEET" -i "$FLEET/inventory.yml" --known-hosts "$FLEET/known_hosts" --ssh-config none \
	--state "$WORK/state" --config "$WORK/kfleet.yml" deploy --profile testdrv --driver 1.0.0 \
	-l "$ALL" --stages 10,100% --reload --forks 4 >"$WORK/kill.out" 2>&1 &
pid=$!
idk=""
for _ in $(seq 1 600); do
	idk=$(sqlite3 "$WORK/state/state.db" "SELECT max(id) FROM rollouts WHERE pid = $pid" 2>/dev/null || true)
	if [ -n "$idk" ]; then
		n=$(sqlite3 "$WORK/state/state.db" "SELECT count(*) FROM rollout_nodes WHERE rollout_id = $idk AND stage = 1 AND outcome IS NOT NULL")
		[ "$n" -ge 12 ] && break
	fi
	sleep 0.1
done
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
[ -n "$idk" ] || fail "the killed rollout was never journaled"
mid=$(sqlite3 "$WORK/state/state.db" "SELECT count(*) FROM rollout_nodes WHERE rollout_id = $idk AND state NOT IN ('pending','done')")
left=$(sqlite3 "$WORK/state/state.db" "SELECT count(*) FROM rollout_nodes WHERE rollout_id = $idk AND state = 'pending'")
[ "$left" -gt 0 ] || fail "SIGKILL came too late: nothing left to resume"
kd rollout list >"$WORK/list.out"
grep -qE "^ +$idk +deploy +testdrv +1\.0\.0 +interrupted" "$WORK/list.out" ||
	{ cat "$WORK/list.out"; fail "rollout list does not show the killed rollout as interrupted"; }
# A node the killed rollout had begun to change holds its lock: another
# rollout that wants to change it is refused.
locked=$(sqlite3 "$WORK/state/state.db" "SELECT host FROM rollout_nodes WHERE rollout_id = $idk AND state IN ('installing','loading','verifying') LIMIT 1")
if [ -n "$locked" ]; then
	rc=0
	kd deploy --profile testdrv --driver 1.0.1 -l "$locked" --stages 100% >"$WORK/other.out" 2>&1 || rc=$?
	grep -q "locked by rollout-$idk@" "$WORK/other.out" || { cat "$WORK/other.out"; fail "another deploy was not refused by the lock of $locked"; }
	lockmsg="another deploy refused by $locked's lock, "
else
	lockmsg="(no node was mid-change at the kill), "
fi
kd rollout resume "$idk" >"$WORK/resume2.out" 2>&1 || { cat "$WORK/resume2.out"; fail "resume after SIGKILL"; }
check_nodes 1.0.0 1 'node0*' node100 >"$WORK/check3.out" || { cat "$WORK/check3.out"; fail "nodes after SIGKILL and resume"; }
for n in $(seq -f 'node%03g' 1 100); do
	[ -e "$FLEET/nodes/$n/fs/var/lib/kfleet/lock" ] && fail "$n still locked"
done
ok "SIGKILL with $mid nodes mid-step and $left not started: ${lockmsg}resume finishes, all 100 whole at 1.0.0"

# ---- Ctrl-C: running nodes finish, none starts, resumable -------------------
"$KFLEET" -i "$FLEET/inventory.yml" --known-hosts "$FLEET/known_hosts" --ssh-config none \
	--state "$WORK/state" --config "$WORK/kfleet.yml" deploy --profile testdrv --driver 1.0.1 \
	-l 'node0[0-2]*' --stages 100% --forks 2 >"$WORK/int.out" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
	idi=$(sqlite3 "$WORK/state/state.db" "SELECT max(id) FROM rollouts WHERE pid = $pid" 2>/dev/null || true)
	[ -n "$idi" ] && [ "$(sqlite3 "$WORK/state/state.db" "SELECT count(*) FROM rollout_nodes WHERE rollout_id = $idi AND outcome IS NOT NULL")" -ge 2 ] && break
	sleep 0.1
done
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" = 5 ] || { cat "$WORK/int.out"; fail "Ctrl-C: exit $rc, want 5"; }
grep -q "interrupted: the running nodes finish, no new node starts" "$WORK/int.out" || fail "Ctrl-C message"
[ "$(sqlite3 "$WORK/state/state.db" "SELECT count(*) FROM rollout_nodes WHERE rollout_id = $idi AND state NOT IN ('pending','done')")" = 0 ] ||
	fail "Ctrl-C left nodes mid-step"
kd rollout resume "$idi" >"$WORK/int2.out" 2>&1 || { cat "$WORK/int2.out"; fail "resume after Ctrl-C"; }
check_nodes 1.0.1 0 'node0[0-2]*' >/dev/null || fail "after resuming the Ctrl-C"
ok "Ctrl-C: running nodes finish, none starts (exit 5), resume finishes"

# ---- rollback by hand -----------------------------------------------------------
kd rollback --profile testdrv -l 'node00[1-3]' --reload >"$WORK/rb.out" 2>&1 || { cat "$WORK/rb.out"; fail "rollback"; }
check_nodes 1.0.0 1 'node00[1-3]' >/dev/null || { cat "$WORK/rb.out"; fail "rollback to the previous release"; }
kd rollback --profile testdrv -l node004 --to none >"$WORK/rb2.out" 2>&1 || { cat "$WORK/rb2.out"; fail "rollback --to none"; }
grep -q "^current" "$FLEET/nodes/node004/fs/var/lib/kfleet/state" && fail "rollback --to none left a current release"
ls "$FLEET/nodes/node004/fs/lib/modules/"*/updates/kfleet/*.ko >/dev/null 2>&1 && fail "rollback --to none left modules"
ok "kfleet rollback: back to the previous release with --reload; --to none removes kfleet's modules"

# ---- Secure Boot, userspace mismatch ---------------------------------------
rc=0
kd deploy --profile testdrv --driver 1.0.1 -l 'node107:node108' --stages 100% --reload --json \
	>"$WORK/sb.json" 2>"$WORK/sb.err" || rc=$?
[ "$rc" = 1 ] || { cat "$WORK/sb.err"; fail "Secure Boot / userspace: exit $rc, want 1 (a node skipped)"; }
python3 - "$WORK/sb.json" <<'PY' || { cat "$WORK/sb.err"; fail "Secure Boot and userspace preflight"; }
import json, sys
d = json.load(open(sys.argv[1]))
by = {n["name"]: n for n in d["nodes"]}
sb, us = by["node107"], by["node108"]
assert sb["outcome"] == "skipped" and "Secure Boot is on" in sb["error"]["message"] and "not signed" in sb["error"]["message"], sb
assert us["outcome"] == "updated" and "not reloaded: the userspace driver is 0.9.0" in us["note"], us
PY
[ -e "$FLEET/nodes/node107/fs/var/lib/kfleet/state" ] && fail "Secure Boot node changed"
check_nodes 1.0.1 0 node108 >/dev/null || fail "userspace-mismatch node not installed"
[ -e "$FLEET/nodes/node108/fs/sys/module/kfleet_core" ] && fail "userspace-mismatch node was reloaded"
ok "Secure Boot on: unsigned package skipped, nothing changed; userspace 0.9.0: installed, not reloaded"

# ---- hooks, --rollback-stage, --max-fail-total, --canary, --shuffle ----------
R4='node109:node110:node111:node112'
# The undrain hook runs on the node and writes into the fleet directory,
# which every node sees at the same path.
python3 - "$WORK/kfleet.yml" "$WORK/kfleet-hooks.yml" "$WORK/hooks.log" "$FLEET/hooks-node.log" <<'PY'
import sys
src, dst, ctl, node = sys.argv[1:]
text = open(src).read().replace("deploy:\n", "deploy:\n"
    f"  drain: {{command: 'echo drain {{host}} >>{ctl}', on: control}}\n"
    f"  undrain: {{command: 'echo undrain $(hostname) >>{node}', on: node}}\n", 1)
open(dst, "w").write(text)
PY
kh() { kf --config "$WORK/kfleet-hooks.yml" "$@"; }
kh deploy --profile testdrv --driver 1.0.0 -l "$R4" --stages 100% --reload >"$WORK/r4.out" 2>&1 ||
	{ cat "$WORK/r4.out"; fail "deploy 1.0.0 to $R4"; }
[ "$(sort "$WORK/hooks.log" | tr '\n' ' ')" = "drain node109 drain node110 drain node111 drain node112 " ] ||
	fail "drain hook on the control host: $(cat "$WORK/hooks.log")"
[ "$(sort "$FLEET/hooks-node.log" | tr '\n' ' ')" = "undrain node109 undrain node110 undrain node111 undrain node112 " ] ||
	fail "undrain hook on the nodes: $(cat "$FLEET/hooks-node.log" 2>&1)"
ok "drain hook on the control host, undrain on the node, around each reload"

echo "modprobe_fail=kfleet_drm@1.0.1" >>"$(conf node112)"
rc=0
kh deploy --profile testdrv --driver 1.0.1 -l "$R4" --stages 100% --reload --rollback-stage \
	--json >"$WORK/rbs.json" 2>"$WORK/rbs.err" || rc=$?
[ "$rc" = 4 ] || { cat "$WORK/rbs.err"; fail "--rollback-stage: exit $rc, want 4"; }
grep -q "rolling back stage 1: 3 updated nodes" "$WORK/rbs.err" || { cat "$WORK/rbs.err"; fail "no stage rollback"; }
check_nodes 1.0.0 1 node109 node110 node111 >/dev/null || fail "--rollback-stage did not put the stage back at 1.0.0"
ok "--rollback-stage: a failure halts the stage and its 3 updated nodes go back to 1.0.0 (loaded)"
sed -i '/^modprobe_fail=/d' "$(conf node112)"

for n in node110 node111; do echo "modprobe_fail=kfleet_drm@1.0.1" >>"$(conf $n)"; done
rc=0
kd deploy --profile testdrv --driver 1.0.1 -l "$R4" --stages 1 --max-fail 1 --max-fail-total 1 \
	--reload --auto-rollback --json >"$WORK/mft.json" 2>"$WORK/mft.err" || rc=$?
[ "$rc" = 4 ] || { cat "$WORK/mft.err"; fail "--max-fail-total: exit $rc, want 4"; }
python3 - "$WORK/mft.json" <<'PY' || { cat "$WORK/mft.err"; fail "--max-fail-total"; }
import json, sys
d = json.load(open(sys.argv[1]))
by = {n["name"]: n for n in d["nodes"]}
assert [by[n]["stage"] for n in ("node109", "node110", "node111", "node112")] == [1, 2, 3, 4]
assert by["node110"]["outcome"] == by["node111"]["outcome"] == "rolled_back"
assert by["node112"]["state"] == "pending" and d["stage"] == 3, (by["node112"], d["stage"])
assert "over its budget of 1 (--max-fail-total 1" in d["reason"], d["reason"]
PY
for n in node110 node111; do sed -i '/^modprobe_fail=/d' "$(conf $n)"; done
ok "--max-fail-total 1: each stage within --max-fail 1, the second failure overall halts"

kd deploy --profile testdrv --driver 1.0.1 -l "$R4" --stages 1,100% --canary node111 --shuffle \
	--json >"$WORK/can.json" 2>"$WORK/can.err" || { cat "$WORK/can.err"; fail "--canary --shuffle"; }
python3 - "$WORK/can.json" <<'PY' || fail "--canary"
import json, sys
d = json.load(open(sys.argv[1]))
st = {n["name"]: n["stage"] for n in d["nodes"]}
assert st["node111"] == 1 and sorted(v for k, v in st.items() if k != "node111") == [2, 2, 2], st
assert json.loads(json.dumps(d["options"]))["seed"] != 0
PY
ok "--canary node111 is stage 1; --shuffle records its seed for resume"

# ---- a rollback that fails on one kernel still puts the others back -----------
# node012 runs one kernel and has another installed, both at 1.0.1 (1.0.0
# previous). Its running kernel's reload fails: that kernel's rollback
# fails, the installed one is still put back and verified, and the node ends.
echo "modprobe_fail=kfleet_drm" >>"$(conf node012)"
rc=0
timeout 300 "$KFLEET" -i "$FLEET/inventory.yml" --known-hosts "$FLEET/known_hosts" --ssh-config none \
	--state "$WORK/state" --config "$WORK/kfleet.yml" rollback --profile testdrv -l node012 --reload \
	--json >"$WORK/rbf.json" 2>"$WORK/rbf.err" || rc=$?
sed -i '/^modprobe_fail=/d' "$(conf node012)"
# (a rollback has a failure budget too: its one stage, over --max-fail 0, halts)
[ "$rc" = 4 ] || { cat "$WORK/rbf.err"; fail "a rollback failing on one kernel: exit $rc, want 4"; }
python3 - "$WORK/rbf.json" "$FLEET" <<'PY' || { cat "$WORK/rbf.err"; fail "rollback failing on one kernel"; }
import json, sys
d, fleet = json.load(open(sys.argv[1])), sys.argv[2]
n = d["nodes"][0]
assert n["outcome"] == "failed" and "loading kfleet_drm failed" in n["error"]["message"], n
state = open(f"{fleet}/nodes/node012/fs/var/lib/kfleet/state").read().split("\n")
cur = [l.split()[2] for l in state if l.startswith("current ")]
assert len(cur) == 2 and cur == ["1.0.0", "1.0.0"], state
PY
ok "a rollback whose reload fails on the running kernel still puts the installed kernel back, and ends"
