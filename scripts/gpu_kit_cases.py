"""The GPU-host kit's cases: kernels built here for the GPU's arch (a cubin each), with their
inputs' digest and their reference outputs (the unscheduled kernel built for this CPU).

Hand-scheduled kernels check the build and runtime paths without the templates; the zoo's
static configs check the CUDA meta-templates on real hardware.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_kit_layout import SEED, MiB, Spec, inputs_digest


@dataclass
class Case:
    """A kernel built for the kit: its library and what to check it against."""

    name: str
    origin: str  # "hand schedule" or "static config"
    library: Path
    specs: list[Spec]
    inputs_sha256: str  # the GPU host makes the same inputs (make_inputs) and checks them
    references: list[Any]  # numpy arrays
    reduction: int  # longest reduction: the comparison's tolerance grows with it
    flops: float


def hand_kernels() -> dict[str, Callable[[], tuple[list[Any], Callable[[Any], None] | None]]]:
    """Compute declarations with a CUDA schedule written by hand (no templates involved)."""
    from tvm import te

    def bind_1d(threads: int) -> Callable[[Any], None]:
        """One thread per output element; a reduction stays a loop in each thread."""

        def schedule(sch: Any) -> None:
            block = sch.get_sblock("B")
            outer, inner = sch.split(sch.get_loops(block)[0], [None, threads])
            sch.bind(outer, "blockIdx.x")
            sch.bind(inner, "threadIdx.x")

        return schedule

    def scale() -> tuple[list[Any], Callable[[Any], None]]:
        a = te.placeholder((1 << 18,), "float32", name="A")
        b = te.compute(a.shape, lambda i: a[i] * 2.0 + 1.0, name="B")
        return [a, b], bind_1d(256)

    def row_sum() -> tuple[list[Any], Callable[[Any], None]]:
        a = te.placeholder((8192, 512), "float32", name="A")
        k = te.reduce_axis((0, 512), name="k")
        b = te.compute((8192,), lambda i: te.sum(a[i, k], axis=k), name="B")
        return [a, b], bind_1d(128)

    def matmul(n: int) -> tuple[list[Any], list[Any]]:
        a = te.placeholder((n, n), "float32", name="A")
        b = te.placeholder((n, n), "float32", name="Bm")
        k = te.reduce_axis((0, n), name="k")
        c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="B")
        return [a, b, c], [a, b]

    def matmul_naive() -> tuple[list[Any], Callable[[Any], None]]:
        tensors, _ = matmul(512)

        def schedule(sch: Any) -> None:
            block = sch.get_sblock("B")
            i, j, _ = sch.get_loops(block)
            io, ii = sch.split(i, [None, 16])
            jo, ji = sch.split(j, [None, 16])
            sch.reorder(io, jo, ii, ji)
            sch.bind(io, "blockIdx.y")
            sch.bind(jo, "blockIdx.x")
            sch.bind(ii, "threadIdx.y")
            sch.bind(ji, "threadIdx.x")

        return tensors, schedule

    def matmul_shared() -> tuple[list[Any], Callable[[Any], None]]:
        """32x32 output tiles, K in steps of 32 staged in shared memory (8 KiB a block)."""
        tensors, _ = matmul(1024)
        tile = 32

        def schedule(sch: Any) -> None:
            block = sch.get_sblock("B")
            i, j, k = sch.get_loops(block)
            io, ii = sch.split(i, [None, tile])
            jo, ji = sch.split(j, [None, tile])
            ko, ki = sch.split(k, [None, tile])
            sch.reorder(io, jo, ko, ii, ji, ki)
            sch.bind(io, "blockIdx.y")
            sch.bind(jo, "blockIdx.x")
            sch.bind(ii, "threadIdx.y")
            sch.bind(ji, "threadIdx.x")
            for operand in (0, 1):
                shared = sch.cache_read(block, operand, "shared")
                sch.compute_at(shared, ko)
                ax0, ax1 = sch.get_loops(shared)[-2:]
                _, ty, tx = sch.split(sch.fuse(ax0, ax1), [None, tile, tile])
                sch.bind(ty, "threadIdx.y")
                sch.bind(tx, "threadIdx.x")
            sch.decompose_reduction(block, ko)

        return tensors, schedule

    return {
        "scale": scale,
        "row_sum": row_sum,
        "matmul_naive_512": matmul_naive,
        "matmul_shared_1024": matmul_shared,
    }


def _specs(tensors: list[Any]) -> list[Spec]:
    """Per ``te.create_prim_func`` parameter (the tensors' order): shape, dtype, is output."""
    from tvm import te

    return [
        ([int(x) for x in t.shape], str(t.dtype), not isinstance(t.op, te.PlaceholderOp))
        for t in tensors
    ]


def _reduction_length(func: Any) -> int:
    from autosched.analysis import analyze

    k = 1
    for stage in analyze(func):
        k = max(k, math.prod(stage.extents[i] for i in stage.reduction_axes))
    return k


def _reference(func: Any, arrays: list[Any], specs: list[Spec], hw: Any) -> list[Any]:
    """The unscheduled kernel built for this CPU: the runner's reference."""
    import tvm

    from autosched.hardware import reference_target

    lib = tvm.compile(tvm.IRModule({"main": func}), target=reference_target(hw))
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*args)
    return [a.numpy() for a, (_, _, out) in zip(args, specs, strict=True) if out]


def _flops(func: Any) -> float:
    import tvm

    try:
        return float(tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:  # an estimate only: a kernel the estimator cannot read gets none
        return 0.0


def build_cases(
    hw: Any,
    cases_dir: Path,
    device_kind: str,
    hand_names: list[str],
    zoo_names: list[str],
    max_bytes: int,
) -> tuple[list[Case], dict[str, str]]:
    """Build the hand-scheduled kernels and the zoo's static configs into ``cases_dir``.

    ``device_kind`` "cpu" builds the same kernels unscheduled for this CPU: the runtime-only
    loader's test here. Returns the cases and, per kernel left out, why.
    """
    import tvm
    from tvm import te

    from autosched.tune import cuda_build
    from autosched.tune.runner_handlers import make_inputs

    cases: list[Case] = []
    skipped: dict[str, str] = {}
    total = 0

    def add(
        name: str, origin: str, tensors: list[Any], func: Any, export: Callable[[Path], None]
    ) -> None:
        nonlocal total
        specs = _specs(tensors)
        arrays = make_inputs(specs, SEED)
        inputs = [a for a, (_, _, out) in zip(arrays, specs, strict=True) if not out]
        size = sum(a.nbytes for a, (_, _, out) in zip(arrays, specs, strict=True) if out)
        if total + size > max_bytes:
            skipped[name] = f"its outputs ({size / MiB:.1f} MiB) would pass the kit's cap"
            return
        library = cases_dir / f"{name}.so"
        try:
            export(library)
        except Exception as e:  # a kernel that does not build is reported, not fatal
            skipped[name] = f"build failed: {type(e).__name__}: {str(e)[:300]}"
            return
        refs = _reference(func, arrays, specs, hw)
        total += size
        digest = inputs_digest(inputs)
        reduction, flops = _reduction_length(func), _flops(func)
        cases.append(Case(name, origin, library, specs, digest, refs, reduction, flops))

    hand = hand_kernels()
    for name in hand_names:
        tensors, schedule = hand[name]()
        func = te.create_prim_func(tensors)
        if device_kind == "cpu":

            def export(path: Path, func: Any = func) -> None:
                tvm.compile(tvm.IRModule({"main": func}), target="llvm").export_library(str(path))
        else:

            def export(path: Path, func: Any = func, schedule: Any = schedule) -> None:
                sch = tvm.s_tir.Schedule(func)
                schedule(sch)
                ex = cuda_build.compile_for_gpu(sch.mod, hw)
                cuda_build.export_library(ex, str(path), hw)

        add(name, "hand schedule", tensors, func, export)

    if device_kind != "cpu":
        from autosched import zoo
        from autosched.schedule import apply_config, static_config
        from autosched.wire import Workload, serialize

        for name in zoo_names:
            try:
                workload = Workload.from_json(serialize(zoo.tensors(name), name))
                func = workload.prim_func
                mod = apply_config(func, static_config(func, hw), hw).mod
            except Exception as e:
                skipped[name] = f"static schedule failed: {type(e).__name__}: {str(e)[:300]}"
                continue

            def export(path: Path, mod: Any = mod) -> None:
                cuda_build.export_library(cuda_build.compile_for_gpu(mod, hw), str(path), hw)

            add(name, "static config", list(workload.tensors), func, export)
    return cases, skipped


def write_cases(cases: list[Case], cases_dir: Path) -> list[dict[str, Any]]:
    import numpy as np

    entries = []
    for case in cases:
        data = cases_dir / f"{case.name}.npz"
        np.savez_compressed(data, **{f"ref{i}": a for i, a in enumerate(case.references)})
        entries.append(
            {
                "name": case.name,
                "origin": case.origin,
                "library": case.library.name,
                "references": data.name,
                "params": case.specs,
                "inputs_sha256": case.inputs_sha256,
                "reduction": case.reduction,
                "flops": case.flops,
            }
        )
    return entries
