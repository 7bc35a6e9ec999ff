"""The words the server, the client, the bench scripts and the dashboard share.

Job, trial and worker states and the form of a target key, defined once. Standard library
only: the client and the bench import it without SQLAlchemy or TVM, the ORM columns take their
values from it, and the dashboard's scripts read ``as_json()`` from the page (never a copy).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"  # waiting for the scheduler (or for a worker of its device key)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
#: Not yet ended: what quotas count and what a scheduler may claim or still change.
ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


class TrialState(StrEnum):
    QUEUED = "queued"  # row written, measure task sent to the device queue
    RUNNING = "running"  # a worker claimed it
    DONE = "done"  # result recorded (status says whether it succeeded)
    CANCELLED = "cancelled"  # its job was cancelled before a worker measured it


#: Sent to a device's queue and not yet recorded: what a queue depth counts.
IN_FLIGHT_TRIAL_STATES = (TrialState.QUEUED, TrialState.RUNNING)


class WorkerState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


#: What ``target_key`` (``llvm/<mcpu>/<cores>c/<vector bits>b``) and ``gpu_target_key``
#: (``cuda/<arch>/<SMs>sm/<shared memory per block, KiB>k``) make (column: 120).
TARGET_KEY_PATTERN = (
    r"^(?:[a-z]{1,16}/[a-z][a-z0-9_.-]{0,63}/[0-9]{1,4}c/[0-9]{1,4}b"
    r"|cuda/sm_[0-9]{2,3}[a-z]?/[0-9]{1,4}sm/[0-9]{1,5}k)$"
)


def target_key(kind: str, mcpu: str, num_cores: int, vector_bits: int) -> str:
    """Records are shared between machines with the same key (same code generation)."""
    return f"{kind}/{mcpu}/{num_cores}c/{vector_bits}b"


def gpu_target_key(arch: str, sm_count: int, shared_memory_per_block: int) -> str:
    """A GPU's key names what code generation and the knob domains depend on: the
    architecture, the SM count (grid sizing) and the shared memory a block may use. The
    host CPU that builds is not part of it, so every H200 shares one key."""
    return f"cuda/{arch}/{sm_count}sm/{shared_memory_per_block // 1024}k"


def as_json() -> dict[str, Any]:
    """What the dashboard's scripts need, embedded in each page as JSON data."""
    return {
        "job_states": [s.value for s in JobState],
        "terminal_job_states": sorted(TERMINAL_JOB_STATES),
        "trial_states": [s.value for s in TrialState],
        "worker_states": [s.value for s in WorkerState],
    }
