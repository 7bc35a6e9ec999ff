"""Worker side: offer verified trials as their workload's best config on a target.

The best config is replaced only by a faster one, in a single ``INSERT ... ON CONFLICT DO
UPDATE ... WHERE`` so two workers finishing at once cannot overwrite a faster result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import BestConfig, Trial, WorkloadRow, utcnow
from autosched.db.session import session_scope
from autosched.db.upsert import insert_for
from autosched.hardware import HardwareParams

log = logging.getLogger(__name__)


def offer_fastest(
    factory: sessionmaker[Session],
    timed: Sequence[tuple[Trial, float]],
    hardware: dict[str, Any],
    worker_id: str,
    device_key: str,
) -> None:
    """Offer the fastest of ``timed`` (verified trials with their latency) per workload and
    target as its best config: one trace export each, not one per trial."""
    fastest: dict[tuple[str, str], tuple[Trial, float]] = {}
    for trial, latency in timed:
        key = (trial.workload_key, trial.target_key)
        if key not in fastest or latency < fastest[key][1]:
            fastest[key] = (trial, latency)
    hw = HardwareParams.from_json(hardware)
    for trial, latency in fastest.values():
        offer_best(factory, trial, latency, hw, worker_id, device_key)


def offer_best(
    factory: sessionmaker[Session],
    trial: Trial,
    latency: float,
    hw: HardwareParams,
    worker_id: str,
    device_key: str,
) -> bool:
    """Make ``trial`` the best config of its workload on its target if it is faster than the
    stored one (the runner already checked its output); whether it became the best."""
    import tvm

    from autosched.errors import AutoschedError
    from autosched.schedule import apply_config, trace_json
    from autosched.service.workloads import load_stored
    from autosched.space import Config

    with session_scope(factory) as session:
        current = session.get(BestConfig, (trial.workload_key, trial.target_key))
        if current is not None and current.latency <= latency:
            return False
        row = session.get(WorkloadRow, trial.workload_key)
        assert row is not None  # the trial's foreign key
    try:  # outside any transaction: applying a schedule takes a while
        workload = load_stored(row)
        trace = trace_json(apply_config(workload.prim_func, Config.from_json(trial.config), hw))
    except AutoschedError as err:  # it built in the sandbox, so this is not expected
        log.error("trial %d: could not export its trace (%s); best not updated", trial.id, err)
        return False

    values = {
        "trial_id": trial.id,
        "config": trial.config,
        "trace": trace,
        "latency": latency,
        "gflops": row.flops / latency / 1e9,
        "worker_id": worker_id,
        "device_key": device_key,
        "tvm_version": tvm.__version__,
        "updated_at": utcnow(),
    }
    with session_scope(factory) as session:
        table = BestConfig.__table__
        stmt = insert_for(session, BestConfig).values(
            workload_key=trial.workload_key, target_key=trial.target_key, **values
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["workload_key", "target_key"],
            set_=values,
            where=table.c.latency > stmt.excluded.latency,
        ).returning(table.c.trial_id)
        # A row comes back only when inserted or replaced (rowcount is -1 under psycopg).
        updated = session.execute(stmt).first() is not None
    if updated:
        log.info("trial %d is the new best of %s (%.3g s)", trial.id, trial.workload_key, latency)
    return updated
