"""SearchStrategy: proposes configs to measure; never proposes one twice."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterable

from autosched.space import Config, Template
from autosched.tune.database import TrialRecord, config_digest
from autosched.tune.measure import MeasureResult

# How many samples a strategy may draw looking for one fresh config before it gives up
# (a small space can be exhausted).
MAX_DRAWS_PER_CONFIG = 50


class SearchStrategy(ABC):
    def __init__(self, template: Template, seed: int = 0) -> None:
        self.template = template
        self.rng = random.Random(seed)
        self.measured: dict[str, tuple[Config, float]] = {}  # digest -> (config, latency)
        self.proposed: set[str] = set()

    def pre_tuning(self, records: Iterable[TrialRecord]) -> None:
        """Take earlier trials into account (resume): they are never proposed again."""
        for r in records:
            self.measured[r.digest] = (r.config, r.result.latency)
            self.proposed.add(r.digest)

    def notify(self, configs: list[Config], results: list[MeasureResult]) -> None:
        for config, result in zip(configs, results, strict=True):
            digest = config_digest(config)
            self.measured[digest] = (config, result.latency)
            self.proposed.add(digest)

    def is_fresh(self, config: Config) -> bool:
        return config_digest(config) not in self.proposed

    def take(self, config: Config) -> bool:
        """Reserve ``config`` if it has never been proposed; return whether it was fresh."""
        digest = config_digest(config)
        if digest in self.proposed:
            return False
        self.proposed.add(digest)
        return True

    def random_fresh(self, n: int) -> list[Config]:
        found: list[Config] = []
        for _ in range(n * MAX_DRAWS_PER_CONFIG):
            if len(found) == n:
                break
            config = self.template.sample(self.rng)
            if self.take(config):
                found.append(config)
        return found

    @abstractmethod
    def generate(self, n: int) -> list[Config]:
        """Up to ``n`` configs never proposed before (fewer when the space runs out)."""
