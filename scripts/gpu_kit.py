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
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import hashlib
import json
import lzma
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
#: What one call may carry to the GPU host, the working tree included.
CARRY_LIMIT = 64 * MiB
#: Room left for what changes between building the kit and the call (logs, a new file).
CARRY_MARGIN = 1 * MiB
MANIFEST = "kit.json"
TVM_ARCHIVE = "tvm.tar.xz"
COMPILER = "libtvm_compiler.so"
COMPILER_PARTS = "libtvm_compiler.so.xz.part"
#: Where ``scripts/gpu_check.sh stage`` keeps part ``a`` on the GPU host between calls.
STAGE_DIR = "/tmp/autosched-gpu-kit"
#: Not carried: the compiler (carried apart, compressed), CUTLASS headers and C++ sources.
TVM_SKIP = {COMPILER, "3rdparty", "src", "__pycache__"}
#: The wheels of the Python packages autosched imports that the GPU host's image lacks
#: (``--full``); the versions are this venv's. ``xgboost-cpu`` stands in for ``xgboost``
#: (the same module without CUDA: 5.6 MB instead of 228 MB).
FULL_WHEELS = {
    "pydantic": "pydantic",
    "pydantic-core": "pydantic_core",
    "pydantic-settings": "pydantic_settings",
    "python-dotenv": "python-dotenv",
    "annotated-types": "annotated-types",
    "typing-inspection": "typing-inspection",
    "typing-extensions": "typing_extensions",
    "xgboost-cpu": "xgboost",
}
HOST_PYTHON = "3.12"
#: Wheel platforms the GPU host's glibc takes (pip does not widen one ``--platform``).
HOST_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
SEED = 0


# -- building the kit (here) ------------------------------------------------------------------
Spec = tuple[list[int], str, bool]  # shape, dtype, is_output: the runner's parameter specs


def inputs_digest(arrays: list[Any]) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(a.tobytes())
    return digest.hexdigest()


@dataclass
class Case:
    """A kernel built for the kit: its library and what to check it against."""

    name: str
    origin: str  # "hand schedule" or "static config"
    library: Path
    specs: list[Spec]
    inputs_sha256: str  # the GPU host makes the same inputs (make_inputs) and checks them
    references: list[Any]  # numpy arrays
    reduction: int  # longest reduction: the comparison's tolerance grows with it
    flops: float


def _hand_kernels() -> dict[str, Callable[[], tuple[list[Any], Callable[[Any], None] | None]]]:
    """Compute declarations with a CUDA schedule written by hand (no templates involved)."""
    from tvm import te

    def bind_1d(threads: int) -> Callable[[Any], None]:
        """One thread per output element; a reduction stays a loop in each thread."""

        def schedule(sch: Any) -> None:
            block = sch.get_sblock("B")
            outer, inner = sch.split(sch.get_loops(block)[0], [None, threads])
            sch.bind(outer, "blockIdx.x")
            sch.bind(inner, "threadIdx.x")

        return schedule

    def scale() -> tuple[list[Any], Callable[[Any], None]]:
        a = te.placeholder((1 << 18,), "float32", name="A")
        b = te.compute(a.shape, lambda i: a[i] * 2.0 + 1.0, name="B")
        return [a, b], bind_1d(256)

    def row_sum() -> tuple[list[Any], Callable[[Any], None]]:
        a = te.placeholder((8192, 512), "float32", name="A")
        k = te.reduce_axis((0, 512), name="k")
        b = te.compute((8192,), lambda i: te.sum(a[i, k], axis=k), name="B")
        return [a, b], bind_1d(128)

    def matmul(n: int) -> tuple[list[Any], list[Any]]:
        a = te.placeholder((n, n), "float32", name="A")
        b = te.placeholder((n, n), "float32", name="Bm")
        k = te.reduce_axis((0, n), name="k")
        c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="B")
        return [a, b, c], [a, b]

    def matmul_naive() -> tuple[list[Any], Callable[[Any], None]]:
        tensors, _ = matmul(512)

        def schedule(sch: Any) -> None:
            block = sch.get_sblock("B")
            i, j, _ = sch.get_loops(block)
            io, ii = sch.split(i, [None, 16])
            jo, ji = sch.split(j, [None, 16])
            sch.reorder(io, jo, ii, ji)
            sch.bind(io, "blockIdx.y")
            sch.bind(jo, "blockIdx.x")
            sch.bind(ii, "threadIdx.y")
            sch.bind(ji, "threadIdx.x")

        return tensors, schedule

    def matmul_shared() -> tuple[list[Any], Callable[[Any], None]]:
        """32x32 output tiles, K in steps of 32 staged in shared memory (8 KiB a block)."""
        tensors, _ = matmul(1024)
        tile = 32

        def schedule(sch: Any) -> None:
            block = sch.get_sblock("B")
            i, j, k = sch.get_loops(block)
            io, ii = sch.split(i, [None, tile])
            jo, ji = sch.split(j, [None, tile])
            ko, ki = sch.split(k, [None, tile])
            sch.reorder(io, jo, ko, ii, ji, ki)
            sch.bind(io, "blockIdx.y")
            sch.bind(jo, "blockIdx.x")
            sch.bind(ii, "threadIdx.y")
            sch.bind(ji, "threadIdx.x")
            for operand in (0, 1):
                shared = sch.cache_read(block, operand, "shared")
                sch.compute_at(shared, ko)
                ax0, ax1 = sch.get_loops(shared)[-2:]
                _, ty, tx = sch.split(sch.fuse(ax0, ax1), [None, tile, tile])
                sch.bind(ty, "threadIdx.y")
                sch.bind(tx, "threadIdx.x")
            sch.decompose_reduction(block, ko)

        return tensors, schedule

    return {
        "scale": scale,
        "row_sum": row_sum,
        "matmul_naive_512": matmul_naive,
        "matmul_shared_1024": matmul_shared,
    }


def _specs(tensors: list[Any]) -> list[Spec]:
    """Per ``te.create_prim_func`` parameter (the tensors' order): shape, dtype, is output."""
    from tvm import te

    return [
        ([int(x) for x in t.shape], str(t.dtype), not isinstance(t.op, te.PlaceholderOp))
        for t in tensors
    ]


def _reduction_length(func: Any) -> int:
    from autosched.analysis import analyze

    k = 1
    for stage in analyze(func):
        k = max(k, math.prod(stage.extents[i] for i in stage.reduction_axes))
    return k


def _reference(func: Any, arrays: list[Any], specs: list[Spec], hw: Any) -> list[Any]:
    """The unscheduled kernel built for this CPU: the runner's reference."""
    import tvm

    from autosched.hardware import reference_target

    lib = tvm.compile(tvm.IRModule({"main": func}), target=reference_target(hw))
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*args)
    return [a.numpy() for a, (_, _, out) in zip(args, specs, strict=True) if out]


def _flops(func: Any) -> float:
    import tvm

    try:
        return float(tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:  # an estimate only: a kernel the estimator cannot read gets none
        return 0.0


def build_cases(
    hw: Any,
    cases_dir: Path,
    device_kind: str,
    hand_names: list[str],
    zoo_names: list[str],
    max_bytes: int,
) -> tuple[list[Case], dict[str, str]]:
    """Build the hand-scheduled kernels and the zoo's static configs into ``cases_dir``.

    ``device_kind`` "cpu" builds the same kernels unscheduled for this CPU: the runtime-only
    loader's test here. Returns the cases and, per kernel left out, why.
    """
    import tvm
    from tvm import te

    from autosched.tune import cuda_build
    from autosched.tune.runner_handlers import make_inputs

    cases: list[Case] = []
    skipped: dict[str, str] = {}
    total = 0

    def add(
        name: str, origin: str, tensors: list[Any], func: Any, export: Callable[[Path], None]
    ) -> None:
        nonlocal total
        specs = _specs(tensors)
        arrays = make_inputs(specs, SEED)
        inputs = [a for a, (_, _, out) in zip(arrays, specs, strict=True) if not out]
        size = sum(a.nbytes for a, (_, _, out) in zip(arrays, specs, strict=True) if out)
        if total + size > max_bytes:
            skipped[name] = f"its outputs ({size / MiB:.1f} MiB) would pass the kit's cap"
            return
        library = cases_dir / f"{name}.so"
        try:
            export(library)
        except Exception as e:  # a kernel that does not build is reported, not fatal
            skipped[name] = f"build failed: {type(e).__name__}: {str(e)[:300]}"
            return
        refs = _reference(func, arrays, specs, hw)
        total += size
        digest = inputs_digest(inputs)
        reduction, flops = _reduction_length(func), _flops(func)
        cases.append(Case(name, origin, library, specs, digest, refs, reduction, flops))

    hand = _hand_kernels()
    for name in hand_names:
        tensors, schedule = hand[name]()
        func = te.create_prim_func(tensors)
        if device_kind == "cpu":

            def export(path: Path, func: Any = func) -> None:
                tvm.compile(tvm.IRModule({"main": func}), target="llvm").export_library(str(path))
        else:

            def export(path: Path, func: Any = func, schedule: Any = schedule) -> None:
                sch = tvm.s_tir.Schedule(func)
                schedule(sch)
                ex = cuda_build.compile_for_gpu(sch.mod, hw)
                cuda_build.export_library(ex, str(path), hw)

        add(name, "hand schedule", tensors, func, export)

    if device_kind != "cpu":
        from autosched import zoo
        from autosched.schedule import apply_config, static_config
        from autosched.wire import Workload, serialize

        for name in zoo_names:
            try:
                workload = Workload.from_json(serialize(zoo.tensors(name), name))
                func = workload.prim_func
                mod = apply_config(func, static_config(func, hw), hw).mod
            except Exception as e:
                skipped[name] = f"static schedule failed: {type(e).__name__}: {str(e)[:300]}"
                continue

            def export(path: Path, mod: Any = mod) -> None:
                cuda_build.export_library(cuda_build.compile_for_gpu(mod, hw), str(path), hw)

            add(name, "static config", list(workload.tensors), func, export)
    return cases, skipped


def write_cases(cases: list[Case], cases_dir: Path) -> list[dict[str, Any]]:
    import numpy as np

    entries = []
    for case in cases:
        data = cases_dir / f"{case.name}.npz"
        np.savez_compressed(data, **{f"ref{i}": a for i, a in enumerate(case.references)})
        entries.append(
            {
                "name": case.name,
                "origin": case.origin,
                "library": case.library.name,
                "references": data.name,
                "params": case.specs,
                "inputs_sha256": case.inputs_sha256,
                "reduction": case.reduction,
                "flops": case.flops,
            }
        )
    return entries


def archive_tvm(dest: Path, preset: int) -> None:
    """TVM's package without its compiler, CUTLASS headers, C++ sources and bytecode."""
    import tvm

    root = Path(tvm.__file__).resolve().parent

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        return None if any(p in TVM_SKIP or p.endswith(".pyc") for p in parts) else info

    with tarfile.open(dest, "w:xz", preset=preset) as tar:
        tar.add(root, arcname="tvm", filter=keep)


def compressed_compiler(cache_dir: Path, preset: int) -> Path:
    """``libtvm_compiler.so`` as xz, made once per TVM build (minutes) and cached."""
    import tvm

    lib = Path(tvm.__file__).resolve().parent / "lib" / COMPILER
    stat = lib.stat()
    key = hashlib.sha1(f"{tvm.__version__}-{stat.st_size}-{stat.st_mtime_ns}".encode())
    cached = cache_dir / f"{COMPILER}-{key.hexdigest()[:12]}-{preset}.xz"
    if cached.exists():
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as out:
        if shutil.which("xz"):  # multi-threaded
            subprocess.run(["xz", f"-{preset}", "-T0", "-c", str(lib)], stdout=out, check=True)
        else:
            with open(lib, "rb") as src:
                out.write(lzma.compress(src.read(), preset=preset))
    os.replace(tmp, cached)
    return cached


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
    from autosched.hardware import detect_gpu_hardware, detect_hardware

    out = Path(args.outdir).resolve()
    if out.exists():
        shutil.rmtree(out)
    kit = out / "b" if args.full else out
    cases_dir = kit / "cases"
    cases_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    hw = detect_hardware() if args.device_kind == "cpu" else detect_gpu_hardware(tag=args.tag)
    names = [] if args.no_zoo else (args.zoo or zoo.names())
    hand = args.hand if args.hand is not None else list(_hand_kernels())
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


def write_compiler_parts(data: bytes, out: Path, first_bytes: int) -> dict[str, Any]:
    """Split the compressed compiler: its first ``first_bytes`` into ``out/a``, the rest into
    ``out/b``. Returns what ``install`` checks the joined parts against."""
    info = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "parts": 2}
    (out / "a").mkdir(parents=True, exist_ok=True)
    (out / "b").mkdir(parents=True, exist_ok=True)
    (out / "a" / f"{COMPILER_PARTS}0").write_bytes(data[:first_bytes])
    (out / "b" / f"{COMPILER_PARTS}1").write_bytes(data[first_bytes:])
    (out / "a" / MANIFEST).write_text(json.dumps({"part": 0, **info}) + "\n")
    return info


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


# -- on the GPU host ----------------------------------------------------------------------------
def cmd_install(args: argparse.Namespace) -> int:
    """Unpack the kit into SITE (a directory for PYTHONPATH): wheels, TVM, and with a staged
    part ``a`` the compiler. Prints "full" or "runtime": what SITE can do."""
    kit, site = Path(args.kit).resolve(), Path(args.site).resolve()
    manifest = json.loads((kit / MANIFEST).read_text())
    site.mkdir(parents=True, exist_ok=True)
    wheels = sorted((kit / "wheels").glob("*.whl")) if (kit / "wheels").is_dir() else []
    if wheels:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
        cmd += ["--upgrade", "--target", str(site), *map(str, wheels)]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    with tarfile.open(kit / TVM_ARCHIVE) as tar:
        tar.extractall(site, filter="data")
    mode = "runtime"
    compiler = manifest.get("compiler")
    if compiler:
        why = _restore_compiler(kit, Path(args.stage), compiler, site / "tvm" / "lib" / COMPILER)
        if why is None:
            mode = "full"
        else:
            print(f"runtime-only: {why}", file=sys.stderr)
    print(mode)
    return 0


def _restore_compiler(kit: Path, stage: Path, info: dict[str, Any], dest: Path) -> str | None:
    """Join part ``a`` (staged by an earlier call, or still beside ``b`` in the tree) and part
    ``b``, check and unpack; or say why not."""
    candidates = [stage / f"{COMPILER_PARTS}0", kit.parent / "a" / f"{COMPILER_PARTS}0"]
    first = next((p for p in candidates if p.exists()), None)
    if first is None:
        return f"part a of the compiler is not in {stage} (the machine went cold between calls?)"
    data = first.read_bytes() + (kit / f"{COMPILER_PARTS}1").read_bytes()
    if len(data) != info["bytes"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
        return "the compiler's parts do not match (parts of two different kits?)"
    dest.write_bytes(lzma.decompress(data))
    return None


def cudart_candidates(kit: Path | None) -> list[Path]:
    """Where libcudart.so.13 may be on the GPU host; the kit's copy last."""
    patterns = [
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "lib*", "libcudart.so.13"),
        "/usr/local/cuda/lib64/libcudart.so.13",
        "/usr/local/cuda/targets/*/lib/libcudart.so.13",
        "/usr/local/cuda-13*/lib*/libcudart.so.13",
    ]
    for entry in sys.path:  # PyTorch's CUDA wheels (nvidia-cuda-runtime)
        patterns.append(os.path.join(entry, "nvidia", "*", "lib", "libcudart.so.13"))
        patterns.append(os.path.join(entry, "nvidia", "cu13", "lib", "libcudart.so.13"))
    found: list[Path] = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            if Path(path) not in found:
                found.append(Path(path))
    if kit is not None and (kit / "cuda" / "libcudart.so.13").exists():
        found.append(kit / "cuda" / "libcudart.so.13")
    return found


def cmd_cudart_dir(args: argparse.Namespace) -> int:
    found = cudart_candidates(Path(args.kit).resolve())
    print(found[0].parent if found else "")
    return 0


def load_cuda_runtime(kit: Path | None) -> str:
    """TVM's CUDA runtime (``libtvm_runtime_cuda.so``) in this process; with the runtime
    library alone TVM does not load it itself. It links ``libcudart.so.13``: the system's,
    PyTorch's or the kit's. Returns what was loaded; raises if nothing would load."""
    import tvm_ffi
    from tvm.base import _LOADED_LIBS

    if tvm_ffi.get_global_func("device_api.cuda", allow_missing=True) is not None:
        return "TVM's CUDA runtime was already loaded"
    lib = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent / "libtvm_runtime_cuda.so"
    errors = []
    for cudart in [None, *cudart_candidates(kit)]:
        try:
            if cudart is not None:
                ctypes.CDLL(str(cudart), mode=ctypes.RTLD_GLOBAL)
            _LOADED_LIBS["tvm_runtime_cuda"] = ctypes.CDLL(str(lib), mode=ctypes.RTLD_LOCAL)
            return f"loaded {lib.name}" + (f" with {cudart}" if cudart else "")
        except OSError as e:
            if str(e) not in errors:
                errors.append(str(e))
            if "libcuda.so" in str(e):
                break  # no driver: no libcudart will help
    raise RuntimeError("cannot load TVM's CUDA runtime: " + " | ".join(errors))


def run_case(entry: dict[str, Any], kit: Path, dev: Any, args: argparse.Namespace) -> dict:
    import numpy as np
    import tvm

    from autosched.tune.runner_handlers import _compare, make_inputs, register_gpu_flush

    result: dict[str, Any] = {"name": entry["name"], "origin": entry["origin"]}
    specs = [(list(shape), dtype, bool(out)) for shape, dtype, out in entry["params"]]
    arrays = make_inputs(specs, SEED)
    inputs = [a for a, (_, _, out) in zip(arrays, specs, strict=True) if not out]
    if inputs_digest(inputs) != entry["inputs_sha256"]:
        error = "inputs differ from the kit's (numpy's random stream changed?)"
        return {**result, "status": "error", "error": error}
    data = np.load(kit / "cases" / entry["references"])
    refs = [data[f"ref{i}"] for i in range(sum(out for _, _, out in specs))]
    lib = tvm.runtime.load_module(str(kit / "cases" / entry["library"]))
    args_ = [tvm.runtime.tensor(a, dev) for a in arrays]
    lib["main"](*args_)
    outputs = [a for a, (_, _, out) in zip(args_, specs, strict=True) if out]
    for i, (arg, ref) in enumerate(zip(outputs, refs, strict=True)):
        got = arg.numpy()
        problem = _compare(got, ref, args.rtol, args.atol, int(entry["reduction"]))
        if problem is not None:
            return {**result, "status": "wrong_answer", "error": f"output {i}: {problem}"}
    flush = ""
    if not args.no_flush:
        cpu = args.device == "cpu"
        flush = "cache_flush_cpu_non_first_arg" if cpu else register_gpu_flush(dev)
    timer = lib.time_evaluator(
        "main",
        dev,
        number=1,
        repeat=args.repeat,
        min_repeat_ms=args.min_repeat_ms,
        f_preproc=flush,
    )
    secs = sorted(float(x) for x in timer(*args_).results)
    best = secs[0]
    flops = float(entry.get("flops") or 0.0)
    return {
        **result,
        "status": "ok",
        "min_us": best * 1e6,
        "median_us": secs[len(secs) // 2] * 1e6,
        "gflops": flops / best / 1e9 if flops and best > 0 else None,
    }


def cmd_run(args: argparse.Namespace) -> int:
    kit = Path(args.kit).resolve()
    manifest = json.loads((kit / MANIFEST).read_text())
    import tvm

    env: dict[str, Any] = {
        "tvm": str(Path(tvm.__file__).parent),
        "runtime_only": bool(tvm.base._RUNTIME_ONLY),
        "python": sys.version.split()[0],
        "device": args.device,
        "kit_mode": manifest["mode"],
        "kit_target": manifest["target_key"],
    }
    results: list[dict[str, Any]] = []
    try:
        if args.device.startswith("cuda"):
            env["cuda_runtime"] = load_cuda_runtime(kit)
        from autosched.tune.runner_handlers import device

        dev = device(args.device)
        if args.device.startswith("cuda"):
            env |= {"gpu": str(dev.device_name), "compute_version": str(dev.compute_version)}
    except Exception as e:
        env["error"] = f"{type(e).__name__}: {e}"
        dev = None
    if dev is not None:
        for entry in manifest["cases"]:
            t0 = time.perf_counter()
            try:
                result = run_case(entry, kit, dev, args)
            except Exception as e:
                result = {"name": entry["name"], "status": "error", "error": f"{e}"[:1000]}
            result["secs"] = round(time.perf_counter() - t0, 2)
            results.append(result)
            print(json.dumps(result), flush=True)
    report = {"environment": env, "results": results, "left_out": manifest.get("left_out", {})}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.out:
        Path(args.out).write_text(markdown(report))
    ok = dev is not None and all(r["status"] == "ok" for r in results)
    if dev is None:
        print(f"no device: {env['error']}", flush=True)
    else:
        print(f"{sum(r['status'] == 'ok' for r in results)}/{len(results)} cases ok", flush=True)
    return 0 if ok else 1


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = ["# GPU kit check", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += [
        "",
        "| kernel | origin | status | min µs | median µs | GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:

        def num(key: str, r: dict[str, Any] = r) -> str:
            return "" if r.get(key) is None else f"{r[key]:.1f}"

        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')}"
        lines.append(
            f"| {r['name']} | {r.get('origin', '')} | {status} | {num('min_us')} | "
            f"{num('median_us')} | {num('gflops')} |"
        )
    for name, why in report.get("left_out", {}).items():
        lines.append(f"| {name} | | left out here: {why} | | | |")
    return "\n".join(lines) + "\n"


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
