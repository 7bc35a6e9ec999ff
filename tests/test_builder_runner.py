"""Builder and Runner stages: real builds and runs, and failures that end as data."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te

from autosched import zoo
from autosched.hardware import HardwareParams, cpu_target, detect_hardware
from autosched.schedule import build_template, static_config
from autosched.tune.builder import LocalBuilder, artifact_name
from autosched.tune.measure import measure
from autosched.tune.runner import LocalRunner, RunnerInput
from autosched.tune.trial import MeasureInput, TrialStatus
from autosched.wire import Workload, serialize

SHAPE = (64, 64)


@pytest.fixture(scope="module")
def hw() -> HardwareParams:
    return detect_hardware()


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tune")


@pytest.fixture(scope="module")
def builder(work_dir: Path) -> Iterator[LocalBuilder]:
    with LocalBuilder(work_dir, max_workers=2, timeout_s=30) as b:
        yield b


@pytest.fixture(scope="module")
def runner(work_dir: Path) -> Iterator[LocalRunner]:
    with LocalRunner(work_dir, timeout_s=3, repeat=2, min_repeat_ms=1) as r:
        yield r


def _double(body: Callable[[te.Tensor, tvm.tirx.Var, tvm.tirx.Var], tvm.tirx.PrimExpr]):
    a = te.placeholder(SHAPE, "float32", name="A")
    b = te.compute(SHAPE, lambda i, j: body(a, i, j), name="B")
    return [a, b]


def _doubling_doc() -> dict:
    """The workload every hand-made artifact below claims to implement: B = A * 2."""
    return serialize(_double(lambda a, i, j: a[i, j] * 2.0), "double")


def _artifact(path: Path, body, hw: HardwareParams) -> str:
    """Export a library with the doubling workload's signature but a different body."""
    func = te.create_prim_func(_double(body))
    tvm.compile(tvm.IRModule({"main": func}), target=cpu_target(hw)).export_library(str(path))
    return str(path)


def _inputs(name: str, hw: HardwareParams, n_random: int = 0) -> list[MeasureInput]:
    doc = serialize(zoo.tensors(name), name)
    func = Workload.from_json(doc).prim_func
    configs = [static_config(func, hw)]
    template = build_template(func, hw)
    configs += [template.sample(random.Random(seed)) for seed in range(n_random)]
    return [MeasureInput(doc, c.to_json(), hw.to_json()) for c in configs]


def test_zoo_configs_build_and_run(builder, runner, hw, work_dir):
    inputs = _inputs("matmul_awkward", hw, n_random=2) + _inputs("softmax", hw, n_random=1)
    inputs += _inputs("elementwise_chain", hw)
    builds = builder.build(inputs)
    for b in builds:
        assert b.status == TrialStatus.OK, b.error
        assert b.artifact_path is not None and os.path.exists(b.artifact_path)
        assert b.build_secs > 0
    first = inputs[0]
    key = Workload.from_json(first.workload).key
    assert builds[0].artifact_path == str(work_dir / artifact_name(key, first.config))

    results = measure(builder, runner, inputs)
    for r in results:
        assert r.status == TrialStatus.OK, r.error
        assert len(r.latencies) == 2
        assert all(math.isfinite(x) and x > 0 for x in r.latencies)
        assert math.isfinite(r.latency)
    # measure() deletes what it built
    assert not any(p.suffix == ".so" for p in work_dir.iterdir())


def test_broken_configs_are_build_errors(builder, hw):
    (good,) = _inputs("matmul_awkward", hw)
    missing = {"stages": {s: dict(v) for s, v in good.config["stages"].items()}}
    stage = next(iter(missing["stages"]))
    missing["stages"][stage].pop(next(iter(missing["stages"][stage])))
    invalid = {"stages": {s: {k: "bogus" for k in v} for s, v in good.config["stages"].items()}}
    garbage_workload = {"format": "nonsense"}
    inputs = [
        MeasureInput(good.workload, missing, good.hardware),
        MeasureInput(good.workload, invalid, good.hardware),
        MeasureInput(good.workload, {"no": "stages"}, good.hardware),
        MeasureInput(garbage_workload, good.config, good.hardware),
        good,
    ]
    results = builder.build(inputs)
    for r in results[:-1]:
        assert r.status == TrialStatus.BUILD_ERROR
        assert r.artifact_path is None and r.error
    assert "Error" in results[0].error
    assert results[-1].status == TrialStatus.OK, results[-1].error
    os.remove(results[-1].artifact_path)


def test_build_timeout_then_recovers(work_dir, hw):
    (good,) = _inputs("matmul_awkward", hw)
    with LocalBuilder(work_dir, max_workers=1, timeout_s=0.001) as b:
        (r,) = b.build([good])
        assert r.status == TrialStatus.BUILD_TIMEOUT, r
        assert "killed" in r.error
        b.timeout_s = 30
        (r,) = b.build([good])
        assert r.status == TrialStatus.OK, r.error
        os.remove(r.artifact_path)


def test_hang_crash_and_wrong_answer_are_data(runner, hw, tmp_path):
    doc = _doubling_doc()
    sleep = tvm.tirx.call_extern("int32", "sleep", 1000)
    hang = _artifact(
        tmp_path / "hang.so", lambda a, i, j: a[i, j] * 2.0 + sleep.astype("float32"), hw
    )
    abort = tvm.tirx.call_extern("int32", "abort")
    crash = _artifact(
        tmp_path / "crash.so", lambda a, i, j: a[i, j] * 2.0 + abort.astype("float32"), hw
    )
    wrong = _artifact(tmp_path / "wrong.so", lambda a, i, j: a[i, j] * 3.0, hw)
    good = _artifact(tmp_path / "good.so", lambda a, i, j: a[i, j] * 2.0, hw)
    missing = str(tmp_path / "missing.so")

    results = runner.run(
        [RunnerInput(p, doc) for p in (good, hang, good, crash, good, wrong, good, missing, good)]
    )
    statuses = [r.status for r in results]
    assert statuses == [
        TrialStatus.OK,
        TrialStatus.RUN_TIMEOUT,
        TrialStatus.OK,
        TrialStatus.RUN_ERROR,
        TrialStatus.OK,
        TrialStatus.WRONG_ANSWER,
        TrialStatus.OK,
        TrialStatus.RUN_ERROR,
        TrialStatus.OK,
    ], [(r.status, r.error) for r in results]
    assert "3 s" in results[1].error
    assert "SIGABRT" in results[3].error
    assert "max abs error" in results[5].error and "max rel error" in results[5].error
    assert results[7].error
    for r in results:
        assert (r.status == TrialStatus.OK) == math.isfinite(r.latency)


def test_reference_computed_once_and_cached(work_dir, hw, tmp_path):
    doc = _doubling_doc()
    good = _artifact(tmp_path / "good.so", lambda a, i, j: a[i, j] * 2.0, hw)
    key = Workload.from_json(doc).key
    with LocalRunner(work_dir, timeout_s=3, repeat=1, min_repeat_ms=1, seed=7) as r:
        (path,) = r.reference_paths(key, 1)
        if os.path.exists(path):
            os.remove(path)
        results = r.run([RunnerInput(good, doc), RunnerInput(good, doc)])
        assert [x.status for x in results] == [TrialStatus.OK] * 2
        assert r.reference_computations == 1
        assert os.path.exists(path)
        mtime = os.stat(path).st_mtime_ns
    with LocalRunner(work_dir, timeout_s=3, repeat=1, min_repeat_ms=1, seed=7) as r:
        (x,) = r.run([RunnerInput(good, doc)])
        assert x.status == TrialStatus.OK, x.error
        assert r.reference_computations == 0
    assert os.stat(path).st_mtime_ns == mtime


def test_relative_work_dir_survives_the_private_cwd(hw, tmp_path, monkeypatch):
    # Sandboxes run in their own directories: a relative work_dir must mean the caller's.
    monkeypatch.chdir(tmp_path)
    (good,) = _inputs("matmul_awkward", hw)
    with LocalBuilder("artifacts", max_workers=1, timeout_s=30) as b:
        (r,) = b.build([good])
    assert r.status == TrialStatus.OK, r.error
    assert r.artifact_path is not None
    assert Path(r.artifact_path).parent == tmp_path / "artifacts"
    assert Path(r.artifact_path).exists()


def test_half_precision_outputs_are_compared_at_their_own_precision():
    """fp16 sums rounded in another order pass; an output off by its own size still fails;
    fp32 keeps its tight tolerance."""
    from autosched.tune.runner_handlers import compare_to_reference

    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (64, 256)).astype(np.float16)
    b = rng.uniform(-1, 1, (256, 64)).astype(np.float16)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    summed = np.zeros((64, 64), np.float16)  # one fp16 rounding per partial sum
    for i in range(256):
        summed = (summed + np.outer(a[:, i], b[i]).astype(np.float16)).astype(np.float16)
    ref = exact.astype(np.float16)
    same = {"rounded_sums": True}  # the runner's reference: the same function on the CPU
    assert compare_to_reference(summed, ref, 1e-4, 1e-4, 256, **same) is None
    assert compare_to_reference(np.zeros_like(ref), ref, 1e-4, 1e-4, 256, **same) is not None
    assert compare_to_reference(-summed, ref, 1e-4, 1e-4, 256, **same) is not None
    assert compare_to_reference(summed, ref, 1e-4, 1e-4, 256) is not None  # vs exact: tight
    ref32 = exact.astype(np.float32)
    off = ref32 * np.float32(1.001)
    assert compare_to_reference(off, ref32, 1e-4, 1e-4, 256, **same) is not None
