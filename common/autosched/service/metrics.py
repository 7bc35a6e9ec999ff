"""Prometheus metrics of the service, exposed by the API at ``/metrics``.

Jobs, trials and workers are the state of several processes (API replicas, schedulers,
workers), so their numbers are read from the database when Prometheus scrapes, by a custom
collector (``FleetCollector``, five aggregate queries), not counted in any one process; the
trial counters are monotonic because trials are never deleted while their job exists.
What only the API process knows, request latency, is a ``Histogram`` it records itself.

Each app gets its own ``CollectorRegistry`` (``ServiceMetrics``), never the global one, so a
process may build many apps (the tests do) without duplicate-metric errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from autosched.db.models import Job, Trial, Worker, utcnow
from autosched.db.session import session_scope
from autosched.service.farm import public_worker_id
from autosched.tune.trial import TrialStatus
from autosched.vocabulary import IN_FLIGHT_TRIAL_STATES, JobState, TrialState, WorkerState

log = logging.getLogger(__name__)

#: Trials finished within this window make the throughput gauge.
RATE_WINDOW_S = 60.0
#: Offline workers keep their heartbeat-age series this long (alerts see who went away),
#: then drop out so dead worker ids do not pile up as series.
OFFLINE_WORKER_WINDOW_S = 3600.0
#: Latency buckets of API requests (seconds): reads take milliseconds, a workload upload
#: with template analysis up to seconds.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The ``status`` of a cancelled trial (it has no measurement status).
CANCELLED = "cancelled"


class FleetCollector(Collector):
    """Jobs, trials, queues and workers, read from the database at each scrape."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.now = now

    def describe(self) -> list[Metric]:
        return []  # the families depend on the data; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "autosched_database_up",
            "1 when the last scrape could read the database, else 0 (the other "
            "autosched_ fleet metrics are then missing)",
        )
        try:
            families = self._families()
        except Exception:  # a scrape must still answer: say the database is unreachable
            log.warning("metrics: database query failed", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> list[Metric]:
        now = self.now()
        since = now - timedelta(seconds=RATE_WINDOW_S)
        with session_scope(self.sessions) as session:
            jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            finished = session.execute(
                select(
                    Trial.state,
                    Trial.status,
                    func.count(),
                    func.sum(case((Trial.finished_at >= since, 1), else_=0)),
                )
                .where(Trial.state.in_([TrialState.DONE, TrialState.CANCELLED]))
                .group_by(Trial.state, Trial.status)
            ).all()
            depth = session.execute(
                select(Trial.device_key, func.count())
                .where(Trial.state.in_(IN_FLIGHT_TRIAL_STATES))
                .group_by(Trial.device_key)
            ).all()
            workers = dict(
                session.execute(select(Worker.state, func.count()).group_by(Worker.state)).all()
            )
            recent = session.execute(
                select(Worker.id, Worker.device_key, Worker.state, Worker.last_heartbeat).where(
                    or_(
                        Worker.state == WorkerState.ONLINE,
                        Worker.last_heartbeat >= now - timedelta(seconds=OFFLINE_WORKER_WINDOW_S),
                    )
                )
            ).all()

        jobs_family = GaugeMetricFamily("autosched_jobs", "Jobs by state", labels=["state"])
        for state in JobState:
            jobs_family.add_metric([state.value], jobs.get(state.value, 0))

        by_status = dict.fromkeys([*(s.value for s in TrialStatus), CANCELLED], 0)
        last_window = 0
        for state, status, count, in_window in finished:
            key = CANCELLED if state == TrialState.CANCELLED else (status or "unknown")
            by_status[key] = by_status.get(key, 0) + count
            if state == TrialState.DONE:
                last_window += in_window or 0
        trials = CounterMetricFamily(
            "autosched_trials",
            "Trials finished, by measurement status (cancelled: never measured)",
            labels=["status"],
        )
        errors = CounterMetricFamily(
            "autosched_trial_errors",
            "Trials measured with an error, by kind (every status but ok)",
            labels=["kind"],
        )
        for status, count in by_status.items():
            trials.add_metric([status], count)
            if status not in (TrialStatus.OK, CANCELLED):
                errors.add_metric([status], count)
        rate = GaugeMetricFamily(
            "autosched_trials_per_second",
            f"Trials measured per second over the last {RATE_WINDOW_S:g} s",
        )
        rate.add_metric([], last_window / RATE_WINDOW_S)

        # A device with online workers but nothing queued reads 0 rather than vanishing.
        queue = dict.fromkeys((w.device_key for w in recent if w.state == WorkerState.ONLINE), 0)
        queue.update({key: count for key, count in depth})
        depth_family = GaugeMetricFamily(
            "autosched_queue_depth",
            "Trials queued or being measured, per device key",
            labels=["device_key"],
        )
        for key, count in sorted(queue.items()):
            depth_family.add_metric([key], count)

        workers_family = GaugeMetricFamily(
            "autosched_workers", "Registered workers by state", labels=["state"]
        )
        for state in WorkerState:
            workers_family.add_metric([state.value], workers.get(state.value, 0))
        age = GaugeMetricFamily(
            "autosched_worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat (online workers, and offline ones "
            f"for {OFFLINE_WORKER_WINDOW_S:g} s)",
            labels=["worker_id", "device_key", "state"],
        )
        for worker_id, device_key, state, last in recent:
            seconds = max(0.0, (now - last).total_seconds())
            # /metrics may be read anonymously: worker ids embed host names, so the label
            # is the same pseudonym anonymous API views show.
            age.add_metric([public_worker_id(worker_id), device_key, state], seconds)
        return [jobs_family, trials, errors, rate, depth_family, workers_family, age]


class ServiceMetrics:
    """One API app's registry: the fleet collector, this process' request histogram and
    its process/GC/platform collectors."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(FleetCollector(sessions))
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)  # read-only views of this process
        self.request_duration = Histogram(
            "autosched_http_request_duration_seconds",
            "API request latency, by method, route template and response status",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.request_duration.labels(method, route, str(status)).observe(seconds)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for (Prometheus text, or
        OpenMetrics); the body and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
