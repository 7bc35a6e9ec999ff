"""Uniform random sampling of the template's space (the baseline strategy)."""

from __future__ import annotations

from autosched.space import Config
from autosched.tune.search_strategy.search_strategy import SearchStrategy


class RandomSearch(SearchStrategy):
    def generate(self, n: int) -> list[Config]:
        return self.random_fresh(n)
