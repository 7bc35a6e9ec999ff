"""The Builder stage: turn (workload, config, hardware) into an exported shared library."""

from __future__ import annotations

from abc import ABC, abstractmethod

from autosched.tune.measure import BuildResult, MeasureInput


class Builder(ABC):
    """Builds candidates; never raises for a bad candidate (failures are ``BuildResult``s)."""

    @abstractmethod
    def build(self, inputs: list[MeasureInput]) -> list[BuildResult]:
        """One result per input, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release worker processes, if any."""

    def __enter__(self) -> Builder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
