#!/usr/bin/env bash
# selftest.sh -- checks testfleet.sh with OpenSSH's own client: brings up a
# fleet with every fault, compares what each node answers with
# expected.tsv, tries each fault, exercises the kmod stubs, takes the fleet
# down, checks nothing is left, and brings it up again in the same DIR.
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

echo "== up: $nodes nodes with faults, in $DIR"
"$TF" up --dir "$DIR" --nodes "$nodes" --faults --base-port "$base"

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

echo "== $checks checks, $fails failed"
((fails == 0))
