"""The number formats and ratios that bench/static.py and bench/vs_metaschedule.py print.

A wrong ratio direction or a misplaced unit here would make every printed speedup lie, so
the formats are pinned to the strings the scripts have always printed.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from rich.console import Console

# bench/ is a top-level folder, not part of the installed package (see test_baselines.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from bench.roofline import Roofline


def test_ms_shows_milliseconds_with_more_decimals_below_10_ms() -> None:
    assert report.ms(None) == "-"
    assert report.ms(0.0012344) == "1.234"
    assert report.ms(0.0123456) == "12.35"
    assert report.ms(1.5) == "1500.00"


def test_ratio_times_sec_and_rate_cells() -> None:
    assert report.ratio(None) == "-"
    assert report.ratio(1.234, " np") == "1.23 np"
    assert report.times(None) == "-"
    assert report.times(12.345) == "12.35×"
    assert report.times(123.4) == "123×"
    assert report.sec(61.26) == "61.3"
    assert report.rate(None) == "-"
    assert report.rate(42.04) == "42.0"


def test_baseline_is_numpy_for_matmul_like_kernels_and_torch_otherwise() -> None:
    assert report.baseline_cell(2.0, "matmul_512") == "2.00 np"
    assert report.baseline_cell(2.0, "softmax") == "2.00 pt"
    assert report.baseline_cell(None, "softmax") == "-"


def test_check_cell_colours_failures() -> None:
    assert report.check_cell("ok") == "[green]ok[/]"
    assert report.check_cell("FAIL") == "[red]FAIL[/]"
    assert report.check_cell("-") == "-"


def test_over_is_none_when_a_time_is_missing() -> None:
    assert report.over(3.0, 1.5) == 2.0
    assert report.over(None, 1.0) is None
    assert report.over(1.0, None) is None
    assert report.over(1.0, 0.0) is None


def test_geomean_skips_missing_and_non_positive_values() -> None:
    assert report.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert report.geomean([2.0, None, 0.0, 8.0]) == pytest.approx(4.0)
    assert report.geomean([0.5, 2.0]) == pytest.approx(1.0)
    assert report.geomean([]) is None
    assert report.geomean([None]) is None
    assert math.isclose(report.geomean([3.0]) or 0.0, 3.0)


@dataclass
class _Row(report.BaselineTimes):
    kernel: str
    ours_s: float | None = None
    numpy_s: float | None = None
    torch_s: float | None = None

    base_over_ours = report.FieldRatio("baseline_s", "ours_s")


def test_rows_pick_their_baseline_and_keep_ratios_out_of_asdict() -> None:
    mm = _Row("matmul_1024", ours_s=0.5, numpy_s=1.0, torch_s=4.0)
    sm = _Row("softmax", ours_s=0.5, numpy_s=None, torch_s=4.0)
    assert mm.baseline_s == 1.0 and mm.base_over_ours == 2.0
    assert sm.baseline_s == 4.0 and sm.base_over_ours == 8.0
    assert _Row("softmax").base_over_ours is None
    # The JSON the scripts write holds the fields; the ratios are added there explicitly.
    assert set(asdict(mm)) == {"kernel", "ours_s", "numpy_s", "torch_s"}


def test_table_has_the_given_columns() -> None:
    t = report.table("t", [("kernel", "left"), ("ms", "right")])
    assert [(c.header, c.justify) for c in t.columns] == [("kernel", "left"), ("ms", "right")]


def test_roofline_header_shows_the_measured_figures() -> None:
    console = Console(record=True, width=200)
    report.print_roofline(console, Roofline(443.1, 11.14, 8.32, 1 << 30))
    text = console.export_text()
    assert "FMA peak 443 GFLOP/s" in text
    assert "copy 11.1 GB/s" in text
    assert "triad 8.3 GB/s" in text
    assert "arrays of 1024 MiB" in text
    assert "ridge 39.8 FLOP/B" in text
