#!/usr/bin/env bash
# kfleet facts against 60 real sshd nodes on three kernels, with every fault
# switch: each host's result is checked against what the fleet was built
# with, not just counted.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

N=60
"$FLEET_SH" spec --nodes $N --faults >"$WORK/spec"
"$FLEET_SH" up --dir "$FLEET" --spec "$WORK/spec" --base-port "$(pick_base_port $N)"

# The fault=stop node is stopped before the run: TCP connects (the kernel
# queues it) but sshd never answers. The slow node (its probe sleeps 3 s) is
# stopped in the middle of its command. Neither may hold
# back any other node (the blocking-socket regression).
stop_node=$(awk '$0 ~ /fault=stop/ {print $1}' "$WORK/spec")
slow_node=$(awk '$0 ~ /fault=slow/ {print $1}' "$WORK/spec")
if [ -z "$stop_node" ] || [ -z "$slow_node" ]; then fail "spec lacks a stop or slow node"; fi
"$FLEET_SH" stop --dir "$FLEET" "$stop_node"

rc=0
start=$(date +%s.%N)
kf facts --json --auth-timeout 6s --command-timeout 6s --forks 64 >"$WORK/facts.json" \
	2>"$WORK/facts.err" &
pid=$!
# Stop the slow node once its probe is inside the command (its uname sleeps
# 3 s), not at a fixed time: on a loaded machine the handshake may still run.
for _ in $(seq 1 100); do
	pgrep -f '^sleep 3$' >/dev/null && break
	sleep 0.05
done
"$FLEET_SH" stop --dir "$FLEET" "$slow_node"
wait $pid || rc=$?
end=$(date +%s.%N)
"$FLEET_SH" cont --dir "$FLEET" "$stop_node"
"$FLEET_SH" cont --dir "$FLEET" "$slow_node"
[ "$rc" = 1 ] || { cat "$WORK/facts.err"; fail "kfleet facts exited $rc, want 1 (some hosts failed)"; }
ok "exit status 1 with failed hosts"

python3 - "$WORK/facts.json" "$FLEET/expected.tsv" "$start" "$end" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
wall = float(sys.argv[4]) - float(sys.argv[3])
hosts = {h["name"]: h for h in doc["hosts"]}
want_err = {
    "unreachable": ("CONNREFUSED", "connect"),
    "noauth": ("AUTH", "auth"),
    "hostkey": ("HOSTKEY_CHANGED", "hostkey"),
    "hostile": ("UNTRUSTED", "facts"),
    "huge": ("TRUNC", "command"),
    "stop": ("TIMEDOUT", "handshake"),
    "slow": ("TIMEDOUT", "command"),
    "sudo-password": ("SUDO", "become"),
}
errors = []
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")]
assert len(rows) == len(hosts), (len(rows), len(hosts))
for r in rows:
    name, port, kernel, installed, os_id, os_ver, loaded, user, gpus, sb, fault = r[:11]
    h = hosts.get(name)
    if h is None:
        errors.append(f"{name}: missing from output"); continue
    fault = fault.split("=")[0]
    if fault in want_err:
        code, phase = want_err[fault]
        if h["ok"]:
            errors.append(f"{name}: fault {fault} but ok"); continue
        e = h["error"]
        if e["code"] != code or e["phase"] != phase:
            errors.append(f"{name}: fault {fault}: want {code}/{phase}, got {e['code']}/{e['phase']}: {e['message']}")
        if any(ord(ch) < 0x20 for ch in e["message"]):
            errors.append(f"{name}: control byte in message {e['message']!r}")
        continue
    if not h["ok"]:
        errors.append(f"{name}: want facts, got {h['error']}"); continue
    f = h["facts"]
    got_inst = ",".join(k["release"] for k in f["kernels"])
    checks = [("kernel", f["kernel"], kernel), ("installed", got_inst, installed),
              ("os id", f["os"]["id"], os_id), ("os version", f["os"]["version"], os_ver),
              ("loaded driver", f["loaded_driver"] or "-", loaded),
              ("userspace driver", f["userspace_driver"] or "-", user),
              ("gpus", str(len(f["gpus"] or [])), gpus), ("secure boot", f["secure_boot"], sb),
              ("arch", f["arch"], "x86_64")]
    for what, got, want in checks:
        if got != want:
            errors.append(f"{name}: {what}: got {got!r}, want {want!r}")
    running = [k["release"] for k in f["kernels"] if k["running"]]
    if running != [kernel]:
        errors.append(f"{name}: running flags {running}")
# The stopped nodes must not hold the others back: every healthy host
# finished well before the 6 s timeouts (the blocking-socket regression).
for n, h in hosts.items():
    if h["ok"] and h["seconds"] > 4.5:
        errors.append(f"{n}: took {h['seconds']:.1f}s: held back by a stopped node?")
if wall > 12:
    errors.append(f"whole run took {wall:.1f}s (timeouts are 6s)")
s = doc["summary"]
if s["hosts"] != len(rows) or s["ok"] + s["failed"] != s["hosts"]:
    errors.append(f"summary {s}")
if errors:
    print("\n".join(errors)); sys.exit(1)
print(f"checked {len(rows)} hosts one by one; {s['ok']} ok, {s['failed']} failed as expected; wall {wall:.1f}s")
PY
ok "every host's facts or failure reason is right"

# Nothing the hostile node said was executed or stored.
[ ! -e /tmp/pwned ] || fail "hostile uname output was executed"
hostile=$(awk '$0 ~ /fault=hostile/ {print $1}' "$WORK/spec")
cnt=$(sqlite3 "$WORK/state/state.db" "select count(*) from facts where host='$hostile' and kernel is not null")
[ "$cnt" = 0 ] || fail "hostile node's kernel reached the database"
grep -q "rejected" <<<"$(sqlite3 "$WORK/state/state.db" "select error from facts where host='$hostile'")" ||
	fail "hostile node's error not recorded"
ok "hostile output rejected, nothing stored or run"

# The state database: private, versioned, one row per host.
[ "$(stat -c %a "$WORK/state")" = 700 ] || fail "state dir mode $(stat -c %a "$WORK/state")"
[ "$(stat -c %a "$WORK/state/state.db")" = 600 ] || fail "state.db mode"
[ "$(sqlite3 "$WORK/state/state.db" 'pragma user_version')" -ge 1 ] || fail "schema version"
[ "$(sqlite3 "$WORK/state/state.db" 'select count(*) from facts')" = $N ] || fail "facts rows"
n_ok=$(sqlite3 "$WORK/state/state.db" 'select count(*) from facts where ok=1')
[ "$(sqlite3 "$WORK/state/state.db" 'select count(distinct host) from host_kernels')" = "$n_ok" ] ||
	fail "host_kernels rows"
ok "state database private and complete"

# A failed attempt keeps the last good facts: make a good node unreachable.
good=node002
kernel_before=$(sqlite3 "$WORK/state/state.db" "select kernel from facts where host='$good'")
"$FLEET_SH" stop --dir "$FLEET" "$good"
rc=0
kf facts -l "$good" --auth-timeout 1s --json >/dev/null 2>&1 || rc=$?
"$FLEET_SH" cont --dir "$FLEET" "$good"
[ "$rc" = 1 ] || fail "single stopped host: exit $rc"
row=$(sqlite3 "$WORK/state/state.db" "select ok, error_code, kernel from facts where host='$good'")
[ "$row" = "0|TIMEDOUT|$kernel_before" ] || fail "after failure: $row"
ok "failed attempt recorded, last good facts kept"

# Human output: kernels grouped with folded host ranges, failures by reason.
kf facts --no-progress --auth-timeout 3s --command-timeout 5s >"$WORK/human.txt" 2>&1 || true
grep -qE '^  6\.1\.0-47-amd64 +x86_64 .* node\[' "$WORK/human.txt" || { cat "$WORK/human.txt"; fail "no folded kernel group"; }
grep -q 'connection refused (connect)' "$WORK/human.txt" || fail "no refused group"
grep -q 'host key changed (hostkey)' "$WORK/human.txt" || fail "no host key group"
grep -q 'INSTALLED, NOT RUNNING' "$WORK/human.txt" || fail "no installed-kernel section"
if grep -q $'\033' "$WORK/human.txt"; then fail "escape sequence reached the report"; fi
ok "human report grouped and folded"

# kfleet plan from these facts: one build key per (kernel, arch, distro)
# over every running and installed kernel of the nodes that answered,
# derived here independently from the fleet's own description.
kf plan --driver 550.54.15 --json >"$WORK/plan.json" 2>"$WORK/plan.err" || { cat "$WORK/plan.err"; fail "plan failed"; }
printf 'profiles:\n  nv:\n    type: nvidia-run\n    kernels: {max: "6.6"}\n' >"$WORK/kfleet.yml"
kf plan --driver 550.54.15 --config "$WORK/kfleet.yml" --json >"$WORK/plan-max.json" || fail "plan --config failed"
sqlite3 "$WORK/state/state.db" "insert into artifacts(profile, driver, kernel, arch, os_id, os_version, path, sha256, size, created_at)
	values('nvidia', '550.54.15', '6.1.0-47-amd64', 'x86_64', 'debian', '12', '/x', 'aa', 1, 0)"
kf plan --driver 550.54.15 --json >"$WORK/plan-stored.json" || fail "plan after store failed"
python3 - "$WORK/state/state.db" "$FLEET/expected.tsv" "$WORK/plan.json" "$WORK/plan-max.json" "$WORK/plan-stored.json" <<'PY' || fail "plan keys wrong"
import json, sqlite3, sys
# Nodes with good facts from any run so far (a later failure keeps them).
ok = {r[0] for r in sqlite3.connect(sys.argv[1]).execute("select host from facts where last_ok_at is not null")}
want = {}
for l in open(sys.argv[2]):
    if l.startswith("#"): continue
    r = l.rstrip("\n").split("\t")
    if r[0] not in ok: continue
    for k in r[3].split(","):
        want.setdefault((k, "x86_64", r[4], r[5]), set()).add(r[0])
def keys(path):
    d = json.load(open(path))
    return d, {(k["kernel"], k["arch"], k["os"]["id"], k["os"]["version"]): k for k in d["keys"]}
d, got = keys(sys.argv[3])
assert set(got) == set(want), (sorted(set(got) ^ set(want)))
for key, k in got.items():
    assert set(k["hosts"]) == want[key], (key, k["hosts"])
    assert k["status"] == "build", k
    assert k["nodes_running"] + k["nodes_installed_only"] == len(k["hosts"])
_, got = keys(sys.argv[4])
for key, k in got.items():
    newer = key[0].startswith("6.12")
    assert k["status"] == ("n/a" if newer else "build"), k
    assert (k["reason"] or "").startswith("kernel newer") == newer, k
_, got = keys(sys.argv[5])
for key, k in got.items():
    assert k["status"] == ("stored" if key == ("6.1.0-47-amd64", "x86_64", "debian", "12") else "build"), k
print(f"plan: {len(want)} build keys match the fleet's kernels")
PY
ok "plan: every running and installed kernel in exactly one build key; range and store respected"

# A soft open-files limit below what --forks needs is raised to the hard
# one; a hard limit below it runs fewer sessions at once, with a warning,
# rather than failing hosts with "too many open files".
healthy=$(awk '/fault=none/ {print $1}' "$WORK/spec" | paste -sd,)
nhealthy=$(awk '/fault=none/' "$WORK/spec" | wc -l)
for lim in -Sn:40 -n:100; do
	rc=0
	(
		ulimit "${lim%:*}" "${lim#*:}"
		kf facts --limit "$healthy" --forks 60 --no-progress
	) >"$WORK/fd.out" 2>"$WORK/fd.err" || rc=$?
	[ "$rc" = 0 ] || { cat "$WORK/fd.out" "$WORK/fd.err"; fail "ulimit $lim: facts exited $rc"; }
	grep -q "$nhealthy answered, 0 failed" "$WORK/fd.out" ||
		{ cat "$WORK/fd.out" "$WORK/fd.err"; fail "ulimit $lim: not all $nhealthy hosts answered"; }
	if [ "$lim" = -Sn:40 ]; then
		[ ! -s "$WORK/fd.err" ] || { cat "$WORK/fd.err"; fail "ulimit -Sn 40: a warning, though the soft limit could be raised"; }
	else
		grep -q -- "warning: --forks 60: each SSH session holds 3 open files and the open-files limit (ulimit -n) is 100: running 12 at once" "$WORK/fd.err" ||
			{ cat "$WORK/fd.err"; fail "ulimit -n 100: no warning of the fewer sessions"; }
	fi
done
ok "open files: a low soft limit raised, a low hard limit runs fewer sessions at once; every host answers"
