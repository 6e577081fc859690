#!/usr/bin/env bash
# Builds an out-of-tree kernel module directory for one kernel, in that
# kernel's builder image (made by make-image.sh headers KERNEL), with no
# network:
#
#   build-module.sh KERNEL SRC_DIR OUT_DIR [DRIVER_VERSION]
#
# SRC_DIR is mounted read-only and copied to a fixed path inside the container
# (the same path every time, which keeps the .ko files byte-reproducible), and
# built with `make -C /lib/modules/KERNEL/build M=... modules` using the
# compiler the kernel was built with. DRIVER_VERSION, when given, is passed
# as KFLEET_DRIVER_VERSION=... to make. OUT_DIR must be new or empty; it gets
# the .ko files, build.log, and vermagic.txt. The vermagic of every .ko is
# checked against KERNEL.
set -euo pipefail

# ---- Settings (every one can be overridden from the environment) ----------
# Same names and defaults as in make-image.sh.
KFLEET_PODMAN_RUNTIME=${KFLEET_PODMAN_RUNTIME:-runc}
KFLEET_ULIMIT_NOFILE=${KFLEET_ULIMIT_NOFILE:-$(ulimit -Hn)}
KFLEET_ULIMIT_NPROC=${KFLEET_ULIMIT_NPROC:-$(ulimit -Hu)}
# Parallel compile jobs in the container.
KFLEET_BUILD_JOBS=${KFLEET_BUILD_JOBS:-$(nproc)}
# The container is killed after this many seconds.
KFLEET_BUILD_TIMEOUT=${KFLEET_BUILD_TIMEOUT:-3600}
# Where the sources are built inside the container. Debug info records this
# path: change it and the .ko files change.
KFLEET_BUILD_PATH=${KFLEET_BUILD_PATH:-/usr/src/kfleet-build}
# Set, it makes Kbuild (6.12's scripts/Makefile.btf) run pahole without -j:
# pahole 1.24's parallel BTF encoding gives a different .BTF section from one
# build to the next. Modules do not embed the value itself. Empty: unset.
KFLEET_BUILD_TIMESTAMP=${KFLEET_BUILD_TIMESTAMP-1970-01-01 00:00:00 UTC}
# ---------------------------------------------------------------------------

prog=build-module.sh
here=$(cd "$(dirname "$0")" && pwd)
die() {
	echo "$prog: error: $*" >&2
	exit 1
}

[ "$KFLEET_ULIMIT_NOFILE" = unlimited ] && KFLEET_ULIMIT_NOFILE=1048576
[ "$KFLEET_ULIMIT_NPROC" = unlimited ] && KFLEET_ULIMIT_NPROC=1048576
# Podman 4.3 lowers its own RLIMIT_NPROC to 32768 before starting the runtime,
# so a container asking for more fails with "error setting rlimit type 6".
[ "$KFLEET_ULIMIT_NPROC" -le 32768 ] || KFLEET_ULIMIT_NPROC=32768

if [ $# -lt 3 ] || [ $# -gt 4 ]; then
	echo "usage: $prog KERNEL SRC_DIR OUT_DIR [DRIVER_VERSION]" >&2
	exit 2
fi
kernel=$1
src=$2
out=$3
version=${4:-}

for t in podman "$KFLEET_PODMAN_RUNTIME"; do
	command -v "$t" >/dev/null 2>&1 ||
		die "missing: $t; run contrib/install-deps.sh (Debian packages: podman runc)"
done
[ "$(id -u)" = 0 ] || die "must run as root (the builder images are root's)"

# make-image.sh validates KERNEL and maps it to the image tag.
image=$("$here/make-image.sh" name "$kernel") || exit 1
podman image exists "$image" ||
	die "no image $image; run: contrib/builder/make-image.sh headers $kernel"

if [ -n "$version" ] && ! [[ "$version" =~ ^[0-9A-Za-z.+~_-]{1,64}$ ]]; then
	die "DRIVER_VERSION '$version': use only letters, digits and . + ~ _ -"
fi
[ -d "$src" ] || die "SRC_DIR '$src' is not a directory"
[ -f "$src/Kbuild" ] || [ -f "$src/Makefile" ] ||
	die "SRC_DIR '$src' has neither Kbuild nor Makefile"
src=$(cd "$src" && pwd)
if [ -e "$out" ]; then
	[ -d "$out" ] || die "OUT_DIR '$out' exists and is not a directory"
	[ -z "$(ls -A "$out")" ] || die "OUT_DIR '$out' is not empty"
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
case "$out/" in "$src"/*) die "OUT_DIR must not be inside SRC_DIR" ;; esac

cname="kfleet-build-$$"
# shellcheck disable=SC2064  # expand $cname now
trap "podman rm -f '$cname' >/dev/null 2>&1 || true" EXIT

# The script below runs in the container: its $VARS are the container's.
# shellcheck disable=SC2016
rc=0
podman --runtime "$KFLEET_PODMAN_RUNTIME" run --pull=never --rm --name "$cname" \
	--network=none --cap-drop=all --security-opt=no-new-privileges \
	--timeout "$KFLEET_BUILD_TIMEOUT" \
	--ulimit "nofile=$KFLEET_ULIMIT_NOFILE:$KFLEET_ULIMIT_NOFILE" \
	--ulimit "nproc=$KFLEET_ULIMIT_NPROC:$KFLEET_ULIMIT_NPROC" \
	-v "$src:/src:ro" -v "$out:/out:rw" \
	-e "KERNEL=$kernel" -e "VERSION=$version" -e "JOBS=$KFLEET_BUILD_JOBS" \
	-e "BUILD=$KFLEET_BUILD_PATH" -e LC_ALL=C.UTF-8 \
	-e "TIMESTAMP=$KFLEET_BUILD_TIMESTAMP" \
	"$image" bash -euo pipefail -c '
	kdir=/lib/modules/$KERNEL/build
	[ -f "$kdir/Makefile" ] || { echo "image lacks $kdir" >&2; exit 3; }
	cc=gcc
	[ -f /etc/kfleet-kernel-cc ] && cc=$(cat /etc/kfleet-kernel-cc)
	rm -rf "$BUILD"
	mkdir -p "$BUILD"
	cp -R --no-preserve=ownership /src/. "$BUILD/"
	# Leftovers of a build on the host would be taken as up to date.
	find "$BUILD" \( -name "*.o" -o -name "*.ko" -o -name "*.mod" -o -name "*.mod.c" \
		-o -name ".*.cmd" -o -name Module.symvers -o -name modules.order \) -delete
	args=(-C "$kdir" M="$BUILD" CC="$cc" -j"$JOBS")
	[ -z "$VERSION" ] || args+=(KFLEET_DRIVER_VERSION="$VERSION")
	[ -z "$TIMESTAMP" ] || args+=(KBUILD_BUILD_TIMESTAMP="$TIMESTAMP")
	{
		echo "# kernel $KERNEL, compiler: $("$cc" --version | head -n 1)"
		echo "# make ${args[*]} modules"
		# What a reproducible rebuild needs to match.
		dpkg-query -W -f="\${db:Status-Abbrev} \${Package} \${Version}\n" binutils dwarves pahole \
			libelf1 "gcc-[0-9]*" "linux-headers-*" "linux-kbuild-*" 2>/dev/null |
			awk "\$1 == \"ii\" && \$2 !~ /-base\$/ { print \"# package\", \$2, \$3 }" || true
	} >/out/build.log
	rc=0
	make "${args[@]}" modules >>/out/build.log 2>&1 || rc=$?
	[ "$rc" = 0 ] || { echo "# make failed: exit $rc" >>/out/build.log; exit 10; }
	n=0
	while IFS= read -r -d "" ko; do
		cp "$ko" /out/
		n=$((n + 1))
	done < <(find "$BUILD" -name "*.ko" -print0)
	[ "$n" -gt 0 ] || { echo "# make made no .ko file" >>/out/build.log; exit 11; }
	bad=0
	for ko in /out/*.ko; do
		vm=$(modinfo -F vermagic "$ko")
		printf "%s\t%s\n" "${ko##*/}" "$vm" >>/out/vermagic.txt
		case "$vm" in
		"$KERNEL "*) ;;
		*) echo "# ${ko##*/}: vermagic \"$vm\" is not for $KERNEL" >>/out/build.log; bad=1 ;;
		esac
	done
	[ "$bad" = 0 ] || exit 12
' || rc=$?
trap - EXIT

case "$rc" in
0) ;;
10 | 11 | 12)
	tail -n 30 "$out/build.log" >&2 || true
	die "build for $kernel failed (log: $out/build.log)"
	;;
*) die "podman run failed (exit $rc) for $image" ;;
esac
find "$out" -maxdepth 1 -name '*.ko' -printf '%f\n' | sort | sed "s|^|$prog: built |" >&2
echo "$prog: log: $out/build.log" >&2
