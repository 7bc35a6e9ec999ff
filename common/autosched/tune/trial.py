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
    # The machine failed, not the kernel: the reference output could not be computed, the
    # measurer broke, the worker died holding the trial (``poison`` once it did so repeatedly).
    ENV_ERROR = "env_error"


class Fault(StrEnum):
    """Whose fault a trial's failure is: it decides whether the trial is measured again."""

    NONE = "none"  # it succeeded
    KERNEL = "kernel"  # deterministic: this config fails everywhere; never retried
    ENVIRONMENT = "environment"  # this machine, now: retried on a worker, up to a cap


#: Timeouts are the environment's: under load a build or a run that fits its budget on an
#: idle machine does not (a config that hangs everywhere fails after the retry cap).
_ENVIRONMENT_STATUSES = frozenset(
    {TrialStatus.BUILD_TIMEOUT, TrialStatus.RUN_TIMEOUT, TrialStatus.ENV_ERROR}
)
#: Operating-system errors that describe the machine, not the kernel, whatever stage
#: reported them as its error (strerror of ENOSPC, EDQUOT, ENOMEM).
ENVIRONMENT_MARKERS = ("No space left on device", "Disk quota exceeded", "Cannot allocate memory")


#: How a runner's error starts when the reference output could not be computed.
REFERENCE_FAILED = "reference failed"


def classify(status: TrialStatus, error: str | None = None) -> Fault:
    """The fault of a trial that ended with ``status`` and ``error``."""
    if status == TrialStatus.OK:
        return Fault.NONE
    if status in _ENVIRONMENT_STATUSES:
        return Fault.ENVIRONMENT
    if error and any(marker in error for marker in ENVIRONMENT_MARKERS):
        return Fault.ENVIRONMENT
    return Fault.KERNEL


def blames_worker(status: TrialStatus, error: str | None = None) -> bool:
    """Whether a failure says the worker's machine is broken (a full disk, no memory, its
    measurer crashed), as opposed to a timeout or a reference failure, which a slow or an
    unusual workload causes on every machine: only these count toward quarantining it."""
    if error and any(marker in error for marker in ENVIRONMENT_MARKERS):
        return True
    return status == TrialStatus.ENV_ERROR and not (error or "").startswith(REFERENCE_FAILED)


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
    status: TrialStatus  # OK, RUN_ERROR, RUN_TIMEOUT, WRONG_ANSWER or ENV_ERROR
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

    @property
    def fault(self) -> Fault:
        return classify(self.status, self.error)

    @property
    def blames_worker(self) -> bool:
        return blames_worker(self.status, self.error)

    @property
    def final(self) -> bool:
        """Whether this result is the trial's answer: a success or the kernel's fault. An
        environment failure is measured again (elsewhere) before it is recorded."""
        return self.fault != Fault.ENVIRONMENT

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
