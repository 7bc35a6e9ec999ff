"""Helpers the CUDA meta-templates share: thread-count domains, binding a loop nest to
``blockIdx``/``threadIdx``, cooperative loads into shared memory, and a check that a partly
scheduled module's kernels fit the GPU (used on a trial copy to decide a fallback up front).

Every function here is small and keeps its signature: the complex-reduction template imports
them too.
"""

from __future__ import annotations

import math
from typing import Any

import tvm
from tvm import s_tir, tirx

from autosched.hardware import GpuParams, HardwareParams, cpu_target

BLOCK_X = "blockIdx.x"
THREAD_X, THREAD_Y, THREAD_Z = "threadIdx.x", "threadIdx.y", "threadIdx.z"
#: thread tags, outermost first: the order a cooperative loop nest is split in
THREAD_TAGS = (THREAD_Z, THREAD_Y, THREAD_X)
#: resident threads per SM on every card since sm_70 (a "wave" of blocks fills them all)
THREADS_PER_SM = 2048
#: static and dynamic shared memory: both count against a block's limit
SHARED_SCOPES = ("shared", "shared.dyn")


def powers_of_two(low: int, high: int) -> list[int]:
    """Powers of two in [low, high], ascending."""
    found, p = [], 1
    while p <= high:
        if p >= low:
            found.append(p)
        p *= 2
    return found


def next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def thread_choices(gpu: GpuParams, work: int) -> tuple[int, ...]:
    """Threads per block for a loop of ``work`` iterations split with a guard: powers of two
    that are whole warps, up to the block limit and to the work rounded up (a block larger
    than the work only adds idle threads). Never empty."""
    cap = min(gpu.max_threads_per_block, max(gpu.warp_size, next_power_of_two(work)))
    return tuple(powers_of_two(gpu.warp_size, cap)) or (gpu.warp_size,)


def thread_tile_candidates(gpu: GpuParams, extent: int) -> tuple[int, ...]:
    """Inner factors of a ``TileKnob`` whose inner level is bound to threads: whole warps in
    powers of two up to the block limit and the extent; an extent shorter than a warp gets
    powers of two from 2 up to it and itself (one partial warp). Every candidate is at most
    the extent; 1 only for an extent of 1 (one thread reduces nothing across threads)."""
    if extent < gpu.warp_size:
        return tuple(sorted({*powers_of_two(2, extent), extent}))
    return tuple(powers_of_two(gpu.warp_size, min(extent, gpu.max_threads_per_block)))


def bound_loop(
    sch: s_tir.Schedule, loops: list[Any], threads: int, vector: int = 1, per_thread: int = 1
) -> tuple[Any, Any]:
    """Fuse ``loops`` and split them into [blocks, per_thread, threads, vector]: bind blocks to
    ``blockIdx.x`` and threads to ``threadIdx.x``, vectorize the innermost (``vector`` must
    divide the fused extent: a guarded vector loop would predicate every lane). The serial
    ``per_thread`` loop lies outside the thread loop, grid-stride style, so consecutive
    threads touch consecutive vectors on every iteration (coalesced). Returns
    (block loop, thread loop)."""
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if vector > 1:
        fused, lanes = sch.split(fused, factors=[None, vector])
        sch.vectorize(lanes)
    if per_thread > 1:
        block, _, thread = sch.split(fused, factors=[None, per_thread, threads])
    else:
        block, thread = sch.split(fused, factors=[None, threads])
    sch.bind(block, BLOCK_X)
    sch.bind(thread, THREAD_X)
    return block, thread


def loops_or_unit(sch: s_tir.Schedule, block: Any) -> list[Any]:
    """The block's loops, or one new unit loop for a block without any (a scalar output):
    every kernel needs a loop to bind."""
    loops = list(sch.get_loops(block))
    return loops or [sch.add_unit_loop(block)]


def thread_extents_under(sch: s_tir.Schedule, loop: Any) -> dict[str, int]:
    """The ``threadIdx`` tags bound below ``loop`` and their extents: the block shape of the
    kernel ``loop`` is in (loops of one kernel bound to one tag share its extent)."""
    extents: dict[str, int] = {}
    for block in sch.get_child_blocks(loop):
        for inner in sch.get_loops(block):
            stmt = sch.get(inner)
            binding = stmt.thread_binding
            if binding is not None and binding.thread_tag in THREAD_TAGS:
                extents[binding.thread_tag] = int(stmt.extent)
    return extents


def loops_below(sch: s_tir.Schedule, block: Any, loop: Any) -> list[Any]:
    """The block's loops nested inside ``loop`` (all of them if ``loop`` is not above it)."""
    loops = list(sch.get_loops(block))
    target = sch.get(loop)
    for i, candidate in enumerate(loops):
        if sch.get(candidate).same_as(target):
            return loops[i + 1 :]
    return loops


def bind_cooperative(
    sch: s_tir.Schedule, block: Any, at_loop: Any, extents: dict[str, int]
) -> None:
    """Share a block computed at ``at_loop`` among the threads of that kernel: fuse its loops
    below ``at_loop`` and bind them to the kernel's own thread tags and extents (``extents``,
    from ``thread_extents_under``), the x threads innermost so consecutive threads load
    consecutive elements. What is left over stays a serial loop outside."""
    loops = loops_below(sch, block, at_loop) or [sch.add_unit_loop(block)]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    tags = [t for t in THREAD_TAGS if t in extents]
    if not tags:
        return
    parts = sch.split(fused, factors=[None, *(extents[t] for t in tags)])
    for tag, part in zip(tags, parts[1:], strict=True):
        sch.bind(part, tag)


def annotate_unroll(sch: s_tir.Schedule, loop: Any, max_step: int) -> None:
    """Let TVM unroll the loops inside ``loop`` up to ``max_step`` iterations (MetaSchedule's
    ``unroll_explicit``); 0 leaves them alone."""
    if max_step:
        sch.annotate(loop, "pragma_auto_unroll_max_step", max_step)
        sch.annotate(loop, "pragma_unroll_explicit", 1)


def write_dtype_bytes(sch: s_tir.Schedule, block: Any) -> int:
    """Bytes per element of the block's first output buffer."""
    dtype = tvm.DataType(str(sch.get(block).writes[0].source.dtype))
    return max(1, dtype.bits * dtype.lanes // 8)


def footprint_below(sch: s_tir.Schedule, block: Any, loop: Any) -> int:
    """Elements a block computed at ``loop`` writes per iteration of ``loop``: the product of
    its loops below it (compute_at makes them cover exactly the region its consumer needs)."""
    return math.prod(int(sch.get(x).extent) for x in loops_below(sch, block, loop))


def _lowering() -> tvm.transform.Pass:
    """TVM 0.27's s_tir lowering for a GPU (``tvm.s_tir.pipeline``) up to host/device
    splitting, less the passes that do not change allocations or thread extents, and without
    ``VerifyMemory``: a module checked halfway through applying a config still has unbound
    root blocks, which stay host loops here."""
    return tvm.transform.Sequential(
        [
            s_tir.transform.CanonicalizeLoop(),
            s_tir.transform.LowerCrossThreadReduction(),
            s_tir.transform.LowerInitBlock(),
            s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
            s_tir.transform.ConvertBlocksToOpaque(),
            s_tir.transform.LiftThreadBinding(),
            s_tir.transform.ManifestSharedMemoryLocalStage(),
            s_tir.transform.CompactBufferAllocation(),
            s_tir.transform.LowerAutoCopy(),
            s_tir.transform.UnifyThreadBinding(),
            s_tir.transform.LowerMatchBuffer(),
            s_tir.transform.StmtSimplify(),
            s_tir.transform.LowerOpaqueBlock(),
            tirx.transform.FlattenBuffer(),
            tirx.transform.NarrowDataType(32),
            tirx.transform.VectorizeLoop(True),
            s_tir.transform.InjectVirtualThread(),
            tirx.transform.StorageRewrite(),
            s_tir.transform.ThreadSync("shared"),
            s_tir.transform.LowerThreadAllreduce(),
            s_tir.transform.MergeSharedMemoryAllocations(),
            tirx.transform.AnnotateEntryFunc(),
            tirx.transform.SplitHostDevice(),
        ]
    )


def kernel_limits(gpu: GpuParams) -> dict[str, int]:
    """``verify_gpu_code``'s constraints for this GPU."""
    return {
        "max_shared_memory_per_block": gpu.max_shared_memory_per_block,
        "max_threads_per_block": gpu.max_threads_per_block,
        "max_thread_x": gpu.max_threads_per_block,
        "max_thread_y": gpu.max_threads_per_block,
        "max_thread_z": min(64, gpu.max_threads_per_block),
    }


def _device_kernels(mod: tvm.IRModule, hw: HardwareParams) -> list[tirx.PrimFunc] | None:
    """The kernels of ``mod`` once lowered; None if TVM refuses to lower it."""
    try:
        lowered = _lowering()(tirx.transform.BindTarget(cpu_target(hw))(mod))
    except Exception:  # TVM refuses the placement while lowering (a plain TVMError)
        return None
    return [
        func
        for func in lowered.functions.values()
        if isinstance(func, tirx.PrimFunc) and _is_device_kernel(func)
    ]


def _shared_bytes(func: tirx.PrimFunc) -> int:
    allocated = s_tir.analysis.calculate_allocated_bytes(func)["main"]
    return sum(int(allocated.get(scope, 0)) for scope in SHARED_SCOPES)


def kernel_shared_bytes(mod: tvm.IRModule, hw: HardwareParams) -> list[int] | None:
    """Shared memory (static and dynamic) of every kernel of ``mod``; None if TVM refuses
    to lower it."""
    kernels = _device_kernels(mod, hw)
    return None if kernels is None else [_shared_bytes(func) for func in kernels]


def kernels_fit(mod: tvm.IRModule, hw: HardwareParams) -> bool:
    """Whether every kernel of ``mod`` (scheduled so far; unbound blocks are ignored) lowers
    and keeps within the GPU's shared memory and threads per block. A few milliseconds:
    meant for a trial ``sch.copy()`` before committing to a placement TVM may refuse."""
    assert hw.gpu is not None, "a CUDA device"
    kernels = _device_kernels(mod, hw)
    if kernels is None:
        return False
    limits = kernel_limits(hw.gpu)
    return all(
        _shared_bytes(func) <= hw.gpu.max_shared_memory_per_block
        and s_tir.analysis.verify_gpu_code(func, limits)
        for func in kernels
    )


# ``CallingConv::kDeviceKernelLaunch``: what SplitHostDevice marks the kernels it outlines with.
DEVICE_KERNEL_LAUNCH = 2


def _is_device_kernel(func: tirx.PrimFunc) -> bool:
    attrs = func.attrs
    return attrs is not None and int(attrs.get("calling_conv", 0)) == DEVICE_KERNEL_LAUNCH
