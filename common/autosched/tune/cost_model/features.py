"""Fixed-length feature vectors for the configs of one template.

Two extractors, both callables ``(template, configs) -> float array (n_configs, n_features)``
with a fixed width per template:

- ``KnobFeatures`` (the default): straight from the config, no TVM. Per knob, in template
  order: a tile knob gives log2 of every level's factor and whether the split is guarded (its
  factors do not divide the extent); a choice knob gives a one-hot of its choices (plus
  log2(1+v) for integer choices, so trees can split on magnitude). Per stage it adds, for each
  group of tile knobs with the same number of levels, the summed log2 factor of every level
  (log of the tile volume at that level: register tile, cache tile, ...).
- ``StoreFeatures``: applies the config and runs TVM MetaSchedule's ``PerStoreFeature`` on the
  schedule (164 features per store block), pooled over blocks by sum, max and mean (492).
  It needs the PrimFunc, hence a resolver from the template's workload key.

Measured on ``tests/data/cost_model_records.jsonl`` (120 random configs each of matmul_512,
conv2d_resnet_c2, softmax; XGBModel defaults; mean over 5 random 70/30 splits; Kendall tau /
recall of the true best 10% among the predicted best 10%):

    features     matmul_512   conv2d_resnet_c2   softmax      mean         cost per config
    random       0.03 / 0.05  -0.10 / 0.15       -0.09 / 0.10 -0.05 / 0.10
    knob         0.33 / 0.35   0.24 / 0.30        0.77 / 0.50  0.45 / 0.38  ~0.05 ms
    store        0.32 / 0.15   0.17 / 0.25        0.54 / 0.30  0.34 / 0.23  ~30 ms
    knob+store   0.31 / 0.15   0.25 / 0.05        0.76 / 0.55  0.44 / 0.25  ~30 ms

(store: ~28 ms to apply the config, ~5 ms to extract.) Knob features rank best and cost
nothing, so they are the default (and adding store features to them, knob+store, gains
nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from autosched.space import ChoiceKnob, Config, Template, TileKnob


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else 0.0


class KnobFeatures:
    """Features read off the knob values (see the module docstring)."""

    name = "knob"

    def names(self, template: Template) -> list[str]:
        out: list[str] = []
        for stage in template.stages:
            groups: dict[int, int] = {}
            for knob in stage.knobs:
                prefix = f"{stage.stage}.{knob.name}"
                if isinstance(knob, TileKnob):
                    out += [f"{prefix}.log2[{i}]" for i in range(knob.levels)]
                    out.append(f"{prefix}.guarded")
                    groups[knob.levels] = knob.levels
                else:
                    out += [f"{prefix}=={c!r}" for c in knob.choices]
                    if _is_int_choice(knob):
                        out.append(f"{prefix}.log2(1+v)")
            for levels in sorted(groups):
                out += [f"{stage.stage}.tiles{levels}.sumlog2[{i}]" for i in range(levels)]
        return out

    def one(self, template: Template, config: Config) -> list[float]:
        row: list[float] = []
        for stage in template.stages:
            values = config.values.get(stage.stage, {})
            sums: dict[int, list[float]] = {}
            for knob in stage.knobs:
                value = values.get(knob.name)
                if isinstance(knob, TileKnob):
                    factors = list(value) if isinstance(value, list) else [1] * knob.levels
                    factors = (factors + [1] * knob.levels)[: knob.levels]
                    logs = [_log2(f) for f in factors]
                    row += logs
                    inner = math.prod(factors[1:])
                    row.append(float(knob.extent % inner != 0 or inner > knob.extent))
                    acc = sums.setdefault(knob.levels, [0.0] * knob.levels)
                    for i, v in enumerate(logs):
                        acc[i] += v
                else:
                    row += [float(_same(value, c)) for c in knob.choices]
                    if _is_int_choice(knob):
                        row.append(_log2(1 + value) if isinstance(value, int) else 0.0)
            for levels in sorted(sums):
                row += sums[levels]
        return row

    def __call__(self, template: Template, configs: list[Config]) -> np.ndarray:
        width = len(self.names(template))
        if not configs:
            return np.zeros((0, width))
        return np.asarray([self.one(template, c) for c in configs], dtype=float).reshape(-1, width)


def _is_int_choice(knob: ChoiceKnob) -> bool:
    return all(isinstance(c, int) and not isinstance(c, bool) for c in knob.choices)


def _same(value: Any, choice: Any) -> bool:
    return type(value) is type(choice) and value == choice


PER_STORE_WIDTH = 164
POOLS = ("sum", "max", "mean")


class StoreFeatures:
    """MetaSchedule ``PerStoreFeature`` of the applied schedule, pooled over store blocks.

    ``resolve(workload_key)`` returns ``(prim_func, hardware_params)`` for a template. The
    TuneContext is built through its FFI constructor directly: its Python ``__init__``
    imports ``tvm.s_tir.tensor_intrin`` (~17-30 s per process), which the extractor does not
    need. Configs that fail to apply get all-zero features plus a failure flag.
    """

    name = "store"

    def __init__(self, resolve: Callable[[str], tuple[Any, Any]]) -> None:
        self.resolve = resolve
        self._contexts: dict[str, Any] = {}
        self._extractor: Any = None

    def width(self) -> int:
        return PER_STORE_WIDTH * len(POOLS) + 1

    def _context(self, key: str, func: Any, target: Any) -> Any:
        if key not in self._contexts:
            import tvm
            from tvm.s_tir import meta_schedule as ms
            from tvm.s_tir.meta_schedule import _ffi_api
            from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func

            ctx = ms.TuneContext.__new__(ms.TuneContext)
            ctx.__init_handle_by_constructor__(
                _ffi_api.TuneContext,
                tvm.IRModule({"main": func}),
                target,
                None,
                None,
                "main",
                1,
                -1,
                get_logging_func(get_logger(__name__)),
            )
            self._contexts[key] = ctx
            self._extractor = self._extractor or ms.feature_extractor.PerStoreFeature()
        return self._contexts[key]

    def __call__(self, template: Template, configs: list[Config]) -> np.ndarray:
        from tvm.s_tir import meta_schedule as ms

        from autosched.errors import AutoschedError
        from autosched.hardware import cpu_target
        from autosched.schedule import apply_config

        out = np.zeros((len(configs), self.width()))
        if not configs:
            return out
        func, hw = self.resolve(template.workload_key)
        ctx = self._context(template.workload_key, func, cpu_target(hw))
        args = ms.arg_info.ArgInfo.from_prim_func(func)
        rows, candidates = [], []
        for i, config in enumerate(configs):
            try:
                sch = apply_config(func, config, hw)
            except AutoschedError:
                out[i, -1] = 1.0
                continue
            rows.append(i)
            candidates.append(ms.MeasureCandidate(sch, args))
        if candidates:
            for i, feat in zip(rows, self._extractor.extract_from(ctx, candidates), strict=True):
                x = feat.numpy().reshape(-1, PER_STORE_WIDTH)
                if x.shape[0]:
                    out[i, :-1] = np.concatenate([x.sum(0), x.max(0), x.mean(0)])
        return out


FeatureExtractor = KnobFeatures | StoreFeatures
