"""The benchmark environment: what was measured on, and whether the machine was busy."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from typing import Any

import numpy as np
import tvm

from autosched.host_description import cpu_model
from bench.report import make_console

console = make_console(160)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def environment(hw: Any, target: tvm.target.Target) -> dict[str, str]:
    env = {
        "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS", "?"),
        "cpu": cpu_model(),
        "hardware": ", ".join(f"{k}={v}" for k, v in asdict(hw).items()),
        "target": str(target),
        "tvm": tvm.__version__,
        "python": platform.python_version(),
        "numpy": f"{np.__version__} ({_numpy_blas()})",
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if torch_available():
        import torch

        env["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    else:
        env["torch"] = "not installed (pip install torch==2.13.0): torch columns empty"
    return env


def _numpy_blas() -> str:
    try:
        from threadpoolctl import threadpool_info

        infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if infos:
            i = infos[0]
            return f"{i.get('internal_api')} {i.get('version')}, {i.get('num_threads')} threads"
    except ImportError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # numpy's config layout is not a stable API; this is cosmetic
        return "unknown BLAS"


def warn_if_busy(cores: int, after: bool = False) -> None:
    """Other processes on the 2 cores inflate every timing (seen: BLAS 0.16 ms -> 15 ms)."""
    load1 = os.getloadavg()[0]
    # Our own run adds ~1-2 to the load average by the end, so the bar is higher afterwards.
    limit = cores + 0.5 if after else 0.5
    if load1 > limit:
        console.print(
            f"[yellow]warning[/]: 1-minute load average {load1:.2f} "
            f"{'at the end' if after else 'before starting'} on {cores} cores: other processes "
            "compete for the CPU and the timings are unreliable"
        )
