"""Measurer: turns candidates into results (build + run, or a replay of recorded ones)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from autosched.tune.measure import MeasureInput, MeasureResult


class Measurer(ABC):
    @abstractmethod
    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        """One result per input, in order; failures are results, never exceptions."""

    def close(self) -> None:
        """Release worker processes, if any."""
        return None
