"""A runner for hardware this machine lacks: replays recorded measurements of real builds.

``ReplayRunner`` is what CI's GPU worker runs (Kernel Tuner's simulation mode, at the runner
stage): the builder still compiles every candidate for real (for CUDA, a device binary for
the card's architecture), and the runner answers each artifact with the measurement
recorded for the same workload and config on a real device. A config nobody recorded is a
RUN_ERROR, never an invented time. Recordings are JSON lines
``{"workload_key", "config", "latencies"}`` (``write_recording``), keyed like artifacts
(``builder.artifact_name``), so an artifact's file name finds its measurement.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autosched.tune.builder import artifact_name
from autosched.tune.runner import Runner, RunnerInput
from autosched.tune.trial import RunResult, TrialStatus

NOT_RECORDED = "no recorded measurement of this config (replay runner)"


@dataclass(frozen=True)
class Recorded:
    """One measurement as a device produced it: seconds per call, one per repeat."""

    workload_key: str
    config: dict[str, Any]  # Config.to_json()
    latencies: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "workload_key": self.workload_key,
            "config": self.config,
            "latencies": list(self.latencies),
        }


def write_recording(path: str | os.PathLike[str], entries: Iterable[Recorded]) -> None:
    with open(path, "w") as f:
        for entry in entries:
            f.write(json.dumps(entry.to_json(), sort_keys=True) + "\n")


def read_recording(path: str | os.PathLike[str]) -> dict[str, tuple[float, ...]]:
    """Latencies by artifact name."""
    table: dict[str, tuple[float, ...]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            name = artifact_name(doc["workload_key"], doc["config"])
            table[name] = tuple(float(x) for x in doc["latencies"])
    return table


class ReplayRunner(Runner):
    def __init__(self, recording: str | os.PathLike[str]) -> None:
        self.table = read_recording(recording)

    def run(self, inputs: list[RunnerInput]) -> list[RunResult]:
        results = []
        for inp in inputs:
            if not os.path.isfile(inp.artifact_path):
                results.append(RunResult(TrialStatus.RUN_ERROR, error="artifact is missing"))
                continue
            latencies = self.table.get(os.path.basename(inp.artifact_path))
            if latencies is None:
                results.append(RunResult(TrialStatus.RUN_ERROR, error=NOT_RECORDED))
            else:
                results.append(RunResult(TrialStatus.OK, latencies))
        return results
