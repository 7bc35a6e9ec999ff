"""Cost models on recorded measurements (tests/data/cost_model_records.jsonl, made by
bench/record_cost_model_data.py): the XGBoost model must rank held-out configs clearly better
than random, persist exactly, and cope with failed trials."""

from __future__ import annotations

import json
import math
import random
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

from autosched import zoo
from autosched.hardware import detect_hardware
from autosched.schedule import build_template
from autosched.space import Config, Template
from autosched.tune.cost_model import (
    KnobFeatures,
    RandomModel,
    StoreFeatures,
    XGBModel,
    normalized_throughput,
)

RECORDS = Path(__file__).parent / "data" / "cost_model_records.jsonl"


@cache
def records() -> dict[str, tuple[Template, list[Config], list[float]]]:
    """Per workload: its template, the recorded configs and latencies (inf for failures)."""
    raw: dict[str, list[dict]] = {}
    for line in RECORDS.read_text().splitlines():
        doc = json.loads(line)
        raw.setdefault(doc["workload"], []).append(doc)
    hw = detect_hardware()
    out = {}
    for name, docs in raw.items():
        template = build_template(zoo.prim_func(name), hw)
        configs = [Config.from_json(d["config"]) for d in docs]
        lat = [math.inf if d["latency"] is None else float(d["latency"]) for d in docs]
        out[name] = (template, configs, lat)
    return out


def top_recall(y: np.ndarray, scores: np.ndarray, frac: float = 0.1) -> float:
    """Fraction of the truly best ``frac`` that the scores also put in their best ``frac``."""
    k = max(1, round(len(y) * frac))
    best = set(np.argsort(-y, kind="stable")[:k].tolist())
    picked = set(np.argsort(-scores, kind="stable")[:k].tolist())
    return len(best & picked) / k


def split_eval(make_model, seeds=(0, 1, 2)) -> dict[str, tuple[float, float]]:
    """Mean (Kendall tau, top-10% recall) per workload over 70/30 splits."""
    out = {}
    for name, (template, configs, lat) in records().items():
        taus, recalls = [], []
        for seed in seeds:
            idx = list(range(len(configs)))
            random.Random(seed).shuffle(idx)
            cut = int(0.7 * len(idx))
            train, test = idx[:cut], idx[cut:]
            model = make_model(seed)
            model.update(template, [configs[i] for i in train], [lat[i] for i in train])
            scores = model.predict(template, [configs[i] for i in test])
            y = normalized_throughput([lat[i] for i in test])
            taus.append(kendalltau(y, scores).statistic)
            recalls.append(top_recall(y, scores))
        out[name] = (float(np.mean(taus)), float(np.mean(recalls)))
    return out


def test_records_are_usable():
    data = records()
    assert len(data) >= 2
    for _template, configs, lat in data.values():
        assert len(configs) >= 100
        assert sum(math.isfinite(x) for x in lat) >= 0.9 * len(lat)


def test_xgb_ranks_better_than_random():
    xgb_scores = split_eval(lambda seed: XGBModel(seed=seed))
    rand_scores = split_eval(lambda seed: RandomModel(seed=seed))
    for name in xgb_scores:
        assert xgb_scores[name][0] > rand_scores[name][0] + 0.1, (name, xgb_scores, rand_scores)
    tau_x = np.mean([t for t, _ in xgb_scores.values()])
    tau_r = np.mean([t for t, _ in rand_scores.values()])
    rec_x = np.mean([r for _, r in xgb_scores.values()])
    rec_r = np.mean([r for _, r in rand_scores.values()])
    # Measured: tau ~0.45 vs ~-0.05, top-10% recall ~0.38 vs ~0.10.
    assert tau_x >= 0.25 and tau_x - tau_r >= 0.2, (xgb_scores, rand_scores)
    assert rec_x - rec_r >= 0.1, (xgb_scores, rand_scores)


def test_update_is_fast():
    template, configs, lat = records()["conv2d_resnet_c2"]
    model = XGBModel()
    start = time.perf_counter()
    model.update(template, configs, lat)
    assert time.perf_counter() - start < 1.0
    assert model.num_samples(template) == len(configs)


def test_save_load_round_trip(tmp_path):
    model = XGBModel(seed=3)
    for template, configs, lat in records().values():
        model.update(template, configs[:80], lat[:80])
    path = tmp_path / "xgb.json"
    model.save(path)
    loaded = XGBModel().load(path)
    assert loaded.seed == 3 and loaded.num_samples() == model.num_samples()
    for template, configs, _ in records().values():
        np.testing.assert_array_equal(
            model.predict(template, configs[80:]), loaded.predict(template, configs[80:])
        )
    # A warm-started model keeps learning from its loaded data.
    template, configs, lat = records()["softmax"]
    loaded.update(template, configs[80:], lat[80:])
    assert loaded.num_samples(template) == len(configs)

    rand = RandomModel(seed=5)
    rand.predict(template, configs[:3])
    rand.save(tmp_path / "random.json")
    again = RandomModel().load(tmp_path / "random.json")
    np.testing.assert_array_equal(rand.predict(template, configs), again.predict(template, configs))
    with pytest.raises(ValueError):
        XGBModel().load(tmp_path / "random.json")


def test_knob_features_have_fixed_length():
    features = KnobFeatures()
    for template, configs, _ in records().values():
        sampled = [template.sample(random.Random(i)) for i in range(20)]
        x = features(template, configs + sampled)
        assert x.shape == (len(configs) + 20, len(features.names(template)))
        assert np.isfinite(x).all()
        assert len({row.tobytes() for row in x}) > 0.9 * len(x)  # configs are told apart


def test_guarded_split_feature():
    template, configs, _ = records()["conv2d_resnet_c2"]
    features = KnobFeatures()
    names = features.names(template)
    col = names.index("conv2d_nchw.tile_s2.guarded")  # the 56-wide spatial axis
    x = features(template, configs)
    guarded = [56 % math.prod(c.values["conv2d_nchw"]["tile_s2"][1:]) != 0 for c in configs]
    np.testing.assert_array_equal(x[:, col], np.asarray(guarded, dtype=float))


def test_failed_trials():
    template, configs, lat = records()["matmul_512"]
    np.testing.assert_array_equal(normalized_throughput([2.0, math.inf, 1.0]), [0.5, 0.0, 1.0])
    assert not normalized_throughput([math.inf, math.inf]).any()

    model = XGBModel()
    model.update(template, configs[:10], [math.inf] * 10)  # nothing to learn yet
    assert np.isfinite(model.predict(template, configs[10:20])).all()
    failed = list(lat[:60])
    failed[::3] = [math.inf] * len(failed[::3])
    model.update(template, configs[10:60], failed[10:60])
    scores = model.predict(template, configs)
    assert scores.shape == (len(configs),) and np.isfinite(scores).all()
    # Configs that failed are predicted slower than the fastest ones seen.
    train = model.predict(template, configs[10:60])
    y = normalized_throughput(failed[10:60])
    assert train[y == 0].mean() < train[y > 0.5].mean()


def test_unknown_template_gets_random_scores():
    template, configs, _ = records()["softmax"]
    scores = XGBModel(seed=1).predict(template, configs[:30])
    assert scores.shape == (30,) and len(set(scores.tolist())) == 30


def test_store_features_fixed_width():
    hw = detect_hardware()
    funcs = {}
    for name, (template, _, _) in records().items():
        funcs[template.workload_key] = (zoo.prim_func(name), hw)
    features = StoreFeatures(funcs.__getitem__)
    template, configs, _ = records()["softmax"]
    x = features(template, configs[:4])
    assert x.shape == (4, features.width()) and np.isfinite(x).all() and x.any()
