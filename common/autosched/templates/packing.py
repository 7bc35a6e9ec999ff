"""Operand packing for the complex reduction's micro-kernel: an operand that varies along
the vector axis is copied into a blocked layout ``[x // w, ..., x % w]`` so that each vector
load of it is contiguous and a panel of it is contiguous in memory."""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx
from tvm.tirx import IndexMap

from autosched.analysis import StageInfo
from autosched.templates.base import ApplyState


def packable_read(sch: s_tir.Schedule, block: Any, vec_axis: int, width: int) -> int | None:
    """Index of an operand worth packing: read at a point, indexed by the vector axis alone in
    exactly one dimension (so ``x // width, ..., x % width`` is a valid blocked layout), and
    reused along another spatial axis (so the copy is amortized)."""
    blk = sch.get(block)
    vec_var = blk.iter_vars[vec_axis].var
    spatial = {i for i, iv in enumerate(blk.iter_vars) if iv.iter_type == 0}
    for index, region in enumerate(blk.reads):
        dims = [r.min for r in region.region]
        if len(dims) < 2 or any(int(r.extent) != 1 for r in region.region):
            continue
        hits = [d for d, e in enumerate(dims) if vec_var.same_as(e)]
        others = [d for d, e in enumerate(dims) if d not in hits and uses(e, vec_var)]
        used = {i for i, iv in enumerate(blk.iter_vars) if any(uses(e, iv.var) for e in dims)}
        shape = [int(x) for x in region.source.shape]
        if len(hits) == 1 and not others and spatial - used and shape[hits[0]] % width == 0:
            return index
    return None


def uses(expr: Any, var: Any) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def pack(
    sch: s_tir.Schedule,
    block: Any,
    read_index: int,
    vec_axis_var: Any,
    width: int,
    state: ApplyState,
    copies: tuple[Any, ...] = (),
) -> None:
    """Copy the operand into a blocked layout ``[x // width, ..., x % width]`` so the micro-
    kernel's vector loads are contiguous and a panel of it is contiguous in memory. An
    operand already copied (zero-padded, one of ``copies``) gets the layout in that copy."""

    region = sch.get(block).reads[read_index]
    dims = [r.min for r in region.region]
    d = next(i for i, e in enumerate(dims) if vec_axis_var.same_as(e))
    ndim = len(dims)
    writers = [c for c in copies if sch.get(c).writes[0].source.same_as(region.source)]
    copy = writers[0] if writers else sch.cache_read(block, read_index, "global")

    # Index variables must be int32 like te loops (IndexMap.from_func makes int64
    # ones, which TVM then fails to parse against int32 loops).
    idx = [tirx.Var(f"i{n}", "int32") for n in range(ndim)]
    rest = [idx[i] for i in range(ndim) if i != d]
    blocked = IndexMap(idx, [idx[d] // width, *rest, idx[d] % width], None)
    sch.transform_layout(block, ("read", read_index), blocked)
    name = sch.get(copy).name_hint
    if writers:
        return  # scheduled with the other padded copies
    loops = sch.get_loops(copy)
    outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    sch.parallel(outer)
    state.placed.add(name)


def has_reused_operand(stage: StageInfo) -> bool:
    spatial = {a for a in stage.spatial_axes if stage.extents[a] > 1}
    return any(
        len(r.index_vars) >= 2 and spatial - {v for i in r.index_vars for v in i}
        for r in stage.reads
    )
