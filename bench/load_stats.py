"""``bench/load.py``'s open-loop schedule and latency statistics (pure).

The locustfile (``bench/load_locustfile.py``) imports the scheduling arithmetic and the
test imports all of it without TVM: this module imports only the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

# A send more than this behind schedule counts as late (the load generator fell behind).
LATE_S = 0.005


class Record(NamedTuple):
    """One request: its slot, how late it left and how long it took, both from when it was
    due (seconds), the HTTP status (0: no answer) and the error ("" when it was fine)."""

    slot: int
    lateness_s: float
    latency_s: float
    status: int
    error: str


def request_count(rate: float, seconds: float) -> int:
    """Requests in a run of ``seconds`` at ``rate`` per second (at least one)."""
    return max(1, round(rate * seconds))


def send_offset(slot: int, rate: float) -> float:
    """When request ``slot`` is due, in seconds after the first one."""
    return slot / rate


def users_for(rate: float, window_s: float, count: int) -> int:
    """Concurrency slots (locust users) for ``rate``: each user sends one request every
    ``users / rate`` seconds, so an answer slower than ``window_s`` makes its user late
    (counted, and added to the latency). Never more users than requests."""
    return max(1, min(count, math.ceil(rate * window_s)))


def user_slots(index: int, users: int, count: int) -> range:
    """The requests user ``index`` of ``users`` sends: every ``users``-th from ``index``."""
    return range(index, count, users)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, interpolated linearly between the
    closest ranks (numpy's default)."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = q / 100 * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class RateResult:
    mode: str
    rate: float  # asked, per second
    requests: int  # due in the run
    answered: int  # records received (the rest never left or never came back)
    achieved: float | None  # requests actually sent per second
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    max_s: float | None
    errors: int
    error_kinds: dict[str, int]
    late: int  # sent more than LATE_S behind schedule
    target: str = "-"  # MET / MISSED where a target applies

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def summarize(mode: str, rate: float, count: int, records: Iterable[Record]) -> RateResult:
    """Latency percentiles over every answered request (failed ones too), errors over every
    request that was due (one that never came back is an error: "missing")."""
    recs = [Record(*r) for r in records]
    latencies = sorted(r.latency_s for r in recs)
    kinds: dict[str, int] = {}
    for r in recs:
        if r.error:
            kinds[r.error] = kinds.get(r.error, 0) + 1
    missing = count - len(recs)
    if missing > 0:
        kinds["missing"] = missing
    starts = sorted(send_offset(r.slot, rate) + r.lateness_s for r in recs)
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    achieved = (len(starts) - 1) / span if span > 0 else None

    def pct(q: float) -> float | None:
        return percentile(latencies, q) if latencies else None

    return RateResult(
        mode=mode,
        rate=rate,
        requests=count,
        answered=len(recs),
        achieved=achieved,
        p50_s=pct(50),
        p90_s=pct(90),
        p99_s=pct(99),
        max_s=latencies[-1] if latencies else None,
        errors=sum(kinds.values()),
        error_kinds=kinds,
        late=sum(r.lateness_s > LATE_S for r in recs),
    )


def judge(result: RateResult, target_rate: float, target_p99_s: float) -> str:
    """MET / MISSED for the GET row at the target rate (p99 within the bound, no error)."""
    if result.mode != "get" or not math.isclose(result.rate, target_rate):
        return "-"
    ok = result.p99_s is not None and result.p99_s <= target_p99_s and result.errors == 0
    return "MET" if ok else "MISSED"
