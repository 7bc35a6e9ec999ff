"""Knob domains: neighbours of a tiling stay legal and close to it."""

from __future__ import annotations

import math
import random

from autosched.space import TileKnob, tile_candidates


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
