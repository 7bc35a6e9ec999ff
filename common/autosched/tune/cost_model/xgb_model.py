"""XGBoost cost model, MetaSchedule style: gradient-boosted trees on config features.

The model keeps every trial it has seen, per workload key (template), so it can be
warm-started from records and saved with its data. Each ``update`` retrains that workload's
booster from scratch on all of its data (a few dozen rounds: well under a second for a few
hundred samples). The target is normalized throughput, ``min_latency / latency`` within the
workload, with failed trials (``math.inf``) at 0.

Templates never seen in ``update`` get seeded uniform random scores (no information yet).

Saved as one JSON document: parameters, and per workload the template, the configs, the
latencies (``null`` for failures) and the booster in xgboost's own JSON model format.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from autosched.space import Config, Template
from autosched.tune.cost_model.cost_model import CostModel, normalized_throughput
from autosched.tune.cost_model.features import FeatureExtractor, KnobFeatures

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "reg:squarederror",
    "max_depth": 6,
    "eta": 0.2,
    "min_child_weight": 0.0,
    "gamma": 0.0001,
    "lambda": 1.0,
    "subsample": 1.0,
    "tree_method": "hist",
    "nthread": 1,
    "verbosity": 0,
}


class _Workload:
    """The trials of one template, their feature matrix and its booster."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.configs: list[Config] = []
        self.latencies: list[float] = []
        self.features: np.ndarray | None = None
        self.booster: xgb.Booster | None = None


class XGBModel(CostModel):
    kind = "xgb"

    def __init__(
        self,
        seed: int = 0,
        num_rounds: int = 40,
        params: dict[str, Any] | None = None,
        features: FeatureExtractor | None = None,
    ) -> None:
        self.seed = seed
        self.num_rounds = num_rounds
        self.params = {**DEFAULT_PARAMS, **(params or {}), "seed": seed}
        self.features = features or KnobFeatures()
        self._workloads: dict[str, _Workload] = {}
        self._rng = np.random.default_rng(seed)

    # -- data -----------------------------------------------------------------------------
    def num_samples(self, template: Template | None = None) -> int:
        if template is not None:
            w = self._workloads.get(template.workload_key)
            return len(w.configs) if w else 0
        return sum(len(w.configs) for w in self._workloads.values())

    def _workload(self, template: Template) -> _Workload:
        w = self._workloads.get(template.workload_key)
        if w is None:
            w = self._workloads[template.workload_key] = _Workload(template)
        return w

    def _add(self, w: _Workload, configs: list[Config], latencies: list[float]) -> None:
        if len(configs) != len(latencies):
            raise ValueError("configs and latencies differ in length")
        lat = [
            math.inf if x is None or not math.isfinite(x) or x <= 0 else float(x) for x in latencies
        ]
        new = self.features(w.template, list(configs))
        w.features = new if w.features is None else np.vstack([w.features, new])
        w.configs += list(configs)
        w.latencies += lat

    def _train(self, w: _Workload) -> None:
        y = normalized_throughput(w.latencies)
        if not len(y) or not y.any():
            w.booster = None  # nothing succeeded yet: no signal to learn
            return
        dtrain = xgb.DMatrix(w.features, label=y)
        w.booster = xgb.train(self.params, dtrain, num_boost_round=self.num_rounds)

    # -- CostModel --------------------------------------------------------------------------
    def update(self, template: Template, configs: list[Config], latencies: list[float]) -> None:
        w = self._workload(template)
        self._add(w, configs, latencies)
        self._train(w)

    def predict(self, template: Template, configs: list[Config]) -> np.ndarray:
        w = self._workloads.get(template.workload_key)
        if w is None or w.booster is None:
            return self._rng.random(len(configs))
        if not configs:
            return np.zeros(0)
        x = self.features(w.template, list(configs))
        return w.booster.predict(xgb.DMatrix(x)).astype(float)

    def save(self, path: str | Path) -> None:
        doc = {
            "kind": self.kind,
            "features": self.features.name,
            "seed": self.seed,
            "num_rounds": self.num_rounds,
            "params": self.params,
            "workloads": [
                {
                    "template": w.template.to_json(),
                    "configs": [c.to_json() for c in w.configs],
                    "latencies": [x if math.isfinite(x) else None for x in w.latencies],
                    "booster": (None if w.booster is None else w.booster.save_raw("json").decode()),
                }
                for w in self._workloads.values()
            ],
        }
        Path(path).write_text(json.dumps(doc))

    def load(self, path: str | Path) -> XGBModel:
        doc = json.loads(Path(path).read_text())
        if doc.get("kind") != self.kind:
            raise ValueError(f"{path} holds a {doc.get('kind')!r} model, not {self.kind!r}")
        if doc["features"] != self.features.name:
            raise ValueError(
                f"{path} was trained on {doc['features']!r} features; this model uses "
                f"{self.features.name!r}"
            )
        self.seed = int(doc["seed"])
        self.num_rounds = int(doc["num_rounds"])
        self.params = dict(doc["params"])
        self._rng = np.random.default_rng(self.seed)
        self._workloads = {}
        for entry in doc["workloads"]:
            template = Template.from_json(entry["template"])
            w = self._workload(template)
            configs = [Config.from_json(c) for c in entry["configs"]]
            lat = [math.inf if x is None else float(x) for x in entry["latencies"]]
            self._add(w, configs, lat)
            if entry["booster"] is not None:
                w.booster = xgb.Booster()
                w.booster.load_model(bytearray(entry["booster"].encode()))
        return self
