"""The space generator: a workload's search space (a ``Template``) for some hardware.

``MetaTemplateSpace`` is the meta-template space, seeded with the static heuristic config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from autosched.hardware import HardwareParams
from autosched.schedule import build_template, static_config
from autosched.space import Config, Template
from autosched.wire import Workload


class SpaceGenerator(ABC):
    @abstractmethod
    def generate(self, workload: Workload, hw: HardwareParams) -> Template:
        """The knobs and their domains."""

    @abstractmethod
    def initial_configs(self, workload: Workload, hw: HardwareParams) -> list[Config]:
        """Configs worth measuring first (e.g. the static heuristic)."""


class MetaTemplateSpace(SpaceGenerator):
    def generate(self, workload: Workload, hw: HardwareParams) -> Template:
        return build_template(workload.prim_func, hw)

    def initial_configs(self, workload: Workload, hw: HardwareParams) -> list[Config]:
        return [static_config(workload.prim_func, hw)]
