"""Read a MetaSchedule trace as data: which loops each block ends up in, how every original
axis was tiled, where cache stages and producers were computed, what was inlined, and which
loops were parallelized, vectorized and unrolled.

The trace is interpreted instruction by instruction (``inst.kind.name``, ``inst.inputs``,
``inst.attrs``, ``inst.outputs`` and the sampling decisions); nothing is parsed from text.
A small symbolic model tracks each block's current loop list: a split replaces one loop by
its parts, a reorder permutes loops in place, a fuse merges a run, and compute-at puts a
block under a prefix of its consumer's loops. Loops are shared objects, so a split of a loop
two blocks share (after compute-at) shows in both.
"""

from __future__ import annotations

import math
from functools import partialmethod
from typing import Any

from tvm import s_tir, tirx

from bench.ms_trace_model import Block, Loop, TraceModel, as_int, original_blocks

ROOT, INLINE = -1, -2  # SampleComputeLocation's decisions for "at root" and "inline"

# --------------------------------------------------------------------------------------
# The interpreter
# --------------------------------------------------------------------------------------


class _Interpreter:
    def __init__(self, func: tirx.PrimFunc, trace: Any) -> None:
        self.func, self.trace = func, trace
        self.model = TraceModel(original_blocks(func))
        self.shapes = {
            p.name: [int(s) for s in p.shape] for p in func.params if hasattr(p, "shape")
        }
        self.rv: dict[Any, Any] = {}  # BlockRV -> Block, LoopRV -> Loop, Var -> value
        self.decisions = {inst: d for inst, d in trace.decisions.items()}
        self.location_of: dict[Any, tuple[Block, int]] = {}  # LoopRV from a sample
        self.aliases: dict[str, Block] = {}  # names a block took later (C -> C_update)

    # ---- values ---------------------------------------------------------------------
    def value(self, x: Any) -> Any:
        if x is None:
            return None
        if isinstance(x, tirx.IntImm):
            return int(x)
        if isinstance(x, int | str | float):
            return x
        if x in self.rv:
            return self.rv[x]
        return as_int(x) if as_int(x) is not None else str(x)

    def consumers(self, block: Block) -> list[Block]:
        return [
            b
            for b in self.model.blocks.values()
            if not b.inlined and b is not block and set(block.writes) & set(b.reads)
        ]

    def replace_loops(self, old: list[Loop], new: list[Loop]) -> None:
        """Replace the consecutive run ``old`` by ``new`` in every block holding it."""
        for b in self.model.blocks.values():
            ids = [i for i, lp in enumerate(b.loops) if any(lp is o for o in old)]
            if ids:
                b.loops[ids[0] : ids[-1] + 1] = new

    # ---- instructions -----------------------------------------------------------------
    def run(self, trace: Any) -> TraceModel:
        for index, inst in enumerate(trace.insts):
            name = inst.kind.name
            handler = getattr(self, f"_{name}", None)
            if name == "EnterPostproc":
                self.model.postproc_from = index
            elif name in ("GetChildBlocks", "GetConsumers", "GetProducers"):
                self._related_blocks(inst, index)
            elif name == "GetLoops" and len(inst.outputs) != len(self.rv[inst.inputs[0]].loops):
                # A block whose loops the model does not know (pad_einsum's copies, rfactor).
                self._unmodelled_loops(self.rv[inst.inputs[0]], index)
                self._GetLoops(inst)
            elif handler is not None:
                try:
                    handler(inst)
                except (KeyError, StopIteration, IndexError):
                    # An instruction on something the model lost track of: say so, go on.
                    self.model.other_steps.append(f"unmodelled {name}")
            else:
                self.model.other_steps.append(name)
        return self.model

    def _GetSBlock(self, inst: Any) -> None:
        name = str(inst.attrs[0])
        if name == "root" and name not in self.model.blocks:
            self.model.blocks[name] = Block(name, [], [], [], origin="root")
        self.rv[inst.outputs[0]] = self._block_named(name)

    def _block_named(self, name: str) -> Block:
        block = self.model.blocks.get(name) or self.aliases.get(name)
        if block is None:  # e.g. a reduction's <name>_init block
            block = self.model.blocks.setdefault(name, Block(name, [], [], [], origin="unknown"))
        return block

    def _replay(self, index: int) -> s_tir.Schedule:
        """A real schedule with the trace's first ``index`` instructions applied: for the
        instructions whose results the model cannot name (child blocks, consumers)."""
        insts = list(self.trace.insts[:index])
        kept = set(insts)
        decisions = {i: d for i, d in self.trace.decisions.items() if i in kept}
        sch = s_tir.Schedule(self.func)
        s_tir.Trace(insts, decisions).apply_to_schedule(sch, remove_postproc=False)
        return sch

    def _related_blocks(self, inst: Any, index: int) -> None:
        """GetChildBlocks / GetConsumers / GetProducers: their outputs, by name, from a
        replay of the trace up to here (program order)."""
        sch = self._replay(index)
        parent = self.rv.get(inst.inputs[0])
        rv = sch.get_sblock(parent.name if isinstance(parent, Block) else "root")
        get = {
            "GetChildBlocks": sch.get_child_blocks,
            "GetConsumers": sch.get_consumers,
            "GetProducers": sch.get_producers,
        }[inst.kind.name]
        names = [sch.get(c).name_hint for c in get(rv)]
        for out, child in zip(inst.outputs, names, strict=True):
            self.rv[out] = self._block_named(child)

    def _unmodelled_loops(self, block: Block, index: int) -> None:
        """Loops of a block the model did not see created (pad_einsum's copies, or such a
        block computed at another's loop): read them from a replay. Modelled loops that agree
        by position and extent (a compute-at prefix) are kept; the others are new loops named
        by their loop variable."""
        sch = self._replay(index)
        loops: list[Loop] = []
        for i, rv in enumerate(sch.get_loops(sch.get_sblock(block.name))):
            real = sch.get(rv)
            extent = as_int(real.extent)
            known = block.loops[i] if i < len(block.loops) else None
            if known is not None and known.extent == extent and len(loops) == i:
                loops.append(known)
            else:
                loops.append(Loop(real.loop_var.name, "?", extent))
        block.loops = loops
        if not block.axes:
            block.axes = [(lp.axis, "?", lp.extent) for lp in loops if lp.kind == "?"]

    def _GetLoops(self, inst: Any) -> None:
        block = self.rv[inst.inputs[0]]
        for rv, loop in zip(inst.outputs, block.loops, strict=False):
            self.rv[rv] = loop

    def _SamplePerfectTile(self, inst: Any) -> None:
        factors = [int(x) for x in self.decisions[inst]]
        for rv, f in zip(inst.outputs, factors, strict=True):
            self.rv[rv] = f

    def _SampleCategorical(self, inst: Any) -> None:
        candidates = [self.value(c) for c in inst.attrs[0]]
        self.rv[inst.outputs[0]] = candidates[int(self.decisions[inst])]

    def _SampleComputeLocation(self, inst: Any) -> None:
        self.location_of[inst.outputs[0]] = (self.rv[inst.inputs[0]], int(self.decisions[inst]))

    def _Split(self, inst: Any) -> None:
        loop: Loop = self.rv[inst.inputs[0]]
        factors = [self.value(f) for f in inst.inputs[1:]]
        if None in factors and loop.extent is not None:
            known = math.prod(f for f in factors if f is not None)
            factors[factors.index(None)] = -(-loop.extent // known)
        parts = [
            Loop(loop.axis, loop.kind, f, (*loop.path, i), loop.parts)
            for i, f in enumerate(factors)
        ]
        self.replace_loops([loop], parts)
        for rv, part in zip(inst.outputs, parts, strict=True):
            self.rv[rv] = part
        owner = next(
            (b for b in self.model.blocks.values() if any(p is parts[0] for p in b.loops)), None
        )
        if owner is not None and not loop.path and not loop.parts:
            self.model.tilings.setdefault((owner.name, loop.axis), list(factors))

    def _Reorder(self, inst: Any) -> None:
        order = [self.rv[x] for x in inst.inputs]
        for b in self.model.blocks.values():
            slots = [i for i, lp in enumerate(b.loops) if any(lp is o for o in order)]
            if len(slots) == len(order):
                for slot, loop in zip(slots, order, strict=True):
                    b.loops[slot] = loop

    def _Fuse(self, inst: Any) -> None:
        loops = [self.rv[x] for x in inst.inputs]
        extents = [lp.extent for lp in loops]
        extent = math.prod(extents) if None not in extents else None
        # A fuse of a fused loop lists the original parts: one flat product of split loops.
        parts = tuple(p for lp in loops for p in (lp.parts or (lp,)))
        fused = Loop("", loops[0].kind, extent, (), parts)
        self.replace_loops(loops, [fused])
        self.rv[inst.outputs[0]] = fused

    def _bind(self, inst: Any, binding: str) -> None:
        self.rv[inst.inputs[0]].binding = binding

    _Parallel = partialmethod(_bind, binding="parallel")
    _Vectorize = partialmethod(_bind, binding="vectorized")
    _Unroll = partialmethod(_bind, binding="unrolled")

    def _Annotate(self, inst: Any) -> None:
        target, key = self.rv.get(inst.inputs[0]), str(inst.attrs[0])
        value = self.value(inst.inputs[1])
        if isinstance(target, Block) and target.origin == "root":
            self.model.root_hints[key] = value
        elif target is not None:
            target.annotations[key] = value

    def _cache(self, inst: Any, origin: str) -> None:
        source: Block = self.rv[inst.inputs[0]]
        index, scope = int(inst.attrs[0]), str(inst.attrs[1])
        buffer = (source.reads if origin == "cache_read" else source.writes)[index]
        name = f"{buffer}_{scope}"
        shape = self.shapes.get(buffer) or _buffer_shape(self.model.blocks, buffer)
        axes = [(f"{name}.d{i}", "?", e) for i, e in enumerate(shape)]
        cache = Block(
            name, axes, [buffer], [name], origin=origin, source=source.name, buffer=buffer
        )
        if origin == "cache_read":
            source.reads = [name if r == buffer else r for r in source.reads]
        else:  # the source now writes the cache; the new block copies it out
            source.writes = [name if w == buffer else w for w in source.writes]
            cache.reads, cache.writes = [name], [buffer]
        cache.loops = [Loop(a, k, e) for a, k, e in axes]
        self.model.blocks[name] = cache
        self.rv[inst.outputs[0]] = cache

    _CacheRead = partialmethod(_cache, origin="cache_read")
    _CacheWrite = partialmethod(_cache, origin="cache_write")

    def _place(self, inst: Any) -> None:
        """ComputeAt / ReverseComputeAt: the block moves under a prefix of the loops of the
        block holding the target loop, which a SampleComputeLocation may have chosen as an
        index into its first consumer's loops (TVM's CollectComputeLocation)."""
        block: Block = self.rv[inst.inputs[0]]
        target = inst.inputs[1]
        if target in self.location_of:
            _, decision = self.location_of[target]
            if decision == ROOT:
                block.location = "root"
                return
            if decision == INLINE:
                block.inlined, block.location = True, "inline"
                return
            consumers = self.consumers(block)
            if not consumers or decision >= len(consumers[0].loops):
                block.location = f"loop #{decision} of a consumer"
                return
            loop = consumers[0].loops[decision]
        else:
            loop = self.rv[target]
        holder = next(
            b
            for b in self.model.blocks.values()
            if b is not block and any(lp is loop for lp in b.loops)
        )
        prefix = holder.loops[: next(i for i, lp in enumerate(holder.loops) if lp is loop) + 1]
        block.loops = prefix + [Loop(a, k, None) for a, k, _ in block.axes]
        block.location = f"at {holder.name} {loop.label}"
        block.at_level = location_level(holder.loops, loop)

    _ComputeAt = _ReverseComputeAt = _place

    def _ComputeInline(self, inst: Any) -> None:
        """Its consumers now read what it read (so an inlined bias add leaves the ReLU a
        consumer of the conv)."""
        block = self.rv[inst.inputs[0]]
        block.inlined, block.location = True, "inline"
        for b in self.model.blocks.values():
            if set(block.writes) & set(b.reads):
                b.reads = [r for r in b.reads if r not in block.writes] + block.reads

    def _ReverseComputeInline(self, inst: Any) -> None:
        """Its producer now writes what it wrote."""
        block = self.rv[inst.inputs[0]]
        block.inlined, block.location = True, "inline"
        for b in self.model.blocks.values():
            if set(b.writes) & set(block.reads):
                b.writes = block.writes + [w for w in b.writes if w not in block.reads]

    def _DecomposeReduction(self, inst: Any) -> None:
        # TVM renames the block to <name>_update and adds <name>_init; later instructions
        # (the postprocessors') look the block up by its new name.
        block: Block = self.rv[inst.inputs[0]]
        self.aliases[f"{block.name}_update"] = block
        self.rv[inst.outputs[0]] = self._block_named(f"{block.name}_init")
        self.model.other_steps.append(f"decompose_reduction({block.name})")

    def _layout(self, inst: Any) -> None:
        target = self.rv.get(inst.inputs[0])
        name = target.name if isinstance(target, Block) else "?"
        self.model.layout_steps.append(f"{inst.kind.name}({name})")

    _TransformLayout = _layout
    _TransformBlockLayout = _layout
    _LayoutTransform = _layout
    _SetAxisSeparator = _layout

    def _PadEinsum(self, inst: Any) -> None:
        """Pad the block's iteration space to multiples of ``padding`` (autosched pads
        awkward extents); its loops grow and padded copies of its operands appear (read
        later through a replay)."""
        block: Block = self.rv[inst.inputs[0]]
        padding = [int(p) for p in inst.attrs[0]]
        for i, multiple in enumerate(padding):
            if multiple > 1 and i < len(block.loops) and block.loops[i].extent is not None:
                padded = -(-block.loops[i].extent // multiple) * multiple
                block.loops[i].extent = padded
                name, kind, _ = block.axes[i]
                block.axes[i] = (name, kind, padded)
        self.model.layout_steps.append(f"PadEinsum({block.name}, to multiples of {padding})")

    def _RFactor(self, inst: Any) -> None:
        """TVM adds <block>_rf (partial sums over the factored loop) and leaves the block
        reducing those; both blocks' loops are read from a replay when next asked for."""
        loop: Loop = self.rv[inst.inputs[0]]
        holder = next(b for b in self.model.blocks.values() if any(lp is loop for lp in b.loops))
        rf = self._block_named(f"{holder.name}_rf")
        rf.origin, rf.source = "rfactor", holder.name
        holder.loops = []
        self.rv[inst.outputs[0]] = rf
        self.model.other_steps.append(f"rfactor({holder.name} at {loop.label}: {loop.extent})")


def _buffer_shape(blocks: dict[str, Block], buffer: str) -> list[int | None]:
    """An intermediate's shape: the extents of the spatial axes of the block writing it."""
    for b in blocks.values():
        if buffer in b.writes:
            return [e for _, k, e in b.axes if k == "S"]
    return []


def location_level(loops: list[Loop], loop: Loop) -> str:
    """Where ``loop`` sits in a tiled nest ``loops``, in autosched's attach points: "s0" when
    it closes the s0 level (autosched's fused parallel loop), "s1" when it is the last s1
    loop (the tile loop), else a description of a level autosched cannot attach at."""
    flat = [p for lp in loops for p in (lp.parts or (lp,))]
    last = (loop.parts or (loop,))[-1]
    for level in (0, 1):
        # Unit loops change nothing (and TVM skips them as locations): leave them out.
        run = [
            p for p in flat if p.kind == "S" and p.level == level and (p.extent != 1 or p is last)
        ]
        if last.kind == "S" and last.level == level and run:
            if run[-1] is last:
                return f"s{level}"
            return f"s{level} partial" if level == 0 else "s1 not last"
    return last.token


def interpret(func: tirx.PrimFunc, trace: Any) -> TraceModel:
    """The symbolic model of ``trace`` applied to ``func``."""
    interpreter = _Interpreter(func, trace)
    model = interpreter.run(trace)
    _fill_extents(model, interpreter._replay(len(trace.insts)))
    return model


def _fill_extents(model: TraceModel, sch: s_tir.Schedule) -> None:
    """Extents the model could not know (a computed-at block's own loops cover the region
    its consumer's tile needs): read them from the fully scheduled function, by position."""
    for block in model.live_blocks():
        if all(lp.extent is not None for lp in block.loops):
            continue
        try:
            real = [sch.get(rv) for rv in sch.get_loops(sch.get_sblock(block.name))]
        except Exception:  # a block the model names differently: keep what it has
            continue
        if len(real) == len(block.loops):
            for loop, r in zip(block.loops, real, strict=True):
                if loop.extent is None:
                    loop.extent = as_int(r.extent)
