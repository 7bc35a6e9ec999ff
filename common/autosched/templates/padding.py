"""Padding of a complex reduction's iteration space, so that its micro-kernel runs unguarded.

A tile factor that does not divide its axis (an awkward or prime extent) makes TVM put a
predicate on the block, i.e. inside the register tile (measured: 55 vs 150 GFLOP/s on a
matmul). With the ``pad`` knob, every axis whose inner tile does not divide it is padded up
to a multiple of that tile by ``pad_einsum``: the operands are copied zero-padded by blocks at
root (where packing may give the copy its blocked layout), the reduction accumulates into a
padded buffer, and one write-back block copies the valid region out; only that write-back,
placed at the tile loop like a write cache, is guarded.

It applies to einsum-like blocks (every access indexed by plain iteration variables or
constants: matmul, dense, batch matmul) over floating-point data; elsewhere (a conv's
``h + kh`` reads) the knob is a no-op and the guarded split stays. Padded rows and columns of
the output are computed and discarded, so any value there is harmless; a padded reduction
axis is padded only when its padded terms are exactly zero (a sum of products of operands,
one of which is read along the axis and so padded with zeros).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad  # what tirx.BufferLoad builds in TVM 0.27

from autosched.analysis import StageInfo
from autosched.templates.base import best_vector, loop_extent

PAD = "pad"
#: Extra iterations padding may add to an axis while the static fill grows its cache tile.
PAD_WASTE = 1 / 16


@dataclass(frozen=True)
class Padded:
    """The blocks ``pad_einsum`` added around a padded reduction."""

    #: blocks (SBlockRVs: their names need not be unique) that copy an operand zero-padded
    inputs: tuple[Any, ...]
    #: the block that copies the valid region of the padded result out (the only guard);
    #: None when only reduction axes were padded (the output keeps its shape)
    writeback: Any | None


def pad_multiples(
    stage: StageInfo, tiles: dict[int, list[int]], reduction_zero_safe: bool
) -> list[int] | None:
    """Per block axis, the multiple ``pad_einsum`` rounds it up to (1: left as is); None
    when every tile divides its axis (nothing to pad). ``tiles`` holds every axis' factors,
    outermost (derived) first."""
    multiples = []
    for axis, kind in enumerate(stage.iter_kinds):
        inner = math.prod(tiles[axis][1:])
        guarded = stage.extents[axis] % inner != 0
        pad_it = guarded and (kind == "S" or (kind == "R" and reduction_zero_safe))
        multiples.append(inner if pad_it else 1)
    return multiples if any(m > 1 for m in multiples) else None


def try_pad(
    sch: s_tir.Schedule,
    block: Any,
    stage: StageInfo,
    tiles: dict[int, list[int]],
    reserved: set[str],
) -> Padded | None:
    """Pad ``block`` so that every spatial tile (and, where padding adds only zeros, every
    reduction tile) divides its axis. None, with ``sch`` unchanged, when nothing needs
    padding, the block is not einsum-like, or a new block would take a name in ``reserved``
    (the stages, looked up by name)."""
    stmt = sch.get(block)
    if not _plain_float_accesses(stmt):
        return None
    multiples = pad_multiples(stage, tiles, _zero_padded_terms(stmt))
    if multiples is None:
        return None
    # A refused pad_einsum may leave the schedule half-changed: try it on a copy first.
    trial = sch.copy()
    try:
        trial.pad_einsum(block, multiples)
    except Exception:  # TVM's ScheduleError: not an einsum after all
        return None
    inputs, writeback = _added_blocks(trial, block, stmt)
    if any(trial.get(b).name_hint in reserved for b in [*inputs, *writeback]):
        return None
    sch.pad_einsum(block, multiples)
    inputs, writeback = _added_blocks(sch, block, stmt)
    return Padded(tuple(inputs), writeback[0] if writeback else None)


def _added_blocks(sch: s_tir.Schedule, block: Any, before: Any) -> tuple[list[Any], list[Any]]:
    """The operand copies and the write-back ``pad_einsum`` put around ``block``: producers
    of the buffers it reads now and did not read ``before``, and the consumers of its new
    output buffer."""
    after = sch.get(block)
    old_reads = [r.source for r in before.reads]
    new_reads = [r.source for r in after.reads if not any(r.source.same_as(o) for o in old_reads)]
    inputs = [
        p
        for p in sch.get_producers(block)
        if any(w.source.same_as(b) for w in sch.get(p).writes for b in new_reads)
    ]
    padded_output = not after.writes[0].source.same_as(before.writes[0].source)
    return inputs, list(sch.get_consumers(block)) if padded_output else []


# ---- static fill -------------------------------------------------------------------------
def may_pad(stage: StageInfo) -> bool:
    """Whether ``pad`` can apply: each access index depends on one axis at most (a matmul's,
    not a conv's ``h + kh``) and the data is floating point. The apply step checks the block
    itself (plain variables) and leaves ``pad`` a no-op where it is not einsum-like."""
    return bool(stage.reduction_axes) and all(
        r.dtype.startswith(("float", "bfloat")) and all(len(i) <= 1 for i in r.index_vars)
        for r in stage.reads
    )


def least_padding(extent: int, limit: int) -> int:
    """A register tile in [limit/2, limit] for an axis padded to it: the largest whose
    padding stays within ``PAD_WASTE`` of the extent (more accumulators per load), else the
    one that pads least."""
    options = range(max(1, limit // 2), limit + 1)
    waste = {t: -(-extent // t) * t - extent for t in options}
    cheap = [t for t in options if waste[t] <= extent * PAD_WASTE]
    return max(cheap) if cheap else min(options, key=lambda t: (waste[t], -t))


def padded_tile_growth(extent: int, tile: int) -> int | None:
    """For a padded axis with inner tile ``tile``: grow its cache tile by 2 while the
    padding that adds stays within ``PAD_WASTE`` of the extent, else None."""
    bigger = 2 * tile
    if bigger > extent or -(-extent // bigger) * bigger - extent > extent * PAD_WASTE:
        return None
    return 2


# ---- apply helpers ------------------------------------------------------------------------
def place_writeback(sch: s_tir.Schedule, writeback: Any, fuse: bool, lanes: int) -> Any | None:
    """Place the write-back of the padded result's valid region. Where it writes the output,
    it goes to the tile (the only guarded block): it is returned. Where a stage reads the
    result, the write-back is inlined into that reader, which then reads the padded result
    directly: a fused epilogue (``fuse``) is returned to go to the tile; another reader
    stays for its own template (a guarded block at the tile would break region cover for
    it) and None is returned, so the block may take an (unguarded, padded) write cache."""
    consumers = sch.get_consumers(writeback)
    if not consumers:
        return writeback
    trial = sch.copy()
    try:  # refused when the unpadded result is itself an output
        trial.compute_inline(writeback)
    except Exception:
        copy_at_root(sch, writeback, lanes)
        return None
    sch.compute_inline(writeback)
    return consumers[0] if fuse else None


def guarded_at_tile(sch: s_tir.Schedule, block: Any, loop: Any, lanes: int) -> Any | None:
    """``block`` (the guarded write-back, or the epilogue reading the padded result) if it
    may go to ``loop``; else None. TVM refuses some (its region-cover check fails for
    certain padded tiles): a write-back then makes one pass at root, and an epilogue is left
    for its own template."""
    trial = sch.copy()
    try:
        trial.reverse_compute_at(block, loop, preserve_unit_loops=True)
    except Exception:  # TVM's ScheduleError
        if _is_plain_copy(sch, block):
            copy_at_root(sch, block, lanes)
        return None
    return block


def _is_plain_copy(sch: s_tir.Schedule, block: Any) -> bool:
    """Whether ``block`` only copies one buffer into another (the write-back)."""
    body = sch.get(block).body
    return isinstance(body, tirx.BufferStore) and isinstance(body.value, TensorLoad)


def copy_at_root(sch: s_tir.Schedule, block: Any, lanes: int) -> None:
    """One parallel, vectorized pass at root (a zero-padded operand copy, a write-back):
    the outer loops fused and parallel, the innermost vectorized where a vector divides it."""
    loops = sch.get_loops(block)
    extent = loop_extent(sch, loops[-1])
    vector = best_vector(extent, lanes) if extent > 0 else 1
    if len(loops) == 1:
        outer, inner = sch.split(loops[0], factors=[None, vector])
    else:
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        inner = sch.split(loops[-1], factors=[None, vector])[1] if vector > 1 else loops[-1]
    sch.parallel(outer)
    if vector > 1:
        sch.vectorize(inner)


def _plain_float_accesses(stmt: Any) -> bool:
    """Every read and write indexed by plain variables or constants, all floating point
    (a padded integer lane could divide by zero; a float one gives a discarded inf)."""
    for region in [*stmt.reads, *stmt.writes]:
        if not str(region.source.dtype).startswith(("float", "bfloat")):
            return False
        for r in region.region:
            if int(r.extent) != 1 or not isinstance(r.min, tirx.Var | tirx.IntImm):
                return False
    return True


def _zero_padded_terms(stmt: Any) -> bool:
    """Whether zero-padding the operands along a reduction axis adds only zero terms: the
    update is ``out + prod(loads)`` and some factor is read along every reduction axis
    (so it is one of the zero-padded values there)."""
    body = stmt.body
    if stmt.init is None or not isinstance(body, tirx.BufferStore):
        return False
    init = stmt.init
    if not isinstance(init, tirx.BufferStore) or not _is_zero(init.value):
        return False
    value = body.value
    if not isinstance(value, tirx.Add):
        return False
    out = body.buffer
    if _is_load_of(value.a, out):
        term = value.b
    elif _is_load_of(value.b, out):
        term = value.a
    else:
        return False
    leaves = _product_leaves(term)
    if not leaves:
        return False
    reduction = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    return any(
        all(any(v.same_as(index) for index in leaf.indices) for v in reduction) for leaf in leaves
    )


def _product_leaves(expr: Any) -> list[Any] | None:
    """The buffer loads of a product of (cast) loads and constants; None for anything else
    (a quotient or a call could turn a zero operand into a non-zero term)."""
    if isinstance(expr, tirx.Cast):
        return _product_leaves(expr.value)
    if isinstance(expr, tirx.Mul):
        a, b = _product_leaves(expr.a), _product_leaves(expr.b)
        return None if a is None or b is None else a + b
    if isinstance(expr, TensorLoad):
        return [expr]
    if isinstance(expr, tirx.IntImm | tirx.FloatImm):
        return []
    return None


def _is_load_of(expr: Any, buffer: Any) -> bool:
    return isinstance(expr, TensorLoad) and expr.source.same_as(buffer)


def _is_zero(expr: Any) -> bool:
    return isinstance(expr, tirx.IntImm | tirx.FloatImm) and float(expr.value) == 0.0
