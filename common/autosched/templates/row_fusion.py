"""Row-fused normalizations: the statistics of a row computed in the row loop of the stage
that consumes them, so that one parallel loop over rows does everything while the row is in
cache (softmax: max, exp, sum and normalize; layer norm: sum, mean, variance and normalize).

A *row group* is found from the stage analysis alone. A stage X (a simple reduction whose
spatial axes lead its iterators, or an injective stage) has rows E = its leading extents; its
*anchor* D is a root injective stage (direct compute, so not itself a reduction's producer)
with iterators ``E + (n,)`` that post-dominates X: every stage between X and D (descendants of
X that D depends on) has all its consumers among them or D, leads with the same rows, and
uses the row iterators only as the matching leading index of every read, so row i of every
stage needs only row i of the others.

Such stages get the location ``row`` (a knob value of simple reductions and location-tunable
stages). ``apply_row_fusion`` runs after every other stage has been placed (``schedule.py``):
in reverse program order (consumers first) each row-fused stage is scheduled inside its own
loop nest (rfactor over vector lanes, vectorized inner loops) and its row loop is then merged
with the anchor's. Merging rather than ``compute_at``: rfactor gives each partial-sum block
its own copy of the row loop anyway, a merge keeps every nest exactly as scheduled, and TVM
0.27's ``compute_at`` regenerates loops from the block's iterator domains, dropping the
predicate of a guarded split (it would read past the row end). A stage whose consumers did
not all land in the anchor's loop (a consumer at root, a different location, an anchor
inlined into a stage that reads it across rows) stays at root instead, so every combination
of knob values applies. After the merges the buffers between the stages
are accessed only inside the row loop, so TVM's buffer planning shrinks them to one row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tvm import s_tir, tirx

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.space import divisors
from autosched.templates.base import ApplyState, TemplateContext, block_exists, loop_extent

#: The knob value (of ``location``) that computes a stage at its anchor's row loop.
ROW = "row"
ROOT = "root"
LOCATION = "location"


def _leading_spatial(stage: StageInfo) -> int:
    return len(stage.iter_kinds) - len(stage.iter_kinds.lstrip("S"))


def _rows_used_as_identity(stage: StageInfo, rows: int) -> bool:
    """Every read uses the row iterators 0..rows-1 only as its own leading indices."""
    for read in stage.reads:
        for position, index in enumerate(read.index_vars):
            uses_rows = [v for v in index if v < rows]
            if not uses_rows:
                continue
            if position >= rows or index != (position,):
                return False
    return True


def _descendants(name: str, stages: dict[str, StageInfo]) -> set[str]:
    seen: set[str] = set()
    todo = list(stages[name].consumers)
    while todo:
        current = todo.pop()
        if current in seen or current not in stages:
            continue
        seen.add(current)
        todo.extend(stages[current].consumers)
    return seen


def _is_anchor_candidate(stage: StageInfo, row_extents: tuple[int, ...]) -> bool:
    rows = len(row_extents)
    return (
        stage.meta_template == MetaTemplateKind.DIRECT_COMPUTE
        and stage.iter_kinds == "S" * (rows + 1)
        and stage.extents[:rows] == row_extents
        and _rows_used_as_identity(stage, rows)
    )


def _row_extents(stage: StageInfo, anchor_rows: int | None = None) -> tuple[int, ...] | None:
    """The rows a stage iterates: a reduction's leading spatial axes (all of them), an
    injective stage's leading ``anchor_rows`` axes."""
    if "R" in stage.iter_kinds:
        rows = _leading_spatial(stage)
        if rows == 0 or stage.iter_kinds[rows:] != "R" * (len(stage.iter_kinds) - rows):
            return None
        return stage.extents[:rows]
    if anchor_rows is None or stage.iter_kinds != "S" * len(stage.iter_kinds):
        return None
    return stage.extents[:anchor_rows] if 0 < anchor_rows <= len(stage.extents) else None


def row_anchor(stage: StageInfo, stages: dict[str, StageInfo]) -> str | None:
    """The stage at whose row loop ``stage`` can be computed, if any (first in program order)."""
    if stage.meta_template not in (
        MetaTemplateKind.SIMPLE_REDUCTION,
        MetaTemplateKind.LOCATION_TUNABLE,
    ):
        return None
    descendants = _descendants(stage.name, stages)
    order = list(stages)
    for candidate in (n for n in order if n in descendants):
        anchor = stages[candidate]
        rows = _row_extents(stage, len(anchor.extents) - 1)
        if not rows or not _is_anchor_candidate(anchor, rows):
            continue
        between = {d for d in descendants if candidate in _descendants(d, stages)}
        if _group_is_row_local(stage, between, anchor, rows, stages):
            return candidate
    return None


def _group_is_row_local(
    stage: StageInfo,
    between: set[str],
    anchor: StageInfo,
    rows: tuple[int, ...],
    stages: dict[str, StageInfo],
) -> bool:
    allowed = between | {anchor.name}
    for name in (stage.name, *between):
        member = stages[name]
        if any(c not in allowed for c in member.consumers):
            return False
        if name != stage.name and not (
            _row_extents(member, len(rows)) == rows and _rows_used_as_identity(member, len(rows))
        ):
            return False
    return True


def wants_row(values: dict[str, Any]) -> bool:
    return values.get(LOCATION) == ROW


def lane_efficient_width(extent: int, lanes: int, max_width: int, min_steps: int = 1) -> int:
    """The divisor of ``extent`` (up to ``max_width``, leaving at least ``min_steps`` steps)
    that does the most work per vector instruction: on 16 lanes a row of 1000 gets 40 (40
    elements in 3 instructions) rather than 10 (10 in 1) or 8. The larger on a tie; 1 if
    nothing divides."""
    widths = [w for w in divisors(extent, max_width) if w * min_steps <= extent]
    return max(widths, key=lambda w: (w / math.ceil(w / lanes), w), default=1)


# --------------------------------------------------------------------------------------
# Applying
# --------------------------------------------------------------------------------------

#: schedules a stage's loops inside its own nest (its rows fused into its outermost loop;
#: the last argument is the vector lanes); returns the blocks rfactor made (each with its own
#: row loop) and the reductions to decompose last, as (block, depth of the loop to decompose
#: at): loop handles taken before the merges would be stale
InnerSchedule = Callable[
    [s_tir.Schedule, StageInfo, dict[str, Any], int], tuple[list[Any], list[tuple[Any, int]]]
]
#: places a stage at root after all (its row fusion was not possible)
Fallback = Callable[[StageInfo], None]


def apply_row_fusion(
    sch: s_tir.Schedule,
    deferred: list[StageInfo],
    config: dict[str, dict[str, Any]],
    ctx: TemplateContext,
    state: ApplyState,
    inner: Callable[[StageInfo], InnerSchedule],
    fallback: Fallback,
) -> None:
    """Merge every deferred stage into its anchor's row loop (consumers first), or place it
    at root when that is not possible; then parallelize the merged loops and decompose the
    reductions (decomposing first would forbid the parallel loop)."""
    order = {name: i for i, name in enumerate(ctx.stages)}
    merged: dict[str, Any] = {}  # anchor -> its current (merged) row loop
    was_parallel: dict[str, bool] = {}
    members: dict[str, set[str]] = {}  # anchor -> stages placed in its row loop
    decompose: list[Any] = []
    for stage in sorted(deferred, key=lambda s: -order[s.name]):
        anchor = _resolve_anchor(sch, stage, ctx.stages)
        loop = _anchor_row_loop(sch, anchor, stage, ctx, state, merged)
        if loop is None or not _consumers_in_loop(sch, stage.name, anchor, members):
            fallback(stage)
            continue
        if anchor not in merged:
            was_parallel[anchor] = _is_parallel(sch, loop)
        fuse_rows = len(_row_extents(stage, len(ctx.stages[anchor].extents) - 1) or ())
        _fuse_leading(sch, stage.name, fuse_rows)
        made, to_decompose = inner(stage)(sch, stage, config[stage.name], ctx.hw.vector_lanes_f32)
        decompose += to_decompose
        blocks = [*made, sch.get_sblock(stage.name)]  # rfactor puts each new nest first
        tops = [sch.get_loops(b)[0] for b in blocks]
        merged[anchor] = sch.merge(*tops, loop)
        members.setdefault(anchor, {anchor}).update(sch.get(b).name_hint for b in blocks)
        state.placed.add(stage.name)
        state.attach_points[stage.name] = [merged[anchor], merged[anchor]]
        if anchor in state.attach_points:
            state.attach_points[anchor][0] = merged[anchor]
    for anchor, loop in merged.items():
        if was_parallel[anchor]:
            sch.parallel(loop)
    for block, depth in decompose:
        sch.decompose_reduction(block, sch.get_loops(block)[depth])


def _resolve_anchor(sch: s_tir.Schedule, stage: StageInfo, stages: dict[str, StageInfo]) -> str:
    """The analysed anchor, or the stage it was inlined into (its only consumer)."""
    anchor = row_anchor(stage, stages) or ""
    rows = len(stages[anchor].extents) - 1 if anchor else 0
    while anchor and not block_exists(sch, anchor):
        consumers = stages[anchor].consumers
        if len(consumers) != 1:
            return ""
        following = stages[consumers[0]]
        if not (
            following.iter_kinds == "S" * (rows + 1)
            and following.extents == stages[anchor].extents
            and _rows_used_as_identity(following, rows)
        ):
            return ""
        anchor = following.name
    return anchor


def _anchor_row_loop(
    sch: s_tir.Schedule,
    anchor: str,
    stage: StageInfo,
    ctx: TemplateContext,
    state: ApplyState,
    merged: dict[str, Any],
) -> Any:
    """The anchor's outermost loop when it iterates exactly the rows of ``stage``."""
    if not anchor or not block_exists(sch, anchor):
        return None
    if anchor in merged:
        return merged[anchor]
    # Placed at root by its own template, which registered its outer loop (a stage computed
    # at some other stage's loop registers none).
    if anchor not in state.placed or anchor not in state.attach_points:
        return None
    loops = sch.get_loops(sch.get_sblock(anchor))
    if not sch.get_sref(loops[0]).same_as(sch.get_sref(state.attach_points[anchor][0])):
        return None
    rows = _row_extents(stage, len(ctx.stages[anchor].extents) - 1)
    if len(loops) < 2 or not rows or loop_extent(sch, loops[0]) != math.prod(rows):
        return None
    # The outer loop must hold the anchor's row iterators alone (not a tile of them), and
    # carry no annotation (``merge`` refuses annotated loops).
    if loop_extent(sch, loops[1]) * loop_extent(sch, loops[0]) > math.prod(
        ctx.stages[anchor].extents
    ):
        return None
    return None if len(sch.get(loops[0]).annotations) else loops[0]


def _consumers_in_loop(
    sch: s_tir.Schedule, name: str, anchor: str, members: dict[str, set[str]]
) -> bool:
    placed = members.get(anchor, {anchor})
    consumers = [sch.get(c).name_hint for c in sch.get_consumers(sch.get_sblock(name))]
    return all(c in placed for c in consumers)


def _is_parallel(sch: s_tir.Schedule, loop: Any) -> bool:
    return sch.get(loop).kind == tirx.ForKind.PARALLEL


def _fuse_leading(sch: s_tir.Schedule, name: str, rows: int) -> None:
    loops = sch.get_loops(sch.get_sblock(name))
    if rows > 1:
        sch.fuse(*loops[:rows])
