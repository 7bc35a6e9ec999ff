"""The meta-template interface: knobs for a stage, a static fill, and how to apply values."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.fast_math import fast_form_fits
from autosched.hardware import HardwareParams
from autosched.space import ChoiceKnob, Config, Knob, KnobValue, ProductLimit, divisors

UNROLL_STEPS = (0, 16, 64, 512)

#: The knob that picks how a stage's transcendentals are computed: the exact libm call, or
#: the vectorizable polynomial of ``fast_math`` (applied before scheduling, so an inlined
#: stage carries its form into its consumer).
MATH, EXACT, FAST = "math", "exact", "fast"


@dataclass(frozen=True)
class TemplateContext:
    """What a meta-template may look at besides its own stage."""

    stages: dict[str, StageInfo]
    hw: HardwareParams


@dataclass
class ApplyState:
    """Mutable bookkeeping while one config is applied to one schedule."""

    #: blocks that are already placed (inlined, fused into a tile, computed at a loop)
    placed: set[str] = field(default_factory=set)
    #: per scheduled block: [outer parallel loop, tile loop] that producers may compute at
    attach_points: dict[str, list[Any]] = field(default_factory=dict)
    #: per tiled reduction: its outermost reduction loop (r0), where a producer computed at
    #: it makes only the slice one reduction step reads (MetaSchedule's best convs pad there)
    reduction_points: dict[str, Any] = field(default_factory=dict)


class MetaTemplate(ABC):
    kind: ClassVar[MetaTemplateKind]
    #: applied in ascending phase order; inlining first, then tiling, then root stages
    phase: ClassVar[int]

    @abstractmethod
    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        """The stage's knobs and their domains."""

    def limits(self, stage: StageInfo, ctx: TemplateContext) -> list[ProductLimit]:
        """Bounds over several knobs at once (a GPU block's threads); most have none."""
        return []

    @abstractmethod
    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        """Heuristic knob values from the hardware parameters alone (no measurement)."""

    def inline(
        self,
        sch: s_tir.Schedule,
        stage: StageInfo,
        values: dict[str, KnobValue],
        state: ApplyState,
    ) -> None:
        """First pass, before any ``apply``: inline the stage if its knobs say so.
        Most meta-templates never inline."""
        return None

    @abstractmethod
    def apply(
        self,
        sch: s_tir.Schedule,
        stage: StageInfo,
        values: dict[str, KnobValue],
        ctx: TemplateContext,
        state: ApplyState,
    ) -> None:
        """Transform ``sch`` for this stage. Deterministic in (stage, values)."""


def reuse_axis(stage: StageInfo, axis: int | None) -> int | None:
    """A second spatial axis to tile in registers beside ``axis`` (the vector or column
    axis): one along which the operand read with ``axis`` is reused (matmul's i, a conv's
    output channel), so each load of it feeds several accumulators; else the next one out."""
    candidates = [a for a in stage.spatial_axes if a != axis and stage.extents[a] > 1]
    if not candidates:
        return None
    for read in stage.reads:
        used = {v for index in read.index_vars for v in index}
        if axis in used:
            reused = [a for a in candidates if a not in used]
            if reused:
                return max(reused, key=lambda a: stage.extents[a])
    return candidates[-1]


def block_exists(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # TVM raises a plain error when a block was inlined away
        return False
    return True


def loop_extent(sch: s_tir.Schedule, loop: Any) -> int:
    extent = sch.get(loop).extent
    return int(extent) if hasattr(extent, "value") or isinstance(extent, int) else -1


def best_vector(extent: int, lanes: int) -> int:
    """Largest factor of ``extent`` up to ``lanes`` (a full vector when it divides)."""
    return (divisors(extent, lanes) or [1])[-1]


def vector_choices(extent: int, limit: int = 64) -> tuple[int, ...]:
    """Vector widths for a loop: its divisors up to ``limit`` (a guarded vector loop would
    predicate every lane)."""
    return tuple(divisors(extent, limit))


def parallel_vectorize_root(
    sch: s_tir.Schedule,
    name: str,
    vector: int,
    parallel: bool,
    unroll: int = 0,
    min_chunks: int = 0,
) -> list[Any]:
    """Parallelize a root-level injective block over its fused outer loops and vectorize its
    innermost loop. The innermost loop is never fused with the others: indices of a fused
    loop need div/mod per lane, which turns every vector access into a gather. When the
    outer loops give fewer than ``min_chunks`` parallel iterations (a few long rows), the
    outer part of the split innermost loop joins the parallel loop too: only its scalar
    index needs div/mod, the vector lanes stay contiguous.
    Returns [outer, inner] loops."""
    block = sch.get_sblock(name)
    loops = sch.get_loops(block)
    if len(loops) == 1:
        outer, inner = sch.split(loops[0], factors=[None, vector])
    else:
        outer_loops, inner = list(loops[:-1]), loops[-1]
        if vector > 1:
            vector_outer, inner = sch.split(inner, factors=[None, vector])
            if parallel and _extent_product(sch, outer_loops) < min_chunks:
                outer_loops.append(vector_outer)
        outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    if parallel:
        sch.parallel(outer)
    if vector > 1:
        sch.vectorize(inner)
    if unroll:
        sch.annotate(outer, "pragma_auto_unroll_max_step", unroll)
        sch.annotate(outer, "pragma_unroll_explicit", 1)
    return [outer, inner]


def _extent_product(sch: s_tir.Schedule, loops: list[Any]) -> int:
    """Iterations of the nest ``loops`` (a symbolic extent counts as plenty)."""
    extents = [loop_extent(sch, loop) for loop in loops]
    return math.prod(extents) if all(e > 0 for e in extents) else 1 << 62


def math_knobs(stage: StageInfo) -> list[Knob]:
    """The ``math`` knob, on stages whose body calls a transcendental with a fast form."""
    return [ChoiceKnob(MATH, (EXACT, FAST))] if stage.transcendentals else []


def math_static(stage: StageInfo) -> dict[str, KnobValue]:
    """Fast wherever every fast form the stage would use is accurate enough."""
    if not stage.transcendentals:
        return {}
    return {MATH: FAST if fast_form_fits(stage.transcendentals) else EXACT}


def fast_math_blocks(config: Config) -> list[str]:
    """The stages whose config chose the fast forms, in config order."""
    return [name for name, values in config.values.items() if values.get(MATH) == FAST]
