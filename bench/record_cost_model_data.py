"""Record a small cost-model dataset: measure random configs of a few zoo workloads.

Writes one JSON line per trial, ``{"workload", "config", "latency"}`` (seconds, ``null`` when
applying, building or running the config failed), to ``tests/data/cost_model_records.jsonl``
by default. Measurement is deliberately short (number=1, repeat=3, median) and therefore
noisy; that is fine for training and ranking tests.

    python bench/record_cost_model_data.py                      # 120 configs x 3 workloads
    python bench/record_cost_model_data.py --trials 40 --workloads softmax --out /tmp/r.jsonl
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import tvm

from autosched import zoo
from autosched.hardware import cpu_target, detect_hardware
from autosched.schedule import apply_config, build_template

DEFAULT_WORKLOADS = ("matmul_512", "conv2d_resnet_c2", "softmax")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "cost_model_records.jsonl"


def _arrays(func: tvm.tirx.PrimFunc, dev: tvm.runtime.Device) -> list[tvm.runtime.Tensor]:
    rng = np.random.default_rng(0)
    out = []
    for p in func.params:
        shape = [int(x) for x in p.shape]
        out.append(tvm.runtime.tensor(rng.uniform(-1, 1, shape).astype(str(p.dtype)), dev))
    return out


def measure(func, config, hw, target, args, dev, number: int, repeat: int) -> float | None:
    """Median seconds per call of ``config`` applied to ``func``; None if anything failed."""
    try:
        sch = apply_config(func, config, hw)
        ex = tvm.compile(sch.mod, target=target)
        timer = ex.mod.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=0)
        return float(np.median(timer(*args).results))
    except Exception as exc:  # a failed trial is data
        print(f"    failed: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)
        return None


def record(
    workloads: list[str], trials: int, seed: int, out: Path, number: int, repeat: int
) -> None:
    hw = detect_hardware()
    target = cpu_target(hw)
    dev = tvm.cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for name in workloads:
            func = zoo.prim_func(name)
            template = build_template(func, hw)
            args = _arrays(func, dev)
            rng = random.Random(f"{seed}-{name}")
            seen: set[str] = set()
            start = time.perf_counter()
            attempts = 0
            while len(seen) < trials and attempts < trials * 20:
                attempts += 1
                config = template.sample(rng)
                doc = config.to_json()
                key = json.dumps(doc, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
                latency = measure(func, config, hw, target, args, dev, number, repeat)
                line = {"workload": name, "config": doc, "latency": latency}
                fh.write(json.dumps(line, separators=(",", ":")) + "\n")
                fh.flush()
                shown = "failed" if latency is None else f"{latency * 1e3:.3f} ms"
                print(f"{name} [{len(seen)}/{trials}] {shown}", flush=True)
            print(f"{name}: {len(seen)} trials in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS))
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--number", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = parser.parse_args()
    record(a.workloads.split(","), a.trials, a.seed, a.out, a.number, a.repeat)


if __name__ == "__main__":
    main()
