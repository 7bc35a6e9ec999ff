"""The GPU-host kit on the GPU host: unpack it, find a CUDA runtime, and check and time its
cases with the TVM runtime alone (``gpu_kit.py install``, ``cudart-dir`` and ``run``, called
by ``scripts/gpu_check.sh``)."""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from gpu_kit_full import restore_compiler
from gpu_kit_layout import COMPILER, MANIFEST, SEED, TVM_ARCHIVE, inputs_digest


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
        why = restore_compiler(kit, Path(args.stage), compiler, site / "tvm" / "lib" / COMPILER)
        if why is None:
            mode = "full"
        else:
            print(f"runtime-only: {why}", file=sys.stderr)
    print(mode)
    return 0


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

    from autosched.tune.runner_handlers import (
        compare_to_reference,
        make_inputs,
        register_gpu_flush,
    )

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
        problem = compare_to_reference(got, ref, args.rtol, args.atol, int(entry["reduction"]))
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
