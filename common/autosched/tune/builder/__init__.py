"""Builders: compile candidates into shared libraries (``Builder``, ``LocalBuilder``)."""

from autosched.tune.builder.builder import Builder
from autosched.tune.builder.local_builder import LocalBuilder, artifact_name

__all__ = ["Builder", "LocalBuilder", "artifact_name"]
