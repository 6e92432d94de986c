#!/usr/bin/env bash
# Configure and build one flavour: scripts/build.sh [release|asan] -> build/<flavour>
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:-release}
jobs=$(nproc 2>/dev/null || echo 2)
case "$flavour" in
  release) extra=(-DCMAKE_BUILD_TYPE=Release) ;;
  asan) extra=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOONCAKE_SANITIZE=address,undefined) ;;
  *) echo "usage: $0 [release|asan]" >&2; exit 2 ;;
esac
cmake -S . -B "build/$flavour" "${extra[@]}" >/dev/null
# the progress lines go; the build's own status decides (grep's does not)
set +e
cmake --build "build/$flavour" -j"$jobs" 2>&1 | grep -vE '^\[ *[0-9]+%\]'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  echo "build/$flavour: the build failed (status $rc)" >&2
  exit "$rc"
fi
test -x "build/$flavour/mooncake-bench"
