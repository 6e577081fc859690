#!/usr/bin/env bash
# The SSH engine streaming large stdin (what every deploy transfer is) to
# many real sshd nodes at once:
#   - 32 MiB to each of 20 nodes, all at once: every node's sha256sum of
#     what it received is the sender's (the window refills and libssh's
#     buffered writes both need the engine to send again after reading:
#     a transfer once stalled there until its timeout);
#   - one node stopped (SIGSTOP) in the middle of its transfer: it times
#     out alone, the others finish as fast as without it.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

: "${KF_STREAM:?KF_STREAM must name the kf_stream tool (ctest sets it)}"
[ "$(id -u)" = 0 ] || fail "needs root (sshd nodes): run sudo tests/run.sh"

"$FLEET_SH" up --dir "$FLEET" --nodes 20 --base-port "$(pick_base_port 20)" >/dev/null

rc=0
"$KF_STREAM" -i "$FLEET/inventory.yml" --known-hosts "$FLEET/known_hosts" --mib 32 --forks 20 \
	--timeout 120 >"$WORK/all.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || { cat "$WORK/all.out"; fail "streaming to 20 nodes exited $rc"; }
[ "$(grep -c ' ok ' "$WORK/all.out")" = 20 ] || { cat "$WORK/all.out"; fail "not every node got all 32 MiB"; }
slowest=$(awk '$2 == "ok" { if ($3 > m) m = $3 } END { print m }' "$WORK/all.out")
ok "32 MiB to each of 20 nodes at once, every byte checked by the node's sha256sum (slowest ${slowest} s)"

"$KF_STREAM" -i "$FLEET/inventory.yml" --known-hosts "$FLEET/known_hosts" --mib 32 --forks 20 \
	--timeout 30 >"$WORK/stop.out" 2>&1 &
pid=$!
sleep 0.5
"$FLEET_SH" stop --dir "$FLEET" node005
rc=0
wait "$pid" || rc=$?
"$FLEET_SH" cont --dir "$FLEET" node005
[ "$rc" = 1 ] || { cat "$WORK/stop.out"; fail "with a stopped node: exit $rc, want 1"; }
grep -q "^node005 FAILED .*timed out" "$WORK/stop.out" || { cat "$WORK/stop.out"; fail "the stopped node did not time out"; }
[ "$(grep -c ' ok ' "$WORK/stop.out")" = 19 ] || { cat "$WORK/stop.out"; fail "a stopped node held others back"; }
python3 - "$WORK/stop.out" "$slowest" <<'PY' || { cat "$WORK/stop.out"; fail "the others waited on the stopped node"; }
import sys
times = [float(l.split()[2]) for l in open(sys.argv[1]) if " ok " in l]
# Without the stopped node they finish as before, far from its 30 s timeout.
assert max(times) < max(3 * float(sys.argv[2]), 10), (max(times), sys.argv[2])
PY
ok "node005 stopped mid-transfer: it times out alone; the 19 others finish as fast as before"
