"""The tensor-core knob of the CUDA complex reduction: which stages qualify, the knobs of its
tiling in 16x16x16 fragments, the limits that keep every sampled config within the GPU, and
the static choice.

TVM 0.27's WMMA intrinsics (``tvm.s_tir.tensor_intrin.cuda``) take fp16 operands and
accumulate in fp32 or fp16; it has none for bf16, so a bf16 GEMM stays on the SIMT path.
A stage qualifies when it is a (batched) GEMM: two fp16 operands, every iterator either a
batch axis (in both operands and the output), an I axis (first operand and output), a J
axis (second operand and output) or a reduction axis K (both operands), with each index one
iterator (no window). Several iterators of one kind are fused into one GEMM axis; every
GEMM axis is padded up to the block tile (``pad_einsum``), so no extent needs to be a
multiple of 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autosched.analysis import StageInfo
from autosched.hardware import GpuParams
from autosched.space import ChoiceKnob, Knob, KnobValue, ProductLimit, TileKnob, tile_candidates

TENSOR_CORE = "tensor_core"
OFF, WMMA = "off", "wmma"
#: the WMMA fragment: every GEMM axis is tiled in units of it
FRAGMENT = 16
IN_DTYPES = ("float16",)
OUT_DTYPES = ("float16", "float32")
#: (block, warp, fragments per warp) for I and J; (outer, fragments per shared tile) for K
GEMM_LEVELS, DEPTH_LEVELS = 3, 2
BLOCK_LEVEL, WARP_LEVEL, FRAGMENT_LEVEL = range(GEMM_LEVELS)
#: A warp's accumulators: a 16x16 fp32 fragment is 8 registers per lane; 16 of them take
#: 128 of a thread's 255 registers, leaving the operand fragments and addresses room.
MAX_FRAGMENTS_PER_WARP = 16
#: Shared memory per block, split between the staged operands (a quarter each) and the
#: accumulator tile staged on its way to global memory (half). Knob limits are products, so
#: each part gets its own share.
OPERAND_SHARE, OUTPUT_SHARE = 4, 2
#: rows of staged tiles are padded against bank conflicts (``storage_align``): operand rows
#: by 8 halves, output rows by 4 elements
OPERAND_ROW_PAD, OUTPUT_ROW_PAD = 8, 4
#: fp16 bytes: the operands' element size
OPERAND_BYTES = 2
#: Static fill: (warps along I, warps along J, fragments per warp along I, along J), in order
#: of preference: four warps of 2x2 fragments (a 64x64 block tile) first.
STATIC_SHAPES = (
    (2, 2, 2, 2),
    (2, 2, 2, 1),
    (2, 2, 1, 2),
    (2, 2, 1, 1),
    (2, 1, 1, 1),
    (1, 2, 1, 1),
    (1, 1, 1, 1),
)
#: Static fill: fragments of K per shared tile (32 deep)
STATIC_DEPTH = 2


@dataclass(frozen=True)
class GemmAxes:
    """A qualifying stage's iterators by GEMM role (positions in the stage's iter vars)."""

    batch: tuple[int, ...]
    i: tuple[int, ...]
    j: tuple[int, ...]
    k: tuple[int, ...]

    def extent(self, stage: StageInfo, axes: tuple[int, ...]) -> int:
        return math.prod(stage.extents[a] for a in axes)


def gemm_axes(stage: StageInfo) -> GemmAxes | None:
    """The stage's GEMM roles if tensor cores can compute it, else None."""
    if len(stage.reads) != 2 or stage.write_dtype not in OUT_DTYPES:
        return None
    if any(read.dtype not in IN_DTYPES for read in stage.reads):
        return None
    if any(len(dim) > 1 for read in stage.reads for dim in read.index_vars):
        return None
    first, second = ({v for dim in read.index_vars for v in dim} for read in stage.reads)
    roles: dict[str, list[int]] = {"batch": [], "i": [], "j": [], "k": []}
    for axis, kind in enumerate(stage.iter_kinds):
        if stage.extents[axis] == 1:
            continue
        in_first, in_second = axis in first, axis in second
        if kind == "S" and in_first and in_second:
            roles["batch"].append(axis)
        elif kind == "S" and in_first != in_second:
            roles["i" if in_first else "j"].append(axis)
        elif kind == "R" and in_first and in_second:
            roles["k"].append(axis)
        else:
            return None
    if not (roles["i"] and roles["j"] and roles["k"]):
        return None
    return GemmAxes(*(tuple(roles[r]) for r in ("batch", "i", "j", "k")))


def fragments(extent: int) -> int:
    return -(-extent // FRAGMENT)


def knobs(stage: StageInfo) -> list[Knob]:
    """``tensor_core`` and its tiles, in fragments; none when the stage does not qualify."""
    axes = gemm_axes(stage)
    if axes is None:
        return []
    return [
        ChoiceKnob(TENSOR_CORE, (WMMA, OFF)),
        _tile("tc_i", fragments(axes.extent(stage, axes.i)), GEMM_LEVELS),
        _tile("tc_j", fragments(axes.extent(stage, axes.j)), GEMM_LEVELS),
        _tile("tc_k", fragments(axes.extent(stage, axes.k)), DEPTH_LEVELS),
    ]


def _tile(name: str, count: int, levels: int) -> TileKnob:
    """A tile knob over ``count`` fragments."""
    return TileKnob(name, count, levels, tile_candidates(count))


def limits(stage: StageInfo, gpu: GpuParams) -> list[ProductLimit]:
    """Warps per block, accumulator fragments per warp, and each staged tile's share of the
    block's shared memory, counted with its row padding (a row of one fragment is the
    worst case: 16 + 8 halves)."""
    if gemm_axes(stage) is None:
        return []
    out_bytes = 2 if stage.write_dtype == "float16" else 4
    shared = gpu.max_shared_memory_per_block
    operand_fragment = FRAGMENT * (FRAGMENT + OPERAND_ROW_PAD) * OPERAND_BYTES
    output_fragment = FRAGMENT * (FRAGMENT + OUTPUT_ROW_PAD) * out_bytes
    return [
        ProductLimit(
            "tc_warps_per_block",
            (("tc_i", WARP_LEVEL), ("tc_j", WARP_LEVEL)),
            gpu.max_threads_per_block // gpu.warp_size,
        ),
        ProductLimit(
            "tc_fragments_per_warp",
            (("tc_i", FRAGMENT_LEVEL), ("tc_j", FRAGMENT_LEVEL)),
            MAX_FRAGMENTS_PER_WARP,
        ),
        ProductLimit(
            "tc_shared_a",
            (("tc_i", WARP_LEVEL), ("tc_i", FRAGMENT_LEVEL), ("tc_k", 1)),
            shared // OPERAND_SHARE // operand_fragment,
        ),
        ProductLimit(
            "tc_shared_b",
            (("tc_j", WARP_LEVEL), ("tc_j", FRAGMENT_LEVEL), ("tc_k", 1)),
            shared // OPERAND_SHARE // operand_fragment,
        ),
        ProductLimit(
            "tc_shared_output",
            tuple((name, lv) for name in ("tc_i", "tc_j") for lv in (WARP_LEVEL, FRAGMENT_LEVEL)),
            shared // OUTPUT_SHARE // output_fragment,
        ),
    ]


def static_values(stage: StageInfo, gpu: GpuParams) -> dict[str, KnobValue]:
    """Tensor cores whenever the stage qualifies: the first of ``STATIC_SHAPES`` within the
    limits and the extents that gives every SM a block, else the one with the most blocks."""
    axes = gemm_axes(stage)
    if axes is None:
        return {}
    m, n, k = (fragments(axes.extent(stage, a)) for a in (axes.i, axes.j, axes.k))
    batch = axes.extent(stage, axes.batch)
    depth = min(STATIC_DEPTH, k)
    bounds = limits(stage, gpu)
    best: tuple[int, dict[str, KnobValue]] | None = None
    for wi, wj, fi, fj in STATIC_SHAPES:
        if wi * fi > m or wj * fj > n:
            continue
        values = {
            "tc_i": _tile("tc_i", m, GEMM_LEVELS).make([wi, fi]),
            "tc_j": _tile("tc_j", n, GEMM_LEVELS).make([wj, fj]),
            "tc_k": _tile("tc_k", k, DEPTH_LEVELS).make([depth]),
        }
        if any(bound.product(values) > bound.limit for bound in bounds):
            continue
        blocks = batch * values["tc_i"][BLOCK_LEVEL] * values["tc_j"][BLOCK_LEVEL]
        if blocks >= gpu.sm_count:
            best = (blocks, values)
            break
        if best is None or blocks > best[0]:
            best = (blocks, values)
    assert best is not None, "the one-fragment shape always fits"
    return {TENSOR_CORE: WMMA, **best[1]}
