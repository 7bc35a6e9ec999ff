"""One kernel, one trial budget: tune with autosched and with MetaSchedule, check, re-time.

The measuring half of ``bench/vs_metaschedule.py`` (which parses the command line and
prints the tables). Both tuners see the same PrimFunc; both winners are rebuilt here,
checked against the unscheduled build and re-timed with the same timer, interleaved with
numpy and PyTorch, so that neither tuner's own measurement decides the comparison.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import tvm
from rich.console import Console

from autosched import zoo
from bench import harness
from bench.report import BaselineTimes, FieldRatio, gflop
from bench.tuning_curve import (
    BatchClock,
    autosched_latencies,
    end_points,
    ms_clock_callback,
    ms_latencies,
    wall_at,
)


@dataclass
class Row(BaselineTimes):
    kernel: str
    trials: int
    gflop: float
    # autosched
    as_trials: int = 0  # trials this run measured
    as_tune_s: float | None = None  # wall time of tune()
    as_tuned_s: float | None = None  # best latency as measured during tuning
    as_s: float | None = None  # re-timed here
    as_check: str = "-"
    as_error: str = ""
    # MetaSchedule
    ms_trials: int = 0
    ms_tune_s: float | None = None  # wall time of tune_tir()
    ms_compile_s: float | None = None  # compile_tir (picks the best record)
    ms_tuned_s: float | None = None
    ms_s: float | None = None
    ms_check: str = "-"
    ms_error: str = ""
    # baselines
    numpy_s: float | None = None
    torch_s: float | None = None
    # tuning curves: trials -> best latency within the first n trials (tuners' own timings)
    as_curve: dict[int, float | None] = field(default_factory=dict)
    ms_curve: dict[int, float | None] = field(default_factory=dict)
    # ... and the wall seconds until the batch that reached those trial counts
    as_curve_wall: dict[int, float | None] = field(default_factory=dict)
    ms_curve_wall: dict[int, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # MetaSchedule time / autosched time: > 1 means autosched is faster.
    ms_over_as = FieldRatio("ms_s", "as_s")
    # Baseline time / autosched time: > 1 means autosched is faster.
    base_over_as = FieldRatio("baseline_s", "as_s")


@dataclass(frozen=True)
class Plan:
    rounds: int  # interleaved rounds of autosched / MS / numpy / torch
    repeat: int  # repeats per round and contender
    min_repeat_ms: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(2, 3, 20) if quick else cls(4, 5, 50)


def describe_error(e: BaseException) -> str:
    """One line for a table or a log: the exception's type and its telling line."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    # TVM errors end with the interesting line; Python ones start with it.
    msg = lines[-1] if lines and "Traceback" in lines[0] else (lines[0] if lines else "")
    return f"{type(e).__name__}: {msg}"[:300]


def time_oneoff_imports(console: Console, metaschedule: bool) -> dict[str, float]:
    """Import what the tuners import once per process, timed and printed apart so that it is
    not charged to the first kernel's tuning wall time: MetaSchedule with its tensor
    intrinsics (TuneContext imports them anyway) when ``metaschedule``, and autosched's tune.
    Returns the seconds per import (``ms_import_s``, ``autosched_import_s``)."""
    oneoff: dict[str, float] = {}
    if metaschedule:
        t0 = time.perf_counter()
        import tvm.s_tir.tensor_intrin  # noqa: F401
        from tvm.s_tir import meta_schedule  # noqa: F401

        oneoff["ms_import_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    import autosched.tune.tune  # noqa: F401

    oneoff["autosched_import_s"] = time.perf_counter() - t0
    console.print(
        "one-off imports (not in the tuning wall times): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in oneoff.items()),
        highlight=False,
    )
    return oneoff


# --------------------------------------------------------------------------------------
# The two tuners
# --------------------------------------------------------------------------------------


def fast_build(mod: tvm.IRModule, target: tvm.target.Target, _params: Any) -> Any:
    """MetaSchedule's default_build without ``import tvm.s_tir.tensor_intrin`` (~30 s a
    fresh worker). Returns the runtime Module that default_export expects."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    # As default_build: a no-op for these PrimFuncs (no layout_free_buffers attribute).
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.compile(mod, target=target).mod


# cloudpickle pickles functions of importable modules by reference; the builder's worker
# processes may not be able to import `bench`, so ship fast_build by value.
try:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
except ImportError:
    pass


def tune_autosched(
    name: str, func_tensors: list[Any], trials: int, hw: Any, seed: int, row: Row
) -> Any:
    """Tune with autosched; returns the best Config (or None) and fills ``row``."""
    from autosched.tune.tune import tune
    from autosched.wire import Workload

    wl = Workload.from_tensors(func_tensors, name)
    with tempfile.TemporaryDirectory(prefix=f"vsms-as-{name}-") as d:
        t0 = time.perf_counter()
        clock = BatchClock()
        res = tune(
            wl,
            trials,
            hw=hw,
            batch_size=16,
            seed=seed,
            work_dir=d,
            on_batch=lambda p: clock.mark(p.trials_done),
        )
        row.as_tune_s = time.perf_counter() - t0
    row.as_curve_wall = wall_at(clock.marks, trials)
    row.as_trials = len(res.history)
    row.as_curve = end_points(autosched_latencies(res.history), trials)
    row.as_tuned_s = res.best_latency if math.isfinite(res.best_latency) else None
    errors: dict[str, int] = {}
    for r in res.history:
        if not r.ok:
            errors[str(r.result.status)] = errors.get(str(r.result.status), 0) + 1
    if errors:
        row.extra["as_trial_errors"] = errors
    return res.best_config


def tune_metaschedule(
    func: tvm.tirx.PrimFunc,
    target: tvm.target.Target,
    trials: int,
    seed: int,
    row: Row,
    *,
    builder_workers: int = 2,
    work_dir: str | None = None,
) -> Any:
    """Tune with MetaSchedule; returns the best schedule (or None) and fills ``row``.

    ``builder_workers``: its builder's processes. The CPU benchmark keeps 2 (the cores the
    kernels run on); bench/gpu.py gives it as many as autosched's builder gets (the host's
    CPUs), so that neither tuner's wall time is decided by how many compilers it may run.
    ``work_dir``: keep MetaSchedule's database there (bench/explain_ms.py reads it again);
    a temporary directory otherwise.
    """
    from tvm.s_tir import meta_schedule as ms

    # MetaSchedule's console handler takes its level from this logger, and every tune_tir
    # call resets the logger to DEBUG: quiet it each time (its per-task logs still go to
    # work_dir/logs).
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    with _work_dir(work_dir, f"vsms-ms-{row.kernel}-") as d:
        t0 = time.perf_counter()
        clock = BatchClock()
        db = ms.tune_tir(
            mod=func,
            target=target,
            work_dir=d,
            max_trials_global=trials,
            num_trials_per_iter=32,
            builder=ms.builder.LocalBuilder(max_workers=builder_workers, f_build=fast_build),
            seed=seed,
            measure_callbacks=[
                *ms.measure_callback.MeasureCallback.create("default"),
                ms_clock_callback(clock),
            ],
        )
        row.ms_tune_s = time.perf_counter() - t0
        row.ms_curve_wall = wall_at(clock.marks, trials)
        row.ms_curve = end_points(ms_latencies(d), trials)
        records = db.get_all_tuning_records()
        row.ms_trials = len(records)
        secs = [
            float(np.mean([float(x) for x in r.run_secs]))
            for r in records
            if r.run_secs is not None and len(r.run_secs) > 0
        ]
        # Failed builds/runs are recorded with a huge sentinel time (1e10 s).
        ok = [s for s in secs if s < 1e9]
        row.ms_tuned_s = min(ok) if ok else None
        if len(ok) < len(records):
            row.extra["ms_failed_trials"] = len(records) - len(ok)
        t0 = time.perf_counter()
        sch = ms.tir_integration.compile_tir(db, func, target)
        row.ms_compile_s = time.perf_counter() - t0
        if sch is not None:
            row.extra["ms_best_trace"] = str(sch.trace)
    return sch


@contextlib.contextmanager
def _work_dir(keep: str | None, prefix: str) -> Iterator[str]:
    if keep is not None:
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield d


# --------------------------------------------------------------------------------------
# One kernel at one budget
# --------------------------------------------------------------------------------------


class CheckedCase(Protocol):
    """A kernel with a reference: ``harness.Case`` (CPU) or ``gpu_measure.DeviceCase``."""

    def check(self, executable: Any) -> float:
        """Run ``executable``; its max abs error, or AssertionError when it is wrong."""
        ...


def build_and_check(
    make: Callable[[], Any], case: CheckedCase, console: Console
) -> tuple[Any, str, str, float | None]:
    """Tune and build one tuner's winner with ``make``, then check it against the naive
    output: (build, check, error, max abs error). A build whose output differs is returned
    too, so it is still timed; a tuner or build that raised gives no build."""
    executable = None
    try:
        executable = make()
        return executable, "ok", "", case.check(executable)
    except AssertionError as e:
        console.print(str(e), markup=False, highlight=False)
        return executable, "FAIL", describe_error(e), None
    except Exception as e:
        console.print(traceback.format_exc(), markup=False, highlight=False)
        return None, "ERROR", describe_error(e), None


def bench_one(
    name: str,
    trials: int,
    hw: Any,
    target: tvm.target.Target,
    plan: Plan,
    seed: int,
    console: Console,
    *,
    run_ms: bool = True,
    torch_ok: bool = True,
) -> Row:
    from autosched.schedule import apply_config
    from autosched.wire import Workload

    tensors = zoo.tensors(name)
    # The function both tuners see: the one the wire format rebuilds (same key, same names).
    func = Workload.from_tensors(tensors, name).prim_func
    row = Row(kernel=name, trials=trials, gflop=gflop(func))
    case = harness.Case.make(name, func, target, seed)

    def autosched_winner() -> Any:
        config = tune_autosched(name, tensors, trials, hw, seed, row)
        if config is None:
            raise RuntimeError("no trial verified")
        row.extra["as_best_config"] = config.to_json()
        return tvm.compile(apply_config(func, config, hw).mod, target=target)

    def metaschedule_winner() -> Any:
        sch = tune_metaschedule(func, target, trials, seed, row)
        if sch is None:
            raise RuntimeError("compile_tir found no valid record")
        return tvm.compile(sch.mod, target=target)

    as_lib, row.as_check, row.as_error, err = build_and_check(autosched_winner, case, console)
    if err is not None:
        row.extra["as_max_abs_err"] = err
    ms_lib = None
    if run_ms:
        ms_lib, row.ms_check, row.ms_error, err = build_and_check(
            metaschedule_winner, case, console
        )
        if err is not None:
            row.extra["ms_max_abs_err"] = err

    timers = harness.samplers(
        case,
        {"as": as_lib, "ms": ms_lib},
        repeat=plan.repeat,
        min_repeat_ms=plan.min_repeat_ms,
        torch_ok=torch_ok,
    )
    med, samples = harness.interleaved(timers, plan.rounds)
    # All samples in the JSON: the same binary on these VMs sometimes runs ~2x slower for a
    # few seconds (seen with autosched's matmul_512 winner: 1.3 ms, then 0.65 ms).
    row.extra["samples_ms"] = {k: [round(x * 1e3, 4) for x in v] for k, v in samples.items()}
    row.as_s, row.ms_s = med.get("as"), med.get("ms")
    row.numpy_s, row.torch_s = med.get("numpy"), med.get("torch")
    return row
