"""CUDA libraries with their kernels compiled here, so a GPU host needs no CUDA compiler.

What TVM 0.27 does on its own (``docs/gpu.md``): ``target.build.cuda`` generates CUDA C++ and
hands it to ``ffi.Module.create.cuda``, a factory of ``libtvm_runtime_cuda.so``. That library
links the CUDA driver (``libcuda.so.1``), so on a build host without a driver it does not
load, and codegen falls back to a module that keeps the *source* (format ``"cuda"``):
``tvm_callback_cuda_compile`` is never called, ``export_library`` embeds the source, and the
GPU host would compile it when it loads the library (with NVRTC through the
``cuda-bindings`` package by default, or nvcc), through TVM's Python callback, so with the
whole compiler there. Where the driver does load, codegen calls that callback at build time,
which by default needs ``cuda-bindings`` too.

Here instead, every CUDA build takes the source module (``TVM_COMPILE_FORCE_FALLBACK``, the
same on any host), compiles its source with nvcc to a cubin for ``hw.gpu.arch`` (TVM's own
``compile_cuda``, so its flags: ``-O3 --use_fast_math``, ptxas options), and packs the cubin
into the library in place of the source (``export_library``'s ``fpack_imports`` hook). A
kernel nvcc or ptxas rejects (too much shared memory, ...) or that asks for more threads per
block than the GPU has fails here, as a ``DeviceCodeError`` with the compiler's own words.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from typing import Any

from autosched.hardware import HardwareParams, cpu_target

#: Makes TVM's CUDA codegen keep the source even where the CUDA runtime library loads.
FORCE_SOURCE_ENV = "TVM_COMPILE_FORCE_FALLBACK"
#: The symbol a TVM library keeps its imported modules in (tvm-ffi's ``library_bin``).
LIBRARY_BIN_SYMBOL = "__tvm_ffi__library_bin"
#: The module kind (and source format) of CUDA modules in that blob.
CUDA_KIND = "cuda"
DEVICE_FORMAT = "cubin"
_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\((\d+)")
_U64 = struct.Struct("<Q")


class DeviceCodeError(Exception):
    """nvcc or ptxas rejected a kernel, or it exceeds the GPU's limits."""


def compile_for_gpu(mod: Any, hw: HardwareParams) -> Any:
    """``tvm.compile`` for a CUDA ``hw``, with the CUDA source kept for ``export_library``.

    The environment variable is set for this call only (codegen reads it with getenv on each
    build): processes started meanwhile, or later builds in this one, keep TVM's default.
    """
    import tvm

    before = os.environ.get(FORCE_SOURCE_ENV)
    os.environ[FORCE_SOURCE_ENV] = "1"
    try:
        return tvm.compile(mod, target=cpu_target(hw))
    finally:
        if before is None:
            del os.environ[FORCE_SOURCE_ENV]
        else:
            os.environ[FORCE_SOURCE_ENV] = before


def export_library(executable: Any, path: str, hw: HardwareParams) -> None:
    """Export ``executable`` (from ``compile_for_gpu``) to ``path`` with its kernels as cubins
    for ``hw.gpu.arch``. Raises ``DeviceCodeError`` for a kernel the GPU cannot take."""
    executable.export_library(path, fpack_imports=device_code_packer(hw))


def device_code_packer(hw: HardwareParams) -> Callable[[Any, bool, str, str], str]:
    """An ``fpack_imports`` for ``export_library``: the imports' blob with every CUDA source
    module compiled, written as a C file that the library links."""
    if hw.gpu is None:
        raise ValueError("device code needs a CUDA hardware description")

    def pack(mod: Any, is_system_lib: bool, symbol_prefix: str, workspace_dir: str) -> str:
        from tvm.runtime import _ffi_api

        if is_system_lib or symbol_prefix:
            raise DeviceCodeError("CUDA libraries are built as shared libraries only")
        blob = bytes(_ffi_api.ModulePackImportsToTensor(mod).numpy())
        blob = compile_cuda_modules(blob, lambda source: compile_kernels(source, hw))
        path = os.path.join(workspace_dir, "devc.c")
        with open(path, "w") as f:
            f.write(library_bin_c(blob))
        return path

    return pack


def compile_kernels(source: str, hw: HardwareParams) -> bytes:
    """A cubin of ``source`` for ``hw.gpu.arch`` (nvcc, TVM's flags)."""
    from tvm.support import nvcc

    gpu = hw.gpu
    assert gpu is not None
    for threads in _LAUNCH_BOUNDS.findall(source):
        if int(threads) > gpu.max_threads_per_block:
            raise DeviceCodeError(
                f"a kernel uses {threads} threads per block; the GPU allows "
                f"{gpu.max_threads_per_block}"
            )
    try:
        with cpu_target(hw):  # compile_cuda reads the arch's compute version from it
            return bytes(
                nvcc.compile_cuda(
                    source, target_format=DEVICE_FORMAT, arch=gpu.arch, compiler="nvcc"
                )
            )
    except RuntimeError as err:
        raise DeviceCodeError(f"nvcc rejected the kernel: {compiler_errors(str(err))}") from err
    except FileNotFoundError as err:  # no nvcc on the PATH
        raise DeviceCodeError(f"nvcc not found on the PATH ({err})") from err


def compiler_errors(message: str) -> str:
    """The error lines of nvcc's output (TVM's message starts with the whole source)."""
    _, _, output = message.partition("Compilation error:")
    lines = [ln.strip() for ln in (output or message).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    text = "; ".join(errors or lines[-5:])
    return text[:2000]


# -- the imports blob ------------------------------------------------------------------------
# tvm-ffi's layout (``ProcessLibraryBin``): <nbytes: u64> <indptr: vec<u64>>
# <child_indices: vec<u64>>, then per module <kind: str> [<payload: bytes>] ("_lib", the host
# library itself, has no payload); a vec, str or bytes is a u64 count and then the items.
# A CUDA module's payload (``CUDAModuleNode::SaveToBytes``) is <fmt: str> <fmap> <code: bytes>.


def _read_u64(buf: bytes, pos: int) -> tuple[int, int]:
    if pos + 8 > len(buf):
        raise ValueError("truncated TVM library blob")
    return _U64.unpack_from(buf, pos)[0], pos + 8


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _read_u64(buf, pos)
    if pos + n > len(buf):
        raise ValueError("truncated TVM library blob")
    return buf[pos : pos + n], pos + n


def _pack_bytes(data: bytes) -> bytes:
    return _U64.pack(len(data)) + data


def compile_cuda_modules(blob: bytes, compile_source: Callable[[str], bytes]) -> bytes:
    """``blob`` with each CUDA module that holds source replaced by its compiled code."""
    nbytes, pos = _read_u64(blob, 0)
    if nbytes != len(blob) - 8:
        raise ValueError("TVM library blob size mismatch")
    start = pos
    n_ptr, pos = _read_u64(blob, pos)
    pos += 8 * n_ptr
    n_child, pos = _read_u64(blob, pos)
    pos += 8 * n_child
    out = [blob[start:pos]]
    for _ in range(max(0, n_ptr - 1)):
        kind, pos = _read_bytes(blob, pos)
        out.append(_pack_bytes(kind))
        if kind == b"_lib":
            continue
        payload, pos = _read_bytes(blob, pos)
        if kind == CUDA_KIND.encode():
            payload = _compiled_payload(payload, compile_source)
        out.append(_pack_bytes(payload))
    if pos != len(blob):
        raise ValueError("trailing bytes in TVM library blob")
    body = b"".join(out)
    return _U64.pack(len(body)) + body


def _compiled_payload(payload: bytes, compile_source: Callable[[str], bytes]) -> bytes:
    fmt, pos = _read_bytes(payload, 0)
    if fmt != CUDA_KIND.encode():
        return payload  # already device code (a codegen that compiled it itself)
    # The code is the last field; the function table between is kept byte for byte.
    for end in range(len(payload) - 8, pos - 1, -1):
        n = _U64.unpack_from(payload, end)[0]
        if end + 8 + n == len(payload):
            fmap, code = payload[pos:end], payload[end + 8 :]
            break
    else:
        raise ValueError("no CUDA source in the module's payload")
    binary = compile_source(code.decode())
    return _pack_bytes(DEVICE_FORMAT.encode()) + fmap + _pack_bytes(binary)


def library_bin_c(blob: bytes) -> str:
    """C source defining the library blob, as ``ModulePackImportsToC`` writes it."""
    rows = [",".join(f"0x{b:02x}" for b in blob[i : i + 32]) + "," for i in range(0, len(blob), 32)]
    return "\n".join(
        [
            "#ifdef __cplusplus",
            'extern "C" {',
            "#endif",
            f"extern const unsigned char {LIBRARY_BIN_SYMBOL}[];",
            f"const unsigned char {LIBRARY_BIN_SYMBOL}[{len(blob)}] = {{",
            *rows,
            "};",
            "#ifdef __cplusplus",
            "}",
            "#endif",
            "",
        ]
    )
