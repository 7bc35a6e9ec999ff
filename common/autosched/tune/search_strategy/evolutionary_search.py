"""Evolutionary search steered by a cost model (MetaSchedule's EvolutionarySearch, on knobs).

Each round: parents are the best measured configs plus random samples; a few generations of
mutation (one knob resampled) and crossover (stages taken from either parent) grow a
population the cost model ranks; the batch is the best-predicted fresh configs, with an
epsilon share of random ones so the model keeps seeing the unexplored space.
"""

from __future__ import annotations

import math

from autosched.space import ChoiceKnob, Config, Template, TileKnob
from autosched.tune.cost_model import CostModel
from autosched.tune.search_strategy.search_strategy import SearchStrategy


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
        return Config(values)

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
