#!/usr/bin/env bash
# Makes kfleet's builder images locally, with no image registry: a Debian 12
# root made by debootstrap and imported into podman, then one layer per kernel
# with that kernel's headers and the compiler the kernel was built with.
#
#   make-image.sh [base] [--force]      localhost/kfleet-builder:debian12
#   make-image.sh headers KERNEL [--force]
#                                       localhost/kfleet-builder:debian12-KERNEL
#                                       ('+' and '~' in KERNEL become '_': a tag
#                                       may not hold them)
#   make-image.sh name [KERNEL]         prints the image name and exits
#
# Everything is idempotent: an image that exists is left alone (--force makes
# it again). The debootstrap download and the finished root are cached in
# $KFLEET_BUILDER_CACHE, so making the base image again downloads nothing, and
# the .debs of a headers layer are cached there too. The Debian archive is the
# host's own: it is read from /etc/apt/sources.list* at run time, and those
# sources are copied into the image (KFLEET_MIRROR and KFLEET_APT_SOURCES
# override them).
set -euo pipefail

# ---- Settings (every one can be overridden from the environment) ----------
# Where the debootstrap tarball, the root tarball and the .deb cache live.
KFLEET_BUILDER_CACHE=${KFLEET_BUILDER_CACHE:-/var/cache/kfleet/builder}
# Image name and the tag of the base image; a kernel layer is TAG-KERNEL.
KFLEET_BUILDER_IMAGE=${KFLEET_BUILDER_IMAGE:-localhost/kfleet-builder}
KFLEET_BUILDER_TAG=${KFLEET_BUILDER_TAG:-debian12}
KFLEET_BUILDER_SUITE=${KFLEET_BUILDER_SUITE:-bookworm}
# Archive URL for debootstrap; empty: the host's apt sources say.
KFLEET_MIRROR=${KFLEET_MIRROR:-}
# A deb822 or one-line sources file to put in the image instead of the host's.
KFLEET_APT_SOURCES=${KFLEET_APT_SOURCES:-}
# OCI runtime: crun fails on hosts with hybrid cgroups, runc works.
KFLEET_PODMAN_RUNTIME=${KFLEET_PODMAN_RUNTIME:-runc}
# Container limits must not exceed the caller's hard limits: without
# CAP_SYS_RESOURCE podman's raised defaults fail with "setrlimit ... not
# permitted". Default: the current hard limits.
KFLEET_ULIMIT_NOFILE=${KFLEET_ULIMIT_NOFILE:-$(ulimit -Hn)}
KFLEET_ULIMIT_NPROC=${KFLEET_ULIMIT_NPROC:-$(ulimit -Hu)}
# What the base image holds: enough to build any Kbuild module and the NVIDIA
# driver. Headers and the kernel's own gcc-N come with the per-kernel layer.
KFLEET_BASE_PACKAGES=${KFLEET_BASE_PACKAGES:-build-essential kmod bc bison flex libelf-dev libssl-dev binutils ca-certificates cpio xz-utils zstd}
# ---------------------------------------------------------------------------

prog=make-image.sh
die() {
	echo "$prog: error: $*" >&2
	exit 1
}
# Notes carry the seconds since the start, which is what the README quotes.
note() { echo "$prog: [${SECONDS}s] $*" >&2; }

usage() {
	sed -n '6,11p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

[ "$KFLEET_ULIMIT_NOFILE" = unlimited ] && KFLEET_ULIMIT_NOFILE=1048576
[ "$KFLEET_ULIMIT_NPROC" = unlimited ] && KFLEET_ULIMIT_NPROC=1048576
# Podman 4.3 lowers its own RLIMIT_NPROC to 32768 before starting the runtime,
# so a container asking for more fails with "error setting rlimit type 6".
[ "$KFLEET_ULIMIT_NPROC" -le 32768 ] || KFLEET_ULIMIT_NPROC=32768

# A kernel release is used in a package name, an image tag and paths: only
# accept what Debian and upstream releases look like.
check_kernel() {
	[[ "$1" =~ ^[0-9]+\.[0-9]+[A-Za-z0-9.+~_-]*$ && ${#1} -le 100 ]] ||
		die "'$1' does not look like a kernel release (e.g. 6.1.0-47-amd64)"
}

image_name() {
	if [ $# -eq 0 ]; then
		echo "$KFLEET_BUILDER_IMAGE:$KFLEET_BUILDER_TAG"
	else
		local k=${1//+/_}
		echo "$KFLEET_BUILDER_IMAGE:$KFLEET_BUILDER_TAG-${k//\~/_}"
	fi
}

need_tools() {
	local t missing=""
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
	done
	[ -z "$missing" ] ||
		die "missing:$missing; run contrib/install-deps.sh (Debian packages: podman runc debootstrap debian-archive-keyring)"
	[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and rootful podman)"
}

podman_run() {
	podman --runtime "$KFLEET_PODMAN_RUNTIME" run --pull=never \
		--ulimit "nofile=$KFLEET_ULIMIT_NOFILE:$KFLEET_ULIMIT_NOFILE" \
		--ulimit "nproc=$KFLEET_ULIMIT_NPROC:$KFLEET_ULIMIT_NPROC" "$@"
}

# The host's apt source files: one-line .list files and deb822 .sources.
host_source_files() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] && echo "$f"
	done
	return 0
}

# Prints the first enabled "deb" archive URL of the host that serves the suite
# itself (not -updates or -security).
host_mirror() {
	local f
	while read -r f; do
		case "$f" in
		*.sources)
			awk -v suite="$KFLEET_BUILDER_SUITE" '
				function flush() {
					if (types ~ /(^| )deb( |$)/ && enabled != "no" &&
					    (" " suites " ") ~ (" " suite " ") && uri != "")
						{ print uri; found = 1; exit }
					types = suites = uri = enabled = ""
				}
				/^[ \t]*$/ { flush(); next }
				/^#/ { next }
				tolower($1) == "types:"   { $1 = ""; types = $0 }
				tolower($1) == "suites:"  { $1 = ""; suites = $0 }
				tolower($1) == "uris:"    { uri = $2 }
				tolower($1) == "enabled:" { enabled = tolower($2) }
				END { if (!found) flush() }' "$f"
			;;
		*)
			awk -v suite="$KFLEET_BUILDER_SUITE" '
				$1 == "deb" {
					i = 2
					if ($i ~ /^\[/) while ($i !~ /\]$/) i++
					if ($i ~ /\]$/ && $2 ~ /^\[/) i++
					if ($(i + 1) == suite) { print $i; exit }
				}' "$f"
			;;
		esac
	done < <(host_source_files) | head -n 1
}

# Copies the apt sources the image will use into ROOT; a source signed with a
# keyring other than Debian's own is left out (the image lacks the key, and
# apt-get update would fail on it).
install_sources() {
	local root=$1 f base
	rm -f "$root/etc/apt/sources.list"
	if [ -n "$KFLEET_APT_SOURCES" ]; then
		base=$(basename "$KFLEET_APT_SOURCES")
		case "$base" in *.list | *.sources) ;; *) base=kfleet.list ;; esac
		install -m 0644 "$KFLEET_APT_SOURCES" "$root/etc/apt/sources.list.d/$base"
		return 0
	fi
	while read -r f; do
		if grep -Eiq 'signed-by[:=] *' "$f" &&
			grep -Eio 'signed-by[:=] *[^] ]+' "$f" | grep -vq 'debian-archive'; then
			note "not copying $f into the image: it names a keyring the image lacks"
			continue
		fi
		base=$(basename "$f")
		[ "$base" = sources.list ] && base=host-sources.list
		install -m 0644 "$f" "$root/etc/apt/sources.list.d/$base"
	done < <(host_source_files)
	compgen -G "$root/etc/apt/sources.list.d/*.list" >/dev/null ||
		compgen -G "$root/etc/apt/sources.list.d/*.sources" >/dev/null ||
		die "no usable apt source on this host; set KFLEET_APT_SOURCES=FILE"
}

make_base() {
	local force=$1 image arch key deb_tar root_tar root tmp mirror
	image=$(image_name)
	if [ "$force" = 0 ] && podman image exists "$image"; then
		note "$image exists (use --force to make it again)"
		return 0
	fi
	arch=$(dpkg --print-architecture)
	# The cache key names everything that changes what debootstrap fetches.
	key=$(printf '%s\n' "$KFLEET_BUILDER_SUITE" "$arch" minbase "$KFLEET_BASE_PACKAGES" |
		sha256sum | cut -c1-12)
	deb_tar="$KFLEET_BUILDER_CACHE/debootstrap-$KFLEET_BUILDER_SUITE-$arch-$key.tgz"
	root_tar="$KFLEET_BUILDER_CACHE/rootfs-$KFLEET_BUILDER_SUITE-$arch-$key.tar"
	mkdir -p "$KFLEET_BUILDER_CACHE"

	if [ ! -s "$root_tar" ]; then
		mirror=${KFLEET_MIRROR:-$(host_mirror)}
		[ -n "$mirror" ] ||
			die "no '$KFLEET_BUILDER_SUITE' archive in /etc/apt/sources.list*; set KFLEET_MIRROR=URL"
		tmp=$(mktemp -d "$KFLEET_BUILDER_CACHE/tmp.XXXXXX")
		# shellcheck disable=SC2064  # expand $tmp now: it is local
		trap "cleanup_root '$tmp'" EXIT
		if [ ! -s "$deb_tar" ]; then
			note "downloading $KFLEET_BUILDER_SUITE ($arch, minbase + build tools) from $mirror"
			debootstrap --variant=minbase --arch="$arch" \
				--include="${KFLEET_BASE_PACKAGES// /,}" \
				--make-tarball="$deb_tar.part" \
				"$KFLEET_BUILDER_SUITE" "$tmp/dl" "$mirror" >"$tmp/make-tarball.log" 2>&1 ||
				{ tail -n 20 "$tmp/make-tarball.log" >&2; die "debootstrap --make-tarball failed"; }
			mv "$deb_tar.part" "$deb_tar"
		else
			note "using cached $deb_tar"
		fi
		root="$tmp/root"
		note "installing the root from $deb_tar (no download)"
		debootstrap --variant=minbase --arch="$arch" \
			--include="${KFLEET_BASE_PACKAGES// /,}" \
			--unpack-tarball="$deb_tar" \
			"$KFLEET_BUILDER_SUITE" "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
			{ tail -n 20 "$tmp/debootstrap.log" >&2; die "debootstrap failed (log: $tmp/debootstrap.log)"; }
		install_sources "$root"
		cat >"$root/etc/apt/apt.conf.d/90kfleet" <<-'EOF'
			// kfleet builder: small layers, no prompts.
			APT::Install-Recommends "false";
			APT::Install-Suggests "false";
			Acquire::Retries "3";
		EOF
		cat >"$root/etc/dpkg/dpkg.cfg.d/90kfleet-nodoc" <<-'EOF'
			path-exclude=/usr/share/doc/*
			path-include=/usr/share/doc/*/copyright
			path-exclude=/usr/share/man/*
			path-exclude=/usr/share/info/*
			path-exclude=/usr/share/locale/*
		EOF
		rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
			"$root"/var/log/bootstrap.log "$root"/var/cache/ldconfig/aux-cache
		: >"$root/etc/machine-id"
		if grep -q " $root/" /proc/mounts; then
			die "debootstrap left file systems mounted under $root"
		fi
		tar --numeric-owner --xattrs -C "$root" -cf "$root_tar.part" .
		mv "$root_tar.part" "$root_tar"
		cleanup_root "$tmp"
		trap - EXIT
	else
		note "using cached $root_tar (no download)"
	fi

	# Importing moves the tag; kernel layers made on an older base keep it
	# (untagged) until they are made again with headers KERNEL --force.
	podman import -q \
		--change 'CMD ["/bin/bash"]' \
		--change "ENV LANG=C.UTF-8" \
		--change "LABEL org.kfleet.builder.suite=$KFLEET_BUILDER_SUITE" \
		--message "kfleet builder base ($KFLEET_BUILDER_SUITE minbase + build tools)" \
		"$root_tar" "$image" >/dev/null
	note "made $image"
}

cleanup_root() {
	local tmp=$1 m
	[ -d "$tmp" ] || return 0
	# debootstrap mounts /proc and /sys in the target; never rm -rf through them.
	awk -v p="$tmp/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r |
		while read -r m; do umount -l "$m" || true; done
	rm -rf --one-file-system "$tmp"
}

make_headers() {
	local kernel=$1 force=$2 base image cname old_id
	check_kernel "$kernel"
	base=$(image_name)
	image=$(image_name "$kernel")
	if [ "$force" = 0 ] && podman image exists "$image"; then
		note "$image exists (use --force to make it again)"
		return 0
	fi
	podman image exists "$base" || make_base 0
	old_id=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
	mkdir -p "$KFLEET_BUILDER_CACHE/apt-archives"
	cname="kfleet-make-image-$$"
	# shellcheck disable=SC2064  # expand $cname now
	trap "podman rm -f '$cname' >/dev/null 2>&1 || true" EXIT
	note "installing linux-headers-$kernel into $image"
	# The script below runs in the container: its $VARS are the container's.
	# shellcheck disable=SC2016
	# apt's .debs go to the host cache, so making the layer again after the
	# image was removed only downloads the package lists.
	podman_run --name "$cname" --network=host \
		-v "$KFLEET_BUILDER_CACHE/apt-archives:/var/cache/apt/archives" \
		-e "KERNEL=$kernel" -e DEBIAN_FRONTEND=noninteractive \
		"$base" bash -euo pipefail -c '
		apt-get update -qq
		apt-cache show "linux-headers-$KERNEL" >/dev/null 2>&1 ||
			{ echo "no package linux-headers-$KERNEL in the archive" >&2; exit 3; }
		# 6.12 headers depend on the kernel image (for vmlinux BTF), which
		# pulls in initramfs-tools; building an initramfs, twice, is most of
		# the time of this layer and of no use to a builder.
		if [ ! -e /usr/sbin/update-initramfs.distrib ]; then
			dpkg-divert --local --rename --add /usr/sbin/update-initramfs >/dev/null
			ln -sf /bin/true /usr/sbin/update-initramfs
		fi
		apt-get install -y -qq "linux-headers-$KERNEL" >/dev/null
		hdr=/usr/src/linux-headers-$KERNEL
		cfg=$hdr/.config
		[ -f "$cfg" ] || cfg=$hdr/include/config/auto.conf
		# .config: CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
		# auto.conf has the same line without the quotes.
		text=$(sed -n -E "s/^CONFIG_CC_VERSION_TEXT=\"?([^\"]*)\"?$/\1/p" "$cfg")
		# 6.1 says gcc-12, 6.12 backports say x86_64-linux-gnu-gcc-12: the
		# command is the first word, its package that without the triplet.
		cc=${text%% *}
		case "$cc" in
		gcc | gcc-[0-9]* | clang | clang-[0-9]*) pkg=$cc ;;
		*-linux-gnu*-gcc | *-linux-gnu*-gcc-[0-9]*) pkg=gcc${cc##*-gcc} ;;
		*) echo "cannot tell the compiler from CONFIG_CC_VERSION_TEXT=\"$text\"" >&2; exit 4 ;;
		esac
		if ! command -v "$cc" >/dev/null; then
			if apt-cache show "$pkg" >/dev/null 2>&1; then
				apt-get install -y -qq "$pkg" >/dev/null
			else
				echo "the kernel was built with $text; no package $pkg in this suite" >&2
				exit 5
			fi
		fi
		command -v "$cc" >/dev/null || { echo "no $cc after installing $pkg" >&2; exit 5; }
		have=$("$cc" --version | head -n 1)
		[ "$have" = "$text" ] ||
			echo "note: kernel built with \"$text\", image has \"$have\"" >&2
		printf "%s\n" "$cc" >/etc/kfleet-kernel-cc
		printf "%s\n" "$text" >/etc/kfleet-kernel-cc-text
		[ -e "/lib/modules/$KERNEL/build" ] ||
			{ echo "/lib/modules/$KERNEL/build is missing" >&2; exit 6; }
		rm -rf /var/lib/apt/lists/*
	' || die "making $image failed"
	note "committing $image"
	podman commit -q \
		--change "LABEL org.kfleet.builder.kernel=$kernel" \
		--change "WORKDIR /" \
		"$cname" "$image" >/dev/null
	podman rm -f "$cname" >/dev/null
	trap - EXIT
	# The image this one replaces (--force) is left untagged: drop it unless
	# someone tagged it or something is built on it.
	if [ -n "$old_id" ] &&
		[ "$(podman image inspect --format '{{len .RepoTags}}' "$old_id" 2>/dev/null)" = 0 ]; then
		podman image rm "$old_id" >/dev/null 2>&1 || true
	fi
	note "made $image"
}

main() {
	local cmd=base force=0 kernel="" a
	if [ $# -gt 0 ]; then
		case "$1" in
		base | headers | name) cmd=$1; shift ;;
		--force) ;;
		-h | --help) usage ;;
		*) echo "$prog: unknown command '$1'" >&2; usage ;;
		esac
	fi
	for a in "$@"; do
		case "$a" in
		--force) force=1 ;;
		-*) echo "$prog: unknown option '$a'" >&2; usage ;;
		*)
			[ -z "$kernel" ] || usage
			kernel=$a
			;;
		esac
	done
	case "$cmd" in
	name)
		[ -z "$kernel" ] || check_kernel "$kernel"
		if [ -n "$kernel" ]; then image_name "$kernel"; else image_name; fi
		;;
	base)
		[ -z "$kernel" ] || usage
		need_tools podman "$KFLEET_PODMAN_RUNTIME" debootstrap
		make_base "$force"
		;;
	headers)
		[ -n "$kernel" ] || usage
		need_tools podman "$KFLEET_PODMAN_RUNTIME" debootstrap
		make_headers "$kernel" "$force"
		;;
	esac
}

main "$@"
