#!/usr/bin/env bash
# Builds kfleet and runs the whole test suite: unit tests (cmocka), fuzz
# corpus replays, and integration tests against a local fleet of real sshd
# nodes. This is README command (2), and what CI runs.
#
#   tests/run.sh              normal build (-Werror), all tests
#   tests/run.sh --sanitize   ASan + UBSan build, all tests
#   tests/run.sh -L unit      pass ctest arguments (here: unit tests only)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

build=build
cmake_args=()
if [ "${1:-}" = "--sanitize" ]; then
	shift
	build="build-asan"
	cmake_args+=(-DKF_ASAN=ON -DKF_UBSAN=ON -DCMAKE_BUILD_TYPE=Debug)
	# Leaks are errors; a report names the allocation site.
	export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
	export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi

if [ "$(id -u)" != 0 ]; then
	echo "tests/run.sh: the integration tests start sshd nodes in mount namespaces and need root" >&2
	echo "tests/run.sh: run it as root (sudo tests/run.sh)" >&2
	exit 2
fi

contrib/install-deps.sh
cmake -S . -B "$build" -DKF_WERROR=ON "${cmake_args[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)"
cd "$build"
ctest --output-on-failure "$@"
