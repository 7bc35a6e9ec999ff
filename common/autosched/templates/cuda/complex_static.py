"""The CUDA complex reduction's static fill: a register tile per thread, a block of threads
and a shared tile depth chosen from the GPU's parameters alone (no measurement).

``inner`` maps an axis to its inner factors (levels 1.. of its tile knob; level 0 derived).
"""

from __future__ import annotations

import math

from autosched.analysis import StageInfo
from autosched.hardware import GpuParams
from autosched.space import divisors, tile_candidates
from autosched.templates.base import reuse_axis
from autosched.templates.cuda.complex_space import (
    ASSUMED_BYTES,
    INNER,
    INNERMOST,
    SPATIAL_LEVELS,
    THREAD,
    VTHREAD,
    exact_footprints,
    is_spatial,
    operand_budget,
    stageable_reads,
    staged_levels,
)
from autosched.templates.vector_axis import innermost_axis

#: Static fill: (threads per block, register tile rows, columns), in order of preference
#: (``_static_rank`` picks among them).
STATIC_SHAPES = (
    (256, 4, 4),
    (128, 4, 4),
    (64, 4, 4),
    (128, 2, 4),
    (64, 2, 4),
    (64, 2, 2),
    (64, 1, 2),
    (64, 1, 1),
    (32, 1, 1),
)
#: Static fill: blocks of at least two warps (an SM holds a limited number of blocks).
MIN_STATIC_WARPS = 2
#: Static fill: the stride a window's shared tile is sized for.
WINDOW_STRIDE = 2
#: Static fill: elements of every reduction axis staged per r0 step (the shared tile's depth).
STATIC_DEPTH = 32
#: Static fill: unroll the whole micro-kernel (r1 x register tile), less when a guarded tile
#: puts a predicate on every statement (ptxas then spills: matmul 257x511x129).
STATIC_UNROLL, STATIC_GUARDED_UNROLL = 512, 64


def static_tiles(stage: StageInfo, gpu: GpuParams) -> dict[int, list[int]]:
    """Tiles for a register tile per thread, a block of threads and a shared tile depth: the
    best of ``STATIC_SHAPES`` by ``_static_rank``."""
    reduction = _static_reduction(stage)
    options = []
    for threads, rows, columns in STATIC_SHAPES:
        inner = {
            **_static_spatial(stage, min(threads, gpu.max_threads_per_block), rows, columns),
            **{a: list(f) for a, f in reduction.items()},
        }
        _fit_shared(stage, inner, gpu)
        options.append(inner)
    ranks = [_static_rank(stage, inner, gpu, order) for order, inner in enumerate(options)]
    return options[ranks.index(max(ranks))]


def _static_rank(
    stage: StageInfo, inner: dict[int, list[int]], gpu: GpuParams, order: int
) -> tuple[bool, bool, float, float, int, int]:
    """Best first: enough blocks for every SM; at least two warps per block (an SM holds a
    limited number of blocks: one-warp blocks cap its warps); then the useful fraction of
    the hardware: warp lanes in use (56 threads leave 8 of 64 lanes idle) times a register
    tile's worth (the square root of its share of a 4x4 tile: FMAs per shared load grow with
    its perimeter); two blocks per SM; the order of ``STATIC_SHAPES``. A problem too small
    to fill the GPU ranks blocks before the useful fraction."""
    blocks = _block_count(stage, inner)
    fill = 2 if blocks >= 2 * gpu.sm_count else 1 if blocks >= gpu.sm_count else 0
    spatial = stage.spatial_axes
    registers = math.prod(inner[a][lv - 1] for a in spatial for lv in (VTHREAD, INNER, INNERMOST))
    threads = math.prod(inner[a][THREAD - 1] for a in spatial)
    lanes = threads / (-(-threads // gpu.warp_size) * gpu.warp_size)
    full = STATIC_SHAPES[0][1] * STATIC_SHAPES[0][2]
    useful = round(lanes * math.sqrt(min(registers, full) / full), 2)
    warps = -(-threads // gpu.warp_size)
    # A problem too small to fill the GPU is latency-bound: as many blocks as it allows.
    if not fill:
        return (False, warps >= MIN_STATIC_WARPS, blocks, useful, 0, -order)
    return (True, warps >= MIN_STATIC_WARPS, useful, fill, 0, -order)


def _static_spatial(
    stage: StageInfo, threads: int, rows: int, columns: int
) -> dict[int, list[int]]:
    """The register tile goes on the vthread level: a thread's outputs then lie one thread
    tile apart, so a warp reads consecutive shared-memory words (no bank conflicts) and
    writes consecutive global ones (coalesced). Along a guarded axis it goes innermost
    instead (see ``effective_tiles``)."""
    inner = {a: [1] * (SPATIAL_LEVELS - 1) for a in stage.spatial_axes}
    column = innermost_axis(stage)
    row = reuse_axis(stage, column)
    if column is not None:
        inner[column][VTHREAD - 1] = _register_factor(stage.extents[column], columns)
        # Registers the column could not take go to the row (a 14-wide output: 2 x 8).
        rows = min(2 * rows, rows * columns // inner[column][VTHREAD - 1])
    if row is not None:
        inner[row][VTHREAD - 1] = _register_factor(stage.extents[row], rows)
    _grow_threads(stage, inner, threads)
    for axis, factors in inner.items():
        if stage.extents[axis] % math.prod(factors):
            factors[INNERMOST - 1], factors[VTHREAD - 1] = factors[VTHREAD - 1], 1
    return inner


def _register_factor(extent: int, want: int) -> int:
    """``want`` registers along an axis: its largest divisor up to ``want``, or the largest
    power of two up to ``want`` as a guarded tile when the extent has no divisor near it
    (257, 511; powers of two are tile candidates, divisors or not)."""
    best = divisors(extent, want)[-1]
    guarded = 1 << (min(want, extent).bit_length() - 1)
    return guarded if 2 * best < guarded else best


def _grow_threads(stage: StageInfo, inner: dict[int, list[int]], threads: int) -> None:
    """Add threads one prime factor at a time to the axis whose block tile is smallest (the
    innermost on ties), so the block tile stays square-ish (most reuse per shared load);
    axes along which no operand is reused (a batch) only once the others are spent. A
    non-dividing (guarded) factor only goes to an axis with a register tile, whose guard
    then stays within the thread's own tile."""
    extents = stage.extents
    allowed = {a: set(tile_candidates(extents[a])) for a in inner}
    reused = _reused_axes(stage)
    while True:
        used = math.prod(inner[a][THREAD - 1] for a in inner)
        best: tuple[tuple[bool, int], int, int] | None = None
        for axis in reversed(stage.spatial_axes):
            rest = -(-extents[axis] // math.prod(inner[axis]))
            if rest <= 1:
                continue
            current = inner[axis][THREAD - 1]
            factor = _smallest_prime(rest)
            if factor > 7 or current * factor not in allowed[axis]:
                if inner[axis][VTHREAD - 1] == 1:
                    continue
                factor = 2  # a guarded power of two (always a candidate up to the extent)
                if current * factor not in allowed[axis]:
                    continue
            if used * factor > threads or math.prod(inner[axis]) * factor > extents[axis]:
                continue
            key = (axis not in reused, math.prod(inner[axis]))
            if best is None or key < best[0]:
                best = (key, axis, factor)
        if best is None:
            return
        inner[best[1]][THREAD - 1] *= best[2]


def _reused_axes(stage: StageInfo) -> set[int]:
    """Spatial axes along which some operand is reused (it does not depend on them)."""
    found: set[int] = set()
    for read in stage.reads:
        used = {v for dim in read.index_vars for v in dim}
        found |= set(stage.spatial_axes) - used
    return found


def _smallest_prime(n: int) -> int:
    for d in (2, 3, 5, 7):
        if n % d == 0:
            return d
    return n if n < 121 else 11  # > 7 either way: the caller only compares with 7


def _static_reduction(stage: StageInfo) -> dict[int, list[int]]:
    """r1 per reduction axis, innermost first, so a shared tile is ~STATIC_DEPTH deep: kernel
    windows stay whole, long axes get a divisor (or a guarded power of two when an awkward
    extent has no divisor near the depth, K = 129)."""
    inner: dict[int, list[int]] = {}
    budget = STATIC_DEPTH
    for axis in reversed([a for a in range(len(stage.iter_kinds)) if not is_spatial(stage, a)]):
        extent = stage.extents[axis]
        if extent <= budget:
            depth = extent
        else:
            depth = divisors(extent, budget)[-1]
            if 4 * depth < budget:
                # Powers of two are tile candidates up to the extent, divisors or not.
                top = 1 << (budget.bit_length() - 1)
                depth = min((top, top // 2), key=lambda p: (-(-extent // p) * p - extent, -p))
        inner[axis] = [depth, 1]
        budget = max(1, budget // depth)
    return inner


def staged_extent(stage: StageInfo, inner: dict[int, list[int]], axis: int) -> int:
    """What one shared tile spans along ``axis``: every level inside the r0 loop."""
    return math.prod(inner[axis][level - 1] for level in staged_levels(stage, axis))


def _estimated_footprint(stage: StageInfo, inner: dict[int, list[int]], read: int) -> int:
    """Elements of a read's shared tile. A window (h + kh, 2h + kh) is counted as if strided
    by 2: its coefficients are not known here (apply measures the real tile and stages only
    what fits)."""
    total = 1
    for dim in stage.reads[read].index_vars:
        if len(dim) == 1:
            total *= staged_extent(stage, inner, dim[0])
        elif dim:
            total *= WINDOW_STRIDE * (sum(staged_extent(stage, inner, a) for a in dim) - 1)
    return total


def _fit_shared(stage: StageInfo, inner: dict[int, list[int]], gpu: GpuParams) -> None:
    """Shrink the tiles until every exact operand limit holds and the estimated tiles take at
    most half the block's shared memory (room for strided windows and two blocks per SM)."""
    exact = exact_footprints(stage)
    budget = operand_budget(stage, gpu)
    reads = stageable_reads(stage)

    def fits() -> bool:
        for terms in exact.values():
            if math.prod(inner[_axis_of(stage, name)][lv - 1] for name, lv in terms) > budget:
                return False
        total = sum(_estimated_footprint(stage, inner, r) for r in reads) * ASSUMED_BYTES
        return total <= gpu.max_shared_memory_per_block // 2

    # Shallower shared tiles first (cheap), then smaller thread tiles; a kernel window last
    # (a shallower window barely shrinks its input tile: h + kh - 1).
    windows = {a for read in stage.reads for dim in read.index_vars if len(dim) > 1 for a in dim}
    reduction = [a for a in range(len(stage.iter_kinds)) if not is_spatial(stage, a)]
    while not fits():
        plain = [a for a in reduction if a not in windows and inner[a][0] > 1]
        grown = [a for a in stage.spatial_axes if inner[a][THREAD - 1] > 1]
        window = [a for a in reduction if a in windows and inner[a][0] > 1]
        if plain:
            axis, level = plain[0], 1
        elif grown:
            axis = max(grown, key=lambda a: staged_extent(stage, inner, a))
            level = THREAD
        elif window:
            axis, level = window[0], 1
        else:
            return
        candidates = tile_candidates(stage.extents[axis])
        current = inner[axis][level - 1]
        inner[axis][level - 1] = max(c for c in candidates if c <= max(1, current // 2))


def _axis_of(stage: StageInfo, knob_name: str) -> int:
    return int(knob_name[len("tile_") + 1 :])


def _block_count(stage: StageInfo, inner: dict[int, list[int]]) -> int:
    return math.prod(-(-stage.extents[a] // math.prod(inner[a])) for a in stage.spatial_axes)
