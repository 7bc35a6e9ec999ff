"""The values a trial is made of, as they cross the tuning pipeline's stage boundaries.

Failures are data: every trial ends with a status and a message, and a failed trial costs
infinity. Inputs carry only JSON documents (wire-format workload, config, hardware), so they
can cross process boundaries (sandboxes, Celery) without pickling TVM objects. A
``TrialRecord`` is what the records store keeps: a config and its result, keyed by workload
and target, identified by ``config_digest``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from autosched.space import Config


class TrialStatus(StrEnum):
    OK = "ok"
    BUILD_ERROR = "build_error"
    BUILD_TIMEOUT = "build_timeout"
    RUN_ERROR = "run_error"
    RUN_TIMEOUT = "run_timeout"
    WRONG_ANSWER = "wrong_answer"


@dataclass(frozen=True)
class MeasureInput:
    """One candidate: apply ``config`` to the workload, build for ``hardware``, measure."""

    workload: dict[str, Any]  # wire-format document
    config: dict[str, Any]  # Config.to_json()
    hardware: dict[str, Any]  # HardwareParams.to_json()


@dataclass(frozen=True)
class BuildResult:
    artifact_path: str | None  # exported shared library, None on failure
    status: TrialStatus  # OK, BUILD_ERROR or BUILD_TIMEOUT
    error: str | None = None
    build_secs: float = 0.0


@dataclass(frozen=True)
class RunResult:
    status: TrialStatus  # OK, RUN_ERROR, RUN_TIMEOUT or WRONG_ANSWER
    latencies: tuple[float, ...] = ()  # seconds per call, one per repeat
    error: str | None = None
    run_secs: float = 0.0

    @property
    def latency(self) -> float:
        """Median seconds per call; infinity for any failure."""
        if self.status != TrialStatus.OK or not self.latencies:
            return math.inf
        ordered = sorted(self.latencies)
        return ordered[len(ordered) // 2]


@dataclass(frozen=True)
class MeasureResult:
    """What a trial produced: build and run folded into one status."""

    status: TrialStatus
    latency: float  # seconds; inf unless status is OK
    error: str | None = None
    build_secs: float = 0.0
    run_secs: float = 0.0
    latencies: tuple[float, ...] = field(default=())

    @classmethod
    def from_stages(cls, build: BuildResult, run: RunResult | None) -> MeasureResult:
        if build.status != TrialStatus.OK or run is None:
            return cls(build.status, math.inf, build.error, build.build_secs)
        return cls(
            run.status, run.latency, run.error, build.build_secs, run.run_secs, run.latencies
        )

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["status"] = str(self.status)
        doc["latency"] = None if math.isinf(self.latency) else self.latency
        doc["latencies"] = list(self.latencies)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> MeasureResult:
        latency = doc.get("latency")
        return cls(
            TrialStatus(doc["status"]),
            math.inf if latency is None else float(latency),
            doc.get("error"),
            float(doc.get("build_secs", 0.0)),
            float(doc.get("run_secs", 0.0)),
            tuple(doc.get("latencies", ())),
        )


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
