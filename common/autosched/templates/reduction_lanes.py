"""Vector lanes along the reduction, for complex reductions with little output reuse.

A matrix-vector product (or a batch-1 dense layer) is classified as a complex reduction
(the vector is reused along the rows), but its output has one long spatial axis and the big
operand is contiguous along the reduction: vectorizing the output axis reads that operand
with a stride. With ``reduce_lanes`` the innermost reduction axis is split by the vector
width and ``rfactor``-ed over the lanes, so each output keeps one vector of partial sums fed
by contiguous loads; the lanes are summed per output at the parallel loop.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir

from autosched.analysis import StageInfo
from autosched.templates.base import ApplyState, TemplateContext

REDUCE_LANES = "reduce_lanes"


def lanes_axis(stage: StageInfo, lanes: int) -> int | None:
    """The reduction axis to vectorize: the innermost one, when some operand is contiguous
    along it (its last index), none is contiguous along the output's innermost axis, and
    the vector width divides it (a guarded vector would predicate every lane)."""
    if not stage.reduction_axes or not stage.spatial_axes:
        return None
    axis = stage.reduction_axes[-1]
    inner_spatial = [a for a in stage.spatial_axes if stage.extents[a] > 1]
    last = [r.index_vars[-1] for r in stage.reads if r.index_vars]
    contiguous_reduction = any(idx == (axis,) for idx in last)
    contiguous_output = bool(inner_spatial) and any(inner_spatial[-1] in idx for idx in last)
    if not contiguous_reduction or contiguous_output or stage.extents[axis] % lanes:
        return None
    return axis


def low_reuse(stage: StageInfo) -> bool:
    """Where the knob is offered (and chosen statically): the output varies along one axis
    only (a matrix-vector product), so no register tile can reuse the big operand's loads.
    Elsewhere the register tile wins, and summing in lanes would only reorder the sums."""
    return sum(1 for a in stage.spatial_axes if stage.extents[a] > 1) <= 1


def place_reduce_lanes(
    sch: s_tir.Schedule, block: Any, stage: StageInfo, ctx: TemplateContext, state: ApplyState
) -> bool:
    """``apply_reduce_lanes`` where TVM accepts it (rfactor needs a reducer it recognizes;
    an inlined producer may change the block), recorded in ``state``; else False with
    ``sch`` unchanged (the tiled path then applies)."""
    lanes = ctx.hw.vector_lanes_f32
    trial = sch.copy()
    try:
        apply_reduce_lanes(trial, block, stage, lanes)
    except Exception:  # TVM's ScheduleError
        return False
    outer = apply_reduce_lanes(sch, block, stage, lanes)
    state.attach_points[stage.name] = [outer, outer]
    state.placed.update((stage.name, sch.get(sch.get_producers(block)[0]).name_hint))
    return True


def apply_reduce_lanes(sch: s_tir.Schedule, block: Any, stage: StageInfo, lanes: int) -> Any:
    """Split the lanes axis by ``lanes``, rfactor over the lanes, run the partial sums with
    the spatial loops fused and parallel and the lanes vectorized innermost, and sum the
    lanes of each output at the parallel loop. Returns that loop."""
    axis = lanes_axis(stage, lanes)
    assert axis is not None, "offered only where lanes_axis holds"
    loops = sch.get_loops(block)
    _, inner = sch.split(loops[axis], factors=[None, lanes])
    partial = sch.rfactor(inner, 0)
    loops = sch.get_loops(partial)  # spatial..., reductions..., lanes (split order kept)
    spatial = loops[: len(stage.spatial_axes)]
    rest = loops[len(spatial) : -1]
    sch.reorder(*spatial, *rest, loops[-1])
    outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    sch.parallel(outer)
    sch.vectorize(loops[-1])
    sch.reverse_compute_at(block, outer, preserve_unit_loops=True)
    if rest:
        sch.decompose_reduction(partial, rest[0])
    return outer
