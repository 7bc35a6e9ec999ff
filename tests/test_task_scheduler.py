"""The task scheduler spends one budget across workloads where it helps most."""

import math

from autosched import zoo
from autosched.tune.database import MemoryDatabase
from autosched.tune.measure import ReplayMeasurer
from autosched.tune.task_scheduler import tune_tasks
from autosched.tune.trial import MeasureResult, TrialStatus
from autosched.tune.tune import TuningTask
from autosched.wire import Workload
from tests.search_support import HW, synthetic_latency


def _flat(config) -> MeasureResult:
    return MeasureResult(TrialStatus.OK, 1e-4, latencies=(1e-4,))


def _task(name: str, fallback) -> TuningTask:
    workload = Workload.from_tensors(zoo.tensors(name), name)
    return TuningTask(
        workload,
        hw=HW,
        database=MemoryDatabase(),
        measurer=ReplayMeasurer(fallback=fallback),
        seed=0,
    )


def test_budget_goes_where_latency_can_still_fall():
    flat = _task("matmul_512", _flat)  # already fast, nothing to gain
    steep = _task("batch_matmul", lambda c: synthetic_latency_for_batch(c))
    rounds = []
    results = tune_tasks([flat, steep], 96, batch_size=8, on_round=rounds.append)
    assert sum(r.trials for r in rounds) == 96
    assert {r.task_index for r in rounds[:2]} == {0, 1}  # warm-up: each task once
    assert len(steep.history) > 2 * len(flat.history)
    assert all(math.isfinite(r.best_latency) for r in results)
    totals = [r.weighted_latency for r in rounds]
    assert totals[-1] <= totals[1]  # the weighted total only improves


def synthetic_latency_for_batch(config) -> MeasureResult:
    """The matmul synthetic machine, read through batch_matmul's knob names."""
    from autosched.space import Config

    stage = config.values["T_batch_matmul_NT"]
    as_matmul = {
        "C": {
            "tile_s0": stage["tile_s1"],
            "tile_s1": stage["tile_s2"],
            "inner_order": stage["inner_order"],
            "pack": stage.get("pack", True),
            "unroll": stage["unroll"],
            "write_level": stage["write_level"],
            "write_cache": stage["write_cache"],
        }
    }
    result = synthetic_latency(Config(as_matmul))
    # Ten times the flat task's scale, so it dominates the weighted total.
    return MeasureResult(result.status, result.latency * 10, result.error)
