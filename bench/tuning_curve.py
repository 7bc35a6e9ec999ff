"""Tuning curves: the best latency a tuner had found after n trials, for both tuners.

autosched's history is its trials in the order it measured them; MetaSchedule's JSON
database appends every record to ``database_tuning_record.json`` as it commits it (its
in-memory record set is sorted by latency, so the file is the only place the order is kept).
Both end up as a list of per-trial latencies in measurement order (None: a trial that failed),
from which ``end_points`` takes the best so far at each budget.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import report

CURVE_POINTS = (64, 128, 256, 512, 1000)
# MetaSchedule records a failed build or run with a huge sentinel time (1e10 s).
MS_FAILED_S = 1e9


def end_points(
    latencies: Sequence[float | None], budget: int, points: Iterable[int] = CURVE_POINTS
) -> dict[int, float | None]:
    """Best latency within the first n trials, for every n in ``points`` up to ``budget``
    (and ``budget`` itself). A tuner that measured fewer than n trials (it ran out of new
    candidates) is shown with what it had at the end. None: nothing valid yet."""
    out: dict[int, float | None] = {}
    for n in sorted({p for p in points if p <= budget} | {budget}):
        valid = [x for x in latencies[:n] if x is not None and math.isfinite(x)]
        out[n] = min(valid) if valid else None
    return out


class BatchClock:
    """Wall time after every measured batch: (trials so far, seconds since the start)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[int, float]] = []

    def mark(self, trials: int) -> None:
        self.marks.append((trials, time.perf_counter() - self.start))


def wall_at(
    marks: Sequence[tuple[int, float]], budget: int, points: Iterable[int] = CURVE_POINTS
) -> dict[int, float | None]:
    """Seconds until the batch that reached n trials, for the same n as ``end_points``
    (batch granularity: a point inside a batch gets the batch's end). A tuner that stopped
    short gets its last batch's time; None: no batch recorded."""
    out: dict[int, float | None] = {}
    for n in sorted({p for p in points if p <= budget} | {budget}):
        reached = [sec for trials, sec in marks if trials >= n]
        out[n] = reached[0] if reached else (marks[-1][1] if marks else None)
    return out


def ms_clock_callback(clock: BatchClock) -> Any:
    """A MetaSchedule measure callback that marks ``clock`` after each batch (append it to
    the default callbacks, after the one that commits records to the database)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _Clock(PyMeasureCallback):
        def __init__(self) -> None:
            self.trials = 0

        def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
            self.trials += len(runner_results)
            clock.mark(self.trials)

    return _Clock()


def autosched_latencies(history: Sequence[Any]) -> list[float | None]:
    """Per-trial latencies of ``TuneResult.history`` (TrialRecords), None for failures."""
    return [r.result.latency if r.ok else None for r in history]


def ms_latencies(work_dir: str | Path) -> list[float | None]:
    """Per-trial mean run time of a MetaSchedule JSON database, in commit order.

    Each line is ``[workload_index, [trace, run_secs, target, args_info]]``; it is read as
    JSON data (no trace is evaluated)."""
    path = Path(work_dir) / "database_tuning_record.json"
    out: list[float | None] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        secs = record[1][1] if len(record) > 1 and len(record[1]) > 1 else None
        vals = [float(s) for s in secs or []]
        mean = sum(vals) / len(vals) if vals else None
        out.append(mean if mean is not None and mean < MS_FAILED_S else None)
    return out


def print_curves(console: Console, rows: Sequence[Any]) -> None:
    """One table: per kernel and budget, both tuners' best-so-far at each curve point (as
    measured while tuning, not re-timed) and their tuning wall times."""
    points = sorted({int(n) for r in rows for n in (r.as_curve or {}) | (r.ms_curve or {})})
    columns = [("kernel", "left"), ("budget", "right")]
    for n in points:
        columns += [(f"as@{n}", "right"), (f"MS@{n}", "right")]
    columns += [("as tune s", "right"), ("MS tune s", "right")]
    t = report.table(
        "tuning curves: best ms after n trials (tuners' own timings) / wall s to get there",
        columns,
    )
    for r in rows:
        cells = [r.kernel, str(r.trials)]
        for n in points:
            for curve, wall in ((r.as_curve, r.as_curve_wall), (r.ms_curve, r.ms_curve_wall)):
                cells.append(f"{report.ms(curve.get(n))} / {report.sec(wall.get(n))}")
        cells += [report.sec(r.as_tune_s), report.sec(r.ms_tune_s)]
        t.add_row(*cells)
    console.print(t)
