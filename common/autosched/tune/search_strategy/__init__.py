from autosched.tune.search_strategy.evolutionary_search import EvolutionarySearch
from autosched.tune.search_strategy.random_search import RandomSearch
from autosched.tune.search_strategy.search_strategy import SearchStrategy

__all__ = ["EvolutionarySearch", "RandomSearch", "SearchStrategy"]
