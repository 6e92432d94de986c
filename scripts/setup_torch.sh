#!/usr/bin/env bash
# Create .venv with the pinned torch (CPU use of the CUDA wheel; pip's cache
# serves later installs) and install the mooncake package into it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.11.0")' 2>/dev/null; then
  echo "setup_torch: installing torch 2.11.0 and test tools into .venv"
  .venv/bin/pip install -q --disable-pip-version-check \
    torch==2.11.0 numpy pytest expecttest scikit-build-core ninja matplotlib
fi
echo "setup_torch: building the mooncake package"
.venv/bin/pip install -q --disable-pip-version-check --no-build-isolation -e .
.venv/bin/python -c 'import mooncake; print("setup_torch: mooncake", mooncake.__version__, "ready")'
