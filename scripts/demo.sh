#!/usr/bin/env bash
# The main demo (README): set up, build, and run 4 ranks doing collectives
# over shared memory and over TCP.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release
build/release/mooncake-demo --ranks "${RANKS:-4}" --transport shm
build/release/mooncake-demo --ranks "${RANKS:-4}" --transport tcp
