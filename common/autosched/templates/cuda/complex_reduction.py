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
from typing import Any, ClassVar

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
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
from autosched.templates.cuda import tensor_core_space
from autosched.templates.cuda.common import annotate_unroll
from autosched.templates.cuda.complex_space import (
    BLOCK,
    INNER,
    INNERMOST,
    MAX_ACCUMULATORS,
    THREAD,
    UNROLL_STEPS,
    VTHREAD,
    epilogue_possible,
    exact_footprints,
    gpu_params,
    is_one,
    is_spatial,
    operand_budget,
    stageable_reads,
    tile_knob,
    tile_name,
    vector_domain,
)
from autosched.templates.cuda.complex_static import (
    STATIC_GUARDED_UNROLL,
    STATIC_UNROLL,
    staged_extent,
    static_tiles,
)
from autosched.templates.cuda.shared_staging import (
    TiledLoops,
    cooperative_copy,
    read_index,
    reads_to_stage,
    shared_plan,
)
from autosched.templates.cuda.tensor_core import apply_tensor_core
from autosched.templates.cuda.tensor_core_space import TENSOR_CORE, WMMA


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
        return knobs + tensor_core_space.knobs(stage)

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
        return found + tensor_core_space.limits(stage, gpu)

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
        return values | tensor_core_space.static_values(stage, gpu)

    # ---- apply ------------------------------------------------------------------------------
    def apply(self, sch, stage, values, ctx, state) -> None:
        if values.get(TENSOR_CORE) == WMMA:
            apply_tensor_core(sch, stage, values, ctx, state)
            return
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

        wanted = reads_to_stage(stage, values, read_names)
        for name, width in shared_plan(sch, block, stage, tiles, loops, wanted, gpu):
            copy = cooperative_copy(sch, block, read_index(sch, block, name), width, loops)
            state.placed.add(sch.get(copy).name_hint)

        annotate_unroll(sch, loops.block, values["unroll"])
        _decompose_reduction(sch, block, stage, tiles, loops)
        # A producer computed at the block loop is shared by the block's threads (shared
        # memory); at the thread loop it is private to one thread (registers).
        state.attach_points[stage.name] = [loops.block, loops.thread]
        state.placed.add(stage.name)


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
    loops: TiledLoops,
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
) -> TiledLoops:
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
    return TiledLoops(bound[0], bound[2], r0, 3 + len(r0))


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
                r.min.same_as(v) and is_one(r.extent)
                for r, v in zip(region.region, iter_vars, strict=False)
            )
            if not same:
                return None
    return consumers[0]


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
