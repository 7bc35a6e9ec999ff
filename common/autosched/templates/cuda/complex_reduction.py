"""CUDA complex reduction (matmul, batch matmul, conv, depthwise conv): MetaSchedule's GPU
multi-level tiling, "SSSRRSRS".

Every spatial axis is split in five (s0 blockIdx, s1 vthread, s2 threadIdx, s3, s4), every
reduction axis in three (r0, r1, r2), ordered ``s0 s1 s2 r0 r1 s3 r2 s4``; the s0 loops fuse
into ``blockIdx.x``, the s1 loops into ``vthread.x`` and the s2 loops into ``threadIdx.x``.
The operands the block's threads share are staged in shared memory at the r0 loop, copied
cooperatively by all threads (vector loads where aligned); each thread accumulates its tile
in registers (a ``local`` write cache) and writes it back once, through the fused injective
epilogue (bias, ReLU) when there is one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import tvm
from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.hardware import GpuParams
from autosched.space import (
    ChoiceKnob,
    Knob,
    KnobValue,
    ProductLimit,
)
from autosched.templates.base import (
    ApplyState,
    MetaTemplate,
    TemplateContext,
    loop_extent,
)
from autosched.templates.cuda.common import annotate_unroll
from autosched.templates.cuda.complex_space import (
    BLOCK,
    INNER,
    INNERMOST,
    MAX_ACCUMULATORS,
    MAX_VECTOR_BYTES,
    THREAD,
    UNROLL_STEPS,
    VTHREAD,
    dtype_bytes,
    epilogue_possible,
    exact_footprints,
    gpu_params,
    is_spatial,
    operand_budget,
    stageable_reads,
    tile_knob,
    tile_name,
    uses_var,
    vector_domain,
)
from autosched.templates.cuda.complex_static import (
    STATIC_GUARDED_UNROLL,
    STATIC_UNROLL,
    staged_extent,
    static_tiles,
)


class CudaComplexReduction(MetaTemplate):
    kind: ClassVar[MetaTemplateKind] = MetaTemplateKind.COMPLEX_REDUCTION
    phase: ClassVar[int] = 1

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        knobs: list[Knob] = [tile_knob(stage, axis) for axis in range(len(stage.iter_kinds))]
        knobs.append(ChoiceKnob("unroll", UNROLL_STEPS))
        if epilogue_possible(stage, ctx):
            knobs.append(ChoiceKnob("fuse_epilogue", (True, False)))
        for read in stageable_reads(stage):
            knobs.append(ChoiceKnob(f"shared_{read}", (True, False)))
            widths = vector_domain(stage, read)
            if len(widths) > 1:
                knobs.append(ChoiceKnob(f"vector_{read}", widths))
        return knobs

    def limits(self, stage: StageInfo, ctx: TemplateContext) -> list[ProductLimit]:
        gpu = gpu_params(ctx)
        spatial = [tile_name(stage, a) for a in stage.spatial_axes]
        found = [
            ProductLimit(
                "threads_per_block",
                tuple((name, THREAD) for name in spatial),
                gpu.max_threads_per_block,
            ),
            ProductLimit(
                "accumulators_per_thread",
                tuple((name, lv) for name in spatial for lv in (VTHREAD, INNER, INNERMOST)),
                MAX_ACCUMULATORS,
            ),
        ]
        for read, terms in exact_footprints(stage).items():
            found.append(ProductLimit(f"shared_read{read}", terms, operand_budget(stage, gpu)))
        return found

    # ---- static fill ----------------------------------------------------------------------
    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        gpu = gpu_params(ctx)
        inner = static_tiles(stage, gpu)
        values: dict[str, KnobValue] = {}
        for axis, factors in inner.items():
            values[tile_name(stage, axis)] = tile_knob(stage, axis).make(factors)
        guarded = any(stage.extents[a] % math.prod(inner[a]) for a in stage.spatial_axes)
        values["unroll"] = STATIC_GUARDED_UNROLL if guarded else STATIC_UNROLL
        if epilogue_possible(stage, ctx):
            values["fuse_epilogue"] = True
        for read in stageable_reads(stage):
            values[f"shared_{read}"] = True
            widths = vector_domain(stage, read)
            if len(widths) > 1:
                axis = stage.reads[read].index_vars[-1][0]
                tile = staged_extent(stage, inner, axis)
                values[f"vector_{read}"] = max(w for w in widths if tile % w == 0)
        return values

    # ---- apply ------------------------------------------------------------------------------
    def apply(self, sch, stage, values, ctx, state) -> None:
        gpu = gpu_params(ctx)
        tiles = effective_tiles(stage, values)
        block = sch.get_sblock(stage.name)
        epilogue = _fusable_epilogue(sch, block, stage, values, ctx, state)
        read_names = [region.source.name for region in sch.get(block).reads]
        # The thread's tile accumulates in registers and is written back once; without them
        # (a tile TVM cannot write back, see ``_local_cache_works``) it accumulates in place.
        writeback = None
        if _local_cache_works(sch, block, stage, tiles):
            writeback = sch.cache_write(block, 0, "local")

        loops = _tile_and_bind(sch, block, stage, tiles)
        if writeback is not None:
            if epilogue is not None and _try_fuse_epilogue(sch, writeback, epilogue, loops.thread):
                state.placed.add(sch.get(epilogue).name_hint)
            else:
                sch.reverse_compute_at(writeback, loops.thread, preserve_unit_loops=True)
                state.placed.add(sch.get(writeback).name_hint)

        wanted = _reads_to_stage(stage, values, read_names)
        for name, width in _shared_plan(sch, block, stage, tiles, loops, wanted, gpu):
            copy = _cooperative_copy(sch, block, _read_index(sch, block, name), width, loops)
            state.placed.add(sch.get(copy).name_hint)

        annotate_unroll(sch, loops.block, values["unroll"])
        _decompose_reduction(sch, block, stage, tiles, loops)
        # A producer computed at the block loop is shared by the block's threads (shared
        # memory); at the thread loop it is private to one thread (registers).
        state.attach_points[stage.name] = [loops.block, loops.thread]
        state.placed.add(stage.name)


@dataclass(frozen=True)
class _Loops:
    block: Any  # bound to blockIdx.x
    thread: Any  # bound to threadIdx.x
    reduction_outer: list[Any]  # the r0 loops; shared tiles are copied at the last one
    #: loops above a staged copy's own: blockIdx, vthread, threadIdx and the r0 loops
    outer_count: int


def effective_tiles(stage: StageInfo, values: dict[str, Any]) -> dict[int, list[int]]:
    """Every axis' split factors (outermost first) as applied. TVM cannot write a thread's
    tile back when a guarded (non-dividing) axis gives the thread a single element of it
    (its region check refuses a point under a predicate), so such an axis' vthread factor
    becomes its s3 factor: the same tile and registers, only without the interleave."""
    tiles = {a: list(values[tile_name(stage, a)]) for a in range(len(stage.iter_kinds))}
    for axis in stage.spatial_axes:
        factors = tiles[axis]
        guarded = stage.extents[axis] % math.prod(factors[1:]) != 0
        if guarded and factors[INNER] * factors[INNERMOST] == 1:
            factors[INNER], factors[VTHREAD] = factors[VTHREAD], 1
    return tiles


def _local_cache_works(
    sch: s_tir.Schedule, block: Any, stage: StageInfo, tiles: dict[int, list[int]]
) -> bool:
    """Whether TVM writes the register tile back at the thread loop, tried on a copy when an
    axis is guarded (one with one element per thread is refused even after
    ``effective_tiles`` when the thread has no vthread factor to move); dividing tiles
    always are (a trial costs a dozen primitives, each verifying the whole module)."""
    if not any(stage.extents[a] % math.prod(tiles[a][1:]) for a in stage.spatial_axes):
        return True
    trial = sch.copy()
    try:
        writeback = trial.cache_write(block, 0, "local")
        loops = _tile_and_bind(trial, block, stage, tiles)
        trial.reverse_compute_at(writeback, loops.thread, preserve_unit_loops=True)
    except Exception:  # TVM's ScheduleError (region cover)
        return False
    return True


def _decompose_reduction(
    sch: s_tir.Schedule,
    block: Any,
    stage: StageInfo,
    tiles: dict[int, list[int]],
    loops: _Loops,
) -> None:
    """Zero the accumulators once, before the r0 loops, instead of testing for the first
    iteration inside them. With a guarded tile TVM's decomposition can leave stale block flags
    that its own verification rejects (tried on a copy then); the init then stays inside the
    reduction, which is correct."""
    guarded = any(stage.extents[a] % math.prod(tiles[a][1:]) for a in stage.spatial_axes)
    if guarded:
        trial = sch.copy()
        try:
            trial.decompose_reduction(block, loops.reduction_outer[0])
        except Exception:  # TVM's ScheduleError from its flag verification
            return
    sch.decompose_reduction(block, loops.reduction_outer[0])


def _tile_and_bind(
    sch: s_tir.Schedule, block: Any, stage: StageInfo, tiles: dict[int, list[int]]
) -> _Loops:
    splits = {
        axis: sch.split(loop, factors=[None, *tiles[axis][1:]])
        for axis, loop in enumerate(sch.get_loops(block))
    }
    spatial = stage.spatial_axes
    reduction = [a for a in range(len(stage.iter_kinds)) if not is_spatial(stage, a)]

    def level(axes: list[int], index: int) -> list[Any]:
        return [splits[a][index] for a in axes]

    sch.reorder(
        *level(spatial, BLOCK),
        *level(spatial, VTHREAD),
        *level(spatial, THREAD),
        *level(reduction, 0),
        *level(reduction, 1),
        *level(spatial, INNER),
        *level(reduction, 2),
        *level(spatial, INNERMOST),
    )
    bound = []
    for index, thread_axis in (
        (BLOCK, "blockIdx.x"),
        (VTHREAD, "vthread.x"),
        (THREAD, "threadIdx.x"),
    ):
        loops = level(spatial, index)
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        # A vthread of one is no vthread: leave the unit loop unbound.
        if index != VTHREAD or loop_extent(sch, fused) > 1:
            sch.bind(fused, thread_axis)
        bound.append(fused)
    r0 = level(reduction, 0)
    return _Loops(bound[0], bound[2], r0, 3 + len(r0))


def _fusable_epilogue(
    sch: s_tir.Schedule,
    block: Any,
    stage: StageInfo,
    values: dict[str, Any],
    ctx: TemplateContext,
    state: ApplyState,
) -> Any | None:
    """The one injective consumer left after inlining (bias, ReLU), if it reads the result
    element-wise: it then replaces the plain write-back of the thread's tile."""
    if not values.get("fuse_epilogue"):
        return None
    consumers = sch.get_consumers(block)
    if len(consumers) != 1:
        return None
    consumer = sch.get(consumers[0])
    name = consumer.name_hint
    if name in state.placed or any(iv.iter_type != 0 for iv in consumer.iter_vars):
        return None  # 0: data parallel
    if len(consumer.iter_vars) != len(stage.spatial_axes):
        return None
    # Only an output (or a stage nobody reads further) is fused; others are placed later.
    info = ctx.stages.get(name)
    if not (info is None or info.is_output or not info.consumers):
        return None
    result = sch.get(block).writes[0].source
    iter_vars = [iv.var for iv in consumer.iter_vars]
    for region in consumer.reads:
        if region.source.same_as(result):
            same = len(region.region) == len(iter_vars) and all(
                r.min.same_as(v) and _is_one(r.extent)
                for r, v in zip(region.region, iter_vars, strict=False)
            )
            if not same:
                return None
    return consumers[0]


def _is_one(expr: Any) -> bool:
    return hasattr(expr, "value") and int(expr.value) == 1


def _try_fuse_epilogue(
    sch: s_tir.Schedule, writeback: Any, epilogue: Any, thread_loop: Any
) -> bool:
    """The epilogue reads the thread's registers and writes the output itself; tried on a copy
    first so a refusal leaves ``sch`` untouched (the plain write-back then goes there)."""
    trial = sch.copy()
    try:
        trial.compute_inline(writeback)
        trial.reverse_compute_at(epilogue, thread_loop, preserve_unit_loops=True)
    except Exception:  # TVM's ScheduleError: e.g. the epilogue's region is not one tile
        return False
    sch.compute_inline(writeback)
    sch.reverse_compute_at(epilogue, thread_loop, preserve_unit_loops=True)
    return True


def _reads_to_stage(
    stage: StageInfo, values: dict[str, Any], read_names: list[str]
) -> list[tuple[str, int]]:
    """(buffer, vector width) of each read to stage in shared memory. The knobs name the
    stage's reads before inlining; a read that came in with an inlined producer (the input
    behind an inlined padding) follows the knob of the operand it replaced."""
    knob_of = {}
    for index, read in enumerate(stage.reads):
        knob_of.setdefault(read.buffer, index)
    vanished = [
        i
        for i in stageable_reads(stage)
        if stage.reads[i].buffer not in read_names and values.get(f"shared_{i}")
    ]
    found = []
    for name in read_names:
        index = knob_of.get(name, vanished[0] if vanished else None)
        if index is not None and values.get(f"shared_{index}"):
            found.append((name, values.get(f"vector_{index}", 1)))
    return found


def _read_index(sch: s_tir.Schedule, block: Any, name: str) -> int:
    return next(i for i, r in enumerate(sch.get(block).reads) if r.source.name == name)


def _shared_plan(
    sch: s_tir.Schedule,
    block: Any,
    stage: StageInfo,
    tiles: dict[int, list[int]],
    loops: _Loops,
    wanted: list[tuple[str, int]],
    gpu: GpuParams,
) -> list[tuple[str, int]]:
    """(buffer, vector width) of the reads to stage, decided on a copy of the schedule: each
    read with its aligned vector width, else scalar, else not at all where TVM refuses the
    copy (its region check rejects some predicated multi-dimensional copies smaller than the
    thread count); then, in read order, those whose shared buffers still fit in the block's
    shared memory as TVM will allocate them (a strided or clipped window's tile is only known
    after TVM's buffer compaction)."""
    trial = sch.copy()
    ways: list[tuple[str, int, str]] = []
    for name, width in wanted:
        index = _read_index(trial, block, name)
        aligned = _aligned_width(trial, block, index, width, stage, tiles)
        for option in dict.fromkeys((aligned, 1)):
            attempt = trial.copy()
            try:
                copy = _cooperative_copy(attempt, block, index, option, loops)
            except Exception:  # TVM's ScheduleError: this way of copying is refused
                continue
            trial = attempt
            ways.append((name, option, trial.get(copy).writes[0].source.name))
            break
    if not ways:
        return []
    allocated = _kernel_shared_bytes(trial.mod, stage.name)
    mine = {buffer for _, _, buffer in ways}
    left = gpu.max_shared_memory_per_block - sum(
        size for buffer, size in allocated if buffer not in mine
    )
    sizes = dict(allocated)
    chosen = []
    for name, width, buffer in ways:
        size = sizes.get(buffer, 0)
        if size <= left:
            chosen.append((name, width))
            left -= size
    return chosen


def _cooperative_copy(
    sch: s_tir.Schedule, block: Any, index: int, width: int, loops: _Loops
) -> Any:
    """Copy the read's tile into shared memory at the last r0 loop, all threads of the block
    together: the copy's loops fused, split by the block's thread count (every threadIdx.x
    loop of a kernel must have the same extent: TVM launches with one of them) and, inside,
    by the vector width. Returns the copy block."""
    copy = sch.cache_read(block, index, "shared")
    sch.compute_at(copy, loops.reduction_outer[-1], preserve_unit_loops=True)
    own = sch.get_loops(copy)[loops.outer_count :]
    fused = sch.fuse(*own) if len(own) > 1 else own[0]
    threads = loop_extent(sch, loops.thread)
    if width > 1:
        _, thread, lanes = sch.split(fused, factors=[None, threads, width])
        sch.vectorize(lanes)
    else:
        _, thread = sch.split(fused, factors=[None, threads])
    sch.bind(thread, "threadIdx.x")
    return copy


#: TVM's lowering up to its buffer compaction: what a shared buffer will really take.
_ALLOCATION_PASSES = (
    "CanonicalizeLoop",
    "LowerCrossThreadReduction",
    "LowerInitBlock",
    "PlanAndUpdateBufferAllocationLocation",
    "ConvertBlocksToOpaque",
    "LiftThreadBinding",
    "ManifestSharedMemoryLocalStage",
    "CompactBufferAllocation",
)


def _kernel_shared_bytes(mod: Any, block_name: str) -> list[tuple[str, int]]:
    """(name, bytes) of every shared buffer allocated around block ``block_name`` once TVM has
    compacted the allocations: the static shared memory of its kernel."""
    lowered = tvm.transform.Sequential(
        [getattr(s_tir.transform, name)() for name in _ALLOCATION_PASSES]
    )(mod)
    stack: list[tuple[Any, tuple[Any, ...]]] = [(lowered["main"].body, ())]
    while stack:
        node, outer = stack.pop()
        if node is None or isinstance(node, int | float | str | bool):
            continue
        if isinstance(node, list | tuple | tvm.ir.Array):
            stack.extend((child, outer) for child in node)
            continue
        if isinstance(node, s_tir.SBlock):
            if node.name_hint == block_name:
                return [
                    (buf.name, _buffer_bytes(buf))
                    for blk in outer
                    for buf in blk.alloc_buffers
                    if buf.scope() == "shared"
                ]
            outer = (*outer, node)
        for field in ("body", "block", "seq", "then_case", "else_case"):
            child = getattr(node, field, None)
            if child is not None:
                stack.append((child, outer))
    return []


def _buffer_bytes(buffer: Any) -> int:
    elements = 1
    for dim in buffer.shape:
        if not hasattr(dim, "value"):
            return 1 << 40  # a symbolic shape: never fits
        elements *= int(dim.value)
    return elements * dtype_bytes(buffer.dtype)


def _aligned_width(
    sch: s_tir.Schedule,
    block: Any,
    index: int,
    width: int,
    stage: StageInfo,
    tiles: dict[int, list[int]],
) -> int:
    """``width`` if every vector of the copy is aligned, else 1. CUDA's float4 loads fault on
    a misaligned address and TVM does not check: the innermost index must be one iterator
    (no window offset), and its tile, its extent and the buffer's row a multiple of ``width``."""
    if width <= 1:
        return 1
    blk = sch.get(block)
    region = blk.reads[index]
    if width * dtype_bytes(region.source.dtype) > MAX_VECTOR_BYTES:
        return 1
    mins = [r.min for r in region.region]
    axes = [a for a, iv in enumerate(blk.iter_vars) if mins and mins[-1].same_as(iv.var)]
    if len(axes) != 1 or not _is_one(region.region[-1].extent):
        return 1
    axis = axes[0]
    if any(uses_var(e, blk.iter_vars[axis].var) for e in mins[:-1]):
        return 1
    inner = {a: factors[1:] for a, factors in tiles.items()}
    row = region.source.shape[-1]
    aligned = (
        staged_extent(stage, inner, axis) % width == 0
        and stage.extents[axis] % width == 0
        and hasattr(row, "value")
        and int(row.value) % width == 0
    )
    return width if aligned else 1
