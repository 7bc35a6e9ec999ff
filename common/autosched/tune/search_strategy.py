"""Search strategies propose configs to measure, never one twice.

``RandomSearch`` samples the template's space uniformly (the baseline). ``EvolutionarySearch``
is steered by a cost model (MetaSchedule's EvolutionarySearch, on knobs): each round, parents
are the best measured configs plus random samples; a few generations of mutation (one knob
resampled) and crossover (stages taken from either parent) grow a population the cost model
ranks; the batch is the best-predicted fresh configs, with an epsilon share of random ones so
the model keeps seeing the unexplored space.

Long runs (hundreds of trials) must keep improving where better configs exist, so the search
guards against collapsing into one basin: the elite parents are kept apart (no two closer
than ``min_distance`` knobs), a mutation now and then changes several knobs at once (a good
config of another structure often differs in several knobs together: loop order, packing and
a tile), and when the best has not improved for ``patience`` batches the search restarts its
parents from far, random configs and raises the random share, until it improves again.
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
        extra_knob_prob: float = 0.3,
        min_distance: int = 2,
        patience: int = 4,
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
        self.extra_knob_prob = extra_knob_prob
        self.min_distance = min_distance
        self.patience = patience
        self.best = math.inf
        self.stale_batches = 0  # batches since the best last improved (by > 0.5 %)
        self.initial = list(initial or [])  # e.g. the static config: measured first
        # The initial configs also stay parents: a strong heuristic's neighbourhood is where
        # the first batches (with a cost model that knows little yet) search best.
        self.seeds = list(self.initial)

    def notify(self, configs: list[Config], results: list[MeasureResult]) -> None:
        super().notify(configs, results)
        best = min((r.latency for r in results), default=math.inf)
        if best < self.best * 0.995:
            self.best, self.stale_batches = best, 0
        else:
            self.best = min(self.best, best)
            self.stale_batches += 1

    @property
    def stalled(self) -> bool:
        """Every other batch once the best has not moved for ``patience`` batches: the
        batches in between keep refining the best basin found so far."""
        return self.stale_batches >= self.patience and self.stale_batches % 2 == 0

    # ---- variation operators ------------------------------------------------------------
    def mutate(self, config: Config) -> Config:
        """Resample one knob, and with ``extra_knob_prob`` each, one more, and so on."""
        values = {s: dict(v) for s, v in config.values.items()}
        self._mutate_one(values)
        while self.rng.random() < self.extra_knob_prob:
            self._mutate_one(values)
        # A step may break a limit over several knobs (a GPU block's threads): repair it.
        return self.template.repair(Config(values))

    def _mutate_one(self, values: dict[str, dict]) -> None:
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

    def crossover(self, a: Config, b: Config) -> Config:
        return Config({s: dict((a if self.rng.random() < 0.5 else b).values[s]) for s in a.values})

    # ---- one round ------------------------------------------------------------------------
    def _parents(self) -> list[Config]:
        ranked = sorted(
            (v for v in self.measured.values() if math.isfinite(v[1])), key=lambda v: v[1]
        )
        if self.stalled:
            # Restart: the best few stay (they are still the ones to beat), the rest of the
            # parents are random configs far from them.
            parents = self._diverse([c for c, _ in ranked], self.elite // 4)
            return parents + [self.template.sample(self.rng) for _ in range(4 * self.elite)]
        parents = self._diverse([c for c, _ in ranked], self.elite)
        parents += [c for c in self.seeds if c not in parents]
        parents += [self.template.sample(self.rng) for _ in range(self.elite)]
        return parents

    def _diverse(self, ranked: list[Config], n: int) -> list[Config]:
        """The best ``n`` of ``ranked`` that keep ``min_distance`` knobs from each other; the
        next best fill up when too few are that far apart."""
        chosen: list[Config] = []
        for config in ranked:
            if len(chosen) == n:
                return chosen
            if all(_distance(config, c) >= self.min_distance for c in chosen):
                chosen.append(config)
        rest = [c for c in ranked if c not in chosen]
        return chosen + rest[: n - len(chosen)]

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
        epsilon = 0.5 if self.stalled else self.epsilon
        n_random = max(1, round(epsilon * n)) if n > 1 else 0
        # A few neighbours of the best, whatever the model thinks of them: where the model
        # knows a basin poorly (few samples there) it would otherwise stop refining it.
        n_local = n // 8 if self.measured else 0
        batch += self._neighbours_of_best(min(n_local, n - n_random - len(batch)))
        population = self._evolve(self._parents())
        scores = self.cost_model.predict(self.template, population)
        for i in sorted(range(len(population)), key=lambda i: -scores[i]):
            if len(batch) >= n - n_random:
                break
            if self.take(population[i]):
                batch.append(population[i])
        batch += self.random_fresh(n - len(batch))
        return batch

    def _neighbours_of_best(self, n: int) -> list[Config]:
        ranked = sorted(
            (v for v in self.measured.values() if math.isfinite(v[1])), key=lambda v: v[1]
        )
        if not ranked or n <= 0:
            return []
        best = ranked[0][0]
        found: list[Config] = []
        for _ in range(n * MAX_DRAWS_PER_CONFIG):
            if len(found) == n:
                break
            values = {s: dict(v) for s, v in best.values.items()}
            self._mutate_one(values)
            config = self.template.repair(Config(values))
            if self.take(config):
                found.append(config)
        return found


def _distance(a: Config, b: Config) -> int:
    """How many knobs two configs of one template set differently."""
    return sum(
        a.values[stage][name] != value
        for stage, knobs in b.values.items()
        for name, value in knobs.items()
    )
