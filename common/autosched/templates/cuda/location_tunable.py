"""Location-tunable compute on a GPU: a producer (padding, reshape, an activation) whose
place is the knob — inlined into its consumer, its own bound kernel at root, computed per
block of its consumer into shared memory (threads of the block share the work), or per
thread of its consumer into registers/local memory."""

from __future__ import annotations

from typing import Any

from tvm import s_tir

from autosched.analysis import StageInfo
from autosched.hardware import HardwareParams
from autosched.space import ChoiceKnob, Knob, KnobValue
from autosched.templates.base import TemplateContext
from autosched.templates.cuda.common import (
    bind_cooperative,
    footprint_below,
    kernels_fit,
    thread_extents_under,
    write_dtype_bytes,
)
from autosched.templates.cuda.direct_compute import apply_root, root_knobs, root_static
from autosched.templates.location_tunable import LocationTunable

INLINE, ROOT = "inline", "root"
CONSUMER_BLOCK, CONSUMER_THREAD = "consumer_block", "consumer_thread"
#: a producer computed per thread keeps at most this much in local memory: a few registers'
#: worth (a pooling window); a whole row per thread would spill and repeat the work
MAX_THREAD_LOCAL_BYTES = 256


class CudaLocationTunable(LocationTunable):
    """The CPU template's inline pass and static rule; GPU placements (shared memory at the
    consumer's block loop, registers at its thread loop) and a bound kernel at root."""

    def knobs(self, stage: StageInfo, ctx: TemplateContext) -> list[Knob]:
        assert ctx.hw.gpu is not None
        locations: tuple[str, ...] = (INLINE, ROOT)
        if len(stage.consumers) == 1:
            locations += (CONSUMER_BLOCK, CONSUMER_THREAD)
        return [ChoiceKnob("location", locations), *root_knobs(stage, ctx.hw.gpu)]

    def static_values(self, stage: StageInfo, ctx: TemplateContext) -> dict[str, KnobValue]:
        assert ctx.hw.gpu is not None
        return {
            "location": ROOT if self.inline_is_costly(stage) else INLINE,
            **root_static(stage, ctx.hw.gpu),
        }

    def apply(self, sch, stage, values, ctx, state) -> None:
        location = values["location"]
        if location in (CONSUMER_BLOCK, CONSUMER_THREAD) and stage.name not in state.placed:
            points = state.attach_points.get(stage.consumers[0])
            if points:
                loop = points[0] if location == CONSUMER_BLOCK else points[-1]
                # Decided on a copy: a refused compute_at can leave a schedule half changed,
                # and a placement that lowers but overflows shared memory must not be kept.
                trial = sch.copy()
                if _place(trial, stage.name, loop, location, ctx.hw) and kernels_fit(
                    trial.mod, ctx.hw
                ):
                    _place(sch, stage.name, loop, location, ctx.hw)
                    state.placed.add(stage.name)
                # else: not a location this consumer's loops allow; bound at root below.
        apply_root(sch, stage, values, state)


def _place(sch: s_tir.Schedule, name: str, loop: Any, location: str, hw: HardwareParams) -> bool:
    """Compute the producer at its consumer's block loop (shared memory, loaded by all the
    block's threads) or thread loop (local). False if TVM refuses it or a thread's copy would
    be too large."""
    try:
        block = sch.get_sblock(name)
        sch.compute_at(block, loop, preserve_unit_loops=True)
        if location == CONSUMER_BLOCK:
            extents = thread_extents_under(sch, loop)
            if not extents:  # no threads to share the load with
                return False
            sch.set_scope(block, 0, "shared")
            bind_cooperative(sch, block, loop, extents)
            return True
        footprint = footprint_below(sch, block, loop) * write_dtype_bytes(sch, block)
        if footprint > MAX_THREAD_LOCAL_BYTES:
            return False
        sch.set_scope(block, 0, "local")
    except Exception:  # TVM's ScheduleError: the consumer's loops do not allow it
        return False
    return True
