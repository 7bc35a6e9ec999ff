"""Blocked 2-D tiles for root injective stages that read an input across its rows.

A root injective stage is parallel over its outer loops with the innermost loop vectorized;
that makes its writes contiguous. When the output's innermost axis indexes a dimension of an
input that is *not* that input's innermost one (a transpose, a permute, a strided view), each
vector lane reads a different row: one cache line fetched per element, and the line is evicted
before the neighbouring elements along the row are needed. Tiling the two axes involved (the
write's innermost axis and the axis that walks the read's innermost dimension) keeps a
``tile_read x tile_write`` block of both in L1, so every line fetched is used whole, for reads and
writes alike; the blocks are the parallel grain and the write's inner loop stays vectorized.

Everything is decided from the stage analysis (which block iterator indexes which dimension of
each read), so it holds for any rank: a 2-D transpose, a 3-D batch transpose, a 4-D
NCHW -> NHWC permute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvm import s_tir

from autosched.analysis import MetaTemplateKind, ReadInfo, StageInfo
from autosched.space import ChoiceKnob, Knob, KnobValue, divisors

#: Knob names. ``block_read`` = 0 keeps the plain root schedule (no blocking).
BLOCK_READ, BLOCK_WRITE = "block_read", "block_write"
#: Tile sizes offered for the read-side axis. Any of them may leave a partial last tile: the
#: guard then sits on that axis, outside the vectorized write loop, so it costs one branch per
#: row of the block, not one per lane.
READ_TILES = (8, 16, 32, 64)
#: Powers of two offered for the write-side axis, plus the axis' own divisors in
#: [MIN_WRITE_TILE, MAX_WRITE_TILE] so that an awkward extent still has an unguarded tile that
#: can be vectorized.
WRITE_TILES = (8, 16, 32, 64)
MIN_WRITE_TILE, MAX_WRITE_TILE = 4, 64
#: x86 cache lines (every CPU HardwareParams describes today). A tile of one line per row on
#: both sides uses each fetched line whole; 16 x 16 fp32 is 2 KiB of reads and 2 KiB of writes,
#: far inside any L1, with room for the hardware prefetcher's next lines.
CACHE_LINE_BYTES = 64
#: How far reads are followed through producers that may be inlined, and how many composed
#: reads are kept: a bound on the work a wide or deep client DAG can ask for.
MAX_INLINE_DEPTH, MAX_COMPOSED_READS = 4, 64


@dataclass(frozen=True)
class StridedRead:
    """The two block axes to tile: ``write_axis`` is the output's innermost axis (its writes
    are contiguous), ``read_axis`` the axis that indexes the strided input's innermost
    dimension (its reads are contiguous along it)."""

    write_axis: int
    read_axis: int
    read_dtype: str


Stages = dict[str, StageInfo]


def _inlinable_producer(
    read: ReadInfo, stage: StageInfo, stages: Stages | None
) -> StageInfo | None:
    """The producer that ``read`` loads from, when it is a spatial direct-compute stage that
    the inline knob may fold into ``stage``. A te stage's block and buffer share a name; when
    they do not, the read is taken as it is (blocking stays legal either way, only its
    benefit is missed)."""
    producer = (stages or {}).get(read.buffer)
    if (
        producer is None
        or producer.name not in stage.producers
        or producer.meta_template != MetaTemplateKind.DIRECT_COMPUTE
        or producer.is_output
        or set(producer.iter_kinds) != {"S"}
        or len(read.index_vars) != len(producer.extents)
    ):
        return None
    return producer


def effective_reads(
    stage: StageInfo, stages: Stages | None, depth: int = MAX_INLINE_DEPTH
) -> tuple[ReadInfo, ...]:
    """The stage's reads once its inlinable producers are inlined: a read of a producer is
    replaced by the producer's own reads, their index variables mapped through the read's
    (``relu(transpose(x))`` reads ``x`` across its rows although ``relu`` reads along them).
    At most MAX_COMPOSED_READS, collected depth-first: the walk stops as soon as that many
    are found, so a DAG whose reads fan out at every level costs no more than that."""
    found: list[ReadInfo] = []
    _collect_reads(stage, stages, depth, lambda read: read, found)
    return tuple(found)


def _collect_reads(
    stage: StageInfo,
    stages: Stages | None,
    depth: int,
    to_outer: Callable[[ReadInfo], ReadInfo],
    found: list[ReadInfo],
) -> None:
    for read in stage.reads:
        if len(found) >= MAX_COMPOSED_READS:
            return
        producer = _inlinable_producer(read, stage, stages) if depth > 0 else None
        if producer is None:
            found.append(to_outer(read))
            continue

        def through(inner: ReadInfo, read: ReadInfo = read) -> ReadInfo:
            mapped = tuple(
                tuple(sorted({v for axis in index for v in read.index_vars[axis]}))
                for index in inner.index_vars
            )
            return to_outer(ReadInfo(inner.buffer, mapped, inner.dtype))

        _collect_reads(producer, stages, depth - 1, through, found)


def find_strided_read(stage: StageInfo, stages: Stages | None = None) -> StridedRead | None:
    """The first read in which the output's innermost axis indexes a non-innermost dimension
    while a single other axis indexes the innermost one; None when every read is contiguous
    along the write (or broadcast), or the stage is not a plain spatial nest. With
    ``stages``, reads are followed through producers the stage may inline."""
    if not stage.iter_kinds or set(stage.iter_kinds) != {"S"}:
        return None
    write_axis = len(stage.extents) - 1
    if stage.extents[write_axis] < MIN_WRITE_TILE:
        return None
    for read in effective_reads(stage, stages):
        if not read.index_vars:
            continue
        innermost = read.index_vars[-1]
        outer_uses = {v for index in read.index_vars[:-1] for v in index}
        if write_axis in innermost or write_axis not in outer_uses or len(innermost) != 1:
            continue
        read_axis = innermost[0]
        if read_axis != write_axis and stage.extents[read_axis] >= min(READ_TILES):
            return StridedRead(write_axis, read_axis, read.dtype)
    return None


def read_tile_choices(stage: StageInfo, strided: StridedRead) -> tuple[int, ...]:
    extent = stage.extents[strided.read_axis]
    return (0, *(t for t in READ_TILES if t <= extent))


def write_tile_choices(stage: StageInfo, strided: StridedRead) -> tuple[int, ...]:
    extent = stage.extents[strided.write_axis]
    found = {t for t in WRITE_TILES if t <= extent}
    found |= {d for d in divisors(extent, MAX_WRITE_TILE) if d >= MIN_WRITE_TILE}
    return tuple(sorted(found))


def block_knobs(stage: StageInfo, stages: Stages | None = None) -> list[Knob]:
    """``block_read`` (0: off) and ``block_write`` tile sizes, on stages with a strided read."""
    strided = find_strided_read(stage, stages)
    if strided is None:
        return []
    return [
        ChoiceKnob(BLOCK_READ, read_tile_choices(stage, strided)),
        ChoiceKnob(BLOCK_WRITE, write_tile_choices(stage, strided)),
    ]


def _dtype_bytes(dtype: str) -> int:
    bits = "".join(ch for ch in dtype if ch.isdigit())
    return max(1, int(bits or 32) // 8)


def _closest(choices: tuple[int, ...], want: int) -> int:
    return min(choices, key=lambda c: (abs(math.log2(c) - math.log2(want)), -c))


def block_static(
    stage: StageInfo, vector: int, stages: Stages | None = None, cache_bytes: int = 0
) -> dict[str, KnobValue]:
    """One cache line of each side per tile row (two when the output exceeds
    ``cache_bytes``): the read tile spans a line of the strided input, the write tile a line
    of the output, preferring a write tile that divides the axis
    and nests with the vector width (so the write loop vectorizes unguarded)."""
    strided = find_strided_read(stage, stages)
    if strided is None:
        return {}
    write_bytes = _dtype_bytes(stage.write_dtype or "float32")
    # Past the caches every row of a block is a separate DRAM page (and TLB entry): two lines
    # per row halve the switches per byte (a 49 MB transpose: 1.6x, measured; in cache
    # the larger block is no faster).
    lines = 2 if cache_bytes and math.prod(stage.extents) * write_bytes > cache_bytes else 1
    read_line = lines * max(1, CACHE_LINE_BYTES // _dtype_bytes(strided.read_dtype))
    write_line = lines * max(1, CACHE_LINE_BYTES // write_bytes)
    reads = read_tile_choices(stage, strided)
    writes = write_tile_choices(stage, strided)
    extent = stage.extents[strided.write_axis]
    vectorizable = tuple(
        w for w in writes if extent % w == 0 and blocked_vector(extent, w, vector) == min(w, vector)
    )
    return {
        BLOCK_READ: _closest(reads[1:], read_line) if len(reads) > 1 else 0,
        BLOCK_WRITE: _closest(vectorizable or writes, write_line),
    }


def blocked_vector(extent: int, tile: int, vector: int) -> int:
    """Lanes of the write's inner loop inside a block: a guarded tile would predicate every
    lane (scalar then); otherwise the largest common width of the vector knob and the tile."""
    return math.gcd(vector, tile) if extent % tile == 0 else 1


def apply_blocked(
    sch: s_tir.Schedule,
    stage: StageInfo,
    values: dict[str, Any],
    stages: Stages | None = None,
) -> list[Any] | None:
    """Tile the write and read axes, order the loops [other axes, read block, write block,
    read tile, write tile], parallelize the fused block loops and vectorize the write tile.
    Returns [parallel loop, read-tile loop], or None when the stage is not to be blocked
    (knob off, no strided read, or its loops no longer match its axes). ``stages`` must be
    what ``block_knobs`` saw, so that both find the same axes."""
    strided = find_strided_read(stage, stages)
    tile_read = int(values.get(BLOCK_READ, 0) or 0)
    if strided is None or tile_read == 0:
        return None
    block = sch.get_sblock(stage.name)
    loops = sch.get_loops(block)
    if len(loops) != len(stage.extents):
        return None
    tile_write = int(values[BLOCK_WRITE])
    read_axis, write_axis = strided.read_axis, strided.write_axis
    read_outer, read_inner = sch.split(loops[read_axis], factors=[None, tile_read])
    write_outer, write_inner = sch.split(loops[write_axis], factors=[None, tile_write])
    outer = [read_outer if k == read_axis else loops[k] for k in range(len(loops) - 1)]
    outer.append(write_outer)
    sch.reorder(*outer, read_inner, write_inner)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if values["parallel"]:
        sch.parallel(fused)
    lanes = blocked_vector(stage.extents[write_axis], tile_write, values["vector"])
    if lanes > 1:
        if lanes < tile_write:
            _, write_inner = sch.split(write_inner, factors=[None, lanes])
        sch.vectorize(write_inner)
    return [fused, read_inner]
