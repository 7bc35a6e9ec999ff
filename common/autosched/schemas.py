"""Request and response models of the REST API, shared by the server and the Python client.

Latencies are seconds (None where nothing verified yet); times are timezone-aware UTC.

Every request field is bounded here, before anything reaches the database: strings by the
length of their column and a pattern, integers by the column's type (int32), lists and
dicts by size. A request outside them is a 422 that names the field, never a 500 from the
database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    computed_field,
    model_validator,
)

from autosched.vocabulary import TARGET_KEY_PATTERN

Strategy = Literal["static", "random", "evolutionary"]
Scope = Literal["submit", "worker", "admin"]

INT32_MAX = 2**31 - 1
#: Ids of rows (jobs, tokens): Integer primary keys.
RowId = Annotated[int, Field(ge=1, le=INT32_MAX)]
#: Celery queue names are ``device.<key>``: letters, digits and . _ - only (column: 120).
DEVICE_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
DeviceKey = Annotated[str, StringConstraints(max_length=120, pattern=DEVICE_KEY_PATTERN)]
#: ``v<format version>-<16 hex digits>`` (wire/key.py; column: 80).
WORKLOAD_KEY_PATTERN = r"^v[0-9]{1,4}-[0-9a-f]{16}$"
WORKLOAD_KEY_MAX = 80  # workloads.key's column
WorkloadKey = Annotated[
    str, StringConstraints(max_length=WORKLOAD_KEY_MAX, pattern=WORKLOAD_KEY_PATTERN)
]
#: vocabulary.target_key's form (column: 120).
TARGET_KEY_MAX = 120  # the target_key columns
TargetKey = Annotated[str, StringConstraints(max_length=TARGET_KEY_MAX, pattern=TARGET_KEY_PATTERN)]
#: A worker's id, ``host:pid:uuid`` by default (column: 200).
WORKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
WorkerId = Annotated[str, StringConstraints(max_length=200, pattern=WORKER_ID_PATTERN)]
HOSTNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
Hostname = Annotated[str, StringConstraints(max_length=200, pattern=HOSTNAME_PATTERN)]
#: Printable names without control characters (column: 200).
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NAME_PATTERN)]
#: Hard bounds on list sizes; the per-token quotas (settings) are usually lower.
MAX_JOB_WORKLOADS = 1000
MAX_TOKEN_DEVICE_KEYS = 64


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
    workload_keys: list[WorkloadKey] = Field(default_factory=list, max_length=MAX_JOB_WORKLOADS)
    workloads: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_JOB_WORKLOADS)
    device_key: DeviceKey | None = None
    target: TargetKey | None = None  # resolved to a registered device key
    trials: int = Field(default=64, ge=1, le=100_000)  # per workload
    strategy: Strategy = "evolutionary"
    priority: int = Field(default=0, ge=-100, le=100)
    seed: int = Field(default=0, ge=0, le=INT32_MAX)  # stored as a 32-bit integer

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


def summed_latency(latencies: Iterable[float | None]) -> float | None:
    """A job's latency: its workloads' added up, None unless every one is known."""
    values = list(latencies)
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def speedup_over_static(static: float | None, best: float | None) -> float | None:
    """How many times faster the best schedule runs than the static one (static latency
    over best latency); None until both are measured and the best is above zero."""
    if static is None or best is None or best <= 0:
        return None
    return static / best


class JobWorkloadView(BaseModel):
    workload_key: str
    name: str
    trials_done: int
    best_latency: float | None
    best_gflops: float | None
    static_latency: float | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def speedup_over_static(self) -> float | None:
        return speedup_over_static(self.static_latency, self.best_latency)


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

    @computed_field  # type: ignore[prop-decorator]
    @property
    def static_latency(self) -> float | None:
        """Summed over workloads, once each has its static schedule measured."""
        return summed_latency(w.static_latency for w in self.workloads)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def speedup_over_static(self) -> float | None:
        """The job's best schedules against the static ones: summed static latencies over
        summed best ones, None until every workload has its own speedup."""
        if not self.workloads or any(w.speedup_over_static is None for w in self.workloads):
            return None
        return speedup_over_static(
            self.static_latency, summed_latency(w.best_latency for w in self.workloads)
        )


class JobDetail(JobView):
    curve: list[CurvePoint]


class TrialView(BaseModel):
    id: int
    # 1-based position among the job's done trials, the curve's x (None until done).
    number: int | None
    workload_key: str
    state: str  # TrialState
    status: str | None  # TrialStatus, once done
    latency: float | None  # seconds
    gflops: float | None
    error: str | None
    worker_id: str | None
    build_secs: float | None
    run_secs: float | None
    dispatch_count: int
    dispatched_at: datetime | None
    finished_at: datetime | None


class TrialPage(BaseModel):
    """What ``GET /v1/jobs/{id}/trials`` returns."""

    total: int  # all trials of the job (the list may hold only the newest ``limit``)
    trials: list[TrialView]  # done trials by number, then those still queued or running


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


class BestSchedule(BaseModel):
    """One cached best schedule (``best_configs`` row) with its provenance, as
    ``GET /v1/schedules`` lists them."""

    workload_key: str
    workload_name: str
    target_key: str
    latency: float
    gflops: float
    worker_id: str | None
    device_key: str
    tvm_version: str
    updated_at: datetime
    trial_id: int
    job_id: int | None  # the job that measured it


class ScheduleLookup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: dict[str, Any]  # wire-format document; the server computes the key
    target: TargetKey | None = None


class WorkerRegister(BaseModel):
    """The server derives the target key and the TVM target from ``hardware`` (validated by
    ``autosched.host_description.HostDescription.from_report``); ``target_key`` and
    ``target``, when sent, must agree with it (422 otherwise)."""

    model_config = ConfigDict(extra="forbid")

    worker_id: WorkerId
    device_key: DeviceKey
    target_key: TargetKey | None = None
    target: dict[str, Any] | None = Field(default=None, max_length=64)
    hardware: dict[str, Any] = Field(max_length=16)
    hostname: Hostname


class WorkerView(BaseModel):
    # Anonymous views carry a pseudonym (``w-<hash>``) instead of the id, which embeds the
    # host name, and no hostname.
    id: str
    device_key: str
    target_key: str
    hardware: dict[str, Any]
    hostname: str | None
    state: str  # WorkerState
    registered_at: datetime
    last_heartbeat: datetime
    queue_depth: int  # trials queued or running for its device key
    trials_done: int
    errors: int
    # Quarantined: its sandboxes kept failing for environment reasons (full disk, ...), so
    # it claims no work until it registers again; the reason is hidden from anonymous views.
    quarantined: bool = False
    quarantined_at: datetime | None = None
    quarantine_reason: str | None = None


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    scopes: list[Scope] = Field(max_length=3)  # none: a token that only reads
    # Worker tokens: the device keys it may register workers for (none: it registers nothing).
    device_keys: list[DeviceKey] = Field(default_factory=list, max_length=MAX_TOKEN_DEVICE_KEYS)


class TokenCreated(BaseModel):
    id: int
    name: str
    scopes: list[Scope]
    device_keys: list[str] = Field(default_factory=list)
    token: str  # shown once; only its hash is stored


class ErrorBody(BaseModel):
    detail: str
