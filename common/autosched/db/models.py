"""SQLAlchemy 2 models: the service's state (PostgreSQL when distributed, SQLite embedded).

JSON columns hold the same documents the library already round-trips (wire-format workloads,
``Config.to_json()``, ``Template.to_json()``, ``HardwareParams.to_json()``), never pickles.
Alembic migrations in ``migrations/`` create these tables; keep both in step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    literal,
    select,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

from autosched.vocabulary import JobState, TrialState, WorkerState


def utcnow() -> datetime:
    """This process's clock: for times only shown or recorded. What another process compares
    (liveness) is written with ``db_now``."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both backends (SQLite would hand back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class db_now(FunctionElement[datetime]):
    """The database's clock, plus ``offset_s`` seconds, as an SQL expression.

    Liveness times (heartbeats, job leases, dispatch and re-measure times) are written
    with it and compared against it in the same SQL, so one clock decides and a process
    whose own clock is skewed is judged fairly (``utcnow`` is for what is only shown).
    PostgreSQL: ``now()`` (the transaction's start) plus an interval. SQLite: the same UTC
    text SQLAlchemy stores (``YYYY-MM-DD HH:MM:SS.ffffff``, here in milliseconds), so text
    comparison orders it correctly against stored values.
    """

    type = UTCDateTime()
    inherit_cache = True

    def __init__(self, offset_s: float = 0.0) -> None:
        super().__init__(literal(float(offset_s), Float()))


@compiles(db_now, "postgresql")
def _db_now_postgresql(element: db_now, compiler: Any, **kw: Any) -> str:
    return f"(now() + make_interval(secs => {compiler.process(element.clauses, **kw)}))"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', julianday('now') + ({offset}) / 86400.0) || '000')"


def database_time(session: Session) -> datetime:
    """The database's current time (``db_now()``), for a value compared later in SQL."""
    value = session.scalar(select(db_now()))
    assert value is not None
    return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class WorkloadRow(Base):
    """A compute declaration, stored once per workload key."""

    __tablename__ = "workloads"
    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    wire: Mapped[dict[str, Any]] = mapped_column(JSON)  # the wire-format document
    flops: Mapped[float] = mapped_column(Float, default=0.0)
    analysis: Mapped[list[Any]] = mapped_column(JSON)  # per-stage meta-template, in order
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TemplateRow(Base):
    """A workload's serializable search space for one target (knobs depend on hardware)."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("workload_key", "target_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workload_key: Mapped[str] = mapped_column(ForeignKey("workloads.key"), index=True)
    target_key: Mapped[str] = mapped_column(String(120))
    template: Mapped[dict[str, Any]] = mapped_column(JSON)  # Template.to_json()
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON)  # HardwareParams.to_json()
    static_config: Mapped[dict[str, Any]] = mapped_column(JSON)  # Config.to_json()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    device_key: Mapped[str] = mapped_column(String(120), index=True)
    # Filled when the scheduler resolves the device's hardware (records are keyed by it).
    target_key: Mapped[str | None] = mapped_column(String(120), nullable=True)
    strategy: Mapped[str] = mapped_column(String(16))  # static | random | evolutionary
    trials_per_workload: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    # The submit token that created it (quotas count, only it and admins cancel); None when
    # auth is off (trusted single-user mode) or the job was written in-process.
    owner_token_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_tokens.id"), nullable=True, index=True
    )
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Which scheduler process runs the job, and until when its claim holds: a job whose
    # lease lapsed (scheduler killed) is picked up again and resumes from its trials.
    scheduler_id: Mapped[str | None] = mapped_column(String(120), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    workloads: Mapped[list[JobWorkload]] = relationship(
        back_populates="job", order_by="JobWorkload.position", cascade="all, delete-orphan"
    )


class JobWorkload(Base):
    """One workload of a job (a job may tune several under one budget)."""

    __tablename__ = "job_workloads"
    __table_args__ = (UniqueConstraint("job_id", "workload_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    workload_key: Mapped[str] = mapped_column(ForeignKey("workloads.key"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    # Latency of the static schedule, measured first: the "speedup over static" baseline.
    static_latency: Mapped[float | None] = mapped_column(Float, nullable=True)
    job: Mapped[Job] = relationship(back_populates="workloads")


class Trial(Base):
    """One measured (or to-be-measured) config. Written by the scheduler before dispatch;
    the worker fills the result once (a redelivered task finds it done and stores nothing)."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "workload_key", "config_digest"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    workload_key: Mapped[str] = mapped_column(ForeignKey("workloads.key"), index=True)
    target_key: Mapped[str] = mapped_column(String(120), index=True)
    device_key: Mapped[str] = mapped_column(String(120), index=True)
    config_digest: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=TrialState.QUEUED, index=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)  # TrialStatus
    latency: Mapped[float | None] = mapped_column(Float, nullable=True)  # seconds; None = inf
    latencies: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    build_secs: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_secs: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0)
    # Environment failures so far (timeouts, full disk, reference failure, its worker lost)
    # and the last one's reason: the trial was handed back to the queue for each.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # How many of those attempts ended with its worker dead (reaped holding it): a poison
    # trial, quarantined at ``max_trial_attempts``; sent alone once it killed one.
    workers_lost: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Set when a worker timed a finished trial again (the job's final re-measurement of its
    # best few): ``latency`` then holds the lowest of all its timings.
    remeasured_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BestConfig(Base):
    """The fastest *verified* trial of a workload on a target: what clients fetch."""

    __tablename__ = "best_configs"
    workload_key: Mapped[str] = mapped_column(ForeignKey("workloads.key"), primary_key=True)
    target_key: Mapped[str] = mapped_column(String(120), primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    trace: Mapped[list[Any]] = mapped_column(JSON)  # schedule.trace_json(...)
    latency: Mapped[float] = mapped_column(Float)
    gflops: Mapped[float] = mapped_column(Float)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device_key: Mapped[str] = mapped_column(String(120))
    tvm_version: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid:uuid
    device_key: Mapped[str] = mapped_column(String(120), index=True)
    target_key: Mapped[str] = mapped_column(String(120))
    target: Mapped[dict[str, Any]] = mapped_column(JSON)  # TVM target as JSON
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON)  # HardwareParams.to_json()
    hostname: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=WorkerState.ONLINE, index=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The token that registered it: only that token (or an admin) may heartbeat it or
    # register it again. None: registered in-process by a worker with database access.
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"), nullable=True)
    # Trials in a row whose failure blamed this worker's machine (reset by any other
    # outcome); at ``worker_quarantine_after`` it is quarantined: it stays registered and
    # heartbeating, but claims nothing until it registers again (an operator restarts it).
    env_failure_streak: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    quarantined_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    quarantine_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Device(Base):
    """A device key's hardware, pinned by its first registration: workers reporting other
    hardware under the key are refused (an admin token re-pins). Jobs may only name a key
    that has a row here, and templates for its jobs are built from this hardware."""

    __tablename__ = "devices"
    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    target_key: Mapped[str] = mapped_column(String(120))
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON)  # HardwareParams.to_json()
    pinned_by_token_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_tokens.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    pinned_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiToken(Base):
    """A bearer token, stored only as its SHA-256 (tokens are 256 random bits, so a plain
    hash is enough; there is nothing to brute-force)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(JSON)  # subset of submit, worker, admin
    # The device keys a worker token may register workers for (empty: none).
    device_keys: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
