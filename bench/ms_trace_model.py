"""The data model of an interpreted schedule trace (``bench.ms_trace``): loops, blocks, and
what the trace did to them; and the blocks of the unscheduled function it starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tvm import s_tir, tirx


@dataclass(eq=False)
class Loop:
    """One loop of the symbolic model. ``axis`` is the original iteration axis it came from
    (``""`` for a fused loop, see ``parts``); ``path`` its split levels, outermost first
    (``(2,)``: the third of the axis' first split; ``(2, 1)``: that loop split again)."""

    axis: str
    kind: str  # "S" spatial, "R" reduction, "?" unknown (a cache stage's copy loop)
    extent: int | None
    path: tuple[int, ...] = ()
    parts: tuple[Loop, ...] = ()
    binding: str = "serial"  # serial | parallel | vectorized | unrolled
    annotations: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.parts:  # a fused loop, or a split of one: "(a*b).1"
            fused = "*".join(p.label for p in self.parts)
            return f"({fused})" + "".join(f".{p}" for p in self.path) if self.path else fused
        return self.axis + "".join(f".{p}" for p in self.path)

    @property
    def token(self) -> str:
        """Kind and first split level, e.g. "s1" or "r0" ("s-" unsplit, "x" for a copy)."""
        kind = self.kind.lower() if self.kind in ("S", "R") else "x"
        return f"{kind}{self.level}" if self.level is not None else f"{kind}-"

    @property
    def level(self) -> int | None:
        """The first split level of this loop's axis (None for an unsplit or fused loop)."""
        return self.path[0] if self.path and not self.parts else None


@dataclass
class Block:
    name: str
    axes: list[tuple[str, str, int | None]]  # (name, kind S/R/?, extent)
    reads: list[str]
    writes: list[str]
    loops: list[Loop] = field(default_factory=list)
    origin: str = "original"  # original | cache_read | cache_write | init | rfactor
    source: str = ""  # for a cache stage: the block it was made from
    buffer: str = ""  # for a cache stage: the buffer it copies
    location: str = "root"  # root | inline | "at <block> <loop label>"
    #: the level of that loop in the holder's tiling when placed: "s0" (the s0 level, whole),
    #: "s1" (the last s1 loop), else what it is ("s0 partial", "r0", "s2", "s1 not last")
    at_level: str = ""
    inlined: bool = False
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass
class TraceModel:
    """The interpreted trace: blocks by name, per-axis tilings, layout steps, root hints."""

    blocks: dict[str, Block]
    #: (block, axis) -> the factors of the axis' first split, outermost first
    tilings: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    #: annotations on the root block (meta_schedule.parallel / vectorize / unroll_explicit)
    root_hints: dict[str, Any] = field(default_factory=dict)
    layout_steps: list[str] = field(default_factory=list)  # transform_layout & friends
    other_steps: list[str] = field(default_factory=list)  # instructions not modelled
    postproc_from: int | None = None  # index of EnterPostproc in the trace

    def live_blocks(self) -> list[Block]:
        return [b for b in self.blocks.values() if not b.inlined]


# --------------------------------------------------------------------------------------
# The original function
# --------------------------------------------------------------------------------------

_ITER_KIND = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}


def original_blocks(func: tirx.PrimFunc) -> dict[str, Block]:
    """The blocks of an unscheduled PrimFunc, each with one loop per iteration variable
    (as ``te.create_prim_func`` builds them)."""
    sch = s_tir.Schedule(func)
    out: dict[str, Block] = {}
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        blk = sch.get(rv)
        axes = [
            (iv.var.name, _ITER_KIND.get(iv.iter_type, "?"), as_int(iv.dom.extent))
            for iv in blk.iter_vars
        ]
        block = Block(
            blk.name_hint,
            axes,
            [r.source.name for r in blk.reads],
            [w.source.name for w in blk.writes],
        )
        block.loops = [Loop(a, k, e) for a, k, e in axes]
        out[block.name] = block
    return out


def as_int(x: Any) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None
