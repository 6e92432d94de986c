#!/usr/bin/env bash
# The main demo (README): set up (apt packages, build, torch venv, the
# mooncake package), then run 4 ranks doing collectives: the C API over shm
# and over TCP, and torch.distributed with backend="mooncake" under torchrun.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release
build/release/mooncake-demo --ranks "${RANKS:-4}" --transport shm
build/release/mooncake-demo --ranks "${RANKS:-4}" --transport tcp
scripts/setup_torch.sh
.venv/bin/torchrun --standalone --nproc_per_node="${RANKS:-4}" examples/allreduce.py
# The survival story: 4 ranks train; rank 2 is SIGKILLed at step 20; the other
# three re-run the interrupted all_reduce over the new view and finish with
# identical parameters.
.venv/bin/python examples/elastic_training.py --ranks "${RANKS:-4}"
