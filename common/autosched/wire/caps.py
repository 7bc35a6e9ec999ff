"""Work caps: how many loop iterations a document may make the server schedule and build.

The byte limits bound memory, not work. A sum over a reduce axis of extent 2**52 reads a 4x4
input and writes one element, so it passes every byte limit, yet the template's factor search,
the build and every measurement scale with that extent. So the semantic pass (``validate.py``,
which the API, the scheduler and the CLI all run) also caps every axis extent, each stage's
iteration count (spatial extents x reduce extents) and the sum over all stages, from the settings
object. The defaults are far above real networks (a ResNet 3x3 conv layer is ~2**27
iterations, the largest LLM matmuls ~2**41).
"""

from __future__ import annotations

import math

from autosched.errors import WireFormatError
from autosched.settings import Settings


def count_str(n: int) -> str:
    """``n`` with its size as a power of two, e.g. ``4503599627370496 (2^52)``."""
    exp = math.log2(n) if n > 0 else 0.0
    return f"{n} (2^{exp:.0f})" if exp.is_integer() else f"{n} (~2^{exp:.1f})"


def check_extent(extent: int, what: str, path: str, settings: Settings) -> None:
    """One tensor dimension or reduce-axis extent against ``max_axis_extent``."""
    if extent > settings.max_axis_extent:
        raise WireFormatError(
            f"{what} has extent {count_str(extent)}, over "
            f"max_axis_extent={count_str(settings.max_axis_extent)}",
            path,
        )


class WorkCounter:
    """Adds up iterations stage by stage and refuses the stage that crosses a cap."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.total = 0

    def add_stage(self, name: str, shape: list[int], reduce_extents: list[int], path: str) -> None:
        """``path`` names where the count comes from: the reduce axes when there are any (the
        usual culprit), else the shape."""
        n = math.prod(shape) * math.prod(reduce_extents)
        if n > self.s.max_stage_iterations:
            detail = f"shape {shape}" + (
                f" x reduce extents {reduce_extents}" if reduce_extents else ""
            )
            raise WireFormatError(
                f"stage {name!r} runs {count_str(n)} iterations ({detail}), over "
                f"max_stage_iterations={count_str(self.s.max_stage_iterations)}",
                path,
            )
        self.total += n
        if self.total > self.s.max_workload_iterations:
            raise WireFormatError(
                f"stages up to {name!r} run {count_str(self.total)} iterations in all, over "
                f"max_workload_iterations={count_str(self.s.max_workload_iterations)}",
                path,
            )
