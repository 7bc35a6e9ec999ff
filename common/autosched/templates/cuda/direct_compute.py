"""Direct compute on a GPU (injective stages): inline into consumers, else one kernel over
the fused loops split into [blocks, per-thread, threads, vector]; a stage that reads an
operand transposed can stage 32x32 tiles through shared memory so both its reads and its
writes are coalesced."""

from __future__ import annotations

import math
from typing import Any

from tvm import s_tir

from autosched.analysis import ReadInfo, StageInfo, block_reads
from autosched.hardware import GpuParams
from autosched.space import ChoiceKnob, Knob, KnobValue
from autosched.templates.base import ApplyState, TemplateContext, block_exists
from autosched.templates.cuda.common import (
    BLOCK_X,
    THREAD_X,
    THREADS_PER_SM,
    bind_cooperative,
    bound_loop,
    loops_or_unit,
    thread_choices,
)
from autosched.templates.direct_compute import DirectCompute

#: elements per vector access (4 x fp32 = one 16-byte load)
VECTOR_WIDTHS = (1, 2, 4)
#: serial iterations per thread (grid-stride): fewer, fatter blocks for large outputs
PER_THREAD = (1, 2, 4, 8, 16)
STATIC_THREADS = 256
STATIC_MAX_PER_THREAD = 8
#: a staged transpose tile: 32x32 elements, one warp wide (rows padded by one element so the
#: transposed reads from shared memory hit 32 different banks)
TILE = 32


def transposed_read(reads: tuple[ReadInfo, ...], extents: tuple[int, ...]) -> int | None:
    """Index of a read whose index is a permutation of the stage's axes that does not keep the
    stage's last axis last: writing along that axis reads with a stride, and only a tile in
    shared memory makes both sides contiguous. None if no read is like that."""
    n = len(extents)
    if n < 2 or extents[-1] < 2:
        return None
    for i, read in enumerate(reads):
        dims = read.index_vars
        if len(dims) < 2 or any(len(d) != 1 for d in dims):
            continue
        axes = [d[0] for d in dims]
        if sorted(axes) != list(range(n)) or axes[-1] == n - 1 or extents[axes[-1]] < 2:
            continue
        return i
    return None


def _per_thread_choices(gpu: GpuParams, total: int) -> tuple[int, ...]:
    """Serial steps per thread, while a warp still has that many elements to share."""
    return tuple(p for p in PER_THREAD if p == 1 or p * gpu.warp_size <= total)


def root_knobs(stage: StageInfo, gpu: GpuParams) -> list[Knob]:
    total = math.prod(stage.extents)
    innermost = stage.extents[-1] if stage.extents else 1
    knobs: list[Knob] = [
        ChoiceKnob("threads", thread_choices(gpu, total)),
        ChoiceKnob("vector", tuple(v for v in VECTOR_WIDTHS if innermost % v == 0)),
        ChoiceKnob("per_thread", _per_thread_choices(gpu, total)),
    ]
    if "O" not in stage.iter_kinds and transposed_read(stage.reads, stage.extents) is not None:
        knobs.append(ChoiceKnob("shared_tile", (False, True)))
    return knobs


def root_static(stage: StageInfo, gpu: GpuParams) -> dict[str, KnobValue]:
    total = math.prod(stage.extents)
    innermost = stage.extents[-1] if stage.extents else 1
    vector = max(v for v in VECTOR_WIDTHS if innermost % v == 0)
    threads = max(t for t in thread_choices(gpu, total // vector) if t <= STATIC_THREADS)
    # Grid-stride only past two full waves of resident blocks: each thread then handles a
    # few vectors, and the launch has fewer blocks to schedule.
    wave = gpu.sm_count * max(1, THREADS_PER_SM // threads)
    per_thread = 1
    for p in PER_THREAD:
        blocks = -(-total // (vector * threads * p))
        if p <= STATIC_MAX_PER_THREAD and blocks >= 2 * wave:
            per_thread = p
    values: dict[str, KnobValue] = {"threads": threads, "vector": vector, "per_thread": per_thread}
    read = transposed_read(stage.reads, stage.extents)
    if "O" not in stage.iter_kinds and read is not None:
        src_axis = stage.reads[read].index_vars[-1][0]
        values["shared_tile"] = min(stage.extents[-1], stage.extents[src_axis]) >= TILE // 2
    return values


def apply_root(
    sch: s_tir.Schedule, stage: StageInfo, values: dict[str, Any], state: ApplyState
) -> None:
    """Schedule a root injective stage as one bound kernel (unless it is already placed)."""
    if stage.name in state.placed or not block_exists(sch, stage.name):
        return
    block = sch.get_sblock(stage.name)
    tiled = _transposed_now(sch, block) if values.get("shared_tile") else None
    if tiled is not None:
        points = _tile_through_shared(sch, block, *tiled, values["threads"])
    else:
        innermost = stage.extents[-1] if stage.extents else 1
        vector = values["vector"] if innermost % values["vector"] == 0 else 1
        points = bound_loop(
            sch, loops_or_unit(sch, block), values["threads"], vector, values["per_thread"]
        )
    state.attach_points[stage.name] = list(points)
    state.placed.add(stage.name)


def _transposed_now(sch: s_tir.Schedule, block: Any) -> tuple[int, int] | None:
    """(read index, axis indexing that read's last dimension) of a transposed read of the
    block as it is now: inlining a producer changes what the block reads."""
    stmt = sch.get(block)
    extents = tuple(int(iv.dom.extent) for iv in stmt.iter_vars)
    reads = block_reads(stmt)
    index = transposed_read(reads, extents)
    if index is None or len(sch.get_loops(block)) != len(extents):
        return None
    return index, reads[index].index_vars[-1][0]


def _tile_through_shared(
    sch: s_tir.Schedule, block: Any, read_index: int, src_axis: int, threads: int
) -> tuple[Any, Any]:
    """Tile the stage's last axis (contiguous in the output) and ``src_axis`` (contiguous in
    the transposed input) by 32; each block loads its input tile into shared memory with
    consecutive threads on consecutive input elements, then writes its output tile with
    consecutive threads on consecutive output elements."""
    loops = list(sch.get_loops(block))
    dst_axis = len(loops) - 1
    dst_outer, dst_inner = sch.split(loops[dst_axis], factors=[None, TILE])
    src_outer, src_inner = sch.split(loops[src_axis], factors=[None, TILE])
    others = [loop for i, loop in enumerate(loops) if i not in (src_axis, dst_axis)]
    sch.reorder(*others, src_outer, dst_outer, src_inner, dst_inner)
    block_loop = sch.fuse(*others, src_outer, dst_outer)
    sch.bind(block_loop, BLOCK_X)
    threads = min(threads, TILE * TILE)
    _, thread_loop = sch.split(sch.fuse(src_inner, dst_inner), factors=[None, threads])
    sch.bind(thread_loop, THREAD_X)
    cache = sch.cache_read(block, read_index, "shared")
    sch.compute_at(cache, block_loop, preserve_unit_loops=True)
    bind_cooperative(sch, cache, block_loop, {THREAD_X: threads})
    ndim = len(sch.get(cache).writes[0].source.shape)
    sch.storage_align(cache, 0, axis=ndim - 2, factor=TILE, offset=1)
    return block_loop, thread_loop


class CudaDirectCompute(DirectCompute):
    """The CPU template's inline decision and pass; a bound kernel at root instead."""

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        assert ctx.hw.gpu is not None
        inline = [ChoiceKnob("inline", (True, False))] if self.can_inline(stage) else []
        return inline + root_knobs(stage, ctx.hw.gpu)

    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        assert ctx.hw.gpu is not None
        values = root_static(stage, ctx.hw.gpu)
        if self.can_inline(stage):
            # A kernel launch and a round trip through memory cost far more than recomputing
            # an elementwise expression in its consumer.
            values["inline"] = True
        return values

    def apply(self, sch, stage, values, ctx, state) -> None:
        apply_root(sch, stage, values, state)
