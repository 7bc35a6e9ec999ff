"""The records store: every trial, keyed by workload key and target."""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from autosched.space import Config
from autosched.tune.measure import MeasureResult, TrialStatus


def config_digest(config: Config) -> str:
    """Identity of a config: two configs with equal knob values are the same trial."""
    text = json.dumps(config.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()


@dataclass(frozen=True)
class TrialRecord:
    workload_key: str
    target: str  # a stable target key, e.g. "llvm/znver3/2c/256b"
    config: Config
    result: MeasureResult

    @property
    def digest(self) -> str:
        return config_digest(self.config)

    @property
    def ok(self) -> bool:
        return self.result.status == TrialStatus.OK and math.isfinite(self.result.latency)

    def to_json(self) -> dict[str, Any]:
        return {
            "workload_key": self.workload_key,
            "target": self.target,
            "config": self.config.to_json(),
            "result": self.result.to_json(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TrialRecord:
        return cls(
            doc["workload_key"],
            doc["target"],
            Config.from_json(doc["config"]),
            MeasureResult.from_json(doc["result"]),
        )


class Database(ABC):
    @abstractmethod
    def commit(self, record: TrialRecord) -> None:
        """Store one trial (idempotent for the same workload, target and config)."""

    @abstractmethod
    def records(self, workload_key: str, target: str) -> list[TrialRecord]:
        """All trials of a workload on a target, in commit order."""

    def best(self, workload_key: str, target: str) -> TrialRecord | None:
        """The fastest verified trial: wrong answers and failures never qualify."""
        ok = [r for r in self.records(workload_key, target) if r.ok]
        return min(ok, key=lambda r: r.result.latency) if ok else None
