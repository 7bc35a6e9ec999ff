"""Build a batch of candidates, run the ones that built, and fold both stages per trial."""

from __future__ import annotations

import contextlib
import os

from autosched.tune.builder.builder import Builder
from autosched.tune.measure import MeasureInput, MeasureResult, TrialStatus
from autosched.tune.runner.runner import Runner, RunnerInput


def measure(builder: Builder, runner: Runner, inputs: list[MeasureInput]) -> list[MeasureResult]:
    """One ``MeasureResult`` per input, in order; artifacts are deleted after running."""
    builds = builder.build(inputs)
    to_run = [
        i
        for i, b in enumerate(builds)
        if b.status == TrialStatus.OK and b.artifact_path is not None
    ]
    try:
        runs = runner.run(
            [RunnerInput(str(builds[i].artifact_path), inputs[i].workload) for i in to_run]
        )
    finally:
        for b in builds:
            if b.artifact_path is not None:
                with contextlib.suppress(OSError):
                    os.remove(b.artifact_path)
    by_index = dict(zip(to_run, runs, strict=True))
    return [MeasureResult.from_stages(b, by_index.get(i)) for i, b in enumerate(builds)]
