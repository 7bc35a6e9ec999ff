"""The fault suite's closing check (``tests/fault_outcome.py``) fails where it should: a
short budget, a config measured twice, a result written twice, a verified best lost."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from autosched.tune.trial import TrialStatus
from autosched.vocabulary import TrialState
from tests.fault_outcome import FaultOutcome, results_recorded, tally

KEY = ("wl", "llvm/x")


def _trial(digest: str, latency: float | None = 1e-3, state: str = TrialState.DONE):
    status = TrialStatus.OK if latency is not None else TrialStatus.BUILD_ERROR
    return SimpleNamespace(
        workload_key=KEY[0],
        target_key=KEY[1],
        config_digest=digest,
        state=state,
        status=status,
        latency=latency,
    )


def test_a_clean_run_passes():
    trials = [_trial("a", 2e-3), _trial("b", 1e-3), _trial("c", None)]
    outcome = tally("clean", 3, trials, {KEY: 1e-3}, 1.5, stored=3)
    assert (outcome.recorded, outcome.duplicates, outcome.lost) == (3, 0, 0)
    outcome.check()


@pytest.mark.parametrize(
    ("trials", "best", "stored", "field"),
    [
        ([_trial("a"), _trial("b", state=TrialState.RUNNING)], {KEY: 1e-3}, None, "recorded"),
        ([_trial("a"), _trial("a")], {KEY: 1e-3}, None, "duplicates"),
        ([_trial("a"), _trial("b")], {KEY: 1e-3}, 3, "duplicates"),
        ([_trial("a", 1e-3), _trial("b", 5e-4)], {KEY: 1e-3}, None, "lost"),
        ([_trial("a"), _trial("b")], {}, None, "lost"),
    ],
)
def test_each_failure_is_caught(trials, best, stored, field):
    outcome = tally("broken", 2, trials, best, 0.0, stored)
    with pytest.raises(AssertionError, match="FAULT broken"):
        outcome.check()
    clean = FaultOutcome("broken", 2, 2, 0, 0, 0.0)
    assert getattr(outcome, field) != getattr(clean, field)


def test_worker_lines_are_counted_per_job():
    logs = (
        "... INFO worker autosched.service.measure_trials [MainThread] [job=7 trials=1,2] "
        "measured 2 trials in 1.0 s: ok=2; recorded 2 of 2 claimed, 0 handed back\n"
        "... [job=8 trials=3] measured 1 trials in 0.5 s: ok=1; recorded 1 of 1 claimed, 0 ...\n"
        "... [job=7 trials=4] measured 1 trials in 0.5 s: ok=1; recorded 0 of 1 claimed, 1 ...\n"
    )
    assert results_recorded(logs, [7]) == 2
    assert results_recorded(logs, [7, 8]) == 3
