# shellcheck shell=bash
# Shared by the integration tests: a fleet per test in a private directory,
# always torn down, and small assertion helpers.
set -euo pipefail
: "${KFLEET:?KFLEET must name the kfleet binary (ctest sets it)}"
: "${KF_SOURCE_DIR:?}"
FLEET_SH=$KF_SOURCE_DIR/tests/fleet/testfleet.sh
WORK=$(mktemp -d /tmp/kfleet-it.XXXXXX)
FLEET=$WORK/fleet

cleanup() {
	"$FLEET_SH" down --dir "$FLEET" >/dev/null 2>&1 || true
	if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	exit 1
}
ok() { echo "ok: $*"; }

# A free base port for N nodes: each test gets its own range so a leftover
# fleet from a crashed run cannot answer for this one.
pick_base_port() {
	local n=$1 base
	for base in $(seq 24000 400 40000); do
		if ! ss -ltn | awk '{print $4}' | grep -qE ":($(seq -s '|' "$base" $((base + n))))\$"; then
			echo "$base"
			return
		fi
	done
	fail "no free port range for $n nodes"
}

# kfleet with the fleet's inventory, keys and a private state directory.
kf() {
	"$KFLEET" -i "$FLEET/inventory.yml" --known-hosts "$FLEET/known_hosts" --ssh-config none \
		--state "$WORK/state" "$@"
}
