"""What the GPU-host kit's builder (here) and its user (the GPU host) agree on: the kit's file
names, the seed of every case's inputs and how the inputs are fingerprinted.

Standard library only, as every ``gpu_kit`` module's top level: the GPU host runs the kit's
commands before TVM is unpacked.
"""

from __future__ import annotations

import hashlib
from typing import Any

MiB = 1 << 20
MANIFEST = "kit.json"
TVM_ARCHIVE = "tvm.tar.xz"
COMPILER = "libtvm_compiler.so"
COMPILER_PARTS = "libtvm_compiler.so.xz.part"
#: Where ``scripts/gpu_check.sh --stage`` keeps part ``a`` on the GPU host between calls.
STAGE_DIR = "/tmp/autosched-gpu-kit"
#: The seed of every case's inputs (``make_inputs``): the GPU host makes the same ones.
SEED = 0
Spec = tuple[list[int], str, bool]  # shape, dtype, is_output: the runner's parameter specs


def inputs_digest(arrays: list[Any]) -> str:
    """SHA-256 of the arrays' bytes: the GPU host checks that it made the kit's inputs."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(a.tobytes())
    return digest.hexdigest()
