"""Using a schedule fetched from the service on the client's own workload: apply it to the
PrimFunc (refusing one made for another workload), compile it, export a shared library.

Importing this module does not import TVM; each function does, when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from autosched.errors import ConfigError

if TYPE_CHECKING:
    from tvm import s_tir
    from tvm.runtime import Executable

    from autosched.schemas import ScheduleView
    from autosched.wire import Workload


def apply_schedule(workload: Workload, view: ScheduleView) -> s_tir.Schedule:
    """Apply a fetched schedule to ``workload``'s PrimFunc, refusing one made for another."""
    from autosched.hardware import HardwareParams
    from autosched.schedule import apply_config
    from autosched.space import Config, Template

    template = Template.from_json(view.template)
    for what, key in (("schedule", view.workload_key), ("template", template.workload_key)):
        if key != workload.key:
            raise ConfigError(f"the {what} is for workload {key}, not {workload.key}")
    return apply_config(
        workload.prim_func,
        Config.from_json(view.config),
        HardwareParams.from_json(view.hardware),
        template=template,
    )


def build_schedule(workload: Workload, view: ScheduleView) -> Executable:
    """Apply and compile for the hardware the schedule was made for (``export_library`` it;
    for a GPU schedule, ``export_schedule`` also compiles its kernels for the card)."""
    import tvm

    from autosched.hardware import HardwareParams, cpu_target

    sch = apply_schedule(workload, view)
    return tvm.compile(sch.mod, target=cpu_target(HardwareParams.from_json(view.hardware)))


def export_schedule(workload: Workload, view: ScheduleView, path: str | Path) -> None:
    """Build the schedule and write the shared library to ``path``: for a GPU schedule with
    its kernels compiled for the card's architecture, so the GPU host needs no compiler."""
    from autosched.hardware import HardwareParams

    hw = HardwareParams.from_json(view.hardware)
    if not hw.is_gpu:
        build_schedule(workload, view).export_library(str(path))
        return
    from autosched.tune.cuda_build import compile_for_gpu, export_library

    export_library(compile_for_gpu(apply_schedule(workload, view).mod, hw), str(path), hw)
