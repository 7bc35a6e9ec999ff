#!/usr/bin/env bash
# The check a lent GPU host runs (docs/gpu.md). It has Python 3.12 with PyTorch, numpy and
# nvcc but no TVM and no network: everything comes from the kit `scripts/gpu_kit.py build`
# made here and the call carried (`carry: ["build/gpu-kit"]`).
#
#   bash scripts/gpu_check.sh OUT [KIT]
#       Install the kit (KIT: build/gpu-kit; for a full kit its folder b) into a scratch
#       directory, check and time the kit's prebuilt kernels on cuda:0 with the TVM runtime,
#       and, when the full TVM could be put together (full kit, part a staged), run the GPU
#       tests and a small bench/gpu.py. Writes at most 7 files to OUT (a call returns 8).
#   bash scripts/gpu_check.sh --stage PART_A
#       First call of a full kit: keep part a of TVM's compiler on the machine (it stays
#       while the machine is warm: make the second call at once).
#
# Environment: PYTHON (default python3), KIT_TIMEOUT (seconds, 120), TEST_TIMEOUT (150),
# BENCH_TIMEOUT (280), BENCH_TRIALS (16), BENCH_KERNELS, GPU_TESTS (test files; default those with a gpu
# mark). The timeouts add up to what one call may run (give the call timeout_s=590).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
STAGE_DIR=/tmp/autosched-gpu-kit

if [ "${1:-}" = "--stage" ]; then
    part="${2:?usage: gpu_check.sh --stage PART_A}"
    mkdir -p "$STAGE_DIR"
    cp "$part"/* "$STAGE_DIR"/
    ls -l "$STAGE_DIR"
    echo "staged part a in $STAGE_DIR"
    exit 0
fi

OUT="${1:?usage: gpu_check.sh OUT [KIT]}"
KIT="${2:-build/gpu-kit}"
[ -d "$KIT/b" ] && KIT="$KIT/b"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
SETUP="$OUT/setup.log"
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

SITE="${AUTOSCHED_KIT_SITE:-/tmp/autosched-kit-site}"
rm -rf "$SITE"
t0=$(date +%s)
MODE=$("$PY" scripts/gpu_kit.py install "$KIT" "$SITE" --stage "$STAGE_DIR" 2>>"$SETUP" | tail -n 1)
note "install: ${MODE:-failed} ($(($(date +%s) - t0)) s; python $("$PY" -V 2>&1))"
if [ -z "$MODE" ]; then
    tail -n 20 "$SETUP" >>"$SUMMARY"
    exit 1
fi

CUDART_DIR=$("$PY" scripts/gpu_kit.py cudart-dir "$KIT" 2>>"$SETUP")
export PYTHONPATH="$SITE:$PWD/common:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# TVM's CUDA runtime links libcudart.so.13: the system's, PyTorch's or the kit's.
export LD_LIBRARY_PATH="${CUDART_DIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# MetaSchedule's CUDA builds go through TVM's nvcc callback, as autosched's builder does.
export TVM_CUDA_COMPILE_MODE=nvcc
export TVM_NUM_THREADS="${TVM_NUM_THREADS:-$(nproc)}"
if [ "$MODE" = runtime ]; then
    export TVM_USE_RUNTIME_LIB=1
fi
note "libcudart from: ${CUDART_DIR:-nowhere found}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv \
    || echo "nvidia-smi failed"; } >>"$SUMMARY" 2>&1

t0=$(date +%s)
timeout "${KIT_TIMEOUT:-120}" "$PY" scripts/gpu_kit.py run "$KIT" --device cuda:0 \
    --out "$OUT/kit_results.md" --json "$OUT/kit_results.json" >>"$SETUP" 2>&1
note "kit kernels: exit $? ($(($(date +%s) - t0)) s); $(tail -n 1 "$SETUP")"

if [ "$MODE" != full ]; then
    note "runtime-only kit: no GPU tests and no bench/gpu.py (they need TVM's compiler)"
    exit 0
fi

tests="${GPU_TESTS:-$(grep -l 'mark\.gpu' tests/test_*.py | tr '\n' ' ')}"
t0=$(date +%s)
# shellcheck disable=SC2086 # a list of files
timeout "${TEST_TIMEOUT:-150}" "$PY" -m pytest -q -p no:cacheprovider -m gpu $tests \
    >"$OUT/pytest.txt" 2>&1
note "pytest -m gpu $tests: exit $? ($(($(date +%s) - t0)) s); $(tail -n 1 "$OUT/pytest.txt")"

if [ -f bench/gpu.py ]; then
    t0=$(date +%s)
    # One kernel per family that fits the call: the 4096-cubed matmuls' CPU reference alone
    # (the unscheduled build) would take minutes.
    timeout "${BENCH_TIMEOUT:-280}" "$PY" -m bench.gpu --trials "${BENCH_TRIALS:-16}" --quick \
        --kernels "${BENCH_KERNELS:-matmul_1024,bert_qkv_f16,conv2d_resnet_c2,softmax_4096,layer_norm_4096}" \
        --out "$OUT/gpu_table.md" >"$OUT/bench_gpu.log" 2>&1
    note "bench/gpu.py: exit $? ($(($(date +%s) - t0)) s)"
else
    note "bench/gpu.py: not in this tree"
fi
