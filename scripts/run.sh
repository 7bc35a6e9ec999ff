#!/usr/bin/env bash
# Main job: start the embedded autosched service (REST API + scheduler + one CPU worker on a
# SQLite file and an SQLite broker: no Redis or PostgreSQL), submit every zoo kernel through
# the REST API with the Python client, follow the jobs, fetch the tuned schedules, rebuild and
# check them here, and print naive / static / tuned / numpy / PyTorch times and ratios.
# The service keeps running afterwards; `autosched down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "dev,bench"
url="http://${AUTOSCHED_API_HOST:-127.0.0.1}:${AUTOSCHED_API_PORT:-8000}"
autosched up --detach
# numpy is the baseline: run its current OpenBLAS kernel, not the machine-wide Haswell override
# (set for old OpenBLAS builds; both variables go together, and only for this command).
status=0
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/static.py \
    --tune "${AUTOSCHED_MAIN_TRIALS:-32}" --service "$url" "$@" || status=$?
echo
echo "autosched keeps running: dashboard $url/  ·  API docs $url/docs"
echo "jobs: .venv/bin/autosched jobs  ·  stop: .venv/bin/autosched down"
exit "$status"
