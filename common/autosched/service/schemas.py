"""Request and response models of the REST API, shared by the server and the Python client.

Latencies are seconds (None where nothing verified yet); times are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["static", "random", "evolutionary"]
Scope = Literal["submit", "worker", "admin"]


class StageView(BaseModel):
    name: str
    meta_template: str  # direct_compute | simple_reduction | complex_reduction | location_tunable
    reason: str  # why the analysis chose that meta-template
    iter_kinds: str  # one letter per block iter: S spatial, R reduction, O other
    extents: list[int]


class WorkloadView(BaseModel):
    """What ``POST /v1/workloads`` returns: the key, per-stage analysis and the template."""

    key: str
    name: str
    flops: float
    stages: list[StageView]
    # Template.to_json() for the target it was built for (the API host's, or the given one).
    template: dict[str, Any]
    target_key: str
    created: bool  # False when the workload was already stored


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Either workload keys already stored, or wire-format documents (stored on the way in).
    workload_keys: list[str] = Field(default_factory=list)
    workloads: list[dict[str, Any]] = Field(default_factory=list)
    device_key: str | None = None
    target: str | None = None  # a target key; resolved to a registered device key
    trials: int = Field(default=64, ge=1, le=100_000)  # per workload
    strategy: Strategy = "evolutionary"
    priority: int = Field(default=0, ge=-100, le=100)
    seed: int = 0

    @model_validator(mode="after")
    def _something_to_tune(self) -> JobCreate:
        if not self.workload_keys and not self.workloads:
            raise ValueError("give workload_keys or workloads")
        if self.device_key is None and self.target is None:
            raise ValueError("give device_key or target")
        return self


class CurvePoint(BaseModel):
    trial: int  # 1-based trial number within the job
    workload_key: str
    status: str  # TrialStatus
    latency: float | None
    gflops: float | None
    best_gflops: float | None  # best so far for that workload


class JobWorkloadView(BaseModel):
    workload_key: str
    name: str
    trials_done: int
    best_latency: float | None
    best_gflops: float | None
    static_latency: float | None
    speedup_over_static: float | None


class JobView(BaseModel):
    id: int
    state: str  # JobState
    device_key: str
    target_key: str | None
    strategy: Strategy
    priority: int
    trials_total: int  # all workloads
    trials_done: int
    best_latency: float | None  # summed over workloads, once each has a verified best
    best_gflops: float | None
    errors: dict[str, int]  # failed trials by status
    workloads: list[JobWorkloadView]
    error: str | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobDetail(JobView):
    curve: list[CurvePoint]


class ScheduleView(BaseModel):
    """A fetched schedule: apply ``config`` to the same compute declaration with
    ``autosched.schedule.apply_config`` (or replay ``trace``) and build it."""

    workload_key: str
    target_key: str
    source: Literal["tuned", "static"]  # static: nothing tuned yet, computed from hardware
    config: dict[str, Any]
    template: dict[str, Any]
    hardware: dict[str, Any]  # HardwareParams.to_json() the config was made for
    trace: list[Any]  # TVM trace JSON (schedule.trace_json): [instructions, decisions]
    latency: float | None  # measured (tuned only)
    gflops: float | None
    worker_id: str | None
    device_key: str | None
    tvm_version: str
    updated_at: datetime | None


class ScheduleLookup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: dict[str, Any]  # wire-format document; the server computes the key
    target: str | None = None


class WorkerRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker_id: str
    device_key: str
    target_key: str
    target: dict[str, Any]
    hardware: dict[str, Any]
    hostname: str


class WorkerView(BaseModel):
    id: str
    device_key: str
    target_key: str
    hardware: dict[str, Any]
    hostname: str
    state: str  # WorkerState
    registered_at: datetime
    last_heartbeat: datetime
    queue_depth: int  # trials queued or running for its device key
    trials_done: int
    errors: int


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    scopes: list[Scope]


class TokenCreated(BaseModel):
    id: int
    name: str
    scopes: list[Scope]
    token: str  # shown once; only its hash is stored


class ErrorBody(BaseModel):
    detail: str
