#!/usr/bin/env bash
# Main job: analyze and statically schedule the example kernels, print the speedup table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "dev,bench"
python bench/static.py "$@"
