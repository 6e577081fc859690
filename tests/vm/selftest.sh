#!/usr/bin/env bash
# selftest.sh -- checks vm.sh end to end with a real Debian kernel: prepares
# an image (cached: a second prepare must do nothing), boots it with
# module.sig_enforce=1, checks over ssh that the booted kernel is the first
# one asked for, that the other kernels are installed but not running, that
# modprobe/rmmod of a module of the kernel's own tree work and /sys/module
# answers, that signatures are enforced, that the host key is checked
# strictly, then powers the VM off and checks nothing is left running.
#
#   tests/vm/selftest.sh
#
# Environment:
#   KF_VM_CACHE    the cache directory (default /var/cache/kfleet/vm)
#   KF_VM_KERNELS  the image's kernels, the booted one first
#                  (default "6.1.0-47-amd64 6.12.117+deb12-amd64")
#   KF_VM_PORT     the forwarded ssh port on 127.0.0.1 (default 22290)
#   KF_VM_NAME     the image and VM name (default kf-selftest)
#
# Needs root and contrib/install-deps.sh. Takes about 2 minutes with a cold
# cache and 40 s with a warm one on 2 cores (see README.md). Exit status 0
# when every check passed.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
VM=$HERE/vm.sh
CACHE=${KF_VM_CACHE:-/var/cache/kfleet/vm}
read -ra KERNELS <<<"${KF_VM_KERNELS:-6.1.0-47-amd64 6.12.117+deb12-amd64}"
PORT=${KF_VM_PORT:-22290}
NAME=${KF_VM_NAME:-kf-selftest}
((${#KERNELS[@]} > 0)) || {
	echo "selftest: KF_VM_KERNELS is empty" >&2
	exit 2
}

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
# expect_has WHAT TEXT NEEDLE
expect_has() {
	if [[ $2 == *"$3"* ]]; then ok; else bad "$1: '$3' not in: $2"; fi
}
vm() { "$VM" "$1" --cache "$CACHE" --name "$NAME" "${@:2}"; }
on() { vm ssh "$@" </dev/null; }

t0=$SECONDS
kargs=()
for k in "${KERNELS[@]}"; do kargs+=(--kernel "$k"); done
vm prepare "${kargs[@]}"
out=$(vm prepare "${kargs[@]}")
expect_has "second prepare" "$out" "nothing to do"

trap 'vm down --force >/dev/null 2>&1 || true' EXIT
vm up --port "$PORT" --append module.sig_enforce=1
run=$CACHE/$NAME.run

expect "uname -r" "$(on uname -r)" "${KERNELS[0]}"
expect_has "/proc/cmdline" "$(on cat /proc/cmdline)" "module.sig_enforce=1"
expect "sig_enforce" "$(on cat /sys/module/module/parameters/sig_enforce)" "Y"
for k in "${KERNELS[@]:1}"; do
	expect "kernel $k installed" "$(on "test -s /lib/modules/$k/modules.dep && test -f /boot/vmlinuz-$k && echo yes")" "yes"
done

# A module of the kernel's own tree that nothing loads at boot.
expect "dummy before modprobe" "$(on 'test -e /sys/module/dummy && echo loaded || echo absent')" "absent"
expect "modprobe dummy" "$(on 'modprobe dummy && cat /sys/module/dummy/initstate')" "live"
expect_has "lsmod" "$(on lsmod)" "dummy"
expect "rmmod dummy" "$(on 'rmmod dummy && { test -e /sys/module/dummy && echo loaded || echo absent; }')" "absent"
expect "modinfo vermagic" "$(on "modinfo -F vermagic dummy | cut -d' ' -f1")" "${KERNELS[0]}"

# The client files of up.
read -r kt kd _ <"$CACHE/$NAME.hostkey.pub"
expect "known_hosts" "$(cat "$run/known_hosts")" "[127.0.0.1]:$PORT $kt $kd"
expect_has "inventory.yml" "$(cat "$run/inventory.yml")" "ansible_port: $PORT"
# Strict host key checking: without the recorded key, ssh must refuse.
if ssh -F "$run/ssh_config" -o UserKnownHostsFile=/dev/null "$NAME" true </dev/null 2>/dev/null; then
	bad "ssh accepted the VM with an empty known_hosts"
else
	ok
fi
pid=$(<"$run/pid")
expect "status" "$("$VM" status --cache "$CACHE" --name "$NAME" | awk -v n="$NAME" '$1 == n && $2 == "up" { print $3 }')" "$pid"

vm down
if kill -0 "$pid" 2>/dev/null && [[ $(ps -o stat= -p "$pid") != Z* ]]; then bad "qemu $pid still runs after down"; else ok; fi
expect_has "second down" "$(vm down)" "not running"
trap - EXIT

echo "selftest: $checks checks, $fails failed, $((SECONDS - t0)) s"
((fails == 0))
