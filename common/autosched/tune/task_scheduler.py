"""Task scheduler: several workloads share one trial budget (Ansor's gradient allocation).

After a warm-up round for every task, each round goes to the task whose next batch is
expected to cut the weighted total latency most: the weight times a blend of the backward
gradient (how much its best latency fell over its last ``window`` trials) and an optimistic
forward one (its latency could keep falling at the average rate so far). Tasks with no
verified config yet come first. An epsilon share of rounds goes to a random task.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from autosched.tune.tune import TuneResult, TuningTask


@dataclass(frozen=True)
class TaskRound:
    task_index: int
    trials: int
    weighted_latency: float  # sum of weight * best latency over tasks after the round


def _best_after(task: TuningTask, n: int) -> float:
    """Best verified latency among the first ``n`` trials this run measured."""
    ok = [r.result.latency for r in task.history[:n] if r.ok]
    return min(ok) if ok else math.inf


def gradient(task: TuningTask, weight: float, window: int, alpha: float = 0.5) -> float:
    """Expected decrease of weight * latency per trial (larger is more promising)."""
    now = task.best_latency
    if not math.isfinite(now):
        return math.inf
    measured = len(task.history)
    before = _best_after(task, max(0, measured - window))
    backward = (before - now) / window if math.isfinite(before) else now / max(1, measured)
    forward = now / max(1, task.trials_done)
    return weight * (alpha * backward + (1 - alpha) * forward)


def tune_tasks(
    tasks: list[TuningTask],
    trials: int,
    *,
    weights: list[float] | None = None,
    batch_size: int = 16,
    epsilon: float = 0.05,
    seed: int = 0,
    on_round: Callable[[TaskRound], None] | None = None,
) -> list[TuneResult]:
    """Spend ``trials`` measurements (this run) across ``tasks``; one result per task."""
    weights = weights or [1.0] * len(tasks)
    rng = random.Random(seed)
    spent = 0
    order = list(range(len(tasks)))  # warm-up: every task gets one round first
    while spent < trials:
        live = [i for i in range(len(tasks)) if not tasks[i].exhausted]
        if not live:
            break
        if order:
            index = order.pop(0)
            if tasks[index].exhausted:
                continue
        elif rng.random() < epsilon:
            index = rng.choice(live)
        else:
            index = max(live, key=lambda i: gradient(tasks[i], weights[i], batch_size))
        measured = tasks[index].step(min(batch_size, trials - spent))
        spent += measured
        if on_round is not None and measured:
            total = sum(w * t.best_latency for w, t in zip(weights, tasks, strict=True))
            on_round(TaskRound(index, measured, total))
    return [t.result() for t in tasks]
