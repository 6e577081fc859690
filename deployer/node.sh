#!/bin/sh
# kfleet-node: the node-side program of kfleet. deployer/NODE.md is its
# specification; this file is sent with every command, as
#
#   sh -c "$SCRIPT" kfleet-node ACTION [--option VALUE]...
#
# so it uses nothing next to itself, not even $0.
#
# Rules for this text:
# - POSIX sh (dash, busybox ash, bash --posix), checked with shellcheck -s sh:
#   no local, no arrays, no [[ ]], no $'..'. Functions return values in
#   global variables (REPLY and friends), so nothing runs in a subshell that
#   should end the program.
# - Every option value is validated before it reaches a path, a command or a
#   file; node data (the state file, os-release, /sys, /proc, tool output) is
#   read and checked, never evaluated.
# - stdout carries records only; the last line is "ok ACTION" or
#   "error WORD MESSAGE". Words for a person go to stderr as "kfleet-node: ...".
# - Every path starts with $ROOT (KFLEET_ROOT), and depmod and modprobe get it
#   as their base, so the tests run all of it in a temporary directory.
# - Steps that change the node are idempotent and, where it matters, atomic
#   (a temporary name, then a rename).
set -u
umask 022
LC_ALL=C
export LC_ALL
PATH=${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/sbin:/sbin
export PATH

ME=kfleet-node
NL='
'
CR=$(printf '\r')
# The tools NODE.md says a node needs: "tools missing" in check names the
# ones that are not there.
TOOLS='sh cat cp mv rm mkdir ls cmp tar gzip sha256sum df uname date grep head sort wc modprobe depmod'

ACTION=
LOGGED=0   # 1 once the action is one that writes the log (and its options passed)
LOGARGS=
TMP_IN=    # incoming/SHA.PID while a package is received
TMP_NEW=   # releases/D/.K.new.PID while it is unpacked
TMP_OLD=   # releases/D/.K.old.PID while a release is replaced
TMP_OLD_TO=
TMP_STATE= # .state.PID while the state is written
TMP_LIST=  # incoming/SHA.PID.list*: tar's listings of the package
MADE_RDIR= # releases/D and releases/ when this receive made them: a failed
MADE_REL=  # one removes them again (when empty)

# ---------------------------------------------------------------------------
# Output and the one exit path

say() {
	printf '%s: %s\n' "$ME" "$*" >&2
}

rec() {
	printf '%s\n' "$*"
}

# oneline TEXT: REPLY = its first line, without a final CR, at most 512 bytes.
oneline() {
	REPLY=${1%%"$NL"*}
	REPLY=${REPLY%"$CR"}
	if [ "${#REPLY}" -gt 512 ]; then
		REPLY=$(printf '%.512s' "$REPLY")
	fi
}

# lastline TEXT: REPLY = its last non-empty line, as oneline.
lastline() {
	_ll=$1
	while :; do
		case $_ll in
		*"$NL") _ll=${_ll%"$NL"} ;;
		*) break ;;
		esac
	done
	oneline "${_ll##*"$NL"}"
}

# Prints TEXT (a tool's output) on stderr, each line prefixed.
relay() {
	[ -n "$1" ] || return 0
	printf '%s\n' "$1" | while IFS= read -r _rl || [ -n "$_rl" ]; do
		printf '%s:   %s\n' "$ME" "$_rl" >&2
	done
}

cleanup() {
	if [ -n "$TMP_IN" ]; then rm -f "$TMP_IN"; fi
	if [ -n "$TMP_NEW" ]; then rm -rf "$TMP_NEW"; fi
	# A release moved aside and not yet replaced goes back where it was.
	if [ -n "$TMP_OLD" ] && [ -d "$TMP_OLD" ]; then
		if [ ! -e "$TMP_OLD_TO" ]; then mv "$TMP_OLD" "$TMP_OLD_TO" 2>/dev/null; else rm -rf "$TMP_OLD"; fi
	fi
	if [ -n "$TMP_STATE" ]; then rm -f "$TMP_STATE"; fi
	if [ -n "$TMP_LIST" ]; then rm -f "$TMP_LIST.t" "$TMP_LIST.v" "$TMP_LIST.e"; fi
	if [ -n "$MADE_RDIR" ]; then rmdir "$MADE_RDIR" 2>/dev/null; fi
	if [ -n "$MADE_REL" ]; then rmdir "$MADE_REL" 2>/dev/null; fi
	TMP_IN='' TMP_NEW='' TMP_OLD='' TMP_STATE='' TMP_LIST='' MADE_RDIR='' MADE_REL=''
	# The running action's claim (see action_claim) ends with it.
	if [ "${CLAIMED:-0}" = 1 ] && read_first "$KL/lock/pid" && [ "$REPLY" = "$$" ]; then
		rm -f "$KL/lock/pid"
	fi
	CLAIMED=0
}

log_action() { # RESULT
	[ "$LOGGED" = 1 ] || return 0
	[ -d "$KL" ] || return 0
	printf '%s %s%s -> %s\n' "$NOW" "$ACTION" "$LOGARGS" "$1" >>"$KL/log" 2>/dev/null || return 0
	# Bounded: past 1 MiB, the last 5000 lines stay.
	_sz=$(wc -c <"$KL/log" 2>/dev/null) || return 0
	case $_sz in *[!0-9\ ]* | '') return 0 ;; esac
	if [ "$_sz" -gt 1048576 ] && tail -n 5000 "$KL/log" >"$KL/.log.$$" 2>/dev/null; then
		mv -f "$KL/.log.$$" "$KL/log" 2>/dev/null || rm -f "$KL/.log.$$"
	else
		rm -f "$KL/.log.$$"
	fi
}

# finish 0 | finish CODE WORD RECORD [TEXT FOR A PERSON]
finish() {
	cleanup
	if [ "$1" = 0 ]; then
		log_action ok
		printf 'ok %s\n' "$ACTION"
	else
		oneline "$3"
		_fmsg=$REPLY
		if [ $# -ge 4 ]; then say "error: $4"; else say "error: $_fmsg"; fi
		log_action "error $2"
		printf 'error %s %s\n' "$2" "$_fmsg"
	fi
	trap - EXIT
	exit "$1"
}

# die WORD MESSAGE [TEXT FOR A PERSON]: the exit status follows from WORD.
die() {
	case $1 in
	usage) _dc=2 ;;
	locked) _dc=10 ;;
	sha256) _dc=11 ;;
	space) _dc=12 ;;
	busy) _dc=13 ;;
	modprobe) _dc=14 ;;
	verify) _dc=15 ;;
	missing) _dc=16 ;;
	package) _dc=17 ;;
	*) _dc=20 ;;
	esac
	if [ $# -ge 3 ]; then finish "$_dc" "$1" "$2" "$3"; else finish "$_dc" "$1" "$2"; fi
}

usage() {
	die usage "$1"
}

# shellcheck disable=SC2317 # reached through the EXIT trap
on_exit() {
	# Reached only when the shell exits without finish (a bug, or a signal).
	_rc=$?
	cleanup
	[ "$_rc" != 0 ] || _rc=20
	printf 'error env %s\n' "$ME stopped unexpectedly (status $_rc)"
	exit "$_rc"
}

# ---------------------------------------------------------------------------
# Values

valid_driver() {
	case $1 in
	'' | *[!0-9.]* | .* | *. | *..*) return 1 ;;
	esac
	[ "${#1}" -le 31 ] || return 1
	case $1 in
	*.*.*.*.*) return 1 ;;
	*.*) return 0 ;;
	esac
	return 1
}

valid_kernel() {
	case $1 in
	[0-9]*) ;;
	*) return 1 ;;
	esac
	case $1 in
	*[!A-Za-z0-9._+-]*) return 1 ;;
	esac
	[ "${#1}" -le 64 ]
}

valid_sha() {
	case $1 in
	*[!0-9a-f]*) return 1 ;;
	esac
	[ "${#1}" -eq 64 ]
}

valid_digits() {
	case $1 in
	'' | *[!0-9]*) return 1 ;;
	esac
	return 0
}

valid_profile() {
	case $1 in
	'' | *[!A-Za-z0-9_-]*) return 1 ;;
	esac
	[ "${#1}" -le 64 ]
}

# A module name must not start with '-': modprobe would take it for an option.
valid_modname() {
	case $1 in
	'' | -* | *[!A-Za-z0-9_-]*) return 1 ;;
	esac
	[ "${#1}" -le 55 ]
}

valid_owner() {
	case $1 in
	'' | *[!A-Za-z0-9._:@-]*) return 1 ;;
	esac
	[ "${#1}" -le 128 ]
}

# Words read from the node that go into records: a module version, an
# os-release ID or VERSION_ID, an architecture (what kfleet accepts).
valid_word() {
	case $1 in
	'' | *[!A-Za-z0-9._+~:-]*) return 1 ;;
	esac
	[ "${#1}" -le 63 ]
}

valid_osword() {
	case $1 in
	'' | *[!A-Za-z0-9._+~-]*) return 1 ;;
	esac
	[ "${#1}" -le 63 ]
}

valid_arch() {
	case $1 in
	'' | *[!A-Za-z0-9_]*) return 1 ;;
	esac
	[ "${#1}" -le 31 ]
}

# valid_modlist LIST: REPLY = the names, one space between them; BAD = the
# first bad name.
valid_modlist() {
	REPLY=
	BAD=
	_vn=0
	set -f
	for _vm in $1; do
		if ! valid_modname "$_vm"; then
			BAD=$_vm
			set +f
			return 1
		fi
		REPLY=${REPLY:+$REPLY }$_vm
		_vn=$((_vn + 1))
	done
	set +f
	[ "$_vn" -ge 1 ] && [ "$_vn" -le 64 ]
}

# split LINE: F1..F5 = its first words, NF = how many.
split() {
	set -f
	# shellcheck disable=SC2086 # split on purpose: the words of one line
	set -- $1
	set +f
	NF=$#
	F1=${1-} F2=${2-} F3=${3-} F4=${4-} F5=${5-}
}

# sysname NAME: REPLY = NAME as /sys/module spells it ('-' made '_').
sysname() {
	_sn=$1
	REPLY=
	while :; do
		case $_sn in
		*-*)
			REPLY=$REPLY${_sn%%-*}_
			_sn=${_sn#*-}
			;;
		*)
			REPLY=$REPLY$_sn
			break
			;;
		esac
	done
}

# reverse LIST: REPLY = its words in reverse order.
reverse() {
	REPLY=
	set -f
	for _rw in $1; do
		REPLY=$_rw${REPLY:+ $REPLY}
	done
	set +f
}

# safe_text TEXT: REPLY = TEXT with every byte outside a harmless set as '?'
# (process names are chosen by whoever starts the process).
safe_text() {
	_st=$1
	REPLY=
	while [ -n "$_st" ]; do
		_sc=${_st%"${_st#?}"}
		_st=${_st#?}
		case $_sc in
		[A-Za-z0-9._:/+=@-]) ;;
		*) _sc='?' ;;
		esac
		REPLY=$REPLY$_sc
	done
}

# read_first FILE: REPLY = its first line (1 when unreadable).
read_first() {
	REPLY=
	[ -f "$1" ] && [ -r "$1" ] || return 1
	{ IFS= read -r REPLY || [ -n "$REPLY" ]; } <"$1" 2>/dev/null
}

# escape_dots TEXT: REPLY = TEXT with each '.' as '\.' (for a grep pattern;
# the texts here hold no other special character).
escape_dots() {
	_ed=$1
	REPLY=
	while :; do
		case $_ed in
		*.*)
			REPLY="$REPLY${_ed%%.*}\\."
			_ed=${_ed#*.}
			;;
		*)
			REPLY=$REPLY$_ed
			break
			;;
		esac
	done
}

have() {
	command -v "$1" >/dev/null 2>&1
}

# run_t SECONDS CMD...: CMD, bounded by timeout(1) where it exists (a GPU that
# fell off the bus makes nvidia-smi hang for minutes).
run_t() {
	_rt=$1
	shift
	if have timeout; then timeout "$_rt" "$@"; else "$@"; fi
}

# ---------------------------------------------------------------------------
# The node

kmod_modprobe() {
	if [ -n "$ROOT" ]; then modprobe -d "$ROOT" "$@"; else modprobe "$@"; fi
}

kmod_depmod() { # KERNEL
	if [ -n "$ROOT" ]; then depmod -b "$ROOT" -a "$1"; else depmod -a "$1"; fi
}

need_root() {
	# Under a test root nothing needs root; on a real node every change does.
	[ -z "$ROOT" ] || return 0
	_uid=$(id -u 2>/dev/null) || return 0
	[ "$_uid" = 0 ] || die env "$ACTION must run as root (uid is $_uid): use sudo or become"
}

need_tools() {
	_missing=
	for _t in "$@"; do
		have "$_t" || _missing="$_missing $_t"
	done
	[ -z "$_missing" ] || die env "tools missing:$_missing"
}

ensure_kl() {
	[ -d "$KL" ] && return 0
	if ! mkdir -p "$KL" 2>/dev/null || ! chmod 0755 "$KL" 2>/dev/null; then
		die env "cannot create /var/lib/kfleet"
	fi
}

running_kernel() {
	RUNNING=$(uname -r 2>/dev/null) || RUNNING=
	valid_kernel "$RUNNING" || RUNNING=
}

# df_avail PATH: REPLY = KiB available where PATH is (or its nearest
# existing parent), "-" when df does not say.
df_avail() {
	_dd=$1
	while [ ! -d "$_dd" ]; do
		_dd=${_dd%/*}
		[ -n "$_dd" ] || _dd=/
	done
	REPLY=-
	_df=$(df -Pk "$_dd" 2>/dev/null) || return 1
	case $_df in
	*"$NL"*) _df=${_df#*"$NL"} ;;
	*) return 1 ;;
	esac
	split "${_df%%"$NL"*}"
	valid_digits "$F4" || return 1
	REPLY=$F4
}

# rel_held D K: true when releases/D/K is complete; RH_SHA = its sha256.
rel_held() {
	RH_SHA=
	_rd=$KL/releases/$1/$2
	[ -f "$_rd/pkg/install.sh" ] && [ -f "$_rd/pkg/uninstall.sh" ] || return 1
	read_first "$_rd/sha256" || return 1
	valid_sha "$REPLY" || return 1
	for _ko in "$_rd"/pkg/modules/*.ko; do
		[ -f "$_ko" ] || continue
		RH_SHA=$REPLY
		return 0
	done
	return 1
}

# dep_has KERNEL FILE: modules.dep of KERNEL names updates/kfleet/FILE.
dep_has() {
	_dep=$ROOT/lib/modules/$1/modules.dep
	[ -f "$_dep" ] || return 1
	escape_dots "$2"
	_fre=$REPLY
	escape_dots "$1"
	grep -q -e "^updates/kfleet/$_fre:" -e "^/lib/modules/$REPLY/updates/kfleet/$_fre:" "$_dep" 2>/dev/null
}

# files_status KERNEL DRIVER: FS = ok | changed | missing, FS_DETAIL why.
files_status() {
	FS=ok
	FS_DETAIL=
	_dest=$ROOT/lib/modules/$1/updates/kfleet
	if ! rel_held "$2" "$1"; then
		FS=missing
		FS_DETAIL="release $2 for $1 is not on the node"
		return
	fi
	for _ko in "$KL/releases/$2/$1"/pkg/modules/*.ko; do
		[ -f "$_ko" ] || continue
		_f=${_ko##*/}
		if ! valid_modname "${_f%.ko}"; then
			FS=changed
			FS_DETAIL="the release holds a module with a bad name"
			return
		fi
		if [ ! -f "$_dest/$_f" ]; then
			FS=missing
			FS_DETAIL="$_f is not in /lib/modules/$1/updates/kfleet"
			return
		fi
		if ! cmp -s "$_ko" "$_dest/$_f"; then
			FS=changed
			FS_DETAIL="/lib/modules/$1/updates/kfleet/$_f is not the file of release $2"
			return
		fi
		if ! dep_has "$1" "$_f"; then
			FS=changed
			FS_DETAIL="modules.dep of $1 does not name updates/kfleet/$_f (depmod not run?)"
			return
		fi
	done
}

# mod_version NAME: REPLY = the loaded version, "-" loaded without one,
# "none" not loaded.
mod_version() {
	sysname "$1"
	_sd=$SYSMOD/$REPLY
	if [ ! -d "$_sd" ]; then
		REPLY=none
	elif read_first "$_sd/version" && valid_word "$REPLY"; then
		:
	else
		REPLY=-
	fi
}

# ---------------------------------------------------------------------------
# The state file

ST_LINES= # "current K D S P" and "previous K D S P", each ending in a newline
ST_DRIVER=
ST_KERNEL=

state_load() {
	ST_LINES=
	ST_DRIVER=
	ST_KERNEL=
	[ -f "$KL/state" ] || return 0
	while IFS= read -r _sl || [ -n "$_sl" ]; do
		case $_sl in
		driver=*) valid_driver "${_sl#driver=}" && ST_DRIVER=${_sl#driver=} ;;
		kernel=*) valid_kernel "${_sl#kernel=}" && ST_KERNEL=${_sl#kernel=} ;;
		current\ * | previous\ *)
			split "$_sl"
			if [ "$NF" != 5 ] || ! valid_kernel "$F2" || ! valid_driver "$F3" ||
				! valid_sha "$F4" || ! valid_profile "$F5"; then
				continue
			fi
			_st1=$F1 _st2=$F2 _st3=$F3 _st4=$F4 _st5=$F5
			# The first line for a kernel wins; a repeated one is dropped.
			state_find "$_st1" "$_st2" && continue
			ST_LINES="$ST_LINES$_st1 $_st2 $_st3 $_st4 $_st5$NL"
			;;
		esac
	done <"$KL/state"
}

# state_find current|previous K: SF_D, SF_S, SF_P of that line, or false.
state_find() {
	SF_D='' SF_S='' SF_P=''
	_sr=$ST_LINES
	while [ -n "$_sr" ]; do
		_sline=${_sr%%"$NL"*}
		_sr=${_sr#*"$NL"}
		case $_sline in
		"$1 $2 "*)
			split "$_sline"
			SF_D=$F3 SF_S=$F4 SF_P=$F5
			return 0
			;;
		esac
	done
	return 1
}

# state_put current|previous K [D S P]: replaces (or, without D, removes)
# that kernel's line.
state_put() {
	_sr=$ST_LINES
	_snew=
	while [ -n "$_sr" ]; do
		_sline=${_sr%%"$NL"*}
		_sr=${_sr#*"$NL"}
		case $_sline in
		"$1 $2 "*) ;;
		*) _snew="$_snew$_sline$NL" ;;
		esac
	done
	if [ $# -ge 5 ]; then _snew="$_snew$1 $2 $3 $4 $5$NL"; fi
	ST_LINES=$_snew
}

# state_write: the file, rewritten whole (a temporary file, then mv), when
# its text changes.
state_write() {
	_stext="# kfleet node state; written by kfleet-node, do not edit"
	[ -z "$ST_DRIVER" ] || _stext="$_stext${NL}driver=$ST_DRIVER"
	[ -z "$ST_KERNEL" ] || _stext="$_stext${NL}kernel=$ST_KERNEL"
	for _stype in current previous; do
		_sr=$ST_LINES
		while [ -n "$_sr" ]; do
			_sline=${_sr%%"$NL"*}
			_sr=${_sr#*"$NL"}
			case $_sline in
			"$_stype "*) _stext="$_stext$NL$_sline" ;;
			esac
		done
	done
	if [ -f "$KL/state" ]; then
		_sold=$(cat "$KL/state" 2>/dev/null) || _sold=
		[ "$_sold" != "$_stext" ] || return 0
	fi
	TMP_STATE=$KL/.state.$$
	if ! printf '%s\n' "$_stext" >"$TMP_STATE" 2>/dev/null ||
		! mv -f "$TMP_STATE" "$KL/state" 2>/dev/null; then
		die env "cannot write /var/lib/kfleet/state"
	fi
	TMP_STATE=
}

# ---------------------------------------------------------------------------
# The lock

# lock_read: LK_OWNER, LK_SINCE of the lock; LK_VALID=0 (and "unknown 0")
# when its owner file is missing or does not parse.
lock_read() {
	LK_OWNER=unknown LK_SINCE=0 LK_VALID=0
	read_first "$KL/lock/owner" || return 1
	split "$REPLY"
	[ "$NF" = 2 ] && valid_owner "$F1" && valid_digits "$F2" || return 1
	LK_OWNER=$F1 LK_SINCE=$F2 LK_VALID=1
}

lock_write() {
	if printf '%s %s\n' "$O_OWNER" "$NOW" >"$KL/lock/owner.$$" 2>/dev/null &&
		mv -f "$KL/lock/owner.$$" "$KL/lock/owner" 2>/dev/null; then
		return 0
	fi
	rm -rf "$KL/lock"
	die env "cannot write /var/lib/kfleet/lock/owner"
}

# action_claim: lock/pid names the node.sh process that is changing the
# node now. A change runs to its end even when kfleet's connection is gone
# (HUP and PIPE are ignored), so a resumed rollout, which holds the same lock,
# could start its next action beside it: it waits for that process instead
# (up to 120 s). The pid is checked against the real /proc (a live process
# whose command line names kfleet-node), so a stale pid is not waited for.
action_claim() {
	_waited=0
	while read_first "$KL/lock/pid" && valid_digits "$REPLY" && [ "$REPLY" != "$$" ] &&
		kill -0 "$REPLY" 2>/dev/null && grep -q kfleet-node "/proc/$REPLY/cmdline" 2>/dev/null; do
		[ "$_waited" = 0 ] && say "waiting for the earlier action of this lock (pid $REPLY) to end"
		_waited=$((_waited + 1))
		if [ "$_waited" -gt 120 ]; then
			die locked "$LK_OWNER $LK_SINCE" "an earlier action (pid $REPLY) of $LK_OWNER still runs after 120 s"
		fi
		sleep 1
	done
	if printf '%s\n' "$$" >"$KL/lock/pid.$$" 2>/dev/null && mv -f "$KL/lock/pid.$$" "$KL/lock/pid" 2>/dev/null; then
		CLAIMED=1
		return 0
	fi
	die env "cannot write /var/lib/kfleet/lock/pid"
}

lock_take() {
	LK_OWNER=$O_OWNER LK_SINCE=$NOW
	if mkdir "$KL/lock" 2>/dev/null; then
		lock_write
		action_claim
		return 0
	fi
	[ -d "$KL/lock" ] || die env "cannot create /var/lib/kfleet/lock"
	if ! lock_read; then
		# Another run may be between its mkdir and its owner file.
		sleep 1 2>/dev/null
		lock_read
	fi
	if [ "$LK_VALID" = 1 ] && [ "$LK_OWNER" = "$O_OWNER" ]; then
		say "the lock is ours already (since $LK_SINCE): going on"
		action_claim
		return 0
	fi
	if [ "$F_BREAK" = 1 ]; then
		say "breaking the lock of $LK_OWNER (held since $LK_SINCE)"
		rm -rf "$KL/lock"
		mkdir "$KL/lock" 2>/dev/null || die env "cannot take /var/lib/kfleet/lock after breaking it"
		lock_write
		action_claim
		return 0
	fi
	if [ "$LK_VALID" = 1 ]; then
		die locked "$LK_OWNER $LK_SINCE" "the node is locked by $LK_OWNER since $LK_SINCE (epoch): another deploy holds it; --break-lock takes it over"
	fi
	die locked "$LK_OWNER $LK_SINCE" "/var/lib/kfleet/lock has no readable owner (a run killed while locking?): --break-lock takes it over"
}

# ---------------------------------------------------------------------------
# Modules

# nv_users: REPLY = "PID (COMM), ..." of the processes with /dev/nvidia* open.
nv_users() {
	REPLY=
	[ -d "$ROOT/proc" ] || return 0
	# /dev/null as a second name makes ls print a "DIR:" line before each
	# directory even when there is only one.
	# shellcheck disable=SC2010 # the names here are /proc's: digits and "fd"
	_ls=$(ls -l /dev/null "$ROOT"/proc/[0-9]*/fd 2>/dev/null | grep -e '/fd:$' -e ' -> /dev/nvidia')
	_np=0
	_pid=
	_seen=' '
	_users=
	while IFS= read -r _l; do
		case $_l in
		*/fd:)
			_pid=${_l%/fd:}
			_pid=${_pid##*/}
			valid_digits "$_pid" || _pid=
			;;
		*" -> /dev/nvidia"*)
			[ -n "$_pid" ] || continue
			case $_seen in *" $_pid "*) continue ;; esac
			_seen="$_seen$_pid "
			_np=$((_np + 1))
			[ "$_np" -le 20 ] || continue
			if read_first "$ROOT/proc/$_pid/comm"; then safe_text "$REPLY"; else REPLY='?'; fi
			_users="${_users:+$_users, }$_pid ($REPLY)"
			;;
		esac
	done <<EOF
$_ls
EOF
	[ "$_np" -le 20 ] || _users="$_users and $((_np - 20)) more"
	REPLY=$_users
}

# busy_fail NAME: exit 13, naming what holds NAME.
busy_fail() {
	nv_users
	_users=${REPLY:-none found}
	sysname "$1"
	_holders=
	for _h in "$SYSMOD/$REPLY"/holders/*; do
		[ -e "$_h" ] || continue
		_holders="${_holders:+$_holders }${_h##*/}"
	done
	die busy "cannot unload $1: in use by $_users; holders: ${_holders:-none found}" \
		"cannot unload $1: in use by $_users; holders: ${_holders:-none found} (stop what uses the GPU: nvidia-persistenced, X, jobs)"
}

# unload_modules LIST: modprobe -r of each loaded one, in order.
unload_modules() {
	set -f
	for _um in $1; do
		set +f
		sysname "$_um"
		[ -d "$SYSMOD/$REPLY" ] || continue
		_out=$(kmod_modprobe -r "$_um" 2>&1 </dev/null)
		_rc=$?
		if [ "$_rc" != 0 ]; then
			relay "$_out"
			busy_fail "$_um"
		fi
		say "unloaded $_um"
	done
	set +f
}

# load_modules LIST: modprobe of each, in order.
# kernel_says NAME: REPLY = the kernel log's last line about NAME or about
# module loading ("Loading of module with unavailable key is rejected"),
# "" when there is none or no dmesg: the kernel's reason, which modprobe's
# "Key was rejected by service" or "Exec format error" does not give.
kernel_says() {
	REPLY=
	have dmesg || return 0
	_ks=$(dmesg 2>/dev/null | grep -E "$1|[Ll]oading of |module verification|disagrees about version" | tail -n 1)
	oneline "$_ks"
	REPLY=$(printf '%s' "$REPLY" | sed 's/^\[[ 0-9.]*\] //')
}

# load_modules LIST [optional]: modprobe each, in order. With "optional"
# (a rollback to none), a module that is nowhere on the system is left
# out: the node goes back to having none, as before kfleet.
load_modules() {
	set -f
	for _lm in $1; do
		set +f
		if [ "${2:-}" = optional ] && ! kmod_modprobe -n -q "$_lm" </dev/null >/dev/null 2>&1; then
			say "$_lm is nowhere on the system now: not loaded"
			continue
		fi
		_out=$(kmod_modprobe "$_lm" 2>&1 </dev/null)
		_rc=$?
		if [ "$_rc" != 0 ]; then
			relay "$_out"
			oneline "$_out"
			[ -n "$REPLY" ] || REPLY="modprobe exited with status $_rc"
			_why=$REPLY
			kernel_says "$_lm"
			[ -z "$REPLY" ] || _why="$_why (kernel: $REPLY)"
			die modprobe "$_lm $_why"
		fi
		mod_version "$_lm"
		say "loaded $_lm ($REPLY)"
	done
	set +f
}

print_loaded() { # LIST
	set -f
	for _pm in $1; do
		set +f
		mod_version "$_pm"
		rec "loaded $_pm $REPLY"
	done
	set +f
}

# run_pkg SCRIPT: runs a package's install.sh or uninstall.sh with sh and
# KFLEET_ROOT; its stdout and stderr go to our stderr; LAST = the last line
# it wrote to stderr.
run_pkg() {
	LAST=
	say "running ${1#"$KL"/}"
	{
		# shellcheck disable=SC2069 # stderr into the variable, stdout to our stderr
		_err=$(KFLEET_ROOT=$ROOT sh "$1" 2>&1 >&3 </dev/null)
		_rc=$?
	} 3>&2
	relay "$_err"
	lastline "$_err"
	LAST=$REPLY
	[ -n "$LAST" ] || LAST="exit status $_rc"
	return "$_rc"
}

# The old current and previous release of a kernel, from the state.
state_old() { # KERNEL
	OC_D='' OC_S='' OC_P='' OP_D=''
	if state_find current "$1"; then OC_D=$SF_D OC_S=$SF_S OC_P=$SF_P; fi
	if state_find previous "$1"; then OP_D=$SF_D; fi
}

# state_make_current K D S P: (D, S) becomes K's current. The old current
# becomes the previous when it is another driver; a rebuilt package of the
# same driver replaces it in place (a release is releases/D/K, so there is
# never a second one of the same D to go back to).
state_make_current() {
	state_old "$1"
	if [ -n "$OC_D" ] && [ "$OC_D" != "$2" ]; then
		state_put previous "$1" "$OC_D" "$OC_S" "$OC_P"
	elif [ -n "$OP_D" ] && [ "$OP_D" = "$2" ]; then
		state_put previous "$1"
	fi
	state_put current "$1" "$2" "$3" "$4"
	ST_DRIVER=$2
	ST_KERNEL=$1
}

# ---------------------------------------------------------------------------
# Options

O_DRIVER='' O_KERNEL='' O_SHA='' O_SIZE='' O_PROFILE='' O_MODULES='' O_UNLOAD='' O_VMOD=''
O_OWNER='' O_SMI=auto O_COMMAND='' O_TO='' F_BREAK=0 F_LOADED=0 F_RELOAD=0 HAVE_COMMAND=0
SEEN=' '

# The options each action takes.
allowed() { # ACTION OPTION
	case $1:$2 in
	check:driver | check:modules) return 0 ;;
	receive:driver | receive:kernel | receive:sha256 | receive:size | receive:owner | receive:break-lock) return 0 ;;
	install:profile | install:driver | install:kernel | install:sha256 | install:owner | install:break-lock) return 0 ;;
	load:driver | load:kernel | load:modules | load:unload | load:owner | load:break-lock) return 0 ;;
	verify:driver | verify:kernel | verify:modules | verify:loaded | verify:version-module | verify:smi | verify:command) return 0 ;;
	rollback:profile | rollback:kernel | rollback:to | rollback:owner | rollback:reload | rollback:modules | rollback:unload | rollback:break-lock) return 0 ;;
	unlock:owner | unlock:break-lock) return 0 ;;
	esac
	return 1
}

need_opt() { # NAME...
	for _no in "$@"; do
		case $SEEN in
		*" $_no "*) ;;
		*) usage "$ACTION needs --$_no" ;;
		esac
	done
}

parse_options() {
	while [ $# -gt 0 ]; do
		_opt=$1
		shift
		_hasval=0
		_val=
		case $_opt in
		--*=*)
			_val=${_opt#*=}
			_opt=${_opt%%=*}
			_hasval=1
			;;
		esac
		case $_opt in
		--break-lock | --loaded | --reload)
			[ "$_hasval" = 0 ] || usage "$_opt takes no value"
			;;
		--driver | --kernel | --sha256 | --size | --profile | --modules | --unload | \
			--version-module | --owner | --smi | --command | --to)
			if [ "$_hasval" = 0 ]; then
				[ $# -gt 0 ] || usage "$_opt needs a value"
				_val=$1
				shift
			fi
			;;
		*)
			oneline "$_opt"
			usage "unknown option '$REPLY'"
			;;
		esac
		_name=${_opt#--}
		allowed "$ACTION" "$_name" || usage "$ACTION does not take $_opt"
		case $SEEN in
		*" $_name "*) usage "$_opt given twice" ;;
		esac
		SEEN="$SEEN$_name "
		oneline "$_val"
		_shown=$REPLY
		case $_name in
		driver)
			valid_driver "$_val" ||
				usage "bad --driver '$_shown': 2 to 4 dot-separated numbers, 31 bytes at most"
			O_DRIVER=$_val
			;;
		to)
			[ "$_val" = none ] || valid_driver "$_val" ||
				usage "bad --to '$_shown': a driver version (2 to 4 dot-separated numbers) or none"
			O_TO=$_val
			;;
		kernel)
			valid_kernel "$_val" ||
				usage "bad --kernel '$_shown': a digit, then letters, digits and ._+- (64 bytes at most)"
			O_KERNEL=$_val
			;;
		sha256)
			valid_sha "$_val" || usage "bad --sha256 '$_shown': 64 lower-case hex digits"
			O_SHA=$_val
			;;
		size)
			if ! valid_digits "$_val" || [ "${#_val}" -gt 15 ]; then
				usage "bad --size '$_shown': 1 to 15 decimal digits"
			fi
			# No leading zeros: sh arithmetic reads 010 as octal.
			while :; do
				case $_val in
				0?*) _val=${_val#0} ;;
				*) break ;;
				esac
			done
			O_SIZE=$_val
			;;
		profile)
			valid_profile "$_val" || usage "bad --profile '$_shown': 1 to 64 of A-Z a-z 0-9 _ -"
			O_PROFILE=$_val
			;;
		modules | unload)
			split "$_val"
			if [ "$NF" = 0 ]; then
				# An empty list is the option not given (kfleet may have
				# none to pass).
				SEEN=${SEEN%"$_name "}
				continue
			fi
			if ! valid_modlist "$_val"; then
				if [ -n "$BAD" ]; then
					oneline "$BAD"
					usage "bad module name '$REPLY' in --$_name: 1 to 55 of A-Z a-z 0-9 _ -, not starting with -"
				fi
				usage "bad --$_name '$_shown': 1 to 64 space-separated module names"
			fi
			_val=$REPLY
			if [ "$_name" = modules ]; then O_MODULES=$_val; else O_UNLOAD=$_val; fi
			;;
		version-module)
			if [ -z "$_val" ]; then
				SEEN=${SEEN%"$_name "}
				continue
			fi
			valid_modname "$_val" || usage "bad --version-module '$_shown': a module name"
			O_VMOD=$_val
			;;
		owner)
			valid_owner "$_val" || usage "bad --owner '$_shown': 1 to 128 of A-Z a-z 0-9 . _ : @ -"
			O_OWNER=$_val
			;;
		smi)
			case $_val in
			auto | require | skip) O_SMI=$_val ;;
			*) usage "bad --smi '$_shown': auto, require or skip" ;;
			esac
			;;
		command)
			O_COMMAND=$_val
			HAVE_COMMAND=1
			;;
		break-lock) F_BREAK=1 ;;
		loaded) F_LOADED=1 ;;
		reload) F_RELOAD=1 ;;
		esac
		case $_name in
		command) ;;
		break-lock | loaded | reload) LOGARGS="$LOGARGS $_opt" ;;
		*) LOGARGS="$LOGARGS $_opt $_val" ;;
		esac
	done
}

# The options each action needs, and the ones that only go together.
required_options() {
	case $ACTION in
	receive) need_opt driver kernel sha256 size owner ;;
	install) need_opt profile driver kernel sha256 owner ;;
	load) need_opt driver kernel modules owner ;;
	verify)
		need_opt driver kernel
		[ "$F_LOADED" = 0 ] || [ -n "$O_MODULES" ] || usage "verify --loaded needs --modules"
		;;
	rollback)
		need_opt profile kernel to owner
		if [ "$F_RELOAD" = 1 ]; then
			[ -n "$O_MODULES$O_UNLOAD" ] || usage "rollback --reload needs --modules (to load) or --unload"
		else
			[ -z "$O_MODULES$O_UNLOAD" ] || usage "rollback takes --modules and --unload only with --reload"
		fi
		;;
	unlock) need_opt owner ;;
	esac
}

# ---------------------------------------------------------------------------
# check

do_check() {
	rec "node 1"
	_arch=$(uname -m 2>/dev/null) || _arch=
	valid_arch "$_arch" || _arch=-
	rec "arch $_arch"
	running_kernel
	rec "running ${RUNNING:--}"

	# Installed kernels: a module tree with modules.dep or build, or a boot image.
	_ks=$RUNNING
	for _kd in "$ROOT"/lib/modules/*; do
		[ -d "$_kd" ] || continue
		[ -e "$_kd/modules.dep" ] || [ -e "$_kd/build" ] || continue
		valid_kernel "${_kd##*/}" && _ks="$_ks$NL${_kd##*/}"
	done
	for _kv in "$ROOT"/boot/vmlinuz-*; do
		[ -e "$_kv" ] || continue
		valid_kernel "${_kv##*/vmlinuz-}" && _ks="$_ks$NL${_kv##*/vmlinuz-}"
	done
	if have sort; then
		_ks=$(printf '%s\n' "$_ks" | sort -u)
	fi
	_kprinted=' '
	while IFS= read -r _k; do
		[ -n "$_k" ] || continue
		case $_kprinted in *" $_k "*) continue ;; esac
		_kprinted="$_kprinted$_k "
		rec "kernel $_k"
	done <<EOF
$_ks
EOF

	_osid=- _osver=-
	_osf=$ROOT/etc/os-release
	[ -f "$_osf" ] || _osf=$ROOT/usr/lib/os-release
	if [ -f "$_osf" ] && [ -r "$_osf" ]; then
		while IFS= read -r _ol || [ -n "$_ol" ]; do
			case $_ol in
			ID=* | VERSION_ID=*)
				_ov=${_ol#*=}
				_ov=${_ov%"$CR"}
				case $_ov in
				\"*\") _ov=${_ov#\"} _ov=${_ov%\"} ;;
				\'*\') _ov=${_ov#\'} _ov=${_ov%\'} ;;
				esac
				valid_osword "$_ov" || _ov=-
				case $_ol in
				ID=*) _osid=$_ov ;;
				*) _osver=$_ov ;;
				esac
				;;
			esac
		done <"$_osf"
	fi
	rec "os $_osid $_osver"

	# A free line only when df answers.
	df_avail "$KL" && rec "free /var/lib/kfleet $REPLY"
	df_avail "$ROOT/lib/modules" && rec "free /lib/modules $REPLY"

	for _rd in "$KL"/releases/*/*; do
		[ -d "$_rd" ] || continue
		_rk=${_rd##*/}
		_rdrv=${_rd%/*}
		_rdrv=${_rdrv##*/}
		valid_driver "$_rdrv" || continue
		valid_kernel "$_rk" || continue
		rel_held "$_rdrv" "$_rk" && rec "held $_rdrv $_rk $RH_SHA"
	done

	state_load
	_sr=$ST_LINES
	_cur=
	for _stype in current previous; do
		_sr=$ST_LINES
		while [ -n "$_sr" ]; do
			_sline=${_sr%%"$NL"*}
			_sr=${_sr#*"$NL"}
			case $_sline in
			"$_stype "*)
				rec "$_sline"
				[ "$_stype" = previous ] || _cur="$_cur$_sline$NL"
				;;
			esac
		done
	done
	while [ -n "$_cur" ]; do
		_sline=${_cur%%"$NL"*}
		_cur=${_cur#*"$NL"}
		split "$_sline"
		_fk=$F2
		files_status "$_fk" "$F3"
		rec "files $_fk $FS"
	done

	[ -z "$O_MODULES" ] || print_loaded "$O_MODULES"

	_us=-
	_smi=absent
	if have nvidia-smi; then
		_smi=present
		_sout=$(run_t 20 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null) &&
			oneline "$_sout" && split "$REPLY" && valid_driver "$F1" && [ "$NF" = 1 ] && _us=$F1
	fi
	if [ "$_us" = - ]; then
		for _ld in /usr/lib /usr/lib64 /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu; do
			for _lf in "$ROOT$_ld"/libnvidia-ml.so.*; do
				[ -e "$_lf" ] || continue
				_lv=${_lf##*/libnvidia-ml.so.}
				if valid_driver "$_lv"; then
					_us=$_lv
					break 2
				fi
			done
		done
	fi
	rec "userspace $_us"
	rec "smi $_smi"

	_sb=unknown
	if have mokutil; then
		_mout=$(run_t 20 mokutil --sb-state 2>&1)
		case $_mout in
		*"validation is disabled in shim"*) _sb=disabled ;;
		*"SecureBoot enabled"*) _sb=enabled ;;
		*"SecureBoot disabled"* | *"doesn't support Secure Boot"* | *"EFI variables are not supported"*) _sb=disabled ;;
		esac
	fi
	_efi=$ROOT/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
	if [ "$_sb" = unknown ] && [ -f "$_efi" ] && have od; then
		split "$(od -An -tu1 "$_efi" 2>/dev/null)"
		if [ "$NF" = 5 ]; then
			case $F5 in
			1) _sb=enabled ;;
			0) _sb=disabled ;;
			esac
		fi
	fi
	rec "secure_boot $_sb"

	_se=-
	if read_first "$SYSMOD/module/parameters/sig_enforce"; then
		case $REPLY in
		Y) _se=1 ;;
		N) _se=0 ;;
		esac
	fi
	rec "sig_enforce $_se"

	if [ -d "$KL/lock" ]; then
		lock_read
		rec "lock $LK_OWNER $LK_SINCE"
	else
		rec "lock free"
	fi

	_missing=
	for _t in $TOOLS; do
		have "$_t" || _missing="$_missing $_t"
	done
	[ -z "$_missing" ] || rec "tools missing$_missing"
	finish 0
}

# ---------------------------------------------------------------------------
# receive

# gone PID: true when PID names no running process (and is not ours).
gone() {
	valid_digits "$1" || return 1
	[ "$1" != $$ ] || return 1
	! kill -0 "$1" 2>/dev/null
}

# clean_incoming: removes what runs that are gone left in incoming/
# (SHA.PID and SHA.PID.list.X).
clean_incoming() {
	for _cs in "$KL"/incoming/*; do
		[ -e "$_cs" ] || continue
		_cpid=${_cs##*/}
		_cpid=${_cpid#*.}
		_cpid=${_cpid%%.*}
		gone "$_cpid" || continue
		say "removing ${_cs#"$KL"/}, left by an interrupted run"
		rm -f "$_cs"
	done
}

# clean_stale DIR: removes DIR/.K.new.PID left by runs that are gone; a
# release moved aside (.K.old.PID) goes back when K is missing.
clean_stale() {
	for _cs in "$1"/.*.new.[0-9]* "$1"/.*.old.[0-9]*; do
		[ -e "$_cs" ] || continue
		gone "${_cs##*.}" || continue
		case ${_cs##*/} in
		.*.old.*)
			_ck=${_cs##*/.}
			_ck=${_ck%.old.*}
			if valid_kernel "$_ck" && [ ! -e "$1/$_ck" ]; then
				say "restoring ${_cs#"$KL"/} left by an interrupted run"
				mv "$_cs" "$1/$_ck" 2>/dev/null && continue
			fi
			;;
		esac
		say "removing ${_cs#"$KL"/}, left by an interrupted run"
		rm -rf "$_cs"
	done
}

# tar_list FILE OUT [v]: tar -t (-tv) of the package into OUT, its stderr
# into TMP_LIST.e. GNU tar strips a leading '/' from the names it lists
# unless given -P, and the names must be seen as they are.
tar_list() {
	if [ "$TAR_GNU" = 1 ]; then
		tar -t"${3-}"zPf "$1" >"$2" 2>"$TMP_LIST.e"
	else
		tar -t"${3-}"zf "$1" >"$2" 2>"$TMP_LIST.e"
	fi
	_trc=$?
	_terr=$(cat "$TMP_LIST.e" 2>/dev/null)
	case $_terr in
	*"Removing leading"*) die package "the package is malformed: a member has an absolute path" ;;
	esac
	[ "$_trc" = 0 ] && return 0
	relay "$_terr"
	lastline "$_terr"
	die package "the package is malformed: tar -t${3-}zf failed: ${REPLY:-exit status $_trc}"
}

# check_members LIST VLIST: the archive's members (files of tar -t and
# tar -tv output) are regular files and directories under one top
# directory, with relative paths free of "..". TOP = that directory.
check_members() {
	TOP=
	while IFS= read -r _m; do
		[ -n "$_m" ] || continue
		oneline "$_m"
		case $_m in
		/*) die package "the package is malformed: member '$REPLY' has an absolute path" ;;
		esac
		case /$_m/ in
		*/../*) die package "the package is malformed: member '$REPLY' has a '..' component" ;;
		esac
		_t=${_m%%/*}
		case $_t in
		'' | . | .*) die package "the package is malformed: member '$REPLY' is not under a top directory" ;;
		*[!A-Za-z0-9._+-]*) die package "the package is malformed: top directory of '$REPLY' has odd characters" ;;
		esac
		if [ -z "$TOP" ]; then
			TOP=$_t
		elif [ "$_t" != "$TOP" ]; then
			die package "the package is malformed: more than one top directory ('$TOP' and '$_t')"
		fi
	done <"$1"
	[ -n "$TOP" ] || die package "the package is malformed: the archive is empty"
	# The type is the first letter of tar -tv's mode; busybox shows a hard
	# link as a "-" with "-> TARGET", GNU tar as "h" with "link to TARGET".
	while IFS= read -r _m; do
		case $_m in
		*" -> "* | *" link to "*) _mbad=1 ;;
		'' | -* | d*) _mbad=0 ;;
		*) _mbad=1 ;;
		esac
		case $_mbad in
		1)
			oneline "$_m"
			die package "the package is malformed: only files and directories are allowed: $REPLY"
			;;
		esac
	done <"$2"
}

do_receive() {
	need_root
	need_tools cat mv rm mkdir tar gzip sha256sum df wc
	ensure_kl
	lock_take

	_need=$(((3 * O_SIZE + 1023) / 1024 + 1024))
	df_avail "$KL" || die env "df -Pk /var/lib/kfleet did not say how much space is free"
	if [ "$REPLY" -lt "$_need" ]; then
		die space "/var/lib/kfleet $_need $REPLY" \
			"not enough space in /var/lib/kfleet: need $_need KiB (3 x the package + 1 MiB), have $REPLY KiB"
	fi

	mkdir -p "$KL/incoming" 2>/dev/null || die env "cannot create /var/lib/kfleet/incoming"
	clean_incoming
	TMP_IN=$KL/incoming/$O_SHA.$$
	# Exactly N bytes: a sender that keeps its end open does not hang us.
	if head -c 0 </dev/null >/dev/null 2>&1; then
		head -c "$O_SIZE" <&3 >"$TMP_IN" 2>/dev/null || die env "cannot write /var/lib/kfleet/incoming"
	else
		cat <&3 >"$TMP_IN" 2>/dev/null || die env "cannot write /var/lib/kfleet/incoming"
	fi
	exec 3<&-
	_got=$(wc -c <"$TMP_IN" 2>/dev/null) || die env "cannot read /var/lib/kfleet/incoming"
	split "$_got"
	_got=$F1
	_gsha=$(sha256sum <"$TMP_IN" 2>/dev/null) || die env "sha256sum failed"
	_gsha=${_gsha%% *}
	if [ "$_got" != "$O_SIZE" ] || [ "$_gsha" != "$O_SHA" ]; then
		die sha256 "received $_got bytes with sha256 $_gsha, expected $O_SIZE bytes with $O_SHA: nothing changed"
	fi
	say "received $_got bytes, sha256 ok"

	# What an interrupted receive left, first: a release it had moved aside
	# goes back, and may be the one asked for.
	for _cd in "$KL"/releases/*; do
		[ ! -d "$_cd" ] || clean_stale "$_cd"
	done
	_rdir=$KL/releases/$O_DRIVER
	if rel_held "$O_DRIVER" "$O_KERNEL" && [ "$RH_SHA" = "$O_SHA" ]; then
		say "release $O_DRIVER for $O_KERNEL is held already with this sha256: left as it is"
		rm -f "$TMP_IN"
		TMP_IN=
		rec "received $O_DRIVER $O_KERNEL $O_SHA"
		finish 0
	fi

	TAR_GNU=0
	case $(tar --version 2>/dev/null) in
	*"GNU tar"*) TAR_GNU=1 ;;
	esac
	TMP_LIST=$TMP_IN.list
	tar_list "$TMP_IN" "$TMP_LIST.t"
	tar_list "$TMP_IN" "$TMP_LIST.v" v
	check_members "$TMP_LIST.t" "$TMP_LIST.v"
	rm -f "$TMP_LIST.t" "$TMP_LIST.v" "$TMP_LIST.e"
	TMP_LIST=

	[ -d "$KL/releases" ] || MADE_REL=$KL/releases
	[ -d "$_rdir" ] || MADE_RDIR=$_rdir
	mkdir -p "$_rdir" 2>/dev/null || die env "cannot create /var/lib/kfleet/releases/$O_DRIVER"
	TMP_NEW=$_rdir/.$O_KERNEL.new.$$
	rm -rf "$TMP_NEW"
	mkdir "$TMP_NEW" 2>/dev/null || die env "cannot create ${TMP_NEW#"$KL"/}"
	_out=$(tar -xozf "$TMP_IN" -C "$TMP_NEW" 2>&1) || {
		relay "$_out"
		lastline "$_out"
		die package "the package is malformed: unpacking failed: $REPLY"
	}
	if [ ! -d "$TMP_NEW/$TOP" ] || [ -h "$TMP_NEW/$TOP" ]; then
		die package "the package is malformed: its top directory $TOP is not a directory"
	fi
	mv "$TMP_NEW/$TOP" "$TMP_NEW/pkg" 2>/dev/null || die env "cannot rename the package's top directory"
	[ -f "$TMP_NEW/pkg/install.sh" ] || die package "the package is malformed: no install.sh"
	[ -f "$TMP_NEW/pkg/uninstall.sh" ] || die package "the package is malformed: no uninstall.sh"
	_nko=0
	for _ko in "$TMP_NEW"/pkg/modules/*.ko; do
		[ -f "$_ko" ] && _nko=$((_nko + 1))
	done
	[ "$_nko" -gt 0 ] || die package "the package is malformed: no modules/*.ko"
	# sha256 last: without it a release is incomplete.
	printf '%s\n' "$O_SHA" >"$TMP_NEW/sha256" 2>/dev/null || die env "cannot write the release's sha256"

	_rel=$_rdir/$O_KERNEL
	if [ -e "$_rel" ] || [ -h "$_rel" ]; then
		say "replacing the release $O_DRIVER for $O_KERNEL on the node (incomplete or another sha256)"
		TMP_OLD_TO=$_rel
		TMP_OLD=$_rdir/.$O_KERNEL.old.$$
		mv "$_rel" "$TMP_OLD" 2>/dev/null || die env "cannot move the old release of $O_DRIVER for $O_KERNEL aside"
	fi
	mv "$TMP_NEW" "$_rel" 2>/dev/null || die env "cannot rename the new release into place"
	TMP_NEW=
	MADE_RDIR=
	MADE_REL=
	if [ -n "$TMP_OLD" ]; then
		rm -rf "$TMP_OLD"
		TMP_OLD=
	fi
	rm -f "$TMP_IN"
	TMP_IN=
	say "release $O_DRIVER for $O_KERNEL is held ($_nko modules)"
	rec "received $O_DRIVER $O_KERNEL $O_SHA"
	finish 0
}

# ---------------------------------------------------------------------------
# install

# vermagic_check PKGDIR KERNEL: every module of the package was built for
# KERNEL (the first word of its vermagic), as the kernel's loader will check:
# a package catalogued for the wrong kernel is refused here, before anything
# is installed (the node, not the catalog, is the judge).
vermagic_check() {
	for _vk in "$1"/modules/*.ko; do
		[ -f "$_vk" ] || continue
		_vm=$(tr '\000' '\n' <"$_vk" 2>/dev/null | sed -n 's/^vermagic=//p' | head -n 1)
		_vm=${_vm%% *}
		[ "$_vm" = "$2" ] ||
			die package "${_vk##*/} is built for kernel ${_vm:-(no vermagic)}, not $2: this package is not for this kernel (kfleet artifacts verify; rebuild it)"
	done
}

do_install() {
	need_root
	need_tools sh cat cp mv rm mkdir sha256sum depmod
	ensure_kl
	lock_take
	[ -d "$ROOT/lib/modules/$O_KERNEL" ] ||
		die missing "kernel $O_KERNEL is not installed on this node (no /lib/modules/$O_KERNEL)"
	rel_held "$O_DRIVER" "$O_KERNEL" ||
		die missing "release $O_DRIVER for $O_KERNEL is not on the node (or not complete): receive it first"
	[ "$RH_SHA" = "$O_SHA" ] ||
		die missing "release $O_DRIVER for $O_KERNEL on the node has sha256 $RH_SHA, not $O_SHA: receive it again"
	vermagic_check "$KL/releases/$O_DRIVER/$O_KERNEL/pkg" "$O_KERNEL"

	run_pkg "$KL/releases/$O_DRIVER/$O_KERNEL/pkg/install.sh" ||
		die package "install.sh of $O_DRIVER for $O_KERNEL failed: $LAST"

	state_load
	state_make_current "$O_KERNEL" "$O_DRIVER" "$O_SHA" "$O_PROFILE"
	state_write
	state_old "$O_KERNEL"

	# Only the current and the previous release of a kernel stay, and none
	# of a kernel removed from the node (an autoremoved old kernel): nothing
	# can install or roll back to those, and kept they would fill the disk,
	# one or two packages for every kernel the node ever ran.
	for _rd in "$KL"/releases/*/*; do
		[ -d "$_rd" ] || continue
		_rk=${_rd##*/}
		_rdrv=${_rd%/*}
		_rdrv=${_rdrv##*/}
		valid_kernel "$_rk" || continue
		valid_driver "$_rdrv" || continue
		if [ ! -d "$ROOT/lib/modules/$_rk" ]; then
			_why="that kernel is no longer installed"
		elif [ "$_rk" = "$O_KERNEL" ] && [ "$_rdrv" != "$OC_D" ] && [ "$_rdrv" != "$OP_D" ]; then
			_why="neither current nor previous"
		else
			continue
		fi
		say "removing the release $_rdrv for $_rk ($_why)"
		rm -rf "$_rd" || die env "cannot remove ${_rd#"$KL"/}"
		rmdir "${_rd%/*}" 2>/dev/null
	done
	rec "installed $O_KERNEL $O_DRIVER $O_SHA"
	finish 0
}

# ---------------------------------------------------------------------------
# load

do_load() {
	need_root
	need_tools modprobe
	running_kernel
	[ "$RUNNING" = "$O_KERNEL" ] ||
		die missing "$O_KERNEL is not the running kernel (${RUNNING:-unknown} is): its modules load after a reboot"
	ensure_kl
	lock_take
	state_load
	state_old "$O_KERNEL"
	[ "$OC_D" = "$O_DRIVER" ] ||
		die missing "driver $O_DRIVER is not installed for $O_KERNEL (current: ${OC_D:-none}): install it first"
	if [ -n "$O_UNLOAD" ]; then _ul=$O_UNLOAD; else reverse "$O_MODULES" && _ul=$REPLY; fi
	unload_modules "$_ul"
	load_modules "$O_MODULES"
	print_loaded "$O_MODULES"
	finish 0
}

# ---------------------------------------------------------------------------
# verify

FIRST_FAIL=

vcheck() { # NAME ok | NAME fail DETAIL
	if [ "$2" = ok ]; then
		rec "check $1 ok"
		return
	fi
	oneline "$3"
	rec "check $1 fail $REPLY"
	[ -n "$FIRST_FAIL" ] || FIRST_FAIL="$1 $REPLY"
}

do_verify() {
	state_load
	state_old "$O_KERNEL"
	if [ "$OC_D" = "$O_DRIVER" ]; then
		vcheck state ok
	elif [ -n "$OC_D" ]; then
		vcheck state fail "the current release of $O_KERNEL is $OC_D, not $O_DRIVER"
	else
		vcheck state fail "no kfleet release is current for $O_KERNEL"
	fi

	if have cmp; then
		files_status "$O_KERNEL" "$O_DRIVER"
	else
		FS=missing FS_DETAIL="cmp is not installed"
	fi
	if [ "$FS" = ok ]; then vcheck files ok; else vcheck files fail "$FS: $FS_DETAIL"; fi

	if [ "$F_LOADED" = 1 ]; then
		running_kernel
		if [ "$RUNNING" != "$O_KERNEL" ]; then
			vcheck loaded fail "$O_KERNEL is not the running kernel (${RUNNING:-unknown} is)"
			vcheck version fail "$O_KERNEL is not the running kernel (${RUNNING:-unknown} is)"
		else
			_notl=
			set -f
			for _vm in $O_MODULES; do
				sysname "$_vm"
				[ -d "$SYSMOD/$REPLY" ] || _notl="${_notl:+$_notl }$_vm"
			done
			set +f
			if [ -z "$_notl" ]; then vcheck loaded ok; else vcheck loaded fail "not loaded: $_notl"; fi

			_vmod=${O_VMOD:-${O_MODULES%% *}}
			_vfail=
			sysname "$_vmod"
			if ! read_first "$SYSMOD/$REPLY/version"; then
				_vfail="$_vmod has no /sys/module/$REPLY/version (not loaded?)"
			elif [ "$REPLY" != "$O_DRIVER" ]; then
				safe_text "$REPLY"
				_vfail="$_vmod is version $REPLY, not $O_DRIVER"
			fi
			if [ -z "$_vfail" ]; then
				set -f
				for _vm in $O_MODULES; do
					sysname "$_vm"
					read_first "$SYSMOD/$REPLY/version" || continue
					if [ "$REPLY" != "$O_DRIVER" ]; then
						safe_text "$REPLY"
						_vfail="$_vm is version $REPLY, not $O_DRIVER"
						break
					fi
				done
				set +f
			fi
			if [ -z "$_vfail" ]; then vcheck version ok; else vcheck version fail "$_vfail"; fi
		fi
	fi

	case $O_SMI in
	skip) ;;
	*)
		if have nvidia-smi; then
			_sout=$(run_t 60 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 </dev/null)
			_rc=$?
			if [ "$_rc" = 0 ]; then
				vcheck smi ok
			elif [ "$_rc" = 124 ]; then
				vcheck smi fail "nvidia-smi did not answer within 60 s"
			else
				oneline "$_sout"
				vcheck smi fail "${REPLY:-nvidia-smi exited with status $_rc}"
			fi
		elif [ "$O_SMI" = require ]; then
			vcheck smi fail "nvidia-smi is not installed (--smi require)"
		fi
		;;
	esac

	if [ "$HAVE_COMMAND" = 1 ]; then
		_cout=$(KFLEET_DRIVER=$O_DRIVER KFLEET_KERNEL=$O_KERNEL sh -c "$O_COMMAND" 2>&1 </dev/null)
		_rc=$?
		if [ "$_rc" = 0 ]; then
			vcheck command ok
		else
			lastline "$_cout"
			vcheck command fail "exit $_rc${REPLY:+: $REPLY}"
		fi
	fi

	[ -z "$FIRST_FAIL" ] || die verify "$FIRST_FAIL"
	finish 0
}

# ---------------------------------------------------------------------------
# rollback

do_rollback() {
	need_root
	need_tools sh cat cp mv rm mkdir sha256sum depmod
	if [ "$F_RELOAD" = 1 ]; then
		need_tools modprobe
		running_kernel
		[ "$RUNNING" = "$O_KERNEL" ] ||
			die missing "$O_KERNEL is not the running kernel (${RUNNING:-unknown} is): --reload needs it running"
	fi
	if [ -n "$O_UNLOAD" ]; then _ul=$O_UNLOAD; else reverse "$O_MODULES" && _ul=$REPLY; fi
	ensure_kl
	lock_take
	state_load
	state_old "$O_KERNEL"
	_from=${OC_D:-none}

	if [ "$O_TO" = none ]; then
		if [ -z "$OC_D" ]; then
			say "no kfleet release is current for $O_KERNEL: nothing to remove"
		else
			# Unloading first gives "busy" its PIDs; uninstall.sh would
			# unload them itself.
			[ "$F_RELOAD" = 0 ] || unload_modules "$_ul"
			if rel_held "$OC_D" "$O_KERNEL"; then
				if ! run_pkg "$KL/releases/$OC_D/$O_KERNEL/pkg/uninstall.sh"; then
					case $LAST in
					*"cannot unload "*:*)
						_bm=${LAST#*cannot unload }
						_bm=${_bm%%:*}
						valid_modname "$_bm" && busy_fail "$_bm"
						;;
					esac
					die package "uninstall.sh of $OC_D for $O_KERNEL failed: $LAST"
				fi
			else
				# The release is gone from the node: remove what install.sh put there.
				say "the release $OC_D for $O_KERNEL is not on the node: removing /lib/modules/$O_KERNEL/updates/kfleet/*.ko"
				rm -f "$ROOT/lib/modules/$O_KERNEL/updates/kfleet/"*.ko || die env "cannot remove the modules"
				rmdir "$ROOT/lib/modules/$O_KERNEL/updates/kfleet" 2>/dev/null
				_out=$(kmod_depmod "$O_KERNEL" 2>&1 </dev/null) || {
					relay "$_out"
					die env "depmod -a $O_KERNEL failed"
				}
			fi
			state_put previous "$O_KERNEL" "$OC_D" "$OC_S" "$OC_P"
			state_put current "$O_KERNEL"
			if [ -z "$ST_KERNEL" ] || [ "$ST_KERNEL" = "$O_KERNEL" ]; then
				# driver= and kernel= name what is installed: the running
				# kernel's current release, else any, else nothing.
				ST_DRIVER='' ST_KERNEL=''
				running_kernel
				if [ -n "$RUNNING" ] && state_find current "$RUNNING"; then
					ST_DRIVER=$SF_D ST_KERNEL=$RUNNING
				else
					_sr=$ST_LINES
					while [ -n "$_sr" ]; do
						_sline=${_sr%%"$NL"*}
						_sr=${_sr#*"$NL"}
						case $_sline in
						current\ *)
							split "$_sline"
							ST_DRIVER=$F3 ST_KERNEL=$F2
							break
							;;
						esac
					done
				fi
			fi
			state_write
		fi
	else
		rel_held "$O_TO" "$O_KERNEL" ||
			die missing "release $O_TO for $O_KERNEL is not on the node (or not complete): it must be received again"
		_tsha=$RH_SHA
		if [ "$OC_D" = "$O_TO" ] && [ "$OC_S" = "$_tsha" ]; then
			say "$O_KERNEL is at $O_TO already: nothing to install"
		else
			run_pkg "$KL/releases/$O_TO/$O_KERNEL/pkg/install.sh" ||
				die package "install.sh of $O_TO for $O_KERNEL failed: $LAST"
			state_make_current "$O_KERNEL" "$O_TO" "$_tsha" "$O_PROFILE"
			state_write
		fi
	fi

	if [ "$F_RELOAD" = 1 ]; then
		unload_modules "$_ul"
		if [ "$O_TO" = none ]; then load_modules "$O_MODULES" optional; else load_modules "$O_MODULES"; fi
		print_loaded "$O_MODULES"
	fi
	rec "rolledback $O_KERNEL $_from $O_TO"
	finish 0
}

# ---------------------------------------------------------------------------
# unlock

do_unlock() {
	need_root
	if [ ! -d "$KL/lock" ]; then
		say "the node is not locked"
		finish 0
	fi
	lock_read
	if [ "$LK_VALID" = 1 ] && [ "$LK_OWNER" = "$O_OWNER" ]; then
		action_claim # an earlier action of this owner ends first
	elif [ "$F_BREAK" = 1 ]; then
		say "breaking the lock of $LK_OWNER (held since $LK_SINCE)"
	else
		die locked "$LK_OWNER $LK_SINCE" "the node is locked by $LK_OWNER since $LK_SINCE, not by $O_OWNER: --break-lock removes it anyway"
	fi
	rm -rf "$KL/lock" 2>/dev/null
	[ ! -d "$KL/lock" ] || die env "cannot remove /var/lib/kfleet/lock"
	say "unlocked"
	finish 0
}

# ---------------------------------------------------------------------------
# Main

help_text() {
	cat >&2 <<'EOF'
usage: kfleet-node ACTION [--option VALUE]...   (see deployer/NODE.md)
  check    [--driver D] [--modules "A B"]
  receive  --driver D --kernel K --sha256 S --size N --owner O [--break-lock]   (package on stdin)
  install  --profile P --driver D --kernel K --sha256 S --owner O [--break-lock]
  load     --driver D --kernel K --modules "A B" [--unload "B A"] --owner O [--break-lock]
  verify   --driver D --kernel K [--modules "A B"] [--loaded] [--version-module M]
           [--smi auto|require|skip] [--command CMD]
  rollback --profile P --kernel K --to D|none --owner O [--reload --modules "A B" [--unload "B A"]] [--break-lock]
  unlock   --owner O [--break-lock]
EOF
}

trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Once started, a change runs to its end even when the SSH session goes away.
trap '' HUP PIPE
cd / || exit 20

NOW=$(date +%s 2>/dev/null) || NOW=0
valid_digits "$NOW" || NOW=0
ROOT=
KL=/var/lib/kfleet
SYSMOD=/sys/module

ACTION=${1-}
[ $# -eq 0 ] || shift
case $ACTION in
check | receive | install | load | verify | rollback | unlock) ;;
-h | --help | help)
	ACTION=help
	help_text
	finish 0
	;;
'')
	ACTION=-
	help_text
	usage "no action given: check, receive, install, load, verify, rollback or unlock"
	;;
*)
	oneline "$ACTION"
	_bad=$REPLY
	ACTION=-
	usage "unknown action '$_bad': check, receive, install, load, verify, rollback or unlock"
	;;
esac

ROOT=${KFLEET_ROOT:-}
case $ROOT in
'') ;;
*"$NL"*) usage "KFLEET_ROOT must be one line" ;;
/*) ;;
*) usage "KFLEET_ROOT must be an absolute path" ;;
esac
while :; do
	case $ROOT in
	*/) ROOT=${ROOT%/} ;;
	*) break ;;
	esac
done
KFLEET_ROOT=$ROOT
export KFLEET_ROOT
KL=$ROOT/var/lib/kfleet
SYSMOD=$ROOT/sys/module

# Only receive reads stdin (on fd 3); nothing else may take the SSH channel.
if [ "$ACTION" = receive ]; then
	exec 3<&0 </dev/null
else
	exec </dev/null
fi

parse_options "$@"
required_options
case $ACTION in
receive | install | load | rollback | unlock) LOGGED=1 ;;
esac

case $ACTION in
check) do_check ;;
receive) do_receive ;;
install) do_install ;;
load) do_load ;;
verify) do_verify ;;
rollback) do_rollback ;;
unlock) do_unlock ;;
esac
finish 0
