"""What goes to a device's workers: the Celery tasks they run, each device key's queue, and
which trials travel together in one task. The scheduler sends tasks by these names and never
imports worker code."""

from __future__ import annotations

MEASURE_TASK = "autosched.measure_trials"  # registered by workers/tasks.py
REMEASURE_TASK = "autosched.remeasure_trials"


def device_queue(device_key: str) -> str:
    """The queue of one device key: a worker consumes only its own."""
    return f"device.{device_key}"


def isolate(trial_ids: list[int], suspects: set[int]) -> list[list[int]]:
    """The sends for ``trial_ids``: the others together, each suspect alone. A suspect's
    worker died holding it, so it may be what kills workers; alone, the next death is
    charged to it only (the reaper quarantines it at ``max_trial_attempts``) and not to a
    batch of innocent trials."""
    rest = [t for t in trial_ids if t not in suspects]
    return ([rest] if rest else []) + [[t] for t in trial_ids if t in suspects]
