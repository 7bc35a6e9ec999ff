"""Runners: check and time built candidates (``Runner``, ``RunnerInput``, ``LocalRunner``)."""

from autosched.tune.runner.local_runner import LocalRunner
from autosched.tune.runner.runner import Runner, RunnerInput

__all__ = ["LocalRunner", "Runner", "RunnerInput"]
