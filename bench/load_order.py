"""``bench/load.py``'s completion-order rule for the burst of prioritised jobs (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# A batch's request and its grant are stamped by different statements: grants this close
# after a request are not counted against the gate.
GATE_SLACK_S = 0.25

ORDER_RULE = f"""\
Order rule. Jobs rank by priority (higher first), then age (created earlier first; id breaks
ties). A pair is inverted when the lower-ranked job finished first. An inversion is allowed
when the job that finished first already had a batch on the device (its first trial
dispatched) before the higher-ranked job first asked for the device (its first trial row
written): the device gate reorders only batches that wait, never one on the device, and a
job lets others through while it proposes its next batch. Any other inversion is
unexplained. Gate check: every batch grant (a batch's first dispatch) is compared with the
batches of other jobs that were waiting at that moment (trials written more than
{GATE_SLACK_S:g} s before the grant, dispatched after it): none may outrank it.
MET: every job succeeded with its trials, no unexplained inversion, no gate inversion."""


@dataclass(frozen=True)
class JobTiming:
    id: int
    priority: int
    created: float  # seconds (any common origin)
    finished: float | None
    asked: float | None  # first trial written: the job first asked for the device
    on_device: float | None  # first trial dispatched


def rank_key(job: JobTiming) -> tuple[int, float, int]:
    return (-job.priority, job.created, job.id)


@dataclass
class Inversions:
    pairs: int  # ranked pairs compared
    total: int
    allowed: int
    unexplained: list[tuple[int, int]] = field(default_factory=list)  # (overtaken, overtaker)


def completion_inversions(jobs: Sequence[JobTiming]) -> Inversions:
    """Inverted pairs among the finished jobs (see ``ORDER_RULE``)."""
    done = sorted((j for j in jobs if j.finished is not None), key=rank_key)
    result = Inversions(pairs=len(done) * (len(done) - 1) // 2, total=0, allowed=0)
    for i, high in enumerate(done):
        for low in done[i + 1 :]:
            assert high.finished is not None and low.finished is not None
            if low.finished >= high.finished:
                continue
            result.total += 1
            was_running = (
                low.on_device is not None and high.asked is not None and low.on_device < high.asked
            )
            if was_running:
                result.allowed += 1
            else:
                result.unexplained.append((high.id, low.id))
    return result


@dataclass(frozen=True)
class Batch:
    job: JobTiming
    requested: float  # its first trial row written
    granted: float  # dispatched


def merge_chunks(dispatches: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """One job's batches from its dispatches, each ``(first trial written, dispatched)``.

    A batch goes out as one task per online worker, each stamped by its own update; a
    dispatch whose trials were all written before the previous one left is a chunk of that
    batch (the next batch is proposed only after the previous one's results). Returns
    ``(requested, granted)`` per batch: the earliest write and the first chunk's dispatch.
    """
    batches: list[tuple[float, float]] = []
    for requested, granted in sorted(dispatches, key=lambda d: d[1]):
        if batches and requested <= batches[-1][1]:
            batches[-1] = (min(batches[-1][0], requested), batches[-1][1])
        else:
            batches.append((requested, granted))
    return batches


def gate_inversions(batches: Sequence[Batch], slack_s: float = GATE_SLACK_S) -> list[tuple]:
    """Grants made while a batch of a higher-ranked job waited: ``(granted job id, waiting
    job id, grant time)`` for each (see ``ORDER_RULE``)."""
    found = []
    for x in batches:
        for y in batches:
            if y.job.id == x.job.id or rank_key(y.job) >= rank_key(x.job):
                continue
            if y.requested + slack_s < x.granted < y.granted:
                found.append((x.job.id, y.job.id, x.granted))
    return found
