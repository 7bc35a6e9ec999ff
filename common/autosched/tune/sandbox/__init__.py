"""Sandbox processes: the one protocol the builder, the runner and the API's templates use.

``worker`` (parent side: ``SandboxWorker`` and its errors), ``child`` (the child's request
loop, ``python -m autosched.tune.sandbox.child``) and ``policy`` (what a child may have: its
environment, its directory, its resource limits). The handlers a child serves live with
their users.
"""

from autosched.tune.sandbox.policy import SandboxLimits
from autosched.tune.sandbox.worker import (
    SandboxCrash,
    SandboxError,
    SandboxTimeout,
    SandboxWorker,
    describe_exit,
)

__all__ = [
    "SandboxCrash",
    "SandboxError",
    "SandboxLimits",
    "SandboxTimeout",
    "SandboxWorker",
    "describe_exit",
]
