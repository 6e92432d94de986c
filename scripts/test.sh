#!/usr/bin/env bash
# The test command (README): set up, build, run the C suite, the same suite
# built with AddressSanitizer + UndefinedBehaviorSanitizer, then the torch
# backend: its pytest suite and PyTorch's own distributed suite (mooncake
# and gloo in one harness).
set -euo pipefail
cd "$(dirname "$0")/.."
# each phase's start, with the seconds since the command began
phase() { echo "== $* (at ${SECONDS} s)"; }
scripts/setup.sh
rc=0
passed=0
failed=0
failed_c=()
count() { if [ "$1" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); rc=1; fi; }
for flavour in release asan; do
  phase "$flavour build"
  scripts/build.sh "$flavour"
  phase "$flavour tests"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  # suites in parallel (tests/CMakeLists.txt: the CPU-bound ones run alone);
  # MC_CTEST_JOBS=1 runs them one at a time
  r=0; (cd "build/$flavour" && ctest --output-on-failure --timeout 1200 -j"${MC_CTEST_JOBS:-4}") || r=$?
  count $r
  [ "$r" -eq 0 ] || failed_c+=("build/$flavour")
done
unset ASAN_OPTIONS UBSAN_OPTIONS
phase "torch backend"
scripts/setup_torch.sh
r=0; .venv/bin/python -m pytest -q tests/python || r=$?
count $r
phase "torch fault tests with etcd membership on"
r=0; tests/membership/etcd_mode.sh ".venv/bin/python -m pytest -q tests/python/test_fault.py tests/python/test_rejoin.py" || r=$?
count $r
phase "PyTorch distributed suite (gloo and mooncake)"
r=0; .venv/bin/python tests/python/run_torch_suite.py || r=$?
count $r
r=0; tests/gpu/run.sh || r=$?
count $r
# the C tests' failure lines again, at the end where a log's tail shows them
for b in "${failed_c[@]}"; do python3 scripts/ctest_summary.py "$b" 25 || true; done
# one line per suite above: C release, C asan, torch pytest, torch fault
# tests in etcd mode, torch suite, gpu
echo "suites: $passed passed, $failed failed (${SECONDS} s)"
exit $rc
