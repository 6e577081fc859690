#!/usr/bin/env bash
# test_vm.sh -- kfleet end to end on real kernels: two qemu VMs (vm.sh)
# running Debian's own kernels, reached over SSH on 127.0.0.1 only.
#
#   vm1  image kf-vmtest-a: runs 6.1.0-47-amd64, has 6.1.0-47-cloud-amd64
#        installed but not running (its next boot)
#   vm2  image kf-vmtest-b: runs 6.12.117+deb12-amd64
#
# What is checked, in order (every check reads the real kernel's answer
# over SSH: /sys/module, lsmod, dmesg, modinfo, modules.dep):
#   1. kfleet facts finds the three kernels, running and installed;
#   2. kfleet build --missing builds the fixture module set
#      (tests/fixtures/kmod/kfleet-test-driver) for each of them in podman;
#   3. kfleet deploy --reload --stages 1,100% loads them: /sys/module/M/version,
#      lsmod, holders and the load order as the kernels saw it; the kernel
#      that is not running has its modules under updates/kfleet and in its
#      modules.dep; the same deploy again changes nothing;
#   4. kfleet rollback --reload with no earlier release: kfleet's modules
#      unloaded and removed from every kernel, nothing of kfleet's current;
#   5. a package built for the wrong kernel (each node gets another kernel's
#      modules under its own kernel's name) is refused by preflight, and
#      past preflight (modules claiming the node's kernel) fails at load with
#      the kernel's own "Exec format error" and its log line, per node;
#      kfleet doctor names the vermagic; the right package repairs
#      the node;
#   6. Secure Boot style enforcement: vm1 reboots into its second kernel with
#      module.sig_enforce=1 and finds the modules installed for it before the
#      reboot; node.sh check reports sig_enforce 1; kfleet doctor explains
#      that the unsigned modules will be refused; unsigned packages are
#      refused by preflight; a signed package (kfleet keys new, signing: in
#      kfleet.yml) passes preflight and the kernel finds its signature but
#      not the key ("Loading of module with unavailable key is rejected"),
#      which kfleet reports per node ("Key was rejected by service").
# Every VM is powered off at the end, whatever happens (trap, and a watchdog
# before ctest's timeout); no qemu is left running.
#
# Environment: KFLEET, KF_SOURCE_DIR, KF_BUILD_DIR (ctest sets them);
#   KF_VM_CACHE     images and VM run directories (default /var/cache/kfleet/vm;
#                   kept between runs: a cold one costs the image builds)
#   KF_VM_PORT      first port tried for the VMs' sshd on 127.0.0.1 (22321)
#   KF_VM_DEADLINE  seconds before the watchdog stops everything (1140)
#   KF_SKIP_VM=1    skip (exit 77); an ASan/UBSan build (KF_BUILD_DIR's
#                   CMakeCache.txt) skips too, unless KF_VM_SANITIZE=1
#   KEEP_WORK=1     keep the work directory (state, logs, console logs)
# Needs root, podman with runc, qemu-system-x86, debootstrap, sqlite3,
# python3 (contrib/install-deps.sh). Exit 0 when every check passed, 1 when
# one failed (each is a FAIL: line; the test goes on where it can), 77 skipped.
set -euo pipefail
: "${KFLEET:?KFLEET must name the kfleet binary (ctest sets it)}"
: "${KF_SOURCE_DIR:?}"
: "${KF_BUILD_DIR:?}"

if [ "${KF_SKIP_VM:-0}" = 1 ]; then
	echo "skipped: KF_SKIP_VM=1"
	exit 77
fi
if [ "${KF_VM_SANITIZE:-0}" != 1 ] && [ -f "$KF_BUILD_DIR/CMakeCache.txt" ] &&
	grep -Eq '^KF_(ASAN|UBSAN):BOOL=(ON|TRUE|1)$' "$KF_BUILD_DIR/CMakeCache.txt"; then
	echo "skipped: a sanitizer build ($KF_BUILD_DIR): the VM test runs in the normal pass (KF_VM_SANITIZE=1 runs it here too)"
	exit 77
fi

fail() {
	echo "FAIL: $*" >&2
	exit 1
}
FAILED=()
# bad MESSAGE: a failed check after which the test can go on.
bad() {
	echo "FAIL: $*" >&2
	FAILED+=("$*")
}
ok() { echo "ok: $*"; }
# okif MESSAGE: ok when no check failed since the last phase or okif.
MARK=0
okif() {
	if [ "${#FAILED[@]}" = "$MARK" ]; then ok "$*"; else echo "not ok: $*"; fi
	MARK=${#FAILED[@]}
}
T0=$SECONDS
phase() {
	MARK=${#FAILED[@]}
	echo "--- $* (at $((SECONDS - T0)) s)"
}

[ "$(id -u)" = 0 ] || fail "needs root (vm.sh prepare, rootful podman): run sudo tests/run.sh"
for t in qemu-system-x86_64 qemu-img debootstrap mkfs.ext4 podman runc sqlite3 python3 ssh ss; do
	command -v "$t" >/dev/null || fail "needs $t: run contrib/install-deps.sh"
done

VM=$KF_SOURCE_DIR/tests/vm/vm.sh
NODE_SH=$KF_SOURCE_DIR/deployer/node.sh
CACHE=${KF_VM_CACHE:-/var/cache/kfleet/vm}
K1=6.1.0-47-amd64
K2=6.12.117+deb12-amd64
K3=6.1.0-47-cloud-amd64
IMG1=kf-vmtest-a
IMG2=kf-vmtest-b
# VM names in the cache; the inventory calls them vm1 and vm2.
N1=kf-vmtest-1
N2=kf-vmtest-2
MODS="kfleet_core kfleet_modeset kfleet_drm kfleet_uvm"
SRC=$KF_SOURCE_DIR/tests/fixtures/kmod/kfleet-test-driver
DRV=$(sed -n 's/^PACKAGE_VERSION="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$SRC/dkms.conf")
[ -n "$DRV" ] || fail "no PACKAGE_VERSION in $SRC/dkms.conf"
WORK=$(mktemp -d /tmp/kfleet-vm.XXXXXX)
WATCHDOG=""

vm_down_all() {
	local n
	for n in "$N1" "$N2"; do
		"$VM" down --cache "$CACHE" --name "$n" --force >/dev/null 2>&1 || true
	done
}
cleanup() {
	local rc=$? n
	trap - EXIT INT TERM
	if [ -n "$WATCHDOG" ]; then kill "$WATCHDOG" 2>/dev/null || true; fi
	vm_down_all
	for n in "$N1" "$N2"; do
		if [ -d "$CACHE/$n.run" ]; then
			cp "$CACHE/$n.run/console.log" "$WORK/$n.console.log" 2>/dev/null || true
			# The overlay is this run's scratch disk: it is not cache.
			rm -rf -- "${CACHE:?}/$n.run"
		fi
	done
	if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf -- "$WORK"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# The watchdog stops the VMs before ctest's TIMEOUT would kill this script
# without its trap (qemu daemonizes: ctest would not kill it).
DEADLINE=${KF_VM_DEADLINE:-1140}
(
	sleep "$DEADLINE" &
	sp=$!
	trap 'kill "$sp" 2>/dev/null; exit 0' TERM
	wait "$sp"
	echo "FAIL: still running after $DEADLINE s (KF_VM_DEADLINE): stopping the VMs" >&2
	vm_down_all
	kill -TERM $$
) &
WATCHDOG=$!

# A VM left running by a run that was killed would hold its name.
vm_down_all

# ssh to a VM as root; on VM CMD prints what CMD printed.
on() { ssh -F "$CACHE/$1.run/ssh_config" "$1" "$2" </dev/null; }
# rsh VM WORD...: the sh script on stdin, run on VM with the WORDs as its
# arguments (plain words: they pass through the remote shell).
rsh() { ssh -F "$CACHE/$1.run/ssh_config" "$1" "sh -s -- ${*:2}"; }
# The node-side program, run by hand on a VM (check is read-only).
node_check() { rsh "$1" check --modules "'$MODS'" <"$NODE_SH"; }
# jget FILE EXPR: EXPR over the JSON document d.
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
kf() {
	# Installing into 6.12's tree runs depmod over xz-compressed modules:
	# 45-60 s under TCG, near the default 60 s command timeout.
	"$KFLEET" -i "$WORK/inventory.yml" --known-hosts "$WORK/known_hosts" --ssh-config none \
		--state "$WORK/state" --config "${KCONF:-$WORK/kfleet.yml}" --command-timeout 300s "$@"
}
# free_port P: the first port from P on that nothing listens on.
free_port() {
	local p=$1
	while ss -Hltn "( sport = :$p )" | grep -q .; do p=$((p + 1)); done
	echo "$p"
}

# ---- 0. images and VMs ----------------------------------------------------------
phase "images (cached in $CACHE)"
"$VM" prepare --cache "$CACHE" --name "$IMG1" --kernel "$K1" --kernel "$K3" || fail "vm.sh prepare $IMG1"
"$VM" prepare --cache "$CACHE" --name "$IMG2" --kernel "$K2" || fail "vm.sh prepare $IMG2"

phase "booting $N1 ($K1) and $N2 ($K2)"
P1=$(free_port "${KF_VM_PORT:-22321}")
P2=$(free_port $((P1 + 1)))
"$VM" up --cache "$CACHE" --name "$N1" --image "$IMG1" --port "$P1" >"$WORK/up1.out" 2>&1 &
u1=$!
"$VM" up --cache "$CACHE" --name "$N2" --image "$IMG2" --port "$P2" >"$WORK/up2.out" 2>&1 &
u2=$!
r1=0 r2=0
wait "$u1" || r1=$?
wait "$u2" || r2=$?
cat "$WORK/up1.out" "$WORK/up2.out"
[ "$r1" = 0 ] || fail "$N1 did not boot"
[ "$r2" = 0 ] || fail "$N2 did not boot"
[ "$(on "$N1" 'uname -r')" = "$K1" ] || fail "$N1 does not run $K1"
[ "$(on "$N2" 'uname -r')" = "$K2" ] || fail "$N2 does not run $K2"
ok "two VMs up: vm1 runs $K1 (127.0.0.1:$P1), vm2 runs $K2 (127.0.0.1:$P2)"

# The inventory kfleet reads: only these four variables per host.
cat >"$WORK/inventory.yml" <<EOF
all:
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: $CACHE/id_ed25519
  hosts:
    vm1:
      ansible_host: 127.0.0.1
      ansible_port: $P1
    vm2:
      ansible_host: 127.0.0.1
      ansible_port: $P2
EOF
cat "$CACHE/$N1.run/known_hosts" "$CACHE/$N2.run/known_hosts" >"$WORK/known_hosts"
cat >"$WORK/kfleet.yml" <<EOF
container:
  run_args: [--runtime, runc, --ulimit, "nofile=1024:1024", --ulimit, "nproc=4096:4096"]
builders:
  - {name: local, host: local, slots: 2}
build: {timeout: 900}
profiles:
  testdrv:
    type: kmod
    source: $SRC
    stub_threshold: 1024
EOF
VMS=("vm1 $N1 $K1" "vm2 $N2 $K2")

# ---- 1. facts ------------------------------------------------------------------------
phase "kfleet facts"
kf facts >"$WORK/facts.out" 2>&1 || { cat "$WORK/facts.out"; fail "kfleet facts"; }
cat "$WORK/facts.out"
kf facts --json >"$WORK/facts.json" 2>"$WORK/facts.err" || { cat "$WORK/facts.err"; fail "kfleet facts --json"; }
python3 - "$WORK/facts.json" "$K1" "$K2" "$K3" <<'PY' || fail "facts: the kernels"
import json, sys
d = json.load(open(sys.argv[1]))
k1, k2, k3 = sys.argv[2:5]
assert d["summary"]["ok"] == 2 and d["summary"]["failed"] == 0, d["summary"]
h = {x["name"]: x["facts"] for x in d["hosts"]}
assert h["vm1"]["kernel"] == k1 and h["vm2"]["kernel"] == k2, (h["vm1"]["kernel"], h["vm2"]["kernel"])
ks1 = {k["release"]: k["running"] for k in h["vm1"]["kernels"]}
ks2 = {k["release"]: k["running"] for k in h["vm2"]["kernels"]}
assert ks1 == {k1: True, k3: False}, ks1
assert ks2 == {k2: True}, ks2
assert all(k["modules_dep"] and k["image"] for k in h["vm1"]["kernels"] + h["vm2"]["kernels"])
PY
ok "facts: three kernels: $K1 running on vm1, $K3 installed but not running on vm1, $K2 running on vm2"

# ---- 2. build ------------------------------------------------------------------------
phase "kfleet build --missing"
kf build --profile testdrv --missing >"$WORK/build.out" 2>&1 || { cat "$WORK/build.out"; fail "kfleet build --missing"; }
cat "$WORK/build.out"
grep -q "^done: 3 built, 0 failed" "$WORK/build.out" || fail "build --missing: want 3 built"
kf artifacts list --json >"$WORK/arts.json"
python3 - "$WORK/arts.json" "$DRV" "$K1" "$K2" "$K3" <<'PY' || fail "the stored packages"
import json, os, sys
arts, drv, ks = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3:]
got = sorted(a["kernel"] for a in arts if a["profile"] == "testdrv" and a["driver"] == drv)
assert got == sorted(ks), got
for a in arts:
    md = json.load(open(os.path.join(os.path.dirname(a["path"]), "metadata.json")))
    assert md["kernel_version"] == a["kernel"], (a["kernel"], md["kernel_version"])
    for m in md["modules"]:
        assert m["vermagic"].startswith(a["kernel"] + " ") and m["version"] == drv, (a["kernel"], m)
PY
ok "built testdrv $DRV for $K1, $K2 and $K3 in podman (every module's vermagic names its kernel)"
art_path() { kf artifacts list --json --driver "$DRV" --kernel "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["path"])'; }
META1=$(dirname "$(art_path "$K1")")/metadata.json

# What the kernel must show in holders/: M is a holder of each module of its
# depends= (from the package's metadata.json, which modinfo wrote).
python3 - "$META1" >"$WORK/holders.want" <<'PY'
import json, sys
md = json.load(open(sys.argv[1]))
h = {m["name"]: [] for m in md["modules"]}
for m in md["modules"]:
    for d in m["depends"]:
        h[d].append(m["name"])
for n in sorted(h):
    print(n + ":" + " ".join(sorted(h[n])))
PY
ORDER=$(jget "$META1" '" ".join(d["load_order"])')

# ---- 3. deploy -----------------------------------------------------------------------
# loaded_ok NAME VM KERNEL: the modules are loaded into KERNEL at DRV, as the
# kernel says; prints the evidence.
loaded_ok() {
	local name=$1 n=$2 k=$3 out m v holders want first
	out=$(rsh "$n" "$MODS" <<'EOF'
uname -r
lsmod | grep '^kfleet_' | sort
for m in "$@"; do
	printf 'version %s %s\n' "$m" "$(cat "/sys/module/$m/version" 2>/dev/null || echo absent)"
	printf 'holders %s:%s\n' "$m" "$(ls "/sys/module/$m/holders" 2>/dev/null | sort | tr '\n' ' ' | sed 's/ $//')"
done
dmesg | grep -E 'kfleet_[a-z]+: version' | tail -n 4
printf 'vermagic %s\n' "$(modinfo -F vermagic kfleet_core 2>&1)"
EOF
	) || { bad "$name: ssh failed"; return; }
	echo "$name: the kernel's own answer (uname -r, lsmod, /sys/module, dmesg, modinfo):"
	printf '%s\n' "$out" | sed 's/^/    /'
	[ "$(printf '%s\n' "$out" | head -n1)" = "$k" ] || bad "$name: not running $k"
	for m in $MODS; do
		v=$(printf '%s\n' "$out" | sed -n "s/^version $m //p")
		[ "$v" = "$DRV" ] || bad "$name: /sys/module/$m/version is '$v', not $DRV"
		printf '%s\n' "$out" | grep -Eq "^$m +[0-9]+ +[0-9]+" || bad "$name: lsmod does not list $m"
		holders=$(printf '%s\n' "$out" | sed -n "s/^holders $m://p")
		want=$(sed -n "s/^$m://p" "$WORK/holders.want")
		[ "$holders" = "$want" ] || bad "$name: /sys/module/$m/holders is '$holders', want '$want' (the package's depends=)"
	done
	# The kernel logged each module's init in the profile's load order.
	first=$(printf '%s\n' "$out" | sed -n 's/^\[[ 0-9.]*\] \(kfleet_[a-z]*\): version.*/\1/p' | tr '\n' ' ')
	[ "$first" = "$ORDER " ] || bad "$name: the kernel initialized '$first', want the load order '$ORDER'"
	printf '%s\n' "$out" | grep -q "^vermagic $k " || bad "$name: modinfo kfleet_core does not resolve to a module for $k"
}
# installed_ok NAME VM KERNEL: KERNEL has DRV under updates/kfleet, in its
# modules.dep, resolvable for its next boot; prints the evidence.
installed_ok() {
	local name=$1 n=$2 k=$3 out m
	out=$(rsh "$n" "$k" <<'EOF'
k=$1
ls "/lib/modules/$k/updates/kfleet/" | tr '\n' ' '
echo
grep '^updates/kfleet/' "/lib/modules/$k/modules.dep"
modprobe -S "$k" --show-depends kfleet_drm
for f in "/lib/modules/$k/updates/kfleet/"*.ko; do
	printf 'file %s %s %s\n' "${f##*/}" "$(modinfo -F version "$f")" "$(modinfo -F vermagic "$f")"
done
grep "^current $k " /var/lib/kfleet/state
exit 0
EOF
	) || { bad "$name: ssh failed"; return; }
	echo "$name: $k: kfleet's modules on disk (updates/kfleet, modules.dep, modprobe -S $k --show-depends, modinfo, state):"
	printf '%s\n' "$out" | sed 's/^/    /'
	[ "$(printf '%s\n' "$out" | head -n1)" = "kfleet_core.ko kfleet_drm.ko kfleet_modeset.ko kfleet_uvm.ko " ] ||
		bad "$name: $k: updates/kfleet holds '$(printf '%s\n' "$out" | head -n1)'"
	for m in $MODS; do
		printf '%s\n' "$out" | grep -q "^updates/kfleet/$m.ko:" || bad "$name: $k: $m not in modules.dep"
		printf '%s\n' "$out" | grep -q "^file $m.ko $DRV $k " || bad "$name: $k: updates/kfleet/$m.ko is not $DRV built for $k"
	done
	[ "$(printf '%s\n' "$out" | awk '$1 == "insmod" {print $2}' | tr '\n' ' ')" = "/lib/modules/$k/updates/kfleet/kfleet_core.ko /lib/modules/$k/updates/kfleet/kfleet_modeset.ko /lib/modules/$k/updates/kfleet/kfleet_drm.ko " ] ||
		bad "$name: $k: modprobe --show-depends kfleet_drm does not load core, modeset, drm from updates/kfleet"
	printf '%s\n' "$out" | grep -q "^current $k $DRV " || bad "$name: $k: /var/lib/kfleet/state has no current $DRV"
}

phase "kfleet deploy --reload --stages 1,100%"
rc=0
kf deploy --profile testdrv --driver "$DRV" --reload --stages 1,100% --json >"$WORK/deploy.json" 2>"$WORK/deploy.err" || rc=$?
cat "$WORK/deploy.err"
[ "$rc" = 0 ] || fail "deploy exited $rc"
python3 - "$WORK/deploy.json" "$DRV" <<'PY' || fail "the deploy report"
import json, sys
d, drv = json.load(open(sys.argv[1])), sys.argv[2]
assert d["status"] == "done" and d["summary"]["updated"] == 2, (d["status"], d["summary"])
assert [s["nodes"] for s in d["stages"]] == [1, 1], d["stages"]
by = {n["name"]: n for n in d["nodes"]}
assert by["vm1"]["stage"] == 1 and by["vm2"]["stage"] == 2, "vm1 is the canary"
for n in by.values():
    assert n["outcome"] == "updated" and n["version"] == drv and n["bytes_sent"] > 0, n
PY
for v in "${VMS[@]}"; do
	read -r name n k <<<"$v"
	loaded_ok "$name" "$n" "$k"
done
installed_ok vm1 "$N1" "$K3"
[ -n "$(on "$N1" 'ls /var/lib/kfleet/lock 2>/dev/null; ls /var/lib/kfleet/incoming 2>/dev/null')$(on "$N2" 'ls /var/lib/kfleet/lock 2>/dev/null; ls /var/lib/kfleet/incoming 2>/dev/null')" ] &&
	bad "a lock or incoming package was left on a node"
[ "${#FAILED[@]}" = 0 ] || fail "the deploy did not load the modules (above)"
okif "deploy in stages 1,100%: the real kernels loaded testdrv $DRV (versions, lsmod, holders, load order); $K3 on vm1 has it for its next boot"

kf deploy --profile testdrv --driver "$DRV" --reload --stages 1,100% >"$WORK/deploy2.out" 2>&1 ||
	{ cat "$WORK/deploy2.out"; fail "the same deploy again"; }
grep -q "nothing to do: all 2 nodes are at testdrv $DRV already" "$WORK/deploy2.out" ||
	{ cat "$WORK/deploy2.out"; bad "the same deploy again does not say nothing to do"; }
okif "the same deploy again changes nothing and says so"

# ---- 4. rollback, with no earlier release -------------------------------------------
# An operator expects: kfleet's modules unloaded and gone from every kernel of
# every node (the running one and the next boot's), nothing of kfleet's
# current, each node rolled back, exit 0; nothing else to load.
phase "kfleet rollback --reload (no earlier release: back to none)"
rc=0
kf rollback --profile testdrv --reload --json >"$WORK/rb.json" 2>"$WORK/rb.err" || rc=$?
cat "$WORK/rb.err"
[ "$rc" = 0 ] || bad "rollback --reload with no earlier release exited $rc, want 0"
python3 - "$WORK/rb.json" <<'PY' || bad "rollback --reload report: $(jget "$WORK/rb.json" '[(n["name"], n["outcome"], n["version"], n["error"]) for n in d["nodes"]]' 2>&1)"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["status"] == "done", d["status"]
for n in d["nodes"]:
    assert n["outcome"] == "rolled_back" and n["error"] is None, n
    assert n["version"] in ("none", None), n
PY
for v in "${VMS[@]}"; do
	read -r name n k <<<"$v"
	out=$(on "$n" "lsmod | grep '^kfleet_'; ls -d /sys/module/kfleet_* 2>/dev/null; ls /lib/modules/*/updates/kfleet/*.ko 2>/dev/null; grep -H kfleet /lib/modules/*/modules.dep; grep '^current ' /var/lib/kfleet/state; ls -d /var/lib/kfleet/lock 2>/dev/null" || true)
	if [ -n "$out" ]; then
		bad "$name: after rollback --reload, kfleet's modules or state are still there:"
		printf '%s\n' "$out" | sed 's/^/    /' >&2
	fi
done
okif "rollback --reload with no earlier release: both nodes rolled back; no kfleet module loaded, none in updates/kfleet or modules.dep of any kernel, nothing current"

# ---- 5. a package built for the wrong kernel -------------------------------------------
# Each node's kernel gets, under its own name in the catalog, a package whose
# modules were built for another kernel. install.sh and metadata.json are
# the right kernel's.
#   truth: the modules and metadata.json tell their real vermagic (a package
#          built against the wrong headers): kfleet's preflight refuses it
#          from metadata.json, nothing is sent; and node.sh install, which
#          reads each .ko's own vermagic, would refuse it too.
#   patch: the modules claim the target kernel (their vermagic string
#          rewritten in place, padded: the build of one kernel release
#          against another's headers looks so): nothing kfleet can read
#          tells, so only the kernel's loader can refuse it, with its own
#          words (symbol versions, or the rest of the vermagic).
# vm1 (K1) gets K2's modules; vm2 (K2) gets K1's (truth) or K3's, whose
# release is as long as K2's (patch).
cat >"$WORK/swap.py" <<'PY'
import hashlib, io, json, os, sys, tarfile
tgt, src, out, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def members(p):
    with tarfile.open(p) as t:
        return [(m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]
T, S = members(tgt), members(src)
smods = {os.path.basename(m.name): d for m, d in S if m.name.endswith(".ko")}
smeta = json.loads(next(d for m, d in S if m.name.endswith("/metadata.json")))
tmeta = json.loads(next(d for m, d in T if m.name.endswith("/metadata.json")))
srel, trel = smeta["kernel_version"], tmeta["kernel_version"]
if mode == "patch":
    assert len(trel) <= len(srel), (trel, srel)
    for f, d in list(smods.items()):
        old = b"vermagic=" + srel.encode() + b" "
        assert d.count(old) == 1, f
        smods[f] = d.replace(old, b"vermagic=" + trel.encode().ljust(len(srel)) + b" ")
sm = {x["file"]: x for x in smeta["modules"]}
sums = {}
for x in tmeta["modules"]:
    new = sm[x["file"]]
    d = smods[x["file"]]
    sums[x["sha256"]] = hashlib.sha256(d).hexdigest()
    x["sha256"], x["size"], x["signed"] = sums[x["sha256"]], len(d), new["signed"]
    x["vermagic"] = new["vermagic"] if mode == "truth" else \
        trel.ljust(len(srel)) + " " + new["vermagic"].split(" ", 1)[1]
meta = (json.dumps(tmeta, indent=2, sort_keys=True) + "\n").encode()
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz") as t:
    for m, d in T:
        if m.isfile():
            base = os.path.basename(m.name)
            if base.endswith(".ko"):
                d = smods[base]
            elif base == "metadata.json":
                d = meta
            elif base == "install.sh":  # its sha256 checks of the modules
                s = d.decode()
                for a, b in sums.items():
                    s = s.replace(a, b)
                d = s.encode()
            m.size = len(d)
            t.addfile(m, io.BytesIO(d))
        else:
            t.addfile(m)
data = buf.getvalue()
os.makedirs(out, exist_ok=True)
name = os.path.basename(tgt)
sha = hashlib.sha256(data).hexdigest()
open(os.path.join(out, name), "wb").write(data)
open(os.path.join(out, name + ".sha256"), "w").write(f"{sha}  {name}\n")
open(os.path.join(out, "metadata.json"), "wb").write(meta)
print(os.path.join(out, name), sha, len(data))
PY
DB=$WORK/state/state.db
sqlite3 "$DB" "SELECT kernel, path, sha256, size FROM artifacts WHERE profile = 'testdrv' AND driver = '$DRV'" >"$WORK/catalog.saved"
A1=$(art_path "$K1")
A2=$(art_path "$K2")
A3=$(art_path "$K3")
# wrong_catalog MODE: catalogs the swapped packages for K1 and K2.
wrong_catalog() {
	local p s z k tgt src
	for k in "$K1" "$K2"; do
		if [ "$k" = "$K1" ]; then
			tgt=$A1 src=$A2
		elif [ "$1" = truth ]; then
			tgt=$A2 src=$A1
		else
			tgt=$A2 src=$A3
		fi
		read -r p s z < <(python3 "$WORK/swap.py" "$tgt" "$src" "$WORK/wrong-$1/$k" "$1") || fail "making the wrong package for $k"
		sqlite3 "$DB" "UPDATE artifacts SET path = '$p', sha256 = '$s', size = $z WHERE profile = 'testdrv' AND driver = '$DRV' AND kernel = '$k'"
	done
}
restore_catalog() {
	local k p s z
	while IFS='|' read -r k p s z; do
		sqlite3 "$DB" "UPDATE artifacts SET path = '$p', sha256 = '$s', size = $z WHERE profile = 'testdrv' AND driver = '$DRV' AND kernel = '$k'"
	done <"$WORK/catalog.saved"
}
# snap VM: what a refused deploy must not change.
snap() { on "$1" 'cat /var/lib/kfleet/state 2>/dev/null; ls -R /var/lib/kfleet/releases /lib/modules/*/updates 2>/dev/null; lsmod | grep "^kfleet_"' || true; }
# load_refused JSON: both nodes failed at load with the kernel's own words;
# prints them, and what the kernels logged.
load_refused() {
	python3 - "$1" <<'PY' || bad "wrong-kernel package past preflight: not refused at load with the kernel's words"
import json, sys
d = json.load(open(sys.argv[1]))
by = {n["name"]: n for n in d["nodes"]}
for name in ("vm1", "vm2"):
    n = by[name]
    e = n["error"] or {}
    print(f"  {name}: {n['outcome']} in {e.get('phase')}: {e.get('message')}")
    assert n["outcome"] == "failed" and e.get("phase") == "loading", n
    assert "Exec format error" in e["message"] or "Invalid module format" in e["message"], e
    assert "(kernel: " in e["message"], e  # the kernel log's reason, appended by node.sh
PY
	local v name n k line
	for v in "${VMS[@]}"; do
		read -r name n k <<<"$v"
		line=$(on "$n" 'dmesg | grep kfleet_core | tail -n 1')
		echo "  $name ($k) kernel log: $line"
		case $line in
		*"kfleet_core: version"* | "") bad "$name: the kernel logged no refusal of kfleet_core" ;;
		esac
		[ -z "$(on "$n" "lsmod | grep '^kfleet_'" || true)" ] || bad "$name: a kfleet module is loaded after the kernel refused the package"
	done
}

phase "a package built for the wrong kernel"
before1=$(snap "$N1")
before2=$(snap "$N2")
wrong_catalog truth
rc=0
kf deploy --profile testdrv --driver "$DRV" --reload --stages 100% --max-fail 100% --json >"$WORK/wrong.json" 2>"$WORK/wrong.err" || rc=$?
cat "$WORK/wrong.err"
python3 - "$WORK/wrong.json" <<'PY' || bad "preflight let a package built for the wrong kernel through: $(jget "$WORK/wrong.json" '[(n["name"], n["outcome"], n["error"]) for n in d["nodes"]]')"
import json, sys
d = json.load(open(sys.argv[1]))
for n in d["nodes"]:
    e = n["error"] or {}
    assert n["outcome"] == "skipped" and e.get("phase") == "preflight" and n["bytes_sent"] == 0, n
    assert "is built for" in e["message"] and "not kernel" in e["message"], e
    print(f"  {n['name']}: {n['outcome']} in preflight: {e['message']}")
PY
[ "$rc" = 1 ] || bad "the refused wrong-kernel deploy exited $rc, want 1"
[ "$(snap "$N1")" = "$before1" ] || bad "a deploy refused by preflight changed vm1"
[ "$(snap "$N2")" = "$before2" ] || bad "a deploy refused by preflight changed vm2"
okif "a package built for the wrong kernel is refused by preflight on both nodes (the modules' vermagic); nothing sent, nothing changed"

wrong_catalog patch
rc=0
kf deploy --profile testdrv --driver "$DRV" --reload --stages 100% --max-fail 100% --json >"$WORK/wrong2.json" 2>"$WORK/wrong2.err" || rc=$?
cat "$WORK/wrong2.err"
load_refused "$WORK/wrong2.json"
[ "$rc" = 1 ] || bad "the wrong-kernel deploy past preflight exited $rc, want 1"
okif "past preflight (modules claiming the node's kernel) the kernels refuse them at load, their own words reported per node"

# kfleet doctor on modules for another kernel in a kernel's tree (put there
# by hand: kfleet itself refuses to install them).
for v in "${VMS[@]}"; do
	read -r name n k <<<"$v"
	if [ "$name" = vm1 ]; then src=$A2; else src=$A1; fi
	# kfleet_core: the profile's first module, the one doctor looks at
	tar -xzOf "$src" --wildcards '*/modules/kfleet_core.ko' |
		ssh -F "$CACHE/$n.run/ssh_config" "$n" "cat >/lib/modules/$k/updates/kfleet/kfleet_core.ko" ||
		fail "copying a module for another kernel onto $name"
done
kf doctor --profile testdrv --json >"$WORK/doctor-wrong.json" 2>"$WORK/doctor-wrong.err" || true
python3 - "$WORK/doctor-wrong.json" "$K1" "$K2" <<'PY' || bad "doctor does not name the wrong vermagic on both nodes"
import json, sys
d, k1, k2 = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
other = {"vm1": k2, "vm2": k1}
for h in d["hosts"]:
    f = [x for x in h["findings"] if x["code"] == "vermagic-mismatch"]
    assert f and f[0]["severity"] == "critical" and "vermagic=" + other[h["name"]] in f[0]["evidence"], (h["name"], h["findings"])
    print(f"  {h['name']}: doctor: {f[0]['title']}")
PY
okif "kfleet doctor: vermagic-mismatch (critical) on both nodes, naming the kernel the modules were built for"
restore_catalog
kf artifacts verify --profile testdrv >"$WORK/verify.out" 2>&1 || { cat "$WORK/verify.out"; fail "the catalog is not restored"; }

phase "vm2 is done; vm1 back to the right package"
"$VM" down --cache "$CACHE" --name "$N2"
kf deploy --profile testdrv --driver "$DRV" -l vm1 --reload --stages 100% >"$WORK/fix.out" 2>&1 ||
	{ cat "$WORK/fix.out"; fail "deploying the right package to vm1"; }
loaded_ok vm1 "$N1" "$K1"
installed_ok vm1 "$N1" "$K3"
okif "the right package puts vm1 back: loaded into $K1, installed for $K3"

# ---- 6. Secure Boot style enforcement ---------------------------------------------------
phase "vm1 reboots into $K3 with module.sig_enforce=1"
"$VM" down --cache "$CACHE" --name "$N1"
"$VM" up --cache "$CACHE" --name "$N1" --image "$IMG1" --port "$P1" --reuse --kernel "$K3" --append module.sig_enforce=1 ||
	fail "vm1 does not boot $K3"
[ "$(on "$N1" 'uname -r')" = "$K3" ] || fail "vm1 does not run $K3"
[ "$(on "$N1" 'cat /sys/module/module/parameters/sig_enforce')" = Y ] || fail "vm1: sig_enforce is not Y"
node_check "$N1" >"$WORK/check-sb.out" || { cat "$WORK/check-sb.out"; fail "node.sh check on vm1"; }
grep -E '^(running|sig_enforce|secure_boot|loaded kfleet_core) ' "$WORK/check-sb.out" | sed 's/^/  node.sh check: /'
grep -qx "sig_enforce 1" "$WORK/check-sb.out" || bad "node.sh check does not report sig_enforce 1"
grep -qx "running $K3" "$WORK/check-sb.out" || bad "node.sh check does not report running $K3"
installed_ok vm1 "$N1" "$K3"
okif "vm1 runs $K3 with module.sig_enforce=1 (node.sh check: sig_enforce 1) and finds the modules installed for it before the reboot"

kf doctor --profile testdrv -l vm1 --json >"$WORK/doctor-sb.json" 2>"$WORK/doctor-sb.err" || true
python3 - "$WORK/doctor-sb.json" "$K3" <<'PY' || bad "doctor does not explain that the unsigned modules are refused: $(cat "$WORK/doctor-sb.json")"
import json, sys
d, k3 = json.load(open(sys.argv[1])), sys.argv[2]
f = [x for x in d["hosts"][0]["findings"] if x["code"] == "unsigned-modules-secure-boot"]
assert f and f[0]["severity"] == "critical", d["hosts"][0]["findings"]
f = f[0]
assert "sig_enforce=Y" in f["evidence"] and "/updates/kfleet/kfleet_core.ko" in f["evidence"], f
assert "kfleet keys new" in f["fix"], f
print("  doctor: " + f["title"] + "\n    evidence: " + f["evidence"] + "\n    fix: " + f["fix"])
PY
okif "kfleet doctor explains: unsigned modules while signatures are enforced (critical), with the fix"

# The node holds the unsigned release for its kernel already: only a reload
# is asked for, which the kernel is sure to refuse.
before=$(snap "$N1")
rc=0
kf deploy --profile testdrv --driver "$DRV" -l vm1 --reload --stages 100% --json >"$WORK/sb1.json" 2>"$WORK/sb1.err" || rc=$?
cat "$WORK/sb1.err"
python3 - "$WORK/sb1.json" <<'PY' || bad "an unsigned package held by a node that enforces signatures: its reload is not refused by preflight (rc $rc): $(jget "$WORK/sb1.json" '[(n["outcome"], n["error"]) for n in d["nodes"]]')"
import json, sys
n = json.load(open(sys.argv[1]))["nodes"][0]
e = n["error"] or {}
assert n["outcome"] == "skipped" and e.get("phase") == "preflight", n
assert "module.sig_enforce=1" in e["message"] and "not signed" in e["message"], e
PY
[ "$(snap "$N1")" = "$before" ] || bad "the deploy of an unsigned package held by vm1 changed it"
line=$(on "$N1" 'dmesg | grep -E "Loading of .* is rejected" | tail -n 1' || true)
echo "  vm1 kernel log: ${line:-no module was offered to the kernel}"
[ -z "$line" ] || bad "the kernel was offered the unsigned module: $line"
okif "unsigned package held by a node with module.sig_enforce=1: its reload is refused by preflight"

rc=0
kf rollback --profile testdrv -l vm1 --to none --json >"$WORK/rb-none.json" 2>"$WORK/rb-none.err" || rc=$?
cat "$WORK/rb-none.err"
[ "$rc" = 0 ] || bad "rollback --to none on vm1 exited $rc"
python3 - "$WORK/rb-none.json" <<'PY' || bad "rollback --to none: the report"
import json, sys
d = json.load(open(sys.argv[1]))
n = d["nodes"][0]
assert d["status"] == "done" and d["summary"]["rolled_back"] == 1 and d["summary"]["failed"] == 0, d["summary"]
assert n["outcome"] == "rolled_back" and n["version"] in ("none", None), n
PY
[ -z "$(on "$N1" "ls /lib/modules/*/updates/kfleet/*.ko 2>/dev/null; grep '^current ' /var/lib/kfleet/state" || true)" ] ||
	bad "rollback --to none left kfleet's modules on vm1"
okif "rollback --to none (no --reload): kfleet's modules gone from both kernels of vm1"

before=$(snap "$N1")
rc=0
kf deploy --profile testdrv --driver "$DRV" -l vm1 --reload --stages 100% --json >"$WORK/sb2.json" 2>"$WORK/sb2.err" || rc=$?
cat "$WORK/sb2.err"
python3 - "$WORK/sb2.json" <<'PY' || bad "an unsigned package to a node that enforces signatures is not refused by preflight"
import json, sys
n = json.load(open(sys.argv[1]))["nodes"][0]
e = n["error"] or {}
assert n["outcome"] == "skipped" and e.get("phase") == "preflight" and n["bytes_sent"] == 0, n
assert "module.sig_enforce=1" in e["message"] and "not signed" in e["message"], e
PY
[ "$rc" = 1 ] || bad "deploy with a node skipped exited $rc, want 1"
[ "$(snap "$N1")" = "$before" ] || bad "the refused deploy changed vm1"
okif "unsigned package, module.sig_enforce=1, to be installed: refused by preflight, nothing sent or changed"

phase "signed package (kfleet keys new), module.sig_enforce=1"
CN="kfleet vm test key"
kf keys new --dir "$WORK/keys" --cn "$CN" >"$WORK/keys.out" 2>&1 || { cat "$WORK/keys.out"; fail "kfleet keys new"; }
{
	cat "$WORK/kfleet.yml"
	echo "signing: {key: $WORK/keys/signing_key.pem, cert: $WORK/keys/signing_cert.der}"
} >"$WORK/kfleet-signed.yml"
KCONF=$WORK/kfleet-signed.yml
kf build --profile testdrv --kernel "$K1" --kernel "$K3" --force >"$WORK/build-signed.out" 2>&1 ||
	{ cat "$WORK/build-signed.out"; fail "the signed build"; }
grep -q "^done: 2 built, 0 failed" "$WORK/build-signed.out" || { cat "$WORK/build-signed.out"; fail "signed build: want 2 built"; }
kf artifacts verify --profile testdrv --kernel "$K3" >"$WORK/verify-signed.out" 2>&1 || { cat "$WORK/verify-signed.out"; fail "artifacts verify of the signed package"; }
[ "$(jget "$(dirname "$(art_path "$K3")")/metadata.json" 'all(m["signed"] for m in d["modules"]) and d["signer"] is not None')" = True ] ||
	fail "the signed package's metadata.json does not say signed"
rc=0
kf deploy --profile testdrv --driver "$DRV" -l vm1 --reload --stages 100% --json >"$WORK/sb3.json" 2>"$WORK/sb3.err" || rc=$?
cat "$WORK/sb3.err"
python3 - "$WORK/sb3.json" <<'PY' || bad "the signed package: kfleet does not report the kernel's refusal of its key at load"
import json, sys
n = json.load(open(sys.argv[1]))["nodes"][0]
e = n["error"] or {}
print(f"  vm1: {n['outcome']} in {e.get('phase')}: {e.get('message')}")
assert n["outcome"] == "failed" and e.get("phase") == "loading" and n["bytes_sent"] > 0, n
assert "Key was rejected by service" in e["message"] or "Required key not available" in e["message"], e
PY
[ "$rc" = 4 ] || bad "the signed deploy refused at load exited $rc, want 4 (halted)"
out=$(on "$N1" "modinfo /lib/modules/$K3/updates/kfleet/kfleet_core.ko | grep -E '^(vermagic|sig_id|signer|sig_hashalgo):'; dmesg | grep -E 'Loading of (unsigned module|module with unavailable key) is rejected' | tail -n 1; lsmod | grep '^kfleet_'" || true)
printf '%s\n' "$out" | sed 's/^/  vm1: /'
printf '%s\n' "$out" | grep -Eq "^signer: +$CN\$" || bad "the installed module is not signed by '$CN'"
printf '%s\n' "$out" | grep -q "Loading of module with unavailable key is rejected" ||
	bad "the kernel did not find the signature (want 'Loading of module with unavailable key is rejected' in dmesg)"
printf '%s\n' "$out" | grep -q '^kfleet_' && bad "a kfleet module is loaded although the kernel does not trust its key"
kf doctor --profile testdrv -l vm1 --json >"$WORK/doctor-signed.json" 2>/dev/null || true
python3 - "$WORK/doctor-signed.json" "$CN" <<'PY' || bad "doctor does not explain the rejected signature"
import json, sys
d, cn = json.load(open(sys.argv[1])), sys.argv[2]
f = {x["code"]: x for x in d["hosts"][0]["findings"]}
assert "unsigned-modules-secure-boot" not in f, f
r = f["module-signature-rejected"]
assert "unavailable key" in r["evidence"], r
assert cn in f["module-signer-not-enrolled"]["title"], f
for x in (r, f["module-signer-not-enrolled"]):
    print(f"  doctor: {x['severity']} {x['code']}: {x['title']} ({x['evidence']})")
PY
okif "signed package: passes preflight, the kernel finds the signature but not the key; kfleet reports it per node, doctor explains"

# ---- the end -----------------------------------------------------------------------------
phase "powering off"
"$VM" down --cache "$CACHE" --name "$N1"
for n in "$N1" "$N2"; do
	if [ -f "$CACHE/$n.run/pid" ] && [ -d "/proc/$(cat "$CACHE/$n.run/pid")" ]; then bad "$n still running"; fi
done
"$VM" status --cache "$CACHE" | grep -E "^($N1|$N2) " | grep -w up && bad "a VM is still up"
if [ "${#FAILED[@]}" -gt 0 ]; then
	echo "test_vm: ${#FAILED[@]} checks failed in $((SECONDS - T0)) s:" >&2
	printf '  - %s\n' "${FAILED[@]}" >&2
	exit 1
fi
ok "all VMs powered off; real-kernel test passed in $((SECONDS - T0)) s"
