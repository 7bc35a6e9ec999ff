"""What every fault test checks and prints once its work ended (``pytest -m fault`` runs the
fault-injection suite alone).

``check_jobs`` (or ``FaultOutcome.check`` for a fault without a job) prints one line
``FAULT <name>: budget=… recorded=… duplicates=… lost=… recover_s=…`` and fails unless the
budget was recorded exactly, nothing twice and no verified result lost.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from autosched.db import BestConfig, Trial, session_scope
from autosched.tune.trial import TrialStatus
from autosched.vocabulary import TrialState

#: A best config's latency is the verified trial's own number (copied, not re-measured).
SAME_LATENCY = 1e-9


@dataclass(frozen=True)
class FaultOutcome:
    """How a fault test's work ended: ``recorded`` results for a ``budget``, ``duplicates``
    (a config measured twice, or a result stored twice), ``lost`` (a verified result that
    did not reach its workload's best config), and the seconds the system took to recover
    from the fault."""

    name: str
    budget: int
    recorded: int
    duplicates: int
    lost: int
    recover_s: float

    def summary(self) -> str:
        return (
            f"FAULT {self.name}: budget={self.budget} recorded={self.recorded} "
            f"duplicates={self.duplicates} lost={self.lost} recover_s={self.recover_s:.1f}"
        )

    def check(self) -> None:
        """Print the summary line (``-s`` shows it), then fail unless the budget was recorded
        exactly, with no duplicate and nothing lost."""
        print(f"\n{self.summary()}", flush=True)
        assert self.recorded == self.budget, self.summary()
        assert self.duplicates == 0, self.summary()
        assert self.lost == 0, self.summary()


def tally(
    name: str,
    budget: int,
    trials: Iterable[Trial],
    best: dict[tuple[str, str], float],
    recover_s: float,
    stored: int | None = None,
) -> FaultOutcome:
    """The outcome of ``trials`` (every trial row of the jobs under test) against ``best``
    ((workload key, target key) -> its best config's latency). ``stored``: the results the
    workers say they wrote, when the test can count them; more than the finished rows is a
    result written twice."""
    trials = list(trials)
    done = [t for t in trials if t.state == TrialState.DONE]
    configs = Counter((t.workload_key, t.config_digest) for t in trials)
    duplicates = sum(n - 1 for n in configs.values())
    if stored is not None:
        duplicates += max(0, stored - len(done))
    fastest: dict[tuple[str, str], float] = {}
    for trial in done:
        if trial.status == TrialStatus.OK and trial.latency is not None:
            key = (trial.workload_key, trial.target_key)
            fastest[key] = min(trial.latency, fastest.get(key, trial.latency))
    lost = sum(
        1
        for key, latency in fastest.items()
        if key not in best or best[key] > latency * (1 + SAME_LATENCY)
    )
    return FaultOutcome(name, budget, len(done), duplicates, lost, recover_s)


#: A worker's line per measured batch, tagged with its job (``autosched.logs``):
#: ``[job=7 trials=1,2,3,4] measured 4 trials in 2.1 s: ...; recorded 4 of 4 claimed, ...``.
_BATCH_RECORDED = re.compile(r"\[job=(\d+)[^\]]*\][^\n]*; recorded (\d+) of \d+ claimed")


def results_recorded(worker_logs: str, job_ids: Iterable[int]) -> int:
    """The results the workers say (in ``worker_logs``) they stored for ``job_ids``: each
    result counted once per write, so a result written twice shows as one too many."""
    wanted = set(job_ids)
    return sum(int(n) for job, n in _BATCH_RECORDED.findall(worker_logs) if int(job) in wanted)


def check_jobs(
    name: str,
    factory: sessionmaker[Session],
    job_ids: Iterable[int],
    budget: int,
    recover_s: float,
    stored: int | None = None,
) -> FaultOutcome:
    """Read the trials of ``job_ids`` and their workloads' best configs, print the summary
    line and assert the budget (the sum over the jobs), no duplicate and nothing lost."""
    with session_scope(factory) as session:
        trials = list(session.scalars(select(Trial).where(Trial.job_id.in_(list(job_ids)))))
        keys = {t.workload_key for t in trials}
        best = {
            (row.workload_key, row.target_key): row.latency
            for row in session.scalars(select(BestConfig).where(BestConfig.workload_key.in_(keys)))
        }
    outcome = tally(name, budget, trials, best, recover_s, stored)
    outcome.check()
    return outcome
