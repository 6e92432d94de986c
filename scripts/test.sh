#!/usr/bin/env bash
# The test command (README): set up, build, run the C suite, the same suite
# built with AddressSanitizer + UndefinedBehaviorSanitizer, then the torch
# backend: its pytest suite and PyTorch's own distributed suite (mooncake
# and gloo in one harness).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
rc=0
for flavour in release asan; do
  echo "== $flavour build"
  scripts/build.sh "$flavour"
  echo "== $flavour tests"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  (cd "build/$flavour" && ctest --output-on-failure --timeout 1200) || rc=1
done
unset ASAN_OPTIONS UBSAN_OPTIONS
echo "== torch backend"
scripts/setup_torch.sh
.venv/bin/python -m pytest -q tests/python || rc=1
echo "== PyTorch distributed suite (gloo and mooncake)"
.venv/bin/python tests/python/run_torch_suite.py || rc=1
tests/gpu/run.sh || rc=1
exit $rc
