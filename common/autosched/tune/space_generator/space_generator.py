"""SpaceGenerator: the search space (a Template) of a workload for some hardware."""

from __future__ import annotations

from abc import ABC, abstractmethod

from autosched.hardware import HardwareParams
from autosched.space import Config, Template
from autosched.wire import Workload


class SpaceGenerator(ABC):
    @abstractmethod
    def generate(self, workload: Workload, hw: HardwareParams) -> Template:
        """The knobs and their domains."""

    @abstractmethod
    def initial_configs(self, workload: Workload, hw: HardwareParams) -> list[Config]:
        """Configs worth measuring first (e.g. the static heuristic)."""
