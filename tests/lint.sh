#!/usr/bin/env bash
# Lint as tests: shellcheck on every shell script of the project and on the
# probe script kfleet sends to nodes; clang-format on every C file.
#   tests/lint.sh shellcheck KFLEET_BINARY
#   tests/lint.sh clang-format
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
shellcheck)
	mapfile -t scripts < <(git ls-files '*.sh' .ci/run tests/fleet/stubs/ 2>/dev/null || true)
	[ "${#scripts[@]}" -gt 0 ] || { echo "lint: no scripts found (not a git checkout?)" >&2; exit 1; }
	shellcheck -x "${scripts[@]}"
	# The probe runs under any POSIX sh (dash on Debian): check it as such.
	probe=$(mktemp)
	trap 'rm -f "$probe"' EXIT
	"$2" facts --print-probe | python3 -c 'import shlex,sys; print(shlex.split(sys.stdin.read())[2])' >"$probe"
	shellcheck -s sh "$probe"
	echo "shellcheck: ${#scripts[@]} scripts and the facts probe: 1 passed, 0 failed"
	;;
clang-format)
	mapfile -t files < <(git ls-files '*.c' '*.h')
	clang-format --dry-run --Werror "${files[@]}"
	echo "clang-format: ${#files[@]} files: 1 passed, 0 failed"
	;;
*)
	echo "usage: tests/lint.sh shellcheck KFLEET | clang-format" >&2
	exit 2
	;;
esac
