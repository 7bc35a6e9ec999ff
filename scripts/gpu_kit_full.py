"""The full GPU-host kit's extras: TVM's compiler, compressed once and split between two calls,
and the wheels autosched imports that the GPU host lacks."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from gpu_kit_layout import COMPILER, COMPILER_PARTS, MANIFEST

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


def restore_compiler(kit: Path, stage: Path, info: dict[str, Any], dest: Path) -> str | None:
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
