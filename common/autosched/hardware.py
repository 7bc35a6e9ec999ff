"""Hardware parameters that static scheduling needs: detected from the host, overridable.

Overrides come from the settings object (``AUTOSCHED_NUM_CORES`` ...) or explicit arguments,
so a server can schedule for a worker's hardware rather than its own.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from autosched.settings import get_settings


@dataclass(frozen=True)
class HardwareParams:
    num_cores: int
    vector_bits: int  # widest SIMD register the code generator may use
    l1_bytes: int  # per-core data cache
    l2_bytes: int  # per-core
    l3_bytes: int  # shared
    mcpu: str  # LLVM CPU name, e.g. znver3
    kind: str = "llvm"

    @property
    def vector_lanes_f32(self) -> int:
        return self.vector_bits // 32

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> HardwareParams:
        # Descriptions may carry more than the parameters (a worker's CPU model, its CUDA
        # devices): only the fields the scheduler uses are read back.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cache_bytes(level: int, kind: str) -> int | None:
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            if int((index / "level").read_text()) != level:
                continue
            if (index / "type").read_text().strip() not in (kind, "Unified"):
                continue
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 1024, "M": 1024**2, "G": 1024**3}
        return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    return None


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # psutil is a dependency, but detection must never fail
        return os.cpu_count() or 1


def detect_hardware(**overrides: Any) -> HardwareParams:
    """Host CPU parameters; settings and keyword overrides win over detection."""
    import tvm

    flags = _cpu_flags()
    vector_bits = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    settings = get_settings()
    hw = HardwareParams(
        num_cores=settings.num_cores or _physical_cores(),
        vector_bits=settings.vector_bits or vector_bits,
        l1_bytes=settings.l1_bytes or _cache_bytes(1, "Data") or 32 * 1024,
        l2_bytes=settings.l2_bytes or _cache_bytes(2, "Unified") or 512 * 1024,
        l3_bytes=_cache_bytes(3, "Unified") or 8 * 1024**2,
        mcpu=str(tvm.target.codegen.llvm_get_system_cpu()),
    )
    return replace(hw, **overrides) if overrides else hw


def cpu_target(hw: HardwareParams | None = None) -> Any:
    """The TVM target for ``hw`` (dict form: TVM 0.27 rejects ``-mcpu`` strings)."""
    import tvm

    hw = hw or detect_hardware()
    return tvm.target.Target({"kind": "llvm", "mcpu": hw.mcpu, "num-cores": hw.num_cores})


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (e.g. "AMD EPYC 9B45"), or "unknown"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cuda_devices() -> list[dict[str, Any]]:
    """The CUDA devices TVM sees on this host (none without a GPU and driver)."""
    import tvm

    found = []
    for index in range(16):
        try:
            dev = tvm.cuda(index)
            if not dev.exist:
                break
            found.append(
                {
                    "index": index,
                    "name": str(dev.device_name),
                    "compute_version": str(dev.compute_version),
                    "multi_processor_count": int(dev.multi_processor_count),
                    "max_threads_per_block": int(dev.max_threads_per_block),
                }
            )
        except Exception:  # a TVM build without CUDA, or a driver error: no devices
            break
    return found


def describe_host(hw: HardwareParams) -> dict[str, Any]:
    """What a worker registers: the scheduling parameters plus the CPU model and any CUDA
    devices (``HardwareParams.from_json`` reads the parameters back and ignores the rest)."""
    return {**hw.to_json(), "cpu_model": cpu_model(), "cuda_devices": cuda_devices()}
