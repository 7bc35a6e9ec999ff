#!/usr/bin/env bash
# Main job: analyze, statically schedule and tune (small budget) the example kernels; print
# naive / static / tuned / numpy / PyTorch times and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "dev,bench"
# numpy is the baseline: run its current OpenBLAS kernel, not the machine-wide Haswell override
# (set for old OpenBLAS builds; both variables go together, and only for this command).
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/static.py --tune "${AUTOSCHED_MAIN_TRIALS:-32}" "$@"
