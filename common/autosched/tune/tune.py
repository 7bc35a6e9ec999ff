"""tune(): the composition root of the tuning pipeline.

space generator → search strategy (asks the cost model) → measurer (builder + runner) →
records → cost model update → next batch. Earlier records of the same workload and target
count toward the budget and warm-start the cost model, so a resumed run re-measures nothing.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from autosched.hardware import HardwareParams, detect_hardware
from autosched.space import Config
from autosched.tune.database import Database, MemoryDatabase
from autosched.tune.measure import LocalMeasurer, Measurer
from autosched.tune.search_strategy import EvolutionarySearch, RandomSearch, SearchStrategy
from autosched.tune.space_generator import MetaTemplateSpace, SpaceGenerator
from autosched.tune.trial import MeasureInput, TrialRecord, TrialStatus, config_digest
from autosched.wire import Workload

StrategyName = Literal["evolutionary", "random"]


@dataclass(frozen=True)
class Progress:
    trials_done: int
    trials_total: int
    best_latency: float  # seconds, inf while nothing verified
    errors: dict[str, int]  # failed trials by status
    flops: float

    @property
    def best_gflops(self) -> float:
        return self.flops / self.best_latency / 1e9 if math.isfinite(self.best_latency) else 0.0


@dataclass(frozen=True)
class TuneResult:
    workload_key: str
    target: str
    best_config: Config | None  # fastest trial whose output matched the reference
    best_latency: float
    history: list[TrialRecord] = field(repr=False)  # this run's trials, in order
    resumed_trials: int = 0  # trials found in the records before this run


def _make_strategy(
    name: StrategyName, template, cost_model, seed: int, initial: list[Config]
) -> SearchStrategy:
    if name == "random":
        return RandomSearch(template, seed)
    return EvolutionarySearch(template, cost_model, seed, initial=initial)


class TuningTask:
    """One workload's tuning state: advanced a batch at a time by ``tune`` or by the task
    scheduler, which interleaves several tasks under one budget."""

    def __init__(
        self,
        workload: Workload,
        *,
        hw: HardwareParams,
        strategy: StrategyName = "evolutionary",
        database: Database | None = None,
        measurer: Measurer | None = None,
        cost_model=None,
        space: SpaceGenerator | None = None,
        seed: int = 0,
        work_dir: str | None = None,
        should_stop: Callable[[], object] | None = None,
    ) -> None:
        from autosched.analysis import flops
        from autosched.tune.cost_model import XGBModel

        self.workload = workload
        self.hw = hw
        self.target = hw.target_key
        space = space or MetaTemplateSpace()
        self.template = space.generate(workload, hw)
        self.database = database if database is not None else MemoryDatabase()
        self.cost_model = cost_model if cost_model is not None else XGBModel(seed=seed)
        previous = self.database.records(workload.key, self.target)
        if previous:  # warm start: the model learns from earlier runs before proposing
            self.cost_model.update(
                self.template, [r.config for r in previous], [r.result.latency for r in previous]
            )
        self._initial = space.initial_configs(workload, hw)
        self.search = _make_strategy(strategy, self.template, self.cost_model, seed, self._initial)
        #: digest -> lowest latency over a config's measurements, set by remeasure_best
        self.remeasured: dict[str, float] = {}
        self.search.pre_tuning(previous)
        #: a measurer this task created (and so must close): sandbox processes are not free
        self._owns_measurer = measurer is None
        if measurer is None:
            measurer = LocalMeasurer.create(
                work_dir or tempfile.mkdtemp(prefix="autosched-"),
                device="cuda:0" if hw.is_gpu else "cpu",
            )
        self.measurer = measurer
        self.resumed_trials = len(previous)
        self.trials_done = len(previous)
        self.history: list[TrialRecord] = []
        self.errors: dict[str, int] = {}
        self.flops = flops(workload.prim_func)
        self.exhausted = False
        #: asked before and after each batch: when true (cancel, a lease lost), the batch's
        #: results are discarded (the measurer may have stopped waiting for some) and the
        #: step measures nothing; the caller decides what stopping means
        self.should_stop = should_stop or (lambda: False)
        self._docs = (workload.to_json(), hw.to_json())

    @property
    def best(self) -> TrialRecord | None:
        if not self.remeasured:
            return self.database.best(self.workload.key, self.target)
        # After remeasure_best: the candidate with the lowest of its measurements.
        ok = {r.digest: r for r in self.database.records(self.workload.key, self.target) if r.ok}
        digest = min(self.remeasured, key=self.remeasured.__getitem__)
        record = ok[digest]
        return TrialRecord(
            record.workload_key,
            record.target,
            record.config,
            replace(record.result, latency=self.remeasured[digest]),
        )

    @property
    def best_latency(self) -> float:
        best = self.best
        return best.result.latency if best else math.inf

    def step(self, n: int) -> int:
        """Measure up to ``n`` new configs; returns how many were measured (0 also when
        ``should_stop`` said so)."""
        if self.should_stop():
            return 0
        configs = self.search.generate(n)
        if not configs:
            self.exhausted = True
            return 0
        inputs = [MeasureInput(self._docs[0], c.to_json(), self._docs[1]) for c in configs]
        results = self.measurer.measure(inputs)
        if self.should_stop():
            return 0
        for config, result in zip(configs, results, strict=True):
            record = TrialRecord(self.workload.key, self.target, config, result)
            self.database.commit(record)
            self.history.append(record)
            if result.status != TrialStatus.OK:
                self.errors[str(result.status)] = self.errors.get(str(result.status), 0) + 1
        self.search.notify(configs, results)
        self.cost_model.update(self.template, configs, [r.latency for r in results])
        self.trials_done += len(configs)
        return len(configs)

    def remeasure_best(
        self, top_k: int = 4, rounds: int = 2, *, measurer: Measurer | None = None
    ) -> None:
        """Measure the fastest few verified configs and the initial (static) ones again, in
        interleaved rounds, before naming the best.

        One measurement per config lets a burst of machine noise decide the winner: a strong
        config timed during a slow second loses to a weaker one. Noise only ever slows a
        kernel down, so each candidate keeps the minimum of all its measurements.

        ``measurer`` (default: the task's) is the service's way in: its measurer re-times
        recorded trials on a worker and records the timings in the database it shares.
        """
        ok = [r for r in self.database.records(self.workload.key, self.target) if r.ok]
        ranked = sorted(ok, key=lambda r: r.result.latency)[:top_k]
        digests = {r.digest for r in ranked}
        initial = {config_digest(c) for c in self._initial}
        ranked += [r for r in ok if r.digest in initial and r.digest not in digests]
        if len(ranked) < 2:
            return
        inputs = [
            MeasureInput(self._docs[0], r.config.to_json(), self._docs[1]) for r in ranked
        ] * rounds
        results = (measurer or self.measurer).measure(inputs)
        for i, result in enumerate(results):
            record = ranked[i % len(ranked)]
            if result.status == TrialStatus.OK:
                best = min(self.remeasured.get(record.digest, math.inf), result.latency)
                self.remeasured[record.digest] = min(best, record.result.latency)

    def close(self) -> None:
        if self._owns_measurer:
            self.measurer.close()

    def progress(self, total: int) -> Progress:
        return Progress(self.trials_done, total, self.best_latency, dict(self.errors), self.flops)

    def result(self) -> TuneResult:
        best = self.best
        return TuneResult(
            self.workload.key,
            self.target,
            best.config if best else None,
            best.result.latency if best else math.inf,
            list(self.history),
            self.resumed_trials,
        )


def tune(
    workload: Workload,
    trials: int,
    *,
    hw: HardwareParams | None = None,
    strategy: StrategyName = "evolutionary",
    batch_size: int = 16,
    database: Database | None = None,
    measurer: Measurer | None = None,
    cost_model=None,
    space: SpaceGenerator | None = None,
    seed: int = 0,
    work_dir: str | None = None,
    on_batch: Callable[[Progress], None] | None = None,
    remeasure_top: int = 4,
) -> TuneResult:
    """Tune ``workload`` until ``trials`` trials (including earlier records) are measured,
    then re-measure the ``remeasure_top`` fastest (and the static config) before choosing."""
    task = TuningTask(
        workload,
        hw=hw or detect_hardware(),
        strategy=strategy,
        database=database,
        measurer=measurer,
        cost_model=cost_model,
        space=space,
        seed=seed,
        work_dir=work_dir,
    )
    try:
        if on_batch is not None:  # resumed trials show up before the first new batch
            on_batch(task.progress(trials))
        while task.trials_done < trials and not task.exhausted:
            if task.step(min(batch_size, trials - task.trials_done)) and on_batch is not None:
                on_batch(task.progress(trials))
        if remeasure_top > 0 and task.history:  # a resumed run that measured nothing new
            task.remeasure_best(remeasure_top)  # keeps its recorded best
        return task.result()
    finally:
        task.close()
