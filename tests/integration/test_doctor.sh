#!/usr/bin/env bash
# kfleet doctor against real sshd nodes, each seeded with one of the classic
# failures (through the spec and through the node's own trees in
# DIR/nodes/NODE/fs): every seeded finding must appear on its host, the
# healthy node must have none, the unreachable node must fail, and the
# report must group and fold hosts.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

# Until coordinator/main.c dispatches the command (its help and the probe it
# prints are the signs), there is nothing to test.
if ! "$KFLEET" help doctor 2>&1 | grep -q '^usage: kfleet doctor' ||
	! "$KFLEET" doctor --print-probe 2>/dev/null | grep -q 'kfdoctor'; then
	echo "SKIP: kfleet has no doctor command"
	exit 0
fi

K1=6.1.0-47-amd64
K2=6.1.0-50-amd64
NV=550.54.15
cat >"$WORK/spec" <<EOF
healthy01 kernel=$K1 installed=$K1,$K2 gpus=2 driver=$NV userspace=$NV kfleet=$NV:$K1 ko=$NV nouveau=blacklisted iommu=on
mismatch01 kernel=$K1 gpus=1 driver=570.124.06 userspace=570.133.07 ko=570.124.06 nouveau=blacklisted
bar01 kernel=$K1 gpus=1 driver=- userspace=$NV ko=$NV nouveau=blacklisted
vfio01 kernel=$K1 gpus=2 pci_driver=vfio-pci iommu=on cmdline=intel_iommu=on,iommu=pt,vfio-pci.ids=10de:2330 nouveau=blacklisted
nouveau01 kernel=$K1 gpus=1 nouveau=loaded pci_driver=nouveau
sb01 kernel=$K1 gpus=1 driver=$NV userspace=$NV ko=$NV sb=enabled nouveau=blacklisted kfleet=$NV:$K1
sbsigned01 kernel=$K1 gpus=1 driver=$NV userspace=$NV ko=$NV:signed sb=enabled mok=Example-Vendor-CA nouveau=blacklisted kfleet=$NV:$K1
uu01 kernel=$K1 gpus=1 driver=$NV userspace=$NV ko=$NV nouveau=blacklisted
missing01 kernel=$K1 installed=$K1,$K2 gpus=1 driver=$NV userspace=$NV ko=$NV nouveau=blacklisted kfleet=$NV:$K1
vermagic01 kernel=$K1 installed=$K1,$K2 gpus=1 driver=$NV userspace=$NV ko=$NV nouveau=blacklisted
nouveauok01 kernel=$K1 gpus=1 driver=$NV userspace=$NV ko=$NV nouveau=available
nouveauok02 kernel=$K2 gpus=4 driver=$NV userspace=$NV ko=$NV nouveau=available
dkms01 kernel=$K1 gpus=1 driver=$NV userspace=$NV ko=$NV nouveau=blacklisted kfleet=$NV:$K1
unreach01 fault=unreachable
EOF
"$FLEET_SH" up --dir "$FLEET" --spec "$WORK/spec" --base-port "$(pick_base_port 14)"
fs() { echo "$FLEET/nodes/$1/fs"; }

# The kernel logs of the classic post-mortems.
cat >"$(fs mismatch01)/usr/local/etc/testnode.dmesg" <<'EOF'
[    3.171877] NVRM: loading NVIDIA UNIX x86_64 Kernel Module  570.124.06  Wed Feb 26 01:25:49 UTC 2025
[86011.901776] NVRM: API mismatch: the client has the version 570.133.07, but this kernel module has the version 570.124.06.  Please make sure that this kernel module and all NVIDIA driver components have the same version.
EOF
cat >"$(fs bar01)/usr/local/etc/testnode.dmesg" <<'EOF'
[    5.114021] nvidia: loading out-of-tree module taints kernel.
[    5.201377] NVRM: This PCI I/O region assigned to your NVIDIA device is invalid:
[    5.201377] NVRM: BAR1 is 0M @ 0x0 (PCI:0000:00:05.0)
[    5.201402] nvidia: probe of 0000:00:05.0 failed with error -1
[    5.201420] NVRM: The NVIDIA probe routine failed for 1 device(s).
[    5.201431] NVRM: None of the NVIDIA devices were initialized.
EOF
# unattended-upgrades installed and on, nothing held back.
mkdir -p "$(fs uu01)/var/lib/dpkg/info"
: >"$(fs uu01)/var/lib/dpkg/info/unattended-upgrades.list"
: >"$(fs uu01)/var/lib/dpkg/info/nvidia-driver-550.list"
printf 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n' \
	>"$(fs uu01)/etc/apt/apt.conf.d/20auto-upgrades"
printf 'Unattended-Upgrade::Package-Blacklist {\n//  "linux-";\n};\n' \
	>"$(fs uu01)/etc/apt/apt.conf.d/50unattended-upgrades"
echo "apt-daily-upgrade.timer enabled" >"$(fs uu01)/usr/local/etc/testnode.units"
# An installed kernel that lost its modules; a package for it is in the store.
rm -rf "$(fs missing01)/lib/modules/$K2/updates"
kf artifacts list >/dev/null # makes the state database
sqlite3 "$WORK/state/state.db" "insert into artifacts(profile, driver, kernel, arch, os_id, os_version, path, sha256, size, created_at)
	values('nvidia', '$NV', '$K2', 'x86_64', 'debian', '12', '/x', 'aa', 1, 0)"
# The old kernel's module copied into the new kernel's tree.
cp "$(fs vermagic01)/lib/modules/$K1/updates/kfleet/nvidia.ko" "$(fs vermagic01)/lib/modules/$K2/updates/kfleet/nvidia.ko"
# DKMS's own copy of another driver beside kfleet's.
mkdir -p "$(fs dkms01)/lib/modules/$K1/updates/dkms" "$(fs dkms01)/var/lib/dkms/nvidia/535.183.01"
printf '\0version=535.183.01\0vermagic=%s SMP preempt mod_unload modversions \0' "$K1" \
	>"$(fs dkms01)/lib/modules/$K1/updates/dkms/nvidia.ko"
ln -s "535.183.01/$K1/x86_64" "$(fs dkms01)/var/lib/dkms/nvidia/kernel-$K1-x86_64"

touch "$WORK/stamp"
sleep 1 # a change in the same second would not be newer
rc=0
kf doctor --json --no-progress --auth-timeout 10s --command-timeout 30s >"$WORK/doctor.json" \
	2>"$WORK/doctor.err" || rc=$?
[ "$rc" = 1 ] || { cat "$WORK/doctor.err"; fail "kfleet doctor exited $rc, want 1 (findings and a failed host)"; }
ok "exit status 1 with findings"

python3 - "$WORK/doctor.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
want = {
    "healthy01": set(),
    "mismatch01": {"driver-library-mismatch", "nvrm-api-mismatch"},
    "bar01": {"pci-bar-invalid"},
    "vfio01": {"vfio-passthrough"},
    "nouveau01": {"nouveau-loaded", "kernel-without-module"},
    "sb01": {"unsigned-modules-secure-boot"},
    "sbsigned01": {"module-signer-not-enrolled"},
    "uu01": {"unattended-kernel-upgrades", "unattended-driver-upgrades"},
    "missing01": {"kernel-without-module"},
    "vermagic01": {"vermagic-mismatch"},
    "nouveauok01": {"nouveau-not-blacklisted"},
    "nouveauok02": {"nouveau-not-blacklisted"},
    "dkms01": {"conflicting-module-copies", "dkms-leftover"},
}
# Findings that must not appear anywhere but where seeded.
exclusive = set().union(*want.values())
errors = []
assert doc["kfleet"] and doc["command"] == "doctor", doc.keys()
hosts = {h["name"]: h for h in doc["hosts"]}
for name, codes in want.items():
    h = hosts.get(name)
    if h is None or not h["ok"]:
        errors.append(f"{name}: no answer: {h and h['error']}")
        continue
    got = {f["code"] for f in h["findings"]}
    if name == "healthy01" and h["findings"]:
        errors.append(f"healthy01 has findings: {h['findings']}")
    for c in codes - got:
        errors.append(f"{name}: missing {c}; got {sorted(got)}")
    for c in (got & exclusive) - codes:
        errors.append(f"{name}: unexpected {c}")
    for f in h["findings"]:
        for k in ("severity", "code", "title", "evidence", "fix"):
            v = f[k]
            if not isinstance(v, str) or any(ord(ch) < 0x20 or ord(ch) > 0x7e for ch in v):
                errors.append(f"{name}: {f['code']}.{k} not printable: {v!r}")
        if f["severity"] not in ("critical", "warning", "info"):
            errors.append(f"{name}: severity {f['severity']}")
    if h["error"] is not None:
        errors.append(f"{name}: error with ok: {h['error']}")
def finding(name, code):
    return next(f for f in hosts[name]["findings"] if f["code"] == code)
try:
    f = finding("mismatch01", "driver-library-mismatch")
    assert f["severity"] == "critical", f
    assert "Failed to initialize NVML: Driver/library version mismatch" in f["evidence"], f
    assert "570.124.06" in f["title"] and "570.133.07" in f["title"], f
    f = finding("mismatch01", "nvrm-api-mismatch")
    assert "the client has the version 570.133.07, but this kernel module has the version 570.124.06" in f["evidence"], f
    f = finding("bar01", "pci-bar-invalid")
    assert "BAR1 is 0M @ 0x0 (PCI:0000:00:05.0)" in f["evidence"] and "pci=realloc" in f["fix"], f
    f = finding("vfio01", "vfio-passthrough")
    assert f["severity"] == "info" and "vfio-pci" in f["evidence"] and "dmar0" in f["evidence"], f
    assert "intel_iommu=on" in f["evidence"], f
    f = finding("missing01", "kernel-without-module")
    assert "6.1.0-50-amd64" in f["title"] and "ready in the store" in f["fix"], f
    f = finding("sbsigned01", "module-signer-not-enrolled")
    assert "testfleet-signing" in f["title"], f
    f = finding("uu01", "unattended-kernel-upgrades")
    assert "20auto-upgrades" in f["evidence"] and "kfleet run --no-deploy" in f["fix"], f
except (AssertionError, StopIteration) as e:
    errors.append(f"finding content: {e!r}")
u = hosts["unreach01"]
if u["ok"] or u["error"]["code"] != "CONNREFUSED" or u["findings"]:
    errors.append(f"unreach01: {u}")
s = doc["summary"]
n_find = {sev: sum(1 for h in doc["hosts"] for f in h["findings"] if f["severity"] == sev)
          for sev in ("critical", "warning", "info")}
if (s["hosts"], s["ok"], s["failed"]) != (14, 13, 1) or any(s[k] != n_find[k] for k in n_find):
    errors.append(f"summary {s} vs {n_find}")
if errors:
    print("\n".join(errors)); sys.exit(1)
print(f"doctor: {s['ok']} hosts diagnosed one by one, {s['critical']} critical, {s['warning']} warning, {s['info']} info")
PY
ok "every seeded finding on its host, the healthy node clean"

# Nothing on a node changed: the probe is read-only.
for n in nouveau01 mismatch01; do
	[ -d "$(fs $n)/sys/module" ] || fail "$n: /sys/module gone"
done
[ -z "$(find "$FLEET/nodes"/*/fs -newer "$WORK/stamp" -not -path '*/tmp/*' -print -quit 2>/dev/null)" ] ||
	fail "a node's tree changed during kfleet doctor"
ok "read-only"

# The human report: groups by severity and code, hosts folded, no escapes.
kf doctor --no-progress --auth-timeout 10s --command-timeout 30s >"$WORK/human.txt" 2>&1 || true
grep -qE '^  nouveau-not-blacklisted +2  nouveauok\[01-02\]$' "$WORK/human.txt" ||
	{ cat "$WORK/human.txt"; fail "no folded group for nouveau-not-blacklisted"; }
grep -q '^  CRITICAL ' "$WORK/human.txt" || fail "no CRITICAL heading"
grep -q '      fix: ' "$WORK/human.txt" || fail "no fix line"
grep -q 'connection refused (connect)' "$WORK/human.txt" || fail "no failed group"
if grep -q $'\033' "$WORK/human.txt"; then fail "escape sequence reached the report"; fi
kf doctor -v --no-progress -l mismatch01 >"$WORK/verbose.txt" 2>&1 || true
if ! grep -q '^  mismatch01: ' "$WORK/verbose.txt" ||
	! grep -q 'evidence: nvidia-smi: Failed to initialize NVML' "$WORK/verbose.txt"; then
	cat "$WORK/verbose.txt"
	fail "no per-host detail with -v"
fi
ok "human report grouped, folded, per-host detail with -v"

# Exit status: 0 for a clean host, 1 once --driver says it runs the wrong one.
kf doctor -l healthy01 --json >"$WORK/one.json" || fail "healthy host alone: exit $?"
rc=0
kf doctor -l healthy01 --driver 570.133.07 --json >"$WORK/drv.json" || rc=$?
[ "$rc" = 1 ] || fail "--driver mismatch: exit $rc, want 1"
python3 -c 'import json,sys; h=json.load(open(sys.argv[1]))["hosts"][0]; assert [f["code"] for f in h["findings"]] == ["driver-version-unexpected"], h' "$WORK/drv.json" ||
	fail "--driver finding"
rc=0
kf doctor -l nosuchhost >/dev/null 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "unknown pattern: exit $rc, want 2"
ok "exit status 0 clean, 1 findings, 2 usage"
