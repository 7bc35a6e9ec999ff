"""Workload keys: one stable string per distinct computation."""

from __future__ import annotations

import tvm_ffi
from tvm import tirx

from autosched import WIRE_FORMAT_VERSION


def workload_key(func: tirx.PrimFunc) -> str:
    """``v<format version>-<16 hex digits>``: the structural hash of the canonical PrimFunc.

    The structural hash ignores buffer, block and variable names and is the same in every
    process (it does not depend on PYTHONHASHSEED or object addresses), so two clients that
    declare the same computation under different names get the same key. Hash the bare PrimFunc:
    wrapping it in an IRModule gives a different hash. The format version is part of the key so
    a format change that alters what a document means cannot reuse old tuning records.
    """
    if not isinstance(func, tirx.PrimFunc):
        raise TypeError(f"workload_key needs a tvm.tirx.PrimFunc, not {type(func).__name__}")
    digest = tvm_ffi.structural_hash(func) & 0xFFFF_FFFF_FFFF_FFFF
    return f"v{WIRE_FORMAT_VERSION}-{digest:016x}"
