"""Knobs, templates and configs: the plain-JSON description of a workload's search space.

A *template* lists, per stage, its meta-template and knobs with their domains; a *config*
gives every knob a value. Both are JSON documents so they can be stored and shared.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from autosched.errors import ConfigError

KnobValue = Any  # int | bool | str | list[int]
MAX_NEIGHBOR_DRAWS = 24


# Largest inner tile factor a template offers. Factor searches are bounded by what the caller
# keeps, never by the extent: a client may declare an axis of 2**30 (max_axis_extent), and an
# O(sqrt(n)) search per axis, per template, per request is work a client could make us do.
MAX_FACTOR = 512


def divisors(n: int, limit: int) -> list[int]:
    """The divisors of ``n`` that are at most ``limit``, ascending.

    Costs O(min(sqrt(n), limit)): bounded by the caller's limit for a huge extent, and by the
    extent for a huge limit (a limit derived from reported hardware is not trusted either).
    """
    small: list[int] = []
    large: list[int] = []
    for d in range(1, min(math.isqrt(max(n, 0)), limit) + 1):
        if n % d == 0:
            small.append(d)
            q = n // d
            if q != d and q <= limit:
                large.append(q)
    return small + large[::-1]


def tile_candidates(extent: int, limit: int = MAX_FACTOR) -> tuple[int, ...]:
    """Inner tile factors allowed for an axis: its divisors, plus powers of two and small
    multiples of 8 for awkward extents (those split with a guard)."""
    found = set(divisors(extent, limit))
    found |= {1 << p for p in range(10) if (1 << p) <= min(extent, limit)}
    found |= {m for m in range(8, min(extent, 64) + 1, 8)}
    return tuple(sorted(found))


@dataclass(frozen=True)
class TileKnob:
    """Split one loop into ``levels`` loops. The value lists every level's factor, outermost
    first; the outermost is derived (ceil of the rest) so the split always covers the extent.
    Inner factors that do not divide the extent give a guarded split."""

    name: str
    extent: int
    levels: int
    candidates: tuple[int, ...]
    kind: str = field(default="tile", init=False)

    def outer_for(self, inner: list[int]) -> int:
        return -(-self.extent // math.prod(inner))

    def make(self, inner: list[int]) -> list[int]:
        return [self.outer_for(inner), *inner]

    def validate(self, value: KnobValue) -> list[int]:
        if not isinstance(value, list) or len(value) != self.levels:
            raise ConfigError(f"knob {self.name}: expected a list of {self.levels} factors")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise ConfigError(f"knob {self.name}: factors must be positive integers")
        inner = value[1:]
        if any(v not in self.candidates for v in inner):
            raise ConfigError(f"knob {self.name}: {inner} not in the allowed factors")
        if math.prod(inner) > self.extent or value[0] != self.outer_for(inner):
            raise ConfigError(f"knob {self.name}: {value} does not tile extent {self.extent}")
        return value

    def sample(self, rng: random.Random) -> list[int]:
        inner: list[int] = []
        remaining = self.extent
        for _ in range(self.levels - 1):
            options = [c for c in self.candidates if c <= remaining]
            # Bias towards divisors: guarded splits are legal but usually slower.
            divisor_options = [c for c in options if remaining % c == 0]
            pool = divisor_options if divisor_options and rng.random() < 0.8 else options
            factor = rng.choice(pool)
            inner.append(factor)
            remaining = max(1, remaining // factor)
        while math.prod(inner) > self.extent:  # keep the product within the extent
            inner[inner.index(max(inner))] = 1
        inner.reverse()  # sampled innermost first above; values are listed outermost first
        return self.make(inner)

    def neighbor(self, value: list[int], rng: random.Random) -> list[int] | None:
        """A nearby tiling: move a small prime factor from one level to another (the outer
        level absorbs or gives it), MetaSchedule's tile-size mutation. None if none fits."""
        inner = list(value[1:])
        if not inner:
            return None
        for _ in range(MAX_NEIGHBOR_DRAWS):
            p = rng.choice((2, 2, 3))
            src = rng.randrange(-1, len(inner))  # -1: the derived outer level
            dst = rng.randrange(-1, len(inner))
            if src == dst:
                continue
            cand = inner.copy()
            if src >= 0:
                if cand[src] % p:
                    continue
                cand[src] //= p
            if dst >= 0:
                cand[dst] *= p
            if (
                cand != inner
                and all(c in self.candidates for c in cand)
                and math.prod(cand) <= self.extent
            ):
                return self.make(cand)
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "extent": self.extent,
            "levels": self.levels,
            "candidates": list(self.candidates),
        }


@dataclass(frozen=True)
class ChoiceKnob:
    """A categorical knob (loop order, unroll depth, compute-at location, on/off)."""

    name: str
    choices: tuple[KnobValue, ...]
    kind: str = field(default="choice", init=False)

    def validate(self, value: KnobValue) -> KnobValue:
        if value not in self.choices or type(value) is not type(self.choices[0]):
            raise ConfigError(f"knob {self.name}: {value!r} not one of {list(self.choices)}")
        return value

    def sample(self, rng: random.Random) -> KnobValue:
        return rng.choice(self.choices)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "choices": list(self.choices)}


Knob = TileKnob | ChoiceKnob


@dataclass(frozen=True)
class ProductLimit:
    """A bound on several tile knobs at once: the product of the named levels stays within
    ``limit`` (a GPU block's threads are the product of every axis' thread level; a thread's
    accumulators, of its inner levels). Knob domains alone cannot say it, so sampling and
    mutation repair a config into it and ``Template.validate`` refuses one outside it."""

    name: str
    terms: tuple[tuple[str, int], ...]  # (tile knob name, level index, 0 = outermost)
    limit: int

    def product(self, values: dict[str, KnobValue]) -> int:
        return math.prod(values[knob][level] for knob, level in self.terms)

    def repair(self, values: dict[str, KnobValue], knobs: dict[str, Knob]) -> None:
        """Shrink the largest factor among the terms until the product fits (in place);
        the outer level absorbs what is taken, so the split still covers its extent."""
        while self.product(values) > self.limit:
            knob_name, level = max(self.terms, key=lambda t: values[t[0]][t[1]])
            knob = knobs[knob_name]
            assert isinstance(knob, TileKnob) and level > 0, "limits name inner tile levels"
            inner = list(values[knob_name][1:])
            current = inner[level - 1]
            inner[level - 1] = max(c for c in knob.candidates if c <= max(1, current // 2))
            values[knob_name] = knob.make(inner)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "terms": [list(t) for t in self.terms], "limit": self.limit}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ProductLimit:
        return cls(doc["name"], tuple((str(k), int(lv)) for k, lv in doc["terms"]), doc["limit"])


def knob_from_json(doc: dict[str, Any]) -> Knob:
    if doc["kind"] == "tile":
        return TileKnob(doc["name"], doc["extent"], doc["levels"], tuple(doc["candidates"]))
    if doc["kind"] == "choice":
        return ChoiceKnob(doc["name"], tuple(doc["choices"]))
    raise ConfigError(f"unknown knob kind {doc['kind']!r}")


@dataclass(frozen=True)
class StageSpace:
    stage: str
    meta_template: str
    reason: str
    knobs: tuple[Knob, ...]
    limits: tuple[ProductLimit, ...] = ()

    def knob(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        raise ConfigError(f"stage {self.stage} has no knob {name!r}")

    def repair(self, values: dict[str, KnobValue]) -> dict[str, KnobValue]:
        """``values`` brought within the stage's limits (a copy; unchanged if within)."""
        values = dict(values)
        knobs = {k.name: k for k in self.knobs}
        for limit in self.limits:
            limit.repair(values, knobs)
        return values


@dataclass(frozen=True)
class Config:
    """Knob values by stage and knob name."""

    values: dict[str, dict[str, KnobValue]]

    def get(self, stage: str, knob: str) -> KnobValue:
        return self.values[stage][knob]

    def to_json(self) -> dict[str, Any]:
        return {"stages": {s: dict(v) for s, v in self.values.items()}}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Config:
        stages = doc.get("stages") if isinstance(doc, dict) else None
        if not isinstance(stages, dict):
            raise ConfigError("a config is an object with a 'stages' object")
        return cls({str(s): dict(v) for s, v in stages.items()})


@dataclass(frozen=True)
class Template:
    """A workload's search space: per stage, its meta-template and knobs."""

    workload_key: str
    stages: tuple[StageSpace, ...]

    def stage(self, name: str) -> StageSpace:
        for s in self.stages:
            if s.stage == name:
                return s
        raise ConfigError(f"template has no stage {name!r}")

    def validate(self, config: Config) -> Config:
        """Check every knob is present and in its domain (extra stages or knobs are errors)."""
        expected = {s.stage for s in self.stages}
        unknown = set(config.values) - expected
        if unknown:
            raise ConfigError(f"config names unknown stages {sorted(unknown)}")
        for space in self.stages:
            values = config.values.get(space.stage, {})
            names = {k.name for k in space.knobs}
            if set(values) != names:
                raise ConfigError(
                    f"stage {space.stage}: knobs {sorted(values)} differ from {sorted(names)}"
                )
            for knob in space.knobs:
                knob.validate(values[knob.name])
            for limit in space.limits:
                if limit.product(values) > limit.limit:
                    raise ConfigError(
                        f"stage {space.stage}: {limit.name} is {limit.product(values)}, "
                        f"over its limit {limit.limit}"
                    )
        return config

    def repair(self, config: Config) -> Config:
        """``config`` with every stage brought within its limits (see ``ProductLimit``)."""
        return Config(
            {
                s.stage: s.repair(config.values[s.stage]) if s.limits else config.values[s.stage]
                for s in self.stages
            }
        )

    def sample(self, rng: random.Random) -> Config:
        return self.repair(
            Config({s.stage: {k.name: k.sample(rng) for k in s.knobs} for s in self.stages})
        )

    def size(self) -> float:
        """A rough count of configs (tile knobs counted by their candidate combinations)."""
        total = 1.0
        for s in self.stages:
            for k in s.knobs:
                total *= (
                    len(k.choices)
                    if isinstance(k, ChoiceKnob)
                    else len(k.candidates) ** (k.levels - 1)
                )
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "workload_key": self.workload_key,
            "stages": [
                {
                    "stage": s.stage,
                    "meta_template": s.meta_template,
                    "reason": s.reason,
                    "knobs": [k.to_json() for k in s.knobs],
                    **({"limits": [lim.to_json() for lim in s.limits]} if s.limits else {}),
                }
                for s in self.stages
            ],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Template:
        return cls(
            doc["workload_key"],
            tuple(
                StageSpace(
                    s["stage"],
                    s["meta_template"],
                    s.get("reason", ""),
                    tuple(knob_from_json(k) for k in s["knobs"]),
                    tuple(ProductLimit.from_json(lim) for lim in s.get("limits", ())),
                )
                for s in doc["stages"]
            ),
        )
