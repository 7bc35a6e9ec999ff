"""bench/gpu.py without a GPU: its command line, its kernel list, its checks, its verdicts,
the dry run (static CUDA schedules compiled for sm_90 here) and the refusal to measure
without a CUDA device. Measuring itself needs a GPU host (scripts/gpu_check.sh)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

# bench/ is a top-level folder, not part of the installed package (see test_baselines.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autosched.analysis import analyze
from autosched.wire import Workload
from bench import gpu, gpu_plan, gpu_report, report
from bench.gpu_kernels import DEFAULT_KERNELS, KERNELS, compare, reduction_length

# One kernel of each meta-template kind the CUDA templates provide, all small.
DRY_RUN_KERNELS = "bert_qkv,softmax,conv2d_r50_3x3_14"


def _func(name: str):
    return Workload.from_tensors(KERNELS[name].build(), name).prim_func


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def test_defaults_are_64_trials_the_default_kernels_and_every_contender() -> None:
    args = gpu.parse_args([])
    assert args.trials == 64
    assert gpu.kernel_names(args.kernels) == DEFAULT_KERNELS
    assert not (args.no_metaschedule or args.no_torch or args.dry_run)
    assert args.out is None


def test_options_as_gpu_check_passes_them(tmp_path: Path) -> None:
    out = tmp_path / "gpu_table.md"
    args = gpu.parse_args(
        ["--trials", "16", "--out", str(out), "--kernels", "softmax, matmul_1024"]
    )
    assert args.trials == 16 and args.out == out
    assert gpu.kernel_names(args.kernels) == ["softmax", "matmul_1024"]
    args = gpu.parse_args(["--no-metaschedule", "--no-torch", "--dry-run"])
    assert args.no_metaschedule and args.no_torch and args.dry_run
    with pytest.raises(SystemExit):
        gpu.parse_args(["--trials", "0"])


def test_an_unknown_kernel_is_refused_before_anything_runs(capsys) -> None:
    assert gpu.main(["--dry-run", "--kernels", "matmul_1024,no_such_kernel"]) == 2
    assert "unknown kernels: no_such_kernel" in capsys.readouterr().out


def test_without_a_cuda_device_a_measuring_run_exits_2_and_says_why(monkeypatch, capsys) -> None:
    monkeypatch.setattr(gpu, "cuda_devices", lambda: [])
    assert gpu.main(["--kernels", "softmax", "--trials", "1"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "no CUDA device found" in out and "--dry-run" in out


# --------------------------------------------------------------------------------------
# The kernel list
# --------------------------------------------------------------------------------------


def test_the_default_list_covers_every_family_the_issue_names() -> None:
    assert set(DEFAULT_KERNELS) <= set(KERNELS)
    assert {KERNELS[n].family for n in DEFAULT_KERNELS} == {
        "matmul",
        "conv2d",
        "depthwise",
        "softmax",
        "layer_norm",
    }
    dtypes = {str(KERNELS[n].build()[0].dtype) for n in DEFAULT_KERNELS if "matmul" in n}
    assert dtypes == {"float32", "float16"}
    assert "matmul_4096" in DEFAULT_KERNELS  # the cuBLAS target is stated on it


@pytest.mark.parametrize("name", list(KERNELS))
def test_every_kernel_is_a_te_dag_autosched_analyses(name: str) -> None:
    stages = analyze(_func(name))
    assert stages and all(s.meta_template for s in stages)
    assert any(s.is_output for s in stages)


def test_flop_counts_of_a_matmul_a_fp16_matmul_and_a_strided_conv() -> None:
    assert report.gflop(_func("matmul_4096")) == pytest.approx(2 * 4096**3 / 1e9)
    # The fp32 -> fp16 cast stage is data movement, not work.
    assert report.gflop(_func("bert_ffn1_f16")) == pytest.approx(2 * 128 * 3072 * 768 / 1e9)
    # 3x3/2 128->128 on 56x56 gives 28x28 outputs, 2 FLOP per multiply-add.
    conv = _func("conv2d_r50_3x3_s2")
    assert report.gflop(conv) == pytest.approx(2 * 128 * 28 * 28 * 128 * 9 / 1e9)
    assert reduction_length(conv) == 128 * 9


def test_fp16_matmuls_accumulate_in_fp32_and_write_fp16() -> None:
    stages = {s.name: s for s in analyze(_func("matmul_f16_1024"))}
    assert stages["C_acc"].iter_kinds == "SSR" and stages["C"].iter_kinds == "SS"
    tensors = KERNELS["matmul_f16_1024"].build()
    assert [str(t.dtype) for t in tensors] == ["float16", "float16", "float16"]
    assert str(tensors[-1].op.input_tensors[0].dtype) == "float32"


def test_matmul_references_are_float64_numpy() -> None:
    ref = KERNELS["matmul_f16_1024"].numpy_reference
    assert ref is not None
    a = np.full((2, 3), 0.5, np.float16)
    b = np.full((3, 4), 2.0, np.float16)
    out = ref(a, b)
    assert out.dtype == np.float64 and out.shape == (2, 4) and np.all(out == 3.0)
    assert KERNELS["softmax_4096"].numpy_reference is None  # LLVM-built reference


# --------------------------------------------------------------------------------------
# Checks and verdicts
# --------------------------------------------------------------------------------------


def test_fp16_outputs_may_differ_by_one_rounding_and_no_more() -> None:
    rng = np.random.default_rng(0)
    exact = rng.uniform(-40, 40, (64, 64))
    got = exact.astype(np.float16)
    assert compare(got, exact, 1024) is None
    one_ulp = np.nextafter(got, np.float16(np.inf))
    assert compare(one_ulp, exact, 1024) is None
    wrong = got.copy()
    wrong[3, 5] += np.float16(1.0)
    assert "max abs error" in (compare(wrong, exact, 1024) or "")


def test_fp32_outputs_get_the_runners_tolerance() -> None:
    exact = np.random.default_rng(1).uniform(-1, 1, (32, 32))
    assert compare(exact.astype(np.float32), exact, 1024) is None
    assert compare((exact * 1.01).astype(np.float32), exact, 1024) is not None


def _row(name: str, family: str, **kw) -> gpu_report.GpuRow:
    return gpu_report.GpuRow(kernel=name, trials=64, gflop=1.0, family=family, **kw)


def test_ratios_point_the_right_way_and_the_baseline_is_pytorch() -> None:
    r = _row("matmul_4096", "matmul", as_s=1.0, ms_s=2.0, torch_s=0.5, as_tune_s=10, ms_tune_s=40)
    r.numpy_s = 100.0  # never the baseline on a GPU
    assert r.ms_over_as == 2.0  # autosched twice as fast as MetaSchedule
    assert r.base_over_as == 0.5  # half as fast as cuBLAS
    assert r.tune_over_ms == 0.25


def test_targets_are_met_missed_or_not_applicable() -> None:
    rows = [
        _row("matmul_4096", "matmul", as_s=1.0, ms_s=1.5, torch_s=0.8, as_tune_s=10, ms_tune_s=30),
        _row("conv_a", "conv2d", as_s=1.0, ms_s=0.8, torch_s=0.5, as_tune_s=5, ms_tune_s=10),
        _row("softmax_4096", "softmax", as_s=1.0, ms_s=1.0, torch_s=0.9),
    ]
    verdicts = {t.label: (t.verdict, t.kernels) for t in gpu_report.targets(rows)}
    assert verdicts["speed vs MetaSchedule (geomean)"] == ("met", 3)  # (1.5 * 0.8 * 1)^(1/3)
    assert verdicts["fp32 matmul 4096³ vs cuBLAS"] == ("met", 1)  # 0.8 >= 0.7
    assert verdicts["conv2d vs cuDNN (geomean)"] == ("missed", 1)  # 0.5 < 0.8
    assert verdicts["softmax vs PyTorch (geomean)"] == ("met", 1)
    assert verdicts["layer norm vs PyTorch (geomean)"] == ("n/a", 0)
    assert verdicts["tuning wall time vs MetaSchedule (totals)"] == ("met", 2)  # 15 / 40
    assert all("[" in t.line() for t in gpu_report.targets(rows))  # coloured for the console


def test_result_table_ends_with_geomeans_and_totals_and_renders_as_markdown() -> None:
    rows = [
        _row("a", "matmul", as_s=1e-3, ms_s=2e-3, torch_s=1e-3, as_tune_s=10, ms_tune_s=20),
        _row("b", "softmax", as_s=1e-3, ms_s=0.5e-3, as_check="ok", torch_check="FAIL"),
    ]
    cells = gpu_report.result_cells(rows)
    assert len(cells) == 3 and all(len(c) == len(gpu_report.RESULT_COLUMNS) for c in cells)
    last = [gpu_report.plain(c) for c in cells[-1]]
    assert last[0] == "geomean / total" and last[5] == "1.00" and last[-2] == "0.50"
    md = gpu_report.markdown_table("t", gpu_report.RESULT_COLUMNS, cells).splitlines()
    assert md[0] == "**t**" and md[2].startswith("| kernel | GFLOP |")
    assert md[3].startswith("| :--- | ---: |")
    assert "[" not in "".join(md[4:])  # rich markup stripped
    assert "| ok/-/FAIL |" in md[5]


def test_metaschedule_builds_with_as_many_workers_as_autosched() -> None:
    """bench/gpu.py gives MetaSchedule's builder the host's CPUs, as autosched's has (the
    tuning wall-time target is only fair so): tune_both.tune_metaschedule takes the count."""
    from bench.tune_both import tune_metaschedule

    assert "builder_workers" in inspect.signature(tune_metaschedule).parameters


def test_oneoff_imports_are_timed_and_printed_apart() -> None:
    """Both benchmarks charge the one-off imports to no kernel: they time them up front."""
    from rich.console import Console

    from bench.tune_both import time_oneoff_imports

    console = Console(record=True, width=200)
    oneoff = time_oneoff_imports(console, metaschedule=False)
    assert set(oneoff) == {"autosched_import_s"} and oneoff["autosched_import_s"] >= 0
    printed = console.export_text()
    assert "one-off imports (not in the tuning wall times): autosched_import_s" in printed


# --------------------------------------------------------------------------------------
# Dry run
# --------------------------------------------------------------------------------------


def test_dry_run_compiles_static_cuda_schedules_without_a_gpu(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(gpu_plan, "cuda_devices", lambda: [])  # the tag's GPU, on a GPU host too
    out = tmp_path / "plan.md"
    rc = gpu.main(["--dry-run", "--kernels", DRY_RUN_KERNELS, "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "3 of 3 static schedules built for sm_90" in printed
    md = out.read_text()
    assert "| bert_qkv | matmul |" in md and "cuda/sm_90/132sm/48k" in md


# --------------------------------------------------------------------------------------
# PyTorch baselines compute what the DAGs compute (checked on the CPU here)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["bert_qkv_f16", "conv2d_r50_1x1", "conv2d_r50_3x3_s2", "depthwise_conv2d", "layer_norm"],
)
def test_the_pytorch_baseline_matches_the_reference(name: str) -> None:
    torch = pytest.importorskip("torch")
    from autosched.hardware import detect_hardware
    from bench.gpu_measure import DeviceCase

    case = DeviceCase.make(KERNELS[name], detect_hardware(), seed=0)
    fn = KERNELS[name].torch()
    with torch.inference_mode():
        got = fn(*(torch.from_numpy(x) for x in case.inputs)).numpy()
    case.check_output(got)
