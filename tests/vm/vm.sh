#!/usr/bin/env bash
# vm.sh -- virtual machines running real Debian kernels under qemu, for
# kfleet's real-kernel test: kfleet deploys the modules it built into the
# guests over SSH and the guests modprobe them for real.
#
# An image is a Debian 12 root made by debootstrap (--variant=minbase) with
# systemd, udev, kmod, openssh-server and Debian's linux-image-K for each
# kernel asked for, written into an ext4 file system with `mkfs.ext4 -d ROOT`
# (no loop mount). The first kernel is the one booted; the others are
# installed but not running (/lib/modules/K2, /boot/vmlinuz-K2), like a node
# after a kernel update. qemu boots the image with -kernel/-initrd taken from
# the root's /boot, on a qcow2 overlay so the cached image stays clean, with
# user networking: the guest is 10.0.2.15/24 (gateway 10.0.2.2, set by
# systemd-networkd), restrict=on cuts it off from everything but one
# forwarded port, 127.0.0.1:PORT -> guest:22. Only 127.0.0.1 is bound.
# Packages come from the archives of the host's own apt sources
# (/etc/apt/sources.list and /etc/apt/sources.list.d/*.list, *.sources; the
# bookworm, bookworm-updates and bookworm-security entries); no mirror is
# written here.
#
# USAGE
#   vm.sh prepare [--cache DIR] --name NAME --kernel K [--kernel K2 ...]
#                 [--extra-mb MB] [--force]
#       Build the image NAME in DIR, once: the image is keyed by its inputs
#       (recipe, apt sources, packages, kernels, keys, name), recorded in
#       DIR/NAME.key; a second prepare with the same inputs does nothing and
#       says so. Needs root. --extra-mb: free space in the file system beyond
#       what the root needs (default 1024). --force rebuilds anyway.
#   vm.sh up [--cache DIR] --name NAME --port PORT [--image IMG] [--kernel K]
#            [--append 'TEXT'] [--mem MB] [--smp N] [--timeout S] [--reuse]
#       Boot image IMG (default NAME) as the VM NAME with qemu -accel
#       tcg,tb-size=128 (KF_VM_ACCEL=kvm, e.g., to change it; KVM does not
#       work on the test machines) and wait until its sshd lets root in
#       (timeout S, default 300), then print the boot time. --kernel boots
#       another of the image's kernels (default: the first one prepared);
#       --append adds kernel command-line text (e.g. module.sig_enforce=1);
#       --mem defaults to 1024 MiB, --smp to 1. A fresh overlay is made unless
#       --reuse keeps the one of the previous run of NAME (e.g. to boot the
#       second kernel after installing something while running the first).
#       Several VMs run at once under different names and ports, also from
#       one image.
#   vm.sh down [--cache DIR] --name NAME [--force]
#       Power NAME off (systemctl poweroff over ssh, up to 60 s), then SIGTERM
#       and SIGKILL qemu. --force skips the poweroff. Idempotent.
#   vm.sh ssh [--cache DIR] --name NAME [CMD...]
#       OpenSSH's ssh to the VM as root with its key and known_hosts.
#   vm.sh status [--cache DIR] [--name NAME]
#       Images (kernels, size) and VMs (running or not, pid, port, RSS).
#
# DIR defaults to $KF_VM_CACHE, else /var/cache/kfleet/vm.
#
# FILES in DIR
#   id_ed25519{,.pub}             client key, in every image's authorized_keys
#   ssh_host_ed25519_key{,.pub}   the guests' host key, generated once
#   debs/                         every .deb downloaded (debootstrap and apt)
#   apt-lists/                    apt's package lists (refreshed, not refetched)
#   base/bookworm-minbase-HASH.tar  the root before kernels are added
#   NAME.img                      the ext4 image (raw, sparse, read-only)
#   NAME.boot/vmlinuz-K, initrd.img-K  for -kernel/-initrd, each kernel
#   NAME.kernels                  the image's kernels, booted one first
#   NAME.hostkey.pub              the host public key baked into NAME.img
#   NAME.key                      the inputs NAME.img was built from
#   NAME.prepare.log              debootstrap/apt/mkfs output of the last build
#   NAME.run/                     the VM NAME: pid, port, kernel, image,
#       overlay.qcow2 (and overlay.image: the build it was made on),
#       console.log (serial), qemu.log, cmdline (qemu's), known_hosts
#       ([127.0.0.1]:PORT ssh-ed25519 ...), ssh_config (Host NAME) and
#       inventory.yml (an Ansible YAML inventory with the one host NAME)
set -euo pipefail

PROG=vm.sh
# Bump when the way an image is made changes: every cached image is rebuilt.
RECIPE=2
SUITE=bookworm
# What the node contract needs (sshd, sh, tar, gzip, sha256sum, kmod) and a
# minimal boot: minbase has no init. udev is a dependency of initramfs-tools;
# zstd is the initramfs compression; iproute2 and procps are for people.
BASE_PKGS="systemd-sysv udev kmod initramfs-tools zstd openssh-server iproute2 procps"
# Timers that would start apt, fstrim or e2scrub in the middle of a test.
MASKED="apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer"
GUEST_ADDR=10.0.2.15/24
GUEST_GW=10.0.2.2

log() { printf '%s: %s\n' "$PROG" "$*"; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
usage() { # usage [STATUS]: the USAGE part of the header
	if [[ ${1:-2} == 0 ]]; then
		sed -n '/^# USAGE/,/^# DIR defaults/p' "$0" | sed 's/^# \{0,1\}//'
	else
		sed -n '/^# USAGE/,/^# DIR defaults/p' "$0" | sed 's/^# \{0,1\}//' >&2
	fi
	exit "${1:-2}"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs_since() { # secs_since START_MS: "12.3"
	local d=$(($(now_ms) - $1))
	printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}
need() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || die "'$t' not found (run contrib/install-deps.sh)"
	done
}

valid_name() { [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]]; }
# A Debian kernel release: 6.1.0-47-amd64, 6.12.117+deb12-cloud-amd64.
valid_kernel() { [[ $1 =~ ^[0-9]+\.[0-9]+[0-9A-Za-z.+~_-]{0,60}$ ]]; }

#--------------------------------------------------------------------------
# Options

CACHE=${KF_VM_CACHE:-/var/cache/kfleet/vm}
NAME="" IMAGE="" PORT="" APPEND="" MEM=1024 SMP=1 TIMEOUT=300 EXTRA_MB=1024
FORCE=0 REUSE=0
KERNELS=()
CMD_ARGS=()

parse_opts() { # parse_opts ALLOWED OPTIONS...; leftovers in CMD_ARGS
	local allowed=" $1 " o
	shift
	while (($#)); do
		o=$1
		case $o in --) shift && CMD_ARGS+=("$@") && return ;; esac
		if [[ $o != --* ]]; then
			CMD_ARGS+=("$@")
			return
		fi
		[[ $allowed == *" ${o#--} "* ]] || die "unknown option '$o' (see '$PROG help')"
		case $o in
		--force | --reuse) ;;
		*) (($# >= 2)) || die "option '$o' needs a value" ;;
		esac
		case $o in
		--cache) CACHE=$2 ;;
		--name) NAME=$2 ;;
		--image) IMAGE=$2 ;;
		--kernel) KERNELS+=("$2") ;;
		--port) PORT=$2 ;;
		--append) APPEND=$2 ;;
		--mem) MEM=$2 ;;
		--smp) SMP=$2 ;;
		--timeout) TIMEOUT=$2 ;;
		--extra-mb) EXTRA_MB=$2 ;;
		--force) FORCE=1 ;;
		--reuse) REUSE=1 ;;
		esac
		case $o in --force | --reuse) shift ;; *) shift 2 ;; esac
	done
}

need_name() {
	[[ -n $NAME ]] || die "--name NAME is needed"
	valid_name "$NAME" || die "bad name '$NAME' (letters, digits, '_.-')"
}
need_uint() { # need_uint OPTION VALUE MIN MAX
	if ! [[ $2 =~ ^[0-9]{1,7}$ ]] || (($2 < $3 || $2 > $4)); then
		die "$1: '$2' is not a number in $3..$4"
	fi
}
abs_cache() {
	mkdir -p "$CACHE"
	CACHE=$(cd -- "$CACHE" && pwd -P)
}

#--------------------------------------------------------------------------
# The host's apt sources

# Prints one line "TYPE URI SUITE SIGNED-BY COMPONENTS..." (SIGNED-BY "-"
# when none) for each entry of one-line sources files.
parse_list_files() {
	awk '
	{ sub(/#.*/, "") }
	$1 != "deb" && $1 != "deb-src" { next }
	{
		type = $1; rest = substr($0, index($0, $1) + length($1)); signed = "-"
		b = index(rest, "["); e = index(rest, "]")
		if (b > 0 && e > b && substr(rest, 1, b - 1) ~ /^[ \t]*$/) {
			n = split(substr(rest, b + 1, e - b - 1), o, /[ \t]+/)
			for (i = 1; i <= n; i++)
				if (tolower(o[i]) ~ /^signed-by=/) signed = substr(o[i], 11)
			rest = substr(rest, e + 1)
		}
		n = split(rest, w, /[ \t]+/); j = 0
		for (i = 1; i <= n; i++) if (w[i] != "") v[++j] = w[i]
		if (j < 3) next
		line = type " " v[1] " " v[2] " " signed
		for (i = 3; i <= j; i++) line = line " " v[i]
		print line
	}' "$@"
}

# The same for deb822 .sources files (Types/URIs/Suites/Components/Signed-By,
# Enabled: no skipped; an inline Signed-By key counts as none).
parse_sources_files() {
	awk '
	function flush(   nt, nu, ns, a, b, c, t, u, s, sb) {
		if (f["types"] != "" && f["uris"] != "" && f["suites"] != "" && tolower(f["enabled"]) != "no") {
			nt = split(f["types"], t, /[ \t]+/); nu = split(f["uris"], u, /[ \t]+/)
			ns = split(f["suites"], s, /[ \t]+/)
			sb = f["signed-by"]; if (sb == "" || sb ~ /BEGIN/) sb = "-"
			for (a = 1; a <= nt; a++) for (b = 1; b <= nu; b++) for (c = 1; c <= ns; c++)
				if (t[a] != "" && u[b] != "" && s[c] != "")
					print t[a] " " u[b] " " s[c] " " sb " " f["components"]
		}
		split("", f); cur = ""
	}
	FNR == 1 { flush() }
	/^[ \t]*#/ { next }
	/^[ \t]*$/ { flush(); next }
	/^[ \t]/ { if (cur != "") { x = $0; gsub(/^[ \t]+|[ \t]+$/, "", x); f[cur] = f[cur] " " x }; next }
	{
		k = index($0, ":"); if (k == 0) next
		cur = tolower(substr($0, 1, k - 1)); x = substr($0, k + 1)
		gsub(/^[ \t]+|[ \t]+$/, "", x); f[cur] = x
	}
	END { flush() }' "$@"
}

# Sets SOURCES (the guest's sources.list lines, also part of the image key),
# MIRROR (the URI of the SUITE entry, for debootstrap) and KEYRING (its
# Signed-By file, or empty) from the host's apt sources.
read_host_sources() {
	local -a lists=() deb822=()
	local f type uri suite signed comps line
	[[ -f /etc/apt/sources.list ]] && lists+=(/etc/apt/sources.list)
	for f in /etc/apt/sources.list.d/*.list; do [[ -f $f ]] && lists+=("$f"); done
	for f in /etc/apt/sources.list.d/*.sources; do [[ -f $f ]] && deb822+=("$f"); done
	SOURCES="" MIRROR="" KEYRING=""
	while read -r type uri suite signed comps; do
		[[ $type == deb ]] || continue
		[[ $suite == "$SUITE" || $suite == "$SUITE"-* ]] || continue
		[[ $uri =~ ^(https?|file):/ ]] || continue
		uri=${uri%/}
		line="deb"
		if [[ $signed != - && -f $signed ]]; then line+=" [signed-by=$signed]"; fi
		line+=" $uri $suite $comps"
		[[ $'\n'$SOURCES == *$'\n'"$line"$'\n'* ]] && continue
		SOURCES+="$line"$'\n'
		if [[ -z $MIRROR && $suite == "$SUITE" ]]; then
			MIRROR=$uri
			[[ $signed != - && -f $signed ]] && KEYRING=$signed
		fi
	done < <(
		((${#lists[@]} == 0)) || parse_list_files "${lists[@]}"
		((${#deb822[@]} == 0)) || parse_sources_files "${deb822[@]}"
	)
	[[ -n $MIRROR ]] || die "no '$SUITE' entry (deb, http/https/file) in the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/)"
}

# Sets APT_CONF (apt.conf text) and exports http_proxy/https_proxy for
# debootstrap's wget, from the host's apt configuration: a host that reaches
# its archive through a proxy, or whose archive's Release files are past
# Valid-Until, needs the same inside the root.
read_host_apt_conf() {
	local http="" https="" valid=""
	eval "$(apt-config shell http Acquire::http::Proxy https Acquire::https::Proxy valid Acquire::Check-Valid-Until)"
	APT_CONF=""
	if [[ -n $http && $http != DIRECT ]]; then
		APT_CONF+="Acquire::http::Proxy \"$http\";"$'\n'
		export http_proxy=$http
	fi
	if [[ -n $https && $https != DIRECT ]]; then
		APT_CONF+="Acquire::https::Proxy \"$https\";"$'\n'
		export https_proxy=$https
	fi
	[[ -z $valid ]] || APT_CONF+="Acquire::Check-Valid-Until \"$valid\";"$'\n'
}

#--------------------------------------------------------------------------
# prepare

LOG=/dev/null
WORK=""
cleanup_work() {
	[[ -n $WORK && -d $WORK ]] || return 0
	if findmnt -rn -o TARGET | grep -qF -- "$WORK/"; then
		printf '%s: error: something is mounted under %s; not removing it\n' "$PROG" "$WORK" >&2
		return 0
	fi
	rm -rf --one-file-system -- "$WORK"
}

# logged DESC CMD...: run CMD with its output in the log; on failure say
# what failed and show the end of the log.
logged() {
	local desc=$1 rc=0
	shift
	printf '\n### %s\n' "$desc" >>"$LOG"
	"$@" >>"$LOG" 2>&1 </dev/null || rc=$?
	if ((rc != 0)); then
		printf '%s: error: %s failed (exit %d); the end of %s:\n' "$PROG" "$desc" "$rc" "$LOG" >&2
		tail -n 30 "$LOG" | sed 's/^/  | /' >&2
		exit 1
	fi
}

# In a private mount namespace (the mounts vanish with it, whatever
# happens): mount what apt and the kernel's postinst need, with the .deb and
# list caches of DIR bound into the root, and run apt-get update + install.
# shellcheck disable=SC2016  # expanded by the inner shell
APT_IN_ROOT='
set -euo pipefail
root=$1 debs=$2 lists=$3
shift 3
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind "$debs" "$root/var/cache/apt/archives"
mount --bind "$lists" "$root/var/lib/apt/lists"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin
chroot "$root" apt-get -q update
chroot "$root" apt-get -q -y --no-install-recommends install "$@"
'

write_file() { # write_file PATH MODE TEXT
	mkdir -p -- "$(dirname -- "$1")"
	printf '%s' "$3" >"$1"
	chmod "$2" -- "$1"
}

# The part of the root that does not depend on the kernels or the name.
configure_base() {
	local r=$1 u
	write_file "$r/etc/apt/sources.list" 0644 "$SOURCES"
	write_file "$r/etc/fstab" 0644 "/dev/vda / ext4 rw,noatime,errors=remount-ro 0 0
"
	write_file "$r/etc/systemd/network/10-kfleet.network" 0644 "# qemu user networking (vm.sh): static, no DHCP.
[Match]
Name=eth0

[Network]
Address=$GUEST_ADDR
Gateway=$GUEST_GW
LinkLocalAddressing=no
IPv6AcceptRA=no
"
	write_file "$r/etc/systemd/journald.conf.d/kfleet.conf" 0644 "[Journal]
Storage=volatile
"
	chroot "$r" systemctl enable systemd-networkd.service >>"$LOG" 2>&1
	for u in $MASKED; do ln -sfn /dev/null "$r/etc/systemd/system/$u"; done
	# The serial console is the log; a getty there only costs boot time.
	ln -sfn /dev/null "$r/etc/systemd/system/serial-getty@ttyS0.service"
	# Any initrd made in a chroot cannot know the hardware: take most drivers.
	write_file "$r/etc/initramfs-tools/conf.d/kfleet.conf" 0644 "MODULES=most
COMPRESS=zstd
"
	rm -f "$r"/etc/ssh/ssh_host_*
	install -m 0600 "$CACHE/ssh_host_ed25519_key" "$r/etc/ssh/ssh_host_ed25519_key"
	install -m 0644 "$CACHE/ssh_host_ed25519_key.pub" "$r/etc/ssh/ssh_host_ed25519_key.pub"
	write_file "$r/etc/ssh/sshd_config.d/kfleet.conf" 0644 "# vm.sh: one fixed host key, root by key only, room for parallel sessions.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 100:30:200
MaxSessions 64
"
	install -d -m 0700 "$r/root/.ssh"
	install -m 0600 "$CACHE/id_ed25519.pub" "$r/root/.ssh/authorized_keys"
	# A test guest needs no documentation, translations or package lists
	# (about 150 MiB): drop them now and keep dpkg from installing more.
	write_file "$r/etc/dpkg/dpkg.cfg.d/01kfleet-nodoc" 0644 "path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
"
	rm -rf "$r"/usr/share/{doc,man,info,locale}/* "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/archives/*.deb \
		"$r"/var/cache/apt/*.bin
}

make_keys() {
	if [[ ! -f $CACHE/id_ed25519 ]]; then
		ssh-keygen -q -t ed25519 -N '' -C "kfleet-vm-client" -f "$CACHE/id_ed25519"
		log "generated the client key $CACHE/id_ed25519"
	fi
	if [[ ! -f $CACHE/ssh_host_ed25519_key ]]; then
		ssh-keygen -q -t ed25519 -N '' -C "kfleet-vm-host" -f "$CACHE/ssh_host_ed25519_key"
		log "generated the guests' host key $CACHE/ssh_host_ed25519_key"
	fi
}

# Is a VM made from IMAGE running? Prints its name.
image_in_use() {
	local d
	for d in "$CACHE"/*.run; do
		[[ -d $d && -f $d/image && "$(<"$d/image")" == "$1" ]] || continue
		if run_alive "$d"; then basename -- "$d" .run; fi
	done
}

cmd_prepare() {
	local k t0 t key sha base_key base_tar root size_mb used_mb kbad=() users debs0
	parse_opts "cache name kernel extra-mb force" "$@"
	((${#CMD_ARGS[@]} == 0)) || die "prepare: unexpected argument '${CMD_ARGS[0]}'"
	need_name
	((${#KERNELS[@]} > 0)) || die "prepare: at least one --kernel K is needed"
	for k in "${KERNELS[@]}"; do valid_kernel "$k" || kbad+=("$k"); done
	((${#kbad[@]} == 0)) || die "prepare: bad kernel release '${kbad[0]}'"
	need_uint --extra-mb "$EXTRA_MB" 0 1000000
	[[ $(id -u) == 0 ]] || die "prepare needs root (debootstrap, chroot)"
	need debootstrap mkfs.ext4 ssh-keygen unshare chroot apt-config findmnt flock tar
	abs_cache
	exec 9>"$CACHE/.prepare.lock"
	flock 9
	make_keys
	read_host_sources
	read_host_apt_conf
	[[ $SOURCES != *https:* ]] || BASE_PKGS+=" ca-certificates"

	key="recipe=$RECIPE
suite=$SUITE
packages=$BASE_PKGS
masked=$MASKED
network=$GUEST_ADDR via $GUEST_GW
extra_mb=$EXTRA_MB
name=$NAME
kernels=${KERNELS[*]}
client_key=$(<"$CACHE/id_ed25519.pub")
host_key=$(<"$CACHE/ssh_host_ed25519_key.pub")
sources:
$SOURCES"
	key=${key%$'\n'} # as $(<NAME.key) reads it back
	sha=$(printf '%s' "$key" | sha256sum | cut -c1-16)
	if ((FORCE == 0)) && [[ -f $CACHE/$NAME.img && -f $CACHE/$NAME.key && "$(<"$CACHE/$NAME.key")" == "$key" ]]; then
		local ok=1
		for k in "${KERNELS[@]}"; do
			[[ -f $CACHE/$NAME.boot/vmlinuz-$k && -f $CACHE/$NAME.boot/initrd.img-$k ]] || ok=0
		done
		if ((ok)); then
			log "image '$NAME' ($sha, kernels ${KERNELS[*]}) is up to date in $CACHE: nothing to do"
			return 0
		fi
	fi
	users=$(image_in_use "$NAME")
	[[ -z $users ]] || die "image '$NAME' is in use by the running VM(s) $users; 'vm.sh down' them first"

	t0=$(now_ms)
	debs0=$(du -sm -- "$CACHE/debs" 2>/dev/null | cut -f1 || echo 0)
	LOG=$CACHE/$NAME.prepare.log
	: >"$LOG"
	log "building image '$NAME' ($sha) with ${KERNELS[*]} from $MIRROR (log: $LOG)"
	mkdir -p "$CACHE/debs/partial" "$CACHE/apt-lists/partial" "$CACHE/base" "$CACHE/work"
	# Under the lock, whatever is in work/ was left by a prepare that was killed.
	rm -rf --one-file-system -- "$CACHE/work/"*
	WORK=$(mktemp -d "$CACHE/work/$NAME.XXXXXX")
	trap cleanup_work EXIT
	root=$WORK/root

	# The base root, cached as a tar keyed by what goes into it.
	base_key=$(printf '%s\n' "recipe=$RECIPE" "$SUITE" "$MIRROR" "$KEYRING" "$BASE_PKGS" "$MASKED" \
		"$GUEST_ADDR $GUEST_GW" "$SOURCES" "$(<"$CACHE/id_ed25519.pub")" \
		"$(<"$CACHE/ssh_host_ed25519_key.pub")" | sha256sum | cut -c1-16)
	base_tar=$CACHE/base/$SUITE-minbase-$base_key.tar
	mkdir -p "$root"
	if [[ -f $base_tar ]]; then
		t=$(now_ms)
		logged "unpack base root" tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$base_tar"
		log "base root: unpacked $(basename -- "$base_tar") in $(secs_since "$t") s"
	else
		t=$(now_ms)
		local -a dbs=(debootstrap --variant=minbase "--include=${BASE_PKGS// /,}" "--cache-dir=$CACHE/debs")
		[[ -z $KEYRING ]] || dbs+=("--keyring=$KEYRING")
		logged debootstrap unshare --mount --propagation private -- "${dbs[@]}" "$SUITE" "$root" "$MIRROR"
		configure_base "$root"
		logged "save base root" tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -cf "$base_tar.tmp" .
		mv -f -- "$base_tar.tmp" "$base_tar"
		log "base root: debootstrap $SUITE minbase + ${BASE_PKGS// /,} in $(secs_since "$t") s, saved as $(basename -- "$base_tar")"
	fi

	# The name, and the kernels.
	t=$(now_ms)
	write_file "$root/etc/hostname" 0644 "$NAME"$'\n'
	write_file "$root/etc/hosts" 0644 "127.0.0.1	localhost
127.0.1.1	$NAME
::1		localhost ip6-localhost ip6-loopback
"
	write_file "$root/etc/machine-id" 0444 "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"$'\n'
	cp -L /etc/resolv.conf "$root/etc/resolv.conf"
	write_file "$root/usr/sbin/policy-rc.d" 0755 $'#!/bin/sh\nexit 101\n'
	[[ -z $APT_CONF ]] || write_file "$root/etc/apt/apt.conf.d/00kfleet-host" 0644 "$APT_CONF"
	local -a pkgs=()
	for k in "${KERNELS[@]}"; do pkgs+=("linux-image-$k"); done
	logged "apt-get install ${pkgs[*]}" unshare --mount --propagation private -- \
		bash -c "$APT_IN_ROOT" apt-in-root "$root" "$CACHE/debs" "$CACHE/apt-lists" "${pkgs[@]}"
	rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/apt/apt.conf.d/00kfleet-host"
	: >"$root/etc/resolv.conf"
	for k in "${KERNELS[@]}"; do
		[[ -f $root/boot/vmlinuz-$k && -f $root/boot/initrd.img-$k && -d $root/lib/modules/$k ]] ||
			die "linux-image-$k installed no /boot/vmlinuz-$k, /boot/initrd.img-$k or /lib/modules/$k (see $LOG)"
	done
	log "kernels: installed ${pkgs[*]} in $(secs_since "$t") s"

	# The image.
	t=$(now_ms)
	rm -rf "$root/tmp/"* "$root/var/tmp/"* "$root"/var/cache/apt/*.bin
	rm -rf "$CACHE/$NAME.boot.tmp"
	mkdir -p "$CACHE/$NAME.boot.tmp"
	for k in "${KERNELS[@]}"; do
		cp -- "$root/boot/vmlinuz-$k" "$root/boot/initrd.img-$k" "$CACHE/$NAME.boot.tmp/"
	done
	used_mb=$(du -sm --one-file-system -- "$root" | cut -f1)
	size_mb=$((used_mb * 115 / 100 + 64 + EXTRA_MB))
	rm -f -- "$CACHE/$NAME.img.tmp"
	logged mkfs.ext4 mkfs.ext4 -q -F -L kfleet-root -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
		-d "$root" "$CACHE/$NAME.img.tmp" "${size_mb}M"
	chmod 0444 "$CACHE/$NAME.img.tmp"
	rm -f -- "$CACHE/$NAME.key"
	mv -f -- "$CACHE/$NAME.img.tmp" "$CACHE/$NAME.img"
	rm -rf -- "$CACHE/$NAME.boot"
	mv -- "$CACHE/$NAME.boot.tmp" "$CACHE/$NAME.boot"
	cp -- "$CACHE/ssh_host_ed25519_key.pub" "$CACHE/$NAME.hostkey.pub"
	printf '%s\n' "${KERNELS[@]}" >"$CACHE/$NAME.kernels"
	printf '%s\n' "$key" >"$CACHE/$NAME.key"
	log "image: $CACHE/$NAME.img, $size_mb MiB file system ($used_mb MiB used, $(du -sm -- "$CACHE/$NAME.img" | cut -f1) MiB on disk), mkfs.ext4 -d in $(secs_since "$t") s"
	cleanup_work
	WORK=""
	log "prepared '$NAME' in $(secs_since "$t0") s; downloaded $(($(du -sm -- "$CACHE/debs" | cut -f1) - debs0)) MiB of .debs"
}

#--------------------------------------------------------------------------
# Running VMs

RUN=""
set_run() { RUN=$CACHE/$NAME.run; }

# run_alive RUNDIR: is the qemu of RUNDIR running? (The pid must still be a
# qemu with this run's overlay: a stale pid file never hits another process.)
run_alive() {
	local pid
	[[ -f $1/pid ]] || return 1
	pid=$(<"$1/pid")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qF -- "$1/overlay.qcow2"
}

ssh_to() { # ssh_to RUNDIR CMD...
	ssh -F "$1/ssh_config" "$(basename -- "$1" .run)" "${@:2}"
}

write_client_files() {
	local kt kd
	read -r kt kd _ <"$CACHE/$IMAGE.hostkey.pub"
	printf '[127.0.0.1]:%s %s %s\n' "$PORT" "$kt" "$kd" >"$RUN/known_hosts"
	cat >"$RUN/ssh_config" <<EOF
# Generated by tests/vm/vm.sh for the VM $NAME in $CACHE.
Host $NAME
	HostName 127.0.0.1
	Port $PORT
	User root
	IdentityFile $CACHE/id_ed25519
	IdentitiesOnly yes
	UserKnownHostsFile $RUN/known_hosts
	GlobalKnownHostsFile /dev/null
	StrictHostKeyChecking yes
	CheckHostIP no
	BatchMode yes
	ConnectTimeout 10
	ServerAliveInterval 15
	ServerAliveCountMax 4
	LogLevel ERROR
EOF
	cat >"$RUN/inventory.yml" <<EOF
# Generated by tests/vm/vm.sh for the VM $NAME in $CACHE.
all:
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: $CACHE/id_ed25519
    ansible_ssh_common_args: '-o UserKnownHostsFile=$RUN/known_hosts -o StrictHostKeyChecking=yes'
  hosts:
    $NAME:
      ansible_host: 127.0.0.1
      ansible_port: $PORT
EOF
}

kill_run() { # kill_run RUNDIR: SIGTERM, then SIGKILL after 10 s
	local pid i
	run_alive "$1" || return 0
	pid=$(<"$1/pid")
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		run_alive "$1" || return 0
		sleep 0.2
	done
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		run_alive "$1" || return 0
		sleep 0.2
	done
	die "qemu $pid of $1 does not exit"
}

UP_RUN=""
up_abort() {
	[[ -z $UP_RUN ]] || kill_run "$UP_RUN"
	rm -f -- "$UP_RUN/pid"
}

cmd_up() {
	# TCG keeps every translated block until its buffer is full (1 GiB by
	# default): 128 MiB halves qemu's RSS and boots as fast.
	local accel=${KF_VM_ACCEL:-tcg,tb-size=128} kfile kernel t0 pid rss cmdline ikey
	parse_opts "cache name image port kernel append mem smp timeout reuse" "$@"
	((${#CMD_ARGS[@]} == 0)) || die "up: unexpected argument '${CMD_ARGS[0]}'"
	need_name
	[[ -n $PORT ]] || die "up: --port PORT is needed"
	need_uint --port "$PORT" 1 65535
	need_uint --mem "$MEM" 128 1048576
	need_uint --smp "$SMP" 1 64
	need_uint --timeout "$TIMEOUT" 1 86400
	((${#KERNELS[@]} <= 1)) || die "up: one --kernel at most"
	[[ $APPEND != *$'\n'* ]] || die "up: --append must be one line"
	IMAGE=${IMAGE:-$NAME}
	valid_name "$IMAGE" || die "bad image name '$IMAGE'"
	need qemu-system-x86_64 qemu-img ssh
	abs_cache
	kfile=$CACHE/$IMAGE.kernels
	[[ -f $CACHE/$IMAGE.img && -f $CACHE/$IMAGE.key && -f $kfile ]] ||
		die "no image '$IMAGE' in $CACHE (run 'vm.sh prepare --cache $CACHE --name $IMAGE --kernel K' first)"
	kernel=$(head -n1 "$kfile")
	if ((${#KERNELS[@]})); then
		kernel=${KERNELS[0]}
		grep -qxF -- "$kernel" "$kfile" || die "image '$IMAGE' has no kernel '$kernel' (it has: $(tr '\n' ' ' <"$kfile"))"
	fi
	set_run
	if run_alive "$RUN"; then
		die "VM '$NAME' is already running (pid $(<"$RUN/pid"), port $(<"$RUN/port")); 'vm.sh down' it first"
	fi
	# An overlay is only good on the very image it was made on.
	ikey=$IMAGE:$(sha256sum <"$CACHE/$IMAGE.key" | cut -c1-16)
	if ((REUSE)) && [[ -f $RUN/overlay.qcow2 ]]; then
		[[ -f $RUN/overlay.image && "$(<"$RUN/overlay.image")" == "$ikey" ]] ||
			die "up --reuse: the overlay of '$NAME' was made on another image or build than '$IMAGE' now is; boot without --reuse"
	fi
	mkdir -p "$RUN"
	rm -f -- "$RUN"/{pid,port,kernel,image,known_hosts,ssh_config,inventory.yml,console.log,qemu.log,cmdline,ssh-wait.log}
	if ((REUSE)) && [[ -f $RUN/overlay.qcow2 ]]; then
		log "VM '$NAME': reusing its overlay"
	else
		rm -f -- "$RUN/overlay.qcow2" "$RUN/overlay.image"
		qemu-img create -q -f qcow2 -F raw -b "$CACHE/$IMAGE.img" "$RUN/overlay.qcow2" >/dev/null
		echo "$ikey" >"$RUN/overlay.image"
	fi
	echo "$PORT" >"$RUN/port"
	echo "$kernel" >"$RUN/kernel"
	echo "$IMAGE" >"$RUN/image"
	write_client_files

	# shellcheck disable=SC2054  # the commas are qemu's
	local -a qemu=(
		qemu-system-x86_64 -name "kfleet-vm-$NAME" -nodefaults -no-user-config
		-accel "$accel" -m "$MEM" -smp "$SMP"
		-kernel "$CACHE/$IMAGE.boot/vmlinuz-$kernel" -initrd "$CACHE/$IMAGE.boot/initrd.img-$kernel"
		-append "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=1${APPEND:+ $APPEND}"
		-drive "file=$RUN/overlay.qcow2,format=qcow2,if=virtio"
		-netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:22"
		-device virtio-net-pci,netdev=net0
		-device virtio-rng-pci
		-display none -monitor none -serial "file:$RUN/console.log"
		-no-reboot -daemonize -pidfile "$RUN/pid"
	)
	printf '%q ' "${qemu[@]}" >"$RUN/cmdline"
	echo >>"$RUN/cmdline"
	UP_RUN=$RUN
	trap up_abort EXIT
	trap 'exit 130' INT TERM
	t0=$(now_ms)
	if ! "${qemu[@]}" >"$RUN/qemu.log" 2>&1; then
		rm -f -- "$RUN/pid"
		die "qemu did not start: $(tr '\n' ' ' <"$RUN/qemu.log")"
	fi
	pid=$(<"$RUN/pid")
	log "VM '$NAME' (image $IMAGE, kernel $kernel) booting: qemu pid $pid, ssh on 127.0.0.1:$PORT, console $RUN/console.log"
	while :; do
		if ! run_alive "$RUN"; then
			printf '%s: error: qemu exited while %s booted; the end of %s:\n' "$PROG" "$NAME" "$RUN/console.log" >&2
			tail -n 30 "$RUN/console.log" | sed 's/^/  | /' >&2
			exit 1
		fi
		if timeout 30 ssh -F "$RUN/ssh_config" -o ConnectTimeout=10 "$NAME" true </dev/null >/dev/null 2>>"$RUN/ssh-wait.log"; then
			break
		fi
		if (($(now_ms) - t0 > TIMEOUT * 1000)); then
			printf '%s: error: %s: no ssh after %d s; the end of %s:\n' "$PROG" "$NAME" "$TIMEOUT" "$RUN/console.log" >&2
			tail -n 30 "$RUN/console.log" | sed 's/^/  | /' >&2
			exit 1
		fi
		sleep 2
	done
	trap - EXIT INT TERM
	rss=$(($(ps -o rss= -p "$pid") / 1024))
	cmdline=$(ssh_to "$RUN" cat /proc/cmdline </dev/null || true)
	log "VM '$NAME' up: sshd answered after $(secs_since "$t0") s (kernel $kernel, qemu RSS $rss MiB, cmdline: $cmdline)"
	log "  ssh: vm.sh ssh --cache $CACHE --name $NAME CMD | ssh -F $RUN/ssh_config $NAME; inventory: $RUN/inventory.yml"
}

cmd_down() {
	local pid i t0
	parse_opts "cache name force" "$@"
	((${#CMD_ARGS[@]} == 0)) || die "down: unexpected argument '${CMD_ARGS[0]}'"
	need_name
	abs_cache
	set_run
	if ! run_alive "$RUN"; then
		rm -f -- "$RUN/pid"
		log "VM '$NAME' is not running"
		return 0
	fi
	pid=$(<"$RUN/pid")
	t0=$(now_ms)
	if ((FORCE == 0)) &&
		timeout 20 ssh -F "$RUN/ssh_config" -o ConnectTimeout=10 "$NAME" 'systemctl --no-block poweroff' </dev/null >/dev/null 2>&1; then
		for ((i = 0; i < 300; i++)); do
			run_alive "$RUN" || break
			sleep 0.2
		done
	fi
	if run_alive "$RUN"; then
		((FORCE)) || log "VM '$NAME' did not power off (no ssh, or not within 60 s): SIGTERM"
		kill_run "$RUN"
		log "VM '$NAME' (qemu pid $pid) stopped in $(secs_since "$t0") s"
	else
		log "VM '$NAME' (qemu pid $pid) powered off in $(secs_since "$t0") s"
	fi
	rm -f -- "$RUN/pid"
}

cmd_ssh() {
	parse_opts "cache name" "$@"
	need_name
	abs_cache
	set_run
	[[ -f $RUN/ssh_config ]] || die "VM '$NAME' was never started in $CACHE"
	run_alive "$RUN" || die "VM '$NAME' is not running"
	exec ssh -F "$RUN/ssh_config" "$NAME" "${CMD_ARGS[@]}"
}

cmd_status() {
	local f n d state pid rss
	parse_opts "cache name" "$@"
	((${#CMD_ARGS[@]} == 0)) || die "status: unexpected argument '${CMD_ARGS[0]}'"
	[[ -d $CACHE ]] || die "no cache directory $CACHE"
	abs_cache
	printf '%-16s %-8s %s\n' IMAGE SIZE KERNELS
	for f in "$CACHE"/*.key; do
		[[ -f $f ]] || continue
		n=$(basename -- "$f" .key)
		[[ -z $NAME || $NAME == "$n" ]] || continue
		printf '%-16s %-8s %s\n' "$n" "$(du -sh -- "$CACHE/$n.img" 2>/dev/null | cut -f1)" \
			"$(tr '\n' ' ' <"$CACHE/$n.kernels" 2>/dev/null)"
	done
	printf '\n%-16s %-8s %-8s %-6s %-8s %-16s %s\n' VM STATE PID PORT RSS IMAGE KERNEL
	for d in "$CACHE"/*.run; do
		[[ -d $d ]] || continue
		n=$(basename -- "$d" .run)
		[[ -z $NAME || $NAME == "$n" ]] || continue
		state=down pid=- rss=-
		if run_alive "$d"; then
			state=up pid=$(<"$d/pid")
			rss="$(($(ps -o rss= -p "$pid") / 1024))M"
		fi
		printf '%-16s %-8s %-8s %-6s %-8s %-16s %s\n' "$n" "$state" "$pid" "$(cat "$d/port" 2>/dev/null || echo -)" \
			"$rss" "$(cat "$d/image" 2>/dev/null || echo -)" "$(cat "$d/kernel" 2>/dev/null || echo -)"
	done
}

(($#)) || usage
cmd=$1
shift
case $cmd in
prepare) cmd_prepare "$@" ;;
up) cmd_up "$@" ;;
down) cmd_down "$@" ;;
ssh) cmd_ssh "$@" ;;
status) cmd_status "$@" ;;
help | -h | --help) usage 0 ;;
*)
	echo "$PROG: unknown command '$cmd'" >&2
	usage
	;;
esac
