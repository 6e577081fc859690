#!/usr/bin/env bash
# testfleet.sh -- a fleet of simulated GPU nodes on this machine, for kfleet's
# integration tests, the README demo and benchmarks.
#
# Every node is a real OpenSSH sshd (/usr/sbin/sshd) listening on its own
# 127.0.0.1 port, started in its own mount namespace
#   setsid unshare --mount --propagation private sh -c 'mount -a -T FSTAB; [INIT;] exec sshd -D -e -f CFG'
# where bind mounts give it its own /lib/modules, /boot, /usr/local, /var/lib,
# /tmp, /root, /sys/module, /proc/driver, /etc/modprobe.d and
# /etc/apt/apt.conf.d (writable, one per node), /proc/cmdline (one per node)
# and /usr/src, /etc/os-release, /sys/firmware, /sys/bus/pci/devices,
# /sys/class/iommu and the stub directories (read-only, shared by the nodes
# that look alike). The stubs (uname, modprobe, rmmod, insmod, lsmod, depmod,
# modinfo, nvidia-smi, lspci, mokutil, hostname, dmesg, systemctl; see
# stubs/) are the node's /usr/local/bin and
# /usr/local/sbin, which come first in the PATH sshd gives to sessions, and
# read the node's settings from /usr/local/etc/testnode.conf. Nothing is
# mounted outside the nodes' namespaces: they vanish with their processes.
# Run as root.
#
# USAGE
#   testfleet.sh spec [--nodes N] [--faults] [--prefix node]
#       Print a spec (below) for N nodes (default 10) to stdout.
#   testfleet.sh up --dir DIR (--spec FILE | --nodes N [--faults] [--prefix P]) [--base-port P]
#       Create DIR and start the fleet; node i (1-based line of the spec)
#       listens on 127.0.0.1:BASE+i (BASE defaults to 22000). Fails, stopping
#       what it started, if a port is taken or a node does not come up.
#   testfleet.sh down --dir DIR          stop every node (idempotent)
#   testfleet.sh stop --dir DIR NODE     SIGSTOP every process of NODE
#   testfleet.sh cont --dir DIR NODE     SIGCONT every process of NODE
#   testfleet.sh status --dir DIR        "NAME PORT up|down|stopped" per node
#   testfleet.sh ssh --dir DIR [-o OPT]... NODE [CMD...]
#       OpenSSH's ssh to NODE with the fleet's key, known_hosts and ssh_config.
#
# SPEC: one node per line, '#' starts a comment; the name, then key=value:
#   node001 kernel=6.1.0-47-amd64 installed=6.1.0-47-amd64,6.12.38+deb12-amd64
#           os=debian:12 gpus=2 driver=550.54.15 userspace=550.54.15
#           sb=disabled lspci=yes mokutil=yes user=root become=no fault=none
#   kernel     running kernel release (uname -r)
#   installed  installed kernels, comma-separated (the running one is added)
#   os         ID:VERSION_ID for /etc/os-release; debian:12, ubuntu:22.04 and
#              rocky:9.3 get the real files, anything else a generic one
#   gpus       0-16 NVIDIA GPUs (10de:2330, H100 SXM5)
#   driver     loaded driver version (nvidia, nvidia_modeset, nvidia_uvm and
#              nvidia_drm in /sys/module), or - (none loaded)
#   userspace  userspace driver version (nvidia-smi present), or - (absent)
#   sb         Secure Boot: enabled | disabled | unknown
#   lspci      yes | no   (no: GPUs only visible in /sys/bus/pci/devices)
#   mokutil    yes | no   (no: Secure Boot only from efivars, or unknown)
#   user       login user: root, or another name created on that node
#   become     no | nopasswd | password (sudo for a non-root user)
#   fault      none | unreachable | stop | slow=SECS | noauth | hostkey |
#              hostile | huge | sudo-password
#   maxstartups  optional: sshd MaxStartups (N or N:R:M; default 1000:30:1000)
#   containers optional own|host: host binds the host's /var/lib/containers
#              (a builder node that shares the host's podman images)
#   kfleet     optional DRIVER:KERNEL: /var/lib/kfleet/state says kfleet
#              installed DRIVER for KERNEL (lines driver=..., kernel=...)
#   disk       optional KIB: the node's /var/lib is a tmpfs of KIB KiB (64 to
#              67108864), so `df -Pk /var/lib/kfleet` shows that size and a
#              deploy's free-space check can fail. It starts with what
#              fs/var/lib holds (copied in) and /var/lib/kfleet; the host sees
#              the live tree only as /proc/$(cat DIR/nodes/NODE/pid)/root/var/lib.
#              Not with containers=host, nor with DIR under /var/lib.
#   modprobe_fail  optional NAME[,NAME...]: `modprobe NAME` fails for these
#              modules (exit 1, "modprobe: ERROR: could not insert 'NAME':
#              Exec format error"); NAME@VERSION fails only NAME.ko of that
#              version. It is the line modprobe_fail=... of testnode.conf,
#              which the host may change at any time (see stubs/kmod)
#   ko         optional DRIVER or DRIVER:signed: nvidia, nvidia-modeset,
#              nvidia-drm and nvidia-uvm .ko files of DRIVER in
#              /lib/modules/K/updates/kfleet for every installed K (modinfo
#              strings version=, vermagic=K, depends=; signed: signer=
#              testfleet-signing and the "~Module signature appended~" trailer),
#              listed in modules.dep, as a kfleet install leaves them
#   nouveau    optional none | available | blacklisted | loaded: nouveau.ko in
#              each kernel's tree; blacklisted adds /etc/modprobe.d/
#              blacklist-nouveau.conf; loaded adds /sys/module/nouveau
#   pci_driver optional NAME (e.g. vfio-pci, nvidia, nouveau): each GPU's
#              /sys/bus/pci/devices/SLOT/driver links to .../drivers/NAME
#   iommu      optional on | off (default off): /sys/class/iommu holds dmar0
#              and dmar1, or nothing (bound only where the host has that dir)
#   cmdline    optional WORD[,WORD...]: appended to the node's /proc/cmdline
#              ("BOOT_IMAGE=/boot/vmlinuz-K root=/dev/vda1 ro quiet ...")
#   mok        optional CN[,CN...]: the certificates `mokutil --list-enrolled`
#              shows (none: "MokListRT is empty")
# Missing keys take the values shown above, except installed (= kernel) and
# gpus/driver/userspace (0, -, -).
#
# FILES THE HOST MAY WRITE WHILE A NODE RUNS (DIR/nodes/NODE/fs/...), read by
# the stubs on every call:
#   usr/local/etc/testnode.conf   the stubs' settings (kernel=, userspace=,
#                                 fault=, modprobe_fail=, mok=...): edit a line
#                                 or append one (the last one wins); keep the
#                                 first two lines (fleet_id, name) as they are
#   usr/local/etc/testnode.dmesg  what dmesg prints (default: a few boot lines)
#   usr/local/etc/testnode.units  "UNIT STATE" lines for systemctl is-enabled
#   etc/modprobe.d/, etc/apt/apt.conf.d/   the node's own (empty by default)
#   lib/modules/, boot/, sys/module/, var/lib/ (not with disk=), proc-driver/
#
# FAULTS
#   unreachable   port in the inventory, no sshd: connection refused
#   stop          normal node; tests freeze it with `testfleet.sh stop`
#   slow=SECS     uname sleeps SECS before answering
#   noauth        authorized_keys holds another key: auth refused
#   hostkey       known_hosts records another key: host key has changed
#   hostile       uname -r has shell metacharacters, uname -v a terminal escape
#   huge          uname -v prints without end (yes kfleet-huge-output)
#   sudo-password needs user=NAME become=password: `sudo -n` asks a password
#
# DIR after `up`:
#   id_ed25519(.pub)  client key (ed25519, no passphrase)
#   known_hosts       [127.0.0.1]:PORT ssh-ed25519 ... per node
#   inventory.yml     Ansible YAML inventory, groups by os id
#   ssh_config        a Host block per node
#   expected.tsv      what fact gathering must find, one line per node after
#                     a '#' header: name port kernel installed os_id os_version
#                     driver userspace gpus secure_boot fault
#   spec              the spec the fleet was started from
#   nodes.tsv         name port fault (used by down/status/stop/cont/ssh)
#   nodes/NAME/       sshd_config, host key, authorized_keys, sshd.log, pid,
#                     mntns, fstab, cmdline, init (disk= nodes), fs/ (the
#                     node's own trees; the host can
#                     read and change them while the node runs, e.g.
#                     fs/sys/module/nvidia/version or
#                     fs/usr/local/etc/testnode.conf)
#   shared/, stubs/   the read-only trees and the stubs the nodes use
# DIR must be a plain path: letters, digits and . _ - + / only (no spaces),
# because it ends up in sshd_config, fstab and inventory lines.
#
# ENVIRONMENT
#   TESTFLEET_UP_TIMEOUT  seconds `up` waits for the nodes (default 60 + N/4)
#   TESTFLEET_VERBOSE=1   `up` reports the time each phase took
set -euo pipefail

PROG=testfleet.sh
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
STUBS_SRC=$HERE/stubs
SSHD=/usr/sbin/sshd
KERNELS=(6.1.0-47-amd64 6.1.0-50-amd64 6.12.38+deb12-amd64)
NV_VERSION=550.54.15
DEFAULT_BASE_PORT=22000
USER_UID=4242
# Node directories that get a per-node bind mount (DIR may not be one of them).
BIND_DIRS=(/lib/modules /boot /usr/src /usr/local /var/lib /tmp /root /home)
NV_MODULES=(nvidia nvidia-modeset nvidia-drm nvidia-uvm)
SIGN_MARKER='~Module signature appended~'
# PCI addresses of GPU 0, 1, ...: distinct, and sorted the way lspci sorts.
GPU_SLOTS=(0000:1b:00.0 0000:1c:00.0 0000:3b:00.0 0000:3c:00.0 0000:5b:00.0
	0000:5c:00.0 0000:7b:00.0 0000:7c:00.0 0000:9b:00.0 0000:9c:00.0
	0000:bb:00.0 0000:bc:00.0 0000:db:00.0 0000:dc:00.0 0000:fb:00.0 0000:fc:00.0)
EFI_GUID=8be4df61-93ca-11d2-aa0d-00e098032b8c

die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

now() { REPLY=${EPOCHREALTIME/[.,]/}; } # microseconds

# phase WHAT: with TESTFLEET_VERBOSE=1, say how long `up` has taken so far.
T0=0
phase() {
	[[ ${TESTFLEET_VERBOSE:-0} == 1 ]] || return 0
	local t=${EPOCHREALTIME/[.,]/}
	note "$(printf '%6d ms  %s' $(((t - T0) / 1000)) "$1")"
}

#--------------------------------------------------------------------------
# Spec generation

# gen_spec N FAULTS PREFIX: print the default spec.
gen_spec() {
	local n=$1 faults=$2 prefix=$3 i t name k inst os gpus drv us sb lspci mok rest
	local -a tail=() gp=(8 8 0 4 8 2 1)
	if ((faults)); then
		((n >= 9)) || die "--faults needs at least 9 nodes (it uses the last 9), got $n"
		tail=(
			"user=kfuser become=nopasswd fault=none"
			"user=root become=no fault=unreachable"
			"user=root become=no fault=stop"
			"user=root become=no fault=slow=3"
			"user=root become=no fault=noauth"
			"user=root become=no fault=hostkey"
			"user=root become=no fault=hostile"
			"user=root become=no fault=huge"
			"user=kfuser become=password fault=sudo-password"
		)
	fi
	for ((i = 1; i <= n; i++)); do
		printf -v name '%s%03d' "$prefix" "$i"
		# Kernels round-robin; every third node (rotating over the three
		# kernels) also has a kernel installed that it does not run.
		k=${KERNELS[(i - 1) % 3]}
		inst=$k
		if (((i - 1) % 3 == ((i - 1) / 3) % 3)); then
			if ((((i - 1) % 3) == 2)); then
				inst="${KERNELS[1]},${KERNELS[2]}"
			else
				inst="$k,${KERNELS[2]}"
			fi
		fi
		os=debian:12
		((i % 10 == 4)) && os=ubuntu:22.04
		((i % 10 == 8)) && os=rocky:9.3
		gpus=${gp[i % 7]}
		drv=$NV_VERSION us=$NV_VERSION
		if ((gpus == 0 || i % 5 == 0)); then
			drv=- us=-
		elif ((i % 5 == 4)); then
			drv=- # userspace installed, no module: the post-kernel-update failure
		fi
		sb=disabled
		((i % 11 == 5)) && sb=enabled
		((i % 13 == 6)) && sb=unknown
		lspci=yes
		((i % 6 == 2)) && lspci=no
		mok=yes
		((i % 4 == 3)) && mok=no
		# "unknown" means the node offers no way to tell: no mokutil either.
		[[ $sb != unknown ]] || mok=no
		t=$((i - (n - ${#tail[@]}) - 1))
		if ((t >= 0)); then
			rest=${tail[t]}
		else
			rest="user=root become=no fault=none"
		fi
		printf '%s kernel=%s installed=%s os=%s gpus=%s driver=%s userspace=%s sb=%s lspci=%s mokutil=%s %s\n' \
			"$name" "$k" "$inst" "$os" "$gpus" "$drv" "$us" "$sb" "$lspci" "$mok" "$rest"
	done
}

#--------------------------------------------------------------------------
# Spec parsing

NAME_RE='^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'
REL_RE='^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$'
VER_RE='^[0-9]+(\.[0-9]+){0,5}$'
OSID_RE='^[a-z0-9][a-z0-9._-]{0,31}$'
OSVER_RE='^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$'
USER_RE='^[a-z_][a-z0-9_-]{0,31}$'
MAXST_RE='^[0-9]{1,5}(:[0-9]{1,3}:[0-9]{1,5})?$'
MODFAIL_ITEM='[A-Za-z0-9_-]{1,55}(@[0-9][A-Za-z0-9._+~-]{0,63})?'
MODLIST_RE="^$MODFAIL_ITEM(,$MODFAIL_ITEM)*\$"
CMDLINE_RE='^[A-Za-z0-9._:/=+-]+(,[A-Za-z0-9._:/=+-]+)*$'
CNLIST_RE='^[A-Za-z0-9._-]{1,64}(,[A-Za-z0-9._-]{1,64})*$'

declare -a N_NAME=() N_KERNEL=() N_INSTALLED=() N_OSID=() N_OSVER=() N_GPUS=()
declare -a N_DRIVER=() N_USERSPACE=() N_SB=() N_LSPCI=() N_MOKUTIL=() N_USER=()
declare -a N_BECOME=() N_FAULT=() N_MAXST=() N_KFLEET=() N_PORT=() N_CONTAINERS=()
declare -a N_DISK=() N_MPFAIL=() N_KO=() N_NOUVEAU=() N_PCIDRV=() N_IOMMU=() N_CMDLINE=() N_MOK=()

# sort_installed: N_INSTALLED[*] deduplicated and in `sort -V` order, with
# one sort for the whole fleet.
sort_installed() {
	local i k
	local -a ks pairs=()
	for i in "${!N_INSTALLED[@]}"; do
		[[ ${N_INSTALLED[i]} == *,* ]] || continue
		IFS=, read -ra ks <<<"${N_INSTALLED[i]}"
		for k in "${ks[@]}"; do pairs+=("$i"$'\t'"$k"); done
		N_INSTALLED[i]=''
	done
	((${#pairs[@]})) || return 0
	while IFS=$'\t' read -r i k; do
		N_INSTALLED[i]+=${N_INSTALLED[i]:+,}$k
	done < <(printf '%s\n' "${pairs[@]}" | LC_ALL=C sort -t $'\t' -k1,1n -k2,2V -u)
}

# load_spec FILE LABEL: parse and check a spec into the N_* arrays.
load_spec() {
	local file=$1 label=$2 line lineno=0 n=0 w key val name
	local -A seen=()
	local -a words ks
	while IFS= read -r line || [[ -n $line ]]; do
		lineno=$((lineno + 1))
		line=${line%%#*}
		read -ra words <<<"$line"
		((${#words[@]})) || continue
		local at="$label:$lineno"
		name=${words[0]}
		[[ $name =~ $NAME_RE ]] || die "$at: bad node name '$name' (letters, digits, . _ -)"
		[[ -z ${seen[$name]-} ]] || die "$at: node '$name' already on line ${seen[$name]}"
		seen[$name]=$lineno
		local kernel=${KERNELS[0]} installed='' os=debian:12 gpus=0 driver=- userspace=-
		local sb=disabled lspci=yes mokutil=yes user=root become=no fault=none maxst='' kfleet=''
		local containers=own disk='' mpfail='' ko='' nouveau=none pcidrv='' iommu=off cmdline='' mok=''
		for w in "${words[@]:1}"; do
			[[ $w == *=* ]] || die "$at: expected key=value, got '$w'"
			key=${w%%=*} val=${w#*=}
			case $key in
			kernel) kernel=$val ;;
			installed) installed=$val ;;
			os) os=$val ;;
			gpus) gpus=$val ;;
			driver) driver=$val ;;
			userspace) userspace=$val ;;
			sb) sb=$val ;;
			lspci) lspci=$val ;;
			mokutil) mokutil=$val ;;
			user) user=$val ;;
			become) become=$val ;;
			fault) fault=$val ;;
			maxstartups) maxst=$val ;;
			kfleet) kfleet=$val ;;
			containers) containers=$val ;;
			disk) disk=$val ;;
			modprobe_fail) mpfail=$val ;;
			ko) ko=$val ;;
			nouveau) nouveau=$val ;;
			pci_driver) pcidrv=$val ;;
			iommu) iommu=$val ;;
			cmdline) cmdline=$val ;;
			mok) mok=$val ;;
			*) die "$at: unknown key '$key'" ;;
			esac
		done
		[[ $kernel =~ $REL_RE ]] || die "$at: bad kernel release '$kernel'"
		IFS=, read -ra ks <<<"${installed:-$kernel}"
		for w in "${ks[@]}"; do
			[[ $w =~ $REL_RE ]] || die "$at: bad installed kernel '$w'"
		done
		[[ ,$installed, == *,"$kernel",* ]] || installed=${installed:+$installed,}$kernel
		[[ $os == ?*:?* ]] || die "$at: os must be ID:VERSION, got '$os'"
		N_OSID[n]=${os%%:*} N_OSVER[n]=${os#*:}
		[[ ${N_OSID[n]} =~ $OSID_RE ]] || die "$at: bad os id '${N_OSID[n]}'"
		[[ ${N_OSVER[n]} =~ $OSVER_RE ]] || die "$at: bad os version '${N_OSVER[n]}'"
		[[ $gpus =~ ^([0-9]|1[0-6])$ ]] || die "$at: gpus must be 0-16, got '$gpus'"
		[[ $driver == - || $driver =~ $VER_RE ]] || die "$at: bad driver version '$driver'"
		[[ $userspace == - || $userspace =~ $VER_RE ]] || die "$at: bad userspace version '$userspace'"
		[[ $sb =~ ^(enabled|disabled|unknown)$ ]] || die "$at: sb must be enabled, disabled or unknown"
		[[ $lspci =~ ^(yes|no)$ ]] || die "$at: lspci must be yes or no"
		[[ $mokutil =~ ^(yes|no)$ ]] || die "$at: mokutil must be yes or no"
		[[ $user =~ $USER_RE ]] || die "$at: bad user name '$user'"
		[[ $become =~ ^(no|nopasswd|password)$ ]] || die "$at: become must be no, nopasswd or password"
		[[ $fault =~ ^(none|unreachable|stop|noauth|hostkey|hostile|huge|sudo-password|slow=[0-9]{1,4})$ ]] ||
			die "$at: unknown fault '$fault' (none unreachable stop slow=SECS noauth hostkey hostile huge sudo-password)"
		if [[ $fault == sudo-password ]]; then
			[[ $user != root ]] || die "$at: fault=sudo-password needs a non-root user= (e.g. user=kfuser become=password)"
			become=password
		fi
		[[ $user != root || $become == no ]] || die "$at: become=$become needs a non-root user="
		[[ -z $maxst || $maxst =~ $MAXST_RE ]] || die "$at: bad maxstartups '$maxst'"
		[[ $containers =~ ^(own|host)$ ]] || die "$at: containers must be own or host"
		if [[ -n $kfleet ]]; then
			[[ $kfleet == ?*:?* && ${kfleet%%:*} =~ $VER_RE && ${kfleet#*:} =~ $REL_RE ]] ||
				die "$at: kfleet must be DRIVER:KERNEL, got '$kfleet'"
		fi
		if [[ -n $disk ]]; then
			if ! [[ $disk =~ ^[0-9]{2,8}$ ]] || ((10#$disk < 64 || 10#$disk > 67108864)); then
				die "$at: disk must be KiB from 64 to 67108864, got '$disk'"
			fi
			disk=$((10#$disk))
			[[ $containers == own ]] || die "$at: disk= and containers=host exclude each other"
		fi
		[[ -z $mpfail || $mpfail =~ $MODLIST_RE ]] || die "$at: modprobe_fail must be NAME or NAME@VERSION, comma-separated"
		[[ -z $ko || $ko =~ ^[0-9]+(\.[0-9]+){1,3}(:signed)?$ ]] || die "$at: ko must be DRIVER or DRIVER:signed, got '$ko'"
		[[ $nouveau =~ ^(none|available|blacklisted|loaded)$ ]] || die "$at: nouveau must be none, available, blacklisted or loaded"
		[[ -z $pcidrv || $pcidrv =~ ^[A-Za-z0-9_-]{1,32}$ ]] || die "$at: bad pci_driver '$pcidrv'"
		[[ $iommu =~ ^(on|off)$ ]] || die "$at: iommu must be on or off"
		[[ -z $cmdline || $cmdline =~ $CMDLINE_RE ]] || die "$at: cmdline must be words (letters, digits, . _ : / = + -), comma-separated"
		[[ -z $mok || $mok =~ $CNLIST_RE ]] || die "$at: mok must be CNs (letters, digits, . _ -), comma-separated"
		N_DISK[n]=$disk N_MPFAIL[n]=$mpfail N_KO[n]=$ko N_NOUVEAU[n]=$nouveau N_PCIDRV[n]=$pcidrv
		N_IOMMU[n]=$iommu N_CMDLINE[n]=$cmdline N_MOK[n]=$mok
		N_NAME[n]=$name N_KERNEL[n]=$kernel N_INSTALLED[n]=$installed N_GPUS[n]=$gpus
		N_DRIVER[n]=$driver N_USERSPACE[n]=$userspace N_SB[n]=$sb N_LSPCI[n]=$lspci
		N_MOKUTIL[n]=$mokutil N_USER[n]=$user N_BECOME[n]=$become N_FAULT[n]=$fault
		N_MAXST[n]=$maxst N_KFLEET[n]=$kfleet N_CONTAINERS[n]=$containers
		n=$((n + 1))
	done <"$file"
	((n > 0)) || die "$label: no nodes in the spec"
	sort_installed
}

# spec_line I: the normalized spec line of node I.
spec_line() {
	local i=$1
	REPLY="${N_NAME[i]} kernel=${N_KERNEL[i]} installed=${N_INSTALLED[i]} os=${N_OSID[i]}:${N_OSVER[i]}"
	REPLY+=" gpus=${N_GPUS[i]} driver=${N_DRIVER[i]} userspace=${N_USERSPACE[i]} sb=${N_SB[i]}"
	REPLY+=" lspci=${N_LSPCI[i]} mokutil=${N_MOKUTIL[i]} user=${N_USER[i]} become=${N_BECOME[i]}"
	REPLY+=" fault=${N_FAULT[i]}"
	[[ -z ${N_MAXST[i]} ]] || REPLY+=" maxstartups=${N_MAXST[i]}"
	[[ -z ${N_KFLEET[i]} ]] || REPLY+=" kfleet=${N_KFLEET[i]}"
	[[ ${N_CONTAINERS[i]:-own} == own ]] || REPLY+=" containers=${N_CONTAINERS[i]}"
	[[ -z ${N_DISK[i]} ]] || REPLY+=" disk=${N_DISK[i]}"
	[[ -z ${N_MPFAIL[i]} ]] || REPLY+=" modprobe_fail=${N_MPFAIL[i]}"
	[[ -z ${N_KO[i]} ]] || REPLY+=" ko=${N_KO[i]}"
	[[ ${N_NOUVEAU[i]} == none ]] || REPLY+=" nouveau=${N_NOUVEAU[i]}"
	[[ -z ${N_PCIDRV[i]} ]] || REPLY+=" pci_driver=${N_PCIDRV[i]}"
	[[ ${N_IOMMU[i]} == off ]] || REPLY+=" iommu=${N_IOMMU[i]}"
	[[ -z ${N_CMDLINE[i]} ]] || REPLY+=" cmdline=${N_CMDLINE[i]}"
	[[ -z ${N_MOK[i]} ]] || REPLY+=" mok=${N_MOK[i]}"
}

#--------------------------------------------------------------------------
# DIR and the registry of a running fleet

DIR=
FLEET_ID=
declare -a R_NAME=() R_PORT=() R_FAULT=()

# set_dir PATH: DIR = PATH made absolute (it need not exist yet).
set_dir() {
	local d=$1
	[[ -n $d ]] || die "--dir is required"
	[[ $d == /* ]] || d=$PWD/$d
	while [[ $d == */ && $d != / ]]; do d=${d%/}; done
	[[ $d =~ ^[A-Za-z0-9._+/-]+$ ]] ||
		die "--dir '$1': only letters, digits and . _ - + / are supported (no spaces)"
	[[ /$d/ != */../* && /$d/ != */./* ]] || die "--dir '$1': no . or .. components, please"
	DIR=$d
}

load_registry() {
	local name port fault
	R_NAME=() R_PORT=() R_FAULT=()
	[[ -r $DIR/nodes.tsv ]] || return 1
	while IFS=$'\t' read -r name port fault; do
		[[ -n $name && $name != \#* ]] || continue
		R_NAME+=("$name") R_PORT+=("$port") R_FAULT+=("$fault")
	done <"$DIR/nodes.tsv"
	FLEET_ID=
	[[ -r $DIR/fleet.id ]] && read -r FLEET_ID <"$DIR/fleet.id"
	return 0
}

#--------------------------------------------------------------------------
# Processes of a node: everything in its mount namespace.
#
# sshd forks a session per connection and the session calls setsid(), so a
# node's processes do not share one process group; they do share the mount
# namespace the node was started in. A node is therefore found by its
# namespace: the listener's (pid file, checked against its command line), or
# the one recorded at start (checked against the node's testnode.conf seen
# through /proc/PID/root) when the listener is gone.

declare -a NS_OF=() PIDS=()
declare -A NS_PIDS=()
HOST_NS=

scan_ns() {
	local p l
	NS_OF=()
	NS_PIDS=()
	while read -r p l; do
		[[ -n $l ]] || continue # a kernel thread, or a process gone meanwhile
		p=${p#/proc/}
		p=${p%%/*}
		NS_OF[p]=$l
		NS_PIDS[$l]+="$p "
	done < <(find /proc/[0-9]*/ns/mnt -maxdepth 0 -printf '%p %l\n' 2>/dev/null || true)
	HOST_NS=${NS_OF[$$]-}
}

# alive PID: the process exists and is not a zombie.
alive() {
	local stat
	{ read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z ]]
}

# proc_state PID: REPLY = state letter (R S D T t Z ...), or empty.
proc_state() {
	local stat
	REPLY=
	{ read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
	stat=${stat##*) }
	REPLY=${stat:0:1}
}

# cmdline_is_node PID NODEDIR: PID was started for NODEDIR (sshd -f
# NODEDIR/sshd_config, or the sh that mounts and execs it).
cmdline_is_node() {
	local -a args=()
	local a
	{ mapfile -d '' args <"/proc/$1/cmdline"; } 2>/dev/null || return 1
	for a in "${args[@]}"; do
		# sshd rewrites its title: "sshd: /usr/sbin/sshd -D -e -f CFG [listener] ..."
		[[ $a == "$2"/* || $a == *" $2"/* ]] && return 0
	done
	return 1
}

# conf_is_node PID NAME: PID sees NAME's testnode.conf of this fleet.
conf_is_node() {
	local a b
	[[ -n $FLEET_ID ]] || return 1
	{ { read -r a && read -r b; } <"/proc/$1/root/usr/local/etc/testnode.conf"; } 2>/dev/null || return 1
	[[ $a == "fleet_id='$FLEET_ID'" && $b == "name='$2'" ]]
}

# node_procs NAME: PIDS = the node's processes (listener first); fails when
# the node has none. Needs scan_ns.
node_procs() {
	local name=$1 nd=$DIR/nodes/$1 pid='' ns='' p ok=0
	PIDS=()
	{ read -r pid <"$nd/pid"; } 2>/dev/null || pid=
	if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && cmdline_is_node "$pid" "$nd"; then
		ns=${NS_OF[pid]-}
		if [[ -z $ns ]]; then # started after the scan
			PIDS=("$pid")
			return 0
		fi
	else
		pid=
		{ read -r ns <"$nd/mntns"; } 2>/dev/null || ns=
		[[ -n $ns && -n ${NS_PIDS[$ns]-} ]] || return 1
		for p in ${NS_PIDS[$ns]}; do
			if conf_is_node "$p" "$name"; then
				ok=1
				break
			fi
		done
		((ok)) || return 1
	fi
	[[ -n $ns && $ns != "$HOST_NS" ]] || return 1
	[[ -z $pid ]] || PIDS=("$pid")
	for p in ${NS_PIDS[$ns]}; do
		[[ $p == "$pid" ]] || PIDS+=("$p")
	done
	return 0
}

# wait_gone SECONDS PID...: wait until none of PIDs is alive; REPLY = the rest.
wait_gone() {
	local end p
	local -a left
	end=$((${EPOCHREALTIME/[.,]/} + $1 * 1000000))
	shift
	left=("$@")
	while :; do
		local -a still=()
		for p in "${left[@]}"; do
			alive "$p" && still+=("$p")
		done
		left=("${still[@]}")
		((${#left[@]} == 0 || ${EPOCHREALTIME/[.,]/} >= end)) && break
		sleep 0.05
	done
	REPLY="${left[*]}"
}

# fleet_down: stop every process of every node in DIR.
fleet_down() {
	local nd name pass
	local -a all
	[[ -d $DIR/nodes ]] || return 0
	FLEET_ID=
	[[ -r $DIR/fleet.id ]] && read -r FLEET_ID <"$DIR/fleet.id"
	# Several passes: a session forked between the scan and the signals is
	# caught by the next one.
	for pass in 1 2 3 4 5; do
		scan_ns
		all=()
		for nd in "$DIR"/nodes/*/; do
			[[ -d $nd ]] || continue
			name=${nd%/}
			name=${name##*/}
			if node_procs "$name"; then all+=("${PIDS[@]}"); fi
		done
		((${#all[@]})) || break
		# CONT first: a stopped process would not act on TERM until continued.
		kill -CONT "${all[@]}" 2>/dev/null || true
		kill -TERM "${all[@]}" 2>/dev/null || true
		wait_gone 3 "${all[@]}"
		if [[ -n $REPLY ]]; then
			# shellcheck disable=SC2086  # REPLY is a list of pids
			kill -KILL $REPLY 2>/dev/null || true
			# shellcheck disable=SC2086
			wait_gone 3 $REPLY
			[[ -z $REPLY ]] || warn "processes still alive after SIGKILL: $REPLY"
		fi
		[[ $pass != 5 ]] || warn "nodes kept forking while being stopped; gave up after 5 passes"
	done
	for nd in "$DIR"/nodes/*/; do
		[[ -d $nd ]] && rm -f "$nd/pid" "$nd/mntns"
	done
	return 0
}

#--------------------------------------------------------------------------
# Ports

# listening_ports ANY: print the TCP ports in LISTEN state, on 127.0.0.1 only
# (ANY=0) or on any address, IPv4 or IPv6 (ANY=1).
listening_ports() {
	local files=(/proc/net/tcp)
	[[ $1 == 1 && -r /proc/net/tcp6 ]] && files+=(/proc/net/tcp6)
	awk -v any="$1" '
		function hex(s,  i, n) {
			n = 0
			for (i = 1; i <= length(s); i++)
				n = n * 16 + index("0123456789ABCDEF", substr(s, i, 1)) - 1
			return n
		}
		$4 == "0A" {
			split($2, a, ":")
			if (any || a[1] == "0100007F") print hex(a[2])
		}' "${files[@]}"
}

#--------------------------------------------------------------------------
# Node files

os_release() { # ID VERSION
	case $1:$2 in
	debian:12)
		REPLY='PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"'
		;;
	ubuntu:22.04)
		REPLY='PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
SUPPORT_URL="https://help.ubuntu.com/"
BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"
PRIVACY_POLICY_URL="https://www.ubuntu.com/legal/terms-and-policies/privacy-policy"
UBUNTU_CODENAME=jammy'
		;;
	rocky:9.3)
		REPLY='NAME="Rocky Linux"
VERSION="9.3 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.3"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"
ANSI_COLOR="0;32"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:rocky:rocky:9::baseos"
HOME_URL="https://rockylinux.org/"
BUG_REPORT_URL="https://bugs.rockylinux.org/"
SUPPORT_END="2032-05-31"
ROCKY_SUPPORT_PRODUCT="Rocky-Linux-9"
ROCKY_SUPPORT_PRODUCT_VERSION="9.3"
REDHAT_SUPPORT_PRODUCT="Rocky Linux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.3"'
		;;
	*)
		REPLY="NAME=\"$1\"
ID=$1
VERSION_ID=\"$2\"
PRETTY_NAME=\"$1 $2\""
		;;
	esac
}

kernel_version() { # RELEASE: REPLY = uname -v for it
	case $1 in
	6.1.0-47-amd64) REPLY='#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)' ;;
	6.1.0-50-amd64) REPLY='#1 SMP PREEMPT_DYNAMIC Debian 6.1.162-1 (2026-01-24)' ;;
	6.12.38+deb12-amd64) REPLY='#1 SMP PREEMPT_DYNAMIC Debian 6.12.38-1~deb12u1 (2025-07-16)' ;;
	*) REPLY="#1 SMP PREEMPT_DYNAMIC Debian ${1%%-*}-1 (2025-01-01)" ;;
	esac
}

# Set up by prepare_common for build_node.
REBIND_TARGET='' # the bind dir that DIR lies under, if any
REBIND_REL=    # DIR relative to it
HOST_PASSWD='' HOST_SHADOW='' HOST_GROUP=''
CLIENT_PUB='' STRANGER_PUB=''
HAVE_PROC_DRIVER=0
HAVE_SYS_PCI=0
HAVE_SYS_IOMMU=0 HAVE_ETC_MODPROBE=0 HAVE_ETC_APT=0

# check_up_dir: DIR is a place a fleet can live; sets REBIND_*.
check_up_dir() {
	local t
	REBIND_TARGET='' REBIND_REL=''
	for t in "${BIND_DIRS[@]}"; do
		# /lib/modules is /usr/lib/modules on merged-/usr systems; compare both.
		local tr
		tr=$(readlink -m -- "$t")
		if [[ $DIR == "$t" || $DIR == "$tr" ]]; then
			die "--dir may not be $t itself (nodes get their own $t)"
		fi
		if [[ $DIR == "$t"/* ]]; then
			REBIND_TARGET=$t REBIND_REL=${DIR#"$t"}
		elif [[ $DIR == "$tr"/* ]]; then
			REBIND_TARGET=$t REBIND_REL=${DIR#"$tr"}
		fi
	done
	case $DIR in
	/ | /proc | /proc/* | /sys | /sys/* | /dev | /dev/* | /run/sshd | /run/sshd/* | \
		/usr/local/bin | /usr/local/bin/* | /usr/local/sbin | /usr/local/sbin/*)
		die "--dir $DIR: pick a directory outside /proc, /sys, /dev, /run/sshd and /usr/local/{bin,sbin}"
		;;
	esac
}

prepare_common() {
	local t
	HAVE_PROC_DRIVER=0 HAVE_SYS_PCI=0
	[[ -d /proc/driver ]] && HAVE_PROC_DRIVER=1
	# Bound only over what the host has: nothing is created outside DIR
	# for these (a node then simply has no such directory).
	[[ -d /sys/class/iommu ]] && HAVE_SYS_IOMMU=1
	[[ -d /etc/modprobe.d ]] && HAVE_ETC_MODPROBE=1
	[[ -d /etc/apt/apt.conf.d ]] && HAVE_ETC_APT=1
	if [[ -d /sys/bus/pci/devices ]]; then
		HAVE_SYS_PCI=1
	else
		warn "this host has no /sys/bus/pci/devices; nodes get no sysfs PCI fallback"
	fi
	# Mount points the nodes need; a host without kernel modules installed
	# (a container, say) lacks /lib/modules.
	for t in "${BIND_DIRS[@]}"; do
		[[ -d $t ]] || mkdir -p "$t" || die "cannot create mount point $t"
	done
	mkdir -p /run/sshd # sshd's privilege separation directory
}

# write FILE CONTENT: write CONTENT and a newline to FILE.
write() { printf '%s\n' "$2" >"$1"; }

# Creating files is the slow part of `up` (about 0.5 ms of system time per
# file on this machine's ext4), so what no node writes to exists once per
# variant under DIR/shared and is bound read-only into the nodes that need
# it: the stub directories, /usr/src, /etc/os-release, /sys/firmware and
# /sys/bus/pci/devices. What a node may change (/lib/modules, /boot,
# /var/lib, /tmp, /root, /sys/module, /proc/driver, testnode.conf) is its own.

# Names of node I's shared pieces, in REPLY.
shared_bin() {
	local i=$1 a=1 b=1 c=1
	[[ ${N_USERSPACE[i]} != - ]] || a=0
	[[ ${N_LSPCI[i]} != no ]] || b=0
	[[ ${N_MOKUTIL[i]} != no ]] || c=0
	REPLY=bin-$a$b$c
}
shared_src() { REPLY=usr-src-${N_INSTALLED[$1]//,/_}; }
shared_os() { REPLY=os-release-${N_OSID[$1]}-${N_OSVER[$1]}; }
shared_fw() { REPLY=firmware-${N_SB[$1]}; }
shared_pci() { REPLY=pci-${N_GPUS[$1]}${N_PCIDRV[$1]:+-${N_PCIDRV[$1]}}; }
shared_iommu() { REPLY=iommu-${N_IOMMU[$1]}; }

# build_shared: create DIR/shared/* for every variant the spec uses.
build_shared() {
	local i g k s d n=${#N_NAME[@]}
	local -A made=()
	local -a mk=() ks
	local sh=$DIR/shared
	# Directories first (one mkdir), then files.
	for ((i = 0; i < n; i++)); do
		shared_bin "$i"
		[[ -n ${made[$REPLY]-} ]] || { made[$REPLY]=1 && mk+=("$sh/$REPLY"); }
		shared_src "$i"
		if [[ -z ${made[$REPLY]-} ]]; then
			made[$REPLY]=1
			IFS=, read -ra ks <<<"${N_INSTALLED[i]}"
			for k in "${ks[@]}"; do mk+=("$sh/$REPLY/linux-headers-$k/include/config"); done
		fi
		shared_fw "$i"
		if [[ -z ${made[$REPLY]-} ]]; then
			made[$REPLY]=1
			mk+=("$sh/$REPLY")
			[[ ${N_SB[i]} == unknown ]] || mk+=("$sh/$REPLY/efi/efivars")
		fi
		shared_pci "$i"
		if [[ -z ${made[$REPLY]-} ]]; then
			made[$REPLY]=1
			mk+=("$sh/$REPLY/0000:00:00.0")
			for ((g = 0; g < N_GPUS[i]; g++)); do mk+=("$sh/$REPLY/${GPU_SLOTS[g]}"); done
		fi
		shared_iommu "$i"
		if [[ -z ${made[$REPLY]-} ]]; then
			made[$REPLY]=1
			mk+=("$sh/$REPLY")
			[[ ${N_IOMMU[i]} == off ]] || mk+=("$sh/$REPLY/dmar0" "$sh/$REPLY/dmar1")
		fi
	done
	mk+=("$sh/sbin")
	# DIR visible inside a shared tree that is mounted over its parent.
	if [[ -n $REBIND_TARGET && $REBIND_TARGET == /usr/src ]]; then
		for d in "${!made[@]}"; do
			[[ $d != usr-src-* ]] || mk+=("$sh/$d$REBIND_REL")
		done
	fi
	mkdir -p "${mk[@]}"

	for d in "${!made[@]}"; do
		case $d in
		bin-*)
			local -a b=("$DIR/stubs/uname" "$DIR/stubs/hostname" "$DIR/stubs/lsmod" "$DIR/stubs/modinfo"
				"$DIR/stubs/dmesg" "$DIR/stubs/systemctl")
			[[ ${d:4:1} == 0 ]] || b+=("$DIR/stubs/nvidia-smi")
			[[ ${d:5:1} == 0 ]] || b+=("$DIR/stubs/lspci")
			[[ ${d:6:1} == 0 ]] || b+=("$DIR/stubs/mokutil")
			ln "${b[@]}" "$sh/$d/"
			;;
		usr-src-*)
			IFS=_ read -ra ks <<<"${d#usr-src-}"
			for k in "${ks[@]}"; do
				write "$sh/$d/linux-headers-$k/include/config/kernel.release" "$k"
				write "$sh/$d/linux-headers-$k/Makefile" "# testfleet: not real headers for $k"
			done
			;;
		firmware-enabled)
			# Secure Boot variable: 4 bytes of attributes, then the value.
			printf '\006\000\000\000\001' >"$sh/$d/efi/efivars/SecureBoot-$EFI_GUID"
			;;
		firmware-disabled)
			printf '\006\000\000\000\000' >"$sh/$d/efi/efivars/SecureBoot-$EFI_GUID"
			;;
		pci-*)
			# The GPUs plus a host bridge, for the sysfs fallback; "pci-N-DRV":
			# each GPU's driver link names DRV, as the kernel's does.
			local rest=${d#pci-} ng drv=''
			ng=${rest%%-*}
			[[ $rest != *-* ]] || drv=${rest#*-}
			for ((g = 0; g < ng; g++)); do
				s=$sh/$d/${GPU_SLOTS[g]}
				write "$s/vendor" 0x10de
				write "$s/device" 0x2330
				write "$s/class" 0x030200
				write "$s/revision" 0xa1
				[[ -z $drv ]] || ln -s "../../../bus/pci/drivers/$drv" "$s/driver"
			done
			write "$sh/$d/0000:00:00.0/vendor" 0x8086
			write "$sh/$d/0000:00:00.0/device" 0x1237
			write "$sh/$d/0000:00:00.0/class" 0x060000
			;;
		esac
	done
	ln "$DIR/stubs/modprobe" "$DIR/stubs/rmmod" "$DIR/stubs/insmod" "$DIR/stubs/depmod" \
		"$DIR/stubs/lsmod" "$DIR/stubs/modinfo" "$sh/sbin/"
	for ((i = 0; i < n; i++)); do
		shared_os "$i"
		if [[ -z ${made[$REPLY]-} ]]; then
			made[$REPLY]=1
			local f=$sh/$REPLY
			os_release "${N_OSID[i]}" "${N_OSVER[i]}"
			write "$f" "$REPLY"
		fi
	done
}

# build_node I: create node I's directory: its own trees, testnode.conf,
# fstab, sshd_config and authorized_keys.
build_node() {
	local i=$1 name=${N_NAME[$1]} nd r k d fault slow=0 sh=$DIR/shared
	local -a mk ks
	nd=$DIR/nodes/$name
	r=$nd/fs
	IFS=, read -ra ks <<<"${N_INSTALLED[i]}"
	mk=("$r/boot" "$r/usr/local/bin" "$r/usr/local/sbin" "$r/usr/local/etc" "$r/var/lib"
		"$r/tmp" "$r/root" "$r/sys/module" "$r/etc/modprobe.d" "$r/etc/apt/apt.conf.d")
	for k in "${ks[@]}"; do
		mk+=("$r/lib/modules/$k/kernel")
		[[ -z ${N_KO[i]} ]] || mk+=("$r/lib/modules/$k/updates/kfleet")
		[[ ${N_NOUVEAU[i]} == none ]] || mk+=("$r/lib/modules/$k/kernel/drivers/gpu/drm/nouveau")
	done
	[[ ${N_NOUVEAU[i]} != loaded ]] || mk+=("$r/sys/module/nouveau/holders")
	if [[ ${N_DRIVER[i]} != - ]]; then
		mk+=("$r/sys/module/nvidia/holders/nvidia_modeset" "$r/sys/module/nvidia/holders/nvidia_uvm"
			"$r/sys/module/nvidia_modeset/holders/nvidia_drm" "$r/sys/module/nvidia_uvm/holders"
			"$r/sys/module/nvidia_drm/holders")
	fi
	if ((HAVE_PROC_DRIVER)); then
		if [[ ${N_DRIVER[i]} != - ]]; then mk+=("$r/proc-driver/nvidia"); else mk+=("$r/proc-driver"); fi
	fi
	[[ -z ${N_KFLEET[i]} ]] || mk+=("$r/var/lib/kfleet")
	[[ ${N_USER[i]} == root ]] || mk+=("$r/etc" "$r/home/${N_USER[i]}")
	case $REBIND_TARGET in
	'' | /usr/src) ;;
	/home) [[ ${N_USER[i]} == root ]] || mk+=("$r/home$REBIND_REL") ;;
	*) mk+=("$r$REBIND_TARGET$REBIND_REL") ;;
	esac
	mkdir -p "${mk[@]}"

	# Kernels: /lib/modules/K with a build link into /usr/src, and /boot.
	for k in "${ks[@]}"; do
		: >"$r/lib/modules/$k/modules.dep"
		: >"$r/lib/modules/$k/modules.order"
		ln -s "/usr/src/linux-headers-$k" "$r/lib/modules/$k/build"
		write "$r/boot/vmlinuz-$k" "testfleet: not a real kernel image ($k)"
		write "$r/boot/config-$k" "#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 ${k%%-*} Kernel Configuration
#
CONFIG_64BIT=y
CONFIG_X86_64=y
CONFIG_MODULES=y
CONFIG_MODULE_UNLOAD=y
CONFIG_MODVERSIONS=y
CONFIG_MODULE_SIG=y
CONFIG_LOCALVERSION=\"\""
	done

	# A loaded driver: the four NVIDIA modules as the kernel shows them.
	if [[ ${N_DRIVER[i]} != - ]]; then
		d=$r/sys/module
		write "$d/nvidia/version" "${N_DRIVER[i]}"
		write "$d/nvidia/refcnt" 2
		write "$d/nvidia/coresize" 62754816
		write "$d/nvidia_modeset/refcnt" 1
		write "$d/nvidia_modeset/coresize" 1560576
		write "$d/nvidia_uvm/refcnt" 0
		write "$d/nvidia_uvm/coresize" 4886528
		write "$d/nvidia_drm/refcnt" 0
		write "$d/nvidia_drm/coresize" 126976
		for k in nvidia nvidia_modeset nvidia_uvm nvidia_drm; do
			write "$d/$k/initstate" live
		done
		if ((HAVE_PROC_DRIVER)); then
			write "$r/proc-driver/nvidia/version" "NVRM version: NVIDIA UNIX x86_64 Kernel Module  ${N_DRIVER[i]}  Tue Mar  5 22:23:56 UTC 2024
GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)"
		fi
	fi

	if [[ -n ${N_KFLEET[i]} ]]; then
		write "$r/var/lib/kfleet/state" "driver=${N_KFLEET[i]%%:*}
kernel=${N_KFLEET[i]#*:}"
	fi

	# kfleet's modules as an install leaves them, and nouveau.
	if [[ -n ${N_KO[i]} ]]; then
		local kv=${N_KO[i]%%:*} sig='' m dep deps
		[[ ${N_KO[i]} != *:signed ]] || sig=1
		for k in "${ks[@]}"; do
			deps=''
			for m in "${NV_MODULES[@]}"; do
				case $m in
				nvidia) dep='' ;;
				nvidia-drm) dep=nvidia-modeset,drm_kms_helper,drm ;;
				*) dep=nvidia ;;
				esac
				{
					printf '\0license=NVIDIA\0version=%s\0name=%s\0depends=%s\0' "$kv" "${m//-/_}" "$dep"
					printf 'vermagic=%s SMP preempt mod_unload modversions \0' "$k"
					[[ -z $sig ]] || printf 'signer=testfleet-signing\0%s\n' "$SIGN_MARKER"
				} >"$r/lib/modules/$k/updates/kfleet/$m.ko"
				case $m in
				nvidia) deps+="updates/kfleet/nvidia.ko:"$'\n' ;;
				nvidia-modeset | nvidia-uvm) deps+="updates/kfleet/$m.ko: updates/kfleet/nvidia.ko"$'\n' ;;
				nvidia-drm) deps+="updates/kfleet/$m.ko: updates/kfleet/nvidia-modeset.ko updates/kfleet/nvidia.ko"$'\n' ;;
				esac
			done
			printf '%s' "$deps" >"$r/lib/modules/$k/modules.dep"
		done
	fi
	if [[ ${N_NOUVEAU[i]} != none ]]; then
		for k in "${ks[@]}"; do
			printf '\0license=GPL and additional rights\0name=nouveau\0depends=drm_kms_helper,drm,ttm\0vermagic=%s SMP preempt mod_unload modversions \0' \
				"$k" >"$r/lib/modules/$k/kernel/drivers/gpu/drm/nouveau/nouveau.ko"
		done
		if [[ ${N_NOUVEAU[i]} == blacklisted ]]; then
			write "$r/etc/modprobe.d/blacklist-nouveau.conf" "blacklist nouveau
options nouveau modeset=0"
		elif [[ ${N_NOUVEAU[i]} == loaded ]]; then
			write "$r/sys/module/nouveau/initstate" live
			write "$r/sys/module/nouveau/refcnt" 1
			write "$r/sys/module/nouveau/coresize" 2478080
		fi
	fi

	# The kernel command line the node shows in /proc/cmdline.
	local cl="BOOT_IMAGE=/boot/vmlinuz-${N_KERNEL[i]} root=/dev/vda1 ro quiet"
	[[ -z ${N_CMDLINE[i]} ]] || cl+=" ${N_CMDLINE[i]//,/ }"
	write "$nd/cmdline" "$cl"

	# The settings the stubs read. The first two lines identify the node
	# to `down` (see conf_is_node).
	fault=${N_FAULT[i]}
	if [[ $fault == slow=* ]]; then
		slow=${fault#slow=}
		fault=slow
	fi
	local slots='' us=${N_USERSPACE[i]} g
	for ((g = 0; g < N_GPUS[i]; g++)); do slots+="${slots:+ }${GPU_SLOTS[g]}"; done
	[[ $us != - ]] || us=''
	kernel_version "${N_KERNEL[i]}"
	write "$r/usr/local/etc/testnode.conf" "fleet_id='$FLEET_ID'
name='$name'
index='$((i + 1))'
kernel='${N_KERNEL[i]}'
kernel_version='$REPLY'
machine='x86_64'
os_id='${N_OSID[i]}'
gpus='${N_GPUS[i]}'
gpu_slots='$slots'
userspace='$us'
sb='${N_SB[i]}'
fault='$fault'
slow='$slow'
mok='${N_MOK[i]}'
modprobe_fail='${N_MPFAIL[i]}'"

	# fstab for `mount -a -T`, in order.
	local fstab='' fsrc
	# fs_add SRC TARGET OPTS. When DIR lies under TARGET, DIR is first bound
	# at its own path inside SRC and SRC is then mounted recursively, so the
	# node still sees DIR (its sshd_config, host key and authorized_keys).
	fs_add() {
		if [[ $2 == "$REBIND_TARGET" ]]; then
			fstab+="$DIR $1$REBIND_REL none bind 0 0"$'\n'
			fstab+="$1 $2 none r$3 0 0"$'\n'
		else
			fstab+="$1 $2 none $3 0 0"$'\n'
		fi
	}
	fs_add "$r/lib/modules" /lib/modules bind
	fs_add "$r/boot" /boot bind
	shared_src "$i"
	fs_add "$sh/$REPLY" /usr/src bind,ro
	fs_add "$r/usr/local" /usr/local bind
	shared_bin "$i"
	fs_add "$sh/$REPLY" /usr/local/bin bind,ro
	fs_add "$sh/sbin" /usr/local/sbin bind,ro
	rm -f "$nd/init"
	if [[ ${N_CONTAINERS[i]:-own} == host ]]; then
		# A builder node: the host's container storage (images made once),
		# bound into the node's /var/lib before that is mounted recursively.
		mkdir -p "$r/var/lib/containers" /var/lib/containers
		fstab+="/var/lib/containers $r/var/lib/containers none bind 0 0"$'\n'
		fs_add "$r/var/lib" /var/lib rbind
	elif [[ -n ${N_DISK[i]} ]]; then
		# A small disk: a tmpfs of that size, filled from fs/var/lib once
		# everything is mounted (the node's init, run before sshd).
		fstab+="tmpfs /var/lib tmpfs size=${N_DISK[i]}k,mode=0755 0 0"$'\n'
		write "$nd/init" "cp -a '$r/var/lib/.' /var/lib/ && mkdir -p /var/lib/kfleet"
	else
		fs_add "$r/var/lib" /var/lib bind
	fi
	fs_add "$r/tmp" /tmp bind
	fs_add "$r/root" /root bind
	shared_os "$i"
	fs_add "$sh/$REPLY" /etc/os-release bind,ro
	fs_add "$r/sys/module" /sys/module bind
	shared_fw "$i"
	fs_add "$sh/$REPLY" /sys/firmware bind,ro
	if ((HAVE_SYS_PCI)); then
		shared_pci "$i"
		fs_add "$sh/$REPLY" /sys/bus/pci/devices bind,ro
	fi
	((HAVE_PROC_DRIVER == 0)) || fs_add "$r/proc-driver" /proc/driver bind
	fs_add "$nd/cmdline" /proc/cmdline bind,ro
	if ((HAVE_SYS_IOMMU)); then
		shared_iommu "$i"
		fs_add "$sh/$REPLY" /sys/class/iommu bind,ro
	fi
	((HAVE_ETC_MODPROBE == 0)) || fs_add "$r/etc/modprobe.d" /etc/modprobe.d bind
	((HAVE_ETC_APT == 0)) || fs_add "$r/etc/apt/apt.conf.d" /etc/apt/apt.conf.d bind
	# The userspace driver's library, where the .run installer puts it on
	# RHEL-like systems: a node whose module is not loaded still tells its
	# userspace version this way. The host's loader link stays in place.
	if [[ ${N_USERSPACE[i]} != - ]]; then
		mkdir -p "$r/usr/lib64"
		cp -a /usr/lib64/. "$r/usr/lib64/"
		: >"$r/usr/lib64/libnvidia-ml.so.${N_USERSPACE[i]}"
		ln -sfn "libnvidia-ml.so.${N_USERSPACE[i]}" "$r/usr/lib64/libnvidia-ml.so.1"
		fs_add "$r/usr/lib64" /usr/lib64 bind
	fi

	# A non-root login user: the node's own passwd, shadow, group, sudoers, home.
	if [[ ${N_USER[i]} != root ]]; then
		local u=${N_USER[i]} rule
		write "$r/etc/passwd" "$HOST_PASSWD
$u:x:$USER_UID:$USER_UID:testfleet user:/home/$u:/bin/bash"
		# '*' (not '!'): no password, but not locked, so key login works
		# with UsePAM no.
		(
			umask 077
			write "$r/etc/shadow" "$HOST_SHADOW
$u:*:19700:0:99999:7:::"
		)
		write "$r/etc/group" "$HOST_GROUP
$u:x:$USER_UID:"
		if [[ ${N_BECOME[i]} == nopasswd ]]; then
			rule="$u ALL=(ALL:ALL) NOPASSWD: ALL"
		elif [[ ${N_BECOME[i]} == password ]]; then
			rule="$u ALL=(ALL:ALL) ALL"
		else
			rule="# $u may not use sudo"
		fi
		write "$r/etc/sudoers" "# testfleet node $name
Defaults env_reset
Defaults secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"
Defaults use_pty
root ALL=(ALL:ALL) ALL
$rule"
		for fsrc in passwd shadow group sudoers; do
			fs_add "$r/etc/$fsrc" "/etc/$fsrc" bind
		done
		fs_add "$r/home" /home bind
	fi
	printf '%s' "$fstab" >"$nd/fstab"

	# sshd_config
	local cfg
	cfg="# testfleet node $name
ListenAddress 127.0.0.1
Port ${N_PORT[i]}
HostKey $nd/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile $nd/authorized_keys"
	if [[ ${N_USER[i]} != root ]]; then
		# sshd reads AuthorizedKeysFile as the user, who may not be able to
		# reach DIR (mktemp -d makes it 0700); this reads it as root.
		cfg+="
AuthorizedKeysCommand /usr/bin/cat $nd/authorized_keys
AuthorizedKeysCommandUser root"
	fi
	cfg+="
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
MaxStartups ${N_MAXST[i]:-1000:30:1000}
MaxSessions 100
Subsystem sftp internal-sftp
LogLevel ERROR
PrintMotd no
PrintLastLog no
X11Forwarding no"
	write "$nd/sshd_config" "$cfg"

	if [[ ${N_FAULT[i]} == noauth ]]; then
		write "$nd/authorized_keys" "$STRANGER_PUB"
	else
		write "$nd/authorized_keys" "$CLIENT_PUB"
	fi
}

#--------------------------------------------------------------------------
# Output files

write_outputs() {
	local i name port n=${#N_NAME[@]} kt kd g
	local inv known exp sshc hosts="" children="" osid
	local -A groups=()
	inv="# Generated by tests/fleet/testfleet.sh for the fleet in $DIR.
all:
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: $DIR/id_ed25519
    ansible_ssh_common_args: '-o UserKnownHostsFile=$DIR/known_hosts -o StrictHostKeyChecking=yes'
  hosts:
"
	known=""
	exp=$'#name\tport\tkernel\tinstalled\tos_id\tos_version\tdriver\tuserspace\tgpus\tsecure_boot\tfault\n'
	sshc="# Generated by tests/fleet/testfleet.sh for the fleet in $DIR.
"
	for ((i = 0; i < n; i++)); do
		name=${N_NAME[i]} port=${N_PORT[i]}
		hosts+="    $name:
      ansible_host: 127.0.0.1
      ansible_port: $port
"
		if [[ ${N_USER[i]} != root ]]; then
			hosts+="      ansible_user: ${N_USER[i]}
"
			[[ ${N_BECOME[i]} == no ]] || hosts+="      ansible_become: true
"
		fi
		osid=${N_OSID[i]//[!A-Za-z0-9_]/_}
		groups[$osid]+="        $name:
"
		if [[ ${N_FAULT[i]} == hostkey ]]; then
			read -r kt kd _ <"$DIR/.hostkey_wrong.pub"
		else
			read -r kt kd _ <"$DIR/nodes/$name/ssh_host_ed25519_key.pub"
		fi
		known+="[127.0.0.1]:$port $kt $kd
"
		exp+="$name"$'\t'"$port"$'\t'"${N_KERNEL[i]}"$'\t'"${N_INSTALLED[i]}"$'\t'"${N_OSID[i]}"
		exp+=$'\t'"${N_OSVER[i]}"$'\t'"${N_DRIVER[i]}"$'\t'"${N_USERSPACE[i]}"$'\t'"${N_GPUS[i]}"
		# mokutil on a machine without EFI says so: Secure Boot is off.
		local sb_want=${N_SB[i]}
		[[ $sb_want != unknown || ${N_MOKUTIL[i]} != yes ]] || sb_want=disabled
		exp+=$'\t'"$sb_want"$'\t'"${N_FAULT[i]}"$'\n'
		sshc+="
Host $name
    HostName 127.0.0.1
    Port $port
    User ${N_USER[i]}
    IdentityFile $DIR/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $DIR/known_hosts
    StrictHostKeyChecking yes
"
	done
	for g in $(printf '%s\n' "${!groups[@]}" | sort); do
		children+="    $g:
      hosts:
${groups[$g]}"
	done
	printf '%s%s  children:\n%s' "$inv" "$hosts" "$children" >"$DIR/inventory.yml"
	printf '%s' "$known" >"$DIR/known_hosts"
	printf '%s' "$exp" >"$DIR/expected.tsv"
	printf '%s' "$sshc" >"$DIR/ssh_config"
}

#--------------------------------------------------------------------------
# Commands

cmd_spec() {
	local nodes=10 faults=0 prefix=node
	while (($#)); do
		case $1 in
		--nodes) nodes=${2-} && shift ;;
		--faults) faults=1 ;;
		--prefix) prefix=${2-} && shift ;;
		*) die "spec: unknown argument '$1'" ;;
		esac
		shift
	done
	[[ $nodes =~ ^[1-9][0-9]{0,4}$ ]] || die "--nodes must be a positive number"
	[[ $prefix =~ ^[A-Za-z][A-Za-z0-9_-]{0,40}$ ]] || die "--prefix must be letters, digits, _ or -"
	gen_spec "$nodes" "$faults" "$prefix"
}

# fleet_alive: some node of DIR is still running (REPLY = its name).
fleet_alive() {
	local nd name
	REPLY=
	[[ -d $DIR/nodes ]] || return 1
	FLEET_ID=
	[[ -r $DIR/fleet.id ]] && read -r FLEET_ID <"$DIR/fleet.id"
	scan_ns
	for nd in "$DIR"/nodes/*/; do
		[[ -d $nd ]] || continue
		name=${nd%/}
		name=${name##*/}
		if node_procs "$name"; then
			REPLY=$name
			return 0
		fi
	done
	return 1
}

UP_DONE=0
declare -a LPID=()
# ppid PID: REPLY = its parent's pid.
ppid() {
	local stat
	REPLY=
	{ read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
	stat=${stat##*) }
	read -r _ REPLY _ <<<"$stat"
}
up_cleanup() {
	local p
	local -a mine=()
	((UP_DONE)) && return 0
	# A child forked just before a signal still runs this trap: only the
	# main shell cleans up.
	[[ $BASHPID == "$$" ]] || exit 1
	note "start failed; stopping the nodes already started"
	# Our own helpers first (key generation, tree builders, rm).
	local -a jobpids=()
	mapfile -t jobpids < <(jobs -p)
	((${#jobpids[@]} == 0)) || kill -TERM "${jobpids[@]}" 2>/dev/null || true
	# Nodes still starting have written no pid file yet; they are still our
	# children (setsid, unshare and sh exec, they do not fork).
	for p in "${LPID[@]}"; do
		if alive "$p" && ppid "$p" && [[ $REPLY == "$$" ]]; then mine+=("$p"); fi
	done
	if ((${#mine[@]})); then
		kill -CONT "${mine[@]}" 2>/dev/null || true
		kill -TERM "${mine[@]}" 2>/dev/null || true
	fi
	fleet_down || true
	if ((${#mine[@]})); then
		wait_gone 2 "${mine[@]}"
		# shellcheck disable=SC2086  # a list of pids
		[[ -z $REPLY ]] || kill -KILL $REPLY 2>/dev/null || true
	fi
}

cmd_up() {
	local dir='' specfile='' nodes='' faults=0 prefix=node base=$DEFAULT_BASE_PORT
	while (($#)); do
		case $1 in
		--dir) dir=${2-} && shift ;;
		--spec) specfile=${2-} && shift ;;
		--nodes) nodes=${2-} && shift ;;
		--faults) faults=1 ;;
		--prefix) prefix=${2-} && shift ;;
		--base-port) base=${2-} && shift ;;
		*) die "up: unknown argument '$1'" ;;
		esac
		shift
	done
	set_dir "$dir"
	check_up_dir
	[[ -n $specfile || -n $nodes ]] || die "up: give --spec FILE or --nodes N"
	[[ -z $specfile || -z $nodes ]] || die "up: --spec and --nodes exclude each other"
	[[ -z $specfile || $faults == 0 ]] || die "up: --faults goes with --nodes (a spec says its own faults)"
	if ! [[ $base =~ ^[0-9]{1,5}$ ]] || ((base < 1024 || base >= 65535)); then
		die "--base-port must be 1024-65534"
	fi
	((EUID == 0)) || die "must run as root (mount namespaces, bind mounts, sshd)"
	local t
	for t in "$SSHD" /usr/bin/ssh-keygen /usr/bin/unshare /usr/bin/setsid /usr/bin/cat; do
		[[ -x $t ]] || die "$t is missing; run contrib/install-deps.sh"
	done
	[[ -d $STUBS_SRC ]] || die "stubs not found in $STUBS_SRC"

	local t0
	now
	t0=$REPLY T0=$REPLY
	# The spec: read and checked before anything in DIR changes.
	if [[ -n $nodes ]]; then
		[[ $nodes =~ ^[1-9][0-9]{0,4}$ ]] || die "--nodes must be a positive number"
		[[ $prefix =~ ^[A-Za-z][A-Za-z0-9_-]{0,40}$ ]] || die "--prefix must be letters, digits, _ or -"
		((faults == 0 || nodes >= 9)) || die "--faults needs at least 9 nodes (it uses the last 9), got $nodes"
		load_spec <(gen_spec "$nodes" "$faults" "$prefix") "generated spec"
	elif [[ $specfile == - ]]; then
		load_spec /dev/stdin "stdin"
	else
		[[ -r $specfile ]] || die "cannot read spec '$specfile'"
		load_spec "$specfile" "$specfile"
	fi
	phase "spec read"
	local n=${#N_NAME[@]} i need_sudo=0
	((base + n <= 65535)) || die "$n nodes do not fit above port $base"
	for ((i = 0; i < n; i++)); do
		N_PORT[i]=$((base + i + 1))
		[[ ${N_USER[i]} == root || ${N_BECOME[i]} == no ]] || need_sudo=1
	done
	# What a spec asks of this host's directories, before anything starts.
	for ((i = 0; i < n; i++)); do
		if [[ -n ${N_DISK[i]} && $REBIND_TARGET == /var/lib ]]; then
			die "${N_NAME[i]}: disk= makes /var/lib a tmpfs, which would hide DIR ($DIR); put DIR elsewhere"
		fi
		[[ ${N_NOUVEAU[i]} != blacklisted || -d /etc/modprobe.d ]] ||
			die "${N_NAME[i]}: nouveau=blacklisted needs /etc/modprobe.d on this host (a mount point; testfleet creates none)"
		[[ ${N_IOMMU[i]} == off || -d /sys/class/iommu ]] ||
			die "${N_NAME[i]}: iommu=on needs /sys/class/iommu on this host"
		[[ -z ${N_PCIDRV[i]} || -d /sys/bus/pci/devices ]] ||
			die "${N_NAME[i]}: pci_driver= needs /sys/bus/pci/devices on this host"
	done
	if ((need_sudo)) && [[ ! -x /usr/bin/sudo ]]; then
		die "the spec has become= nodes but /usr/bin/sudo is missing; run contrib/install-deps.sh (or apt-get install sudo)"
	fi

	# Ports must be free, for unreachable nodes too (they must refuse).
	local -A busy=()
	local p
	while read -r p; do busy[$p]=1; done < <(listening_ports 1)
	for ((i = 0; i < n; i++)); do
		[[ -z ${busy[${N_PORT[i]}]-} ]] ||
			die "port ${N_PORT[i]} (for ${N_NAME[i]}) is already in use; is another fleet up? (testfleet.sh down --dir DIR, or --base-port)"
	done

	phase "ports checked"
	mkdir -p "$DIR"
	if fleet_alive; then
		die "the fleet in $DIR is still up ($REPLY runs); run: $PROG down --dir $DIR"
	fi
	# From here on a failure or a signal undoes what was started.
	UP_DONE=0
	trap up_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	prepare_common
	# Everything an earlier `up` left, and nothing else of DIR. The trees
	# are moved aside and removed in the background while the new ones are
	# built (removing is slow too).
	local trash='' rmpid=''
	local -a old=("$DIR"/.trash.*) # left by an interrupted `up`
	[[ -e ${old[0]} ]] || old=()
	if [[ -e $DIR/nodes || -e $DIR/shared || -e $DIR/stubs || ${#old[@]} -gt 0 ]]; then
		trash=$(mktemp -d "$DIR/.trash.XXXXXX")
		local t2
		for t2 in nodes shared stubs; do
			[[ ! -e $DIR/$t2 ]] || mv "$DIR/$t2" "$trash/"
		done
		rm -rf "$trash" "${old[@]}" &
		rmpid=$!
	fi
	rm -f "$DIR"/{id_ed25519,id_ed25519.pub,.noauth_id_ed25519,.noauth_id_ed25519.pub} \
		"$DIR"/{.hostkey_wrong,.hostkey_wrong.pub,inventory.yml,known_hosts,expected.tsv} \
		"$DIR"/{ssh_config,spec,nodes.tsv,fleet.id}
	mkdir -p "$DIR/nodes" "$DIR/stubs" "$DIR/shared"
	FLEET_ID=$(</proc/sys/kernel/random/uuid)
	write "$DIR/fleet.id" "$FLEET_ID"
	{
		printf '# testfleet spec (%s nodes, ports %s-%s)\n' "$n" "$((base + 1))" "$((base + n))"
		for ((i = 0; i < n; i++)); do
			spec_line "$i"
			printf '%s\n' "$REPLY"
		done
	} >"$DIR/spec"
	{
		printf '#name\tport\tfault\n'
		for ((i = 0; i < n; i++)); do printf '%s\t%s\t%s\n' "${N_NAME[i]}" "${N_PORT[i]}" "${N_FAULT[i]}"; done
	} >"$DIR/nodes.tsv"

	# Keys: the client's, a stranger's (noauth) and a wrong host key
	# (hostkey), and one host key per node, generated in parallel while
	# the trees are built.
	local -a keypids=()
	ssh-keygen -q -t ed25519 -N '' -C "testfleet-client" -f "$DIR/id_ed25519" </dev/null
	ssh-keygen -q -t ed25519 -N '' -C "testfleet-stranger" -f "$DIR/.noauth_id_ed25519" </dev/null
	ssh-keygen -q -t ed25519 -N '' -C "testfleet-wrong-hostkey" -f "$DIR/.hostkey_wrong" </dev/null
	CLIENT_PUB=$(<"$DIR/id_ed25519.pub")
	STRANGER_PUB=$(<"$DIR/.noauth_id_ed25519.pub")
	local -a nds=()
	for ((i = 0; i < n; i++)); do nds+=("$DIR/nodes/${N_NAME[i]}"); done
	mkdir -p "${nds[@]}"
	for ((i = 0; i < n; i++)); do
		ssh-keygen -q -t ed25519 -N '' -C "${N_NAME[i]}" \
			-f "$DIR/nodes/${N_NAME[i]}/ssh_host_ed25519_key" </dev/null &
		keypids+=("$!")
	done

	# Stubs: copied into DIR so a running fleet does not change under a
	# checkout; the kmod stub under each of its names.
	cp "$STUBS_SRC"/{uname,hostname,nvidia-smi,lspci,mokutil,dmesg,systemctl} "$DIR/stubs/"
	cp "$STUBS_SRC/kmod" "$DIR/stubs/modprobe"
	chmod 0755 "$DIR"/stubs/*
	local s
	for s in rmmod insmod depmod lsmod modinfo; do
		ln "$DIR/stubs/modprobe" "$DIR/stubs/$s"
	done

	if ((need_sudo)); then
		HOST_PASSWD=$(grep -v "^[^:]*:[^:]*:$USER_UID:" /etc/passwd || true)
		HOST_SHADOW=$(cat /etc/shadow)
		HOST_GROUP=$(grep -v "^[^:]*:[^:]*:$USER_UID:" /etc/group || true)
	fi
	build_shared
	phase "keys started, shared trees built"
	# The nodes' own trees, by one worker per CPU (file creation is system
	# time, so it scales with cores).
	local w workers
	workers=$(nproc 2>/dev/null || echo 2)
	((workers <= 8)) || workers=8
	((workers <= n)) || workers=$n
	local -a wpids=()
	for ((w = 0; w < workers; w++)); do
		(
			for ((i = w; i < n; i += workers)); do build_node "$i"; done
		) &
		wpids+=("$!")
	done
	for w in "${wpids[@]}"; do
		wait "$w" || die "building the node trees failed"
	done
	local -a tmps=() roots=() homes=()
	for ((i = 0; i < n; i++)); do
		tmps+=("$DIR/nodes/${N_NAME[i]}/fs/tmp")
		roots+=("$DIR/nodes/${N_NAME[i]}/fs/root")
		[[ ${N_USER[i]} == root ]] || homes+=("$DIR/nodes/${N_NAME[i]}/fs/home/${N_USER[i]}")
	done
	chmod 1777 "${tmps[@]}"
	chmod 0700 "${roots[@]}"
	if ((${#homes[@]})); then
		chown "$USER_UID:$USER_UID" "${homes[@]}"
		for ((i = 0; i < n; i++)); do
			if [[ ${N_USER[i]} != root ]]; then
				chmod 0640 "$DIR/nodes/${N_NAME[i]}/fs/etc/shadow"
				chmod 0440 "$DIR/nodes/${N_NAME[i]}/fs/etc/sudoers"
			fi
		done
	fi
	phase "node trees built"
	local kp
	for kp in "${keypids[@]}"; do
		wait "$kp" || die "ssh-keygen failed for a host key"
	done
	[[ -z $rmpid ]] || wait "$rmpid" || warn "could not remove all of $trash"

	# Start every node in parallel. The sh writes its pid (the sshd's, after
	# exec) and mounts the node's trees in the new namespace. Descriptors
	# other than 0-2 are closed so a caller's pipes are not held open.
	phase "host keys done"
	LPID=()
	for ((i = 0; i < n; i++)); do
		[[ ${N_FAULT[i]} != unreachable ]] || continue
		local nd=$DIR/nodes/${N_NAME[i]}
		local init=''
		[[ ! -f $nd/init ]] || init=$nd/init
		# shellcheck disable=SC2016  # $$ and $1.. belong to the node's sh
		setsid unshare --mount --propagation private /bin/sh -c \
			'echo $$ >"$1" && mount -a -T "$2" && { [ -z "$4" ] || /bin/sh -e "$4"; } && exec /usr/sbin/sshd -D -e -f "$3"' \
			testfleet-node "$nd/pid" "$nd/fstab" "$nd/sshd_config" "$init" \
			</dev/null >>"$nd/sshd.log" 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
		LPID[i]=$!
	done

	phase "nodes launched"
	# Wait until each node listens (read from /proc/net/tcp: probing with
	# connections would make every sshd fork a session).
	local timeout=${TESTFLEET_UP_TIMEOUT:-$((60 + n / 4))} deadline
	[[ $timeout =~ ^[0-9]+$ ]] || die "TESTFLEET_UP_TIMEOUT must be a number of seconds"
	deadline=$((SECONDS + timeout))
	local -a pending=() still
	local -A listening
	for i in "${!LPID[@]}"; do pending+=("$i"); done
	while ((${#pending[@]})); do
		listening=()
		while read -r p; do listening[$p]=1; done < <(listening_ports 0)
		still=()
		for i in "${pending[@]}"; do
			[[ -n ${listening[${N_PORT[i]}]-} ]] && continue
			if ! alive "${LPID[i]}"; then
				sleep 0.2 # let the log reach the disk
				die "node ${N_NAME[i]} (port ${N_PORT[i]}) exited while starting; log $DIR/nodes/${N_NAME[i]}/sshd.log:
$(tail -n 20 "$DIR/nodes/${N_NAME[i]}/sshd.log" 2>/dev/null)"
			fi
			still+=("$i")
		done
		pending=("${still[@]}")
		((${#pending[@]})) || break
		if ((SECONDS >= deadline)); then
			i=${pending[0]}
			die "${#pending[@]} node(s) not listening after ${timeout}s, e.g. ${N_NAME[i]} (port ${N_PORT[i]}); log $DIR/nodes/${N_NAME[i]}/sshd.log:
$(tail -n 20 "$DIR/nodes/${N_NAME[i]}/sshd.log" 2>/dev/null)"
		fi
		sleep 0.05
	done

	phase "all nodes listening"
	# Record each node's mount namespace (see node_procs) and make sure it
	# really is a namespace of its own.
	scan_ns
	for i in "${!LPID[@]}"; do
		local ns=${NS_OF[${LPID[i]}]-}
		[[ -n $ns ]] || die "node ${N_NAME[i]}: cannot read /proc/${LPID[i]}/ns/mnt"
		[[ $ns != "$HOST_NS" ]] || die "node ${N_NAME[i]}: not in a mount namespace of its own"
		write "$DIR/nodes/${N_NAME[i]}/mntns" "$ns"
	done

	write_outputs
	UP_DONE=1
	trap - EXIT INT TERM
	now
	local ms=$(((REPLY - t0) / 1000))
	note "$n nodes up in $DIR (127.0.0.1:$((base + 1))-$((base + n))) in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
}

cmd_down() {
	local dir=''
	while (($#)); do
		case $1 in
		--dir) dir=${2-} && shift ;;
		*) die "down: unknown argument '$1'" ;;
		esac
		shift
	done
	set_dir "$dir"
	[[ -d $DIR ]] || return 0
	fleet_down
}

# parse_dir_node CMD ARGS...: --dir DIR NODE (either order).
NODE=
parse_dir_node() {
	local cmd=$1 dir=''
	shift
	NODE=
	while (($#)); do
		case $1 in
		--dir) dir=${2-} && shift ;;
		-*) die "$cmd: unknown argument '$1'" ;;
		*)
			[[ -z $NODE ]] || die "$cmd: one node at a time"
			NODE=$1
			;;
		esac
		shift
	done
	set_dir "$dir"
	[[ -n $NODE ]] || die "$cmd: which node?"
	require_node "$NODE"
}

require_node() {
	local i
	load_registry || die "no fleet in $DIR (no nodes.tsv)"
	for i in "${!R_NAME[@]}"; do
		[[ ${R_NAME[i]} == "$1" ]] && return 0
	done
	die "no node '$1' in $DIR"
}

cmd_signal() { # stop|cont ARGS...
	local cmd=$1
	shift
	parse_dir_node "$cmd" "$@"
	scan_ns
	node_procs "$NODE" || die "$NODE is not running"
	if [[ $cmd == stop ]]; then
		# The listener first, so it forks no new session meanwhile; then a
		# second pass for any session forked before it stopped.
		kill -STOP "${PIDS[@]}" 2>/dev/null || true
		scan_ns
		if node_procs "$NODE"; then
			kill -STOP "${PIDS[@]}" 2>/dev/null || true
		fi
	else
		kill -CONT "${PIDS[@]}" 2>/dev/null || true
	fi
}

cmd_status() {
	local dir='' i pid state
	while (($#)); do
		case $1 in
		--dir) dir=${2-} && shift ;;
		*) die "status: unknown argument '$1'" ;;
		esac
		shift
	done
	set_dir "$dir"
	load_registry || die "no fleet in $DIR (no nodes.tsv)"
	scan_ns
	for i in "${!R_NAME[@]}"; do
		state=down
		if node_procs "${R_NAME[i]}"; then
			pid=${PIDS[0]}
			state=up
			if proc_state "$pid" && [[ $REPLY == [Tt] ]]; then
				state=stopped
			fi
			# The listener is gone but sessions live on: not serving.
			cmdline_is_node "$pid" "$DIR/nodes/${R_NAME[i]}" || state=down
		fi
		printf '%s %s %s\n' "${R_NAME[i]}" "${R_PORT[i]}" "$state"
	done
}

cmd_ssh() {
	local dir='' node=''
	local -a opts=()
	while (($#)); do
		case $1 in
		--dir) dir=${2-} && shift ;;
		-o)
			opts+=(-o "${2-}")
			shift
			;;
		-t | -T | -q | -v | -vv | -vvv) opts+=("$1") ;;
		-*) die "ssh: unknown option '$1' (only -o OPT, -t, -T, -q, -v before the node)" ;;
		*)
			node=$1
			shift
			break
			;;
		esac
		shift
	done
	set_dir "$dir"
	[[ -n $node ]] || die "ssh: which node?"
	require_node "$node"
	[[ -r $DIR/ssh_config ]] || die "no ssh_config in $DIR"
	exec ssh -F "$DIR/ssh_config" -o BatchMode=yes -o GlobalKnownHostsFile=/dev/null \
		"${opts[@]}" "$node" "$@"
}

main() {
	local cmd=${1-help}
	(($#)) && shift
	case $cmd in
	spec) cmd_spec "$@" ;;
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	stop | cont) cmd_signal "$cmd" "$@" ;;
	status) cmd_status "$@" ;;
	ssh) cmd_ssh "$@" ;;
	help | -h | --help) usage ;;
	*)
		usage >&2
		die "unknown command '$cmd'"
		;;
	esac
}

main "$@"
