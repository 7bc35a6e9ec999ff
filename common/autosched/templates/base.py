"""The meta-template interface: knobs for a stage, a static fill, and how to apply values."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, StageInfo
from autosched.hardware import HardwareParams
from autosched.space import Knob, KnobValue

UNROLL_STEPS = (0, 16, 64, 512)


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


class MetaTemplate(ABC):
    kind: ClassVar[MetaTemplateKind]
    #: applied in ascending phase order; inlining first, then tiling, then root stages
    phase: ClassVar[int]

    @abstractmethod
    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        """The stage's knobs and their domains."""

    @abstractmethod
    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        """Heuristic knob values from the hardware parameters alone (no measurement)."""

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
    for v in range(min(lanes, extent), 0, -1):
        if extent % v == 0:
            return v
    return 1


def vector_choices(extent: int, lanes: int) -> tuple[int, ...]:
    return tuple(
        sorted({v for v in (1, 2, 4, 8, 16, 32, 64) if v <= extent} | {best_vector(extent, lanes)})
    )


def parallel_vectorize_root(
    sch: s_tir.Schedule, name: str, vector: int, parallel: bool, unroll: int = 0
) -> list[Any]:
    """Fuse all loops of a root-level injective block, vectorize the inner part, parallelize
    the outer part. Returns [outer, inner] loops."""
    block = sch.get_sblock(name)
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    outer, inner = sch.split(fused, factors=[None, vector])
    if parallel:
        sch.parallel(outer)
    if vector > 1:
        sch.vectorize(inner)
    if unroll:
        sch.annotate(outer, "pragma_auto_unroll_max_step", unroll)
        sch.annotate(outer, "pragma_unroll_explicit", 1)
    return [outer, inner]
