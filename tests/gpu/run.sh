#!/usr/bin/env bash
# CUDA tests of the mooncake torch backend. Runs them when torch sees a GPU,
# else prints one skip line and exits 0. Usage: tests/gpu/run.sh [pytest args]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "SKIP tests/gpu: torch.cuda.is_available() is False (no GPU or driver)"
  exit 0
fi
"$py" -c 'import mooncake, sys; sys.exit(0 if mooncake._C.cuda_staging() else 1)' || {
  echo "FAIL tests/gpu: mooncake was built without its CUDA path" >&2; exit 1; }
cd "$root"
# The CUDA subset: this folder, plus any CUDA-marked case of the main suite.
"$py" -m pytest -q -p no:cacheprovider tests/gpu "$@"
rc=0
"$py" -m pytest -q -p no:cacheprovider tests/python -k cuda "$@" || rc=$?
# 5 = no tests selected: the main suite has no CUDA cases
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
