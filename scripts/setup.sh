#!/usr/bin/env bash
# Create or reuse the project's virtualenv and install autosched with the given extras.
# Usage: source scripts/setup.sh "dev,bench"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-dev}"
if [ ! -x "$root/.venv/bin/python" ]; then
    python3.11 -m venv "$root/.venv"
fi
stamp="$root/.venv/.autosched-installed-$extras"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$root/.venv/bin/python" -m pip install -q --upgrade pip
    "$root/.venv/bin/python" -m pip install -q -e "$root[$extras]"
    touch "$stamp"
fi
# TVM runs on one thread unless told otherwise.
export TVM_NUM_THREADS="${TVM_NUM_THREADS:-$(nproc)}"
export PATH="$root/.venv/bin:$PATH"
