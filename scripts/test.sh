#!/usr/bin/env bash
# Test command: lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# bench: the baseline tests compare PyTorch/numpy against TVM (torch is a local CPU wheel)
source scripts/setup.sh "dev,bench"
ruff check .
ruff format --check .
python -m pytest "$@"
