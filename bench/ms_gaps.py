"""Explain an interpreted schedule trace (``bench.ms_trace``) in autosched's terms, and list
what a MetaSchedule schedule does that no autosched config can produce.

autosched's CPU complex-reduction template tiles every spatial axis in 4 levels (s0 parallel,
s1 cache tile, s2 register tile, s3 vector) and every reduction axis in 2 (r0, r1), ordered
``s0 s1 r0 [r1 s2 | s2 r1] s3`` with the axes of a level in their original order; it fuses all
s0 loops into one parallel loop, vectorizes only the last spatial axis' s3 loop, places a write
cache or the fused epilogue at the s0 or the last s1 loop, packs (cache read + blocked layout,
at root) only an operand indexed by the vector axis, and computes producers at root, inline, or
at the consumer's s0 or last s1 loop. The checks below compare against the template's knobs
(``build_template``) where a knob decides, and against that fixed structure where none does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from autosched.errors import ConfigError
from autosched.space import ChoiceKnob, Template, TileKnob
from autosched.templates.base import UNROLL_STEPS
from bench.ms_trace_model import Block, Loop, TraceModel

AUTOSCHED_ORDERS = ("s0 s1 r0 r1 s2 s3", "s0 s1 r0 s2 r1 s3")
MAX_VECTOR = 64  # complex_reduction.MAX_VECTOR: wider vector loops stay scalar


@dataclass
class BlockView:
    """One block in autosched's terms."""

    name: str
    role: str  # tiled | cache_read | cache_write | inlined | computed_at | root
    location: str
    tiling: dict[str, list[int]] = field(default_factory=dict)  # "axis(S,extent)" -> factors
    order: str = ""  # level structure, e.g. "s0 s1 r0 s2 r1 s3"
    loops: list[str] = field(default_factory=list)  # label:extent[:binding]
    parallel: list[str] = field(default_factory=list)
    vectorized: list[str] = field(default_factory=list)
    unroll: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Gap:
    block: str
    feature: str  # a short class: tiling_levels, tile_factor, loop_order, cache_read, ...
    detail: str


# --------------------------------------------------------------------------------------
# Describing a schedule
# --------------------------------------------------------------------------------------


def level_order(block: Block) -> str:
    """The block's tiled loops as a level sequence (consecutive repeats collapsed); a fused
    loop contributes its parts. Loops of other blocks' axes (a compute-at prefix) are left
    out."""
    own = {a for a, _, _ in block.axes}
    tokens: list[str] = []
    for loop in block.loops:
        for part in loop.parts or (loop,):
            if part.axis in own and part.level is not None:
                tok = part.token
                if not tokens or tokens[-1] != tok:
                    tokens.append(tok)
    return " ".join(tokens)


def _unroll_of(loop: Loop) -> str | None:
    step = loop.annotations.get("pragma_auto_unroll_max_step")
    return None if step is None else f"{loop.label}: max_step {step}"


def describe(model: TraceModel) -> list[BlockView]:
    views: list[BlockView] = []
    for b in model.blocks.values():
        if b.origin in ("root", "unknown"):
            continue
        tiling = {
            f"{axis}({kind},{extent})": model.tilings[b.name, axis]
            for axis, kind, extent in b.axes
            if (b.name, axis) in model.tilings
        }
        if b.inlined:
            role = "inlined"
        elif b.origin in ("cache_read", "cache_write"):
            role = b.origin
        elif _multi_level(model, b):
            role = "tiled"
        else:
            role = "computed_at" if b.location.startswith("at ") else "root"
        view = BlockView(b.name, role, b.location, tiling, level_order(b) if tiling else "")
        if not b.inlined:
            for loop in b.loops:
                cell = f"{loop.label}:{loop.extent}"
                view.loops.append(cell + ("" if loop.binding == "serial" else f":{loop.binding}"))
                if loop.binding == "parallel":
                    view.parallel.append(cell)
                elif loop.binding == "vectorized":
                    view.vectorized.append(cell)
                if (u := _unroll_of(loop)) is not None:
                    view.unroll.append(u)
        views.append(view)
    return views


def summary(model: TraceModel) -> dict[str, Any]:
    return {
        "blocks": [asdict(v) for v in describe(model)],
        "root_hints": dict(model.root_hints),
        "layout_steps": list(model.layout_steps),
        "other_steps": sorted(set(model.other_steps)),
    }


# --------------------------------------------------------------------------------------
# What autosched cannot express
# --------------------------------------------------------------------------------------


def _knobs(template: Template, stage: str) -> tuple[str | None, dict[str, Any]]:
    for space in template.stages:
        if space.stage == stage:
            return space.meta_template, {k.name: k for k in space.knobs}
    return None, {}


def _multi_level(model: TraceModel, b: Block) -> bool:
    """Tiled for reuse: an axis split in three or more levels, or a reduction split. (A
    two-way split of a spatial axis alone is a vector split, which every template has.)"""
    splits = [(k, model.tilings.get((b.name, a))) for a, k, _ in b.axes]
    return any(f and (len(f) >= 3 or k == "R") for k, f in splits)


def find_gaps(model: TraceModel, template: Template) -> list[Gap]:
    """What the traced schedule does that no config of ``template`` can produce."""
    gaps: list[Gap] = []
    for b in model.blocks.values():
        if b.origin in ("root", "unknown"):
            continue
        kind, knobs = _knobs(template, b.name)
        if _multi_level(model, b):
            gaps += _tiling_gaps(model, b, kind, knobs)
        elif not b.inlined and b.location == "root" and b.origin == "original":
            gaps += _root_gaps(b)
        gaps += _placement_gaps(model, template, b, kind, knobs)
    for step in model.layout_steps:
        gaps.append(
            Gap("-", "layout_transform", f"{step}: autosched only packs the vector-axis operand")
        )
    return gaps


def _tiling_gaps(model: TraceModel, b: Block, kind: str | None, knobs: dict[str, Any]) -> list[Gap]:
    out: list[Gap] = []
    if kind == "simple_reduction":
        return _simple_reduction_gaps(model, b, knobs)
    if kind != "complex_reduction":
        levels = {
            a: len(model.tilings[b.name, a]) for a, _, _ in b.axes if (b.name, a) in model.tilings
        }
        return [
            Gap(
                b.name,
                "tiling",
                f"MS tiles {levels}; "
                f"autosched's {kind} template does not multi-level tile this block",
            )
        ]
    for index, (axis, ax_kind, extent) in enumerate(b.axes):
        factors = model.tilings.get((b.name, axis))
        knob = knobs.get(f"tile_{ax_kind.lower()}{index}")
        if factors is None or not isinstance(knob, TileKnob):
            continue
        if len(factors) != knob.levels:
            out.append(
                Gap(
                    b.name,
                    "tiling_levels",
                    f"{axis} ({ax_kind}, {extent}) in {len(factors)} levels {factors}; "
                    f"autosched has {knob.levels}",
                )
            )
            continue
        try:
            knob.validate([knob.outer_for(factors[1:]), *factors[1:]])
        except ConfigError as err:
            out.append(Gap(b.name, "tile_factor", f"{axis} {factors}: {err}"))
    order = level_order(b)
    if order not in AUTOSCHED_ORDERS:
        out.append(
            Gap(
                b.name,
                "loop_order",
                f"level order '{order}'; autosched has {' | '.join(AUTOSCHED_ORDERS)}",
            )
        )
    out += _axis_order_gaps(b)
    out += _binding_gaps(b)
    return out


def _simple_reduction_gaps(model: TraceModel, b: Block, knobs: dict[str, Any]) -> list[Gap]:
    """autosched's simple reduction splits the last reduction axis for rfactor (its rfactor
    knob's factors) and the last spatial axis for a vector (its vector knob); nothing else."""
    rfactor, vector = knobs.get("rfactor"), knobs.get("vector")
    last_r = [a for a, k, _ in b.axes if k == "R"][-1:]
    last_s = [a for a, k, _ in b.axes if k == "S"][-1:]
    out: list[Gap] = []
    for axis, kind, extent in b.axes:
        factors = model.tilings.get((b.name, axis))
        if not factors:
            continue
        knob, wanted = (rfactor, last_r) if kind == "R" else (vector, last_s)
        choices = knob.choices if isinstance(knob, ChoiceKnob) else ()
        if len(factors) != 2 or axis not in wanted or factors[1] not in choices:
            out.append(
                Gap(
                    b.name,
                    "tiling",
                    f"{axis} ({kind}, {extent}) split {factors}; autosched's simple reduction "
                    f"splits only the last {kind} axis in two, inner factor in {list(choices)}",
                )
            )
    return out


def _axis_order_gaps(b: Block) -> list[Gap]:
    """Within a level autosched keeps the axes in their original order."""
    rank = {a: i for i, (a, _, _) in enumerate(b.axes)}
    by_level: dict[str, list[str]] = {}
    for loop in b.loops:
        for p in loop.parts or (loop,):
            if p.axis in rank and p.level is not None:
                by_level.setdefault(p.token, []).append(p.axis)
    return [
        Gap(b.name, "axis_order", f"level {lvl} orders axes {axes}")
        for lvl, axes in by_level.items()
        if axes != sorted(axes, key=rank.__getitem__)
    ]


def _binding_gaps(b: Block) -> list[Gap]:
    out: list[Gap] = []
    s0 = {a for a, k, _ in b.axes if k == "S"}
    for loop in b.loops:
        parts = loop.parts or (loop,)
        if loop.binding == "parallel":
            # A parallel loop fused from s0 and s1 loops is an autosched config with those
            # factors moved into s0; one that leaves an s0 loop out, or takes in a deeper
            # level or a reduction, is not.
            # s0 loops of extent 1 change nothing, in or out of the parallel loop.
            levels = {(p.axis, p.level) for p in parts}
            flat = [p for lp in b.loops for p in (lp.parts or (lp,))]
            outer = {(p.axis, 0) for p in flat if p.level == 0 and p.extent != 1}
            missing = {(a, 0) for a in s0} & outer - levels
            deeper = {lv for lv in levels if lv[1] not in (0, 1) or lv[0] not in s0}
            if missing or deeper:
                out.append(
                    Gap(
                        b.name,
                        "parallel",
                        f"parallel loop {loop.label} (extent {loop.extent}); "
                        "autosched fuses exactly all s0 loops",
                    )
                )
        if loop.binding == "vectorized":
            last_s = [a for a, k, e in b.axes if k == "S" and (e or 0) > 1][-1:]
            ok = len(parts) == 1 and parts[0].axis in last_s and parts[0].level == 3
            if not ok or (loop.extent or 0) > MAX_VECTOR:
                out.append(
                    Gap(
                        b.name,
                        "vectorize",
                        f"vectorized loop {loop.label} (extent {loop.extent}); "
                        f"autosched vectorizes only the last spatial axis' s3 (<= {MAX_VECTOR})",
                    )
                )
        step = loop.annotations.get("pragma_auto_unroll_max_step")
        if step is not None and step not in UNROLL_STEPS:
            out.append(
                Gap(b.name, "unroll", f"unroll max step {step}; autosched has {UNROLL_STEPS}")
            )
    return out


def _root_gaps(b: Block) -> list[Gap]:
    """A block left at root (elementwise, padding): autosched fuses all loops but the last
    into the parallel loop and vectorizes a split of the last axis alone."""
    out: list[Gap] = []
    last = b.axes[-1][0] if b.axes else None
    for loop in b.loops:
        axes = {p.axis for p in loop.parts or (loop,)}
        if loop.binding == "vectorized" and axes != {last}:
            out.append(
                Gap(
                    b.name,
                    "vectorize",
                    f"vectorized loop {loop.label} (extent {loop.extent}) spans axes "
                    f"{sorted(axes)}; autosched vectorizes a divisor of the last axis only",
                )
            )
    return out


def _placement_gaps(
    model: TraceModel, template: Template, b: Block, kind: str | None, knobs: dict[str, Any]
) -> list[Gap]:
    holder_name = b.location.split()[1] if b.location.startswith("at ") else None
    holder = model.blocks.get(holder_name) if holder_name else None
    where = b.at_level or None
    if b.inlined:
        inline = knobs.get("inline") or knobs.get("location")
        if not (
            isinstance(inline, ChoiceKnob)
            and (True in inline.choices or "inline" in inline.choices)
        ):
            return [
                Gap(b.name, "inline", f"MS inlines {b.name}; autosched's {kind} template cannot")
            ]
        return []
    if b.origin == "cache_read":
        pack = "a pack knob" if "pack" in _knobs(template, b.source)[1] else "no pack knob"
        if holder is not None:
            return [
                Gap(
                    b.name,
                    "cache_read",
                    f"cache read of {b.buffer} computed {b.location} ({where}); autosched only "
                    f"packs a vector-axis operand whole, at root ({b.source} has {pack})",
                )
            ]
        return [
            Gap(
                b.name,
                "cache_read",
                f"cache read of {b.buffer} at root ({b.source} has {pack}; "
                "only a blocked-layout copy of a vector-axis operand)",
            )
        ]
    if b.origin == "cache_write":
        if where not in ("s0", "s1"):
            return [
                Gap(
                    b.name,
                    "write_cache",
                    f"write cache of {b.source} {b.location} ({where}); "
                    "autosched places it at s0 or the last s1",
                )
            ]
        return []
    if holder is None:
        return []
    is_consumer = set(holder.writes) & set(b.reads)
    if is_consumer:  # an epilogue reverse-computed at the tile
        if where not in ("s0", "s1"):
            return [
                Gap(
                    b.name,
                    "epilogue",
                    f"{b.name} fused {b.location} ({where}); autosched fuses at s0 or the last s1",
                )
            ]
        return []
    location = knobs.get("location")
    choices = location.choices if isinstance(location, ChoiceKnob) else ()
    wanted = {"s0": "consumer_outer", "s1": "consumer_tile"}.get(where or "")
    if wanted not in choices:
        return [
            Gap(
                b.name,
                "compute_at",
                f"{b.name} computed {b.location} ({where}); "
                f"autosched's {kind} offers {list(choices) or 'root only'}",
            )
        ]
    own = [lp for lp in b.loops if not any(lp is h for h in holder.loops)]
    if any(lp.binding == "vectorized" for lp in own):
        # location_tunable.apply: a producer placed at its consumer skips apply_root, the
        # only place its vector knob is used.
        return [
            Gap(
                b.name,
                "compute_at_vector",
                f"{b.name} computed {b.location} with its inner loop vectorized; "
                "autosched leaves a placed producer scalar",
            )
        ]
    return []
