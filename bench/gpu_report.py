"""``bench/gpu.py``'s results: a row per kernel, the issue's targets, and the tables, printed
with rich and written as markdown from the same cells."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.text import Text

from bench import report
from bench.tune_both import Row

Cells = list[str]
Columns = list[tuple[str, report.Justify]]


# --------------------------------------------------------------------------------------
# Results and targets
# --------------------------------------------------------------------------------------


@dataclass
class GpuRow(Row):
    """``tune_both.Row`` (the tuners fill it) plus the PyTorch check; on a GPU the baseline
    is always PyTorch (cuBLAS, cuDNN or its own kernels)."""

    family: str = ""
    description: str = ""
    torch_check: str = "-"
    torch_error: str = ""

    # autosched tuning wall time / MetaSchedule's: < 1 means autosched tuned faster.
    tune_over_ms = report.FieldRatio("as_tune_s", "ms_tune_s")

    @property
    def baseline_s(self) -> float | None:
        return self.torch_s


@dataclass(frozen=True)
class Target:
    label: str
    bound: float
    at_least: bool  # met when value >= bound (a speed), else when value <= bound (a time)
    value: float | None
    kernels: int  # how many kernels the value is over

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        met = self.value >= self.bound if self.at_least else self.value <= self.bound
        return "met" if met else "missed"

    def line(self) -> str:
        """One line with rich markup: the verdict coloured."""
        op = "≥" if self.at_least else "≤"
        colour = {"met": "green", "missed": "red"}.get(self.verdict, "yellow")
        return (
            f"{self.label}: {report.ratio(self.value)} over {self.kernels} kernel(s) "
            f"(target {op} {self.bound}) [{colour}]{self.verdict}[/]"
        )


def _family(rows: Sequence[GpuRow], family: str) -> tuple[float | None, int]:
    vals = [r.base_over_as for r in rows if r.family == family and r.base_over_as]
    return report.geomean(vals), len(vals)


@dataclass(frozen=True)
class TuneTotals:
    """Tuning wall times summed over the kernels both tuners tuned (a tuner that found
    nothing still spent its time)."""

    autosched_s: float | None
    metaschedule_s: float | None
    kernels: int

    @classmethod
    def of(cls, rows: Sequence[GpuRow]) -> TuneTotals:
        both = [r for r in rows if r.as_tune_s and r.ms_tune_s]
        if not both:
            return cls(None, None, 0)
        return cls(
            sum(r.as_tune_s or 0.0 for r in both), sum(r.ms_tune_s or 0.0 for r in both), len(both)
        )

    @property
    def ratio(self) -> float | None:
        return report.over(self.autosched_s, self.metaschedule_s)


def targets(rows: Sequence[GpuRow]) -> list[Target]:
    """The issue's targets over the rows that have the numbers (n/a when none has)."""
    vs_ms = [r.ms_over_as for r in rows if r.ms_over_as]
    big = [r.base_over_as for r in rows if r.kernel == "matmul_4096" and r.base_over_as]
    tune = TuneTotals.of(rows)
    return [
        Target("speed vs MetaSchedule (geomean)", 1.0, True, report.geomean(vs_ms), len(vs_ms)),
        Target("fp32 matmul 4096³ vs cuBLAS", 0.7, True, big[0] if big else None, len(big)),
        Target("conv2d vs cuDNN (geomean)", 0.8, True, *_family(rows, "conv2d")),
        Target("softmax vs PyTorch (geomean)", 0.8, True, *_family(rows, "softmax")),
        Target("layer norm vs PyTorch (geomean)", 0.8, True, *_family(rows, "layer_norm")),
        Target(
            "tuning wall time vs MetaSchedule (totals)",
            0.5,
            False,
            tune.ratio,
            tune.kernels,
        ),
    ]


# --------------------------------------------------------------------------------------
# Tables: printed with rich, written as markdown from the same cells
# --------------------------------------------------------------------------------------


def plain(cell: str) -> str:
    """A cell without its rich markup, for markdown."""
    return Text.from_markup(cell).plain


def print_table(console: Console, title: str, columns: Columns, rows: Sequence[Cells]) -> None:
    t = report.table(title, columns)
    for cells in rows:
        t.add_row(*cells)
    console.print(t)


def markdown_table(title: str, columns: Columns, rows: Sequence[Cells]) -> str:
    align = {"left": ":---", "right": "---:"}
    lines = [
        f"**{title}**",
        "",
        "| " + " | ".join(name for name, _ in columns) + " |",
        "| " + " | ".join(align[j] for _, j in columns) + " |",
    ]
    lines += [
        "| " + " | ".join(plain(c).replace("|", "\\|") for c in cells) + " |" for cells in rows
    ]
    return "\n".join(lines)


def _speed(v: float | None) -> str:
    """A speed ratio (> 1: autosched faster), green when autosched is at least as fast."""
    s = report.ratio(v)
    return s if v is None else f"[green]{s}[/]" if v >= 1 else f"[red]{s}[/]"


RESULT_COLUMNS: Columns = [
    ("kernel", "left"),
    ("GFLOP", "right"),
    ("autosched ms", "right"),
    ("MS ms", "right"),
    ("PyTorch ms", "right"),
    ("speed vs MS", "right"),
    ("speed vs PyTorch", "right"),
    ("GFLOP/s as", "right"),
    ("as tune s", "right"),
    ("MS tune s", "right"),
    ("tune as/MS", "right"),
    ("check as/MS/PT", "left"),
]


def result_cells(rows: Sequence[GpuRow]) -> list[Cells]:
    out = []
    for r in rows:
        out.append(
            [
                r.kernel,
                f"{r.gflop:.3f}",
                report.ms(r.as_s),
                report.ms(r.ms_s),
                report.ms(r.torch_s),
                _speed(r.ms_over_as),
                _speed(r.base_over_as),
                report.rate(report.over(r.gflop, r.as_s)),
                report.sec(r.as_tune_s),
                report.sec(r.ms_tune_s),
                report.ratio(r.tune_over_ms),
                "/".join(report.check_cell(c) for c in (r.as_check, r.ms_check, r.torch_check)),
            ]
        )
    tune = TuneTotals.of(rows)
    out.append(
        [
            "[bold]geomean / total[/]",
            "",
            "",
            "",
            "",
            _speed(report.geomean([r.ms_over_as for r in rows])),
            _speed(report.geomean([r.base_over_as for r in rows])),
            "",
            report.sec(tune.autosched_s),
            report.sec(tune.metaschedule_s),
            report.ratio(tune.ratio),
            "",
        ]
    )
    return out


LEGEND = (
    "speed vs X = X's time / autosched's time (> 1: autosched faster); tune as/MS = "
    "autosched's tuning wall time / MetaSchedule's (< 1: autosched tuned faster); the last "
    "row is the geomean of the speeds and the total of the tuning times over the kernels "
    "both tuners finished. A check other than ok is never timed."
)


def error_lines(rows: Sequence[GpuRow]) -> list[str]:
    lines = []
    for r in rows:
        for who, err in (("autosched", r.as_error), ("MetaSchedule", r.ms_error)):
            if err:
                lines.append(f"{who} {r.kernel}: {err}")
        if r.torch_error:
            lines.append(f"PyTorch {r.kernel}: {r.torch_error}")
        if r.extra.get("as_trial_errors") or r.extra.get("ms_failed_trials"):
            lines.append(
                f"{r.kernel}: failed trials autosched {r.extra.get('as_trial_errors', {})}, "
                f"MetaSchedule {r.extra.get('ms_failed_trials', 0)}"
            )
    return lines


def write_markdown(
    path: Path,
    heading: str,
    env: dict[str, str],
    tables: Sequence[tuple[str, Columns, Sequence[Cells]]],
    notes: Sequence[str],
) -> None:
    parts = [f"# {heading}", "", *(f"- **{k}**: {v}" for k, v in env.items()), ""]
    for title, columns, rows in tables:
        parts += [markdown_table(title, columns, rows), ""]
    parts += [plain(n) for n in notes if n]
    path.write_text("\n".join(parts).rstrip() + "\n")
