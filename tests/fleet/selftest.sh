#!/usr/bin/env bash
# selftest.sh -- checks testfleet.sh with OpenSSH's own client: brings up a
# fleet with every fault, compares what each node answers with
# expected.tsv, tries each fault, exercises the kmod stubs and the keys that
# seed test cases (disk, modprobe_fail, ko, nouveau, pci_driver, iommu,
# cmdline, mok) and the dmesg/systemctl/mokutil stubs, checks the tools a
# deploy needs, takes the fleet down, checks nothing is left (on the host
# neither), and brings it up again in the same DIR.
#
#   tests/fleet/selftest.sh [--nodes N] [--base-port P] [--keep]
#
# Needs root, sshd, ssh and sudo (contrib/install-deps.sh). Takes about
# 30 s for 40 nodes on 2 cores. Exit status 0 when every check passed.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
TF=$HERE/testfleet.sh
nodes=40
base=24000
keep=0
while (($#)); do
	case $1 in
	--nodes) nodes=$2 && shift ;;
	--base-port) base=$2 && shift ;;
	--keep) keep=1 ;;
	*)
		echo "usage: $0 [--nodes N] [--base-port P] [--keep]" >&2
		exit 2
		;;
	esac
	shift
done

DIR=$(mktemp -d /tmp/testfleet-selftest.XXXXXX)
fails=0
checks=0
ok() { checks=$((checks + 1)); }
bad() {
	checks=$((checks + 1))
	fails=$((fails + 1))
	printf 'FAIL: %s\n' "$*" >&2
}
# expect WHAT GOT WANT
expect() {
	if [[ $2 == "$3" ]]; then ok; else bad "$1: got '$2', want '$3'"; fi
}
# expect_match WHAT TEXT PATTERN (a bash glob)
expect_match() {
	# shellcheck disable=SC2053  # $3 is a glob on purpose
	if [[ $2 == $3 ]]; then ok; else bad "$1: '$2' does not match '$3'"; fi
}
# check WHAT CMD...: CMD succeeds.
check() {
	local what=$1
	shift
	if "$@"; then ok; else bad "$what"; fi
}
# fails_with WHAT PATTERN CMD...: CMD fails and says PATTERN (a glob).
fails_with() {
	local what=$1 pat=$2 msg
	shift 2
	if msg=$("$@" 2>&1); then
		bad "$what: succeeded"
	else
		expect_match "$what" "$msg" "$pat"
	fi
}
cleanup() {
	"$TF" down --dir "$DIR" || true
	if ((keep)); then
		echo "kept $DIR" >&2
	else
		rm -rf "$DIR"
	fi
}
trap cleanup EXIT

tf_ssh() { "$TF" ssh --dir "$DIR" -o ConnectTimeout=10 "$@"; }

K1=6.1.0-47-amd64
K2=6.1.0-50-amd64
# What nodes get their own copy of, to check the host's stays as it was.
host_state() {
	ls -la /etc/modprobe.d /etc/apt/apt.conf.d /sys/class/iommu 2>&1
	cat /proc/cmdline
}
host_before=$(host_state)

echo "== up: $nodes nodes with faults and 3 with the seeding keys, in $DIR"
"$TF" spec --nodes "$nodes" --faults >"$DIR/spec.in"
cat >>"$DIR/spec.in" <<EOF
xdisk01 kernel=$K1 gpus=1 driver=550.54.15 userspace=550.54.15 disk=2048 kfleet=550.54.15:$K1 modprobe_fail=nvidia-uvm ko=550.54.15
xko01 kernel=$K2 installed=$K1,$K2 gpus=2 sb=enabled ko=550.54.15:signed nouveau=blacklisted pci_driver=vfio-pci iommu=on cmdline=intel_iommu=on,iommu=pt mok=kfleet-test,Other-CA
xnv01 kernel=$K1 gpus=1 nouveau=loaded
EOF
"$TF" up --dir "$DIR" --spec "$DIR/spec.in" --base-port "$base"

# One probe per node, the way fact gathering might ask.
# shellcheck disable=SC2016  # runs on the node
PROBE='uname -r
. /etc/os-release; echo "$ID $VERSION_ID"
ls /lib/modules | sort -V | paste -sd, -
cat /sys/module/nvidia/version 2>/dev/null || echo -
if command -v nvidia-smi >/dev/null; then
	# On failure nvidia-smi explains itself on stdout, as the real one does.
	if v=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null); then
		echo "$v" | head -n 1
	else
		echo present
	fi
else
	echo -
fi
if command -v lspci >/dev/null; then
	lspci -n -d 10de: | wc -l
else
	grep -l 0x10de /sys/bus/pci/devices/*/vendor 2>/dev/null | wc -l
fi
if command -v mokutil >/dev/null; then
	mokutil --sb-state 2>/dev/null | sed -n "s/^SecureBoot //p" | grep . || echo unknown
elif [ -e /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c ]; then
	b=$(od -An -tu1 -j4 -N1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c | tr -d " ")
	[ "$b" = 1 ] && echo enabled || echo disabled
else
	echo unknown
fi'

echo "== facts of every healthy node against expected.tsv"
declare -A out=()
while IFS=$'\t' read -r name port kernel installed osid osver driver userspace gpus sb fault; do
	[[ $name == \#* || $fault != none ]] && continue
	tf_ssh "$name" "$PROBE" </dev/null >"$DIR/probe.$name" 2>&1 &
	out[$name]="$kernel|$osid $osver|$installed|$driver|$userspace|$gpus|$sb"
	# A few at a time: 2 cores.
	while (($(jobs -rp | wc -l) >= 8)); do wait -n || true; done
	: "$port"
done <"$DIR/expected.tsv"
wait
for name in "${!out[@]}"; do
	IFS='|' read -r kernel os installed driver userspace gpus sb <<<"${out[$name]}"
	mapfile -t got <"$DIR/probe.$name"
	expect "$name uname -r" "${got[0]-}" "$kernel"
	expect "$name os-release" "${got[1]-}" "$os"
	expect "$name /lib/modules" "${got[2]-}" "$installed"
	expect "$name loaded driver" "${got[3]-}" "$driver"
	if [[ $userspace == - ]]; then
		expect "$name nvidia-smi" "${got[4]-}" -
	elif [[ $driver == "$userspace" && $gpus != 0 ]]; then
		expect "$name nvidia-smi" "${got[4]-}" "$userspace"
	else
		expect "$name nvidia-smi" "${got[4]-}" present
	fi
	expect "$name gpus" "${got[5]-}" "$gpus"
	expect "$name secure boot" "${got[6]-}" "$sb"
done
echo "   ${#out[@]} nodes probed"

fault_node() { awk -F'\t' -v f="$1" '$11 == f { print $1; exit }' "$DIR/expected.tsv"; }
user_node() { grep -m1 'user=kfuser become=nopasswd' "$DIR/spec" | cut -d' ' -f1; }

echo "== faults"
n=$(fault_node unreachable)
fails_with "$n unreachable" "*Connection refused*" tf_ssh "$n" true
n=$(fault_node noauth)
fails_with "$n noauth" "*Permission denied*" tf_ssh "$n" true
n=$(fault_node hostkey)
fails_with "$n hostkey" "*REMOTE HOST IDENTIFICATION HAS CHANGED*" tf_ssh "$n" true
n=$(fault_node hostile)
expect "$n hostile uname -r" "$(tf_ssh "$n" 'uname -r')" "$(awk -F'\t' -v n="$n" '$1 == n { print $3 }' "$DIR/expected.tsv"); touch /tmp/pwned \$(id)"
expect_match "$n hostile uname -v" "$(tf_ssh "$n" 'uname -v')" $'\e[2J#1 SMP*'
check "$n: nothing ran the hostile string" test ! -e /tmp/pwned -a ! -e "$DIR/nodes/$n/fs/tmp/pwned"
n=$(fault_node huge)
expect "$n huge uname -v (first 1 MB)" "$(tf_ssh "$n" 'uname -v' | head -c 1000000 | wc -c)" 1000000
sleep 0.5
expect "$n huge: no yes left after the client went" "$(pgrep -x yes | wc -l)" 0
n=$(fault_node slow=3)
t0=$SECONDS
expect "$n slow uname -r works" "$(tf_ssh "$n" 'uname -r' | wc -l)" 1
check "$n: slow node answered in $((SECONDS - t0)) s" test $((SECONDS - t0)) -ge 3
n=$(fault_node stop)
"$TF" stop --dir "$DIR" "$n"
expect "$n status after stop" "$("$TF" status --dir "$DIR" | awk -v n="$n" '$1 == n { print $3 }')" stopped
if timeout 3 "$TF" ssh --dir "$DIR" "$n" true 2>/dev/null; then bad "$n: stopped node answered"; else ok; fi
tf_ssh "$n" 'echo back' >"$DIR/stop.out" 2>&1 &
sleep 1
"$TF" cont --dir "$DIR" "$n"
check "$n: answer after cont" wait $!
expect "$n answer after cont" "$(cat "$DIR/stop.out")" back
n=$(user_node)
expect "$n user" "$(tf_ssh "$n" 'id -un')" kfuser
expect "$n sudo -n" "$(tf_ssh "$n" 'sudo -n id -u')" 0
n=$(fault_node sudo-password)
fails_with "$n sudo-password" "*a password is required*" tf_ssh "$n" 'sudo -n true'

echo "== kmod stubs"
n=$(awk -F'\t' '$1 !~ /^#/ && $7 == "-" && $11 == "none" { print $1; exit }' "$DIR/expected.tsv")
# shellcheck disable=SC2016  # runs on the node
res=$(tf_ssh "$n" 'K=$(uname -r); d=/lib/modules/$K/updates/kfleet; mkdir -p $d
printf "\0license=GPL\0version=550.54.15\0vermagic=$K SMP mod_unload modversions \0depends=\0" >$d/nvidia.ko
printf "\0version=550.54.15\0depends=nvidia\0" >$d/nvidia-uvm.ko
printf "\0version=550.54.15\0vermagic=9.9.9 SMP\0" >$d/wrongk.ko
depmod -a $K && grep -c kfleet /lib/modules/$K/modules.dep
modprobe nvidia-uvm && cat /sys/module/nvidia/version /sys/module/nvidia/refcnt
lsmod | awk "NR > 1 { print \$1, \$3, \$4 }" | paste -sd"|" -
modprobe nvidia; echo again=$?
modprobe wrongk 2>&1; echo wrongk=$?
modprobe nosuch 2>&1; echo nosuch=$?
rmmod nvidia 2>&1; echo rmmod=$?
modprobe -r nvidia_uvm; echo r=$?; ls /sys/module | wc -l
modprobe -r nvidia; echo r-again=$?
nvidia-smi >/dev/null 2>&1; echo smi=$?' 2>&1)
K=$(awk -F'\t' -v n="$n" '$1 == n { print $3 }' "$DIR/expected.tsv")
expect "$n kmod stubs" "$res" "3
550.54.15
1
nvidia 1 nvidia_uvm|nvidia_uvm 0 
again=0
modprobe: ERROR: could not insert 'wrongk': Exec format error
wrongk=1
modprobe: FATAL: Module nosuch not found in directory /lib/modules/$K
nosuch=1
rmmod: ERROR: Module nvidia is in use by: nvidia_uvm
rmmod=1
r=0
0
r-again=0
smi=$(if grep -q "^$n .*userspace=-" "$DIR/spec"; then echo 127; else echo 9; fi)"

echo "== nvidia-smi mismatch"
n=$(awk -F'\t' '$1 !~ /^#/ && $7 != "-" && $9 != 0 && $11 == "none" { print $1; exit }' "$DIR/expected.tsv")
echo 535.104.05 >"$DIR/nodes/$n/fs/sys/module/nvidia/version"
msg=$(tf_ssh "$n" 'nvidia-smi --query-gpu=driver_version --format=csv,noheader; echo rc=$?')
expect "$n mismatch" "$msg" "Failed to initialize NVML: Driver/library version mismatch
rc=18"

echo "== seeding keys"
expect "spec keeps the keys" "$(grep '^xdisk01 ' "$DIR/spec" | grep -o 'disk=[^ ]*\|modprobe_fail=[^ ]*\|ko=[^ ]*' | paste -sd' ' -)" \
	"disk=2048 modprobe_fail=nvidia-uvm ko=550.54.15"
# disk=: a small /var/lib of its own, started with what fs/var/lib holds.
expect "disk= size" "$(tf_ssh xdisk01 'df -Pk /var/lib/kfleet' | awk 'NR == 2 { print $2 }')" 2048
expect "disk= state copied" "$(tf_ssh xdisk01 'cat /var/lib/kfleet/state')" "driver=550.54.15
kernel=$K1"
expect_match "disk= full" "$(tf_ssh xdisk01 'dd if=/dev/zero of=/var/lib/kfleet/big bs=1k count=3000 2>&1; rm -f /var/lib/kfleet/big')" \
	"*No space left on device*"
tf_ssh xdisk01 'echo node >/var/lib/kfleet/written-on-node'
check "disk=: the node's writes stay in its tmpfs" test ! -e "$DIR/nodes/xdisk01/fs/var/lib/kfleet/written-on-node"
check "disk=: the host sees them through /proc/PID/root" \
	test -e "/proc/$(cat "$DIR/nodes/xdisk01/pid")/root/var/lib/kfleet/written-on-node"
# modprobe_fail= from the spec, then changed by the host at run time.
conf=$DIR/nodes/xdisk01/fs/usr/local/etc/testnode.conf
lines=$(wc -l <"$conf")
# shellcheck disable=SC2016  # runs on the node
expect "modprobe_fail= from the spec" "$(tf_ssh xdisk01 'modprobe -r nvidia_uvm; echo r=$?; modprobe nvidia-uvm; echo load=$?; test -d /sys/module/nvidia_uvm || echo not-loaded' 2>&1)" \
	"r=0
modprobe: ERROR: could not insert 'nvidia_uvm': Exec format error
load=1
not-loaded"
sed -i "s/^modprobe_fail=.*/modprobe_fail=''/" "$conf"
# shellcheck disable=SC2016
expect "modprobe_fail= cleared at run time" "$(tf_ssh xdisk01 'modprobe nvidia-uvm; echo load=$?; cat /sys/module/nvidia_uvm/version' 2>&1)" "load=0
550.54.15"
expect "testnode.conf keeps its other lines" "$(wc -l <"$conf") $(sed -n 2p "$conf")" "$lines name='xdisk01'"
echo "modprobe_fail=nvidia_modeset" >>"$conf"
# shellcheck disable=SC2016
expect "modprobe_fail= appended, as a dependency" "$(tf_ssh xdisk01 'modprobe -r nvidia_drm; modprobe nvidia-drm; echo load=$?; modprobe -r nvidia_uvm; echo r=$?' 2>&1)" \
	"modprobe: ERROR: could not insert 'nvidia_modeset': Exec format error
load=1
r=0"
# NAME@VERSION: only that version of the module fails.
echo "modprobe_fail=nvidia_uvm@550.54.15" >>"$conf"
# shellcheck disable=SC2016
expect "modprobe_fail=NAME@VERSION, that version" "$(tf_ssh xdisk01 'modprobe nvidia-uvm; echo load=$?' 2>&1)" \
	"modprobe: ERROR: could not insert 'nvidia_uvm': Exec format error
load=1"
echo "modprobe_fail=nvidia_uvm@535.104.05" >>"$conf"
# shellcheck disable=SC2016
expect "modprobe_fail=NAME@VERSION, another version" "$(tf_ssh xdisk01 'modprobe nvidia-uvm; echo load=$?' 2>&1)" "load=0"
# ko=: kfleet's modules for every installed kernel, signed.
# shellcheck disable=SC2016  # runs on the node
expect "ko= files" "$(tf_ssh xko01 "for k in $K1 $K2; do ls /lib/modules/\$k/updates/kfleet | paste -sd, -; wc -l </lib/modules/\$k/modules.dep; done
f=/lib/modules/$K1/updates/kfleet/nvidia-uvm.ko
modinfo -F version \$f; modinfo -F vermagic \$f; modinfo -F depends \$f; modinfo -F signer \$f; tail -c 28 \$f")" \
	"nvidia-drm.ko,nvidia-modeset.ko,nvidia-uvm.ko,nvidia.ko
4
nvidia-drm.ko,nvidia-modeset.ko,nvidia-uvm.ko,nvidia.ko
4
550.54.15
$K1 SMP preempt mod_unload modversions 
nvidia
testfleet-signing
~Module signature appended~"
# shellcheck disable=SC2016  # runs on the node
expect "ko= loads" "$(tf_ssh xko01 'modprobe nvidia-drm && lsmod | awk "NR > 1 { print \$1 }" | sort | paste -sd" " -')" \
	"nvidia nvidia_drm nvidia_modeset"
# pci_driver=, iommu=, cmdline=, mok=, nouveau=.
# shellcheck disable=SC2016  # runs on the node
expect "pci_driver= links" "$(tf_ssh xko01 'for d in /sys/bus/pci/devices/*/driver; do readlink $d; done | sort | uniq -c | tr -s " "')" \
	" 2 ../../../bus/pci/drivers/vfio-pci"
if [[ -d /sys/class/iommu ]]; then
	expect "iommu=on" "$(tf_ssh xko01 'ls /sys/class/iommu | paste -sd" " -')" "dmar0 dmar1"
	expect "iommu=off" "$(tf_ssh xnv01 'ls /sys/class/iommu | wc -l')" 0
fi
expect "cmdline=" "$(tf_ssh xko01 'cat /proc/cmdline')" "BOOT_IMAGE=/boot/vmlinuz-$K2 root=/dev/vda1 ro quiet intel_iommu=on iommu=pt"
expect "mok=" "$(tf_ssh xko01 'mokutil --list-enrolled | grep Subject:')" "        Subject: CN = kfleet-test
        Subject: CN = Other-CA"
# shellcheck disable=SC2016  # runs on the node
expect "mok= none" "$(tf_ssh xnv01 'mokutil --list-enrolled; echo rc=$?' 2>&1)" "MokListRT is empty
rc=1"
expect "nouveau=blacklisted" "$(tf_ssh xko01 'cat /etc/modprobe.d/*.conf; ls /lib/modules/*/kernel/drivers/gpu/drm/nouveau/nouveau.ko | wc -l')" \
	"blacklist nouveau
options nouveau modeset=0
2"
expect "nouveau=loaded" "$(tf_ssh xnv01 'cat /sys/module/nouveau/initstate; lsmod | grep -c "^nouveau "; ls /etc/modprobe.d | wc -l')" "live
1
0"
# The stubs a diagnosis reads: dmesg and systemctl answer from the node's files.
expect_match "dmesg default" "$(tf_ssh xnv01 dmesg)" "*Linux version $K1 *"
printf '[    5.2] NVRM: BAR1 is 0M @ 0x0 (PCI:0000:00:05.0)\n' >"$DIR/nodes/xnv01/fs/usr/local/etc/testnode.dmesg"
expect "dmesg from testnode.dmesg" "$(tf_ssh xnv01 'dmesg -T')" "[    5.2] NVRM: BAR1 is 0M @ 0x0 (PCI:0000:00:05.0)"
# shellcheck disable=SC2016  # runs on the node
expect "systemctl unknown unit" "$(tf_ssh xnv01 'systemctl is-enabled apt-daily-upgrade.timer; echo rc=$?' 2>&1)" \
	"Failed to get unit file state for apt-daily-upgrade.timer: No such file or directory
rc=1"
echo "apt-daily-upgrade.timer enabled" >"$DIR/nodes/xnv01/fs/usr/local/etc/testnode.units"
# shellcheck disable=SC2016  # runs on the node
expect "systemctl from testnode.units" "$(tf_ssh xnv01 'systemctl is-enabled apt-daily-upgrade.timer; echo rc=$?')" "enabled
rc=0"
# /etc/modprobe.d and /etc/apt/apt.conf.d: each node's own, empty by default.
if [[ -d /etc/apt/apt.conf.d ]]; then
	echo 'APT::Periodic::Unattended-Upgrade "1";' >"$DIR/nodes/xnv01/fs/etc/apt/apt.conf.d/20auto-upgrades"
	expect "apt.conf.d per node" "$(tf_ssh xnv01 'ls /etc/apt/apt.conf.d') | $(tf_ssh xko01 'ls /etc/apt/apt.conf.d | wc -l')" "20auto-upgrades | 0"
fi
if [[ -d /etc/modprobe.d ]]; then
	tf_ssh xnv01 'echo "blacklist nouveau" >/etc/modprobe.d/written-on-node.conf'
	check "modprobe.d written on the node lands in its tree" test -f "$DIR/nodes/xnv01/fs/etc/modprobe.d/written-on-node.conf"
fi

echo "== tools a deploy uses, and /var/lib/kfleet per node"
n=$(fault_node none)
m=$(awk -F'\t' -v n="$n" '$1 !~ /^#/ && $1 != n && $11 == "none" { print $1; exit }' "$DIR/expected.tsv")
# shellcheck disable=SC2016  # runs on the node
expect "$n tools" "$(tf_ssh "$n" 'for t in sha256sum tar gzip cmp df mkdir mv; do command -v $t >/dev/null || echo "missing $t"; done
set -e
d=/var/lib/kfleet
mkdir -p $d/incoming $d/pkg/modules && echo x >$d/pkg/modules/a.ko
tar -C $d -czf $d/incoming/p.tar.gz pkg && gzip -t $d/incoming/p.tar.gz
s=$(sha256sum $d/incoming/p.tar.gz | cut -d" " -f1) && [ ${#s} = 64 ]
mkdir $d/x && tar -C $d/x -xzf $d/incoming/p.tar.gz && cmp $d/x/pkg/modules/a.ko $d/pkg/modules/a.ko
mv $d/x $d/releases && df -Pk $d | awk "NR == 2 && \$4 > 0 { print \"ok\" }"
hostname >$d/owner')" ok
# shellcheck disable=SC2016  # runs on the node
expect "/var/lib/kfleet is per node" "$(cat "$DIR/nodes/$n/fs/var/lib/kfleet/owner") $(tf_ssh "$m" 'cat /var/lib/kfleet/owner 2>/dev/null || echo none')" "$n none"

echo "== bad seeding keys are refused before anything starts"
for bad in "disk=10" "disk=2k" "modprobe_fail=a;b" "ko=550" "ko=550.54.15:unsigned" "nouveau=maybe" \
	"pci_driver=a/b" "iommu=yes" "cmdline=a;b" "mok=a/b" "disk=4096 containers=host"; do
	fails_with "spec $bad" "*error*" "$TF" up --dir "$DIR-bad" --spec - <<<"bad01 $bad"
done
check "no DIR made for a bad spec" test ! -e "$DIR-bad"

echo "== down, leftovers, up again in the same DIR"
sess=$(fault_node none)
tf_ssh "$sess" 'sleep 600' >/dev/null 2>&1 &
sleep 1
"$TF" down --dir "$DIR"
wait || true
expect "processes left after down" "$(pgrep -fc "$DIR" || true)" 0
expect "sessions left after down" "$(pgrep -fc 'sleep 600' || true)" 0
expect "status after down" "$("$TF" status --dir "$DIR" | awk '$3 != "down"' | wc -l)" 0
check "second down" "$TF" down --dir "$DIR"
"$TF" up --dir "$DIR" --nodes 12 --base-port "$base"
expect "uname after re-up" "$(tf_ssh node002 'uname -r')" 6.1.0-50-amd64
"$TF" down --dir "$DIR"
expect "processes left after second down" "$(pgrep -fc "$DIR" || true)" 0
expect "host directories unchanged" "$(host_state)" "$host_before"

echo "== $checks checks, $fails failed"
((fails == 0))
