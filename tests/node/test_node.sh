#!/usr/bin/env bash
# deployer/node.sh on its own, as kfleet runs it (sh -c "$SCRIPT" kfleet-node
# ACTION ...), under dash, in a temporary root (KFLEET_ROOT=$T/root) with
# stub uname, modprobe, depmod, nvidia-smi, mokutil and df first in PATH: no
# root, no network. Packages are real ones, made by kf_mkpkg with
# build_package_write().
#
#   KF_SOURCE_DIR=. KF_MKPKG=build/tests/kf_mkpkg bash tests/node/test_node.sh
#
# NODE_SH picks the shell that runs node.sh (default dash); KEEP_WORK=1 keeps
# the temporary directory.
set -euo pipefail
: "${KF_SOURCE_DIR:?KF_SOURCE_DIR must name the source tree (ctest sets it)}"
: "${KF_MKPKG:?KF_MKPKG must name the kf_mkpkg helper (ctest sets it)}"

NODE_SH=${NODE_SH:-dash}
command -v "$NODE_SH" >/dev/null || NODE_SH='sh'
SCRIPT=$(cat "$KF_SOURCE_DIR/deployer/node.sh")
FIX=$KF_SOURCE_DIR/tests/fixtures/ko
T=$(mktemp -d /tmp/kfleet-node.XXXXXX)
R=$T/root
CTL=$T/ctl
K=6.1.0-41-amd64  # the running kernel (the fixtures' vermagic)
K2=6.1.0-42-amd64 # installed, not running
K3=6.1.0-43-amd64 # only a /boot image
OWNER=rollout-7@ctl.example.com
MODS="nvidia nvidia-modeset nvidia-drm nvidia-uvm"

cleanup() {
	if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
# Assertions

fail() {
	{
		echo "FAIL: $*"
		echo "--- last run: node ${LAST_ARGS:-}"
		echo "--- exit status: ${RC:-}"
		echo "--- stdout:"
		printf '%s\n' "${OUT:-}"
		echo "--- stderr:"
		printf '%s\n' "${ERR:-}"
	} >&2
	exit 1
}

ok() { echo "ok: $*"; }

want_rc() { # RC WHAT
	[ "$RC" = "$1" ] || fail "$2: exit status $RC, wanted $1"
}

last_line() {
	printf '%s\n' "$OUT" | tail -n 1
}

want_last() { # LINE WHAT
	local l
	l=$(last_line)
	[ "$l" = "$1" ] || fail "$2: last line is '$l', wanted '$1'"
}

want_ok() { # ACTION WHAT
	want_rc 0 "$2"
	want_last "ok $1" "$2"
}

want_error() { # RC WORD MESSAGE WHAT
	want_rc "$1" "$4"
	want_last "error $2 $3" "$4"
}

want_line() { # LINE WHAT
	grep -qxF -- "$1" <<<"$OUT" || fail "$2: no line '$1' on stdout"
}

want_no_line() { # EXTENDED-REGEX WHAT
	if grep -qE -- "$1" <<<"$OUT"; then fail "$2: a line on stdout matches '$1'"; fi
}

want_err() { # TEXT WHAT
	grep -qF -- "$1" <<<"$ERR" || fail "$2: stderr does not say '$1'"
}

want_out() { # EXPECTED-STDOUT WHAT (exact)
	[ "$OUT" = "$1" ] || fail "$2: stdout differs:$(diff <(printf '%s\n' "$1") <(printf '%s\n' "$OUT") || true)"
}

want_file() { # PATH CONTENT WHAT
	[ -f "$1" ] || fail "$3: $1 is missing"
	[ "$(cat "$1")" = "$2" ] || fail "$3: $1 holds:$(printf '\n%s' "$(cat "$1")")${NL}wanted:$(printf '\n%s' "$2")"
}

want_same() { # FILE FILE WHAT
	cmp -s "$1" "$2" || fail "$3: $1 and $2 differ"
}

want_absent() { # PATH WHAT
	if [ -e "$1" ] || [ -L "$1" ]; then fail "$2: $1 exists"; fi
}

want_calls() { # EXPECTED WHAT: the stub tools' call log since the last reset
	local got
	got=$(cat "$CTL/calls")
	[ "$got" = "$1" ] || fail "$2: the calls were:$(printf '\n%s' "$got")${NL}wanted:$(printf '\n%s' "$1")"
}

NL=$'\n'

# Every line of stdout is a record with a known tag, and only the last is
# "ok ..." or "error ...".
check_records() {
	local n=0 total line
	total=$(printf '%s\n' "$OUT" | wc -l)
	while IFS= read -r line; do
		n=$((n + 1))
		case ${line%% *} in
		node | arch | running | kernel | os | free | held | current | previous | files | loaded | \
			userspace | smi | secure_boot | sig_enforce | lock | tools | received | installed | \
			rolledback | check) ;;
		ok | error) [ "$n" = "$total" ] || fail "'$line' is not the last line of stdout" ;;
		*) fail "stdout line '$line' is not a record" ;;
		esac
	done <<<"$OUT"
	case $(last_line) in
	"ok $1" | "error "*) ;;
	*) fail "the last line of stdout is neither 'ok $1' nor an error" ;;
	esac
}

# node ACTION [ARGS...]: runs node.sh; OUT, ERR, RC. NODE_IN: its stdin;
# NODE_PATH: its PATH; NODE_ROOT: its KFLEET_ROOT; NODE_SH: the shell.
node() {
	LAST_ARGS="$*"
	set +e
	# shellcheck disable=SC2086 # NODE_SH may be "bash --posix"
	OUT=$(cd "$T" && env -i HOME="$T" KFLEET_ROOT="${NODE_ROOT-$R}" PATH="${NODE_PATH:-$STD_PATH}" \
		KF_STUB_CTL="$CTL" $NODE_SH -c "$SCRIPT" kfleet-node "$@" <"${NODE_IN:-/dev/null}" 2>"$T/stderr")
	RC=$?
	set -e
	ERR=$(cat "$T/stderr")
	check_records "${1:-}"
}

# A listing of the root: every entry with type, mode, size and link target,
# and the sha256 of every file. The log is left out (every action appends).
snapshot() {
	(
		cd "$R"
		find . -path ./var/lib/kfleet/log -prune -o -printf '%y %p %m %s %l\n' | LC_ALL=C sort
		find . -path ./var/lib/kfleet/log -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
	)
}

reset_calls() { : >"$CTL/calls"; }

# ---------------------------------------------------------------------------
# The assertions must be able to fail: each is tried on a wrong answer.

# Prints the name of each assertion that passes on a wrong answer (run in a
# subshell: it sets OUT, ERR and RC).
selftest_body() {
	RC=3 OUT=$'node 1\nok check' ERR=oops
	(want_rc 4 x) >/dev/null 2>&1 && echo "want_rc"
	(want_last "ok receive" x) >/dev/null 2>&1 && echo "want_last"
	(want_line "node 2" x) >/dev/null 2>&1 && echo "want_line"
	(want_no_line '^node' x) >/dev/null 2>&1 && echo "want_no_line"
	(want_err "fine" x) >/dev/null 2>&1 && echo "want_err"
	(want_out "node 1" x) >/dev/null 2>&1 && echo "want_out"
	(want_absent / x) >/dev/null 2>&1 && echo "want_absent"
	(want_same /etc/hostname /etc/passwd x) >/dev/null 2>&1 && echo "want_same"
	OUT=$'bogus line\nok check'
	(check_records check) >/dev/null 2>&1 && echo "check_records"
	OUT=$'ok check\nnode 1'
	(check_records check) >/dev/null 2>&1 && echo "check_records (order)"
	true
}

selftest() {
	local s
	s=$(selftest_body)
	[ -z "$s" ] || fail "these assertions pass on a wrong answer: $s"
	ok "the assertion helpers fail on wrong answers"
}

# ---------------------------------------------------------------------------
# Stubs and the temporary root

make_stubs() {
	local t p real_uname real_df
	mkdir -p "$T/bin" "$T/smi" "$T/sysbin" "$T/sysbin-nocmp"
	real_uname=$(command -v uname)
	real_df=$(command -v df)
	# The system tools node.sh, install.sh and the stubs use, and no more: a
	# host's own nvidia-smi or kmod must not answer instead of a stub.
	for t in sh dash bash cat cp mv rm rmdir mkdir ls cmp tar gzip sha256sum date grep head sort \
		wc chmod tr sed find tail od timeout id sleep env xargs; do
		p=$(command -v "$t") || fail "the test needs $t"
		ln -s "$p" "$T/sysbin/$t"
		[ "$t" = cmp ] || ln -s "$p" "$T/sysbin-nocmp/$t"
	done

	cat >"$T/bin/uname" <<EOF
#!/bin/bash
case \${1:-} in
-r) cat "\$KF_STUB_CTL/running" ;;
-m) echo x86_64 ;;
*) exec $real_uname "\$@" ;;
esac
EOF

	cat >"$T/bin/df" <<EOF
#!/bin/bash
# A full disk when ctl/df_avail says how many KiB are free; a broken df with
# ctl/df_fail.
if [ -f "\$KF_STUB_CTL/df_fail" ]; then
	echo "df: cannot read table of mounted file systems" >&2
	exit 1
fi
if [ -f "\$KF_STUB_CTL/df_avail" ]; then
	echo "Filesystem     1024-blocks  Used Available Capacity Mounted on"
	echo "/dev/fake 99999999 1 \$(cat "\$KF_STUB_CTL/df_avail") 1% /"
	exit 0
fi
exec $real_df "\$@"
EOF

	cat >"$T/bin/mokutil" <<'EOF'
#!/bin/bash
echo "SecureBoot disabled"
EOF

	cat >"$T/smi/nvidia-smi" <<'EOF'
#!/bin/bash
case $(cat "$KF_STUB_CTL/smi" 2>/dev/null) in
mismatch)
	echo "Failed to initialize NVML: Driver/library version mismatch"
	exit 18
	;;
esac
case "$*" in
*--query-gpu=driver_version*) echo "550.54.15" ;;
*) echo "+-- stub nvidia-smi table --+" ;;
esac
EOF

	# depmod -b ROOT -a K: ROOT/lib/modules/K/modules.dep, updates/ first;
	# dependencies from the modules' depends= among the modules found.
	cat >"$T/bin/depmod" <<'EOF'
#!/bin/bash
set -u
root='' k=''
while [ $# -gt 0 ]; do
	case $1 in
	-b) root=$2; shift 2 ;;
	-a) shift ;;
	-*) echo "depmod stub: unknown option $1" >&2; exit 99 ;;
	*) k=$1; shift ;;
	esac
done
[ -n "$root" ] || { echo "depmod stub: called without -b ROOT" >&2; exit 99; }
[ -n "$k" ] || { echo "depmod stub: no kernel release" >&2; exit 99; }
echo "depmod $k" >>"$KF_STUB_CTL/calls"
d=$root/lib/modules/$k
[ -d "$d" ] || { echo "depmod: ERROR: could not open directory $d: No such file or directory" >&2; exit 1; }
mapfile -t kos < <(cd "$d" && {
	find updates -name '*.ko' 2>/dev/null | LC_ALL=C sort
	find . -path ./updates -prune -o -name '*.ko' -print | sed 's|^\./||' | LC_ALL=C sort
})
out=''
for ko in "${kos[@]}"; do
	line="$ko:"
	deps=$(tr '\0' '\n' <"$d/$ko" | sed -n 's/^depends=//p' | head -n 1)
	IFS=, read -ra dl <<<"$deps"
	for dn in "${dl[@]}"; do
		dn=${dn//-/_}
		for c in "${kos[@]}"; do
			b=${c##*/}; b=${b%.ko}; b=${b//-/_}
			if [ "$b" = "$dn" ]; then line="$line $c"; break; fi
		done
	done
	out+="$line"$'\n'
done
printf '%s' "$out" >"$d/modules.dep.new" && mv "$d/modules.dep.new" "$d/modules.dep"
EOF

	# modprobe -d ROOT [-r] NAME: /sys/module under ROOT. Loading follows
	# ROOT/lib/modules/$(uname -r)/modules.dep (dependencies first), checks
	# vermagic, writes version and holders. ctl/modprobe_fail_NAME: fail with
	# its text; ctl/busy_NAME: NAME cannot be removed; holders block removal.
	cat >"$T/bin/modprobe" <<'EOF'
#!/bin/bash
set -u
ctl=$KF_STUB_CTL root='' remove=0 dry=0 quiet=0
while [ $# -gt 0 ]; do
	case $1 in
	-d) root=$2; shift 2 ;;
	-r) remove=1; shift ;;
	-n) dry=1; shift ;;
	-q) quiet=1; shift ;;
	-*) echo "modprobe stub: unknown option $1" >&2; exit 99 ;;
	*) break ;;
	esac
done
[ -n "$root" ] || { echo "modprobe stub: called without -d ROOT" >&2; exit 99; }
[ $# -eq 1 ] || { echo "modprobe stub: wants one module, got: $*" >&2; exit 99; }
arg=$1
name=${1//-/_}
k=$(uname -r)
sys=$root/sys/module
if [ "$remove" = 1 ]; then
	echo "modprobe -r $arg" >>"$ctl/calls"
	[ -d "$sys/$name" ] || exit 0
	if [ -e "$ctl/busy_$name" ] || [ -n "$(ls -A "$sys/$name/holders" 2>/dev/null)" ]; then
		echo "modprobe: FATAL: Module $name is in use." >&2
		exit 1
	fi
	rm -rf "${sys:?}/$name"
	rmdir "$sys"/*/holders/"$name" 2>/dev/null
	exit 0
fi
if [ "$dry" = 1 ]; then
	# -n: is there such a module (in modules.dep)? Nothing is loaded.
	while IFS= read -r l; do
		b=${l%%:*}; b=${b##*/}; b=${b%.ko}; b=${b//-/_}
		[ "$b" = "$name" ] && exit 0
	done <"$root/lib/modules/$k/modules.dep" 2>/dev/null
	[ "$quiet" = 1 ] || echo "modprobe: FATAL: Module $arg not found in directory /lib/modules/$k" >&2
	exit 1
fi
echo "modprobe $arg" >>"$ctl/calls"
if [ -f "$ctl/modprobe_fail_$name" ]; then
	cat "$ctl/modprobe_fail_$name" >&2
	exit 1
fi
dep=$root/lib/modules/$k/modules.dep
load() { # NAME SHOWN
	local n=$1 line='' l path deps d dn f vm ver b
	[ -d "$sys/$n" ] && return 0
	if [ -f "$dep" ]; then
		while IFS= read -r l; do
			path=${l%%:*}; b=${path##*/}; b=${b%.ko}; b=${b//-/_}
			if [ "$b" = "$n" ]; then line=$l; break; fi
		done <"$dep"
	fi
	if [ -z "$line" ]; then
		echo "modprobe: FATAL: Module $2 not found in directory /lib/modules/$k" >&2
		return 1
	fi
	path=${line%%:*}
	deps=${line#*:}
	for d in $deps; do
		dn=${d##*/}; dn=${dn%.ko}; dn=${dn//-/_}
		load "$dn" "$dn" || return 1
	done
	f=$root/lib/modules/$k/$path
	vm=$(tr '\0' '\n' <"$f" | sed -n 's/^vermagic=//p' | head -n 1)
	if [ "${vm%% *}" != "$k" ]; then
		echo "modprobe: ERROR: could not insert '$n': Exec format error" >&2
		return 1
	fi
	ver=$(tr '\0' '\n' <"$f" | sed -n 's/^version=//p' | head -n 1)
	mkdir -p "$sys/$n/holders"
	[ -z "$ver" ] || echo "$ver" >"$sys/$n/version"
	echo live >"$sys/$n/initstate"
	for d in $deps; do
		dn=${d##*/}; dn=${dn%.ko}; dn=${dn//-/_}
		mkdir -p "$sys/$dn/holders/$n"
	done
}
load "$name" "$arg"
EOF
	chmod 0755 "$T/bin/"* "$T/smi/"*
	STD_PATH=$T/bin:$T/smi:$T/sysbin
	NOSMI_PATH=$T/bin:$T/sysbin
}

# A module of the distribution's own tree (not a package): only what the
# stubs read, .modinfo strings.
distro_module() { # PATH NAME [VERSION]
	mkdir -p "${1%/*}"
	printf 'name=%s\0vermagic=%s SMP mod_unload \0depends=\0%s' "$2" "$K" "${3:+version=$3}" >"$1"
}

make_root() {
	rm -rf "$R" "$CTL"
	mkdir -p "$R" "$CTL"
	echo "$K" >"$CTL/running"
	reset_calls
	mkdir -p "$R/lib/modules/$K2" "$R/lib/modules/5.10.0-old" "$R/lib/modules/bad\$(x)" "$R/boot" \
		"$R/etc" "$R/sys/module/module/parameters" "$R/proc"
	distro_module "$R/lib/modules/$K/kernel/drivers/gpu/drm/drm.ko" drm
	PATH=$STD_PATH KF_STUB_CTL=$CTL depmod -b "$R" -a "$K"
	PATH=$STD_PATH KF_STUB_CTL=$CTL depmod -b "$R" -a "$K2"
	: >"$R/lib/modules/bad\$(x)/modules.dep"
	: >"$R/boot/vmlinuz-$K"
	: >"$R/boot/vmlinuz-$K3"
	printf '%s\n' 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' 'NAME="Debian GNU/Linux"' \
		'VERSION_ID="12"' 'VERSION="12 (bookworm)"' 'ID=debian' >"$R/etc/os-release"
	echo N >"$R/sys/module/module/parameters/sig_enforce"
	reset_calls
}

# mkpkg NAME DRIVER KERNEL MODULE...: T/pkg/NAME.tar.gz; DRV_NAME, KER_NAME,
# SHA_NAME, SIZE_NAME.
mkpkg() {
	local name=$1 d=$2 k=$3 sha size
	shift 3
	mkdir -p "$T/pkg"
	read -r sha size < <("$KF_MKPKG" --driver "$d" --kernel "$k" --out "$T/pkg/$name.tar.gz" "$@") ||
		fail "kf_mkpkg $name failed"
	[ "$size" = "$(stat -c %s "$T/pkg/$name.tar.gz")" ] || fail "kf_mkpkg $name: wrong size"
	printf -v "DRV_$name" %s "$d"
	printf -v "KER_$name" %s "$k"
	printf -v "SHA_$name" %s "$sha"
	printf -v "SIZE_$name" %s "$size"
	mkdir -p "$T/pkg/$name"
	tar -xzf "$T/pkg/$name.tar.gz" -C "$T/pkg/$name" --strip-components=1
}

v() { # VARNAME: its value
	printf '%s' "${!1}"
}

receive() { # PKG [more options]: node receive of that package
	local p=$1
	shift
	NODE_IN=$T/pkg/$p.tar.gz node receive --driver "$(v "DRV_$p")" --kernel "$(v "KER_$p")" \
		--sha256 "$(v "SHA_$p")" --size "$(v "SIZE_$p")" --owner "$OWNER" "$@"
}

install_pkg() { # PKG [more options]
	local p=$1
	shift
	node install --profile nvidia-run --driver "$(v "DRV_$p")" --kernel "$(v "KER_$p")" \
		--sha256 "$(v "SHA_$p")" --owner "$OWNER" "$@"
}

# The expected check output around what varies (free KiB, lock epoch).
normalize() {
	sed -E -e 's/^(free [^ ]+) [0-9]+$/\1 N/' -e 's/^(lock [^ ]+) [0-9]+$/\1 SINCE/' <<<"$OUT"
}

want_check() { # EXPECTED WHAT
	local got
	got=$(normalize)
	[ "$got" = "$1" ] || fail "$2: check output differs:$(diff <(printf '%s\n' "$1") <(printf '%s\n' "$got") || true)"
}

check_head() {
	printf '%s\n' "node 1" "arch x86_64" "running $K" "kernel $K" "kernel $K2" "kernel $K3" "os debian 12" \
		"free /var/lib/kfleet N" "free /lib/modules N"
}

check_tail() { # LOCK-LINE
	printf '%s\n' "userspace 550.54.15" "smi present" "secure_boot disabled" "sig_enforce 0" "$1" "ok check"
}

# ---------------------------------------------------------------------------
# Tests

test_usage() {
	local sha64 cases c want args
	sha64=$(printf '%064d' 0)
	node
	want_rc 2 "no action"
	want_last "error usage no action given: check, receive, install, load, verify, rollback or unlock" "no action"
	node frobnicate --driver 1.0
	want_error 2 usage "unknown action 'frobnicate': check, receive, install, load, verify, rollback or unlock" \
		"unknown action"
	ok "no action, unknown action: exit 2, named"

	# ARG^ARG^... | the bad value the message must name
	cases=(
		"install^--profile^p^--driver^1.0^--sha256^$sha64^--owner^o^--kernel^6.1.0\$(touch $T/pwned)|bad --kernel '6.1.0\$(touch $T/pwned)'"
		"install^--profile^p^--driver^1.0^--sha256^$sha64^--owner^o^--kernel^6.1.0-41;reboot|bad --kernel '6.1.0-41;reboot'"
		"install^--profile^p^--driver^1.0^--sha256^$sha64^--owner^o^--kernel^amd64-6.1|bad --kernel 'amd64-6.1'"
		"receive^--driver^1.0^--kernel^$K^--size^1^--owner^o^--sha256^${sha64^^}X|bad --sha256 '${sha64^^}X'"
		"receive^--driver^1.0^--kernel^$K^--size^1^--owner^o^--sha256^${sha64:1}|bad --sha256 '${sha64:1}'"
		"receive^--driver^1.0^--kernel^$K^--sha256^$sha64^--owner^o^--size^12a|bad --size '12a'"
		"receive^--driver^1.0^--kernel^$K^--sha256^$sha64^--owner^o^--size^1234567890123456|bad --size '1234567890123456'"
		"check^--driver^550|bad --driver '550'"
		"check^--driver^1.2.3.4.5|bad --driver '1.2.3.4.5'"
		"check^--driver^1..2|bad --driver '1..2'"
		"check^--modules^nvidia -r|bad module name '-r' in --modules"
		"check^--modules^nvidia;x|bad module name 'nvidia;x' in --modules"
		"unlock^--owner^a/b|bad --owner 'a/b'"
		"verify^--driver^1.0^--kernel^$K^--smi^maybe|bad --smi 'maybe'"
		"rollback^--profile^p^--kernel^$K^--owner^o^--to^latest|bad --to 'latest'"
		"install^--profile^p/q^--driver^1.0^--kernel^$K^--sha256^$sha64^--owner^o|bad --profile 'p/q'"
		"check^--frob^1|unknown option '--frob'"
		"check^--kernel^$K|check does not take --kernel"
		"install^--profile^p^--driver^1.0^--kernel^$K^--owner^o|install needs --sha256"
		"check^--driver^1.0^--driver^1.1|--driver given twice"
		"check^--driver|--driver needs a value"
		"unlock^--owner^o^--break-lock=yes|--break-lock takes no value"
		"verify^--driver^1.0^--kernel^$K^--loaded|verify --loaded needs --modules"
		"rollback^--profile^p^--kernel^$K^--owner^o^--to^none^--modules^nvidia|rollback takes --modules and --unload only with --reload"
	)
	for c in "${cases[@]}"; do
		want=${c#*|}
		c=${c%%|*}
		IFS='^' read -ra args <<<"$c"
		node "${args[@]}"
		want_rc 2 "$c"
		case $(last_line) in
		"error usage "*"$want"*) ;;
		*) fail "$c: the usage error does not say \"$want\"" ;;
		esac
		want_absent "$R/var/lib/kfleet" "$c"
	done
	want_absent "$T/pwned" "a kernel with \$(...)"
	# A module list with a space inside one argument is two names.
	node check --modules "nvidia nvidia;x"
	want_rc 2 "module list"
	want_last "error usage bad module name 'nvidia;x' in --modules: 1 to 55 of A-Z a-z 0-9 _ -, not starting with -" \
		"module list"
	NODE_ROOT=relative/root node check
	want_error 2 usage "KFLEET_ROOT must be an absolute path" "relative KFLEET_ROOT"
	ok "bad values (shell metacharacters, bad sha256, size, driver, module, owner, smi, to): exit 2, the value named, nothing written"
}

test_check_empty() {
	node check --modules "nvidia nvidia-uvm"
	want_ok check "check on an empty node"
	want_check "$(check_head)
loaded nvidia none
loaded nvidia-uvm none
$(check_tail "lock free")" "check on an empty node"
	want_absent "$R/var/lib/kfleet" "check is read-only"
	ok "check on an empty node: kernels sorted (bad names and trees without modules.dep skipped), os, free, loaded none, lock free"

	mkdir -p "$R/usr/lib/x86_64-linux-gnu"
	: >"$R/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.183.01"
	: >"$R/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
	NODE_PATH=$NOSMI_PATH node check
	want_ok check "check without nvidia-smi"
	want_line "userspace 535.183.01" "userspace from libnvidia-ml.so.X.Y.Z"
	want_line "smi absent" "no nvidia-smi"
	echo mismatch >"$CTL/smi"
	node check
	want_line "userspace 535.183.01" "nvidia-smi failing: the library's version"
	want_line "smi present" "nvidia-smi failing is still present"
	rm -f "$R/usr/lib/x86_64-linux-gnu/libnvidia-ml.so."* "$CTL/smi"
	NODE_PATH=$NOSMI_PATH node check
	want_line "userspace -" "no userspace driver"
	ok "check: userspace from nvidia-smi, else libnvidia-ml.so.X.Y.Z, else -; smi present|absent"

	# An empty --modules is --modules not given; no free line without df;
	# os-release without VERSION_ID (Debian testing).
	: >"$CTL/df_fail"
	cp "$R/etc/os-release" "$T/os-release.save"
	grep -v VERSION_ID "$T/os-release.save" >"$R/etc/os-release"
	node check --modules ""
	want_ok check "check with an empty --modules"
	want_no_line "^(loaded|free) " "check with an empty --modules and df failing"
	want_line "os debian -" "os-release without VERSION_ID"
	rm -f "$CTL/df_fail"
	cp "$T/os-release.save" "$R/etc/os-release"
	node load --driver 1.0 --kernel "$K" --modules " " --owner o
	want_error 2 usage "load needs --modules" "load with an empty --modules"
	ok "check: an empty --modules is none given, no free line when df fails, os ID without VERSION_ID"

	NODE_PATH=$T/bin:$T/smi:$T/sysbin-nocmp node check
	want_ok check "check without cmp"
	[ "$(printf '%s\n' "$OUT" | tail -n 2 | head -n 1)" = "tools missing cmp" ] ||
		fail "check without cmp: no 'tools missing cmp' before ok"
	ok "check names missing tools"
}

test_receive() {
	local before after
	receive A
	want_ok receive "receive A"
	want_line "received $DRV_A $K $SHA_A" "receive A"
	want_file "$R/var/lib/kfleet/releases/$DRV_A/$K/sha256" "$SHA_A" "receive A"
	want_same "$T/pkg/A/install.sh" "$R/var/lib/kfleet/releases/$DRV_A/$K/pkg/install.sh" "receive A"
	want_same "$FIX/nvidia-uvm.ko" "$R/var/lib/kfleet/releases/$DRV_A/$K/pkg/modules/nvidia-uvm.ko" "receive A"
	[ -z "$(ls -A "$R/var/lib/kfleet/incoming")" ] || fail "receive A: incoming/ is not empty"
	grep -qE "^$OWNER [0-9]+\$" "$R/var/lib/kfleet/lock/owner" || fail "receive A: lock/owner is not 'OWNER EPOCH'"
	[ "$(stat -c %a "$R/var/lib/kfleet")" = 755 ] || fail "receive: /var/lib/kfleet is not 0755"
	ok "receive: unpacked to releases/D/K/pkg, sha256 written, incoming/ cleaned, lock taken"

	before=$(stat -c %i "$R/var/lib/kfleet/releases/$DRV_A/$K")
	receive A
	want_ok receive "receive A again"
	want_line "received $DRV_A $K $SHA_A" "receive A again"
	[ "$before" = "$(stat -c %i "$R/var/lib/kfleet/releases/$DRV_A/$K")" ] ||
		fail "receive A again: the held release was replaced"
	want_err "held already" "receive A again"
	ok "receive of a release already held: left as it is"

	before=$(snapshot)
	# Wrong bytes, right size: one byte of A changed.
	cp "$T/pkg/A.tar.gz" "$T/bad.tar.gz"
	printf 'X' | dd of="$T/bad.tar.gz" bs=1 seek=100 conv=notrunc status=none
	local badsha
	badsha=$(sha256sum <"$T/bad.tar.gz")
	badsha=${badsha%% *}
	NODE_IN=$T/bad.tar.gz node receive --driver 9.9.9 --kernel "$K" --sha256 "$SHA_A" --size "$SIZE_A" --owner "$OWNER"
	want_error 11 sha256 "received $SIZE_A bytes with sha256 $badsha, expected $SIZE_A bytes with $SHA_A: nothing changed" \
		"receive of wrong bytes"
	after=$(snapshot)
	[ "$before" = "$after" ] || fail "receive of wrong bytes changed the node:$(diff <(echo "$before") <(echo "$after"))"
	ok "receive of wrong bytes: exit 11, nothing changed on the node (listing and sha256 of every file)"

	NODE_IN=$T/pkg/A.tar.gz node receive --driver 9.9.9 --kernel "$K" --sha256 "$SHA_A" --size $((SIZE_A + 1)) --owner "$OWNER"
	want_error 11 sha256 "received $SIZE_A bytes with sha256 $SHA_A, expected $((SIZE_A + 1)) bytes with $SHA_A: nothing changed" \
		"receive of too few bytes"
	head -c $((SIZE_A - 1)) "$T/pkg/A.tar.gz" >"$T/short"
	badsha=$(sha256sum <"$T/short")
	badsha=${badsha%% *}
	NODE_IN=$T/pkg/A.tar.gz node receive --driver 9.9.9 --kernel "$K" --sha256 "$SHA_A" --size $((SIZE_A - 1)) --owner "$OWNER"
	want_error 11 sha256 "received $((SIZE_A - 1)) bytes with sha256 $badsha, expected $((SIZE_A - 1)) bytes with $SHA_A: nothing changed" \
		"receive with a smaller size announced"
	after=$(snapshot)
	[ "$before" = "$after" ] || fail "receive of a wrong size changed the node:$(diff <(echo "$before") <(echo "$after"))"
	ok "receive with a wrong size: exit 11, exactly N bytes read, nothing changed"

	echo 1500 >"$CTL/df_avail"
	NODE_IN=$T/pkg/A.tar.gz node receive --driver 9.9.9 --kernel "$K" --sha256 "$SHA_A" --size 1000000 --owner "$OWNER"
	want_error 12 space "/var/lib/kfleet $(((3 * 1000000 + 1023) / 1024 + 1024)) 1500" "receive without space"
	rm -f "$CTL/df_avail"
	after=$(snapshot)
	[ "$before" = "$after" ] || fail "receive without space changed the node"
	ok "receive without space (fake df): exit 12 with PATH NEED HAVE, nothing changed"

	# Malicious and malformed archives (python's tarfile writes what tar won't).
	mkdir -p "$T/evil"
	python3 - "$T" <<'EOF'
import io, sys, tarfile
t = sys.argv[1]
top = "nvidia-driver-9.9.9-kernel-6.1.0-41-amd64-x86_64"
def mk(name, members):
    with tarfile.open(f"{t}/evil/{name}.tar.gz", "w:gz") as tf:
        for m in members:
            kind, path = m[0], m[1]
            ti = tarfile.TarInfo(path)
            if kind == "d":
                ti.type = tarfile.DIRTYPE; ti.mode = 0o755; tf.addfile(ti)
            elif kind == "f":
                data = m[2] if len(m) > 2 else b"x\n"
                ti.size = len(data); ti.mode = 0o644; tf.addfile(ti, io.BytesIO(data))
            elif kind == "l":
                ti.type = tarfile.SYMTYPE; ti.linkname = m[2]; tf.addfile(ti)
            elif kind == "h":
                ti.type = tarfile.LNKTYPE; ti.linkname = m[2]; tf.addfile(ti)
good = [("d", top + "/"), ("f", top + "/install.sh"), ("f", top + "/uninstall.sh"),
        ("d", top + "/modules/"), ("f", top + "/modules/nvidia.ko")]
mk("absolute", good + [("f", f"{t}/evil-absolute")])
mk("dotdot", good + [("f", top + "/../../../../../../../.." + t + "/evil-dotdot")])
mk("twotops", good + [("f", "other/evil")])
mk("dot", [("d", "./"), ("f", "./install.sh")])
mk("symlink", good[:3] + [("l", top + "/modules", t + "/evil-dir"), ("f", top + "/modules/nvidia.ko")])
mk("hardlink", good + [("h", top + "/modules/passwd", "/etc/passwd")])
mk("noinstall", [g for g in good if not g[1].endswith("install.sh") or "uninstall" in g[1]])
mk("nomodules", good[:3])
with open(f"{t}/evil/notgzip.tar.gz", "wb") as f:
    f.write(b"this is not a gzip file\n" * 10)
EOF
	local e sha size want
	for e in absolute:"has an absolute path" dotdot:"has a '..' component" twotops:"more than one top directory" \
		dot:"is not under a top directory" symlink:"only files and directories are allowed" \
		hardlink:"only files and directories are allowed" noinstall:"no install.sh" \
		nomodules:"no modules/*.ko" notgzip:"tar -tzf failed"; do
		want=${e#*:}
		e=${e%%:*}
		sha=$(sha256sum <"$T/evil/$e.tar.gz")
		sha=${sha%% *}
		size=$(stat -c %s "$T/evil/$e.tar.gz")
		NODE_IN=$T/evil/$e.tar.gz node receive --driver 9.9.9 --kernel "$K" --sha256 "$sha" --size "$size" --owner "$OWNER"
		want_rc 17 "malicious archive $e"
		case $(last_line) in
		"error package the package is malformed: "*"$want"*) ;;
		*) fail "malicious archive $e: the error does not say '$want'" ;;
		esac
		after=$(snapshot)
		[ "$before" = "$after" ] ||
			fail "malicious archive $e changed the node:$(diff <(echo "$before") <(echo "$after"))"
	done
	want_absent "$T/evil-absolute" "absolute member"
	want_absent "$T/evil-dotdot" "'..' member"
	want_absent "$T/evil-dir" "symlink member"
	ok "receive of malicious or malformed archives (absolute path, .., two top directories, symlink, hard link, no install.sh, no modules, not gzip): exit 17, nothing changed"

	NODE_IN=$T/pkg/A.tar.gz node receive --driver "$DRV_A" --kernel "$K" --sha256 "$SHA_A" --size "$SIZE_A" --owner other@host
	want_rc 10 "receive locked by another"
	case $(last_line) in
	"error locked $OWNER "[0-9]*) ;;
	*) fail "receive locked by another: not 'error locked OWNER SINCE'" ;;
	esac
	ok "receive while another owner holds the lock: exit 10"

	# A rebuilt package of the same driver and kernel replaces the held one.
	receive A2
	want_ok receive "receive A2"
	want_file "$R/var/lib/kfleet/releases/$DRV_A/$K/sha256" "$SHA_A2" "receive A2"
	want_same "$T/pkg/A2/modules/nvidia.ko" "$R/var/lib/kfleet/releases/$DRV_A/$K/pkg/modules/nvidia.ko" "receive A2"
	want_err "replacing the release" "receive A2"
	[ -z "$(find "$R/var/lib/kfleet/releases/$DRV_A" -mindepth 1 -maxdepth 1 -name '.*')" ] ||
		fail "receive A2: temporary directories left"
	receive A
	want_ok receive "receive A back"
	want_file "$R/var/lib/kfleet/releases/$DRV_A/$K/sha256" "$SHA_A" "receive A back"
	ok "receive of another package of the same driver and kernel replaces the held release"

	# What a receive killed midway leaves: incoming files, a half-unpacked
	# release, a release moved aside before its replacement came.
	local dead kl=$R/var/lib/kfleet
	sleep 0 &
	dead=$!
	wait "$dead"
	: >"$kl/incoming/$SHA_B.$dead"
	: >"$kl/incoming/$SHA_B.$dead.list.t"
	mkdir -p "$kl/releases/9.9.9/.$K.new.$dead/pkg"
	mv "$kl/releases/$DRV_A/$K" "$kl/releases/$DRV_A/.$K.old.$dead"
	receive A
	want_ok receive "receive after an interrupted one"
	want_err "held already" "receive after an interrupted one: the release moved aside is back"
	want_file "$kl/releases/$DRV_A/$K/sha256" "$SHA_A" "receive after an interrupted one"
	[ -z "$(ls -A "$kl/incoming")" ] || fail "receive after an interrupted one: incoming/ not cleaned"
	want_absent "$kl/releases/9.9.9/.$K.new.$dead" "receive after an interrupted one"
	want_absent "$kl/releases/$DRV_A/.$K.old.$dead" "receive after an interrupted one"
	rmdir "$kl/releases/9.9.9"
	ok "receive cleans what a killed receive left (incoming files, .K.new.PID) and puts a .K.old.PID back"
}

test_install() {
	local st before after ino
	reset_calls
	install_pkg A
	want_ok install "install A"
	want_line "installed $K $DRV_A $SHA_A" "install A"
	for m in nvidia nvidia-modeset nvidia-drm nvidia-uvm; do
		want_same "$FIX/$m.ko" "$R/lib/modules/$K/updates/kfleet/$m.ko" "install A"
	done
	want_calls "depmod $K" "install A runs depmod once"
	grep -qx "updates/kfleet/nvidia-uvm.ko: updates/kfleet/nvidia.ko" "$R/lib/modules/$K/modules.dep" ||
		fail "install A: modules.dep does not name updates/kfleet/nvidia-uvm.ko"
	st="# kfleet node state; written by kfleet-node, do not edit
driver=$DRV_A
kernel=$K
current $K $DRV_A $SHA_A nvidia-run"
	want_file "$R/var/lib/kfleet/state" "$st" "install A: state"
	ok "install: modules in lib/modules/K/updates/kfleet, depmod ran, state written"

	node check --modules "nvidia nvidia-uvm"
	want_ok check "check after install"
	want_check "$(check_head)
held $DRV_A $K $SHA_A
current $K $DRV_A $SHA_A nvidia-run
files $K ok
loaded nvidia none
loaded nvidia-uvm none
$(check_tail "lock $OWNER SINCE")" "check after install"
	ok "check after install: held, current, files ok, lock OWNER SINCE"

	before=$(snapshot)
	ino=$(stat -c %i "$R/var/lib/kfleet/state")
	install_pkg A
	want_ok install "install A again"
	after=$(snapshot)
	[ "$before" = "$after" ] || fail "install A again changed the node:$(diff <(echo "$before") <(echo "$after"))"
	[ "$ino" = "$(stat -c %i "$R/var/lib/kfleet/state")" ] || fail "install A again rewrote the state file"
	ok "install twice: no change (listing, file contents, state file not rewritten)"

	install_pkg B
	want_error 16 missing "release $DRV_B for $K is not on the node (or not complete): receive it first" "install before receive"
	node install --profile nvidia-run --driver "$DRV_A" --kernel "$K" --sha256 "$SHA_B" --owner "$OWNER"
	want_error 16 missing "release $DRV_A for $K on the node has sha256 $SHA_A, not $SHA_B: receive it again" \
		"install with another sha256"
	ok "install of a release not held, or held with another sha256: exit 16"

	receive B
	want_ok receive "receive B"
	install_pkg B
	want_ok install "install B"
	for m in nvidia nvidia-modeset nvidia-drm nvidia-uvm; do
		want_same "$T/pkg/B/modules/$m.ko" "$R/lib/modules/$K/updates/kfleet/$m.ko" "install B"
	done
	st="# kfleet node state; written by kfleet-node, do not edit
driver=$DRV_B
kernel=$K
current $K $DRV_B $SHA_B nvidia-run
previous $K $DRV_A $SHA_A nvidia-run"
	want_file "$R/var/lib/kfleet/state" "$st" "install B: state"
	[ -f "$R/var/lib/kfleet/releases/$DRV_A/$K/sha256" ] || fail "install B: the previous release was removed"
	ok "install of a second driver: previous = the first, kept on disk"

	# A person's edit: a bad line is ignored and dropped at the next write.
	printf '%s\n' "current $K 1.0 notasha x" "garbage" >>"$R/var/lib/kfleet/state"
	receive C
	install_pkg C
	want_ok install "install C"
	st="# kfleet node state; written by kfleet-node, do not edit
driver=$DRV_C
kernel=$K
current $K $DRV_C $SHA_C nvidia-run
previous $K $DRV_B $SHA_B nvidia-run"
	want_file "$R/var/lib/kfleet/state" "$st" "install C: state"
	want_absent "$R/var/lib/kfleet/releases/$DRV_A" "install C prunes A"
	[ -f "$R/var/lib/kfleet/releases/$DRV_B/$K/sha256" ] || fail "install C removed the previous release"
	node check
	want_line "held $DRV_C $K $SHA_C" "check after install C"
	want_line "held $DRV_B $K $SHA_B" "check after install C"
	want_no_line "^held $DRV_A " "check after install C"
	ok "install of a third driver: releases neither current nor previous pruned; bad state lines dropped"

	# A kernel autoremoved since: its releases go at the next install.
	mkdir -p "$R/lib/modules/6.0.0-gone-amd64"
	receive D
	want_ok receive "receive D (for a kernel about to be removed)"
	rm -rf "$R/lib/modules/6.0.0-gone-amd64"
	install_pkg C
	want_ok install "install C again, a kernel gone"
	want_absent "$R/var/lib/kfleet/releases/$DRV_D" "install prunes the release of a kernel no longer installed"
	[ -f "$R/var/lib/kfleet/releases/$DRV_C/$K/sha256" ] || fail "install C again removed the current release"
	[ -f "$R/var/lib/kfleet/releases/$DRV_B/$K/sha256" ] || fail "install C again removed the previous release"
	grep -q "removing the release $DRV_D for 6.0.0-gone-amd64 (that kernel is no longer installed)" <<<"$ERR$OUT" ||
		fail "install C again: no word of the release it removed: $ERR$OUT"
	node check
	want_no_line "^held $DRV_D " "check after a kernel's removal"
	ok "install: the releases of a kernel no longer installed are removed"
}

test_load() {
	reset_calls
	node load --driver "$DRV_C" --kernel "$K" --modules "$MODS" --owner "$OWNER"
	want_ok load "load C"
	want_out "loaded nvidia $DRV_C
loaded nvidia-modeset $DRV_C
loaded nvidia-drm $DRV_C
loaded nvidia-uvm $DRV_C
ok load" "load C"
	want_calls "modprobe nvidia
modprobe nvidia-modeset
modprobe nvidia-drm
modprobe nvidia-uvm" "load C, nothing loaded before"
	[ "$(cat "$R/sys/module/nvidia/version")" = "$DRV_C" ] || fail "load C: nvidia is not loaded"
	ok "load: modules loaded in order, versions printed"

	reset_calls
	node load --driver "$DRV_C" --kernel "$K" --modules "$MODS" --owner "$OWNER"
	want_ok load "load C again"
	want_calls "modprobe -r nvidia-uvm
modprobe -r nvidia-drm
modprobe -r nvidia-modeset
modprobe -r nvidia
modprobe nvidia
modprobe nvidia-modeset
modprobe nvidia-drm
modprobe nvidia-uvm" "load C again"
	ok "load again: unloads in reverse order, loads in order"

	node load --driver "$DRV_B" --kernel "$K" --modules "$MODS" --owner "$OWNER"
	want_error 16 missing "driver $DRV_B is not installed for $K (current: $DRV_C): install it first" "load of a driver not current"
	node load --driver "$DRV_C" --kernel "$K2" --modules "$MODS" --owner "$OWNER"
	want_error 16 missing "$K2 is not the running kernel ($K is): its modules load after a reboot" "load for another kernel"
	ok "load of a driver not current, or for a kernel not running: exit 16"

	# Busy: processes holding /dev/nvidia*, found from ROOT/proc/PID/fd.
	mkdir -p "$R/proc/100/fd" "$R/proc/4242/fd" "$R/proc/4343/fd" "$R/proc/self"
	ln -s /dev/null "$R/proc/100/fd/0"
	echo bash >"$R/proc/100/comm"
	ln -s /dev/pts/0 "$R/proc/4242/fd/0"
	ln -s /dev/nvidia0 "$R/proc/4242/fd/7"
	ln -s /dev/nvidiactl "$R/proc/4242/fd/8"
	echo python3 >"$R/proc/4242/comm"
	ln -s /dev/nvidia-uvm "$R/proc/4343/fd/3"
	echo 'cuda (x)' >"$R/proc/4343/comm"
	: >"$CTL/busy_nvidia"
	node load --driver "$DRV_C" --kernel "$K" --modules "$MODS" --owner "$OWNER"
	want_error 13 busy "cannot unload nvidia: in use by 4242 (python3), 4343 (cuda??x?); holders: none found" \
		"load with nvidia in use"
	want_err "Module nvidia is in use" "load with nvidia in use: modprobe's words on stderr"
	rm -f "$CTL/busy_nvidia"
	node load --driver "$DRV_C" --kernel "$K" --modules "$MODS" --owner "$OWNER"
	want_ok load "load after busy"
	node load --driver "$DRV_C" --kernel "$K" --modules "$MODS" --unload nvidia --owner "$OWNER"
	want_error 13 busy "cannot unload nvidia: in use by 4242 (python3), 4343 (cuda??x?); holders: nvidia_modeset nvidia_uvm" \
		"load with nvidia held by other modules"
	rm -rf "$R/proc/4242" "$R/proc/4343"
	node load --driver "$DRV_C" --kernel "$K" --modules "$MODS" --unload nvidia --owner "$OWNER"
	want_error 13 busy "cannot unload nvidia: in use by none found; holders: nvidia_modeset nvidia_uvm" \
		"load busy without processes"
	ok "load with a module in use: exit 13 naming PIDs (COMM) from ROOT/proc/PID/fd and the holders"

	printf '%s\n' "modprobe: ERROR: could not insert 'nvidia_uvm': Invalid module format" "second line" \
		>"$CTL/modprobe_fail_nvidia_uvm"
	node load --driver "$DRV_C" --kernel "$K" --modules "$MODS" --owner "$OWNER"
	want_error 14 modprobe "nvidia-uvm modprobe: ERROR: could not insert 'nvidia_uvm': Invalid module format" \
		"load with modprobe failing"
	rm -f "$CTL/modprobe_fail_nvidia_uvm"
	node load --driver "$DRV_C" --kernel "$K" --modules "$MODS" --owner "$OWNER"
	want_ok load "load after the failure"
	ok "load with modprobe failing: exit 14 with modprobe's message"
}

verify_c() { # [more options]
	node verify --driver "$DRV_C" --kernel "$K" --modules "$MODS" --loaded "$@"
}

test_verify() {
	local ko=$R/lib/modules/$K/updates/kfleet/nvidia-uvm.ko
	verify_c
	want_ok verify "verify ok"
	want_out "check state ok
check files ok
check loaded ok
check version ok
check smi ok
ok verify" "verify ok"
	ok "verify: every check ok"

	node verify --driver "$DRV_B" --kernel "$K"
	want_error 15 verify "state the current release of $K is $DRV_C, not $DRV_B" "verify another driver"
	want_line "check files fail changed: /lib/modules/$K/updates/kfleet/nvidia-drm.ko is not the file of release $DRV_B" \
		"verify another driver"
	want_line "check smi ok" "verify another driver: every check runs"
	ok "verify of a driver not current: state fails, files too, every check still runs"

	cp "$ko" "$T/uvm.save"
	printf 'X' | dd of="$ko" bs=1 seek=200 conv=notrunc status=none
	verify_c
	want_error 15 verify "files changed: /lib/modules/$K/updates/kfleet/nvidia-uvm.ko is not the file of release $DRV_C" \
		"verify with a changed file"
	node check
	want_line "files $K changed" "check with a changed file"
	rm -f "$ko"
	verify_c
	want_error 15 verify "files missing: nvidia-uvm.ko is not in /lib/modules/$K/updates/kfleet" "verify with a missing file"
	node check
	want_line "files $K missing" "check with a missing file"
	cp "$T/uvm.save" "$ko"
	cp "$R/lib/modules/$K/modules.dep" "$T/dep.save"
	grep -v '^updates/kfleet/nvidia-uvm.ko:' "$T/dep.save" >"$R/lib/modules/$K/modules.dep"
	verify_c
	want_error 15 verify "files changed: modules.dep of $K does not name updates/kfleet/nvidia-uvm.ko (depmod not run?)" \
		"verify with modules.dep not naming a module"
	cp "$T/dep.save" "$R/lib/modules/$K/modules.dep"
	verify_c
	want_ok verify "verify after repair"
	ok "verify: files changed, missing, not in modules.dep (and check's files line)"

	mv "$R/sys/module/nvidia_uvm" "$T/uvm.sys"
	verify_c
	want_error 15 verify "loaded not loaded: nvidia-uvm" "verify with a module not loaded"
	want_line "check version ok" "verify with a module not loaded: version of the others"
	mv "$T/uvm.sys" "$R/sys/module/nvidia_uvm"
	echo "$DRV_B" >"$R/sys/module/nvidia/version"
	verify_c
	want_error 15 verify "version nvidia is version $DRV_B, not $DRV_C" "verify with another version loaded"
	echo "$DRV_C" >"$R/sys/module/nvidia/version"
	echo "$DRV_B" >"$R/sys/module/nvidia_drm/version"
	verify_c --version-module nvidia
	want_error 15 verify "version nvidia-drm is version $DRV_B, not $DRV_C" "verify with another module's version"
	echo "$DRV_C" >"$R/sys/module/nvidia_drm/version"
	echo "$K2" >"$CTL/running"
	verify_c
	want_error 15 verify "loaded $K is not the running kernel ($K2 is)" "verify --loaded on another kernel"
	want_line "check version fail $K is not the running kernel ($K2 is)" "verify --loaded on another kernel"
	echo "$K" >"$CTL/running"
	ok "verify: module not loaded, version mismatch, kernel not running"

	echo mismatch >"$CTL/smi"
	verify_c
	want_error 15 verify "smi Failed to initialize NVML: Driver/library version mismatch" "verify with nvidia-smi failing"
	want_line "check smi fail Failed to initialize NVML: Driver/library version mismatch" "verify with nvidia-smi failing"
	verify_c --smi skip
	want_ok verify "verify --smi skip"
	want_no_line "^check smi" "verify --smi skip"
	rm -f "$CTL/smi"
	NODE_PATH=$NOSMI_PATH verify_c
	want_ok verify "verify --smi auto without nvidia-smi"
	want_no_line "^check smi" "verify --smi auto without nvidia-smi"
	NODE_PATH=$NOSMI_PATH verify_c --smi require
	want_error 15 verify "smi nvidia-smi is not installed (--smi require)" "verify --smi require without nvidia-smi"
	ok "verify: nvidia-smi mismatch message, skip, auto, require"

	# shellcheck disable=SC2016 # expanded by the node's sh -c
	verify_c --command 'echo "testing $KFLEET_DRIVER on $KFLEET_KERNEL"; [ "$KFLEET_DRIVER" = '"$DRV_C"' ] && [ "$KFLEET_KERNEL" = '"$K"' ]'
	want_ok verify "verify --command ok"
	want_line "check command ok" "verify --command ok"
	verify_c --command 'echo starting; echo "gpu burn: 2 of 8 GPUs failed" >&2; exit 3'
	want_error 15 verify "command exit 3: gpu burn: 2 of 8 GPUs failed" "verify --command failing"
	echo mismatch >"$CTL/smi"
	verify_c --command 'exit 1'
	want_error 15 verify "smi Failed to initialize NVML: Driver/library version mismatch" "verify, two failures"
	want_line "check command fail exit 1" "verify, two failures: the command still runs"
	rm -f "$CTL/smi"
	ok "verify: custom command with KFLEET_DRIVER/KFLEET_KERNEL, its failure, the first failure reported"
}

test_rollback() {
	local st ino
	reset_calls
	node rollback --profile nvidia-run --kernel "$K" --to "$DRV_B" --owner "$OWNER"
	want_ok rollback "rollback to previous"
	want_line "rolledback $K $DRV_C $DRV_B" "rollback to previous"
	want_calls "depmod $K" "rollback to previous runs install.sh, no modprobe"
	for m in nvidia nvidia-modeset nvidia-drm nvidia-uvm; do
		want_same "$T/pkg/B/modules/$m.ko" "$R/lib/modules/$K/updates/kfleet/$m.ko" "rollback to previous"
	done
	st="# kfleet node state; written by kfleet-node, do not edit
driver=$DRV_B
kernel=$K
current $K $DRV_B $SHA_B nvidia-run
previous $K $DRV_C $SHA_C nvidia-run"
	want_file "$R/var/lib/kfleet/state" "$st" "rollback to previous: state"
	[ "$(cat "$R/sys/module/nvidia/version")" = "$DRV_C" ] || fail "rollback without --reload reloaded"
	ok "rollback --to previous: its install.sh ran, state swapped, nothing reloaded"

	reset_calls
	ino=$(stat -c %i "$R/var/lib/kfleet/state")
	node rollback --profile nvidia-run --kernel "$K" --to "$DRV_B" --owner "$OWNER"
	want_ok rollback "rollback repeated"
	want_line "rolledback $K $DRV_B $DRV_B" "rollback repeated"
	want_calls "" "rollback repeated runs nothing"
	[ "$ino" = "$(stat -c %i "$R/var/lib/kfleet/state")" ] || fail "rollback repeated rewrote the state"
	ok "rollback repeated: nothing run, state untouched"

	reset_calls
	node rollback --profile nvidia-run --kernel "$K" --to "$DRV_C" --owner "$OWNER" --reload --modules "$MODS"
	want_ok rollback "rollback with --reload"
	want_out "loaded nvidia $DRV_C
loaded nvidia-modeset $DRV_C
loaded nvidia-drm $DRV_C
loaded nvidia-uvm $DRV_C
rolledback $K $DRV_B $DRV_C
ok rollback" "rollback with --reload"
	want_calls "depmod $K
modprobe -r nvidia-uvm
modprobe -r nvidia-drm
modprobe -r nvidia-modeset
modprobe -r nvidia
modprobe nvidia
modprobe nvidia-modeset
modprobe nvidia-drm
modprobe nvidia-uvm" "rollback with --reload"
	reset_calls
	node rollback --profile nvidia-run --kernel "$K" --to "$DRV_C" --owner "$OWNER" --reload --modules "$MODS"
	want_ok rollback "rollback with --reload repeated"
	want_line "rolledback $K $DRV_C $DRV_C" "rollback with --reload repeated"
	grep -q '^modprobe nvidia$' "$CTL/calls" || fail "rollback with --reload repeated did not reload"
	grep -q '^depmod' "$CTL/calls" && fail "rollback with --reload repeated ran install.sh"
	ok "rollback --reload: install.sh, unload in reverse, load in order; repeated: reload only"

	node rollback --profile nvidia-run --kernel "$K" --to "$DRV_A" --owner "$OWNER"
	want_error 16 missing "release $DRV_A for $K is not on the node (or not complete): it must be received again" \
		"rollback to a pruned release"
	node rollback --profile nvidia-run --kernel "$K2" --to "$DRV_C" --owner "$OWNER" --reload --modules "$MODS"
	want_error 16 missing "$K2 is not the running kernel ($K is): --reload needs it running" "rollback --reload, kernel not running"
	ok "rollback to a release not held, --reload for a kernel not running: exit 16"

	: >"$CTL/busy_nvidia_uvm"
	node rollback --profile nvidia-run --kernel "$K" --to none --owner "$OWNER"
	want_rc 13 "rollback --to none, busy"
	case $(last_line) in
	"error busy cannot unload nvidia_uvm: in use by none found; holders: none found") ;;
	*) fail "rollback --to none, busy: not the busy error" ;;
	esac
	rm -f "$CTL/busy_nvidia_uvm"
	ok "rollback --to none with a module in use: uninstall.sh's failure is exit 13 with the holders"

	reset_calls
	node rollback --profile nvidia-run --kernel "$K" --to none --owner "$OWNER"
	want_ok rollback "rollback to none"
	want_line "rolledback $K $DRV_C none" "rollback to none"
	grep -q "^depmod $K\$" "$CTL/calls" || fail "rollback to none: no depmod"
	[ -z "$(ls "$R/lib/modules/$K/updates/kfleet/" 2>/dev/null)" ] || fail "rollback to none: modules left"
	want_absent "$R/sys/module/nvidia" "rollback to none unloads the running driver (uninstall.sh)"
	st="# kfleet node state; written by kfleet-node, do not edit
previous $K $DRV_C $SHA_C nvidia-run"
	want_file "$R/var/lib/kfleet/state" "$st" "rollback to none: state"
	reset_calls
	node rollback --profile nvidia-run --kernel "$K" --to none --owner "$OWNER"
	want_ok rollback "rollback to none repeated"
	want_line "rolledback $K none none" "rollback to none repeated"
	want_calls "" "rollback to none repeated runs nothing"
	node verify --driver "$DRV_C" --kernel "$K"
	want_error 15 verify "state no kfleet release is current for $K" "verify after rollback to none"
	ok "rollback --to none: uninstall.sh ran, no current line, previous kept; repeated: nothing"

	node rollback --profile nvidia-run --kernel "$K" --to "$DRV_C" --owner "$OWNER"
	want_line "rolledback $K none $DRV_C" "rollback from none"
	st="# kfleet node state; written by kfleet-node, do not edit
driver=$DRV_C
kernel=$K
current $K $DRV_C $SHA_C nvidia-run"
	want_file "$R/var/lib/kfleet/state" "$st" "rollback from none: state"
	# The distribution's own nvidia.ko, found again after --to none --reload.
	distro_module "$R/lib/modules/$K/kernel/drivers/video/nvidia.ko" nvidia 525.147.05
	node rollback --profile nvidia-run --kernel "$K" --to none --owner "$OWNER" --reload --modules nvidia
	want_ok rollback "rollback to none with --reload"
	want_line "loaded nvidia 525.147.05" "rollback to none with --reload loads the distribution's module"
	node rollback --profile nvidia-run --kernel "$K" --to "$DRV_C" --owner "$OWNER" --reload --modules "nvidia nvidia-uvm"
	want_ok rollback "rollback back to C"
	want_line "loaded nvidia-uvm $DRV_C" "rollback back to C"
	node rollback --profile nvidia-run --kernel "$K" --to none --owner "$OWNER" --reload --modules "nvidia nvidia-uvm"
	want_ok rollback "rollback to none, a module that is nowhere"
	want_line "loaded nvidia 525.147.05" "rollback to none: the distribution's nvidia"
	want_line "loaded nvidia-uvm none" "rollback to none: nvidia-uvm is nowhere, not loaded"
	want_err "nvidia-uvm is nowhere on the system now: not loaded" "rollback to none, a module that is nowhere"
	rm -f "$R/lib/modules/$K/kernel/drivers/video/nvidia.ko"
	ok "rollback --to none --reload: the distribution's module loads; one that is nowhere is left out (as before kfleet)"

	# A node that had nothing loaded before the rollout: --reload with only
	# --unload unloads and loads nothing.
	node rollback --profile nvidia-run --kernel "$K" --to "$DRV_C" --owner "$OWNER" --reload --modules "nvidia nvidia-uvm"
	want_ok rollback "back to C, loaded"
	[ -d "$R/sys/module/nvidia" ] || fail "back to C: nvidia not loaded"
	node rollback --profile nvidia-run --kernel "$K" --to none --owner "$OWNER" --reload --unload "nvidia-uvm nvidia"
	want_ok rollback "rollback to none, unload only"
	want_absent "$R/sys/module/nvidia" "rollback --reload --unload only"
	want_absent "$R/sys/module/nvidia_uvm" "rollback --reload --unload only"
	node rollback --profile nvidia-run --kernel "$K" --to none --owner "$OWNER" --reload
	want_error 2 usage "rollback --reload needs --modules (to load) or --unload" "rollback --reload with neither"
	ok "rollback --reload --unload alone: unloaded, nothing loaded (the state before the rollout)"
}

test_other_kernel() {
	node rollback --profile nvidia-run --kernel "$K" --to "$DRV_C" --owner "$OWNER"
	want_ok rollback "back to C"
	receive AK2
	want_ok receive "receive for K2"
	install_pkg AK2
	want_ok install "install for K2 (not running)"
	want_same "$T/pkg/AK2/modules/nvidia.ko" "$R/lib/modules/$K2/updates/kfleet/nvidia.ko" "install for K2"
	grep -q '^updates/kfleet/nvidia.ko:' "$R/lib/modules/$K2/modules.dep" || fail "install for K2: no depmod for K2"
	want_file "$R/var/lib/kfleet/state" "# kfleet node state; written by kfleet-node, do not edit
driver=$DRV_AK2
kernel=$K2
current $K $DRV_C $SHA_C nvidia-run
current $K2 $DRV_AK2 $SHA_AK2 nvidia-run" "install for K2: state"
	node check
	want_line "files $K ok" "check with two kernels"
	want_line "files $K2 ok" "check with two kernels"
	node load --driver "$DRV_AK2" --kernel "$K2" --modules nvidia --owner "$OWNER"
	want_rc 16 "load for K2"
	# driver= and kernel= follow what is installed: after K2 goes back to
	# none, the running kernel's current release.
	printf '%s\n' "# kfleet node state; written by kfleet-node, do not edit" "driver=$DRV_AK2" "kernel=$K2" \
		"previous $K $DRV_B $SHA_B nvidia-run" "current $K2 $DRV_AK2 $SHA_AK2 nvidia-run" \
		"current $K $DRV_C $SHA_C nvidia-run" >"$R/var/lib/kfleet/state"
	node rollback --profile nvidia-run --kernel "$K2" --to none --owner "$OWNER"
	want_ok rollback "rollback of K2 to none"
	want_line "rolledback $K2 $DRV_AK2 none" "rollback of K2 to none"
	want_absent "$R/lib/modules/$K2/updates/kfleet/nvidia.ko" "rollback of K2 to none"
	want_file "$R/var/lib/kfleet/state" "# kfleet node state; written by kfleet-node, do not edit
driver=$DRV_C
kernel=$K
current $K $DRV_C $SHA_C nvidia-run
previous $K $DRV_B $SHA_B nvidia-run
previous $K2 $DRV_AK2 $SHA_AK2 nvidia-run" "rollback of K2 to none: state"
	node rollback --profile nvidia-run --kernel "$K2" --to "$DRV_AK2" --owner "$OWNER"
	want_ok rollback "rollback of K2 back"
	# A kernel the node does not have.
	mkpkg X 9.9.9 6.1.0-99-amd64 nvidia
	receive X
	want_ok receive "receive for a kernel not installed"
	install_pkg X
	want_error 16 missing "kernel 6.1.0-99-amd64 is not installed on this node (no /lib/modules/6.1.0-99-amd64)" \
		"install for a kernel not installed"
	want_absent "$R/lib/modules/6.1.0-99-amd64" "install for a kernel not installed"
	ok "install for an installed kernel that is not running: its updates/kfleet, depmod, two current lines; a kernel not on the node: exit 16"
}

test_wrong_kernel() {
	local before
	# A package whose modules were built for another kernel, catalogued
	# (and received) for this one: install refuses it before changing
	# anything.
	# shellcheck disable=SC2034 # read by receive and install_pkg, through v KER_WK
	KER_WK=$K
	receive WK
	want_ok receive "receive of a package built for another kernel"
	before=$(snapshot)
	install_pkg WK
	want_error 17 package "nvidia.ko is built for kernel 6.1.0-99-amd64, not $K: this package is not for this kernel (kfleet artifacts verify; rebuild it)" \
		"install of a package built for another kernel"
	[ "$(snapshot)" = "$before" ] || fail "install of a package for another kernel changed the node"
	ok "install refuses a package whose modules' vermagic names another kernel; nothing changed"
}

test_lock() {
	local a
	for a in "receive --driver $DRV_A --kernel $K --sha256 $SHA_A --size $SIZE_A" \
		"install --profile nvidia-run --driver $DRV_C --kernel $K --sha256 $SHA_C" \
		"load --driver $DRV_C --kernel $K --modules nvidia" \
		"rollback --profile nvidia-run --kernel $K --to none" "unlock"; do
		# shellcheck disable=SC2086 # the words of the case
		NODE_IN=$T/pkg/A.tar.gz node $a --owner other@ctl2
		want_rc 10 "$a by another owner"
		case $(last_line) in
		"error locked $OWNER "[0-9]*) ;;
		*) fail "$a by another owner: not 'error locked $OWNER SINCE'" ;;
		esac
		want_err "locked by $OWNER since" "$a by another owner"
	done
	node check
	grep -qE "^lock $OWNER [0-9]+\$" <<<"$OUT" || fail "check while locked: no 'lock OWNER SINCE'"
	ok "lock held by another owner: exit 10 'error locked OWNER SINCE' for receive, install, load, rollback, unlock"

	install_pkg C
	want_ok install "same owner again"
	ok "the same owner takes the lock again"

	# An earlier action of the same owner still runs (kfleet lost its
	# connection; the action goes on to its end): the next one waits for it.
	local ep t0
	sh -c 'sleep 2; :' kfleet-node &
	ep=$!
	echo "$ep" >"$R/var/lib/kfleet/lock/pid"
	t0=$SECONDS
	install_pkg C
	want_ok install "after an earlier action of the same owner"
	[ $((SECONDS - t0)) -ge 1 ] || fail "install did not wait for the earlier action (pid $ep)"
	want_err "waiting for the earlier action of this lock (pid $ep)" "earlier action"
	wait "$ep" || true
	want_absent "$R/var/lib/kfleet/lock/pid" "after the action"
	echo 999999 >"$R/var/lib/kfleet/lock/pid"
	t0=$SECONDS
	install_pkg C
	want_ok install "with a stale action pid"
	[ $((SECONDS - t0)) -lt 2 ] || fail "install waited for a pid that does not run"
	ok "an action of the same owner still running is waited for (lock/pid); a stale pid is not"

	install_pkg C --break-lock
	want_ok install "--break-lock by the owner"
	node install --profile nvidia-run --driver "$DRV_C" --kernel "$K" --sha256 "$SHA_C" --owner other@ctl2 --break-lock
	want_ok install "--break-lock by another"
	want_err "breaking the lock of $OWNER" "--break-lock by another"
	grep -qE '^other@ctl2 [0-9]+$' "$R/var/lib/kfleet/lock/owner" || fail "--break-lock: the lock is not other's"
	ok "--break-lock takes the lock from another owner"

	node unlock --owner "$OWNER"
	want_rc 10 "unlock by the wrong owner"
	[ -d "$R/var/lib/kfleet/lock" ] || fail "unlock by the wrong owner removed the lock"
	node unlock --owner other@ctl2
	want_ok unlock "unlock by the owner"
	want_absent "$R/var/lib/kfleet/lock" "unlock by the owner"
	node check
	want_line "lock free" "check after unlock"
	node unlock --owner other@ctl2
	want_ok unlock "unlock when free"
	ok "unlock: refused for another owner (10), done by the owner, fine when free"

	mkdir "$R/var/lib/kfleet/lock"
	node install --profile nvidia-run --driver "$DRV_C" --kernel "$K" --sha256 "$SHA_C" --owner "$OWNER"
	want_error 10 locked "unknown 0" "a lock without owner"
	node unlock --owner "$OWNER" --break-lock
	want_ok unlock "unlock --break-lock"
	want_absent "$R/var/lib/kfleet/lock" "unlock --break-lock"
	ok "a lock directory without owner: exit 10 'unknown 0', --break-lock removes it"
}

test_log() {
	local log=$R/var/lib/kfleet/log
	grep -qxE "[0-9]+ receive --driver $DRV_A --kernel $K --sha256 $SHA_A --size $SIZE_A --owner $OWNER -> ok" "$log" ||
		fail "log: no receive line"
	grep -qxE "[0-9]+ receive --driver 9\.9\.9 --kernel $K --sha256 $SHA_A --size $SIZE_A --owner $OWNER -> error sha256" "$log" ||
		fail "log: no failed receive line"
	grep -qxE "[0-9]+ load --driver $DRV_C --kernel $K --modules $MODS --owner $OWNER -> error busy" "$log" ||
		fail "log: no busy load line"
	grep -qE " (check|verify) " "$log" && fail "log: read-only actions are logged"
	ok "log: one line per changing action, 'EPOCH ACTION ARGS -> ok|error WORD'"
}

make_busybox_bin() {
	local t bb applets
	bb=$(command -v busybox)
	applets=" $(busybox --list | tr '\n' ' ') "
	rm -rf "$T/bbbin"
	mkdir -p "$T/bbbin"
	for t in sh cat cp mv rm rmdir mkdir ls cmp tar gzip sha256sum date grep head sort wc chmod tr sed \
		find tail od timeout id sleep env xargs; do
		[[ $applets == *" $t "* ]] || fail "busybox has no $t"
		ln -s "$bb" "$T/bbbin/$t"
	done
	ln -s "$bb" "$T/bbbin/busybox"
	ln -s "$(command -v bash)" "$T/bbbin/bash"
}

# A short round under other POSIX shells, when they are here.
test_shells() {
	local s
	for s in "bash --posix" "busybox sh"; do
		command -v "${s%% *}" >/dev/null || continue
		[ "${s%% *}" != busybox ] || busybox sh -c true 2>/dev/null || continue
		make_root
		NODE_SH=$s
		if [ "${s%% *}" = busybox ]; then
			# A minimal node: busybox's own tools, not GNU's, for node.sh and
			# install.sh (the stubs keep bash).
			make_busybox_bin
			NODE_PATH=$T/bin:$T/smi:$T/bbbin
		fi
		receive A
		want_ok receive "$s: receive"
		install_pkg A
		want_ok install "$s: install"
		node load --driver "$DRV_A" --kernel "$K" --modules "$MODS" --owner "$OWNER"
		want_ok load "$s: load"
		mkdir -p "$R/proc/4242/fd"
		ln -s /dev/nvidia0 "$R/proc/4242/fd/7"
		echo python3 >"$R/proc/4242/comm"
		: >"$CTL/busy_nvidia"
		node load --driver "$DRV_A" --kernel "$K" --modules "$MODS" --owner "$OWNER"
		want_error 13 busy "cannot unload nvidia: in use by 4242 (python3); holders: none found" "$s: busy"
		rm -rf "$CTL/busy_nvidia" "$R/proc/4242"
		node load --driver "$DRV_A" --kernel "$K" --modules "$MODS" --owner "$OWNER"
		want_ok load "$s: load after busy"
		node verify --driver "$DRV_A" --kernel "$K" --modules "$MODS" --loaded
		want_ok verify "$s: verify"
		node rollback --profile nvidia-run --kernel "$K" --to none --owner "$OWNER"
		want_ok rollback "$s: rollback"
		node check
		want_ok check "$s: check"
		local e sha
		for e in absolute dotdot twotops symlink hardlink; do
			sha=$(sha256sum <"$T/evil/$e.tar.gz")
			NODE_IN=$T/evil/$e.tar.gz node receive --driver 9.9.9 --kernel "$K" --sha256 "${sha%% *}" \
				--size "$(stat -c %s "$T/evil/$e.tar.gz")" --owner "$OWNER"
			want_rc 17 "$s: malicious archive $e"
		done
		want_absent "$T/evil-absolute" "$s: absolute member"
		want_absent "$T/evil-dotdot" "$s: '..' member"
		want_absent "$T/evil-dir" "$s: symlink member"
		want_absent "$R/var/lib/kfleet/releases/9.9.9" "$s: malicious archives"
		NODE_SH=dash
		NODE_PATH=
		ok "$s: receive, install, load, busy, verify, rollback, check, malicious archives"
	done
}

# ---------------------------------------------------------------------------

selftest
make_stubs
mkpkg A 550.54.15 "$K" "$FIX/nvidia.ko" "$FIX/nvidia-modeset.ko" "$FIX/nvidia-drm.ko" "$FIX/nvidia-uvm.ko"
mkpkg A2 550.54.15 "$K" --salt rebuilt nvidia nvidia-modeset:nvidia nvidia-drm:drm,nvidia-modeset nvidia-uvm:nvidia
mkpkg B 550.90.07 "$K" nvidia nvidia-modeset:nvidia nvidia-drm:drm,nvidia-modeset nvidia-uvm:nvidia
mkpkg C 535.183.01 "$K" nvidia nvidia-modeset:nvidia nvidia-drm:drm,nvidia-modeset nvidia-uvm:nvidia
mkpkg AK2 550.54.15 "$K2" nvidia nvidia-uvm:nvidia
mkpkg WK 7.7.7 6.1.0-99-amd64 nvidia
mkpkg D 545.29.06 6.0.0-gone-amd64 nvidia
ok "packages made with build_package_write (fixture modules and generated ones)"
make_root
test_usage
test_check_empty
test_receive
test_install
test_load
test_verify
test_rollback
test_other_kernel
test_wrong_kernel
test_lock
test_log
test_shells
echo "node: all tests passed (sh: $NODE_SH)"
