"""The CUDA complex reduction's search space: its tile levels, the knobs per axis and per
staged operand, and the limits that keep every config buildable (threads per block,
accumulators per thread, shared memory per staged operand)."""

from __future__ import annotations

from typing import Any

import tvm
from tvm import tirx

from autosched.analysis import StageInfo
from autosched.hardware import GpuParams
from autosched.space import (
    TileKnob,
    tile_candidates,
)
from autosched.templates.base import (
    TemplateContext,
)

SPATIAL_LEVELS, REDUCTION_LEVELS = 5, 3
BLOCK, VTHREAD, THREAD, INNER, INNERMOST = range(SPATIAL_LEVELS)


UNROLL_STEPS = (0, 16, 64, 512, 1024)
VECTOR_WIDTHS = (1, 2, 4)


MAX_VECTOR_BYTES = 16  # the widest load a CUDA thread issues (float4)
#: A thread has at most 255 registers; its accumulators (vthreads included: each one is a
#: copy of the thread's tile) must leave room for operand fragments and addresses.
MAX_ACCUMULATORS = 128
#: Knob domains are fixed before any dtype is known: shared-memory limits count fp32 elements;
#: apply checks the real bytes.
ASSUMED_BYTES = 4


def tile_name(stage: StageInfo, axis: int) -> str:
    return f"tile_{stage.iter_kinds[axis].lower()}{axis}"


def is_spatial(stage: StageInfo, axis: int) -> bool:
    return stage.iter_kinds[axis] == "S"


def tile_knob(stage: StageInfo, axis: int) -> TileKnob:
    levels = SPATIAL_LEVELS if is_spatial(stage, axis) else REDUCTION_LEVELS
    extent = stage.extents[axis]
    return TileKnob(tile_name(stage, axis), extent, levels, tile_candidates(extent))


def staged_levels(stage: StageInfo, axis: int) -> tuple[int, ...]:
    """The levels inside the r0 loop: what one shared-memory tile spans along ``axis``."""
    return (1, 2, 3, 4) if is_spatial(stage, axis) else (1, 2)


def stageable_reads(stage: StageInfo) -> list[int]:
    """Reads worth staging in shared memory: reused by several threads of a block, either
    along a spatial axis they do not depend on (matmul's A along j) or through overlapping
    windows (a conv's input along h + kh)."""
    spatial = {a for a in stage.spatial_axes if stage.extents[a] > 1}
    found = []
    for index, read in enumerate(stage.reads):
        if not read.index_vars:
            continue
        used = {v for dim in read.index_vars for v in dim}
        if spatial - used or any(len(dim) > 1 for dim in read.index_vars):
            found.append(index)
    return found


def _footprint_terms(stage: StageInfo, read: int) -> tuple[tuple[str, int], ...] | None:
    """The tile levels whose product is the read's shared tile, when that product is exact:
    every dimension indexed by at most one iterator. None for windows (h + kh, 2h + kh)."""
    dims = stage.reads[read].index_vars
    if any(len(dim) > 1 for dim in dims):
        return None
    return tuple(
        (tile_name(stage, dim[0]), level)
        for dim in dims
        if dim
        for level in staged_levels(stage, dim[0])
    )


def vector_domain(stage: StageInfo, read: int) -> tuple[int, ...]:
    """Vector widths for a read's cooperative copy: the innermost dimension must be one
    iterator whose extent the width divides (apply checks alignment for the actual tile)."""
    dims = stage.reads[read].index_vars
    if not dims or len(dims[-1]) != 1:
        return (1,)
    extent = stage.extents[dims[-1][0]]
    return tuple(w for w in VECTOR_WIDTHS if extent % w == 0)


def epilogue_possible(stage: StageInfo, ctx: TemplateContext) -> bool:
    consumers = [ctx.stages[c] for c in stage.consumers if c in ctx.stages]
    return len(consumers) == 1 and "R" not in consumers[0].iter_kinds


def gpu_params(ctx: TemplateContext) -> GpuParams:
    if ctx.hw.gpu is None:
        raise ValueError("the CUDA templates need hardware with GPU parameters (hw.gpu)")
    return ctx.hw.gpu


def exact_footprints(stage: StageInfo) -> dict[int, tuple[tuple[str, int], ...]]:
    found = {}
    for read in stageable_reads(stage):
        terms = _footprint_terms(stage, read)
        if terms is not None:
            found[read] = terms
    return found


def operand_budget(stage: StageInfo, gpu: GpuParams) -> int:
    """Shared-memory elements one staged operand may take: an even share of the block's."""
    operands = max(1, len(stageable_reads(stage)))
    return max(1, gpu.max_shared_memory_per_block // ASSUMED_BYTES // operands)


def is_one(expr: Any) -> bool:
    return hasattr(expr, "value") and int(expr.value) == 1


def uses_var(expr: Any, var: Any) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def dtype_bytes(dtype: Any) -> int:
    kind = tvm.DataType(str(dtype))
    return max(1, kind.bits * kind.lanes // 8)
