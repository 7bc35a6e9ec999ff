#!/usr/bin/env python3
"""The GPU-host kit: what a lent GPU machine needs to check autosched's CUDA path, built here.

A lent GPU host (docs/gpu.md) has Python 3.12, PyTorch, numpy, nvcc and a driver, but no TVM
and no network, and each call takes at most 64 MiB of files from here (the repository's
working tree included). TVM's compiler library alone is 56.7 MiB even as ``xz -9e`` (259 MB
unpacked; ``zstd -19 --long``: 62.8 MiB), so the kit has two forms:

- **runtime** (default; one call): TVM's Python package and runtime libraries without the
  compiler, the cp312 tvm-ffi wheel, a fallback ``libcudart.so.13``, and *cases*: kernels
  built here for the GPU's arch (a cubin each, ``autosched.tune.cuda_build``), their inputs
  and their reference outputs (the unscheduled kernel built for this CPU). ``run`` loads them
  with the TVM runtime alone (``TVM_USE_RUNTIME_LIB=1``), checks and times them on the GPU.
- **full** (``--full``; two calls): the runtime kit plus TVM's compiler and the wheels
  autosched imports (pydantic, xgboost-cpu, ...), so the GPU tests and ``bench/gpu.py``
  (tuning, MetaSchedule) run there. The compressed compiler is split between two folders,
  ``OUTDIR/a`` (its first part only) and ``OUTDIR/b`` (the rest and everything else); each
  travels in its own call, and the machine keeps part ``a`` while it stays warm.

Commands (``--help`` on each): ``build OUTDIR`` (here), ``install KIT SITE``, ``run KIT``,
``cudart-dir KIT`` (there, from ``scripts/gpu_check.sh``) and ``size OUTDIR``.

The pieces: ``gpu_kit_cases.py`` (the prebuilt kernels), ``gpu_kit_full.py`` (the compiler
and wheels of the full kit), ``gpu_kit_host.py`` (the commands run on the GPU host) and
``gpu_kit_layout.py`` (the names both sides agree on); this file builds the runtime kit and
parses the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from gpu_kit_cases import build_cases, hand_kernels, write_cases
from gpu_kit_full import FULL_WHEELS, compressed_compiler, write_compiler_parts
from gpu_kit_host import cmd_cudart_dir, cmd_install, cmd_run
from gpu_kit_layout import COMPILER, MANIFEST, SEED, STAGE_DIR, TVM_ARCHIVE, MiB

REPO = Path(__file__).resolve().parent.parent
#: What one call may carry to the GPU host, the working tree included.
CARRY_LIMIT = 64 * MiB
#: Room left for what changes between building the kit and the call (logs, a new file).
CARRY_MARGIN = 1 * MiB
#: Not carried: the compiler (carried apart, compressed), CUTLASS headers and C++ sources.
TVM_SKIP = {COMPILER, "3rdparty", "src", "__pycache__"}
HOST_PYTHON = "3.12"
#: Wheel platforms the GPU host's glibc takes (pip does not widen one ``--platform``).
HOST_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def archive_tvm(dest: Path, preset: int) -> None:
    """TVM's package without its compiler, CUTLASS headers, C++ sources and bytecode."""
    import tvm

    root = Path(tvm.__file__).resolve().parent

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        return None if any(p in TVM_SKIP or p.endswith(".pyc") for p in parts) else info

    with tarfile.open(dest, "w:xz", preset=preset) as tar:
        tar.add(root, arcname="tvm", filter=keep)


def download_wheels(dest: Path, full: bool, wheels_from: Path | None) -> list[str]:
    """The cp312 wheels the GPU host lacks: tvm-ffi, and for ``--full`` autosched's own
    dependencies (``FULL_WHEELS``), at this venv's versions."""
    from importlib.metadata import version

    pins = [f"apache-tvm-ffi=={version('apache-tvm-ffi')}"]
    if full:
        pins += [f"{wheel}=={version(dist)}" for wheel, dist in FULL_WHEELS.items()]
    dest.mkdir(parents=True, exist_ok=True)
    if wheels_from is not None:
        for pin in pins:
            name = pin.split("==")[0].replace("-", "_")
            found = sorted(wheels_from.glob(f"{name}-*.whl"), key=lambda p: p.name.lower())
            if not found:
                raise SystemExit(f"no wheel for {pin} in {wheels_from}")
            shutil.copy2(found[-1], dest)
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        cmd += ["--only-binary=:all:", "--python-version", HOST_PYTHON]
        for platform in HOST_PLATFORMS:
            cmd += ["--platform", platform]
        cmd += ["-d", str(dest), *pins]
        subprocess.run(cmd, check=True)
    return pins


def find_cudart() -> Path | None:
    for pattern in (
        "/usr/local/cuda/lib64/libcudart.so.13",
        "/usr/local/cuda/lib/libcudart.so.13",
        "/usr/local/cuda-13*/lib*/libcudart.so.13",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


def tree_bytes() -> int:
    """The working tree a call carries: tracked and untracked, not ignored, files."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    names = [n for n in out.decode().split("\0") if n]
    return sum((REPO / n).stat().st_size for n in names if (REPO / n).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cmd_build(args: argparse.Namespace) -> int:
    from autosched import zoo
    from autosched.gpu_hardware import detect_gpu_hardware
    from autosched.hardware import detect_hardware

    out = Path(args.outdir).resolve()
    if out.exists():
        shutil.rmtree(out)
    kit = out / "b" if args.full else out
    cases_dir = kit / "cases"
    cases_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    hw = detect_hardware() if args.device_kind == "cpu" else detect_gpu_hardware(tag=args.tag)
    names = [] if args.no_zoo else (args.zoo or zoo.names())
    hand = args.hand if args.hand is not None else list(hand_kernels())
    cases, skipped = build_cases(
        hw, cases_dir, args.device_kind, hand, names, args.max_case_mib * MiB
    )
    entries = write_cases(cases, cases_dir)
    print(
        f"cases: {len(entries)} built, {len(skipped)} left out ({time.perf_counter() - t0:.0f} s)"
    )
    for name, why in skipped.items():
        print(f"  left out {name}: {why}")

    archive_tvm(kit / TVM_ARCHIVE, args.preset)
    cudart = find_cudart()
    if cudart is not None:
        (kit / "cuda").mkdir()
        shutil.copy2(cudart, kit / "cuda" / cudart.name)
    wheels = [] if args.no_wheels else download_wheels(kit / "wheels", args.full, args.wheels_from)

    import tvm

    manifest: dict[str, Any] = {
        "mode": "full" if args.full else "runtime",
        "device_kind": args.device_kind,
        "tvm_version": tvm.__version__,
        "hardware": hw.to_json(),
        "target_key": hw.target_key,
        "seed": SEED,
        "wheels": wheels,
        "cases": entries,
        "left_out": skipped,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    budget = CARRY_LIMIT - tree_bytes() - CARRY_MARGIN
    if args.full:
        xz = compressed_compiler(Path(args.cache_dir), args.compiler_preset)
        manifest["compiler"] = write_compiler_parts(xz.read_bytes(), out, budget - 64 * 1024)
    (kit / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return report_sizes(out)


def report_sizes(out: Path) -> int:
    """Print each folder a call carries, with the working tree; 1 if one passes the limit."""
    tree = tree_bytes()
    folders = [out / "a", out / "b"] if (out / "a").is_dir() else [out]
    over = False
    for folder in folders:
        size = folder_bytes(folder)
        total = size + tree
        over |= total > CARRY_LIMIT - CARRY_MARGIN
        print(
            f"{folder}: {size / MiB:.1f} MiB + working tree {tree / MiB:.1f} MiB = "
            f"{total / MiB:.1f} MiB of {CARRY_LIMIT / MiB:.0f} MiB"
        )
    if over:
        print("too big for one call", file=sys.stderr)
    return 1 if over else 0


def cmd_size(args: argparse.Namespace) -> int:
    return report_sizes(Path(args.outdir).resolve())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build the kit into OUTDIR (here)")
    b.add_argument("outdir")
    b.add_argument("--full", action="store_true", help="also TVM's compiler (two calls)")
    b.add_argument("--tag", default="nvidia/nvidia-h100", help="TVM tag of the GPU (sm_90)")
    b.add_argument(
        "--device-kind",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cpu: the same kernels built for this CPU (to test the loader here)",
    )
    b.add_argument("--hand", nargs="*", help="hand-scheduled kernels (default: all)")
    b.add_argument("--zoo", nargs="*", help="zoo kernels to include (default: all)")
    b.add_argument("--no-zoo", action="store_true", help="hand-scheduled kernels only")
    b.add_argument("--max-case-mib", type=int, default=32, help="cap on all cases' outputs")
    b.add_argument("--no-wheels", action="store_true", help="no wheels (the loader's test)")
    b.add_argument("--wheels-from", type=Path, help="copy wheels from here, no download")
    b.add_argument("--preset", type=int, default=6, help="xz preset of the TVM package")
    b.add_argument("--compiler-preset", type=int, default=6, help="xz preset of the compiler")
    b.add_argument(
        "--cache-dir",
        default=os.path.expanduser("~/.cache/autosched/gpu-kit"),
        help="where the compressed compiler is kept between builds",
    )
    b.set_defaults(func=cmd_build)

    s = sub.add_parser("size", help="check that each folder of a kit fits one call")
    s.add_argument("outdir")
    s.set_defaults(func=cmd_size)

    i = sub.add_parser("install", help="unpack the kit into SITE (on the GPU host)")
    i.add_argument("kit")
    i.add_argument("site")
    i.add_argument("--stage", default=STAGE_DIR, help="where part a was staged")
    i.set_defaults(func=cmd_install)

    c = sub.add_parser("cudart-dir", help="print the directory of a libcudart.so.13")
    c.add_argument("kit")
    c.set_defaults(func=cmd_cudart_dir)

    r = sub.add_parser("run", help="check and time the kit's kernels (on the GPU host)")
    r.add_argument("kit")
    r.add_argument("--device", default="cuda:0")
    r.add_argument("--repeat", type=int, default=5)
    r.add_argument("--min-repeat-ms", type=int, default=20)
    r.add_argument("--no-flush", action="store_true", help="no cache/L2 flush between repeats")
    r.add_argument("--rtol", type=float, default=1e-4)
    r.add_argument("--atol", type=float, default=1e-4)
    r.add_argument("--out", help="markdown table")
    r.add_argument("--json", help="every number as JSON")
    r.set_defaults(func=cmd_run)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
