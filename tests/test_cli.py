"""The command line, run as a user would (in a subprocess, through the console script)."""

import json
import subprocess
import sys

import tvm
from tvm import s_tir

from autosched import zoo


def _autosched(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autosched.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_export_analyze_schedule(tmp_path):
    path = tmp_path / "cbr.json"
    assert _autosched("export", "conv2d_bias_relu", "-o", str(path), cwd=tmp_path).returncode == 0

    analyzed = _autosched("analyze", str(path), cwd=tmp_path)
    assert analyzed.returncode == 0, analyzed.stderr
    for expected in ("pad_temp", "location_tunable", "conv2d_nchw", "SSSSRRR", "complex_reduction"):
        assert expected in analyzed.stdout

    trace_path = tmp_path / "trace.json"
    scheduled = _autosched("schedule", str(path), "--trace-out", str(trace_path), cwd=tmp_path)
    assert scheduled.returncode == 0, scheduled.stderr
    assert "T.parallel" in scheduled.stdout and "T.vectorized" in scheduled.stdout
    doc = json.loads((tmp_path / "cbr.config.json").read_text())
    assert set(doc) == {"workload_key", "hardware", "template", "config"}
    assert doc["config"]["stages"]["conv2d_nchw"]["fuse_epilogue"] is True

    # The exported trace replays onto a fresh schedule of the same PrimFunc, identically.
    from autosched.hardware import detect_hardware
    from autosched.schedule import static_schedule

    func = zoo.prim_func("conv2d_bias_relu")
    replayed = s_tir.Schedule(func)
    s_tir.Trace.apply_json_to_schedule(json.loads(trace_path.read_text()), replayed)
    tvm.ir.assert_structural_equal(replayed.mod, static_schedule(func, detect_hardware()).mod)


def test_bad_input_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format_version": 1, "placeholders": "nope"}')
    result = _autosched("analyze", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "error" in result.stdout and "Traceback" not in result.stderr


def test_tune_then_resume(tmp_path):
    path = tmp_path / "rs.json"
    assert _autosched("export", "row_sum", "-o", str(path), cwd=tmp_path).returncode == 0
    first = _autosched("tune", str(path), "--trials", "6", "--threads", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "6 trials measured now, 0 from records" in first.stdout
    assert "verified" in first.stdout
    best = json.loads((tmp_path / "rs.best.json").read_text())
    assert best["latency"] > 0 and "row_sum" in best["config"]["stages"]
    lines = (tmp_path / "rs.records.jsonl").read_text().splitlines()
    assert len(lines) == 6

    again = _autosched("tune", str(path), "--trials", "6", cwd=tmp_path)
    assert again.returncode == 0
    assert "0 trials measured now, 6 from records" in again.stdout
    assert len((tmp_path / "rs.records.jsonl").read_text().splitlines()) == 6


def test_the_processes_commands_come_through_entry_points(tmp_path):
    """``services``/``workers`` add their commands (the library never imports them)."""
    listed = _autosched("--help", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for command in ("api", "scheduler", "worker", "up", "down", "db", "submit", "token"):
        assert f" {command} " in listed.stdout, command
    for args in (["up", "--help"], ["worker", "--help"], ["db", "upgrade", "--help"]):
        shown = _autosched(*args, cwd=tmp_path)
        assert shown.returncode == 0, (args, shown.stderr)
    assert "--device-key" in _autosched("worker", "--help", cwd=tmp_path).stdout
