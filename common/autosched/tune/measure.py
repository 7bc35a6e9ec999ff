"""Measurers turn candidates into results: build and run them here (``LocalMeasurer``), or
replay recorded results (``ReplayMeasurer``, fake hardware for search tests, as Kernel
Tuner's simulation mode: recorded configs get their recorded result; others go to
``fallback``, e.g. an analytic latency model, or fail as "not recorded").

``measure`` is the pipeline itself: build a batch, run the ones that built, fold both stages
into one ``MeasureResult`` per candidate. Failures are results, never exceptions.
"""

from __future__ import annotations

import contextlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

from autosched.space import Config
from autosched.tune.builder import Builder, LocalBuilder
from autosched.tune.runner import LocalRunner, Runner, RunnerInput
from autosched.tune.trial import (
    MeasureInput,
    MeasureResult,
    TrialRecord,
    TrialStatus,
    config_digest,
)


def measure(builder: Builder, runner: Runner, inputs: list[MeasureInput]) -> list[MeasureResult]:
    """One ``MeasureResult`` per input, in order; artifacts are deleted after running."""
    builds = builder.build(inputs)
    to_run = [
        i
        for i, b in enumerate(builds)
        if b.status == TrialStatus.OK and b.artifact_path is not None
    ]
    try:
        runs = runner.run(
            [RunnerInput(str(builds[i].artifact_path), inputs[i].workload) for i in to_run]
        )
    finally:
        for b in builds:
            if b.artifact_path is not None:
                with contextlib.suppress(OSError):
                    os.remove(b.artifact_path)
    by_index = dict(zip(to_run, runs, strict=True))
    return [MeasureResult.from_stages(b, by_index.get(i)) for i, b in enumerate(builds)]


class Measurer(ABC):
    @abstractmethod
    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        """One result per input, in order; failures are results, never exceptions."""

    def close(self) -> None:
        """Release worker processes, if any."""
        return None


class LocalMeasurer(Measurer):
    def __init__(self, builder: Builder, runner: Runner) -> None:
        self.builder = builder
        self.runner = runner

    @classmethod
    def create(
        cls, work_dir: str, device: str = "cpu", replay: str | os.PathLike[str] | None = None
    ) -> LocalMeasurer:
        """Build here; run on ``device`` ("cpu" or "cuda:N"), or answer from the measurements
        recorded in ``replay`` (fake hardware: ``replay_runner``)."""
        if replay is not None:
            from autosched.tune.replay_runner import ReplayRunner

            return cls(LocalBuilder(work_dir), ReplayRunner(replay))
        runner = LocalRunner(work_dir) if device == "cpu" else LocalRunner(work_dir, device=device)
        return cls(LocalBuilder(work_dir), runner)

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        return measure(self.builder, self.runner, inputs)

    def close(self) -> None:
        self.builder.close()
        self.runner.close()


class ReplayMeasurer(Measurer):
    def __init__(
        self,
        records: Iterable[TrialRecord] = (),
        fallback: Callable[[Config], MeasureResult] | None = None,
    ) -> None:
        self.table = {r.digest: r.result for r in records}
        self.fallback = fallback
        self.calls: list[str] = []  # digests measured, in order (tests check re-measurement)

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        results = []
        for inp in inputs:
            config = Config.from_json(inp.config)
            digest = config_digest(config)
            self.calls.append(digest)
            if digest in self.table:
                results.append(self.table[digest])
            elif self.fallback is not None:
                results.append(self.fallback(config))
            else:
                results.append(
                    MeasureResult(TrialStatus.RUN_ERROR, math.inf, "config not in the recording")
                )
        return results
