"""Benchmark: autosched's tuner against TVM MetaSchedule at the same trial budget.

For every kernel, in one process on one machine with one TVM_NUM_THREADS: tune with
autosched (``autosched.tune.tune``) and with MetaSchedule (``ms.tune_tir``) at the same
number of trials, then re-time both winners with the same timer (time_evaluator, cache
flush of every argument but the first, median), alternating them in rounds so that noise
hits both alike, check both against the unscheduled ("naive") build, and time numpy
(matmul-like kernels) and PyTorch CPU next to them.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/vs_metaschedule.py
    ... --kernels matmul_512 --trials 16 --quick          # a quick smoke run
    ... --extra-256 matmul_1024,conv2d_resnet_c2           # those also at 256 trials
    ... --lenet                                            # also tune LeNet vs PyTorch
    ... --json out.json                                    # also dump the numbers

Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (as scripts/run.sh does): this machine's
environment forces an old Haswell kernel on OpenBLAS, which would make the numpy baseline
slower than it really is. Run it on an otherwise idle machine: both tuners measure on the
same 2 cores.

MetaSchedule needs ``cloudpickle`` (its process pools pickle the build function) besides
``xgboost`` and ``psutil``. Its default builder imports ``tvm.s_tir.tensor_intrin`` in every
fresh worker (~30 s a batch); this script passes a build function that skips that import
(plain fp32 CPU kernels use no tensor intrinsics), and imports the intrinsics once in the
main process up front (TuneContext does it anyway) so that the one-off cost is reported
separately instead of being charged to the first kernel.

Exit status: 0 when every winner that was built matched the naive output, 1 otherwise.
"""

from __future__ import annotations

import os
import sys

# TVM reads TVM_NUM_THREADS lazily at its first parallel region and otherwise uses a single
# thread on these machines; export it before anything can run TVM code (the tuners'
# measurement processes inherit it).
os.environ.setdefault(
    "TVM_NUM_THREADS",
    str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
)

import argparse
import json
import logging
import math
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# `python bench/vs_metaschedule.py` puts bench/ (not the repo root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import tvm
from rich.console import Console
from rich.table import Table

from autosched import zoo
from autosched.hardware import cpu_target, detect_hardware
from bench import baselines as bl
from bench import env as benv

console = Console(width=None if sys.stdout.isatty() else 180)

DEFAULT_KERNELS = [
    "matmul_512",
    "matmul_1024",
    "dense_bias_relu",
    "batch_matmul",
    "conv2d_resnet_c2",
    "conv2d_resnet_c3",
    "depthwise_conv2d",
    "softmax",
    "layer_norm",
]
MS_TARGET, MS_GOAL = 1.0, 1.1  # geomean of MS time / autosched time
BLAS_TARGET, BLAS_GOAL = 0.8, 0.9  # matmul_1024: numpy time / autosched time


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass
class Row:
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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ms_over_as(self) -> float | None:
        """MetaSchedule time / autosched time: > 1 means autosched is faster."""
        return self.ms_s / self.as_s if self.ms_s and self.as_s else None

    @property
    def baseline_s(self) -> float | None:
        return self.numpy_s if bl.is_matmul_like(self.kernel) else self.torch_s

    @property
    def base_over_as(self) -> float | None:
        """Baseline time / autosched time: > 1 means autosched is faster."""
        return self.baseline_s / self.as_s if self.baseline_s and self.as_s else None


@dataclass(frozen=True)
class Plan:
    rounds: int  # interleaved rounds of autosched / MS / numpy / torch
    repeat: int  # repeats per round and contender
    min_repeat_ms: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(2, 3, 20) if quick else cls(4, 5, 50)


def _err(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    # TVM errors end with the interesting line; Python ones start with it.
    msg = lines[-1] if lines and "Traceback" in lines[0] else (lines[0] if lines else "")
    return f"{type(e).__name__}: {msg}"[:300]


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


if __name__ != "__main__":
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
        res = tune(wl, trials, hw=hw, batch_size=16, seed=seed, work_dir=d)
        row.as_tune_s = time.perf_counter() - t0
    row.as_trials = len(res.history)
    row.as_tuned_s = res.best_latency if math.isfinite(res.best_latency) else None
    errors: dict[str, int] = {}
    for r in res.history:
        if not r.ok:
            errors[str(r.result.status)] = errors.get(str(r.result.status), 0) + 1
    if errors:
        row.extra["as_trial_errors"] = errors
    return res.best_config


def tune_metaschedule(
    func: tvm.tirx.PrimFunc, target: tvm.target.Target, trials: int, seed: int, row: Row
) -> Any:
    """Tune with MetaSchedule; returns the best schedule (or None) and fills ``row``."""
    from tvm.s_tir import meta_schedule as ms

    # MetaSchedule's console handler takes its level from this logger, and every tune_tir
    # call resets the logger to DEBUG: quiet it each time (its per-task logs still go to
    # work_dir/logs).
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix=f"vsms-ms-{row.kernel}-") as d:
        t0 = time.perf_counter()
        db = ms.tune_tir(
            mod=func,
            target=target,
            work_dir=d,
            max_trials_global=trials,
            num_trials_per_iter=32,
            builder=ms.builder.LocalBuilder(max_workers=2, f_build=fast_build),
            seed=seed,
        )
        row.ms_tune_s = time.perf_counter() - t0
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


# --------------------------------------------------------------------------------------
# One kernel at one budget
# --------------------------------------------------------------------------------------


def _check(lib: Any, inputs: list[np.ndarray], out_specs: list, reference: np.ndarray, name: str):
    (got,) = bl.run_tvm(lib, inputs, out_specs)
    bl.assert_close(got, reference, name)
    return float(np.abs(got.astype(np.float64) - reference).max())


def bench_one(
    name: str,
    trials: int,
    hw: Any,
    target: tvm.target.Target,
    plan: Plan,
    seed: int,
    *,
    run_ms: bool = True,
    torch_ok: bool = True,
) -> Row:
    from autosched.schedule import apply_config
    from autosched.wire import Workload

    tensors = zoo.tensors(name)
    # The function both tuners see: the one the wire format rebuilds (same key, same names).
    func = Workload.from_tensors(tensors, name).prim_func
    gflop = float(tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func}))) / 1e9
    row = Row(kernel=name, trials=trials, gflop=gflop)

    inputs = bl.random_inputs(name, seed)
    out_specs = bl.output_specs(func, len(inputs))
    (reference,) = bl.run_tvm(bl.build(func, target), inputs, out_specs)

    as_lib = ms_lib = None
    try:
        config = tune_autosched(name, tensors, trials, hw, seed, row)
        if config is None:
            raise RuntimeError("no trial verified")
        row.extra["as_best_config"] = config.to_json()
        as_lib = tvm.compile(apply_config(func, config, hw).mod, target=target)
        row.extra["as_max_abs_err"] = _check(as_lib, inputs, out_specs, reference, name)
        row.as_check = "ok"
    except AssertionError as e:
        row.as_check, row.as_error = "FAIL", _err(e)
        console.print(str(e), markup=False, highlight=False)
    except Exception as e:
        row.as_check, row.as_error, as_lib = "ERROR", _err(e), None
        console.print(traceback.format_exc(), markup=False, highlight=False)

    if run_ms:
        try:
            sch = tune_metaschedule(func, target, trials, seed, row)
            if sch is None:
                raise RuntimeError("compile_tir found no valid record")
            ms_lib = tvm.compile(sch.mod, target=target)
            row.extra["ms_max_abs_err"] = _check(ms_lib, inputs, out_specs, reference, name)
            row.ms_check = "ok"
        except AssertionError as e:
            row.ms_check, row.ms_error = "FAIL", _err(e)
            console.print(str(e), markup=False, highlight=False)
        except Exception as e:
            row.ms_check, row.ms_error, ms_lib = "ERROR", _err(e), None
            console.print(traceback.format_exc(), markup=False, highlight=False)

    kw = {"repeat": plan.repeat, "min_repeat_ms": plan.min_repeat_ms}
    timers: dict[str, Any] = {}
    if as_lib is not None:
        timers["as"] = lambda: bl.tvm_samples(as_lib, inputs, out_specs, number=1, **kw)
    if ms_lib is not None:
        timers["ms"] = lambda: bl.tvm_samples(ms_lib, inputs, out_specs, number=1, **kw)
    np_fn = bl.numpy_fn(name)
    if np_fn is not None:
        timers["numpy"] = lambda: bl.numpy_samples(np_fn, inputs, **kw)
    if torch_ok:
        t_fn = bl.torch_fn(name)
        timers["torch"] = lambda: bl.torch_samples(t_fn, inputs, **kw)
    med, samples = bl.interleaved(timers, plan.rounds)
    # All samples in the JSON: the same binary on these VMs sometimes runs ~2x slower for a
    # few seconds (seen with autosched's matmul_512 winner: 1.3 ms, then 0.65 ms).
    row.extra["samples_ms"] = {k: [round(x * 1e3, 4) for x in v] for k, v in samples.items()}
    row.as_s, row.ms_s = med.get("as"), med.get("ms")
    row.numpy_s, row.torch_s = med.get("numpy"), med.get("torch")
    return row


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}" if s < 1e-2 else f"{s * 1e3:.2f}"


def _r(v: float | None, suffix: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{suffix}"


def _sec(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f}"


def _check_cell(check: str) -> str:
    return {"ok": "[green]ok[/]", "FAIL": "[red]FAIL[/]", "ERROR": "[red]ERROR[/]"}.get(
        check, check
    )


def geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def print_table(rows: list[Row], trials: int) -> None:
    t = Table(title=f"autosched vs MetaSchedule at {trials} trials (re-timed here, medians)")
    for col, just in [
        ("kernel", "left"),
        ("GFLOP/s as", "right"),
        ("autosched ms", "right"),
        ("MS ms", "right"),
        ("MS/as", "right"),
        ("as tune s", "right"),
        ("MS tune s", "right"),
        ("numpy ms", "right"),
        ("torch ms", "right"),
        ("base/as", "right"),
        ("check as/MS", "left"),
        ("trials as/MS", "right"),
    ]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        base = " np" if bl.is_matmul_like(r.kernel) else " pt"
        gflops = r.gflop / r.as_s if r.as_s and r.gflop > 0 else None
        ratio = r.ms_over_as
        ratio_s = _r(ratio)
        if ratio is not None:
            ratio_s = f"[green]{ratio_s}[/]" if ratio >= 1 else f"[red]{ratio_s}[/]"
        t.add_row(
            r.kernel,
            "-" if gflops is None else f"{gflops:.1f}",
            _ms(r.as_s),
            _ms(r.ms_s),
            ratio_s,
            _sec(r.as_tune_s),
            _sec(r.ms_tune_s),
            _ms(r.numpy_s),
            _ms(r.torch_s),
            "-" if r.base_over_as is None else f"{r.base_over_as:.2f}{base}",
            f"{_check_cell(r.as_check)}/{_check_cell(r.ms_check)}",
            f"{r.as_trials}/{r.ms_trials}",
        )
    console.print(t)


def print_errors(rows: list[Row]) -> None:
    for r in rows:
        for who, err in (("autosched", r.as_error), ("MetaSchedule", r.ms_error)):
            if err:
                console.print(
                    f"[red]{who}[/] {r.kernel}@{r.trials}: {err}", markup=True, highlight=False
                )
        if r.extra.get("as_trial_errors") or r.extra.get("ms_failed_trials"):
            console.print(
                f"{r.kernel}@{r.trials}: failed trials autosched "
                f"{r.extra.get('as_trial_errors', {})}, MS {r.extra.get('ms_failed_trials', 0)}",
                highlight=False,
            )


def print_headlines(rows: list[Row], trials: int) -> dict[str, Any]:
    main = [r for r in rows if r.trials == trials]
    gm = geomean([r.ms_over_as for r in main if r.ms_over_as])
    n = sum(1 for r in main if r.ms_over_as)

    def verdict(v: float | None, target: float, goal: float) -> str:
        if v is None:
            return "[yellow]n/a[/]"
        if v >= goal:
            return "[green]goal met[/]"
        return "[green]target met[/]" if v >= target else "[red]missed[/]"

    console.print("\n[bold]Targets[/]")
    console.print(
        f"geomean vs MetaSchedule @{trials}: {_r(gm)} over {n} kernels "
        f"(target ≥ {MS_TARGET}, goal {MS_GOAL}) {verdict(gm, MS_TARGET, MS_GOAL)}",
        highlight=False,
    )
    as_total = sum(r.as_tune_s or 0.0 for r in main)
    ms_total = sum(r.ms_tune_s or 0.0 for r in main)
    console.print(
        f"tuning wall time @{trials}: autosched total {as_total:.1f} s vs MS total "
        f"{ms_total:.1f} s",
        highlight=False,
    )
    for r in rows:
        if r.trials != trials:
            console.print(
                f"{r.kernel} @{r.trials}: MS/autosched {_r(r.ms_over_as)}, tuning wall "
                f"autosched {_sec(r.as_tune_s)} s vs MS {_sec(r.ms_tune_s)} s",
                highlight=False,
            )
    blas = {}
    for r in rows:
        if r.kernel == "matmul_1024" and r.numpy_s and r.as_s:
            ratio = r.numpy_s / r.as_s
            blas[r.trials] = ratio
            console.print(
                f"matmul_1024 vs OpenBLAS @{r.trials}: autosched/numpy speed ratio {ratio:.2f} "
                f"(target ≥ {BLAS_TARGET}, goal {BLAS_GOAL}) "
                f"{verdict(ratio, BLAS_TARGET, BLAS_GOAL)}",
                highlight=False,
            )
    return {
        "geomean_ms_over_autosched": gm,
        "geomean_kernels": n,
        "autosched_tune_total_s": as_total,
        "ms_tune_total_s": ms_total,
        "matmul_1024_numpy_over_autosched": blas,
    }


# --------------------------------------------------------------------------------------
# LeNet
# --------------------------------------------------------------------------------------


def bench_lenet(
    trials: int, hw: Any, target: tvm.target.Target, plan: Plan, seed: int, torch_ok: bool
) -> dict[str, Any]:
    row = bench_one("lenet", trials, hw, target, plan, seed, run_ms=False, torch_ok=torch_ok)
    ratio = row.as_s / row.torch_s if row.as_s and row.torch_s else None
    console.print(
        f"\n[bold]LeNet[/] @{trials} trials: autosched {_ms(row.as_s)} ms "
        f"(check {_check_cell(row.as_check)}, tuning {_sec(row.as_tune_s)} s, "
        f"{row.as_trials} trials) vs PyTorch {_ms(row.torch_s)} ms: "
        f"autosched/torch time = {_r(ratio)} (< 1: autosched faster)",
        highlight=False,
    )
    if row.as_error:
        console.print(f"[red]autosched[/] lenet: {row.as_error}", highlight=False)
    return asdict(row) | {"autosched_over_torch": ratio}


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", help=f"comma-separated zoo names (default: {DEFAULT_KERNELS})")
    ap.add_argument("--trials", type=int, default=64, help="trial budget of both tuners")
    ap.add_argument(
        "--extra-256",
        default="",
        metavar="K1,K2",
        help="also run these kernels at 256 trials (e.g. matmul_1024,conv2d_resnet_c2)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer timing repeats (noisier)")
    ap.add_argument("--lenet", action="store_true", help="also tune LeNet vs PyTorch")
    ap.add_argument("--lenet-trials", type=int, default=64)
    ap.add_argument("--no-ms", action="store_true", help="skip MetaSchedule (autosched only)")
    ap.add_argument("--seed", type=int, default=0, help="tuner seed and input seed")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    names = [k.strip() for k in args.kernels.split(",")] if args.kernels else DEFAULT_KERNELS
    extra = [k.strip() for k in args.extra_256.split(",") if k.strip()]
    unknown = [n for n in names + extra if n not in zoo.names()]
    if unknown:
        console.print(f"unknown kernels: {', '.join(unknown)}; known: {', '.join(zoo.names())}")
        return 2

    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            console.print(
                f"[yellow]warning[/]: {var}={os.environ[var]} is set: numpy's OpenBLAS runs a "
                "forced (older) kernel and the numpy baseline looks slower than it is; run "
                "via `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python "
                "bench/vs_metaschedule.py ...`"
            )

    bl.setup_threads()
    hw = detect_hardware()
    target = cpu_target(hw)
    plan = Plan.make(args.quick)
    torch_ok = benv.torch_available()
    env = benv.environment(hw, target)
    for k, v in env.items():
        console.print(f"[bold]{k}[/]: {v}", highlight=False)
    if os.getloadavg()[0] > 0.5:
        console.print(
            f"[yellow]warning[/]: load average {os.getloadavg()[0]:.2f} before starting: "
            "other processes compete for the cores and the timings are unreliable"
        )

    run_ms = not args.no_ms
    oneoff: dict[str, float] = {}
    if run_ms:
        # One-off cost, reported apart: TuneContext imports the tensor intrinsics anyway.
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

    jobs = [(n, args.trials) for n in names] + [(n, 256) for n in extra if args.trials != 256]
    rows: list[Row] = []
    t_all = time.perf_counter()
    for n, trials in jobs:
        t0 = time.perf_counter()
        with console.status(f"{n} @{trials} trials ..."):
            r = bench_one(n, trials, hw, target, plan, args.seed, run_ms=run_ms, torch_ok=torch_ok)
        rows.append(r)
        console.print(
            f"{n} @{trials}: autosched {_ms(r.as_s)} ms ({r.as_check}, tune {_sec(r.as_tune_s)} s,"
            f" tuned {_ms(r.as_tuned_s)} ms) | MS {_ms(r.ms_s)} ms ({r.ms_check}, tune "
            f"{_sec(r.ms_tune_s)} s, tuned {_ms(r.ms_tuned_s)} ms) | MS/as {_r(r.ms_over_as)} | "
            f"numpy {_ms(r.numpy_s)} torch {_ms(r.torch_s)} ms "
            f"[{time.perf_counter() - t0:.0f} s]",
            highlight=False,
            markup=False,
        )

    for trials in sorted({t for _, t in jobs}):
        print_table([r for r in rows if r.trials == trials], trials)
    console.print(
        "MS/as = MetaSchedule time / autosched time (> 1: autosched faster). base/as = "
        "baseline time / autosched time, baseline numpy (np) for matmul-like kernels, PyTorch "
        "(pt) otherwise. tune s = wall time of tune() / tune_tir()."
    )
    print_errors(rows)
    summary = print_headlines(rows, args.trials)

    lenet = None
    if args.lenet:
        with console.status(f"lenet @{args.lenet_trials} trials ..."):
            lenet = bench_lenet(args.lenet_trials, hw, target, plan, args.seed, torch_ok)
    console.print(f"total wall time {time.perf_counter() - t_all:.0f} s", highlight=False)

    if args.json:
        doc = {
            "environment": env,
            "plan": asdict(plan),
            "one_off_s": oneoff,
            "summary": summary,
            "rows": [
                asdict(r) | {"ms_over_autosched": r.ms_over_as, "baseline_over_as": r.base_over_as}
                for r in rows
            ],
            "lenet": lenet,
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))

    checks = [c for r in rows for c in (r.as_check, r.ms_check)]
    if lenet:
        checks.append(lenet["as_check"])
    return 1 if "FAIL" in checks else 0


if __name__ == "__main__":
    sys.exit(main())
