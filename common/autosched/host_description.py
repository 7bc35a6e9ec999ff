"""What a worker registers about its host: the scheduling parameters plus a bounded
description (its CPU model and CUDA devices).

The report is untrusted input: ``HostDescription.from_report`` accepts known keys only,
checks every value's range, the CPU name against LLVM's own list, and bounds the
descriptive extras. ``describe_host`` cuts a real host's description to those bounds.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from autosched.errors import InvalidHardwareError
from autosched.hardware import HardwareParams, check_known_cpu, require_int_in

#: Bounds of the descriptive extras a worker reports besides the parameters.
MAX_TEXT = 200
MAX_CUDA_DEVICES = 16


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise InvalidHardwareError(f"{name} must be printable text, at most {MAX_TEXT} characters")
    return value


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    compute_version: str  # "9.0"
    multi_processor_count: int
    max_threads_per_block: int

    @classmethod
    def from_report(cls, doc: object, where: str) -> CudaDevice:
        """``where`` is the device's path below ``hardware`` (``cuda_devices[0]``)."""
        if not isinstance(doc, dict) or set(doc) != {f.name for f in fields(cls)}:
            raise InvalidHardwareError(
                f"hardware.{where} must have exactly the keys {sorted(f.name for f in fields(cls))}"
            )
        require_int_in(f"{where}.index", doc["index"], 0, MAX_CUDA_DEVICES - 1)
        require_int_in(f"{where}.multi_processor_count", doc["multi_processor_count"], 0, 100_000)
        require_int_in(f"{where}.max_threads_per_block", doc["max_threads_per_block"], 0, 65_536)
        version = doc["compute_version"]
        if not isinstance(version, str) or not re.fullmatch(r"\d{1,2}\.\d{1,2}", version):
            raise InvalidHardwareError(f"hardware.{where}.compute_version must look like '9.0'")
        return cls(
            index=doc["index"],
            name=_text(f"hardware.{where}.name", doc["name"]),
            compute_version=version,
            multi_processor_count=doc["multi_processor_count"],
            max_threads_per_block=doc["max_threads_per_block"],
        )


@dataclass(frozen=True)
class HostDescription:
    """What a worker registers: the scheduling parameters plus a bounded description."""

    params: HardwareParams
    cpu_model: str = "unknown"
    cuda_devices: tuple[CudaDevice, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            **self.params.to_json(),
            "cpu_model": self.cpu_model,
            "cuda_devices": [asdict(d) for d in self.cuda_devices],
        }

    @classmethod
    def from_report(cls, doc: dict[str, Any]) -> HostDescription:
        """Validate a worker's report strictly: known keys only, every value in range, and a
        CPU name LLVM knows. Raises ``InvalidHardwareError`` (HTTP 422)."""
        params = {f.name for f in fields(HardwareParams)}
        unknown = sorted(set(doc) - params - {"cpu_model", "cuda_devices"})
        if unknown:
            raise InvalidHardwareError(f"hardware has unknown fields {unknown[:8]}")
        hw = HardwareParams.from_json(doc)
        check_known_cpu(hw)
        devices = doc.get("cuda_devices", [])
        if not isinstance(devices, list) or len(devices) > MAX_CUDA_DEVICES:
            raise InvalidHardwareError(
                f"hardware.cuda_devices must be a list of at most {MAX_CUDA_DEVICES}"
            )
        return cls(
            params=hw,
            cpu_model=_text("hardware.cpu_model", doc.get("cpu_model", "unknown")),
            cuda_devices=tuple(
                CudaDevice.from_report(d, f"cuda_devices[{i}]") for i, d in enumerate(devices)
            ),
        )


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
    devices (``HardwareParams.from_json`` reads the parameters back and ignores the rest).
    Cut to the bounds ``HostDescription.from_report`` enforces, so a real host always passes."""
    model = "".join(c for c in cpu_model() if c.isprintable())[:MAX_TEXT] or "unknown"
    devices = [
        {**d, "name": "".join(c for c in d["name"] if c.isprintable())[:MAX_TEXT]}
        for d in cuda_devices()[:MAX_CUDA_DEVICES]
    ]
    return {**hw.to_json(), "cpu_model": model, "cuda_devices": devices}
