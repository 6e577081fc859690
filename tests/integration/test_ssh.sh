#!/usr/bin/env bash
# The SSH engine's policies against real sshd: strict host keys (unknown
# refused, --accept-new-hostkeys records, a changed key always refused and
# never overwritten), handshakes dropped by MaxStartups retried with backoff,
# ~/.ssh/config Host aliases, and --limit patterns.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

N=6
"$FLEET_SH" spec --nodes $N >"$WORK/spec"
# node001 accepts only 3 unauthenticated connections at once.
sed -i 's/^\(node001 .*\)$/\1 maxstartups=3/' "$WORK/spec"
sed -i 's/^\(node006 .*\)fault=none/\1fault=hostkey/' "$WORK/spec"
base=$(pick_base_port $N)
"$FLEET_SH" up --dir "$FLEET" --spec "$WORK/spec" --base-port "$base"

# --- host keys -----------------------------------------------------------------
: >"$WORK/kh"
rc=0
"$KFLEET" facts -i "$FLEET/inventory.yml" --known-hosts "$WORK/kh" --ssh-config none \
	--state "$WORK/state" --json >"$WORK/unknown.json" 2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "unknown keys: exit $rc"
python3 - "$WORK/unknown.json" <<'PY' || fail "unknown host keys not refused"
import json, sys
d = json.load(open(sys.argv[1]))
bad = [h for h in d["hosts"] if h["ok"] or h["error"]["code"] != "HOSTKEY_UNKNOWN"
       or "--accept-new-hostkeys" not in h["error"]["message"]]
sys.exit(1 if bad or len(d["hosts"]) != 6 else 0)
PY
[ ! -s "$WORK/kh" ] || fail "known_hosts written without --accept-new-hostkeys"
ok "unknown host keys refused, with how to accept them"

"$KFLEET" facts -i "$FLEET/inventory.yml" --known-hosts "$WORK/kh" --ssh-config none \
	--state "$WORK/state" --accept-new-hostkeys >/dev/null 2>&1 || fail "accept-new run failed"
[ "$(wc -l <"$WORK/kh")" = $N ] || fail "want $N recorded keys, got $(wc -l <"$WORK/kh")"
"$KFLEET" facts -i "$FLEET/inventory.yml" --known-hosts "$WORK/kh" --ssh-config none \
	--state "$WORK/state" >"$WORK/recorded.txt" 2>&1 || { cat "$WORK/recorded.txt"; fail "run with recorded keys failed"; }
ok "--accept-new-hostkeys records keys; the next run checks against them"

cp "$FLEET/known_hosts" "$WORK/kh2"
sum_before=$(sha256sum <"$WORK/kh2")
rc=0
"$KFLEET" facts -i "$FLEET/inventory.yml" --known-hosts "$WORK/kh2" --ssh-config none \
	--state "$WORK/state" --accept-new-hostkeys --json -l node006 >"$WORK/changed.json" 2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "changed key with --accept-new-hostkeys: exit $rc"
python3 -c '
import json,sys; h=json.load(open(sys.argv[1]))["hosts"][0]
m=h["error"]["message"]
sys.exit(0 if h["error"]["code"]=="HOSTKEY_CHANGED" and "CHANGED" in m and "ssh-keygen -R" in m else 1)' \
	"$WORK/changed.json" || fail "changed key not reported loudly"
[ "$(sha256sum <"$WORK/kh2")" = "$sum_before" ] || fail "a changed key was overwritten"
ok "a changed host key fails even with --accept-new-hostkeys and is never overwritten"

# --- MaxStartups: 24 sessions to one sshd that takes 3 handshakes at once -------
port1=$(awk -F'\t' '$1 == "node001" {print $2}' "$FLEET/expected.tsv")
{
	echo "all:"
	echo "  vars: {ansible_user: root, ansible_ssh_private_key_file: $FLEET/id_ed25519}"
	echo "  hosts:"
	for i in $(seq -w 1 24); do echo "    alias$i: {ansible_host: 127.0.0.1, ansible_port: $port1}"; done
} >"$WORK/many.yml"
"$KFLEET" facts -i "$WORK/many.yml" --known-hosts "$FLEET/known_hosts" --ssh-config none \
	--state "$WORK/state" --json --max-handshakes 24 --forks 24 >"$WORK/many.json" \
	2>"$WORK/many.err" || { cat "$WORK/many.err"; fail "MaxStartups: hosts failed"; }
retries=$(python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))
assert all(h["ok"] for h in d["hosts"]) and len(d["hosts"]) == 24
print(sum(h["handshake_retries"] for h in d["hosts"]))' "$WORK/many.json")
[ "$retries" -gt 0 ] || fail "sshd never refused a handshake: the test proves nothing"
ok "24 sessions through MaxStartups=3: all answered after $retries refused handshakes were retried"

# --- ssh config Host aliases --------------------------------------------------
printf 'all:\n  hosts:\n    node002:\n    node003:\n' >"$WORK/alias.yml"
"$KFLEET" facts -i "$WORK/alias.yml" --known-hosts "$FLEET/known_hosts" \
	--ssh-config "$FLEET/ssh_config" --state "$WORK/state" --json >"$WORK/alias.json" ||
	fail "ssh config aliases"
python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); exp={l.split("\t")[0]: l.split("\t")[2] for l in open(sys.argv[2]) if not l.startswith("#")}
sys.exit(0 if all(h["facts"]["kernel"]==exp[h["name"]] for h in d["hosts"]) else 1)' \
	"$WORK/alias.json" "$FLEET/expected.tsv" || fail "alias facts wrong"
ok "HostName/Port/User/IdentityFile taken from ssh config for Host aliases"

# --- patterns and hosts ---------------------------------------------------------
got=$(kf hosts --json -l 'all:!node00[12]:&~node00[1-4]' | python3 -c 'import json,sys; print(",".join(h["name"] for h in json.load(sys.stdin)))')
[ "$got" = "node003,node004" ] || fail "--limit selected '$got'"
rc=0
kf hosts -l 'nosuchgroup' >/dev/null 2>"$WORK/none.err" || rc=$?
[ "$rc" = 2 ] || fail "empty selection: exit $rc, want 2"
grep -q "no host" "$WORK/none.err" || fail "empty selection: no message"
ok "--limit patterns select exactly; an empty selection is a usage error"

# --- what kfleet refuses, per host, without failing the others ------------------
port2=$(awk -F'\t' '$1 == "node002" {print $2}' "$FLEET/expected.tsv")
cat >"$WORK/refuse.yml" <<YAML
all:
  vars: {ansible_user: root, ansible_ssh_private_key_file: $FLEET/id_ed25519, ansible_host: 127.0.0.1}
  hosts:
    jumped: {ansible_port: $port2, ansible_ssh_common_args: "-o ProxyJump=bastion.example.com"}
    localconn: {ansible_connection: local}
    badkey: {ansible_port: $port2, ansible_ssh_private_key_file: $WORK/no-such-key}
    fine: {ansible_port: $port2}
YAML
rc=0
"$KFLEET" facts -i "$WORK/refuse.yml" --known-hosts "$FLEET/known_hosts" --ssh-config none \
	--state "$WORK/state" --json >"$WORK/refuse.json" 2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "refusals: exit $rc"
python3 - "$WORK/refuse.json" <<'PY' || fail "refusals reported wrongly"
import json, sys
h = {x["name"]: x for x in json.load(open(sys.argv[1]))["hosts"]}
assert h["fine"]["ok"], h["fine"]
e = h["jumped"]["error"]; assert e["code"] == "UNSUPPORTED" and "ProxyJump=bastion.example.com" in e["message"], e
e = h["localconn"]["error"]; assert e["code"] == "UNSUPPORTED" and "local" in e["message"], e
e = h["badkey"]["error"]; assert e["code"] == "AUTH" and "no-such-key" in e["message"], e
PY
ok "ProxyJump, a non-ssh connection and a missing key each fail their host with the reason"

# --- the live progress line, when asked for (stderr is not a TTY here) ----------
kf facts --progress >/dev/null 2>"$WORK/progress.err" || true
grep -q "facts: $N/$N done" "$WORK/progress.err" || fail "no progress line"
kf facts >/dev/null 2>"$WORK/noprogress.err" || true
if grep -q "done," "$WORK/noprogress.err"; then fail "progress line without a TTY"; fi
ok "progress line on request, none when stderr is not a terminal"
