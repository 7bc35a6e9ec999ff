#!/usr/bin/env bash
# Test command: lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "dev"
ruff check .
ruff format --check .
python -m pytest "$@"
