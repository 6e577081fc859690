#!/usr/bin/env bash
# kfleet-worker: the builder side of kfleet. The coordinator embeds this file
# and runs it on every builder host, locally as
#
#   env KFLEET_...=... bash -c "$SCRIPT" kfleet-worker ACTION ARGS...
#
# and remotely the same way through an SSH exec channel. So it uses nothing
# next to itself (not even $0), needs no tty, and stdin, stdout and stderr may
# be pipes. Root only (rootful podman, or docker).
#
#   check                        stdout: "ok ARCH RUNTIME_VERSION_LINE"
#   image [--force]              makes the base image (debootstrap + import)
#   has-source SHA256            stdout: "yes" or "no"
#   put-source SHA256            stores stdin as the source SHA256 (checked)
#   build ID KERNEL HEADERS_PKG SRC_SHA256 KIND
#                                KIND: kbuild, dkms, nvidia-run, nvidia-open.
#                                stdout: one tar stream of the out dir when
#                                the compile container ran (exit 0, 10-14),
#                                nothing at all otherwise
#   stop ID                      stdout: "stopped" or "absent"
#
# Progress and errors go to stderr as "kfleet-worker: ..." lines. Exit codes:
# 0 ok; 2 usage; 10 make failed; 11 a .ko missing; 12 vermagic mismatch; 13
# source unpack failed; 14 not applicable (dkms BUILD_EXCLUSIVE_*); 20
# builder problem (bad argument, no base image, runtime error, or any failure
# of the other actions); 21 headers package not installable. Settings come
# from the environment (below). builder/WORKER.md documents all of it.
set -euo pipefail

# ---- Settings (every one can be set in the environment) -------------------
# Debootstrap tarball, root tar, apt .debs, sources, work dirs, locks and the
# NVIDIA core cache live here.
KFLEET_BUILDER_CACHE=${KFLEET_BUILDER_CACHE:-/var/cache/kfleet/builder}
# Image name and the tag of the base image; a kernel layer is TAG-KERNEL.
KFLEET_BUILDER_IMAGE=${KFLEET_BUILDER_IMAGE:-localhost/kfleet-builder}
KFLEET_BUILDER_TAG=${KFLEET_BUILDER_TAG:-debian12}
KFLEET_BUILDER_SUITE=${KFLEET_BUILDER_SUITE:-bookworm}
# Archive URL for debootstrap; empty: the host's apt sources say.
KFLEET_MIRROR=${KFLEET_MIRROR:-}
# A deb822 or one-line sources file to put in the image instead of the host's.
KFLEET_APT_SOURCES=${KFLEET_APT_SOURCES:-}
# What the base image holds: enough to build any Kbuild module and the NVIDIA
# driver. Headers and the kernel's own gcc-N come with the per-kernel layer.
KFLEET_BASE_PACKAGES=${KFLEET_BASE_PACKAGES:-build-essential kmod bc bison flex libelf-dev libssl-dev binutils ca-certificates cpio xz-utils zstd}
# The container program: podman, docker, or the path of either.
KFLEET_RUNTIME=${KFLEET_RUNTIME:-podman}
# Extra arguments for every `run`, as shell-quoted words, e.g.
# '--runtime' 'runc' '--ulimit' 'nofile=1024:1024' '--ulimit' 'nproc=4096:4096'
KFLEET_RUN_ARGS=${KFLEET_RUN_ARGS:-}
# Parallel compile jobs in the container.
KFLEET_BUILD_JOBS=${KFLEET_BUILD_JOBS:-$(nproc)}
# The compile container is killed after this many seconds.
KFLEET_BUILD_TIMEOUT=${KFLEET_BUILD_TIMEOUT:-3600}
# Where the sources are built inside the container. Debug info records this
# path: change it and the .ko files change.
KFLEET_BUILD_PATH=${KFLEET_BUILD_PATH:-/usr/src/kfleet-build}
# Set, it makes Kbuild (6.12's scripts/Makefile.btf) run pahole without -j:
# pahole 1.24's parallel BTF encoding gives a different .BTF section from one
# build to the next. Modules do not embed the value itself. Empty: unset.
KFLEET_BUILD_TIMESTAMP=${KFLEET_BUILD_TIMESTAMP-1970-01-01 00:00:00 UTC}
# Per build: passed to make as KFLEET_DRIVER_VERSION=V (kbuild), and the key
# of the NVIDIA core cache (nvidia-open). Optional.
KFLEET_DRIVER_VERSION=${KFLEET_DRIVER_VERSION:-}
# Per build: extra NAME=VALUE make variables, as shell-quoted words.
KFLEET_MAKE_ARGS=${KFLEET_MAKE_ARGS:-}
# nvidia-run: build kernel-open (open) or kernel (proprietary).
KFLEET_NV_FLAVOR=${KFLEET_NV_FLAVOR:-open}
# dkms: the ${arch} dkms.conf sees; empty: uname -m in the container.
KFLEET_ARCH=${KFLEET_ARCH:-}
# ---------------------------------------------------------------------------

prog=kfleet-worker
CACHE=$KFLEET_BUILDER_CACHE

die_code() {
	local code=$1
	shift
	echo "$prog: error: $*" >&2
	exit "$code"
}
die() { die_code 20 "$@"; }
# Notes carry the seconds since the start, which is what WORKER.md quotes.
note() { echo "$prog: [${SECONDS}s] $*" >&2; }

usage() {
	echo "usage: $prog check | image [--force] | has-source SHA256 | put-source SHA256" \
		"| build ID KERNEL HEADERS_PKG SRC_SHA256 KIND | stop ID" >&2
	exit 2
}

# ---- Validation: every argument is checked before it reaches a path or a
# command. ------------------------------------------------------------------

# A kernel release is used in a package name, an image tag and paths: only
# accept what Debian and upstream releases look like.
check_kernel() {
	[[ "$1" =~ ^[0-9]+\.[0-9]+[A-Za-z0-9.+~_-]*$ && ${#1} -le 100 ]] ||
		die "'$1' does not look like a kernel release (e.g. 6.1.0-47-amd64)"
}
check_id() {
	[[ "$1" =~ ^[A-Za-z0-9_.-]{1,64}$ && "$1" != . && "$1" != .. ]] ||
		die "build ID '$1': use 1 to 64 of A-Z a-z 0-9 _ . - (not . or ..)"
}
check_sha() {
	[[ "$1" =~ ^[0-9a-f]{64}$ ]] || die "'$1' is not a sha256 (64 lower-case hex digits)"
}
check_pkg() {
	[[ "$1" =~ ^[a-z0-9][a-z0-9.+-]*$ && ${#1} -le 100 ]] ||
		die "'$1' is not a Debian package name"
}

# Settings every action uses: they end up in paths, image names and -v
# arguments (where a ':' or ',' would be read as a separator).
check_common_settings() {
	[[ "$CACHE" =~ ^/[A-Za-z0-9._/+@-]*$ && "/$CACHE/" != */../* ]] ||
		die "KFLEET_BUILDER_CACHE='$CACHE': an absolute path of A-Z a-z 0-9 . _ / + @ -"
	[[ "$KFLEET_BUILDER_IMAGE" =~ ^[a-z0-9][a-z0-9._/:-]*$ ]] ||
		die "KFLEET_BUILDER_IMAGE='$KFLEET_BUILDER_IMAGE' is not an image name"
	[[ "$KFLEET_BUILDER_TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}$ ]] ||
		die "KFLEET_BUILDER_TAG='$KFLEET_BUILDER_TAG' is not an image tag"
	[[ "$KFLEET_BUILDER_SUITE" =~ ^[a-z][a-z0-9-]*$ ]] ||
		die "KFLEET_BUILDER_SUITE='$KFLEET_BUILDER_SUITE' is not a suite name"
}

# Splits TEXT into words the way sh reads a list of quoted literals, without
# executing anything: '...' and "..." and backslash escapes are understood,
# and every character that would make the shell do more than remove quotes
# ($ ` ; & | < > ( ) * ? [ ~ # ...) is refused unless it is quoted. What the
# coordinator writes ('a' 'b c' 'it'\''s') reads the same as with eval. The
# words go to the global array `words`.
split_words() {
	local what=$1 s=$2 i=0 n c word="" inword=0 rest
	words=()
	n=${#s}
	while [ "$i" -lt "$n" ]; do
		c=${s:i:1}
		case "$c" in
		' ' | $'\t' | $'\n')
			if [ "$inword" = 1 ]; then
				words+=("$word")
				word=""
				inword=0
			fi
			;;
		"'")
			rest=${s:i+1}
			[[ "$rest" == *"'"* ]] || die "$what: a ' is not closed"
			rest=${rest%%"'"*}
			word+=$rest
			inword=1
			i=$((i + ${#rest} + 1))
			;;
		'"')
			inword=1
			i=$((i + 1))
			while :; do
				[ "$i" -lt "$n" ] || die "$what: a \" is not closed"
				c=${s:i:1}
				case "$c" in
				'"') break ;;
				\\)
					case "${s:i+1:1}" in
					'"' | \\ | '$' | '`')
						word+=${s:i+1:1}
						i=$((i + 1))
						;;
					*) word+=\\ ;;
					esac
					;;
				'$' | '`') die "$what: \$ and \` are not allowed; quote with '...'" ;;
				*) word+=$c ;;
				esac
				i=$((i + 1))
			done
			;;
		\\)
			[ $((i + 1)) -lt "$n" ] || die "$what: ends with a backslash"
			if [ "${s:i+1:1}" != $'\n' ]; then
				word+=${s:i+1:1}
				inword=1
			fi
			i=$((i + 1))
			;;
		[A-Za-z0-9=:,./_+%@^-])
			word+=$c
			inword=1
			;;
		*) die "$what: '$c' must be quoted (write every word as '...')" ;;
		esac
		i=$((i + 1))
	done
	if [ "$inword" = 1 ]; then words+=("$word"); fi
	return 0
}

# ---- The container runtime --------------------------------------------------

RT=""          # the runtime's path
run_args=()    # KFLEET_RUN_ARGS, split
bg_pid=""      # a command run_bg is waiting for
bg_rc=0

need_root() {
	[ "$(id -u)" = 0 ] || die "must run as root (rootful podman or docker; debootstrap)"
}

# Finds the runtime and the tools every action uses; fails with the Debian
# package to install.
need_runtime() {
	local t oci="" i path
	need_root
	if ! path=$(command -v -- "$KFLEET_RUNTIME" 2>/dev/null) || [ ! -x "$path" ]; then
		die "container runtime '$KFLEET_RUNTIME' not found (KFLEET_RUNTIME; Debian packages: podman runc)"
	fi
	RT=$path
	for t in flock timeout tar sha256sum; do
		command -v "$t" >/dev/null 2>&1 || die "missing $t (Debian packages: coreutils tar util-linux)"
	done
	split_words KFLEET_RUN_ARGS "$KFLEET_RUN_ARGS"
	run_args=(${words[@]+"${words[@]}"})
	# podman resolves --runtime NAME itself and only says "not found" at the
	# first run; check it here so that `check` catches it.
	case "${RT##*/}" in
	*docker*) return 0 ;;
	esac
	for i in "${!run_args[@]}"; do
		case "${run_args[i]}" in
		--runtime) oci=${run_args[i + 1]:-} ;;
		--runtime=*) oci=${run_args[i]#--runtime=} ;;
		esac
	done
	[ -n "$oci" ] || return 0
	case "$oci" in
	*/*) [ -x "$oci" ] || die "OCI runtime $oci (--runtime in KFLEET_RUN_ARGS) is missing" ;;
	*)
		PATH=$PATH:/usr/sbin:/sbin:/usr/local/sbin command -v "$oci" >/dev/null 2>&1 ||
			die "OCI runtime '$oci' (--runtime in KFLEET_RUN_ARGS) is missing (Debian package: $oci)"
		;;
	esac
}

# Runs the container program. The lock descriptors (8, 9) and the saved
# stdout (3) are closed for it: conmon outlives `podman run` a little, and
# must neither hold a lock nor keep the coordinator's stdout pipe open.
rt() { "$RT" "$@" 3>&- 8>&- 9>&-; }

# Runs a command in the background and waits for it: bash runs a trap only
# between foreground commands, so this is what lets `stop` (SIGTERM) and
# Ctrl-C end a long step at once. Sets bg_rc. Redirections given to run_bg
# apply to the command. Give it a program, not a function (a function would
# run in a subshell, and bg_pid would not be the program). Runtime commands
# get 3>&- 8>&- 9>&- as in rt().
run_bg() {
	"$@" &
	bg_pid=$!
	bg_rc=0
	wait "$bg_pid" || bg_rc=$?
	bg_pid=""
}

image_name() {
	if [ $# -eq 0 ]; then
		echo "$KFLEET_BUILDER_IMAGE:$KFLEET_BUILDER_TAG"
	else
		local k=${1//+/_}
		echo "$KFLEET_BUILDER_IMAGE:$KFLEET_BUILDER_TAG-${k//\~/_}"
	fi
}

image_exists() { rt image inspect --format '{{.Id}}' "$1" >/dev/null 2>&1; }

# Kills and removes a container if it exists. `kill` first: the container's
# PID 1 is a shell that ignores SIGTERM, and `podman rm -f` would wait 10 s
# for it before SIGKILL.
remove_container() {
	rt kill "$1" >/dev/null 2>&1 || true
	rt rm -f "$1" >/dev/null 2>&1 || true
}

# Removes a directory tree this program made; debootstrap mounts /proc and
# /sys in its target, so never rm -rf through a mount.
remove_tree() {
	local d=$1 m
	[ -e "$d" ] || return 0
	awk -v p="$d/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r |
		while read -r m; do umount -l "$m" || true; done
	rm -rf --one-file-system "$d"
}

cleanup_containers=()
cleanup_dirs=()
cleanup() {
	local c d
	trap '' HUP INT TERM PIPE
	if [ -n "$bg_pid" ]; then kill "$bg_pid" 2>/dev/null || true; fi
	for c in ${cleanup_containers[@]+"${cleanup_containers[@]}"}; do remove_container "$c"; done
	for d in ${cleanup_dirs[@]+"${cleanup_dirs[@]}"}; do remove_tree "$d"; done
	return 0
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

# Takes an exclusive flock on FILE through descriptor FD (8 or 9), waiting in
# the background (see run_bg) for at most KFLEET_BUILD_TIMEOUT seconds. The
# waiting flock shares the descriptor's open file, so its lock is ours.
take_lock() {
	local fd=$1 file=$2 what=$3
	mkdir -p "${file%/*}"
	case "$fd" in
	8) exec 8>"$file" ;;
	9) exec 9>"$file" ;;
	*) die "take_lock: fd $fd" ;;
	esac
	flock -n "$fd" && return 0
	note "waiting for $what"
	run_bg flock -w "$KFLEET_BUILD_TIMEOUT" "$fd"
	[ "$bg_rc" = 0 ] || die "gave up waiting for $what after ${KFLEET_BUILD_TIMEOUT}s ($file)"
}
release_lock() {
	case "$1" in
	8) exec 8>&- ;;
	9) exec 9>&- ;;
	esac
}

# "PID START" of a process, START being its start time in clock ticks: a pid
# file holding both cannot name a later process that got the same pid.
proc_start() { awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }
# Prints the pid recorded in FILE when that process still runs.
live_worker() {
	local pid="" start=""
	[ -f "$1" ] || return 1
	read -r pid start <"$1" || true
	[[ "$pid" =~ ^[0-9]+$ && "$start" =~ ^[0-9]+$ ]] || return 1
	[ "$(proc_start "$pid")" = "$start" ] || return 1
	echo "$pid"
}

# ---- The base image (was contrib/builder/make-image.sh base) ---------------

deb_arch() {
	if command -v dpkg >/dev/null 2>&1; then
		dpkg --print-architecture
		return 0
	fi
	case "$(uname -m)" in
	x86_64) echo amd64 ;;
	aarch64) echo arm64 ;;
	ppc64le) echo ppc64el ;;
	s390x | riscv64) uname -m ;;
	*) die "cannot tell the Debian architecture of $(uname -m)" ;;
	esac
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
	local f uri
	while read -r f; do
		case "$f" in
		*.sources)
			uri=$(awk -v suite="$KFLEET_BUILDER_SUITE" '
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
				END { if (!found) flush() }' "$f")
			;;
		*)
			uri=$(awk -v suite="$KFLEET_BUILDER_SUITE" '
				$1 == "deb" {
					i = 2
					if ($i ~ /^\[/) while ($i !~ /\]$/) i++
					if ($i ~ /\]$/ && $2 ~ /^\[/) i++
					if ($(i + 1) == suite) { print $i; exit }
				}' "$f")
			;;
		esac
		if [ -n "$uri" ]; then
			echo "$uri"
			return 0
		fi
	done < <(host_source_files)
	return 0
}

# Copies the apt sources the image will use into ROOT; a source signed with a
# keyring other than Debian's own is left out (the image lacks the key, and
# apt-get update would fail on it).
install_sources() {
	local root=$1 f base
	rm -f "$root/etc/apt/sources.list"
	if [ -n "$KFLEET_APT_SOURCES" ]; then
		[ -f "$KFLEET_APT_SOURCES" ] || die "KFLEET_APT_SOURCES=$KFLEET_APT_SOURCES is not a file"
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
	local image arch key deb_tar root_tar root tmp mirror p
	image=$(image_name)
	for p in $KFLEET_BASE_PACKAGES; do
		check_pkg "$p"
	done
	arch=$(deb_arch)
	# The cache key names everything that changes what debootstrap fetches.
	key=$(printf '%s\n' "$KFLEET_BUILDER_SUITE" "$arch" minbase "$KFLEET_BASE_PACKAGES" |
		sha256sum | cut -c1-12)
	deb_tar="$CACHE/debootstrap-$KFLEET_BUILDER_SUITE-$arch-$key.tgz"
	root_tar="$CACHE/rootfs-$KFLEET_BUILDER_SUITE-$arch-$key.tar"

	if [ ! -s "$root_tar" ]; then
		command -v debootstrap >/dev/null 2>&1 ||
			die "missing debootstrap (Debian packages: debootstrap debian-archive-keyring)"
		mirror=${KFLEET_MIRROR:-$(host_mirror)}
		[ -n "$mirror" ] ||
			die "no '$KFLEET_BUILDER_SUITE' archive in /etc/apt/sources.list*; set KFLEET_MIRROR=URL"
		[[ "$mirror" =~ ^(https?|ftp|file):/[^[:space:]]*$ ]] || die "mirror '$mirror' is not a URL"
		tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
		cleanup_dirs+=("$tmp")
		if [ ! -s "$deb_tar" ]; then
			note "downloading $KFLEET_BUILDER_SUITE ($arch, minbase + build tools) from $mirror"
			run_bg debootstrap --variant=minbase --arch="$arch" \
				--include="${KFLEET_BASE_PACKAGES// /,}" \
				--make-tarball="$deb_tar.part" \
				"$KFLEET_BUILDER_SUITE" "$tmp/dl" "$mirror" >"$tmp/make-tarball.log" 2>&1
			if [ "$bg_rc" != 0 ]; then
				tail -n 20 "$tmp/make-tarball.log" >&2
				die "debootstrap --make-tarball failed"
			fi
			mv "$deb_tar.part" "$deb_tar"
		else
			note "using cached $deb_tar"
		fi
		root="$tmp/root"
		note "installing the root from $deb_tar (no download)"
		# --unpack-tarball still wants a mirror argument but never contacts it.
		run_bg debootstrap --variant=minbase --arch="$arch" \
			--include="${KFLEET_BASE_PACKAGES// /,}" \
			--unpack-tarball="$deb_tar" \
			"$KFLEET_BUILDER_SUITE" "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1
		if [ "$bg_rc" != 0 ]; then
			tail -n 20 "$tmp/debootstrap.log" >&2
			die "debootstrap --unpack-tarball failed"
		fi
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
		remove_tree "$tmp"
	else
		note "using cached $root_tar (no download)"
	fi

	# Importing moves the tag; kernel layers made on an older base keep it
	# (untagged). Only options docker import knows too (no -q: stdout is
	# the image id, thrown away).
	note "importing $image"
	run_bg "$RT" import \
		--change 'CMD ["/bin/bash"]' \
		--change "ENV LANG=C.UTF-8" \
		--change "LABEL org.kfleet.builder.suite=$KFLEET_BUILDER_SUITE" \
		--message "kfleet builder base ($KFLEET_BUILDER_SUITE minbase + build tools)" \
		"$root_tar" "$image" >/dev/null 2>"$CACHE/import.log" 3>&- 8>&- 9>&-
	if [ "$bg_rc" != 0 ]; then
		tail -n 20 "$CACHE/import.log" >&2
		die "$RT import of $root_tar failed"
	fi
	rm -f "$CACHE/import.log"
	note "made $image"
}

act_image() {
	local force=0 image
	case $# in
	0) ;;
	1) [ "$1" = --force ] || usage; force=1 ;;
	*) usage ;;
	esac
	need_runtime
	image=$(image_name)
	if [ "$force" = 0 ] && image_exists "$image"; then
		note "$image exists (use --force to make it again)"
		return 0
	fi
	mkdir -p "$CACHE"
	take_lock 8 "$CACHE/locks/base-$KFLEET_BUILDER_TAG.lock" "another worker making $image"
	if [ "$force" = 0 ] && image_exists "$image"; then
		note "$image was made by another worker meanwhile"
		return 0
	fi
	make_base
}

# ---- The kernel layer (was contrib/builder/make-image.sh headers) -----------

# Runs in a container of the base image with --network=host: installs the
# headers package and the compiler the kernel was built with. Environment:
# KERNEL, PKG. Exit: 3 package not installable, 6 package lacks the kernel's
# build tree, 8 apt-get update failed, 7 install failed, 4/5 compiler.
layer_script() {
	local kdir cfg text cc pkg have
	apt-get update -q || exit 8
	# The .deb cache is shared by every kernel's layer, and apt refuses to
	# start while another apt holds its lock: take turns.
	exec 7>/var/cache/apt/archives/kfleet-apt.lock
	flock -w 3600 7 || exit 8
	# Simulating first tells "no such package" (E: Unable to locate
	# package ...) and broken dependencies apart from download trouble.
	if ! apt-get install -s -q "$PKG" >/tmp/simulate.log 2>&1; then
		cat /tmp/simulate.log >&2
		exit 3
	fi
	# 6.12 headers depend on the kernel image (for vmlinux BTF), which pulls
	# in initramfs-tools; building an initramfs, twice, is most of the time
	# of this layer and of no use to a builder.
	if [ ! -e /usr/sbin/update-initramfs.distrib ]; then
		dpkg-divert --local --rename --add /usr/sbin/update-initramfs >/dev/null
		ln -sf /bin/true /usr/sbin/update-initramfs
	fi
	apt-get install -y -q "$PKG" || exit 7
	kdir=/lib/modules/$KERNEL/build
	[ -f "$kdir/Makefile" ] || {
		echo "$PKG does not provide $kdir (is it the headers package of $KERNEL?)" >&2
		exit 6
	}
	cfg=$kdir/.config
	[ -f "$cfg" ] || cfg=$kdir/include/config/auto.conf
	# .config: CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
	# auto.conf has the same line without the quotes.
	text=$(sed -n -E 's/^CONFIG_CC_VERSION_TEXT="?([^"]*)"?$/\1/p' "$cfg")
	# 6.1 says gcc-12, 6.12 backports say x86_64-linux-gnu-gcc-12: the
	# command is the first word, its package that without the triplet.
	cc=${text%% *}
	case "$cc" in
	gcc | gcc-[0-9]* | clang | clang-[0-9]*) pkg=$cc ;;
	*-linux-gnu*-gcc | *-linux-gnu*-gcc-[0-9]*) pkg=gcc${cc##*-gcc} ;;
	*)
		echo "cannot tell the compiler from CONFIG_CC_VERSION_TEXT=\"$text\"" >&2
		exit 4
		;;
	esac
	if ! command -v "$cc" >/dev/null; then
		if apt-cache show "$pkg" >/dev/null 2>&1; then
			apt-get install -y -q "$pkg" || exit 7
		else
			echo "the kernel was built with $text; no package $pkg in this suite" >&2
			exit 5
		fi
	fi
	command -v "$cc" >/dev/null || {
		echo "no $cc after installing $pkg" >&2
		exit 5
	}
	exec 7>&-
	have=$("$cc" --version | head -n 1)
	[ "$have" = "$text" ] ||
		echo "note: kernel built with \"$text\", image has \"$have\"" >&2
	printf '%s\n' "$cc" >/etc/kfleet-kernel-cc
	printf '%s\n' "$text" >/etc/kfleet-kernel-cc-text
	rm -rf /var/lib/apt/lists/*
}

layer_made=0
# Makes the kernel layer IMAGE from BASE unless it exists; the log goes to
# HLOG. One per-kernel lock: concurrent builds for one kernel make it once,
# builds for other kernels do not wait.
ensure_layer() {
	local release=$1 pkg=$2 base=$3 image=$4 hlog=$5 tag cname msg
	image_exists "$image" && return 0
	tag=${image##*:}
	take_lock 9 "$CACHE/locks/layer-$tag.lock" "another build making $image"
	if image_exists "$image"; then
		release_lock 9
		note "$image was made by another build meanwhile"
		return 0
	fi
	layer_made=1
	cname=kfleet-layer-$tag
	remove_container "$cname" # a leftover of a worker killed with -9
	cleanup_containers+=("$cname")
	mkdir -p "$CACHE/apt-archives"
	note "installing $pkg into $image"
	# apt's .debs go to the host cache, so making the layer again after the
	# image was removed only downloads the package lists.
	run_bg "$RT" run ${run_args[@]+"${run_args[@]}"} --pull=never --name "$cname" \
		--network=host \
		-v "$CACHE/apt-archives:/var/cache/apt/archives" \
		-e "KERNEL=$release" -e "PKG=$pkg" -e DEBIAN_FRONTEND=noninteractive \
		"$base" bash -euo pipefail -c "$(declare -f layer_script); layer_script" \
		>>"$hlog" 2>&1 3>&- 8>&- 9>&-
	case "$bg_rc" in
	0) ;;
	3 | 6)
		tail -n 20 "$hlog" >&2
		msg=$(grep -E '^E: |does not provide' "$hlog" | head -n 3 | paste -sd ' ' - || true)
		die_code 21 "headers package $pkg is not installable for $release: ${msg:-see above}"
		;;
	*)
		tail -n 20 "$hlog" >&2
		die "making $image failed (exit $bg_rc)"
		;;
	esac
	note "committing $image"
	run_bg "$RT" commit \
		--change "LABEL org.kfleet.builder.kernel=$release" \
		--change "LABEL org.kfleet.builder.headers=$pkg" \
		--change "WORKDIR /" \
		"$cname" "$image" >/dev/null 2>>"$hlog" 3>&- 8>&- 9>&-
	[ "$bg_rc" = 0 ] || {
		tail -n 5 "$hlog" >&2
		die "$RT commit $image failed"
	}
	remove_container "$cname"
	release_lock 9
	note "made $image"
}

# ---- The compile container --------------------------------------------------
# The c_* functions run inside the compile container (bash -euo pipefail, as
# root with every capability dropped and no network); they are sent there with
# `declare -f`. Environment: KERNEL KIND JOBS BUILD TIMESTAMP VERSION NV_FLAVOR
# ARCH SRC_SHA256 NVCORE_STAMP; arguments: the extra make variables. The
# source is /kfleet-source (read-only), the results go to /out, and nvidia-open
# may have /nvcore. Exit: 0, 10-14 as documented, 3 for a broken image.

# The command of the kernel's compiler, recorded by the layer.
c_cc() {
	if [ -f /etc/kfleet-kernel-cc ]; then cat /etc/kfleet-kernel-cc; else echo gcc; fi
}

c_main() {
	local kdir=/lib/modules/$KERNEL/build cc ccline
	LOG=/out/build.log
	shopt -s nullglob
	[ -f "$kdir/Makefile" ] || {
		echo "# the image lacks $kdir" >>"$LOG"
		exit 3
	}
	cc=$(c_cc)
	ccline=$("$cc" --version | head -n 1)
	printf '%s\n' "$ccline" >/out/compiler.txt
	{
		echo "# kernel $KERNEL, compiler: $ccline"
		echo "# kind $KIND, source sha256 $SRC_SHA256, build path $BUILD"
		# What a reproducible rebuild needs to match.
		dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' binutils dwarves pahole \
			libelf1 "gcc-[0-9]*" "linux-headers-*" "linux-kbuild-*" 2>/dev/null |
			awk '$1 == "ii" && $2 !~ /-base$/ { print "# package", $2, $3 }' || true
	} >>"$LOG"
	case "$KIND" in
	kbuild) c_kbuild "$kdir" "$cc" "$@" ;;
	dkms) c_dkms "$kdir" "$cc" "$@" ;;
	nvidia-run) c_nvidia_run "$kdir" "$cc" "$@" ;;
	nvidia-open) c_nvidia_open "$kdir" "$cc" "$@" ;;
	*) exit 3 ;;
	esac
	c_vermagic
}

# Unpacks the source tar (any compression tar detects) into BUILD; a tar of
# one top-level directory is that directory's contents. Then deletes build
# products that came with it: Kbuild would take them as up to date.
c_unpack() {
	local stage=$BUILD.unpack entries
	rm -rf "$BUILD" "$stage"
	mkdir -p "$stage"
	if ! tar -xf /kfleet-source -C "$stage" --no-same-owner >>"$LOG" 2>&1; then
		echo "# unpacking the source (tar -xf) failed" >>"$LOG"
		exit 13
	fi
	shopt -s dotglob
	entries=("$stage"/*)
	shopt -u dotglob
	if [ ${#entries[@]} -eq 0 ]; then
		echo "# the source archive is empty" >>"$LOG"
		exit 13
	elif [ ${#entries[@]} -eq 1 ] && [ -d "${entries[0]}" ] && [ ! -L "${entries[0]}" ]; then
		mv "${entries[0]}" "$BUILD"
		rmdir "$stage"
	else
		mv "$stage" "$BUILD"
	fi
	find "$BUILD" \( -name "*.o" -o -name "*.ko" -o -name "*.mod" -o -name "*.mod.c" \
		-o -name ".*.cmd" -o -name Module.symvers -o -name modules.order \) \
		-print -delete | sed 's/^/# removed stale /' >>"$LOG"
	cd "$BUILD"
}

c_make() {
	local rc=0
	echo "# make $*" >>"$LOG"
	make "$@" >>"$LOG" 2>&1 </dev/null || rc=$?
	if [ "$rc" != 0 ]; then
		echo "# make failed: exit $rc" >>"$LOG"
		exit 10
	fi
}

# Copies the given .ko files flat to /out/modules.
c_collect() {
	local ko base n=0
	mkdir -p /out/modules
	for ko in "$@"; do
		base=${ko##*/}
		if [ -e "/out/modules/$base" ]; then
			echo "# two modules are named $base: $ko" >>"$LOG"
			exit 11
		fi
		cp "$ko" "/out/modules/$base"
		n=$((n + 1))
	done
	if [ "$n" = 0 ]; then
		echo "# make made no .ko file" >>"$LOG"
		exit 11
	fi
}

c_vermagic() {
	local ko vm bad=0
	: >/out/vermagic.txt
	for ko in /out/modules/*.ko; do
		vm=$(modinfo -F vermagic "$ko")
		printf '%s\t%s\n' "${ko##*/}" "${vm//$'\n'/ | }" >>/out/vermagic.txt
		# One vermagic, for this kernel (a second one is a trick or a bug).
		case "$vm" in
		*$'\n'*) ;;
		"$KERNEL "*) continue ;;
		esac
		echo "# ${ko##*/}: vermagic \"${vm//$'\n'/ | }\" is not for $KERNEL" >>"$LOG"
		bad=1
	done
	[ "$bad" = 0 ] || exit 12
}

c_kbuild() {
	local kdir=$1 cc=$2 args kos
	shift 2
	c_unpack
	if [ ! -f Kbuild ] && [ ! -f Makefile ]; then
		echo "# the source has neither Kbuild nor Makefile at its top" >>"$LOG"
		exit 13
	fi
	args=(-C "$kdir" M="$BUILD" CC="$cc" -j"$JOBS")
	[ -z "$VERSION" ] || args+=(KFLEET_DRIVER_VERSION="$VERSION")
	args+=("$@")
	[ -z "$TIMESTAMP" ] || args+=(KBUILD_BUILD_TIMESTAMP="$TIMESTAMP")
	c_make "${args[@]}" modules
	mapfile -d '' -t kos < <(find "$BUILD" -name '*.ko' -type f -print0 | sort -z)
	c_collect ${kos[@]+"${kos[@]}"}
}

# Reads ./dkms.conf as dkms does: sourced by bash, -e and -u off, with
# kernelver, kernel_source_dir, arch, dkms_tree and source_tree set.
c_dkms_conf() {
	unset PACKAGE_NAME PACKAGE_VERSION MAKE MAKE_MATCH BUILT_MODULE_NAME \
		BUILT_MODULE_LOCATION DEST_MODULE_LOCATION DEST_MODULE_NAME \
		BUILD_EXCLUSIVE_KERNEL BUILD_EXCLUSIVE_ARCH BUILD_EXCLUSIVE_CONFIG \
		PRE_BUILD POST_BUILD
	set +eu
	# shellcheck source=/dev/null  # the source's own file, known only here
	. ./dkms.conf >>"$LOG" 2>&1
	set -eu
}

# Runs a dkms.conf PRE_BUILD or POST_BUILD script the way dkms does: a path
# relative to the build directory, with arguments.
c_dkms_script() {
	local what=$1 script=$2 rc=0
	[ -n "$script" ] || return 0
	if [ ! -x "$PWD/${script%% *}" ]; then
		echo "# $what script $script is not executable; skipped (as dkms does)" >>"$LOG"
		return 0
	fi
	echo "# $what: $script" >>"$LOG"
	(
		set +eu
		eval "$PWD/$script"
	) >>"$LOG" 2>&1 </dev/null || rc=$?
	if [ "$rc" != 0 ]; then
		echo "# $what script failed: exit $rc" >>"$LOG"
		exit 10
	fi
}

c_dkms() {
	local kdir=$1 cc=$2 bdir i cmd="" word rc=0 name loc dest c neg kos=() dests=()
	shift 2
	c_unpack
	if [ ! -f dkms.conf ]; then
		echo "# the source has no dkms.conf at its top" >>"$LOG"
		exit 13
	fi
	# The variables dkms gives dkms.conf (module and module_version once
	# the package is known); they are read by the sourced file.
	# shellcheck disable=SC2034  # used by dkms.conf and MAKE, not here
	kernelver=$KERNEL kernel_source_dir=$kdir dkms_tree=/var/lib/dkms source_tree=/usr/src
	arch=${ARCH:-$(uname -m)}
	c_dkms_conf
	if ! [[ "${PACKAGE_NAME:-}" =~ ^[A-Za-z0-9][A-Za-z0-9._+~-]*$ &&
		"${PACKAGE_VERSION:-}" =~ ^[A-Za-z0-9][A-Za-z0-9._+~:-]*$ ]]; then
		echo "# dkms.conf: PACKAGE_NAME=\"${PACKAGE_NAME:-}\" PACKAGE_VERSION=\"${PACKAGE_VERSION:-}\" are not usable" >>"$LOG"
		exit 13
	fi
	# dkms builds in its tree, not in the source's; that path is in debug
	# info, and being fixed it keeps these builds reproducible too.
	bdir=$dkms_tree/$PACKAGE_NAME/$PACKAGE_VERSION/build
	rm -rf "${dkms_tree:?}/$PACKAGE_NAME"
	mkdir -p "${bdir%/build}"
	cd /
	mv "$BUILD" "$bdir"
	cd "$bdir"
	# shellcheck disable=SC2034  # used by dkms.conf and MAKE, not here
	module=$PACKAGE_NAME module_version=$PACKAGE_VERSION
	c_dkms_conf
	echo "# dkms package $PACKAGE_NAME $PACKAGE_VERSION, built in $bdir, arch $arch" >>"$LOG"
	if [ -n "${BUILD_EXCLUSIVE_KERNEL:-}" ] && ! [[ "$KERNEL" =~ $BUILD_EXCLUSIVE_KERNEL ]]; then
		echo "# not applicable: BUILD_EXCLUSIVE_KERNEL \"$BUILD_EXCLUSIVE_KERNEL\" does not match $KERNEL" >>"$LOG"
		exit 14
	fi
	if [ -n "${BUILD_EXCLUSIVE_ARCH:-}" ] && ! [[ "$arch" =~ $BUILD_EXCLUSIVE_ARCH ]]; then
		echo "# not applicable: BUILD_EXCLUSIVE_ARCH \"$BUILD_EXCLUSIVE_ARCH\" does not match $arch" >>"$LOG"
		exit 14
	fi
	for c in ${BUILD_EXCLUSIVE_CONFIG:-}; do
		neg=0
		[ "${c#!}" = "$c" ] || neg=1
		c=${c#!}
		if grep -Eq "^$c=[ym]\$" "$kdir/.config" 2>/dev/null; then
			[ "$neg" = 0 ] && continue
		else
			[ "$neg" = 1 ] && continue
		fi
		echo "# not applicable: BUILD_EXCLUSIVE_CONFIG \"$BUILD_EXCLUSIVE_CONFIG\" ($c) for $KERNEL" >>"$LOG"
		exit 14
	done
	# MAKE[i] whose MAKE_MATCH[i] matches the kernel, else MAKE[0], else
	# dkms's default; then dkms's own rewrite of a leading "make".
	for i in "${!MAKE[@]}"; do
		if [ -n "${MAKE_MATCH[i]:-}" ] && [[ "$KERNEL" =~ ${MAKE_MATCH[i]} ]]; then
			cmd=${MAKE[i]}
		fi
	done
	[ -n "$cmd" ] || cmd=${MAKE[0]:-}
	[ -n "$cmd" ] || cmd="make -C $kernel_source_dir M=$dkms_tree/$PACKAGE_NAME/$PACKAGE_VERSION/build"
	cmd=${cmd/#make/make -j$JOBS KERNELRELEASE=$kernelver}
	for word in "$@"; do
		cmd+=" $(printf '%q' "$word")"
	done
	export CC=$cc
	if [ -n "$TIMESTAMP" ]; then export KBUILD_BUILD_TIMESTAMP=$TIMESTAMP; fi
	c_dkms_script PRE_BUILD "${PRE_BUILD:-}"
	echo "# CC=$cc KBUILD_BUILD_TIMESTAMP=${TIMESTAMP:-(unset)}" >>"$LOG"
	echo "# make (dkms.conf MAKE): $cmd" >>"$LOG"
	(
		set +eu
		eval "$cmd"
	) >>"$LOG" 2>&1 </dev/null || rc=$?
	if [ "$rc" != 0 ]; then
		echo "# make failed: exit $rc" >>"$LOG"
		exit 10
	fi
	c_dkms_script POST_BUILD "${POST_BUILD:-}"
	for i in "${!BUILT_MODULE_NAME[@]}"; do
		name=${BUILT_MODULE_NAME[i]}
		loc=${BUILT_MODULE_LOCATION[i]:-.}
		dest=${DEST_MODULE_LOCATION[i]:-}
		if ! [[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || [[ "$loc$dest" == *[[:cntrl:]]* ]]; then
			echo "# dkms.conf: BUILT_MODULE_NAME[$i]=\"$name\" or its locations are not usable" >>"$LOG"
			exit 13
		fi
		if [ ! -f "$bdir/$loc/$name.ko" ]; then
			echo "# missing: $loc/$name.ko (BUILT_MODULE_NAME[$i] in dkms.conf)" >>"$LOG"
			exit 11
		fi
		kos+=("$bdir/$loc/$name.ko")
		dests+=("$name"$'\t'"$dest")
	done
	if [ ${#kos[@]} -eq 0 ]; then
		echo "# dkms.conf names no BUILT_MODULE_NAME" >>"$LOG"
		exit 11
	fi
	c_collect "${kos[@]}"
	printf '%s\n' "${dests[@]}" >/out/dkms-dest.txt
}

c_nvidia_run() {
	local kdir=$1 cc=$2 dir args
	shift 2
	rm -rf "$BUILD"
	mkdir -p "$BUILD"
	cd "$BUILD"
	echo "# sh NVIDIA-*.run --extract-only --target $BUILD/pkg" >>"$LOG"
	if ! sh /kfleet-source --extract-only --target "$BUILD/pkg" >>"$LOG" 2>&1 </dev/null; then
		echo "# extracting the .run package failed" >>"$LOG"
		exit 13
	fi
	case "$NV_FLAVOR" in
	open) dir=$BUILD/pkg/kernel-open ;;
	*) dir=$BUILD/pkg/kernel ;;
	esac
	if [ ! -f "$dir/Makefile" ]; then
		echo "# the package has no ${dir#"$BUILD/"}/Makefile" >>"$LOG"
		exit 13
	fi
	args=(-C "$dir" SYSSRC="$kdir" SYSOUT="$kdir" CC="$cc" -j"$JOBS" "$@")
	[ -z "$TIMESTAMP" ] || args+=(KBUILD_BUILD_TIMESTAMP="$TIMESTAMP")
	c_make "${args[@]}" modules
	c_collect "$dir"/*.ko
	# The GSP firmware the driver loads (560 and later ship it here).
	if [ -d "$BUILD/pkg/firmware" ]; then
		mkdir -p /out/firmware
		cp -R "$BUILD/pkg/firmware/." /out/firmware/
	fi
}

# open-gpu-kernel-modules. Its core (src/nvidia, src/nvidia-modeset: most of
# the compile time) does not depend on the kernel; with /nvcore mounted, its
# _out directories are taken from there when they were made from the same
# source and make variables (NVCORE_STAMP), and saved there otherwise.
c_nvidia_open() {
	local kdir=$1 cc=$2 args reuse=0 d
	shift 2
	c_unpack
	if [ ! -f Makefile ] || [ ! -d kernel-open ] || [ ! -d src/nvidia ]; then
		echo "# not an open-gpu-kernel-modules tree (Makefile, kernel-open/, src/nvidia/)" >>"$LOG"
		exit 13
	fi
	if [ -d /nvcore ]; then
		if [ -f /nvcore/stamp ] && [ "$(cat /nvcore/stamp)" = "$NVCORE_STAMP" ] &&
			[ -f /nvcore/nvidia-_out.tar ] && [ -f /nvcore/nvidia-modeset-_out.tar ]; then
			rm -rf src/nvidia/_out src/nvidia-modeset/_out
			# -m: the objects get the time of now, newer than the sources
			# just unpacked, so make takes them as up to date.
			if tar -C src/nvidia -xmf /nvcore/nvidia-_out.tar --no-same-owner &&
				tar -C src/nvidia-modeset -xmf /nvcore/nvidia-modeset-_out.tar --no-same-owner; then
				reuse=1
			else
				rm -rf src/nvidia/_out src/nvidia-modeset/_out
			fi
		fi
		if [ "$reuse" = 1 ]; then
			echo "# nvidia core: reused from the cache ($NVCORE_KEY)" >>"$LOG"
		else
			echo "# nvidia core: not in the cache ($NVCORE_KEY), building it" >>"$LOG"
		fi
	else
		echo "# nvidia core: no cache (no KFLEET_DRIVER_VERSION), building it" >>"$LOG"
	fi
	args=(modules -j"$JOBS" SYSSRC="$kdir" SYSOUT="$kdir" CC="$cc" "$@")
	[ -z "$TIMESTAMP" ] || args+=(KBUILD_BUILD_TIMESTAMP="$TIMESTAMP")
	c_make "${args[@]}"
	c_collect kernel-open/*.ko
	if [ -d /nvcore ] && [ "$reuse" = 0 ] && [ -d src/nvidia/_out ] && [ -d src/nvidia-modeset/_out ]; then
		for d in nvidia nvidia-modeset; do
			tar -C "src/$d" -cf "/nvcore/$d-_out.tar.tmp.$$" _out
			mv -f "/nvcore/$d-_out.tar.tmp.$$" "/nvcore/$d-_out.tar"
		done
		printf '%s\n' "$NVCORE_STAMP" >"/nvcore/stamp.tmp.$$"
		mv -f "/nvcore/stamp.tmp.$$" /nvcore/stamp
		echo "# nvidia core: saved to the cache ($NVCORE_KEY)" >>"$LOG"
	fi
}

# ---- build -------------------------------------------------------------------

make_args=()
check_build_settings() {
	local w
	[[ "$KFLEET_BUILD_JOBS" =~ ^[1-9][0-9]{0,3}$ ]] ||
		die "KFLEET_BUILD_JOBS='$KFLEET_BUILD_JOBS': a number from 1 to 9999"
	[[ "$KFLEET_BUILD_TIMEOUT" =~ ^[1-9][0-9]{0,6}$ ]] ||
		die "KFLEET_BUILD_TIMEOUT='$KFLEET_BUILD_TIMEOUT': seconds, a positive number"
	# Under a root-owned 0755 directory (see WORKER.md), never /.
	[[ "$KFLEET_BUILD_PATH" =~ ^/[A-Za-z0-9._+-]+/[A-Za-z0-9._+/-]*[A-Za-z0-9_+-]$ &&
		"/$KFLEET_BUILD_PATH/" != */../* && "/$KFLEET_BUILD_PATH/" != */./* ]] ||
		die "KFLEET_BUILD_PATH='$KFLEET_BUILD_PATH': an absolute path below a directory, e.g. /usr/src/kfleet-build"
	[[ "$KFLEET_BUILD_TIMESTAMP" != *[[:cntrl:]]* ]] ||
		die "KFLEET_BUILD_TIMESTAMP holds a control character"
	[ -z "$KFLEET_DRIVER_VERSION" ] || [[ "$KFLEET_DRIVER_VERSION" =~ ^[0-9A-Za-z.+~_-]{1,64}$ ]] ||
		die "KFLEET_DRIVER_VERSION='$KFLEET_DRIVER_VERSION': use only letters, digits and . + ~ _ -"
	case "$KFLEET_NV_FLAVOR" in
	open | proprietary) ;;
	*) die "KFLEET_NV_FLAVOR='$KFLEET_NV_FLAVOR': open or proprietary" ;;
	esac
	[ -z "$KFLEET_ARCH" ] || [[ "$KFLEET_ARCH" =~ ^[A-Za-z0-9_]{1,32}$ ]] ||
		die "KFLEET_ARCH='$KFLEET_ARCH' is not an architecture name"
	split_words KFLEET_MAKE_ARGS "$KFLEET_MAKE_ARGS"
	make_args=(${words[@]+"${words[@]}"})
	for w in ${make_args[@]+"${make_args[@]}"}; do
		[[ "$w" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] ||
			die "KFLEET_MAKE_ARGS: '$w' is not NAME=VALUE"
	done
	return 0
}

# Makes CACHE/work/ID with our pid in it, atomically (a rename), so that
# `stop ID` can find this process; a leftover of a dead worker is removed.
work=""
claim_work() {
	local id=$1 tmp pid
	mkdir -p "$CACHE/work"
	tmp=$CACHE/work/.$id.$$
	rm -rf "$tmp"
	mkdir "$tmp"
	echo "$$ $(proc_start $$)" >"$tmp/worker.pid"
	work=$CACHE/work/$id
	if ! mv -T "$tmp" "$work" 2>/dev/null; then
		if pid=$(live_worker "$work/worker.pid"); then
			rm -rf "$tmp"
			die "build $id is already running on this builder (pid $pid)"
		fi
		remove_container "kfleet-build-$id"
		remove_tree "$work"
		mv -T "$tmp" "$work" || die "cannot make $work"
	fi
	cleanup_dirs+=("$work")
}

act_build() {
	[ $# -eq 5 ] || usage
	local id=$1 release=$2 pkg=$3 sha=$4 bkind=$5
	local base image src out hlog cname code rc t0 ccline key n
	local nv_mount=() nv_stamp="" nv_key=""
	check_id "$id"
	check_kernel "$release"
	check_pkg "$pkg"
	check_sha "$sha"
	case "$bkind" in
	kbuild | dkms | nvidia-run | nvidia-open) ;;
	*) die "KIND '$bkind': kbuild, dkms, nvidia-run or nvidia-open" ;;
	esac
	check_build_settings
	# From here on stdout is the tar stream only: everything else goes to
	# stderr, and the tar to the saved descriptor 3.
	exec 3>&1 1>&2
	need_runtime
	src=$CACHE/sources/$sha
	[ -f "$src" ] || die "no source $sha on this builder (send it with put-source first)"
	base=$(image_name)
	image=$(image_name "$release")
	claim_work "$id"
	image_exists "$base" || die "no base image on this builder; run: kfleet builder image"

	out=$work/out
	hlog=$work/headers.log
	mkdir "$out"
	ensure_layer "$release" "$pkg" "$base" "$image" "$hlog"
	if [ "$layer_made" = 1 ]; then
		{
			echo "# ---- headers layer $image made in this build ($pkg) ----"
			cat "$hlog"
			echo "# ---- end of the headers layer step ----"
		} >"$out/build.log"
	fi

	cname=kfleet-build-$id
	cleanup_containers+=("$cname")
	if [ "$bkind" = nvidia-open ] && [ -n "$KFLEET_DRIVER_VERSION" ]; then
		# The core cache is per driver version and compiler (its --version
		# line, as compiler.txt will hold it).
		run_bg "$RT" run ${run_args[@]+"${run_args[@]}"} --pull=never --rm --name "$cname" \
			--network=none --cap-drop=ALL --security-opt=no-new-privileges \
			"$image" bash -euo pipefail -c "$(declare -f c_cc); \"\$(c_cc)\" --version | head -n 1" \
			>"$work/compiler.txt" 3>&- 8>&- 9>&-
		ccline=$(cat "$work/compiler.txt")
		if [ "$bg_rc" != 0 ] || [ -z "$ccline" ]; then
			die "cannot read the compiler of $image"
		fi
		key=$KFLEET_DRIVER_VERSION-$(sha256sum <"$work/compiler.txt" | cut -c1-16)
		mkdir -p "$CACHE/nvcore/$key"
		nv_mount=(-v "$CACHE/nvcore/$key:/nvcore:rw")
		nv_key=$key
		nv_stamp="source $sha, make $(printf '%q ' ${make_args[@]+"${make_args[@]}"})"
	fi

	note "building $bkind ($sha) for $release in $image"
	code="$(declare -f c_cc c_main c_unpack c_make c_collect c_vermagic c_kbuild \
		c_dkms_conf c_dkms_script c_dkms c_nvidia_run c_nvidia_open); c_main \"\$@\""
	t0=$SECONDS
	# On time out the runtime client gets SIGKILL (podman would only pass a
	# SIGTERM on to the container's shell, which ignores it as PID 1), and
	# the container is removed below (and by cleanup, whatever happens).
	run_bg timeout -s KILL "$KFLEET_BUILD_TIMEOUT" \
		"$RT" run ${run_args[@]+"${run_args[@]}"} --pull=never --rm --name "$cname" \
		--label "org.kfleet.build.id=$id" --label "org.kfleet.build.kind=$bkind" \
		--network=none --cap-drop=ALL --security-opt=no-new-privileges \
		-v "$src:/kfleet-source:ro" -v "$out:/out:rw" ${nv_mount[@]+"${nv_mount[@]}"} \
		-e "KERNEL=$release" -e "KIND=$bkind" -e "JOBS=$KFLEET_BUILD_JOBS" \
		-e "BUILD=$KFLEET_BUILD_PATH" -e "TIMESTAMP=$KFLEET_BUILD_TIMESTAMP" \
		-e "VERSION=$KFLEET_DRIVER_VERSION" -e "NV_FLAVOR=$KFLEET_NV_FLAVOR" \
		-e "ARCH=$KFLEET_ARCH" -e "SRC_SHA256=$sha" \
		-e "NVCORE_KEY=$nv_key" -e "NVCORE_STAMP=$nv_stamp" -e LC_ALL=C.UTF-8 \
		"$image" bash -euo pipefail -c "$code" kfleet-build ${make_args[@]+"${make_args[@]}"} \
		3>&- 8>&- 9>&-
	rc=$bg_rc
	case "$rc" in
	0 | 10 | 11 | 12 | 13 | 14) ;;
	*)
		if [ "$rc" = 124 ] || { [ "$rc" = 137 ] && [ $((SECONDS - t0)) -ge "$KFLEET_BUILD_TIMEOUT" ]; }; then
			remove_container "$cname"
			echo "# build timed out after ${KFLEET_BUILD_TIMEOUT}s (KFLEET_BUILD_TIMEOUT); container removed" \
				>>"$out/build.log"
			rc=10
		else
			[ ! -f "$out/build.log" ] || tail -n 30 "$out/build.log" >&2
			die "the build container ended with exit $rc (stopped, or a runtime error)"
		fi
		;;
	esac
	if [ "$rc" = 0 ] && ! compgen -G "$out/modules/*.ko" >/dev/null; then
		echo "# no module in the output" >>"$out/build.log"
		rc=11
	fi
	# The container wrote out/: hand over plain files and directories only.
	find "$out" -mindepth 1 ! -type f ! -type d -print -delete |
		sed 's/^/# removed a non-file from the output: /' >>"$out/build.log"
	if [ "$rc" = 0 ]; then
		n=$(find "$out/modules" -name '*.ko' | wc -l)
		note "built $n modules for $release in $((SECONDS - t0))s"
	else
		tail -n 30 "$out/build.log" >&2 || true
		note "build $id for $release failed: exit $rc (the log is in the tar on stdout)"
	fi
	tar -C "$out" -cf - . >&3
	exit "$rc"
}

# ---- the small actions -------------------------------------------------------

act_check() {
	[ $# -eq 0 ] || usage
	local ver
	need_runtime
	ver=$(rt --version 2>&1 | head -n 1) || true
	[ -n "$ver" ] || die "$RT --version failed"
	printf 'ok %s %s\n' "$(uname -m)" "$ver"
}

act_has_source() {
	[ $# -eq 1 ] || usage
	check_sha "$1"
	if [ -f "$CACHE/sources/$1" ]; then echo yes; else echo no; fi
}

act_put_source() {
	[ $# -eq 1 ] || usage
	local sha=$1 dir tmp got
	check_sha "$sha"
	need_root
	dir=$CACHE/sources
	mkdir -p "$dir"
	tmp=$dir/$sha.tmp.$$
	cleanup_dirs+=("$tmp")
	cat >"$tmp"
	got=$(sha256sum <"$tmp" | cut -c1-64)
	[ "$got" = "$sha" ] || die "put-source: the data's sha256 is $got, not $sha"
	chmod 0644 "$tmp"
	mv -f "$tmp" "$dir/$sha"
	note "stored source $sha ($(stat -c %s "$dir/$sha") bytes)"
}

act_stop() {
	[ $# -eq 1 ] || usage
	local id=$1 name found=0 pid i
	check_id "$id"
	need_runtime
	name=kfleet-build-$id
	if rt container inspect --format '{{.Id}}' "$name" >/dev/null 2>&1; then
		remove_container "$name"
		found=1
	fi
	# The worker itself may be waiting for a lock or making a layer: SIGTERM
	# makes it clean up (its containers, its work dir) and exit.
	if pid=$(live_worker "$CACHE/work/$id/worker.pid"); then
		kill -TERM "$pid" 2>/dev/null || true
		found=1
		for i in $(seq 1 150); do
			[ -e "/proc/$pid" ] || break
			sleep 0.2
		done
		[ ! -e "/proc/$pid" ] || note "worker $pid for $id still runs after 30 s"
	elif [ -d "$CACHE/work/$id" ]; then
		remove_tree "$CACHE/work/$id"
	fi
	if [ "$found" = 1 ]; then echo stopped; else echo absent; fi
}

main() {
	[ $# -ge 1 ] || usage
	local action=$1
	shift
	check_common_settings
	case "$action" in
	check) act_check "$@" ;;
	image) act_image "$@" ;;
	has-source) act_has_source "$@" ;;
	put-source) act_put_source "$@" ;;
	build) act_build "$@" ;;
	stop) act_stop "$@" ;;
	*) usage ;;
	esac
}

main "$@"
