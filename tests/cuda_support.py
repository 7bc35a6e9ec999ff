"""Checks on generated CUDA for tests on a machine without a GPU: build a schedule for a GPU
description, read launch bounds and static shared memory back from the CUDA source, and
optionally assemble it with nvcc (ptxas rejects what a driver would reject at load time)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import tvm
from tvm import te

from autosched import zoo
from autosched.hardware import HardwareParams, cpu_target

#: Builds a te DAG afresh: its placeholders, then its outputs (``te.create_prim_func``'s argument).
TensorBuilder = Callable[[], list[te.Tensor]]

#: Zoo kernels that test_cuda_complex_reduction.py sweeps with random configs.
COMPLEX_REDUCTION_KERNELS = (
    "matmul_512",
    "matmul_awkward",
    "batch_matmul",
    "conv2d_resnet_c2",
    "conv2d_resnet_1x1",
    "conv2d_resnet_c4_s2",
    "depthwise_conv2d",
)
#: Zoo kernels that test_cuda_templates.py (the other meta-templates) sweeps likewise.
OTHER_TEMPLATE_KERNELS = (
    "softmax",
    "layer_norm",
    "row_sum",
    "max_pool",
    "elementwise_chain",
    "transpose",
)

# A kernel without threadIdx has no __launch_bounds__: one thread per block.
_KERNEL = re.compile(
    r'extern "C" __global__ void (?:__launch_bounds__\((\d+)\) )?(\w+)\([^)]*\) \{'
)
_SHARED = re.compile(r"__shared__\s+(?:alignas\(\d+\)\s+)?([A-Za-z_][\w ]*?)\s+\w+\[(\d+)\];")
_TYPE_BYTES = {
    "float": 4,
    "double": 8,
    "half": 2,
    "__half": 2,
    "nv_bfloat16": 2,
    "__nv_bfloat16": 2,
    "int": 4,
    "uint": 4,
    "unsigned int": 4,
    "int64_t": 8,
    "uint64_t": 8,
    "long long": 8,
    "short": 2,
    "ushort": 2,
    "char": 1,
    "signed char": 1,
    "uchar": 1,
    "bool": 1,
    "float2": 8,
    "float4": 16,
    "int4": 16,
}


def zoo_builders(names: Iterable[str]) -> dict[str, TensorBuilder]:
    """A builder per zoo kernel of ``names``, by name."""
    return {name: partial(zoo.tensors, name) for name in names}


def compile_cuda(sch: Any, hw: HardwareParams) -> tuple[Any, str]:
    """Build ``sch`` (a schedule or an IRModule) for ``hw``'s GPU: (executable, CUDA source)."""
    mod = sch.mod if hasattr(sch, "mod") else sch
    executable = tvm.compile(mod, target=cpu_target(hw))
    cuda = [m for m in executable.mod.imports if m.kind == "cuda"]
    assert cuda, "no CUDA module was built"
    return executable, cuda[0].inspect_source()


def kernels(src: str) -> list[tuple[int, str, str]]:
    """(launch bound, name, body) per kernel definition in ``src``."""
    found = list(_KERNEL.finditer(src))
    ends = [m.start() for m in found[1:]] + [len(src)]
    return [
        (int(m.group(1) or 1), m.group(2), src[m.end() : end])
        for m, end in zip(found, ends, strict=True)
    ]


def launch_bounds(src: str) -> list[int]:
    """``__launch_bounds__`` of every kernel definition (threads per block; 1 where TVM
    emits none)."""
    return [bound for bound, _, _ in kernels(src)]


def shared_bytes(src: str) -> int:
    """The most static shared memory any one kernel declares, in bytes."""
    most = 0
    for _, name, body in kernels(src):
        total = 0
        for type_name, count in _SHARED.findall(body):
            type_name = " ".join(type_name.split())
            if type_name not in _TYPE_BYTES:
                raise AssertionError(f"{name}: unknown shared element type {type_name!r}")
            total += _TYPE_BYTES[type_name] * int(count)
        most = max(most, total)
    return most


def assert_valid_cuda(src: str, hw: HardwareParams) -> None:
    """Every kernel within the GPU's threads per block and static shared memory, and bound:
    a kernel of more than one thread indexes by threadIdx (one of a single block and thread,
    a full reduction to a scalar, may use neither)."""
    assert hw.gpu is not None
    found = kernels(src)
    assert found, "no kernel in the CUDA source"
    for bound, name, body in found:
        assert 1 <= bound <= hw.gpu.max_threads_per_block, f"{name}: {bound} threads per block"
        assert bound == 1 or "threadIdx" in body, f"{name}: {bound} threads but no threadIdx"
    shared = shared_bytes(src)
    limit = hw.gpu.max_shared_memory_per_block
    assert shared <= limit, f"{shared} bytes of shared memory, over {limit}"


def has_cross_thread_reduction(src: str) -> bool:
    """Whether the source reduces across threads: a warp shuffle or a shared-memory
    reduction buffer (TVM's all-reduce names it ``red_buf``)."""
    return "__shfl" in src or bool(re.search(r"__shared__[^;]*red_buf", src))


def nvcc_available() -> bool:
    return shutil.which("nvcc") is not None


def ptxas_report(src: str, arch: str, timeout: float = 120) -> str:
    """Assemble ``src`` for ``arch`` with nvcc (cubin) and return ptxas' resource report
    (registers, spills, shared memory per kernel); raises AssertionError if it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernels.cu"
        source.write_text(src)
        cubin = Path(tmp) / "kernels.cubin"
        done = subprocess.run(
            ["nvcc", f"-arch={arch}", "--cubin", "-Xptxas", "-v", "-o", str(cubin), str(source)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    assert done.returncode == 0, f"nvcc failed:\n{done.stderr[-3000:]}"
    return done.stderr
