#!/usr/bin/env bash
# README command (1): installs kfleet's dependencies, builds it, starts the
# built-in demo fleet (real sshd nodes on 127.0.0.1, each with its own
# kernels, OS and GPUs, a few of them broken on purpose), and runs the main
# job on it. The fleet is stopped again when the demo ends.
#
#   contrib/demo.sh [--keep]     --keep leaves the fleet running in .demo/
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
keep=0
[ "${1:-}" = "--keep" ] && keep=1

if [ "$(id -u)" != 0 ]; then
	echo "demo.sh: the demo fleet runs sshd nodes in mount namespaces: run as root (sudo)" >&2
	exit 2
fi
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "installing dependencies (Debian packages)"
contrib/install-deps.sh
step "building kfleet"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target kfleet
kfleet=$here/build/kfleet

demo=$here/.demo
fleet=$demo/fleet
tests/fleet/testfleet.sh down --dir "$fleet" >/dev/null 2>&1 || true
if [ "$keep" = 0 ]; then
	trap 'tests/fleet/testfleet.sh down --dir "$fleet" >/dev/null 2>&1 || true' EXIT
fi
step "starting the demo fleet: 24 nodes on three Debian kernels, 4 of them faulty"
mkdir -p "$demo"
# The generator's 6.12 kernel is not in Debian's archive any more: use one
# whose headers package is, so every Debian kernel can be built below.
tests/fleet/testfleet.sh spec --nodes 24 | sed 's/6\.12\.38+deb12-amd64/6.12.117+deb12-amd64/g' \
	>"$demo/spec"
# Four broken nodes, so the report shows how failures are grouped.
sed -i -e 's/^\(node021 .*\)fault=none/\1fault=unreachable/' \
	-e 's/^\(node022 .*\)fault=none/\1fault=noauth/' \
	-e 's/^\(node023 .*\)fault=none/\1fault=hostkey/' \
	-e 's/^\(node024 .*\)fault=none/\1fault=hostile/' "$demo/spec"
tests/fleet/testfleet.sh up --dir "$fleet" --spec "$demo/spec" --base-port 23000

common=(-i "$fleet/inventory.yml" --known-hosts "$fleet/known_hosts" --ssh-config none
	--state "$demo/state")
step "kfleet hosts -l 'debian:!node00*'   (Ansible host patterns)"
"$kfleet" hosts "${common[@]}" -l 'debian:!node00*'
step "kfleet facts   (one SSH command per node, all nodes in parallel)"
rc=0
"$kfleet" facts "${common[@]}" || rc=$?
echo
echo "kfleet facts exited with status $rc (1 = some hosts failed: the four broken ones)."

# The build farm: the fixture module set (four modules, one exporting symbols
# the others use, packaged for DKMS) stands in for the NVIDIA driver, whose
# source cannot be downloaded here. Podman needs runc and explicit ulimits on
# hosts with hybrid cgroups; that is configuration, not code.
cat >"$demo/kfleet.yml" <<EOF
container:
  run_args: [--runtime, runc, --ulimit, "nofile=1024:1024", --ulimit, "nproc=4096:4096"]
builders:
  - {name: local, host: local, slots: 2}
profiles:
  demo-driver:
    type: kmod
    source: $here/tests/fixtures/kmod/kfleet-test-driver
    stub_threshold: 1024
EOF
common+=(--config "$demo/kfleet.yml")
step "kfleet plan -l debian   (every running and installed kernel, once)"
"$kfleet" plan "${common[@]}" -l debian
step "kfleet build --missing -l debian   (podman; the first run makes the builder images)"
rc=0
"$kfleet" build "${common[@]}" --missing -l debian || rc=$?
echo "kfleet build exited with status $rc."
step "kfleet build --missing -l debian   (again: everything is stored, nothing is built)"
"$kfleet" build "${common[@]}" --missing -l debian || true
step "kfleet artifacts list; kfleet artifacts verify"
"$kfleet" artifacts "${common[@]}" list
"$kfleet" artifacts "${common[@]}" verify || true
echo "Artifact store: $demo/state/store   (index.json, DRIVER/kernel-KERNEL/*.tar.gz)"
echo "State database: $demo/state/state.db   (sqlite3 $demo/state/state.db 'select host,kernel from facts')"
if [ "$keep" = 1 ]; then
	echo "The fleet is still running; stop it with: tests/fleet/testfleet.sh down --dir $fleet"
fi
