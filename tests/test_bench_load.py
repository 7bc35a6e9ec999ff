"""bench/load.py's arithmetic on synthetic data: the open-loop schedule, percentiles, the
rate summary, the completion-order rule and the arguments. No service, no load."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bench.load import parse_args
from bench.load_order import Batch, JobTiming, completion_inversions, gate_inversions, merge_chunks
from bench.load_stats import (
    LATE_S,
    Record,
    judge,
    percentile,
    request_count,
    send_offset,
    summarize,
    user_slots,
    users_for,
)

# --- the open-loop schedule --------------------------------------------------------------


@pytest.mark.parametrize(("rate", "seconds"), [(100, 20), (200, 20), (500, 2), (3, 0.1)])
def test_every_request_is_sent_once_on_its_own_slot(rate: float, seconds: float) -> None:
    count = request_count(rate, seconds)
    assert count == max(1, round(rate * seconds))
    users = users_for(rate, 1.0, count)
    slots = sorted(s for u in range(users) for s in user_slots(u, users, count))
    assert slots == list(range(count))
    # Due times are evenly spaced at 1/rate, the last one about `seconds` after the first.
    due = [send_offset(s, rate) for s in range(count)]
    assert np.allclose(np.diff(due), 1 / rate)
    if count > 1:
        assert due[-1] == pytest.approx(seconds - 1 / rate, abs=1 / rate)


def test_users_cover_the_window_and_never_exceed_the_requests() -> None:
    assert users_for(200, 1.0, 4000) == 200
    assert users_for(200, 0.25, 4000) == 50
    assert users_for(500, 1.0, 10) == 10  # no idle users
    assert users_for(0.5, 1.0, 100) == 1
    # A user sends every users/rate seconds: at least the window apart.
    for rate in (1, 7, 100, 333):
        users = users_for(rate, 0.5, 10**6)
        assert users / rate >= 0.5


# --- percentiles and the summary ---------------------------------------------------------


def test_percentile_matches_numpy_linear() -> None:
    rng = random.Random(1)
    for n in (1, 2, 3, 10, 101, 1000):
        xs = sorted(rng.expovariate(100) for _ in range(n))
        for q in (0, 1, 50, 90, 99, 99.9, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_counts_errors_lateness_and_missing_requests() -> None:
    rate, count = 100.0, 1000
    records = []
    for slot in range(count - 5):  # five never came back
        latency = 0.002 if slot % 100 else 0.050  # 1% slow
        lateness = 0.010 if slot < 3 else 0.0
        error = "HTTP 503" if slot in (10, 20) else ("ConnectionError" if slot == 30 else "")
        status = 503 if slot in (10, 20) else (0 if slot == 30 else 200)
        records.append(Record(slot, lateness, latency + lateness, status, error))
    r = summarize("get", rate, count, records)
    assert r.requests == count and r.answered == count - 5
    assert r.error_kinds == {"HTTP 503": 2, "ConnectionError": 1, "missing": 5}
    assert r.errors == 8 and r.error_rate == pytest.approx(0.008)
    assert r.late == 3 and LATE_S < 0.010
    assert r.p50_s == pytest.approx(0.002)
    assert r.max_s == pytest.approx(0.060)
    latencies = sorted(x.latency_s for x in records)
    assert r.p99_s == pytest.approx(float(np.percentile(latencies, 99)))
    # Sent on schedule except the first three (10 ms late): about the asked rate.
    assert r.achieved == pytest.approx(rate, rel=0.01)


def test_summary_of_a_run_that_got_nothing_back() -> None:
    r = summarize("lookup", 200.0, 40, [])
    assert r.answered == 0 and r.errors == 40 and r.error_kinds == {"missing": 40}
    assert r.p50_s is None and r.p99_s is None and r.achieved is None


def test_target_applies_to_get_at_the_target_rate_only() -> None:
    def result(mode: str, rate: float, p99: float, errors: int) -> object:
        recs = [Record(i, 0.0, p99, 200, "") for i in range(100)]
        recs += [Record(100 + i, 0.0, p99, 500, "HTTP 500") for i in range(errors)]
        return summarize(mode, rate, len(recs), recs)

    assert judge(result("get", 200, 0.019, 0), 200, 0.020) == "MET"
    assert judge(result("get", 200, 0.021, 0), 200, 0.020) == "MISSED"
    assert judge(result("get", 200, 0.005, 1), 200, 0.020) == "MISSED"
    assert judge(result("get", 100, 0.500, 0), 200, 0.020) == "-"
    assert judge(result("lookup", 200, 0.001, 0), 200, 0.020) == "-"


# --- completion order --------------------------------------------------------------------


def job(
    id: int, priority: int, created: float, finished: float, asked: float, on_device: float
) -> JobTiming:
    return JobTiming(id, priority, created, finished, asked, on_device)


def test_priority_then_age_order_has_no_inversion() -> None:
    jobs = [
        job(1, 0, 0.0, 9.0, 1.0, 8.0),
        job(2, 5, 0.1, 3.0, 1.0, 2.0),
        job(3, 5, 0.2, 5.0, 1.0, 4.0),  # same priority as 2, younger: after it
        job(4, 9, 0.3, 1.0, 0.5, 0.6),
    ]
    inv = completion_inversions(jobs)
    assert (inv.pairs, inv.total, inv.allowed, inv.unexplained) == (6, 0, 0, [])


def test_inversions_by_a_job_already_on_the_device_are_allowed() -> None:
    jobs = [
        # Low priority, on the device at 0.5 before the high one asked (2.0): allowed.
        job(1, 0, 0.0, 3.0, 0.2, 0.5),
        job(2, 9, 1.0, 4.0, 2.0, 3.1),
        # Low priority, on the device only after job 2 asked: unexplained.
        job(3, 1, 1.5, 3.5, 2.5, 2.6),
    ]
    inv = completion_inversions(jobs)
    # Ranked 2, 3, 1. Pairs (2,3): 3 first, unexplained; (2,1): 1 first, allowed;
    # (3,1): 1 first at 3.0 < 3.5, and 1 was on the device (0.5) before 3 asked (2.5).
    assert inv.total == 3 and inv.allowed == 2
    assert inv.unexplained == [(2, 3)]


def test_age_breaks_ties_and_unfinished_jobs_are_left_out() -> None:
    jobs = [
        job(1, 3, 0.0, 5.0, 1.0, 4.0),
        job(2, 3, 0.1, 4.0, 1.0, 3.0),  # younger, same priority, finished first
        JobTiming(3, 9, 0.2, None, 1.0, None),  # never finished (failed or timed out)
    ]
    inv = completion_inversions(jobs)
    assert inv.pairs == 1 and inv.unexplained == [(1, 2)]


def test_random_orders_count_every_inverted_pair() -> None:
    rng = random.Random(7)
    jobs = [job(i, rng.randrange(4), i * 0.01, rng.random() * 100, 50.0, 60.0) for i in range(60)]
    ranked = sorted(jobs, key=lambda j: (-j.priority, j.created, j.id))
    brute = sum(
        1
        for a in range(len(ranked))
        for b in range(a + 1, len(ranked))
        if ranked[b].finished < ranked[a].finished  # type: ignore[operator]
    )
    inv = completion_inversions(jobs)
    assert inv.total == brute and inv.allowed == 0 and len(inv.unexplained) == brute


def test_gate_inversions_are_grants_past_a_higher_waiting_batch() -> None:
    high, low = job(1, 9, 0.0, 9.0, 1.0, 2.0), job(2, 0, 0.0, 9.0, 0.5, 1.0)
    # The low job's batch granted at 1.0 while the high one had waited since 0.5: inversion.
    assert gate_inversions([Batch(high, 0.5, 3.0), Batch(low, 0.8, 1.0)]) == [(2, 1, 1.0)]
    # Granted to the low job before the high one asked (or within the slack): fine.
    assert gate_inversions([Batch(high, 1.5, 3.0), Batch(low, 0.8, 1.0)]) == []
    assert gate_inversions([Batch(high, 0.9, 3.0), Batch(low, 0.8, 1.0)], slack_s=0.25) == []
    # The high job's batch went first: fine; two batches of one job never count.
    assert gate_inversions([Batch(high, 0.5, 1.0), Batch(low, 0.4, 3.0)]) == []
    assert gate_inversions([Batch(low, 0.0, 5.0), Batch(low, 1.0, 2.0)]) == []


def test_chunks_sent_to_each_worker_are_one_batch() -> None:
    # Batch 1 written at 1.0, sent in two chunks (2.0, 2.01); batch 2 written after the
    # first left (3.0), sent at 4.0 and 4.02; a lone batch at 6.0.
    dispatches = [(1.0, 2.01), (3.0, 4.0), (1.0, 2.0), (3.0, 4.02), (5.5, 6.0)]
    assert merge_chunks(dispatches) == [(1.0, 2.0), (3.0, 4.0), (5.5, 6.0)]
    assert merge_chunks([]) == []


# --- arguments ---------------------------------------------------------------------------


def test_defaults_follow_the_issue() -> None:
    args = parse_args([])
    assert args.rates == [100.0, 200.0, 500.0] and args.lookup_rates == args.rates
    assert args.seconds == 20.0 and args.jobs == 100 and args.trials == 8
    assert args.workers == 2 and args.api_workers == 1
    assert args.parts == ["get", "lookup", "jobs"]
    assert args.target_rate == 200.0 and args.target_p99_ms == 20.0
    assert args.auth == "anonymous" and not args.embedded


def test_quick_shortens_unless_told_otherwise() -> None:
    quick = parse_args(["--quick"])
    assert quick.seconds == 2.0 and quick.jobs == 10
    told = parse_args(["--quick", "--seconds", "5", "--jobs", "3", "--rates", "50,75"])
    assert told.seconds == 5.0 and told.jobs == 3 and told.rates == [50.0, 75.0]
    assert told.lookup_rates == [50.0, 75.0]
    assert parse_args(["--lookup-rates", "10"]).lookup_rates == [10.0]
    assert parse_args(["--parts", "get,jobs"]).parts == ["get", "jobs"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--rates", "0"],
        ["--rates", "-5,10"],
        ["--rates", "fast"],
        ["--rates", ""],
        ["--parts", "get,soak"],
        ["--seconds", "0"],
        ["--api-workers", "0"],
        ["--auth", "basic"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_servers_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://bench:pw@db.local:6543/autosched")
    assert parse_args([]).postgres == "postgresql+psycopg://bench:pw@db.local:6543"
    monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
    assert parse_args([]).postgres.startswith("postgresql+psycopg://postgres@127.0.0.1:5432")
