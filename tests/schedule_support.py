"""Best configs written the way the scheduler's ``offer_best`` writes them, for the tests of
schedule fetches (in-process apps and served API processes alike)."""

from __future__ import annotations

from autosched.db import BestConfig
from autosched.db.models import utcnow
from tests.api_support import add_trial, db


def publish_best(db_url: str, job_id: int, key: str, target: str, latency: float) -> None:
    """Insert or replace the best config of ``key`` on ``target`` with a new trial of
    ``job_id`` at ``latency``, with a fresh ``updated_at``."""
    with db(db_url) as session:
        trial = add_trial(session, job_id, key, status="ok", latency=latency)
        best = session.get(BestConfig, (key, target)) or BestConfig(
            workload_key=key, target_key=target, device_key="d", tvm_version="0.27.0"
        )
        best.trial_id, best.latency, best.gflops = trial.id, latency, 1e-6 / latency
        best.config, best.trace, best.updated_at = {"trial": trial.id}, [[], []], utcnow()
        session.add(best)
