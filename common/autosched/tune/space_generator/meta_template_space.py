"""The meta-template search space, seeded with the static heuristic config."""

from __future__ import annotations

from autosched.hardware import HardwareParams
from autosched.schedule import build_template, static_config
from autosched.space import Config, Template
from autosched.tune.space_generator.space_generator import SpaceGenerator
from autosched.wire import Workload


class MetaTemplateSpace(SpaceGenerator):
    def generate(self, workload: Workload, hw: HardwareParams) -> Template:
        return build_template(workload.prim_func, hw)

    def initial_configs(self, workload: Workload, hw: HardwareParams) -> list[Config]:
        return [static_config(workload.prim_func, hw)]
