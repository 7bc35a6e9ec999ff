"""The one settings object (environment variables prefixed ``AUTOSCHED_``).

``DATABASE_URL`` and ``REDIS_URL`` are also read without the prefix, the names every
PostgreSQL/Redis deployment already sets. With neither set, the service runs embedded: a
SQLite file and a SQLite-backed Celery broker under ``data_dir``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTOSCHED_", extra="ignore")

    # Hardware overrides for static scheduling; None means detect from the host.
    num_cores: int | None = Field(default=None, ge=1)
    vector_bits: int | None = Field(default=None, ge=64)
    l1_bytes: int | None = Field(default=None, ge=1024)
    l2_bytes: int | None = Field(default=None, ge=1024)
    # GPU overrides: a TVM target tag to build for a card this host lacks
    # ("nvidia/nvidia-h100"), and the limits the CUDA templates size knobs by.
    gpu_tag: str | None = None
    gpu_sm_count: int | None = Field(default=None, ge=1)
    gpu_max_threads_per_block: int | None = Field(default=None, ge=32)
    gpu_max_shared_memory_per_block: int | None = Field(default=None, ge=1024)

    # Wire-format limits: a compute declaration over any of these is refused before building.
    max_stages: int = 256
    max_rank: int = 8
    max_expr_depth: int = 64
    max_expr_nodes: int = 20_000
    max_tensor_bytes: int = 4 * 1024**3
    max_total_bytes: int = 16 * 1024**3
    max_json_bytes: int = 4 * 1024**2
    # Work limits, so that no document costs more than its size suggests (a reduce extent of
    # 2**52 over a 4x4 input passes every byte limit). Real networks stay far below: the
    # largest LLM matmuls are ~2**41 iterations, a flattened 4 GiB tensor 2**30 elements.
    max_axis_extent: int = Field(default=2**30, ge=1)
    max_stage_iterations: int = Field(default=2**44, ge=1)  # spatial x reduction extents
    max_workload_iterations: int = Field(default=2**46, ge=1)  # summed over stages
    # Building a workload's PrimFunc, analysis and template runs in a sandbox process that is
    # killed after this long (the API answers 422), so no request holds the API.
    template_timeout_s: float = Field(default=30.0, gt=0)

    # Service: where state lives. Unset URLs mean the embedded default under data_dir.
    data_dir: Path = Path(".autosched")
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AUTOSCHED_DATABASE_URL", "DATABASE_URL")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AUTOSCHED_REDIS_URL", "REDIS_URL")
    )
    # A service that finds the schema behind migrates it under the migration lock (on), or
    # waits this long for `autosched db upgrade` and then exits (off: one release step
    # migrates). `autosched db upgrade` and `autosched up` always migrate.
    auto_migrate: bool = True
    schema_wait_s: float = Field(default=60.0, ge=0)

    # API server, and where clients and workers find it.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    # API processes (uvicorn workers); more than one spreads schedule fetches over the cores.
    api_workers: int = Field(default=1, ge=1, le=64)
    api_url: str = "http://127.0.0.1:8000"
    # A client's bearer token (the CLI's submit/fetch commands send it).
    api_token: SecretStr | None = None
    # Operators may let anyone read published schedules (the TopHub use case).
    anonymous_reads: bool = True
    # Off only for a trusted single-user machine: every write then needs no token.
    auth_required: bool = True

    # Device farm: a worker heartbeats every interval; one silent for timeout is offline
    # and its in-flight trials go back to the queue.
    device_key: str | None = None  # a worker's queue; None derives it from the hardware
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    # Scheduler: measure batches in flight per device key (fair sharing between jobs).
    batches_in_flight_per_device: int = Field(default=1, ge=1)
    batch_size: int = Field(default=8, ge=1)
    # A trial still unclaimed this long after it was sent is sent again even while its
    # device's queue holds messages (a duplicate claims nothing).
    trial_redispatch_s: float = Field(default=600.0, gt=0)
    # A trial no worker claimed this long after it was sent, while its device's queue is
    # empty, lost its message (a broker restart without its data): it is sent again. The
    # same holds for a final re-measurement nobody did (the wait doubles after each resend).
    # A claimed trial is left to its worker, whose heartbeats tell whether it lives.
    trial_unclaimed_resend_s: float = Field(default=60.0, gt=0)
    # A worker holding measured results keeps trying to store them through a database
    # outage this long (a restart or failover) before it gives up and hands the trials back.
    worker_write_retry_s: float = Field(default=120.0, ge=0)
    # Failures of the environment (a timeout under load, a full disk, a reference output
    # that could not be computed, a worker that died holding the trial) hand a trial back
    # to the queue; at this many it is recorded as failed with the reason. A trial whose
    # workers died this many times is a poison trial: quarantined, never sent again.
    max_trial_attempts: int = Field(default=3, ge=1)
    # Where a worker makes its work directory (built libraries, reference outputs); None:
    # the system's temporary directory. Its own volume keeps a full disk there from
    # starving the rest of the host (and lets the fault tests fill it).
    worker_work_root: Path | None = None
    # A worker whose last this-many trials all failed in a way that blames its machine (a
    # full disk, no memory, its measurer broken; not timeouts) quarantines itself: it keeps
    # heartbeating (shown on the farm page) and claims no more work.
    worker_quarantine_after: int = Field(default=5, ge=1)

    # Sandboxes (builder and runner processes): per-process address space (None: the
    # machine's memory shared among the pool, at most 8 GiB) and CPU seconds per process.
    sandbox_memory_bytes: int | None = Field(default=None, ge=256 * 1024**2)
    sandbox_cpu_s: int = Field(default=600, ge=1)

    # Abuse limits (limits-library rate strings: "120/minute"). Anonymous reads are limited
    # per client address, submissions (workloads, jobs, lookups) per token.
    anonymous_rate_limit: str = "300/minute"
    submit_rate_limit: str = "60/minute"
    # Per-token quotas: jobs queued or running at once, workloads in one job, trials in one
    # job (all workloads together).
    quota_active_jobs: int = Field(default=16, ge=1)
    quota_workloads_per_job: int = Field(default=64, ge=1)
    quota_trials_per_job: int = Field(default=20_000, ge=1)
    # Origins (scheme://host[:port]) besides the API's own that may send state-changing
    # requests from a browser; requests without an Origin header (CLI, curl) are not browsers.
    allowed_origins: list[str] = Field(default_factory=list)

    # Schedule fetches: answers kept per API process, checked against the stored best
    # config at each request (0 turns the cache off).
    schedule_cache_entries: int = Field(default=4096, ge=0)
    # A token's last_used_at is written at most once per this interval, not on every request.
    token_touch_interval_s: float = Field(default=60.0, ge=0)

    log_json: bool = False

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'autosched.db').resolve()}"

    @property
    def broker_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        # kombu's SQLAlchemy transport: a broker with no server, for the embedded default.
        return f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def embedded(self) -> bool:
        return not self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
