"""Cost models of the tuning engine: score configs so the search measures promising ones.

``CostModel`` is the interface (``update`` / ``predict`` / ``save`` / ``load``); ``RandomModel``
is the baseline and ``XGBModel`` the learned model (gradient-boosted trees on config features).
"""

from autosched.tune.cost_model.cost_model import CostModel, RandomModel, normalized_throughput
from autosched.tune.cost_model.features import (
    KnobFeatures,
    StoreFeatures,
)
from autosched.tune.cost_model.xgb_model import XGBModel

__all__ = [
    "CostModel",
    "KnobFeatures",
    "RandomModel",
    "StoreFeatures",
    "XGBModel",
    "normalized_throughput",
]
