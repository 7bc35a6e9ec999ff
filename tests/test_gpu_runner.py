"""The CUDA build path and the GPU runner.

On any machine with nvcc (no GPU needed): CUDA libraries carry a cubin for the card's arch,
a kernel nvcc rejects is a build error with nvcc's words, references are computed on the CPU,
and a run on a missing device is a RUN_ERROR. Tests marked ``gpu`` need a CUDA device (they
are skipped without one; ``scripts/gpu_check.sh`` runs them on a GPU host). Kernels are
scheduled by hand here, so nothing depends on the CUDA templates except the one build
through ``LocalBuilder`` that uses a static config.
"""

from __future__ import annotations

import importlib
import json
import lzma
import math
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from tvm import te

from autosched.gpu_hardware import detect_gpu_hardware
from autosched.hardware import HardwareParams
from autosched.host_description import cuda_devices
from autosched.schedule import static_config
from autosched.tune import cuda_build
from autosched.tune.builder import LocalBuilder
from autosched.tune.builder import handle as build_handle
from autosched.tune.runner import LocalRunner, RunnerInput
from autosched.tune.runner_handlers import handle as run_handle
from autosched.tune.runner_handlers import make_inputs
from autosched.tune.trial import MeasureInput, TrialStatus
from autosched.wire import Workload, serialize

H100 = "nvidia/nvidia-h100"
N = 4096
EM_CUDA = 190
HAS_GPU = bool(cuda_devices())

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device")


@pytest.fixture(scope="module")
def hw() -> HardwareParams:
    return detect_gpu_hardware(device=0) if HAS_GPU else detect_gpu_hardware(tag=H100)


def _scale(factor: float = 2.0) -> list[te.Tensor]:
    a = te.placeholder((N,), "float32", name="A")
    b = te.compute((N,), lambda i: a[i] * factor, name="B")
    return [a, b]


def _doc() -> dict[str, Any]:
    """The workload every hand-made library below claims to implement: B = A * 2."""
    return serialize(_scale(), "scale")


def _bound(tensors: list[te.Tensor], threads: int = 128) -> tvm.IRModule:
    sch = tvm.s_tir.Schedule(te.create_prim_func(tensors))
    (i,) = sch.get_loops(sch.get_sblock("B"))
    outer, inner = sch.split(i, [None, threads])
    sch.bind(outer, "blockIdx.x")
    sch.bind(inner, "threadIdx.x")
    return sch.mod


def _big_shared() -> tvm.IRModule:
    """One block that stages a 64 KiB input in shared memory (static limit: 48 KiB)."""
    a = te.placeholder((128, 128), "float32", name="A")
    b = te.compute((128, 128), lambda i, j: a[i, j] * 2.0, name="B")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    block = sch.get_sblock("B")
    i, j = sch.get_loops(block)
    io, _ = sch.split(i, [1, None])
    sch.bind(io, "blockIdx.x")
    _, ji = sch.split(j, [None, 128])
    sch.bind(ji, "threadIdx.x")
    shared = sch.cache_read(block, 0, "shared")
    sch.compute_at(shared, io)
    return sch.mod


def _export(mod: tvm.IRModule, hw: HardwareParams, path: Path) -> str:
    cuda_build.export_library(cuda_build.compile_for_gpu(mod, hw), str(path), hw)
    return str(path)


def _embedded_cubins(path: str) -> list[tuple[int, int]]:
    """(e_machine, SM version) of each ELF image embedded in the library after its own."""
    data = Path(path).read_bytes()
    found = []
    at = data.find(b"\x7fELF", 1)
    while at != -1:
        machine = struct.unpack_from("<H", data, at + 18)[0]
        flags = struct.unpack_from("<I", data, at + 48)[0]
        # CUDA 12.9+ cubins keep the SM in bits 8-15; older ones in bits 0-7.
        sm = (flags >> 8) & 0xFF if flags & 0xFF < 0x14 else flags & 0xFF
        found.append((machine, sm))
        at = data.find(b"\x7fELF", at + 1)
    return found


# -- building ------------------------------------------------------------------------------
def test_cuda_library_carries_a_cubin_for_the_arch(hw, tmp_path):
    path = _export(_bound(_scale()), hw, tmp_path / "scale.so")
    arch = int(hw.gpu.arch[3:5])
    assert (EM_CUDA, arch) in _embedded_cubins(path)
    data = Path(path).read_bytes()
    assert b"__global__" not in data  # the source is gone: nothing to compile on the GPU host
    assert b"cubin" in data


def test_local_builder_builds_for_a_cuda_hw(hw, tmp_path):
    doc = _doc()
    config = static_config(Workload.from_json(doc).prim_func, hw)
    with LocalBuilder(tmp_path, max_workers=1, timeout_s=60) as builder:
        (result,) = builder.build([MeasureInput(doc, config.to_json(), hw.to_json())])
    assert result.status == TrialStatus.OK, result.error
    assert result.artifact_path is not None
    assert (EM_CUDA, int(hw.gpu.arch[3:5])) in _embedded_cubins(result.artifact_path)


def test_a_kernel_over_the_shared_memory_limit_is_a_build_error(hw, tmp_path, monkeypatch):
    # The builder's handler, in this process, with the hand schedule in place of a config's.
    import autosched.schedule

    mod = _big_shared()
    monkeypatch.setattr(autosched.schedule, "build_template", lambda *a, **k: None)
    monkeypatch.setattr(autosched.schedule, "apply_config", lambda *a, **k: tvm.s_tir.Schedule(mod))
    a = te.placeholder((128, 128), "float32", name="A")
    doc = serialize([a, te.compute((128, 128), lambda i, j: a[i, j] * 2.0, name="B")], "big")
    request = {
        "workload": doc,
        "config": {"stages": {}},
        "hardware": hw.to_json(),
        "work_dir": str(tmp_path),
    }
    with pytest.raises(cuda_build.DeviceCodeError) as err:
        build_handle(request)
    assert "nvcc rejected the kernel" in str(err.value)
    assert "too much shared data" in str(err.value)
    assert "__global__" not in str(err.value)  # nvcc's words, not the whole source
    assert not list(tmp_path.iterdir())


def test_too_many_threads_per_block_is_a_build_error(hw, tmp_path):
    with pytest.raises(cuda_build.DeviceCodeError, match="2048 threads per block"):
        _export(_bound(_scale(), threads=2048), hw, tmp_path / "wide.so")


def test_nvcc_failure_in_the_sandbox_is_a_build_error(hw, tmp_path):
    # An arch nvcc does not know: the sandbox finds nvcc and reports what it said.
    doc = _doc()
    config = static_config(Workload.from_json(doc).prim_func, hw)
    bogus = hw.to_json()
    bogus["gpu"] = {**bogus["gpu"], "arch": "sm_11"}
    with LocalBuilder(tmp_path, max_workers=1, timeout_s=60) as builder:
        (result,) = builder.build([MeasureInput(doc, config.to_json(), bogus)])
    assert result.status == TrialStatus.BUILD_ERROR
    assert "DeviceCodeError: nvcc rejected the kernel" in result.error
    assert "sm_11" in result.error


def test_blob_rewrite_keeps_other_modules():
    # A blob of two modules (the host library, a non-CUDA module) round-trips untouched.
    def vec(items: list[int]) -> bytes:
        return struct.pack("<Q", len(items)) + b"".join(struct.pack("<Q", x) for x in items)

    def text(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b

    body = vec([0, 1, 1]) + vec([1]) + text(b"_lib") + text(b"other") + text(b"payload")
    blob = struct.pack("<Q", len(body)) + body
    assert cuda_build.compile_cuda_modules(blob, lambda s: b"never") == blob
    with pytest.raises(ValueError):
        cuda_build.compile_cuda_modules(blob[:-1], lambda s: b"never")


# -- the reference and a missing device --------------------------------------------------------
def test_reference_for_a_cuda_hw_is_computed_on_the_cpu(hw, tmp_path):
    doc = _doc()
    (a,) = make_inputs([([N], "float32", False)], seed=3)
    path = str(tmp_path / "ref.npy")
    reply = run_handle(
        {"op": "reference", "workload": doc, "seed": 3, "paths": [path], "hardware": hw.to_json()}
    )
    assert reply["ok"]
    np.testing.assert_allclose(np.load(path), a * 2.0, rtol=1e-6)
    # The runner's own reference (a sandbox) is the same for a CUDA device.
    with LocalRunner(tmp_path / "runner", seed=3, device="cuda:0") as runner:
        ref = runner._reference(doc)
        assert not isinstance(ref, str), ref
        np.testing.assert_allclose(np.load(ref[1][0]), a * 2.0, rtol=1e-6)


@pytest.mark.skipif(HAS_GPU, reason="this host has a CUDA device")
def test_a_run_without_the_device_is_a_run_error(hw, tmp_path):
    lib = _export(_bound(_scale()), hw, tmp_path / "scale.so")
    with LocalRunner(tmp_path, timeout_s=30, device="cuda:0") as runner:
        ops = []
        call = runner._call
        runner._call = lambda req, timeout: ops.append(req["op"]) or call(req, timeout)
        results = runner.run([RunnerInput(lib, _doc()), RunnerInput(lib, _doc())])
    assert ops == ["reference", "run"]  # the second run knew the device was missing
    for r in results:
        assert r.status == TrialStatus.RUN_ERROR
        assert r.error == "no CUDA device cuda:0 on this worker"
        assert math.isinf(r.latency)


def test_device_names_are_checked(tmp_path):
    for bad in ("gpu", "cuda", "cuda:x", "cpu:0"):
        with pytest.raises(ValueError):
            LocalRunner(tmp_path, device=bad)
    assert LocalRunner(tmp_path, device="cuda:1").limits.as_bytes is None
    assert LocalRunner(tmp_path).limits.as_bytes is not None


# -- on a GPU ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_runner(tmp_path_factory) -> Iterator[LocalRunner]:
    work = tmp_path_factory.mktemp("gpu-runner")
    with LocalRunner(work, timeout_s=30, repeat=3, min_repeat_ms=1, device="cuda:0") as r:
        yield r


@gpu
@needs_gpu
def test_gpu_run_checks_and_times(hw, gpu_runner, tmp_path):
    good = _export(_bound(_scale()), hw, tmp_path / "good.so")
    wrong = _export(_bound(_scale(3.0)), hw, tmp_path / "wrong.so")
    results = gpu_runner.run([RunnerInput(p, _doc()) for p in (good, wrong, good)])
    assert [r.status for r in results] == [
        TrialStatus.OK,
        TrialStatus.WRONG_ANSWER,
        TrialStatus.OK,
    ], [r.error for r in results]
    for r in (results[0], results[2]):
        assert len(r.latencies) == 3
        assert all(0 < x < 1e-2 for x in r.latencies)
    assert "max abs error" in results[1].error


@gpu
@needs_gpu
def test_gpu_l2_flush_is_registered_and_callable():
    from autosched.tune.runner_handlers import GPU_FLUSH_FUNC, register_gpu_flush

    dev = tvm.cuda(0)
    assert register_gpu_flush(dev) == GPU_FLUSH_FUNC
    flush = tvm.get_global_func(GPU_FLUSH_FUNC)
    flush()
    dev.sync()


@gpu
@needs_gpu
def test_gpu_static_config_builds_and_runs(hw, gpu_runner, tmp_path):
    doc = _doc()
    config = static_config(Workload.from_json(doc).prim_func, hw)
    with LocalBuilder(tmp_path, max_workers=1, timeout_s=60) as builder:
        (built,) = builder.build([MeasureInput(doc, config.to_json(), hw.to_json())])
    assert built.status == TrialStatus.OK, built.error
    (result,) = gpu_runner.run([RunnerInput(built.artifact_path, doc)])
    assert result.status == TrialStatus.OK, result.error
    os.remove(built.artifact_path)


# -- the GPU-host kit ----------------------------------------------------------------------------
KIT_SCRIPT = str(Path(__file__).resolve().parent.parent / "scripts" / "gpu_kit.py")


def _kit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, KIT_SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_kit_loader_runs_prebuilt_kernels_with_the_runtime_alone(tmp_path):
    # The kit's mechanism on this CPU: TVM's package without its compiler, unpacked into a
    # fresh directory, loads and checks kernels built here in a new runtime-only process.
    kit, site = tmp_path / "kit", tmp_path / "site"
    build = ("build", str(kit), "--device-kind", "cpu", "--no-wheels", "--no-zoo")
    done = _kit(*build, "--hand", "scale", "row_sum", "--preset", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "of 64 MiB" in done.stdout
    done = _kit("install", str(kit), str(site))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "runtime"
    assert not (site / "tvm" / "lib" / "libtvm_compiler.so").exists()

    common = Path(__file__).resolve().parent.parent / "common"
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": f"{site}:{common}"}
    report = tmp_path / "report.json"
    run = ("run", str(kit), "--device", "cpu", "--repeat", "1", "--min-repeat-ms", "1")
    done = _kit(*run, "--json", str(report), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())
    assert result["environment"]["runtime_only"] is True
    assert result["environment"]["tvm"] == str(site / "tvm")
    assert [r["name"] for r in result["results"]] == ["scale", "row_sum"]
    assert all(r["status"] == "ok" and r["min_us"] > 0 for r in result["results"])


@pytest.mark.skipif(HAS_GPU, reason="this host has a CUDA device")
def test_kit_run_without_a_gpu_says_why(tmp_path):
    kit = tmp_path / "kit"
    build = ("build", str(kit), "--no-wheels", "--no-zoo", "--hand", "scale", "--preset", "0")
    done = _kit(*build)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((kit / "kit.json").read_text())
    assert manifest["target_key"].startswith("cuda/sm_90")
    report = tmp_path / "report.json"
    done = _kit("run", str(kit), "--json", str(report))
    assert done.returncode == 1
    error = json.loads(report.read_text())["environment"]["error"]
    assert "no CUDA device cuda:0 on this worker" in error or "libcuda" in error


def test_full_kit_compiler_travels_in_two_parts(tmp_path, monkeypatch):
    # The kit's modules import their siblings, as `python scripts/gpu_kit.py` lets them.
    monkeypatch.syspath_prepend(str(Path(KIT_SCRIPT).parent))
    kit_module = importlib.import_module("gpu_kit_full")
    library = os.urandom(3000) * 3
    info = kit_module.write_compiler_parts(lzma.compress(library), tmp_path, 700)
    dest, stage = tmp_path / "libtvm_compiler.so", tmp_path / "stage"
    restore = kit_module.restore_compiler
    assert restore(tmp_path / "b", stage, info, dest) is None  # part a still beside b
    assert dest.read_bytes() == library
    (tmp_path / "a" / f"{kit_module.COMPILER_PARTS}0").rename(tmp_path / "a0")
    assert "not in" in restore(tmp_path / "b", stage, info, dest)
    stage.mkdir()
    (tmp_path / "a0").rename(stage / f"{kit_module.COMPILER_PARTS}0")  # staged by call 1
    assert restore(tmp_path / "b", stage, info, dest) is None
    assert "do not match" in restore(tmp_path / "b", stage, {**info, "bytes": 1}, dest)
