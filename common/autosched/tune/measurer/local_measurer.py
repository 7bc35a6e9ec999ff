"""Build in a process pool, run each candidate in its own sandbox process on this machine."""

from __future__ import annotations

from autosched.tune.measure import MeasureInput, MeasureResult
from autosched.tune.measurer.measurer import Measurer


class LocalMeasurer(Measurer):
    def __init__(self, builder, runner) -> None:  # Builder, Runner (imported lazily)
        self.builder = builder
        self.runner = runner

    @classmethod
    def create(cls, work_dir: str) -> LocalMeasurer:
        from autosched.tune.builder import LocalBuilder
        from autosched.tune.runner import LocalRunner

        return cls(LocalBuilder(work_dir), LocalRunner(work_dir))

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        from autosched.tune.measure_candidates import measure

        return measure(self.builder, self.runner, inputs)

    def close(self) -> None:
        self.builder.close()
        self.runner.close()
