"""A GPU device's parameters: from the card's driver, or from one of TVM's target tags for a
card this host does not have. Settings (``AUTOSCHED_GPU_*``) override either source."""

from __future__ import annotations

from dataclasses import replace

from autosched.errors import InvalidHardwareError
from autosched.hardware import GpuParams, HardwareParams, detect_hardware
from autosched.settings import get_settings

#: SM counts of the tags TVM ships (its tags leave them out); others need the override.
TAG_SM_COUNTS = {
    "nvidia/nvidia-h100": 132,
    "nvidia/nvidia-a100": 108,
    "nvidia/nvidia-a10g": 80,
    "nvidia/nvidia-a10": 72,
    "nvidia/nvidia-t4": 40,
    "nvidia/nvidia-v100": 80,
    "nvidia/geforce-rtx-4090": 128,
    "nvidia/geforce-rtx-3090": 82,
}


def gpu_from_tag(tag: str, sm_count: int | None = None) -> GpuParams:
    """A GPU's parameters from one of TVM's target tags (``nvidia/nvidia-h100``): to build
    for a card this host does not have. The SM count comes from ``TAG_SM_COUNTS`` or
    ``sm_count``."""
    import tvm

    try:
        attrs = dict(tvm.target.Target(tag).attrs)
    except Exception as err:  # TVM raises a plain error for an unknown tag
        raise InvalidHardwareError(f"unknown GPU target tag {tag!r}") from err
    count = sm_count or TAG_SM_COUNTS.get(tag)
    if count is None:
        raise InvalidHardwareError(f"no SM count known for {tag!r}: set AUTOSCHED_GPU_SM_COUNT")
    return _gpu_with_overrides(
        GpuParams(
            # sm_90a (Hopper's arch-specific features) names the same card a driver reports
            # as compute 9.0: one key for both ways of describing it.
            arch=str(attrs["arch"]).rstrip("abcdefghijklmnopqrstuvwxyz"),
            sm_count=count,
            max_threads_per_block=int(attrs["max_threads_per_block"]),
            max_shared_memory_per_block=int(attrs["max_shared_memory_per_block"]),
            registers_per_block=int(attrs["registers_per_block"]),
            warp_size=int(attrs["thread_warp_size"]),
            l2_bytes=int(attrs.get("l2_cache_size_bytes", 0)),
        )
    )


def gpu_from_device(index: int) -> GpuParams:
    """The parameters of CUDA device ``index`` as its driver reports them."""
    import tvm

    dev = tvm.cuda(index)
    if not dev.exist:
        raise InvalidHardwareError(f"no CUDA device {index} on this host")
    major, minor = str(dev.compute_version).split(".")
    return _gpu_with_overrides(
        GpuParams(
            arch=f"sm_{major}{minor}",
            sm_count=int(dev.multi_processor_count),
            max_threads_per_block=int(dev.max_threads_per_block),
            max_shared_memory_per_block=int(dev.max_shared_memory_per_block),
            # Every card since sm_50 has 64K registers per block; the driver API TVM wraps
            # does not report it.
            registers_per_block=65536,
            warp_size=int(dev.warp_size),
            l2_bytes=int(dev.l2_cache_size_bytes),
        )
    )


def _gpu_with_overrides(gpu: GpuParams) -> GpuParams:
    settings = get_settings()
    return replace(
        gpu,
        sm_count=settings.gpu_sm_count or gpu.sm_count,
        max_threads_per_block=settings.gpu_max_threads_per_block or gpu.max_threads_per_block,
        max_shared_memory_per_block=(
            settings.gpu_max_shared_memory_per_block or gpu.max_shared_memory_per_block
        ),
    )


def detect_gpu_hardware(device: int | None = None, tag: str | None = None) -> HardwareParams:
    """A CUDA device's parameters: from the card when ``device`` names one on this host,
    else from a TVM target tag (``tag`` or ``AUTOSCHED_GPU_TAG``); the CPU fields describe
    this host, which builds the kernels."""
    host = detect_hardware()
    tag = tag or get_settings().gpu_tag
    if device is not None:
        gpu = gpu_from_device(device)
    elif tag:
        gpu = gpu_from_tag(tag)
    else:
        raise InvalidHardwareError("name a CUDA device (cuda:0) or a GPU target tag")
    return replace(host, kind="cuda", gpu=gpu)
