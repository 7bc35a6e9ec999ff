"""The Runner stage: load built artifacts, check them against the reference, time them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from autosched.tune.measure import RunResult


@dataclass(frozen=True)
class RunnerInput:
    """A built candidate: the exported library and the wire-format workload it implements."""

    artifact_path: str
    workload: dict[str, Any]


class Runner(ABC):
    """Measures candidates; never raises for a bad candidate (failures are ``RunResult``s)."""

    @abstractmethod
    def run(self, inputs: list[RunnerInput]) -> list[RunResult]:
        """One result per input, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release worker processes, if any."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
