"""How the benchmark scripts print their results: console, number formats, tables, rows.

``bench/static.py`` and ``bench/vs_metaschedule.py`` both report latencies in ms, ratios
of two times, numerical checks, a kernel's baseline (numpy for matmul-like kernels,
PyTorch otherwise) and its place on the machine's measured roofline; the formats and the
baseline rule live here so that both scripts say the same thing the same way.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Literal

import tvm
from rich.console import Console
from rich.table import Table

from autosched import zoo
from bench import roofline
from bench.baselines import is_matmul_like

Justify = Literal["left", "right"]


def make_console(piped_width: int) -> Console:
    """The terminal's width on a tty; ``piped_width`` otherwise, because piped output (CI
    logs, ``| tee``) would be cut to 80 columns and truncate the tables."""
    return Console(width=None if sys.stdout.isatty() else piped_width)


# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------


def over(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either time is missing (or zero)."""
    return numerator / denominator if numerator and denominator else None


def geomean(xs: Sequence[float | None]) -> float | None:
    """Geometric mean of the positive values; None when there is none."""
    vals = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in vals) / len(vals)) if vals else None


def gflop(func: tvm.tirx.PrimFunc) -> float:
    """Floating-point work of one call, in GFLOP (0 for pure data movement)."""
    return float(tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func}))) / 1e9


# --------------------------------------------------------------------------------------
# Cells: "-" stands for a number that is missing
# --------------------------------------------------------------------------------------


def ms(s: float | None) -> str:
    """Seconds shown as milliseconds: three decimals below 10 ms, two above."""
    return "-" if s is None else f"{s * 1e3:.3f}" if s < 1e-2 else f"{s * 1e3:.2f}"


def sec(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f}"


def ratio(v: float | None, suffix: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{suffix}"


def times(v: float | None) -> str:
    """A speedup factor: "12.34×", or "123×" from 100 on."""
    return "-" if v is None else f"{v:.2f}×" if v < 100 else f"{v:.0f}×"


def rate(gflops: float | None) -> str:
    return "-" if gflops is None else f"{gflops:.1f}"


def roof_cell(share: roofline.RoofShare | None) -> str:
    """Share of the roof that bounds the kernel: "62% FMA" (compute-bound, of the FMA peak)
    or "81% copy" (memory-bound, of the copy bandwidth)."""
    if share is None:
        return "-"
    return f"{share.share:.0%} {'FMA' if share.bound == 'compute' else 'copy'}"


ROOF_LEGEND = (
    "roof = share of the roof that bounds the kernel on the roofline measured at the start: "
    "of the FMA peak when its FLOP per byte (every input read once, every output written "
    "once) is above the ridge point, else of the copy bandwidth."
)


def check_cell(check: str) -> str:
    """A numerical check (ok / FAIL / ERROR / -), coloured for rich markup."""
    return {"ok": "[green]ok[/]", "FAIL": "[red]FAIL[/]", "ERROR": "[red]ERROR[/]"}.get(
        check, check
    )


def baseline_tag(kernel: str) -> str:
    """Which baseline a ratio is against: numpy (np) or PyTorch (pt)."""
    return " np" if is_matmul_like(kernel) else " pt"


def baseline_cell(v: float | None, kernel: str) -> str:
    """A baseline time / our time ratio, tagged with the baseline it is against."""
    return ratio(v, baseline_tag(kernel))


# --------------------------------------------------------------------------------------
# Rows and tables
# --------------------------------------------------------------------------------------


class FieldRatio:
    """A read-only attribute of a result row: one of its fields over another (a time
    ratio, or GFLOP over seconds), None while either is missing. Not a dataclass field, so
    ``asdict`` leaves it out and the scripts add the ratios to their JSON by name."""

    def __init__(self, numerator: str, denominator: str) -> None:
        self.numerator, self.denominator = numerator, denominator

    def __get__(self, row: object, owner: type | None = None) -> float | None:
        return over(getattr(row, self.numerator), getattr(row, self.denominator))


class BaselineTimes:
    """For result dataclasses with ``kernel``, ``numpy_s`` and ``torch_s`` fields: the
    baseline that counts for the kernel is numpy (BLAS) for matmul-like kernels, as the
    targets are stated, and PyTorch otherwise."""

    kernel: str
    numpy_s: float | None
    torch_s: float | None

    @property
    def baseline_s(self) -> float | None:
        return self.numpy_s if is_matmul_like(self.kernel) else self.torch_s


def table(title: str, columns: Sequence[tuple[str, Justify]]) -> Table:
    t = Table(title=title)
    for name, justify in columns:
        t.add_column(name, justify=justify)
    return t


def print_environment(console: Console, env: dict[str, str]) -> None:
    for k, v in env.items():
        console.print(f"[bold]{k}[/]: {v}", highlight=False)


def print_roofline(console: Console, machine: roofline.Roofline) -> None:
    console.print(
        f"[bold]roofline[/] (measured now, all threads): FMA peak {machine.fma_gflops:.0f} "
        f"GFLOP/s (fp32), copy {machine.copy_gbs:.1f} GB/s, triad {machine.triad_gbs:.1f} GB/s "
        f"(arrays of {machine.stream_array_bytes / 2**20:.0f} MiB), ridge "
        f"{machine.ridge:.1f} FLOP/B",
        highlight=False,
    )


def reject_unknown_kernels(console: Console, names: Sequence[str]) -> bool:
    """Print and return True when a name is not in the zoo: fail fast, before minutes of
    benchmarking, on a typo."""
    unknown = [n for n in names if n not in zoo.names()]
    if unknown:
        console.print(f"unknown kernels: {', '.join(unknown)}; known: {', '.join(zoo.names())}")
    return bool(unknown)
