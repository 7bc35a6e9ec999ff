"""Fixed hardware and an analytic fake machine for search tests (replayed, never measured)."""

from __future__ import annotations

import math

from autosched.hardware import HardwareParams
from autosched.space import Config
from autosched.tune.trial import MeasureResult, TrialStatus

# Fixed hardware: the search space must not depend on the machine running the tests.
HW = HardwareParams(
    num_cores=2, vector_bits=256, l1_bytes=32768, l2_bytes=524288, l3_bytes=8 << 20, mcpu="znver3"
)


def synthetic_latency(config: Config) -> MeasureResult:
    """An analytic 'machine': smooth in the knobs, with failures and a fast wrong answer."""
    c = config.values["C"]
    i, j = c["tile_s0"], c["tile_s1"]
    cost = (
        1.0
        + abs(math.log2(j[3]) - 3)
        + abs(math.log2(i[2]) - 2)
        + 0.3 * abs(math.log2(j[1] * j[3]) - 6)
    )
    cost += 0.5 * (c["inner_order"] != "r1_s2_s3") + 0.4 * (not c["pack"])
    if c["unroll"] == 512 and c["write_level"] == 0:
        return MeasureResult(TrialStatus.RUN_TIMEOUT, math.inf, "synthetic hang")
    if c["unroll"] == 16 and not c["write_cache"]:
        # Deliberately broken: the fastest of all, but its output is wrong.
        return MeasureResult(TrialStatus.WRONG_ANSWER, math.inf, "synthetic mismatch")
    return MeasureResult(TrialStatus.OK, cost * 1e-3, latencies=(cost * 1e-3,))


def two_basin_latency(config: Config) -> MeasureResult:
    """A deceptive 'machine': a wide basin around the usual structure (best 1.0) and a
    narrow, better one (best 0.3) that only opens when three structural knobs change
    together (inner order, no packing, write-back at s0), then needs its own tiles."""
    c = config.values["C"]
    i, j, k = c["tile_s0"], c["tile_s1"], c["tile_r2"]
    wide = 1.0 + 0.2 * abs(math.log2(j[3]) - 3) + 0.2 * abs(math.log2(i[2]) - 2)
    cost = wide
    if c["inner_order"] == "s2_r1_s3" and not c["pack"] and c["write_level"] == 0:
        narrow = (
            0.3
            + 0.15 * abs(math.log2(j[3]) - 4)
            + 0.15 * abs(math.log2(i[2]) - 3)
            + 0.1 * abs(math.log2(k[1]) - 2)
            + 0.15 * abs(math.log2(j[1]) - 1)
        )
        cost = min(wide, narrow)
    return MeasureResult(TrialStatus.OK, cost * 1e-3, latencies=(cost * 1e-3,))
