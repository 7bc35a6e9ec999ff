"""Staging a complex reduction's operands in shared memory: which reads to stage, with what
vector width, and the cooperative copies themselves. Whether a staged tile fits is decided
on a copy of the schedule, from the shared buffers TVM really allocates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tvm
from tvm import s_tir

from autosched.analysis import StageInfo
from autosched.hardware import GpuParams
from autosched.templates.base import loop_extent
from autosched.templates.cuda.complex_space import (
    MAX_VECTOR_BYTES,
    dtype_bytes,
    is_one,
    stageable_reads,
    uses_var,
)
from autosched.templates.cuda.complex_static import staged_extent


@dataclass(frozen=True)
class TiledLoops:
    block: Any  # bound to blockIdx.x
    thread: Any  # bound to threadIdx.x
    reduction_outer: list[Any]  # the r0 loops; shared tiles are copied at the last one
    #: loops above a staged copy's own: blockIdx, vthread, threadIdx and the r0 loops
    outer_count: int


def reads_to_stage(
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


def read_index(sch: s_tir.Schedule, block: Any, name: str) -> int:
    return next(i for i, r in enumerate(sch.get(block).reads) if r.source.name == name)


def shared_plan(
    sch: s_tir.Schedule,
    block: Any,
    stage: StageInfo,
    tiles: dict[int, list[int]],
    loops: TiledLoops,
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
        index = read_index(trial, block, name)
        aligned = _aligned_width(trial, block, index, width, stage, tiles)
        for option in dict.fromkeys((aligned, 1)):
            attempt = trial.copy()
            try:
                copy = cooperative_copy(attempt, block, index, option, loops)
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


def cooperative_copy(
    sch: s_tir.Schedule, block: Any, index: int, width: int, loops: TiledLoops
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
    if len(axes) != 1 or not is_one(region.region[-1].extent):
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
