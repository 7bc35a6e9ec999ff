"""Hardware parameters that static scheduling needs: detected from the host, overridable.

Overrides come from the settings object (``AUTOSCHED_NUM_CORES`` ...) or explicit arguments,
so a server can schedule for a worker's hardware rather than its own. A GPU's parameters
are detected in ``gpu_hardware``; the description a worker registers is ``host_description``.

A worker's report is untrusted input: its ``mcpu`` reaches the LLVM target and its sizes
drive every template built for its device key. ``HardwareParams`` therefore checks ranges
and vocabularies whenever one is made, and ``check_known_cpu`` checks the CPU name against
LLVM's own list.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from autosched.errors import InvalidHardwareError
from autosched.settings import get_settings
from autosched.vocabulary import gpu_target_key, target_key

KiB, MiB, GiB = 1024, 1024**2, 1024**3
#: Code generators a device may use: a CPU (LLVM) or an NVIDIA GPU (CUDA, built on the host).
KINDS = frozenset({"llvm", "cuda"})
VECTOR_BITS = frozenset({128, 256, 512})
#: Inclusive ranges wide enough for any real CPU (L3 may be absent: 0).
RANGES: dict[str, tuple[int, int]] = {
    "num_cores": (1, 1024),
    "l1_bytes": (1 * KiB, 4 * MiB),
    "l2_bytes": (16 * KiB, 512 * MiB),
    "l3_bytes": (0, 4 * GiB),
}
#: LLVM CPU names are short lower-case words (znver3, skylake-avx512, x86-64-v3).
MCPU_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def require_int_in(name: str, value: object, low: int, high: int) -> None:
    """Refuse a reported count that is not an integer in ``[low, high]``."""
    if type(value) is not int or not low <= value <= high:  # bool is no count
        raise InvalidHardwareError(f"hardware.{name} must be an integer in [{low}, {high}]")


#: CUDA architectures as nvcc names them (sm_80, sm_90, sm_90a).
ARCH_PATTERN = re.compile(r"sm_[0-9]{2,3}[a-z]?")
#: Inclusive ranges wide enough for any real NVIDIA GPU.
GPU_RANGES: dict[str, tuple[int, int]] = {
    "sm_count": (1, 1024),
    "max_threads_per_block": (32, 4096),
    "max_shared_memory_per_block": (1 * KiB, 1 * MiB),
    "registers_per_block": (1024, 1 << 20),
    "warp_size": (8, 128),
    "l2_bytes": (0, 1 * GiB),
}


@dataclass(frozen=True)
class GpuParams:
    """What CUDA templates need of a GPU: the knob domains (threads and shared memory per
    block, registers) and the static fill (SMs to fill, warp size, L2) follow from these."""

    arch: str  # nvcc's name, e.g. sm_90
    sm_count: int
    max_threads_per_block: int
    # Static shared memory a block may declare (48 KiB on every card since sm_70; more only
    # with an opt-in TVM's generated kernels do not make).
    max_shared_memory_per_block: int
    registers_per_block: int
    warp_size: int
    l2_bytes: int

    def __post_init__(self) -> None:
        for name, (low, high) in GPU_RANGES.items():
            require_int_in(f"gpu.{name}", getattr(self, name), low, high)
        if not isinstance(self.arch, str) or not ARCH_PATTERN.fullmatch(self.arch):
            raise InvalidHardwareError("hardware.gpu.arch must look like 'sm_90'")

    @property
    def compute_version(self) -> tuple[int, int]:
        digits = self.arch[3:].rstrip("abcdefghijklmnopqrstuvwxyz")
        return int(digits[:-1]), int(digits[-1])

    @classmethod
    def from_json(cls, doc: object) -> GpuParams:
        names = {f.name for f in fields(cls)}
        if not isinstance(doc, dict) or set(doc) != names:
            raise InvalidHardwareError(f"hardware.gpu must have exactly the keys {sorted(names)}")
        return cls(**doc)


@dataclass(frozen=True)
class HardwareParams:
    num_cores: int
    vector_bits: int  # widest SIMD register the code generator may use
    l1_bytes: int  # per-core data cache
    l2_bytes: int  # per-core
    l3_bytes: int  # shared
    mcpu: str  # LLVM CPU name, e.g. znver3
    kind: str = "llvm"
    #: The GPU a "cuda" device runs on (None for a CPU device). The CPU fields above then
    #: describe the host that builds its kernels.
    gpu: GpuParams | None = None

    def __post_init__(self) -> None:
        if (self.kind == "cuda") != isinstance(self.gpu, GpuParams):
            raise InvalidHardwareError("hardware.gpu is required for kind 'cuda', and only then")
        for name, (low, high) in RANGES.items():
            require_int_in(name, getattr(self, name), low, high)
        if type(self.vector_bits) is not int or self.vector_bits not in VECTOR_BITS:
            raise InvalidHardwareError(f"hardware.vector_bits must be one of {sorted(VECTOR_BITS)}")
        if self.kind not in KINDS:
            raise InvalidHardwareError(f"hardware.kind must be one of {sorted(KINDS)}")
        if not isinstance(self.mcpu, str) or not MCPU_PATTERN.fullmatch(self.mcpu):
            raise InvalidHardwareError(
                "hardware.mcpu must be an LLVM CPU name (lower-case letters, digits, '-', "
                "'_', '.'; at most 64 characters)"
            )

    @property
    def target_key(self) -> str:
        """Its records' key: machines with the same key share schedules (vocabulary)."""
        if self.gpu is not None:
            gpu = self.gpu
            return gpu_target_key(gpu.arch, gpu.sm_count, gpu.max_shared_memory_per_block)
        return target_key(self.kind, self.mcpu, self.num_cores, self.vector_bits)

    @property
    def is_gpu(self) -> bool:
        return self.gpu is not None

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
        optional = {"kind", "gpu"}
        missing = sorted(f.name for f in fields(cls) if f.name not in optional | set(doc))
        if missing:
            raise InvalidHardwareError(f"hardware is missing {missing}")
        values = {k: v for k, v in doc.items() if k in known}
        if values.get("gpu") is not None:
            values["gpu"] = GpuParams.from_json(values["gpu"])
        return cls(**values)


@lru_cache(maxsize=4)
def known_cpus(kind: str = "llvm") -> frozenset[str]:
    """The CPU names this TVM's LLVM accepts for the host's target triple."""
    import tvm

    target = tvm.target.Target({"kind": kind})
    return frozenset(str(c) for c in tvm.target.codegen.llvm_get_cpu_archlist(target))


def check_known_cpu(hw: HardwareParams) -> None:
    """Refuse an ``mcpu`` LLVM does not know: it would reach every build for that device."""
    if hw.mcpu not in known_cpus("llvm"):
        raise InvalidHardwareError(f"hardware.mcpu {hw.mcpu!r} is not a CPU LLVM knows")


def target_json(hw: HardwareParams) -> dict[str, Any]:
    """The TVM target of ``hw`` as the dict ``tvm.target.Target`` takes (see ``cpu_target``).

    A GPU's host code is built for a generic x86-64: the kernels are what is tuned, and one
    card's schedules must load on any host of the same key."""
    if hw.gpu is None:
        return {"kind": hw.kind, "mcpu": hw.mcpu, "num-cores": hw.num_cores}
    gpu = hw.gpu
    return {
        "kind": "cuda",
        "arch": gpu.arch,
        "max_threads_per_block": gpu.max_threads_per_block,
        "max_num_threads": gpu.max_threads_per_block,
        "max_shared_memory_per_block": gpu.max_shared_memory_per_block,
        "registers_per_block": gpu.registers_per_block,
        "thread_warp_size": gpu.warp_size,
        "l2_cache_size_bytes": gpu.l2_bytes,
        "host": {"kind": "llvm"},
    }


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
    """The TVM target for ``hw`` (dict form: TVM 0.27 rejects ``-mcpu`` strings); for a GPU
    device, the CUDA target with its host."""
    import tvm

    hw = hw or detect_hardware()
    return tvm.target.Target(target_json(hw))


def reference_target(hw: HardwareParams) -> Any:
    """Where reference outputs are computed: the host CPU, also for a GPU device (its
    kernels are checked against the same PrimFunc built with LLVM)."""
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": hw.mcpu, "num-cores": hw.num_cores})
