"""Knob domains: neighbours of a tiling stay legal and close to it."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import pytest
from tvm import te, tirx

from autosched.hardware import HardwareParams
from autosched.schedule import build_template, static_config
from autosched.space import TileKnob, divisors, tile_candidates
from autosched.templates import complex_reduction as cr
from autosched.templates.base import best_vector, vector_choices
from autosched.wire import Workload


def test_tile_neighbors_are_valid_and_one_step_away():
    rng = random.Random(0)
    for extent, levels in [(1024, 4), (257, 3), (48, 2), (7, 3), (1, 2)]:
        knob = TileKnob("t", extent, levels, tile_candidates(extent))
        for _ in range(200):
            value = knob.sample(rng)
            near = knob.neighbor(value, rng)
            if near is None:  # e.g. extent 1: nowhere to go
                continue
            assert knob.validate(near) == near
            assert near != value
            changed = [i for i in range(1, levels) if near[i] != value[i]]
            assert 1 <= len(changed) <= 2
            ratio = math.prod(near[1:]) / math.prod(value[1:])
            assert ratio in (1, 2, 3, 1 / 2, 1 / 3)


def test_tile_neighbor_is_deterministic_under_a_seed():
    knob = TileKnob("t", 512, 4, tile_candidates(512))
    value = knob.make([4, 2, 16])
    a = [knob.neighbor(value, random.Random(7)) for _ in range(3)]
    b = [knob.neighbor(value, random.Random(7)) for _ in range(3)]
    assert a == b


# ---------------------------------------------------------------------------------------------
# Factor searches cost O(small bound), not O(sqrt(extent)), and choose exactly what the old
# unbounded searches chose. The old implementations, verbatim in substance:


def _old_divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _old_tile_candidates(extent: int, limit: int = 512) -> tuple[int, ...]:
    found = {d for d in _old_divisors(extent) if d <= limit}
    found |= {1 << p for p in range(10) if (1 << p) <= min(extent, limit)}
    found |= {m for m in range(8, min(extent, 64) + 1, 8)}
    return tuple(sorted(found))


def _old_best_vector(extent: int, lanes: int) -> int:
    for v in range(min(lanes, extent), 0, -1):
        if extent % v == 0:
            return v
    return 1


def _old_pick_vector(extent: int, lanes: int) -> int:
    options = [d for d in _old_divisors(extent) if d <= 2 * lanes]
    return max(options, key=lambda d: (d / (-(-d // lanes) * lanes), -d if d > lanes else d))


def _old_smallest_factor(n: int) -> int | None:
    return next((d for d in _old_divisors(n) if d > 1), None)


def test_bounded_factor_searches_match_the_old_ones() -> None:
    for n in range(1, 5001):
        old = _old_divisors(n)
        assert tile_candidates(n) == _old_tile_candidates(n), n
        for limit in (1, 2, 7, 16, 64, 512, 10**9):
            assert divisors(n, limit) == [d for d in old if d <= limit], (n, limit)
        assert vector_choices(n, 64) == tuple(d for d in range(1, min(n, 64) + 1) if n % d == 0)
        for lanes in (4, 8, 16):
            assert best_vector(n, lanes) == _old_best_vector(n, lanes), (n, lanes)
            assert cr._pick_vector(n, lanes) == _old_pick_vector(n, lanes), (n, lanes)
        for limit in (1, 8, 12, 64):
            expected = max(d for d in old if d <= limit)
            assert cr._largest_divisor_at_most(n, limit) == expected, (n, limit)
        smallest = _old_smallest_factor(n)
        for limit in (256, 4096, 10**9):
            expected = smallest if smallest is not None and smallest <= limit else None
            assert cr._smallest_factor(n, limit) == expected, (n, limit)


_HW = HardwareParams(
    num_cores=8, vector_bits=512, l1_bytes=48 * 1024, l2_bytes=2**21, l3_bytes=2**25, mcpu="x"
)
_PRIME_BELOW_2_30 = 2**30 - 35
_TWO_PRIMES = 32749 * 32719  # just under 2**30, no factor below 32719


def _template_seconds(func: tirx.PrimFunc) -> float:
    """CPU time (robust to a busy machine) to build the template and the static config."""
    start = time.process_time()
    template = build_template(func, _HW)
    template.validate(static_config(func, _HW))
    return time.process_time() - start


def _mm_doc(m: int, n: int, k: int) -> dict[str, Any]:
    """C[i, j] = sum_k A[i, 0] * B[0, j] (a complex reduction: A is reused along j), then relu:
    tiny inputs, so each extent can be as large as the caps allow."""

    def read(t: str, *idx: dict[str, Any]) -> dict[str, Any]:
        return {"op": "read", "tensor": t, "indices": list(idx)}

    zero, i, j = {"op": "int", "value": 0}, {"op": "var", "name": "i"}, {"op": "var", "name": "j"}
    return {
        "format_version": 1,
        "placeholders": [
            {"name": "A", "shape": [m, 1], "dtype": "float32"},
            {"name": "B", "shape": [1, n], "dtype": "float32"},
        ],
        "stages": [
            {
                "name": "C",
                "shape": [m, n],
                "dtype": "float32",
                "axes": ["i", "j"],
                "body": {
                    "op": "reduce",
                    "reducer": "sum",
                    "axes": [{"name": "k", "extent": k}],
                    "source": {"op": "mul", "a": read("A", i, zero), "b": read("B", zero, j)},
                },
            },
            {
                "name": "D",
                "shape": [m, n],
                "dtype": "float32",
                "axes": ["i", "j"],
                "body": {
                    "op": "max",
                    "a": read("C", i, j),
                    "b": {"op": "float", "value": 0.0},
                },
            },
        ],
        "outputs": ["D"],
        "args": ["A", "B", "D"],
    }


@pytest.mark.parametrize("extent", [2**30, _PRIME_BELOW_2_30, _TWO_PRIMES])
@pytest.mark.parametrize("where", ["reduce", "spatial"])
def test_template_cost_does_not_grow_with_the_extent(extent: int, where: str) -> None:
    """Extents at max_axis_extent are accepted by the wire format and cost nothing to plan."""
    doc = _mm_doc(16, 16, extent) if where == "reduce" else _mm_doc(extent, 1, 4)
    func = Workload.from_json(doc).prim_func
    assert _template_seconds(func) < 0.5


@pytest.mark.parametrize("extent", [2**62, 2**61 - 1, 3 * (2**61 - 1)])
def test_template_cost_is_bounded_beyond_the_wire_caps(extent: int) -> None:
    """Even past the caps (an operator may raise them), no search walks up to sqrt(extent):
    the old one took minutes at 2**62."""
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731
    a = te.placeholder((i64(extent), i64(1)), "float32", name="A")
    b = te.placeholder((i64(1), i64(extent)), "float32", name="B")
    k = te.reduce_axis((i64(0), i64(extent)), name="k")
    c = te.compute(
        (i64(extent), i64(extent)), lambda i, j: te.sum(a[i, i64(0)] * b[i64(0), j], axis=k)
    )
    assert _template_seconds(te.create_prim_func([a, b, c])) < 0.5
