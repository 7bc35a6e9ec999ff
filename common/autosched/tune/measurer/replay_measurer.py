"""Replays recorded measurements (fake hardware for search tests, as Kernel Tuner's
simulation mode): recorded configs get their recorded result; others go to ``fallback``
(e.g. an analytic latency model) or fail as "not recorded"."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from autosched.space import Config
from autosched.tune.database import TrialRecord, config_digest
from autosched.tune.measure import MeasureInput, MeasureResult, TrialStatus
from autosched.tune.measurer.measurer import Measurer


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
