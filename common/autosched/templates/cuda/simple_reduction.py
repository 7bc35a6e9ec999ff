"""Simple reduction on a GPU (row sums, softmax's max and sum, norm statistics, pooling).

Two strategies, a knob:

* ``thread_per_output``: the spatial loops fused and bound, each thread reduces its output
  serially into a register (short rows, pooling windows, or a reduction over a strided axis
  where consecutive outputs are consecutive in memory);
* ``cross_thread``: the (fused) reduction split and its inner part bound to ``threadIdx.x``,
  which TVM's LowerCrossThreadReduction turns into in-thread partial sums and a warp-shuffle /
  shared-memory all-reduce; several rows per block along ``threadIdx.y`` (long rows).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.hardware import GpuParams
from autosched.space import ChoiceKnob, Knob, KnobValue, ProductLimit, TileKnob
from autosched.templates.base import UNROLL_STEPS, MetaTemplate, TemplateContext
from autosched.templates.cuda.common import (
    BLOCK_X,
    THREAD_X,
    THREAD_Y,
    annotate_unroll,
    powers_of_two,
    thread_tile_candidates,
)

THREAD_PER_OUTPUT, CROSS_THREAD = "thread_per_output", "cross_thread"
#: a reduction at least this long is worth several threads (static fill)
CROSS_THREAD_MIN_LENGTH = 64
#: each thread of a cross-thread reduction sums about this many elements first (static fill)
ELEMENTS_PER_THREAD = 4
STATIC_MAX_REDUCE_THREADS = 512
STATIC_BLOCK_THREADS = 256
#: rows per block (threadIdx.y) offered for a cross-thread reduction
MAX_ROWS = 32
#: a block of a short cross-thread reduction gets rows until it has this many threads
STATIC_MIN_BLOCK_THREADS = 128
UNROLLED_STEPS = 16


def _totals(stage: StageInfo) -> tuple[int, int]:
    spatial = math.prod(stage.extents[a] for a in stage.spatial_axes)
    reduction = math.prod(stage.extents[a] for a in stage.reduction_axes)
    return spatial, reduction


def _contiguous_in_reads(stage: StageInfo, axis: int) -> bool:
    """Whether ``axis`` indexes the last (contiguous) dimension of every multi-axis read."""
    reads = [r for r in stage.reads if len(r.index_vars) > 1]
    return bool(reads) and all(axis in r.index_vars[-1] for r in reads)


def _row_choices(gpu: GpuParams, spatial: int) -> tuple[int, ...]:
    limit = min(spatial, MAX_ROWS, gpu.max_threads_per_block // gpu.warp_size)
    return tuple(powers_of_two(1, max(1, limit)))


def _static_reduce_threads(gpu: GpuParams, reduction: int) -> int:
    """Threads across a row: each sums about ``ELEMENTS_PER_THREAD`` elements first."""
    candidates = thread_tile_candidates(gpu, reduction)
    fitting = [t for t in candidates if t * ELEMENTS_PER_THREAD <= reduction]
    return min(max(fitting, default=candidates[0]), STATIC_MAX_REDUCE_THREADS)


def _static_rows(gpu: GpuParams, spatial: int, reduce_threads: int) -> int:
    """Rows per block: enough that a block of short rows still has a few warps."""
    fitting = [
        r for r in _row_choices(gpu, spatial) if r * reduce_threads <= STATIC_MIN_BLOCK_THREADS
    ]
    return max(fitting, default=1)


def _static_spatial_threads(gpu: GpuParams, spatial: int) -> int:
    """Threads per block of one output each; smaller blocks when there are too few outputs
    for a block per SM."""
    candidates = thread_tile_candidates(gpu, spatial)
    threads = max([t for t in candidates if t <= STATIC_BLOCK_THREADS], default=candidates[0])
    while threads > 2 * gpu.warp_size and -(-spatial // threads) < gpu.sm_count:
        threads //= 2
    return threads


class CudaSimpleReduction(MetaTemplate):
    kind: ClassVar[MetaTemplateKind] = MetaTemplateKind.SIMPLE_REDUCTION
    phase: ClassVar[int] = 2

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        gpu = ctx.hw.gpu
        assert gpu is not None
        spatial, reduction = _totals(stage)
        strategies = (THREAD_PER_OUTPUT, CROSS_THREAD) if reduction > 1 else (THREAD_PER_OUTPUT,)
        return [
            ChoiceKnob("strategy", strategies),
            # thread_per_output: [blocks, threads] over the fused spatial loops
            TileKnob("spatial", spatial, 2, thread_tile_candidates(gpu, spatial)),
            # cross_thread: [serial, threads] over the fused reduction loops ...
            TileKnob("reduce", reduction, 2, thread_tile_candidates(gpu, reduction)),
            # ... and [blocks, rows per block] over the fused spatial loops
            TileKnob("rows", spatial, 2, _row_choices(gpu, spatial)),
            ChoiceKnob("unroll", UNROLL_STEPS),
        ]

    def limits(self, stage: StageInfo, ctx: TemplateContext) -> list[ProductLimit]:
        assert ctx.hw.gpu is not None
        # rows first: ProductLimit.repair halves the first of equal factors, and rows go down
        # to 1 while the reduce threads stop at one warp.
        terms = (("rows", 1), ("reduce", 1))
        return [ProductLimit("threads_per_block", terms, ctx.hw.gpu.max_threads_per_block)]

    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        gpu = ctx.hw.gpu
        assert gpu is not None
        spatial, reduction = _totals(stage)
        r_last = stage.reduction_axes[-1] if stage.reduction_axes else None
        contiguous = r_last is not None and _contiguous_in_reads(stage, r_last)
        # A long row is worth a block of threads, but only when the row is contiguous (or the
        # outputs alone cannot fill the GPU): threads striding across rows read uncoalesced.
        few_outputs = spatial < gpu.sm_count * gpu.warp_size
        cross = reduction >= CROSS_THREAD_MIN_LENGTH and (contiguous or few_outputs)

        reduce_threads = _static_reduce_threads(gpu, reduction)
        rows = _static_rows(gpu, spatial, reduce_threads)
        threads = _static_spatial_threads(gpu, spatial)
        serial_steps = -(-reduction // reduce_threads) if cross else reduction
        return {
            "strategy": CROSS_THREAD if cross else THREAD_PER_OUTPUT,
            "spatial": [-(-spatial // threads), threads],
            "reduce": [-(-reduction // reduce_threads), reduce_threads],
            "rows": [-(-spatial // rows), rows],
            "unroll": UNROLLED_STEPS if serial_steps <= UNROLLED_STEPS else 0,
        }

    def apply(self, sch, stage, values, ctx, state) -> None:
        block = sch.get_sblock(stage.name)
        loops = list(sch.get_loops(block))
        spatial = [loops[a] for a in stage.spatial_axes]
        reduction = [loops[a] for a in stage.reduction_axes]
        if not reduction:  # nothing to reduce after all: one output per thread
            values = {**values, "strategy": THREAD_PER_OUTPUT}
        # Spatial loops outermost (te's order already; a hand-written block may differ).
        if spatial and reduction and stage.spatial_axes != list(range(len(spatial))):
            sch.reorder(*spatial, *reduction)
        if not spatial:  # a full reduction to one value: one block
            spatial = [sch.add_unit_loop(loops[0] if loops else block)]
        if values["strategy"] == CROSS_THREAD:
            points = _cross_thread(sch, spatial, reduction, values)
        else:
            points = _thread_per_output(sch, block, spatial, reduction, values)
        annotate_unroll(sch, points[0], values["unroll"])
        state.attach_points[stage.name] = list(points)
        state.placed.add(stage.name)


def _thread_per_output(
    sch: s_tir.Schedule,
    block: Any,
    spatial: list[Any],
    reduction: list[Any],
    values: dict[str, Any],
) -> tuple[Any, Any]:
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    block_loop, thread_loop = sch.split(fused, factors=[None, values["spatial"][1]])
    sch.bind(block_loop, BLOCK_X)
    sch.bind(thread_loop, THREAD_X)
    if reduction:
        # Accumulate in a register and store once (the init block lands under the bound
        # loops too, so it stays bound).
        write_back = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(write_back, thread_loop, preserve_unit_loops=True)
        sch.decompose_reduction(block, sch.get_loops(block)[_depth(sch, block, thread_loop)])
    return block_loop, thread_loop


def _cross_thread(
    sch: s_tir.Schedule, spatial: list[Any], reduction: list[Any], values: dict[str, Any]
) -> tuple[Any, Any]:
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    rows = values["rows"][1]
    block_loop, row_loop = sch.split(fused, factors=[None, rows])
    sch.bind(block_loop, BLOCK_X)
    if rows > 1:
        sch.bind(row_loop, THREAD_Y)
    r_fused = sch.fuse(*reduction) if len(reduction) > 1 else reduction[0]
    _, lane_loop = sch.split(r_fused, factors=[None, values["reduce"][1]])
    # A reduction loop bound to threads: LowerCrossThreadReduction keeps the block's init
    # and emits the all-reduce itself, so no decompose_reduction here.
    sch.bind(lane_loop, THREAD_X)
    return block_loop, lane_loop


def _depth(sch: s_tir.Schedule, block: Any, loop: Any) -> int:
    """Index of the loop just inside ``loop`` among the block's loops."""
    target = sch.get(loop)
    for i, candidate in enumerate(sch.get_loops(block)):
        if sch.get(candidate).same_as(target):
            return i + 1
    raise ValueError("loop is not above the block")
