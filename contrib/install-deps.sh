#!/bin/sh
# Installs every build, test and runtime dependency of kfleet from Debian 12
# packages. Idempotent: packages already present are left alone, and apt-get
# is not even asked when nothing is missing.
#
#   contrib/install-deps.sh            build + test + runtime + VM (default)
#   contrib/install-deps.sh --bench    also the comparison tools of bench/
set -eu

# Build: compiler, CMake and the libraries kfleet links against.
BUILD="build-essential cmake pkg-config libuv1-dev libssh-dev libarchive-dev
libssl-dev libsqlite3-dev libyaml-dev libjansson-dev"
# Tests: cmocka for unit tests; a real OpenSSH server (and client, for
# ssh-keygen) for the test fleet; util-linux for unshare; shellcheck for the
# shell scripts; sqlite3 to inspect the state database from tests.
# tests/docs/test_contrib.sh: systemd (systemd-analyze verify on the units;
# nothing is started), groff-base, man-db and mandoc (the manual page
# rendered and linted), python3-yaml (the GitLab pipeline), dash (the
# Jenkins stage's sh).
TEST="libcmocka-dev openssh-server openssh-client util-linux procps shellcheck
sqlite3 python3 jq sudo iproute2 clang-format openssl busybox systemd
groff-base man-db mandoc python3-yaml dash"
# Builds: rootful podman with runc (crun refuses hybrid cgroups; runc named
# on the same apt line is what podman's "crun | runc" takes), debootstrap
# and the archive keyring for the builder base image; binutils (objcopy)
# strips modules on the control host.
RUNTIME="podman runc debootstrap debian-archive-keyring binutils kmod"
# tests/vm/: real Debian kernels under qemu (TCG; seabios and ipxe-qemu come
# as qemu's dependencies), qcow2 overlays (qemu-utils), the guest's ext4 image
# made with mkfs.ext4 -d (e2fsprogs), its root made with debootstrap, and
# ssh-keygen/ssh for the guest's keys and the client (openssh-client).
VM="qemu-system-x86 qemu-utils e2fsprogs debootstrap debian-archive-keyring
openssh-client"
# bench/: the tools an operator would otherwise use, measured in the same run.
BENCH="pssh ansible-core time"

pkgs="$BUILD $TEST $RUNTIME $VM"
for arg in "$@"; do
	case "$arg" in
	--bench) pkgs="$pkgs $BENCH" ;;
	*) echo "install-deps.sh: unknown option '$arg' (known: --bench)" >&2; exit 2 ;;
	esac
done

missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
if [ -z "$missing" ]; then
	echo "install-deps.sh: all dependencies present"
	exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "install-deps.sh: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086  # word splitting of the package list is intended
$SUDO apt-get install -y -qq --no-install-recommends $missing
