#!/usr/bin/env bash
# kfleet build against real Debian kernel headers in podman: facts from a
# test fleet on two kernels (one only installed on a node), kfleet plan,
# kfleet build --missing on two builders (the local host and a fleet node
# over SSH), then: a second run builds nothing, a rebuild on the other
# builder gives the same sha256, artifacts verify, a broken source and a
# vermagic mismatch fail with the log, a failed build is skipped until
# --retry-failed, and Ctrl-C stops running containers and stores nothing.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || fail "needs root (rootful podman): run sudo tests/run.sh"
for t in podman runc debootstrap; do
	command -v "$t" >/dev/null || fail "needs $t: run contrib/install-deps.sh"
done

K1=6.1.0-47-amd64
K2=6.12.117+deb12-amd64
cat >"$WORK/spec" <<EOF
node001 kernel=$K1 installed=$K1 os=debian:12 gpus=1
node002 kernel=$K1 installed=$K1,$K2 os=debian:12 gpus=1
node003 kernel=$K2 installed=$K2 os=debian:12 gpus=1
builder01 kernel=$K1 installed=$K1 os=debian:12 gpus=0 containers=host
EOF
"$FLEET_SH" up --dir "$FLEET" --spec "$WORK/spec" --base-port "$(pick_base_port 4)" >/dev/null

# The driver source: the fixture module set, as a DKMS package (1.0.0).
cp -R "$KF_SOURCE_DIR/tests/fixtures/kmod/kfleet-test-driver" "$WORK/src"
cp -R "$WORK/src" "$WORK/broken"
printf 'this is not C;\n' >>"$WORK/broken/kfleet_drm.c"
mkdir "$WORK/badvm"
cat >"$WORK/badvm/badvm.c" <<'EOF'
#include <linux/module.h>
MODULE_LICENSE("GPL");
MODULE_INFO(vermagic, "5.10.0-99-amd64 SMP mod_unload modversions ");
static int __init badvm_init(void) { return 0; }
module_init(badvm_init);
EOF
echo 'obj-m := badvm.o' >"$WORK/badvm/Kbuild"

cat >"$WORK/kfleet.yml" <<EOF
container:
  run_args: [--runtime, runc, --ulimit, "nofile=1024:1024", --ulimit, "nproc=4096:4096"]
builders:
  - {name: local, host: local, slots: 1}
  - {name: remote, host: builder01, slots: 1, cache: $WORK/remote-cache}
build: {timeout: 600}
profiles:
  testdrv:
    type: kmod
    source: $WORK/src
    stub_threshold: 1024
  broken:
    type: kmod
    source: $WORK/broken
  badvm:
    type: kmod
    source: $WORK/badvm
    modules: [badvm]
EOF
kb() { kf --config "$WORK/kfleet.yml" "$@"; }

kf facts -l 'node*' >/dev/null || fail "facts"
kb plan --profile testdrv --json -l 'node*' >"$WORK/plan.json" || fail "plan"
python3 - "$WORK/plan.json" "$K1" "$K2" <<'PY' || fail "plan: want two keys to build"
import json, sys
doc = json.load(open(sys.argv[1]))
keys = {k["kernel"]: k for k in doc["keys"]}
assert doc["driver"] == "1.0.0", doc["driver"]  # from dkms.conf
assert set(keys) == {sys.argv[2], sys.argv[3]}, keys.keys()
assert all(k["status"] == "build" for k in keys.values())
assert keys[sys.argv[3]]["nodes_installed_only"] == 1  # node002's next reboot
PY
ok "plan: two kernels to build, one of them only installed"

# ---- the first run builds both kernels, one on each builder ----------------
rc=0
kb build --profile testdrv --missing -l 'node*' >"$WORK/build1.out" 2>&1 || rc=$?
cat "$WORK/build1.out"
[ "$rc" = 0 ] || fail "build --missing exited $rc"
grep -q "2 built, 0 failed" "$WORK/build1.out" || fail "want 2 built"
# Which builder takes which kernel depends on timing: the local one may take
# both before the remote one has its source (the run then ends without
# waiting for that upload). The reproducibility step below builds on each
# builder explicitly and checks the remote's source cache.
src_sha=$(sed -n 's/.*(dkms, sha256 \([0-9a-f]*\)).*/\1/p' "$WORK/build1.out")
[ -n "$src_sha" ] || fail "no source sha256 in the build output"
ok "two real builds on the builders"

kb artifacts list --json >"$WORK/art1.json"
python3 - "$WORK/art1.json" "$WORK/state" "$K1" "$K2" <<'PY' || fail "store layout"
import json, os, sys, tarfile, hashlib
arts = json.load(open(sys.argv[1]))
assert len(arts) == 2, arts
for a in arts:
    d = os.path.dirname(a["path"])
    assert d.endswith(f"/store/testdrv/1.0.0/kernel-{a['kernel']}"), d
    assert os.path.basename(a["path"]) == f"testdrv-1.0.0-kernel-{a['kernel']}-x86_64.tar.gz"
    side = open(a["path"] + ".sha256").read().split()
    assert side[0] == a["sha256"] == hashlib.sha256(open(a["path"], "rb").read()).hexdigest()
    md = json.load(open(os.path.join(d, "metadata.json")))
    assert md["kernel_version"] == a["kernel"] and md["driver_version"] == "1.0.0"
    assert md["profile"] == "testdrv" and md["build_host"] in ("local", "remote")
    names = sorted(m["name"] for m in md["modules"])
    assert names == ["kfleet_core", "kfleet_drm", "kfleet_modeset", "kfleet_uvm"], names
    for m in md["modules"]:
        assert m["vermagic"].startswith(a["kernel"] + " "), m
        assert not m["stub"], m
    assert md["load_order"][0] == "kfleet_core", md["load_order"]
    with tarfile.open(a["path"]) as t:
        top = f"testdrv-1.0.0-kernel-{a['kernel']}-x86_64/"
        have = set(t.getnames())
        for f in ("install.sh", "uninstall.sh", "metadata.json", "README.txt"):
            assert top + f in have, (f, have)
idx = json.load(open(os.path.join(sys.argv[2], "store", "index.json")))
assert idx["drivers"][0]["version"] == "1.0.0"
assert idx["drivers"][0]["supported_kernels"] == [sys.argv[3], sys.argv[4]], idx
PY
kb artifacts verify >"$WORK/verify.out" || { cat "$WORK/verify.out"; fail "artifacts verify"; }
grep -q "2 artifacts verified, 0 bad" "$WORK/verify.out" || fail "verify count"
ok "packages stored in the layout, index.json, metadata, verify"

# ---- a second run builds nothing ---------------------------------------------
start=$(date +%s%N)
kb build --profile testdrv --missing -l 'node*' >"$WORK/build2.out" 2>&1 ||
	{ cat "$WORK/build2.out"; fail "second build --missing"; }
ms=$((($(date +%s%N) - start) / 1000000))
grep -q "nothing to build: 0 built, 0 failed, 2 already stored" "$WORK/build2.out" ||
	{ cat "$WORK/build2.out"; fail "the second run should build nothing"; }
grep -q "start" "$WORK/build2.out" && fail "the second run started a build"
kb plan --profile testdrv --json -l 'node*' | grep -q '"stored": 2' || fail "plan after build"
ok "a second run builds nothing (${ms} ms); plan says stored"

# The artifact records the nodes' kernel build (uname -v); nodes whose
# build differs from it are reported.
kb plan --profile testdrv -l 'node*' | grep -q WARNING && fail "plan warns on a matching build"
sqlite3 "$WORK/state/state.db" "UPDATE artifacts SET kernel_build = '#1 SMP Debian 6.1.999-1' WHERE kernel = '$K1'"
kb plan --profile testdrv -l 'node*' >"$WORK/plan2.out"
grep -q "WARNING: the stored package was built for '#1 SMP Debian 6.1.999-1', but node.*001.* run" \
	"$WORK/plan2.out" || { cat "$WORK/plan2.out"; fail "plan does not report a kernel build mismatch"; }
ok "plan reports nodes whose kernel build differs from the artifact's"

# ---- reproducible -------------------------------------------------------------
# The package records its build host, so the tar.gz is byte-identical for a
# rebuild on the same builder; on the other builder every module is.
mods() {
	python3 -c 'import json,sys; print(" ".join(sorted(m["sha256"] for m in json.load(open(sys.argv[1]))["modules"])))' \
		"$WORK/state/store/testdrv/1.0.0/kernel-$K1/metadata.json"
}
builder_of() {
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["build_host"])' \
		"$WORK/state/store/testdrv/1.0.0/kernel-$K1/metadata.json"
}
sha_k1() { kb artifacts list --json --kernel "$K1" | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['sha256'])"; }
first=$(sha_k1)
first_mods=$(mods)
b1=$(builder_of)
b2=local
[ "$b1" = local ] && b2=remote
kb build --profile testdrv --kernel "$K1" --force --builder "$b1" >"$WORK/force.out" 2>&1 ||
	{ cat "$WORK/force.out"; fail "forced rebuild on $b1"; }
[ "$(sha_k1)" = "$first" ] || fail "rebuild on $b1 gave sha256 $(sha_k1), first build $first"
kb build --profile testdrv --kernel "$K1" --force --builder "$b2" >"$WORK/force.out" 2>&1 ||
	{ cat "$WORK/force.out"; fail "forced rebuild on $b2"; }
[ "$(mods)" = "$first_mods" ] || fail "modules built on $b2 differ from those built on $b1"
[ "$(builder_of)" = "$b2" ] || fail "metadata.json does not name $b2 as the build host"
ok "reproducible: rebuilt on $b1, the same tar.gz ($first); on $b2, the same modules"
# Both builders have built now. (The node's /tmp is its own: look from the node.)
"$FLEET_SH" ssh --dir "$FLEET" builder01 "ls $WORK/remote-cache/sources/$src_sha*" >/dev/null 2>&1 ||
	fail "the source was not uploaded to the remote builder's cache"
ok "the source is in the remote builder's cache under its sha256"

kb build --profile testdrv --kernel "$K2" --force --builder remote >"$WORK/remote2.out" 2>&1 ||
	{ cat "$WORK/remote2.out"; fail "build on remote"; }
grep -q "on remote" "$WORK/remote2.out" || fail "not built on remote"
grep -q "sending the source" "$WORK/remote2.out" && fail "the source was sent to remote again"
ok "the remote builder builds; its source, already there, is not sent again"

# ---- failures: broken source, vermagic mismatch, skip until --retry-failed ---
rc=0
kb build --profile broken --kernel "$K1" >"$WORK/broken.out" 2>&1 || rc=$?
cat "$WORK/broken.out"
[ "$rc" = 1 ] || fail "broken source: exit $rc, want 1"
grep -q "FAILED   $K1 .*make failed" "$WORK/broken.out" || fail "broken: no 'make failed'"
grep -q "| .*kfleet_drm.c.*error" "$WORK/broken.out" || fail "broken: the compiler error is not shown"
log=$(sed -n 's/^ *log: //p' "$WORK/broken.out")
[ -s "$log" ] && grep -q "this is not C" "$log" 2>/dev/null || grep -q "error" "$log" ||
	fail "broken: log $log lacks the error"
rc=0
kb build --profile broken --kernel "$K1" >"$WORK/broken2.out" 2>&1 || rc=$?
grep -q "skipped  $K1: the last build failed with the same inputs" "$WORK/broken2.out" ||
	{ cat "$WORK/broken2.out"; fail "a failed build must be skipped until --retry-failed"; }
kb build --profile broken --kernel "$K1" --retry-failed >"$WORK/broken3.out" 2>&1 || true
grep -q "FAILED   $K1" "$WORK/broken3.out" || fail "--retry-failed did not build again"
ok "broken source: make failed, compiler error and log shown; skipped until --retry-failed"

rc=0
kb build --profile badvm --driver 1.0 --kernel "$K1" >"$WORK/badvm.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || { cat "$WORK/badvm.out"; fail "vermagic mismatch: exit $rc"; }
grep -q "vermagic" "$WORK/badvm.out" || { cat "$WORK/badvm.out"; fail "vermagic not named"; }
kb artifacts list --profile badvm | grep -q "no artifacts" || fail "a bad module was stored"
ok "vermagic mismatch refused with the log"

# ---- a builder that dies mid-build: its build goes to the other one ----------
# The node's per-connection sshd processes are killed while the remote
# builder compiles: the connection drops, the build is queued again and the
# local builder makes it.
kb build --profile testdrv --kernel "$K1" --kernel "$K2" --force >"$WORK/lost.out" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
	grep -q "start    .* on remote" "$WORK/lost.out" && break
	sleep 0.1
done
grep -q "start    .* on remote" "$WORK/lost.out" || { wait "$pid" || true; cat "$WORK/lost.out"; fail "nothing started on remote"; }
sleep 1
pkill -KILL -P "$(cat "$FLEET/nodes/builder01/pid")" || fail "no sshd session to kill on builder01"
rc=0
wait "$pid" || rc=$?
cat "$WORK/lost.out"
[ "$rc" = 0 ] || fail "a lost builder failed the run (exit $rc)"
grep -q "lost     .* on remote" "$WORK/lost.out" || fail "the lost builder is not reported"
grep -q "2 built, 0 failed" "$WORK/lost.out" || fail "the requeued build was not made"
"$FLEET_SH" down --dir "$FLEET" >/dev/null
kb artifacts verify >/dev/null || fail "verify after a lost builder"
# (The orphaned container on the dead builder finishes on its own.)
for _ in $(seq 1 60); do
	[ -z "$(podman ps -a --filter name=kfleet-build- --format '{{.Names}}')" ] && break
	sleep 1
done
ok "a builder lost mid-build: its kernel requeued and built on the other builder"

# ---- Secure Boot signing: keys new, signed build, verify --------------------
kb keys new --dir "$WORK/keys" --type rsa2048 --cn "kfleet test key" >"$WORK/keys.out" ||
	fail "keys new"
grep -q "mokutil --import '$WORK/keys/signing_cert.der'" "$WORK/keys.out" || fail "no mokutil line"
sed "s|^build: |signing: {key: $WORK/keys/signing_key.pem, cert: $WORK/keys/signing_cert.der}\nbuild: |" \
	"$WORK/kfleet.yml" >"$WORK/kfleet-signed.yml"
grep -q "^signing:" "$WORK/kfleet-signed.yml" || fail "could not write the signing config"
kf --config "$WORK/kfleet-signed.yml" --state "$WORK/state-signed" build --profile testdrv \
	--kernel "$K1" --builder local >"$WORK/signed.out" 2>&1 || { cat "$WORK/signed.out"; fail "signed build"; }
kf --config "$WORK/kfleet-signed.yml" --state "$WORK/state-signed" artifacts verify >"$WORK/sverify.out" ||
	{ cat "$WORK/sverify.out"; fail "verify of the signed package"; }
python3 - "$WORK/state-signed/store/testdrv/1.0.0/kernel-$K1" <<'PY' || fail "signed package"
import json, os, sys, tarfile
d = sys.argv[1]
md = json.load(open(os.path.join(d, "metadata.json")))
assert md["signer"] and md["signer"]["subject"] == "CN=kfleet test key", md["signer"]
assert all(m["signed"] for m in md["modules"]), md["modules"]
tgz = [f for f in os.listdir(d) if f.endswith(".tar.gz")][0]
with tarfile.open(os.path.join(d, tgz)) as t:
    for m in t.getmembers():
        if m.name.endswith(".ko"):
            assert t.extractfile(m).read().endswith(b"~Module signature appended~\n"), m.name
PY
ok "signed build: every module carries the appended signature, verify checks it"

# ---- Ctrl-C: containers stopped, nothing half-stored -------------------------
before=$(kb artifacts list --json | python3 -c "import json,sys; print(sorted(a['sha256'] for a in json.load(sys.stdin)))")
# kfleet itself in the background (not a function: $! must be kfleet).
"$KFLEET" -i "$FLEET/inventory.yml" --known-hosts "$FLEET/known_hosts" --ssh-config none \
	--state "$WORK/state" --config "$WORK/kfleet.yml" build --profile testdrv --missing --force \
	-l 'node*' >"$WORK/int.out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
	grep -q "start    " "$WORK/int.out" && break
	sleep 0.1
done
sleep 2
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
cat "$WORK/int.out"
[ "$rc" = 1 ] || fail "interrupted build exited $rc, want 1"
grep -q "stopping the running builds" "$WORK/int.out" || fail "no stop message"
sleep 1
left=$(podman ps -a --filter name=kfleet-build- --format '{{.Names}}')
[ -z "$left" ] || fail "containers left after Ctrl-C: $left"
after=$(kb artifacts list --json | python3 -c "import json,sys; print(sorted(a['sha256'] for a in json.load(sys.stdin)))")
[ "$before" = "$after" ] || fail "the catalog changed after an interrupted build"
if find "$WORK/state/store" -name '.*' -type f | grep -q .; then
	fail "temporary files left in the store: $(find "$WORK/state/store" -name '.*' -type f)"
fi
kb artifacts verify >/dev/null || fail "verify after Ctrl-C"
ok "Ctrl-C: no container left, the store unchanged and intact"
