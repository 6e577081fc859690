#!/usr/bin/env bash
# The integration files of contrib/ and the manual page, checked against the
# binary and its sources:
#   - option and command lists, from kfleet's option table
#     (coordinator/options.c) and from `kfleet --help` / `kfleet help CMD`;
#   - doc/kfleet.1: renders without a warning (groff, mandoc, man), has an
#     entry for every option, a section for every command, every subcommand,
#     exit status, environment variable and state file;
#   - contrib/bash-completion/kfleet: shellcheck, its lists in sync with the
#     binary, and completions computed by calling _kfleet with COMP_WORDS;
#   - contrib/systemd/: systemd-analyze verify on the installed units
#     (cmake --install into a temporary root), their settings, kfleet.env;
#   - contrib/ci/: the GitLab pipeline's structure (python3 yaml) and the
#     Jenkinsfile's (a small tokenizer: there is no Jenkins here), then the
#     shell of both run for real against an unreachable two-group fleet, and
#     the JUnit report and rollout logs found where the artifacts say;
#   - contrib/inventory.yml: loads with kfleet hosts, documents and uses the
#     variables kfleet reads, holds the groups the other files name;
#   - the install rules (where each file lands, ExecStart rewritten).
# Every check reports what is missing and the test goes on; the exit status
# is 1 when any check failed.
#
#   KFLEET=build/kfleet KF_SOURCE_DIR=. KF_BUILD_DIR=build bash tests/docs/test_contrib.sh
#
# Needs systemd (systemd-analyze), groff-base, man-db, mandoc, python3-yaml,
# jq, dash and shellcheck: contrib/install-deps.sh (TEST). No root, no network,
# no node: the fleet is two inventory groups nobody answers for.
# KEEP_WORK=1 keeps the temporary directory.
set -euo pipefail
: "${KFLEET:?KFLEET must name the kfleet binary (ctest sets it)}"
: "${KF_SOURCE_DIR:?KF_SOURCE_DIR must name the source tree (ctest sets it)}"
: "${KF_BUILD_DIR:?KF_BUILD_DIR must name the build tree (ctest sets it)}"
KFLEET=$(realpath "$KFLEET")
S=$(realpath "$KF_SOURCE_DIR")
B=$(realpath "$KF_BUILD_DIR")
T=$(mktemp -d /tmp/kfleet-contrib.XXXXXX)
cleanup() {
	if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

FAILS=0
CHECKS=0
fail() {
	echo "FAIL: $*" >&2
	FAILS=$((FAILS + 1))
}
ok() { echo "ok: $*"; }
# check WHAT COMMAND...: one check; it passes when COMMAND exits 0 and
# prints nothing on stdout (what it prints is the list of problems).
check() {
	local what=$1 out rc=0
	shift
	CHECKS=$((CHECKS + 1))
	out=$("$@" 2>&1) || rc=$?
	if [ "$rc" = 0 ] && [ -z "$out" ]; then
		ok "$what"
	else
		fail "$what"
		printf '%s\n' "$out" | sed 's/^/    /' >&2
		[ "$rc" = 0 ] || echo "    (exit status $rc)" >&2
	fi
}
# missing WANT HAVE: the words of WANT that are not in HAVE, one a line.
missing() {
	comm -23 <(tr -s ' ' '\n' <<<"$1" | sed '/^$/d' | sort -u) \
		<(tr -s ' ' '\n' <<<"$2" | sed '/^$/d' | sort -u)
}
# same WHAT A B: the word lists A and B hold the same words.
same() {
	local m e
	m=$(missing "$2" "$3")
	e=$(missing "$3" "$2")
	[ -z "$m" ] || echo "$1: missing: $(tr '\n' ' ' <<<"$m")"
	[ -z "$e" ] || echo "$1: not expected: $(tr '\n' ' ' <<<"$e")"
}
words() { tr '\n' ' ' <<<"$1" | sed 's/  */ /g; s/^ //; s/ $//'; }

for tool in systemd-analyze groff mandoc man python3 shellcheck jq dash cmake comm; do
	command -v "$tool" >/dev/null || {
		echo "test_contrib: '$tool' is missing (sudo contrib/install-deps.sh installs the TEST packages)" >&2
		exit 1
	}
done
python3 -c 'import yaml' 2>/dev/null || {
	echo "test_contrib: python3 has no yaml module (Debian: python3-yaml; contrib/install-deps.sh)" >&2
	exit 1
}

# ---------------------------------------------------------------------------
# What the binary knows

# The option table: every {"name", ..._argument, ...} of long_opts[].
TABLE_SRC=$(sed -n '/long_opts\[\] = {/,/^};/p' "$S/coordinator/options.c")
TABLE=$(grep -oE '^\s*\{"[a-z0-9-]+"' <<<"$TABLE_SRC" | grep -oE '[a-z0-9-]+' | sed 's/^/--/' | sort -u)
TABLE_ARG=$(grep -E 'required_argument' <<<"$TABLE_SRC" | grep -oE '^\s*\{"[a-z0-9-]+"' |
	grep -oE '[a-z0-9-]+' | sed 's/^/--/' | sort -u)
SHORT_ARG=$(grep -oE 'getopt_long\(argc, argv, "[^"]*"' "$S/coordinator/options.c" |
	sed 's/.*"\(.*\)"/\1/' | grep -oE '[a-z]:' | tr -d : | sed 's/^/-/')
[ "$(wc -l <<<"$TABLE")" -ge 40 ] || {
	echo "test_contrib: read only $(wc -l <<<"$TABLE") options from coordinator/options.c: has long_opts[] changed shape?" >&2
	exit 1
}

# The options the binary accepts: an unknown one is "unknown option".
probe_options() {
	local o err
	for o in $TABLE; do
		err=$("$KFLEET" "$o" --help 2>&1 >/dev/null </dev/null) || true
		grep -q 'unknown option' <<<"$err" && echo "$o is in options.c's table but the binary says: $err"
	done
	err=$("$KFLEET" --no-such-option-here 2>&1 >/dev/null) || true
	grep -q 'unknown option' <<<"$err" || echo "the probe cannot tell: --no-such-option-here gave '$err'"
}
check "the $(wc -l <<<"$TABLE") options of coordinator/options.c's table are the binary's" probe_options

HELP_MAIN=$("$KFLEET" --help)
COMMANDS=$(sed -n '/^commands:/,/^$/p' <<<"$HELP_MAIN" | grep -oE '^  [a-z]+' | tr -d ' ')
HELP_ALL=$HELP_MAIN
for c in $COMMANDS; do
	HELP_ALL+=$'\n'$("$KFLEET" help "$c")
done
# Words in the help texts that are other programs' options.
FOREIGN="--import" # mokutil --import, in kfleet help keys
# Options in the table that no help text names yet (see the report of
# issue 5; remove a name here once the help has it).
KNOWN_HELP_GAPS=""
HELP_OPTS=$(grep -oE -- '--[a-z][a-z0-9-]*' <<<"$HELP_ALL" | sort -u)
check_help() {
	local m
	m=$(missing "$(missing "$HELP_OPTS" "$FOREIGN")" "$TABLE")
	[ -z "$m" ] || echo "help texts name options the binary does not have: $(words "$m")"
	m=$(missing "$(missing "$TABLE" "$HELP_OPTS")" "$KNOWN_HELP_GAPS")
	[ -z "$m" ] || echo "options no help text names: $(words "$m")"
	for m in $KNOWN_HELP_GAPS; do
		grep -qx -- "$m" <<<"$HELP_OPTS" && echo "note: $m is in the help now: drop it from KNOWN_HELP_GAPS" >&2
	done
	[ "$(wc -w <<<"$COMMANDS")" -ge 13 ] || echo "only $(words "$COMMANDS") in kfleet --help's commands"
}
check "--help and help CMD name only real options and all but the known gaps ($KNOWN_HELP_GAPS)" check_help
ALL_OPTS=$(printf '%s\n%s\n' "$TABLE" "$(missing "$HELP_OPTS" "$FOREIGN")" | sort -u)

# Subcommands: "kfleet CMD WORD" or "kfleet CMD [a|b|c]" in CMD's usage.
subcommands() { # CMD
	"$KFLEET" help "$1" | grep -E "^(usage: | +)kfleet $1 " | awk -v c="$1" '{
		for (i = 1; i < NF; i++) if ($i == "kfleet" && $(i + 1) == c) { print $(i + 2); break } }' |
		grep -E '^\[?[a-z]+(\|[a-z]+)*\]?$' | tr -d '[]' | tr '|' '\n' | sort -u
}
declare -A SUBS=()
for c in $COMMANDS; do
	SUBS[$c]=$(words "$(subcommands "$c")")
done
check_subs() {
	[ "${SUBS[artifacts]}" = "gc list rm show verify" ] || echo "artifacts: ${SUBS[artifacts]}"
	[ "${SUBS[rollout]}" = "abort list resume show" ] || echo "rollout: ${SUBS[rollout]}"
	[ "${SUBS[builder]}" = "image" ] || echo "builder: ${SUBS[builder]}"
	[ "${SUBS[keys]}" = "new" ] || echo "keys: ${SUBS[keys]}"
}
check "subcommands read from the help texts" check_subs

# ---------------------------------------------------------------------------
# doc/kfleet.1

MAN=$S/doc/kfleet.1
check "groff -man -ww: no warning" groff -man -ww -z "$MAN"
check "mandoc -Tlint: no message" mandoc -Tlint "$MAN"
man_renders() {
	local out err rc=0
	out=$(MANWIDTH=80 man --warnings -l "$MAN" 2>"$T/man.err") || rc=$?
	err=$(cat "$T/man.err")
	[ "$rc" = 0 ] || echo "man -l exit status $rc"
	[ -z "$err" ] || printf 'man -l: %s\n' "$err"
	grep -q '^KFLEET(1)' <<<"$out" || echo "man -l: no KFLEET(1) header"
	for s in NAME SYNOPSIS DESCRIPTION COMMANDS OPTIONS "EXIT STATUS" ENVIRONMENT FILES EXAMPLES; do
		grep -qx "$s" <<<"$out" || echo "man -l: no section $s"
	done
}
check "man -l doc/kfleet.1 renders, no warning, every section" man_renders

# The source with roff escapes taken off: \- is -, fonts go.
MAN_TXT=$(sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\(aq/'"'"'/g' "$MAN")
# Every option must have a .TP entry of its own (its name on the line after .TP).
MAN_TP_OPTS=$(awk 'tp { print; tp = 0 } /^\.TP/ { tp = 1 }' <<<"$MAN_TXT" |
	grep -oE -- '--[a-z][a-z0-9-]*' | sort -u)
man_options() {
	local m
	m=$(missing "$ALL_OPTS" "$MAN_TP_OPTS")
	[ -z "$m" ] || echo "options without a .TP entry in doc/kfleet.1: $(words "$m")"
	m=$(missing "$MAN_TP_OPTS" "$TABLE")
	[ -z "$m" ] || echo "doc/kfleet.1 has entries for options kfleet does not have: $(words "$m")"
}
check "doc/kfleet.1: an entry for each of the $(wc -l <<<"$ALL_OPTS") options" man_options
# .SS CMD per command; each subcommand a .TP entry (.B SUB) in its section.
man_section() { # CMD: the lines of its .SS section
	awk -v c="$1" '/^\.S[SH] / { on = ($0 == ".SS " c) ; next } on' <<<"$MAN_TXT"
}
man_commands() {
	local c s sec
	for c in $COMMANDS; do
		grep -qx "\.SS $c" <<<"$MAN_TXT" || {
			echo "command without a .SS section: $c"
			continue
		}
		sec=$(man_section "$c")
		for s in ${SUBS[$c]}; do
			awk 'tp { print; tp = 0 } /^\.TP/ { tp = 1 }' <<<"$sec" | grep -qx "\.B $s" ||
				echo "kfleet $c $s: no .TP entry in the $c section"
		done
	done
}
check "doc/kfleet.1: a section for each of $(wc -w <<<"$COMMANDS") commands, an entry for each subcommand" man_commands
man_facts() {
	local sec code var f
	sec=$(awk '/^\.SH / { on = ($0 == ".SH \"EXIT STATUS\"" || $0 == ".SH EXIT STATUS"); next } on' <<<"$MAN_TXT")
	while read -r code; do
		grep -qx "\.B $code" <<<"$sec" || echo "EXIT STATUS: no entry for $code (coordinator/coordinator.h)"
	done < <(grep -oE 'KF_EXIT_[A-Z]+ = [0-9]+' "$S/coordinator/coordinator.h" | awk '{ print $3 }')
	sec=$(awk '/^\.SH / { on = ($0 == ".SH ENVIRONMENT"); next } on' <<<"$MAN_TXT")
	while read -r var; do
		grep -qx "\.B $var" <<<"$sec" || echo "ENVIRONMENT: no entry for $var (read with getenv)"
	done < <(cat "$S"/common/*.c "$S"/coordinator/*.c "$S"/inventory/*.c "$S"/deployer/*.c "$S"/builder/*.c |
		grep -oE 'getenv\("[A-Za-z_]+"\)' | sed 's/getenv("\(.*\)")/\1/' | sort -u)
	sec=$(awk '/^\.SH / { on = ($0 == ".SH FILES"); next } on' <<<"$MAN_TXT")
	for f in STATE/state.db STATE/store/ STATE/logs/builds/ STATE/logs/rollouts/ STATE/run.lock /var/lib/kfleet/ \
		/lib/modules/KERNEL/updates/kfleet/; do
		grep -qF -- "$f" <<<"$sec" || echo "FILES: no $f"
	done
	for var in $(grep -oE '"ansible_[a-z_]+"' "$S/inventory/inventory.c" | tr -d '"' | sort -u); do
		grep -q -- "$var" <<<"$MAN_TXT" || echo "INVENTORY: $var (read by inventory/inventory.c) not named"
	done
}
check "doc/kfleet.1: exit status, environment, files, inventory variables" man_facts

# ---------------------------------------------------------------------------
# contrib/bash-completion/kfleet

COMP=$S/contrib/bash-completion/kfleet
check "shellcheck -s bash the completion" shellcheck -s bash "$COMP"
# shellcheck source=contrib/bash-completion/kfleet
COMP_LISTS=$(bash -c 'source "$1"; echo "$_kfleet_long_options"; echo ==; echo "$_kfleet_value_options"; echo ==; echo "$_kfleet_commands"' _ "$COMP")
C_LONG=$(awk '/^==$/ { n++; next } n == 0' <<<"$COMP_LISTS")
C_VALUE=$(awk '/^==$/ { n++; next } n == 1' <<<"$COMP_LISTS")
C_CMDS=$(awk '/^==$/ { n++; next } n == 2' <<<"$COMP_LISTS")
comp_lists() {
	same "_kfleet_long_options vs options.c" "$TABLE" "$C_LONG"
	same "_kfleet_long_options vs the help texts" "$(missing "$ALL_OPTS" "$KNOWN_HELP_GAPS")" "$(missing "$C_LONG" "$KNOWN_HELP_GAPS")"
	same "_kfleet_value_options vs options.c's required_argument and getopt's x:" \
		"$(printf '%s\n%s\n' "$TABLE_ARG" "$SHORT_ARG")" "$C_VALUE"
	same "_kfleet_commands vs kfleet --help" "$COMMANDS" "$C_CMDS"
}
check "the completion's lists are the binary's options, value options and commands" comp_lists

# A fleet nobody answers for: staging and production groups, a builders
# group, two kernels' worth of nothing. HOME has no key, so every node fails
# at once with "no private key to try" (no packet leaves the machine).
mkdir -p "$T/home" "$T/src" "$T/bin" "$T/empty"
FLEET=$T/fleet.yml
cat >"$FLEET" <<'EOF'
all:
  vars:
    ansible_host: 127.0.0.1
    ansible_port: 9
  children:
    staging:
      hosts:
        stg[1:2]:
    production:
      hosts:
        prod[01:03]:
    builders:
      hosts:
        builder01:
EOF
echo 'obj-m += x.o' >"$T/src/Kbuild"
cat >"$T/kfleet.yml" <<EOF
profiles:
  nvidia: {type: kmod, source: $T/src, modules: [x]}
EOF
# kfleet as a completion or a CI job calls it: logs each call, then runs it.
cat >"$T/bin/kfleet" <<EOF
#!/bin/sh
printf '%s\n' "\$*" >>"$T/kfleet.calls"
exec "$KFLEET" "\$@"
EOF
chmod +x "$T/bin/kfleet"

# Completion by hand: comp CUR WORD...: COMP_WORDS=(WORD...), the cursor at
# the end of the last word; CUR is the word as readline gives it ($2). The
# candidates are printed one a line; a message on stderr fails the check.
cat >"$T/comp.sh" <<'EOF'
# shellcheck disable=SC1090
source "$COMP"
cur=$1
shift
COMP_WORDS=("$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_kfleet kfleet "$cur" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
EOF
comp() {
	(cd "${COMP_CWD:-$T/empty}" && COMP=$COMP HOME=$T/home bash --norc "$T/comp.sh" "$@" 2>"$T/comp.err")
	if [ -s "$T/comp.err" ]; then
		echo "stderr of completing '$*': $(cat "$T/comp.err")" >&2
	fi
}
# want WHAT EXPECTED-WORDS CUR WORD...
want() {
	local what=$1 exp=$2 got
	shift 2
	got=$(comp "$@" 2>&1)
	[ "$(sort <<<"$got" | words "$(cat)")" = "$(words "$exp" | tr ' ' '\n' | sort | words "$(cat)")" ] ||
		echo "$what: got '$(words "$got")', wanted '$(words "$exp")'"
}
KF=$T/bin/kfleet
HOSTS_JSON=$("$KFLEET" hosts -i "$FLEET" --json)
NAMES=$(jq -r '.[].name' <<<"$HOSTS_JSON")
GROUPS_ALL=$(jq -r '.[].groups[]' <<<"$HOSTS_JSON" | sort -u)
comp_words() {
	want "commands" "$COMMANDS" "" "$KF" ""
	want "ro" "rollback rollout" ro "$KF" ro
	want "help ''" "$COMMANDS" "" "$KF" help ""
	for c in artifacts rollout builder keys; do
		want "$c subcommands" "${SUBS[$c]}" "" "$KF" "$c" ""
	done
	want "after a subcommand" "" "" "$KF" artifacts list ""
	want "--max-f" "--max-fail --max-fail-total" --max-f "$KF" deploy --max-f
	want "every option after --" "$(words "$C_LONG")" -- "$KF" --
	want "no command after a value option" "" "" "$KF" --driver ""
	want "--type" "$(help_types)" "" "$KF" keys new --type ""
	want "--pause" "manual" m "$KF" deploy --pause m
	want "--to" "none" "" "$KF" rollback --to ""
	want "options and values skipped" "${SUBS[rollout]}" "" "$KF" -i x.yml -l staging : stg1 --json rollout ""
	want "--state=DIR skipped" "${SUBS[artifacts]}" "" "$KF" --state = /x artifacts ""
	mkdir -p "$T/dirs/state1" "$T/dirs/state2"
	: >"$T/dirs/stfile"
	want "--state: directories" "$T/dirs/state1 $T/dirs/state2" "$T/dirs/st" "$KF" --state "$T/dirs/st"
	want "--state=: directories" "$T/dirs/state1 $T/dirs/state2" "$T/dirs/st" "$KF" --state = "$T/dirs/st"
	want "--junit: files" "$T/dirs/state1 $T/dirs/state2 $T/dirs/stfile" "$T/dirs/st" "$KF" --junit "$T/dirs/st"
}
help_types() { "$KFLEET" help keys | grep -oE -- '--type [a-z0-9|]+' | head -1 | cut -d' ' -f2 | tr '|' ' '; }
check "completion: commands, subcommands, options, option values" comp_words

comp_hosts() {
	local stg
	: >"$T/kfleet.calls"
	want "-l '': every host and group" "$NAMES $GROUPS_ALL" "" "$KF" -i "$FLEET" -l ""
	stg=$(grep '^stg' <<<"$NAMES")
	want "-l stg" "$stg" stg "$KF" -i "$FLEET" -l stg
	want "--limit=st" "$stg staging" st "$KF" -i "$FLEET" --limit = st
	want "--canary" "prod01 prod02 prod03 production" pro "$KF" deploy -i "$FLEET" --canary pro
	want "after ':'" "builder01 builders" bu "$KF" -i "$FLEET" -l staging : bu
	want "right after ':'" "$NAMES $GROUPS_ALL" "" "$KF" -i "$FLEET" -l staging :
	want "after ':!'" "!builder01 !builders" '!bu' "$KF" -i "$FLEET" -l all : '!bu'
	want "in quotes after ':&'" "all:&prod01 all:&prod02 all:&prod03 all:&production" 'all:&prod' "$KF" -i "$FLEET" -l "'all:&prod"
	want "after ','" "staging,stg1 staging,stg2" 'staging,stg' "$KF" -i "$FLEET" -l 'staging,stg'
	want "a regex: nothing" "" '~st' "$KF" -i "$FLEET" -l '~st'
	want "--inventory = FILE" "$stg" stg "$KF" --inventory = "$FLEET" -l stg
	want "a leading ~/ in -i" "$stg" stg "$KF" -i \~/fleet.yml -l stg
	[ "$(COMP_CWD=$T KFLEET_INVENTORY=$FLEET comp stg "$KF" -l stg | words "$(cat)")" = "$(words "$stg")" ] ||
		echo "\$KFLEET_INVENTORY not used"
	cp "$FLEET" "$T/empty/inventory.yml"
	want "./inventory.yml" "$stg" stg "$KF" -l stg
	rm "$T/empty/inventory.yml"
	local before after
	before=$(wc -l <"$T/kfleet.calls")
	want "no inventory: nothing" "" stg "$KF" -l stg
	want "a missing -i: nothing" "" stg "$KF" -i "$T/nonexistent.yml" -l stg
	after=$(wc -l <"$T/kfleet.calls")
	[ "$before" = "$after" ] || echo "kfleet ran without an inventory: $(tail -n +$((before + 1)) "$T/kfleet.calls")"
	grep -vE "^hosts -i [^ ]+ --json$" "$T/kfleet.calls" | sed 's/^/not a "hosts -i FILE --json" call: /'
	[ -s "$T/kfleet.calls" ] || echo "kfleet hosts was never called"
}
ln -sf "$FLEET" "$T/home/fleet.yml"
check "completion: hosts and groups after -l/--limit/--canary, from kfleet hosts --json" comp_hosts

# Two rollouts, made for real (deploy to nodes with no key to try).
STATE=$T/state
for _ in 1 2; do
	HOME=$T/home "$KFLEET" deploy --driver 1.0.0 -i "$FLEET" -l staging --state "$STATE" --no-progress \
		--config "$T/kfleet.yml" >"$T/deploy.out" 2>&1 || true
done
IDS=$("$KFLEET" rollout list --json --state "$STATE" | jq -r '.[].id')
comp_rollouts() {
	[ "$(words "$IDS")" = "2 1" ] || echo "setup: rollouts are '$(words "$IDS")', wanted '2 1': $(cat "$T/deploy.out")"
	: >"$T/kfleet.calls"
	for sub in show resume abort; do
		want "rollout $sub" "$IDS" "" "$KF" --state "$STATE" rollout "$sub" ""
	done
	want "--state=DIR rollout show 2" "2" 2 "$KF" --state = "$STATE" rollout show 2
	want "rollout list: no ids" "" "" "$KF" --state "$STATE" rollout list ""
	want "after the id: nothing" "" "" "$KF" --state "$STATE" rollout show 1 ""
	grep -vE "^rollout list --json --state $STATE\$" "$T/kfleet.calls" | sed 's/^/not a "rollout list" call: /'
	: >"$T/kfleet.calls"
	want "no state.db: nothing" "" "" "$KF" --state "$T/nostate" rollout show ""
	[ -e "$T/nostate" ] && echo "completion made the state directory $T/nostate"
	[ -s "$T/kfleet.calls" ] && echo "kfleet ran without a state database: $(cat "$T/kfleet.calls")"
	return 0
}
check "completion: rollout ids after rollout show|resume|abort, from kfleet rollout list --json" comp_rollouts

# ---------------------------------------------------------------------------
# Install rules, and contrib/systemd/ on the installed units

ROOT=$T/root
install_rules() {
	local f
	DESTDIR=$ROOT cmake --install "$B" --prefix /usr/local >"$T/install.log" 2>&1 || {
		cat "$T/install.log"
		return 0
	}
	for f in bin/kfleet share/man/man1/kfleet.1 share/bash-completion/completions/kfleet \
		share/doc/kfleet/examples/kfleet.yml share/doc/kfleet/examples/inventory.yml \
		share/doc/kfleet/examples/kfleet.env share/doc/kfleet/examples/ci/.gitlab-ci.yml \
		share/doc/kfleet/examples/ci/Jenkinsfile lib/systemd/system/kfleet-rebuild.service \
		lib/systemd/system/kfleet-rebuild.timer; do
		[ -f "$ROOT/usr/local/$f" ] || echo "not installed: /usr/local/$f"
	done
	cmp -s "$S/doc/kfleet.1" "$ROOT/usr/local/share/man/man1/kfleet.1" || echo "kfleet.1 installed changed"
	cmp -s "$S/contrib/systemd/kfleet-rebuild.service" "$ROOT/usr/local/lib/systemd/system/kfleet-rebuild.service" ||
		echo "prefix /usr/local: the service should be installed as it is"
	# Another prefix: ExecStart follows the binary.
	cmake --install "$B" --prefix "$T/pfx" >"$T/install2.log" 2>&1 || cat "$T/install2.log"
	grep -qx "ExecStart=$T/pfx/bin/kfleet run --no-deploy .*" "$T/pfx/lib/systemd/system/kfleet-rebuild.service" ||
		echo "prefix $T/pfx: ExecStart not rewritten: $(grep ExecStart= "$T/pfx/lib/systemd/system/kfleet-rebuild.service")"
	[ -x "$T/pfx/bin/kfleet" ] || echo "prefix $T/pfx: no bin/kfleet"
}
check "cmake --install: man page, completion, units, examples where they belong" install_rules

SERVICE=$S/contrib/systemd/kfleet-rebuild.service
TIMER=$S/contrib/systemd/kfleet-rebuild.timer
ENVF=$S/contrib/systemd/kfleet.env
# systemd-analyze verify --root needs the units the ours depend on
# (sysinit.target, timers.target, ...) inside the root: the host's, copied.
# Documentation=man:kfleet(1) is checked by running man, which finds the
# installed page through MANPATH.
verify_units() {
	local out rc=0
	[ -d /lib/systemd/system ] || {
		echo "no /lib/systemd/system (Debian package systemd)"
		return 0
	}
	mkdir -p "$ROOT/lib/systemd"
	cp -R /lib/systemd/system "$ROOT/lib/systemd/system"
	out=$(MANPATH=$ROOT/usr/local/share/man systemd-analyze verify --root="$ROOT" \
		kfleet-rebuild.service kfleet-rebuild.timer 2>&1) || rc=$?
	[ "$rc" = 0 ] && [ -z "$out" ] || printf 'systemd-analyze verify (exit status %s): %s\n' "$rc" "$out"
	# And it would notice: without the binary, verify fails.
	mv "$ROOT/usr/local/bin/kfleet" "$ROOT/kfleet.away"
	MANPATH=$ROOT/usr/local/share/man systemd-analyze verify --root="$ROOT" kfleet-rebuild.service >/dev/null 2>&1 &&
		echo "systemd-analyze verify passed without /usr/local/bin/kfleet: it checks nothing here"
	mv "$ROOT/kfleet.away" "$ROOT/usr/local/bin/kfleet"
	return 0
}
check "systemd-analyze verify --root: the installed service and timer" verify_units

unit_settings() {
	local line v
	grep -qx 'OnCalendar=weekly' "$TIMER" || echo "timer: not OnCalendar=weekly"
	grep -qx 'Persistent=true' "$TIMER" || echo "timer: not Persistent=true"
	grep -qE '^RandomizedDelaySec=[1-9]' "$TIMER" || echo "timer: no RandomizedDelaySec"
	grep -qx 'WantedBy=timers.target' "$TIMER" || echo "timer: not WantedBy=timers.target"
	grep -qx 'Type=oneshot' "$SERVICE" || echo "service: not Type=oneshot"
	grep -qx 'EnvironmentFile=/etc/default/kfleet' "$SERVICE" || echo "service: no EnvironmentFile=/etc/default/kfleet"
	grep -qE '^ExecStart=/usr/local/bin/kfleet run --no-deploy ' "$SERVICE" || echo "service: ExecStart is not kfleet run --no-deploy"
	if grep -qx 'ProtectSystem=strict' "$SERVICE"; then
		for v in /var/lib/kfleet /var/cache/kfleet /var/lib/containers /run/containers /var/tmp; do
			grep -E '^ReadWritePaths=' "$SERVICE" | grep -qF "$v" || echo "service: ProtectSystem=strict without ReadWritePaths=$v"
		done
	fi
	for v in ProtectKernelTunables ProtectControlGroups ProtectKernelModules RestrictSUIDSGID NoNewPrivileges \
		RestrictNamespaces PrivateDevices MemoryDenyWriteExecute SystemCallFilter PrivateUsers DynamicUser; do
		grep -qE "^$v=(yes|true|1|strict|~|@)" "$SERVICE" && echo "service: $v breaks podman or debootstrap"
	done
	grep -qE '^ProtectHome=(yes|true|tmpfs)$' "$SERVICE" && echo "service: ProtectHome hides root's ~/.ssh"
	# Every variable the service uses is in kfleet.env, and kfleet.env is
	# what systemd reads: VAR=value lines and comments.
	while read -r v; do
		grep -qE "^$v=" "$ENVF" || echo "kfleet.env does not set $v (the service uses it)"
	done < <(grep -v '^#' "$SERVICE" | grep -oE '\$\{?[A-Z_]+' | grep -oE '[A-Z_]+' | sort -u)
	for v in KFLEET_DRIVER KFLEET_INVENTORY KFLEET_CONFIG KFLEET_OPTIONS; do
		grep -qE "^$v=" "$ENVF" || echo "kfleet.env does not set $v"
		grep -qE "^#   $v " "$SERVICE" || echo "the service's header does not document $v"
	done
	while IFS= read -r line; do
		[[ -z $line || $line == \#* || $line =~ ^[A-Z_][A-Z0-9_]*=.*$ ]] || echo "kfleet.env: not VAR=value: $line"
	done <"$ENVF"
	return 0
}
check "the units' settings: weekly, persistent, randomized, run --no-deploy, no sandboxing that breaks podman" unit_settings

# ExecStart as systemd would expand it with kfleet.env: ${V} one word, $V
# split at spaces. Appending --help makes kfleet parse it all and exit.
exec_start_parses() {
	local cmd env_args=() out rc=0 arg
	local -a argv=()
	mapfile -t env_args < <(grep -E '^[A-Z_]+=' "$ENVF")
	cmd=$(sed -n 's/^ExecStart=//p' "$SERVICE")
	for arg in $cmd; do
		case $arg in
		\$\{*\}) argv+=("$(env -i "${env_args[@]}" printenv "${arg:2:-1}")") ;;
		\$*) read -r -a more <<<"$(env -i "${env_args[@]}" printenv "${arg:1}")" && argv+=("${more[@]}") ;;
		/usr/local/bin/kfleet) argv+=("$KFLEET") ;;
		*) argv+=("$arg") ;;
		esac
	done
	out=$("${argv[@]}" --help 2>&1 >/dev/null) || rc=$?
	[ "$rc" = 0 ] && [ -z "$out" ] || echo "kfleet ${argv[*]:1} --help: exit status $rc: $out"
}
check "ExecStart with kfleet.env's values is a command line kfleet accepts" exec_start_parses

# ---------------------------------------------------------------------------
# contrib/inventory.yml

INV=$S/contrib/inventory.yml
inventory_checks() {
	local out rc=0 v json h
	out=$("$KFLEET" hosts -i "$INV" 2>&1) || rc=$?
	[ "$rc" = 0 ] || {
		echo "kfleet hosts -i contrib/inventory.yml: exit status $rc: $out"
		return 0
	}
	json=$("$KFLEET" hosts -i "$INV" --json)
	[ "$(jq length <<<"$json")" -ge 5 ] || echo "fewer than 5 hosts"
	# Every variable kfleet reads is documented; the main ones are used.
	for v in $(grep -oE '"ansible_[a-z_]+"' "$S/inventory/inventory.c" | tr -d '"' | sort -u); do
		grep -qE "^#.*\\b$v\\b" "$INV" || echo "not documented in the comments: $v"
	done
	for v in ansible_host ansible_port ansible_user ansible_ssh_private_key_file ansible_become \
		ansible_become_user ansible_connection ansible_ssh_common_args; do
		jq -e --arg v "$v" 'any(.[]; .vars | has($v))' <<<"$json" >/dev/null || echo "no host has $v"
	done
	grep -qE '^ +[a-z0-9.-]*\[[0-9a-z]+:[0-9a-z]+(:[0-9]+)?\][a-z0-9.-]*:' "$INV" || echo "no host range"
	grep -qE '^ +children:' "$INV" || echo "no children"
	# The groups the CI pipelines and the example config name.
	for g in staging production builders; do
		[ "$("$KFLEET" hosts -i "$INV" -l "$g" --json | jq length)" -ge 1 ] || echo "group $g selects no host"
	done
	while read -r h; do
		jq -e --arg h "$h" 'any(.[]; .name == $h and (.groups | index("builders")))' <<<"$json" >/dev/null ||
			echo "contrib/kfleet.yml's builder host $h is not in the builders group"
	done < <(grep -oE 'host: [A-Za-z0-9._-]+' "$S/contrib/kfleet.yml" | awk '{ print $2 }' | grep -vx local)
	[ "$("$KFLEET" hosts -i "$INV" -l 'all:!builders' --json | jq '[.[].groups[]] | index("builders")')" = null ] ||
		echo "'all:!builders' still selects builders"
	return 0
}
check "contrib/inventory.yml: loads, documents and uses kfleet's variables, has the groups the examples name" inventory_checks

# ---------------------------------------------------------------------------
# contrib/ci/

GITLAB=$S/contrib/ci/.gitlab-ci.yml
CI_CHECK=$S/tests/docs/ci_check.py
JENKINS=$S/contrib/ci/Jenkinsfile
# A job's build logs: old ones must stay behind, new ones come along. The
# test fleet builds nothing, so the kfleet that the jobs run writes one,
# as a build would, before it runs the real kfleet.
mkdir -p "$T/cibin"
cat >"$T/cibin/kfleet" <<EOF
#!/bin/sh
printf '%s\n' "\$*" >>"$T/kfleet.calls"
if [ "\$1" = run ]; then
	mkdir -p "\$KFLEET_STATE_DIR/logs/builds"
	echo "a build log" >"\$KFLEET_STATE_DIR/logs/builds/\$KFLEET_LIMIT-new.log"
fi
exec "$KFLEET" "\$@"
EOF
chmod +x "$T/cibin/kfleet"
CI_STATE=$T/ci-state
mkdir -p "$CI_STATE/logs/builds"
echo old >"$CI_STATE/logs/builds/old.log"
touch -d '2020-01-01' "$CI_STATE/logs/builds/old.log"
# The site's settings (a GitLab project's CI/CD variables, Jenkins' node
# environment) for the test fleet; everything else comes from the files.
CI_ENV=(HOME="$T/home" KFLEET_INVENTORY="$FLEET" KFLEET_CONFIG="$T/kfleet.yml" KFLEET_STATE_DIR="$CI_STATE"
	PATH="$T/cibin:$PATH")

# ci_outputs DIR JOB-DIR EXIT ROLLOUT GROUP-HOSTS: what a job left.
ci_outputs() {
	local dir=$1 out=$2 rc=$3 id=$4 hosts=$5 names
	[ "$rc" = 4 ] || echo "$out: exit status $rc, wanted 4 (the canary fails: a halted rollout)"
	[ "$(jq -r .exit "$dir/$out/run.json" 2>/dev/null)" = "$rc" ] || echo "$out/run.json: no .exit $rc"
	[ "$(jq -r .deploy.rollout "$dir/$out/run.json" 2>/dev/null)" = "$id" ] || echo "$out/run.json: not rollout $id"
	names=$(python3 "$CI_CHECK" junit-names "$dir/$out/junit.xml" 2>&1)
	[ "$names" = "$hosts" ] || echo "$out/junit.xml: testcases '$names', wanted '$hosts'"
	ls "$dir/$out/logs/rollout-$id/"*.log >/dev/null 2>&1 || echo "$out: no logs/rollout-$id/*.log"
	[ -f "$dir/$out/logs/$(basename "$out")-new.log" ] || echo "$out: the new build log was not kept"
	[ -f "$dir/$out/logs/old.log" ] && echo "$out: an old build log was copied"
	return 0
}

check "GitLab: .gitlab-ci.yml parses; staging, then production (manual); kfleet run --junit; artifacts always" \
	python3 "$CI_CHECK" gitlab-structure "$GITLAB"

# gitlab_artifacts SCRIPT DIR OUT: the job's artifacts:paths exist and its
# reports:junit glob matches OUT/junit.xml.
gitlab_artifacts() {
	local script=$1 dir=$2 out=$3 paths junit p
	paths=$(sed -n 's/^# artifacts: \(.*\) junit: .*/\1/p' "$script")
	junit=$(sed -n 's/^# artifacts: .* junit: //p' "$script")
	for p in $paths; do
		[ -e "$dir/$p" ] || echo "$(basename "$script"): artifacts path $p does not exist"
	done
	(cd "$dir" && compgen -G "$junit" | grep -qx "$out/junit.xml") ||
		echo "$(basename "$script"): reports:junit $junit does not match $out/junit.xml"
}
# Both pipelines use one fresh state: rollout ids count from 1 (GitLab's
# staging 1, production 2; Jenkins' staging 3, production 4).
rm -rf "${CI_STATE:?}/state.db" "$CI_STATE/logs/rollouts"
gitlab_run() {
	local job dir=$T/gitlab rc id=0 hosts
	mkdir -p "$dir"
	for job in kfleet-staging kfleet-production; do
		id=$((id + 1))
		python3 "$CI_CHECK" gitlab-job "$GITLAB" "$job" >"$T/$job.sh" || {
			echo "cannot read job $job"
			continue
		}
		shellcheck -s bash "$T/$job.sh" | sed "s/^/$job: /"
		rc=0
		(cd "$dir" && env "${CI_ENV[@]}" CI_PROJECT_DIR="$dir" bash "$T/$job.sh") >"$T/$job.log" 2>&1 || rc=$?
		if [ "$job" = kfleet-staging ]; then hosts="stg1 stg2"; else hosts="prod01 prod02 prod03"; fi
		ci_outputs "$dir" "kfleet-out/${job#kfleet-}" "$rc" "$id" "$hosts"
		gitlab_artifacts "$T/$job.sh" "$dir" "kfleet-out/${job#kfleet-}"
	done
	return 0
}
check "GitLab: both jobs' scripts run; kfleet run exits 4; JUnit report, run.json, rollout and build logs kept" gitlab_run

check "Jenkinsfile: balanced; pipeline, agents, Staging then Production with input; sh; junit and archiveArtifacts always" \
	python3 "$CI_CHECK" jenkins-structure "$JENKINS"

jenkins_run() {
	local stage out dir=$T/jenkins rc id=2 hosts line kout
	local -a envs
	mkdir -p "$dir"
	for stage in Staging Production; do
		id=$((id + 1))
		out=$(python3 "$CI_CHECK" jenkins-stage "$JENKINS" "$stage" 2>&1) || {
			echo "cannot read stage $stage: $out"
			continue
		}
		envs=()
		while IFS= read -r line; do
			[ "$line" = "==SCRIPT==" ] && break
			envs+=("$line")
		done <<<"$out"
		sed '1,/^==SCRIPT==$/d' <<<"$out" >"$T/jenkins-$stage.sh"
		shellcheck -s sh "$T/jenkins-$stage.sh" | sed "s/^/$stage: /"
		# Jenkins runs `sh -xe SCRIPT` in the workspace with the parameters
		# and environment directives exported; the site's settings on top.
		rc=0
		(cd "$dir" && env "${envs[@]}" "${CI_ENV[@]}" dash -xe "$T/jenkins-$stage.sh") >"$T/jenkins-$stage.log" 2>&1 || rc=$?
		if [ "$stage" = Staging ]; then hosts="stg1 stg2"; else hosts="prod01 prod02 prod03"; fi
		kout=$(printf '%s\n' "${envs[@]}" | sed -n 's/^KFLEET_OUT=//p')
		ci_outputs "$dir" "$kout" "$rc" "$id" "$hosts"
		grep -qF "archiveArtifacts artifacts: '$kout/**'" "$JENKINS" || echo "$stage: archiveArtifacts is not $kout/**"
		grep -qF "junit testResults: '$kout/junit.xml'" "$JENKINS" || echo "$stage: junit is not $kout/junit.xml"
	done
	return 0
}
check "Jenkins: both stages' shell run (dash -xe); kfleet run exits 4; JUnit report, run.json, rollout and build logs kept" jenkins_run

# ---------------------------------------------------------------------------
# The packages this test needs are in contrib/install-deps.sh's TEST group.
deps() {
	local test_pkgs p
	test_pkgs=$(sed -n '/^TEST="/,/"$/p' "$S/contrib/install-deps.sh")
	for p in systemd groff-base man-db mandoc python3-yaml shellcheck jq dash; do
		grep -qw -- "$p" <<<"$test_pkgs" || echo "contrib/install-deps.sh TEST lacks $p"
	done
}
check "contrib/install-deps.sh TEST has this test's packages" deps

echo
if [ "$FAILS" = 0 ]; then
	echo "test_contrib: $CHECKS checks: $CHECKS passed, 0 failed"
else
	echo "test_contrib: $CHECKS checks: $((CHECKS - FAILS)) passed, $FAILS failed" >&2
	exit 1
fi
