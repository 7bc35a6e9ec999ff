"""Child side of a sandbox: ``python -m autosched.tune.sandbox.child HANDLER LIMITS``.

``main`` applies the limits (``policy``), imports the handler (only from ``HANDLER_MODULES``),
moves ``stdout`` to ``stderr`` so that prints from TVM or gcc cannot corrupt the protocol,
calls the handler module's ``warmup`` if it has one, makes fatal signals end the child at
once (``policy.die_promptly_on_fatal_signals``), answers ``ready`` and then serves one
JSON request per line until stdin closes (``worker.SandboxWorker`` is the other end).

The handlers live with their users: the runner's in ``autosched.tune.runner_handlers``, the
builder's in ``autosched.tune.builder``, the API's template builder in
``autosched.service.workload_sandbox``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from autosched.tune.sandbox.policy import (
    apply_limits,
    arm_cpu_limit,
    die_promptly_on_fatal_signals,
)

# The modules whose handlers a sandbox may import (argv is ours, but keep the door narrow).
HANDLER_MODULES = frozenset(
    {
        "autosched.tune.runner_handlers",
        "autosched.tune.builder",
        "autosched.service.workload_sandbox",
    }
)


def _load_handler(spec: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    module, _, name = spec.partition(":")
    if module not in HANDLER_MODULES or not name:
        raise SystemExit(f"refusing handler {spec!r}")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str]) -> int:
    # tvm_ffi imports torch when it is installed (~0.9 s of a ~1.8 s start); a sandbox never
    # needs it, and a fresh sandbox is started after every failed candidate.
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    spec: dict[str, Any] = json.loads(argv[1]) if len(argv) > 1 else {}
    apply_limits(spec)  # before the handler (and TVM) is imported, so all runs under them
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    handler = _load_handler(argv[0])
    warmup = getattr(sys.modules[handler.__module__], "warmup", None)
    if warmup is not None:
        warmup()
    die_promptly_on_fatal_signals()  # after TVM is loaded: it installs its own SIGSEGV handler
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        arm_cpu_limit(spec)
        try:
            reply = handler(json.loads(line))
        except Exception as e:
            reply = _limit_reply(e, spec) or {"ok": False, "error": _format_exc(e)}
        proto.write(json.dumps(reply) + "\n")
        if reply.get("recycle"):
            break
    return 0


def _limit_reply(e: Exception, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The reply to a request that ran past the address-space limit, else None.

    It says so, and asks the parent to ``recycle`` this child (which then exits): its heap
    may be in any state after a failed allocation. (The CPU and file-size limits end the
    child with SIGXCPU/SIGXFSZ instead, and the parent names them.)
    """
    if not isinstance(e, MemoryError):
        return None
    limit = spec.get("as_bytes")
    where = f" ({limit >> 20} MiB)" if limit else ""
    error = f"out of memory: the sandbox's address-space limit{where} was reached"
    return {"ok": False, "error": f"{error}: {_format_exc(e)}", "recycle": True}


def _format_exc(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    if len(text) > 4000:
        text = text[:4000] + " ..."
    return text


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
