"""Search strategies propose configs to measure, never one twice.

``RandomSearch`` samples the template's space uniformly (the baseline). ``EvolutionarySearch``
is steered by a cost model (MetaSchedule's EvolutionarySearch, on knobs): each round, parents
are the best measured configs plus random samples; a few generations of mutation (one knob
resampled) and crossover (stages taken from either parent) grow a population the cost model
ranks; the batch is the best-predicted fresh configs, with an epsilon share of random ones so
the model keeps seeing the unexplored space.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable

from autosched.space import ChoiceKnob, Config, Template, TileKnob
from autosched.tune.cost_model import CostModel
from autosched.tune.trial import MeasureResult, TrialRecord, config_digest

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


class RandomSearch(SearchStrategy):
    def generate(self, n: int) -> list[Config]:
        return self.random_fresh(n)


class EvolutionarySearch(SearchStrategy):
    def __init__(
        self,
        template: Template,
        cost_model: CostModel,
        seed: int = 0,
        *,
        population: int = 256,
        generations: int = 3,
        elite: int = 16,
        mutation_prob: float = 0.85,
        epsilon: float = 0.1,
        local_prob: float = 0.7,
        initial: list[Config] | None = None,
    ) -> None:
        super().__init__(template, seed)
        self.cost_model = cost_model
        self.population = population
        self.generations = generations
        self.elite = elite
        self.mutation_prob = mutation_prob
        self.epsilon = epsilon
        self.local_prob = local_prob
        self.initial = list(initial or [])  # e.g. the static config: measured first
        # The initial configs also stay parents: a strong heuristic's neighbourhood is where
        # the first batches (with a cost model that knows little yet) search best.
        self.seeds = list(self.initial)

    # ---- variation operators ------------------------------------------------------------
    def mutate(self, config: Config) -> Config:
        values = {s: dict(v) for s, v in config.values.items()}
        space = self.rng.choice([s for s in self.template.stages if s.knobs])
        knob = self.rng.choice(space.knobs)
        current = values[space.stage][knob.name]
        if isinstance(knob, ChoiceKnob) and len(knob.choices) > 1:
            values[space.stage][knob.name] = self.rng.choice(
                [c for c in knob.choices if c != current]
            )
        elif isinstance(knob, TileKnob) and self.rng.random() < self.local_prob:
            # Mostly small steps (a factor moved between levels): good tilings have good
            # neighbours; a resample is a jump anywhere in the knob's domain.
            values[space.stage][knob.name] = knob.neighbor(current, self.rng) or knob.sample(
                self.rng
            )
        else:
            values[space.stage][knob.name] = knob.sample(self.rng)
        # A step may break a limit over several knobs (a GPU block's threads): repair it.
        return self.template.repair(Config(values))

    def crossover(self, a: Config, b: Config) -> Config:
        return Config({s: dict((a if self.rng.random() < 0.5 else b).values[s]) for s in a.values})

    # ---- one round ------------------------------------------------------------------------
    def _parents(self) -> list[Config]:
        ranked = sorted(
            (v for v in self.measured.values() if math.isfinite(v[1])), key=lambda v: v[1]
        )
        parents = [c for c, _ in ranked[: self.elite]]
        parents += [c for c in self.seeds if c not in parents]
        parents += [self.template.sample(self.rng) for _ in range(self.elite)]
        return parents

    def _evolve(self, parents: list[Config]) -> list[Config]:
        pool = list(parents)
        for _ in range(self.generations):
            children = []
            for _ in range(self.population):
                a = self.rng.choice(pool)
                if self.rng.random() < self.mutation_prob:
                    children.append(self.mutate(a))
                else:
                    children.append(self.crossover(a, self.rng.choice(pool)))
            scores = self.cost_model.predict(self.template, children)
            order = sorted(range(len(children)), key=lambda i: -scores[i])
            pool = [children[i] for i in order[: self.population // 4]] + parents
        return pool

    def generate(self, n: int) -> list[Config]:
        batch = [c for c in self.initial if self.take(c)][:n]
        self.initial = []
        n_random = max(1, round(self.epsilon * n)) if n > 1 else 0
        population = self._evolve(self._parents())
        scores = self.cost_model.predict(self.template, population)
        for i in sorted(range(len(population)), key=lambda i: -scores[i]):
            if len(batch) >= n - n_random:
                break
            if self.take(population[i]):
                batch.append(population[i])
        batch += self.random_fresh(n - len(batch))
        return batch
