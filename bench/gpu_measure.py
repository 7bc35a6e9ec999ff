"""How ``bench/gpu.py`` runs, checks and times a kernel on a CUDA device.

``DeviceCase`` is the GPU twin of ``bench.harness.Case``: seeded inputs (the runner's own
``make_inputs``), the reference output, and ways to run a TVM build or a PyTorch op on
``cuda:0``. ``EventTimer`` times any callable the same way: CUDA events on the default
stream (where both TVM and PyTorch launch), each sample preceded by writing a buffer of at
least twice the L2 so that no contender reads its inputs from a warm L2. The memset also
keeps the GPU busy while the host enqueues the start event and the launch, so the events
bracket the kernel and not the host's launch latency (the method of
``triton.testing.do_bench``).

torch is imported only here and only when a case is timed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import te

from autosched.hardware import HardwareParams, reference_target
from autosched.tune.runner_handlers import make_inputs
from autosched.wire import Workload
from bench import harness
from bench.gpu_kernels import GpuKernel, compare, reduction_length

MiB = 1024**2
#: The flush buffer is at least this big: a memset of it (~50 µs on an H100) also covers
#: the host's launch latency of the call that follows.
MIN_FLUSH_BYTES = 256 * MiB
#: At most this many samples per contender and round (a 10 µs kernel would otherwise take
#: thousands to fill ``min_repeat_ms``).
MAX_SAMPLES = 200


@dataclass
class DeviceCase:
    """A kernel ready to run on ``cuda:0``: its PrimFunc (the one both tuners see), inputs,
    output specs and reference output."""

    kernel: GpuKernel
    tensors: list[te.Tensor]
    func: tvm.tirx.PrimFunc
    inputs: list[np.ndarray]
    out_specs: list[tuple[tuple[int, ...], str]]
    reference: np.ndarray
    reduction: int  # longest reduction, for the tolerance

    @classmethod
    def make(cls, kernel: GpuKernel, hw: HardwareParams, seed: int) -> DeviceCase:
        tensors = kernel.build()
        # The function both tuners see: the one the wire format rebuilds (same key, names).
        wl = Workload.from_tensors(tensors, kernel.name)
        params = [
            ([int(d) for d in t.shape], str(t.dtype), not isinstance(t.op, te.PlaceholderOp))
            for t in wl.tensors
        ]
        n_inputs = sum(not out for _, _, out in params)
        inputs = make_inputs(params, seed)[:n_inputs]
        out_specs = harness.output_specs(wl.prim_func, n_inputs)
        if kernel.numpy_reference is not None:
            reference = kernel.numpy_reference(*inputs)
        else:
            naive = harness.build(wl.prim_func, reference_target(hw))
            (reference,) = harness.run_tvm(naive, inputs, out_specs)
        return cls(
            kernel,
            tensors,
            wl.prim_func,
            inputs,
            out_specs,
            reference,
            reduction_length(wl.prim_func),
        )

    # -- TVM builds -----------------------------------------------------------------------
    def tvm_call(self, executable: Any) -> tuple[Callable[[], Any], list[Any]]:
        """A call of the build on fresh device copies of the inputs, and its arguments."""
        dev = tvm.cuda(0)
        args = [tvm.runtime.tensor(np.ascontiguousarray(x), dev) for x in self.inputs]
        args += [tvm.runtime.empty(shape, dtype, dev) for shape, dtype in self.out_specs]
        main = executable.mod["main"]
        return lambda: main(*args), args

    def check(self, executable: Any) -> float:
        """Run the build once; raise AssertionError unless it matches the reference (as
        ``harness.Case.check``, so ``tune_both.build_and_check`` takes it); return its
        largest absolute error."""
        call, args = self.tvm_call(executable)
        call()
        return self.check_output(args[-1].numpy())

    def check_output(self, got: np.ndarray) -> float:
        problem = compare(got, self.reference, self.reduction)
        if problem is not None:
            raise AssertionError(f"{self.kernel.name}: {problem}")
        return float(np.abs(got.astype(np.float64) - self.reference).max())

    # -- PyTorch ---------------------------------------------------------------------------
    def torch_call(self) -> tuple[Callable[[], Any], Any]:
        """The PyTorch baseline on device copies of the inputs, and its output (one call:
        with ``cudnn.benchmark`` on, that call also picks cuDNN's algorithm)."""
        import torch

        fn = self.kernel.torch()
        args = [torch.from_numpy(np.ascontiguousarray(x)).cuda() for x in self.inputs]
        with torch.inference_mode():
            out = fn(*args)
        return lambda: fn(*args), out


def setup_torch() -> dict[str, str]:
    """Fix PyTorch's CUDA numerics to what the te DAGs compute, and say so.

    TF32 is off: a TF32 conv or matmul is not an fp32 one (it would fail the fp32 check and
    would not be the same work). fp16 matmuls reduce in fp32, as the DAGs do. cuDNN picks
    its fastest algorithm per shape (``benchmark``), as a deployment would.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cudnn.benchmark = True
    return {
        "gpu": torch.cuda.get_device_name(0),
        "torch CUDA": f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        "torch numerics": "TF32 off, fp16 matmul reductions in fp32, cudnn.benchmark on",
    }


class EventTimer:
    """Seconds per call of any callable that launches work on the default CUDA stream."""

    def __init__(self, l2_bytes: int) -> None:
        import torch

        self.torch = torch
        self.flush_bytes = max(2 * l2_bytes, MIN_FLUSH_BYTES)
        self._flush = torch.empty(self.flush_bytes // 4, dtype=torch.int32, device="cuda")

    def describe(self) -> str:
        return (
            f"CUDA events, {self.flush_bytes // MiB} MiB written before every sample "
            "(L2 flush), interleaved rounds, median"
        )

    def _timed(self, fn: Callable[[], Any], n: int) -> list[float]:
        torch = self.torch
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(n)
        ]
        for start, end in events:
            self._flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1e3 for start, end in events]

    def samples(
        self, fn: Callable[[], Any], *, repeat: int, min_repeat_ms: int, warmup: int = 2
    ) -> list[float]:
        """At least ``repeat`` samples and ``min_repeat_ms`` of kernel time (at most
        ``MAX_SAMPLES``), each one call after a flush."""
        for _ in range(warmup):
            fn()
        (once,) = self._timed(fn, 1)
        n = max(repeat, min(MAX_SAMPLES, math.ceil(min_repeat_ms / 1e3 / max(once, 1e-7))))
        return self._timed(fn, n)

    def torch_samples(
        self, fn: Callable[[], Any], *, repeat: int, min_repeat_ms: int
    ) -> list[float]:
        with self.torch.inference_mode():
            return self.samples(fn, repeat=repeat, min_repeat_ms=min_repeat_ms)
