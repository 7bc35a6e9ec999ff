"""The complex reduction on tensor cores (``tensor_core = wmma``): TVM's WMMA intrinsics
applied by tensorize, after MetaSchedule's ``MultiLevelTilingTensorCore`` and dlight's
tensor-core matmul.

The block is reindexed to a canonical GEMM ``C[b, i, j] += A[b, i, k] * B[b, k, j]`` (B as
``[b, j, k]`` when k is its contiguous axis, so its shared copy stays coalesced) and padded
to whole block tiles. Each GEMM axis is tiled in 16x16x16 fragments: i and j into
(blockIdx, warp, fragments per warp), k into (outer, fragments per shared tile). Both
operands are staged in shared memory at the outer k loop by all threads of the block
(vectorized where the global rows are aligned), loaded into ``wmma.matrix_a``/``_b``
fragments at the inner k loop; each warp accumulates its fragments in
``wmma.accumulator``, stores them to a shared tile and writes that to global memory with
its 32 lanes (through the fused epilogue when there is one). Warps are bound to threadIdx.y.

The order of the primitives matters: the reduction is decomposed before the caches are
added around the blockized fragments, because TVM 0.27's schedule verification rejects the
block flags ``decompose_reduction`` leaves on a blockized reduction.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir
from tvm.s_tir.dlight.gpu.matmul import (
    IterKind,
    detect_iter_traits,
    make_iter_fusion_index_map,
)

from autosched.analysis import StageInfo
from autosched.templates.base import ApplyState, TemplateContext
from autosched.templates.cuda.common import BLOCK_X, THREAD_X, THREAD_Y
from autosched.templates.cuda.tensor_core_space import (
    FRAGMENT,
    FRAGMENT_LEVEL,
    OPERAND_ROW_PAD,
    OUTPUT_ROW_PAD,
    WARP_LEVEL,
)

BATCH, ROW, COLUMN, DEPTH = IterKind.kIter_S, IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K
#: halves per vectorized operand load (16 bytes) and elements per vectorized output store
OPERAND_VECTOR, OUTPUT_VECTOR = 8, 4
SHARED = "shared"
#: The accumulator tile is staged in dynamic shared memory: TVM's storage rewrite would
#: otherwise reuse the fp16 operand tiles' static memory for it (their lifetimes end before
#: it starts) and its access pointers then refuse the fp32 alias.
OUTPUT_STAGING = "shared.dyn"


def apply_tensor_core(
    sch: s_tir.Schedule,
    stage: StageInfo,
    values: dict[str, Any],
    ctx: TemplateContext,
    state: ApplyState,
) -> None:
    gpu = ctx.hw.gpu
    assert gpu is not None, "a CUDA device"
    block = sch.get_sblock(stage.name)
    traits = detect_iter_traits(sch.get(block))
    if traits is None:
        raise ValueError(f"{stage.name} is not a GEMM after inlining: no tensor cores")
    stmt, block_traits = sch.get(block), traits[-1]
    b_inner = _innermost(stmt, 1, block_traits)
    trans_b = b_inner is not None and b_inner.kind == DEPTH
    # B's shared layout follows its global rows (trans_b), so only A can be strided.
    b_row = _row(b_inner, b_inner.kind) if b_inner is not None else None
    rows = (_row(_innermost(stmt, 0, block_traits), DEPTH), b_row)
    c_row = _row(_innermost(stmt, None, block_traits), COLUMN)

    _canonical_gemm(sch, block, traits, trans_b)
    wi, fi = values["tc_i"][WARP_LEVEL], values["tc_i"][FRAGMENT_LEVEL]
    wj, fj = values["tc_j"][WARP_LEVEL], values["tc_j"][FRAGMENT_LEVEL]
    fk = values["tc_k"][1]
    sch.pad_einsum(block, [1, FRAGMENT * wi * fi, FRAGMENT * wj * fj, FRAGMENT * fk])
    operands = [region.source.name for region in sch.get(block).reads]  # A, B (padded)

    batch, i, j, k = sch.get_loops(block)
    i0, i1, i2, i3 = sch.split(i, factors=[None, wi, fi, FRAGMENT])
    j0, j1, j2, j3 = sch.split(j, factors=[None, wj, fj, FRAGMENT])
    k0, k1, k2 = sch.split(k, factors=[None, fk, FRAGMENT])
    sch.reorder(batch, i0, j0, i1, j1, k0, k1, i2, j2, i3, j3, k2)
    block_loop = sch.fuse(batch, i0, j0)
    sch.bind(block_loop, BLOCK_X)
    warp_loop = sch.fuse(i1, j1)
    sch.bind(warp_loop, THREAD_Y)
    warps = wi * wj

    to_global = sch.cache_write(block, 0, OUTPUT_STAGING)
    store = sch.cache_write(block, 0, "wmma.accumulator")
    # The output reindex (and the crop of the padding) become part of the write to global.
    _inline_consumers(sch, to_global, ctx)
    if values.get("fuse_epilogue"):
        _try_fuse_epilogue(sch, to_global, stage, ctx, state)
    sch.reverse_compute_at(store, warp_loop)
    sch.reverse_compute_at(to_global, warp_loop)
    _split_fragments(sch, store)
    sch.storage_align(store, 0, axis=-2, factor=FRAGMENT, offset=OUTPUT_ROW_PAD)
    init = sch.decompose_reduction(block, k0)

    for operand, row in zip(operands, rows, strict=True):
        copy = sch.cache_read(block, _read_index(sch, block, operand), SHARED)
        sch.compute_at(copy, k0)
        # A transposed in global memory (k not contiguous) is copied element by element.
        width = OPERAND_VECTOR if row is not None and row % OPERAND_VECTOR == 0 else 1
        _bind_copy(sch, copy, warps, width)
        sch.storage_align(copy, 0, axis=-2, factor=FRAGMENT, offset=OPERAND_ROW_PAD)
        _inline_producers(sch, copy, ctx)

    out_dtype = str(sch.get(store).writes[0].source.dtype)
    # Imported here, not with the module: importing TVM's CUDA tensor intrinsics registers
    # hundreds of them (~10-30 s), which every user of the templates would otherwise pay.
    from tvm.s_tir.tensor_intrin.cuda import get_wmma_intrin_group

    intrinsics = get_wmma_intrin_group(SHARED, OUTPUT_STAGING, "float16", out_dtype, trans_b)
    for operand, scope, name in zip(
        operands, ("wmma.matrix_a", "wmma.matrix_b"), ("load_a", "load_b"), strict=True
    ):
        fragment = sch.cache_read(block, _read_index(sch, block, operand + "_shared"), scope)
        sch.compute_at(fragment, k1)
        sch.tensorize(_split_fragments(sch, fragment), intrinsics[name])
    sch.tensorize(sch.get_loops(init)[-2], intrinsics["init"])
    sch.tensorize(sch.get_loops(store)[-2], intrinsics["store"])
    sch.tensorize(i3, intrinsics["compute"])

    width = OUTPUT_VECTOR if c_row is not None and c_row % OUTPUT_VECTOR == 0 else 1
    fused = sch.fuse(*sch.get_loops(to_global)[-2:])
    _, lanes, vector = sch.split(fused, factors=[None, gpu.warp_size, width])
    sch.bind(lanes, THREAD_X)
    if width > 1:
        sch.vectorize(vector)
    state.placed.add(stage.name)


def _innermost(stmt: Any, read: int | None, traits: list[Any]) -> Any | None:
    """The trait (GEMM role, extent) of the iterator indexing an access' innermost
    (contiguous) dimension: of read ``read``, or of the write when None. None for an index
    that is not one iterator."""
    region = stmt.writes[0] if read is None else stmt.reads[read]
    index = region.region[-1].min
    for iter_var, trait in zip(stmt.iter_vars, traits, strict=True):
        if index.same_as(iter_var.var):
            return trait
    return None


def _row(trait: Any, kind: IterKind) -> int | None:
    """The length of an access' contiguous rows if its innermost index has role ``kind``
    (a vectorized copy is aligned when the vector divides it), else None."""
    if trait is None or trait.kind != kind or not hasattr(trait.extent, "value"):
        return None
    return int(trait.extent)


def _canonical_gemm(sch: s_tir.Schedule, block: Any, traits: Any, trans_b: bool) -> None:
    """Reindex the operands and the output to the canonical GEMM layouts and the block to
    [b, i, j, k]."""
    a_traits, b_traits, c_traits, block_traits = traits
    reindexed = [sch.reindex(block, ("read", 0)), sch.reindex(block, ("read", 1))]
    output = sch.reindex(block, ("write", 0))
    layouts = ([BATCH, ROW, DEPTH], [BATCH, COLUMN, DEPTH] if trans_b else [BATCH, DEPTH, COLUMN])
    for producer, access, layout in zip(reindexed, (a_traits, b_traits), layouts, strict=True):
        sch.transform_layout(producer, ("write", 0), make_iter_fusion_index_map(access, layout))
    output_map = make_iter_fusion_index_map(c_traits, [BATCH, ROW, COLUMN])
    sch.transform_layout(output, ("read", 0), output_map)
    block_map = make_iter_fusion_index_map(block_traits, [BATCH, ROW, COLUMN, DEPTH])
    sch.transform_block_layout(block, block_map)


def _read_index(sch: s_tir.Schedule, block: Any, name: str) -> int:
    return next(i for i, r in enumerate(sch.get(block).reads) if r.source.name == name)


def _split_fragments(sch: s_tir.Schedule, block: Any) -> Any:
    """Split a copy's two innermost loops into whole fragments, fragment loops outside;
    returns the first loop of the innermost fragment (where the intrinsic goes)."""
    rows, columns = sch.get_loops(block)[-2:]
    row_outer, row_inner = sch.split(rows, factors=[None, FRAGMENT])
    column_outer, column_inner = sch.split(columns, factors=[None, FRAGMENT])
    sch.reorder(row_outer, column_outer, row_inner, column_inner)
    return row_inner


def _bind_copy(sch: s_tir.Schedule, copy: Any, warps: int, width: int) -> None:
    """All the block's threads copy the tile together: consecutive lanes, consecutive
    vectors."""
    fused = sch.fuse(*sch.get_loops(copy)[-2:])
    _, warp, lane, vector = sch.split(fused, factors=[None, warps, 32, width])
    sch.bind(warp, THREAD_Y)
    sch.bind(lane, THREAD_X)
    if width > 1:
        sch.vectorize(vector)


def _inline_producers(sch: s_tir.Schedule, block: Any, ctx: TemplateContext) -> None:
    """Inline the reindex and padding blocks this template made into ``block`` (the stage's
    own producers are placed by their templates)."""
    pending = list(sch.get_producers(block))
    while pending:
        producer = pending.pop()
        if sch.get(producer).name_hint in ctx.stages:
            continue
        pending.extend(sch.get_producers(producer))
        sch.compute_inline(producer)


def _inline_consumers(sch: s_tir.Schedule, block: Any, ctx: TemplateContext) -> None:
    """Reverse-inline the output's reindex and crop blocks into ``block``."""
    while True:
        made = [c for c in sch.get_consumers(block) if sch.get(c).name_hint not in ctx.stages]
        if not made:
            return
        sch.reverse_compute_inline(made[0])


def _try_fuse_epilogue(
    sch: s_tir.Schedule, block: Any, stage: StageInfo, ctx: TemplateContext, state: ApplyState
) -> None:
    """Reverse-inline the stage's one injective consumer (bias, ReLU) into the write to
    global memory; tried on a copy, since TVM refuses consumers that are not element-wise."""
    consumers = [c for c in stage.consumers if c in ctx.stages and c not in state.placed]
    if len(consumers) != 1 or len(stage.consumers) != 1:
        return
    info = ctx.stages[consumers[0]]
    if "R" in info.iter_kinds or not (info.is_output or not info.consumers):
        return
    trial = sch.copy()
    try:
        trial.reverse_compute_inline(trial.get_sblock(info.name))
    except Exception:  # TVM's ScheduleError: not an element-wise consumer of the tile
        return
    sch.reverse_compute_inline(sch.get_sblock(info.name))
    state.placed.add(info.name)
