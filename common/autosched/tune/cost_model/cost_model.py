"""The cost-model interface of the tuning engine, and a random baseline.

A cost model learns from measured trials (``update``) and scores unmeasured configs
(``predict``: higher means predicted faster; a score for ranking, not a calibrated
latency). Latencies are seconds; ``math.inf`` marks a failed trial, which counts as zero
throughput. Models persist as JSON (or xgboost's own JSON inside it) — never pickle.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autosched.space import Config, Template


def normalized_throughput(latencies: Sequence[float]) -> np.ndarray:
    """``min_latency / latency`` per trial (1.0 for the fastest, 0.0 for failures)."""
    lat = np.asarray([math.inf if x is None else float(x) for x in latencies], dtype=float)
    ok = np.isfinite(lat) & (lat > 0)
    out = np.zeros(len(lat))
    if ok.any():
        out[ok] = lat[ok].min() / lat[ok]
    return out


class CostModel(ABC):
    """Scores configs of a template; trained online from measured latencies."""

    @abstractmethod
    def update(self, template: Template, configs: list[Config], latencies: list[float]) -> None:
        """Add measured trials (seconds; ``math.inf`` for failures) and retrain."""

    @abstractmethod
    def predict(self, template: Template, configs: list[Config]) -> np.ndarray:
        """One score per config, higher = predicted faster."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write the model (parameters and training data) to ``path``."""

    @abstractmethod
    def load(self, path: str | Path) -> CostModel:
        """Replace this model's state with the one saved at ``path``; returns ``self``."""


class RandomModel(CostModel):
    """Uniform random scores from a seeded generator: the baseline every model must beat."""

    kind = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def update(self, template: Template, configs: list[Config], latencies: list[float]) -> None:
        if len(configs) != len(latencies):
            raise ValueError("configs and latencies differ in length")

    def predict(self, template: Template, configs: list[Config]) -> np.ndarray:
        return self._rng.random(len(configs))

    def _state(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "rng": self._rng.bit_generator.state}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self._state()))

    def load(self, path: str | Path) -> RandomModel:
        doc = json.loads(Path(path).read_text())
        if doc.get("kind") != self.kind:
            raise ValueError(f"{path} holds a {doc.get('kind')!r} model, not {self.kind!r}")
        self.seed = int(doc["seed"])
        self._rng = np.random.default_rng(self.seed)
        self._rng.bit_generator.state = doc["rng"]
        return self
