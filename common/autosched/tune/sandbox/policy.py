"""What a sandbox process may have: its environment, its directory and its resource limits.

A sandbox runs code generated from a client's workload (and, for the API, TVM on a client's
document), so it gets only what TVM, LLVM, the C toolchain and numpy need. Parent side:
``sandbox_env`` (the allow-listed environment) and ``SandboxLimits`` (sized from the settings
and the CPUs and memory this worker may really use). Child side: ``apply_limits`` once before
the handler is imported, ``arm_cpu_limit`` before each request, ``describe`` for operators.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

from autosched.settings import Settings

# The worker's environment variables a sandbox inherits, and why. Everything else (the
# database and broker URLs, API tokens, cloud credentials) stays in the worker.
ENV_ALLOWED: dict[str, str] = {
    "PATH": "gcc/g++ and ld for export_library, nvcc for CUDA builds",
    "LANG": "locale: Python's text encoding and compiler messages",
    "LANGUAGE": "locale: message language of gcc and ld",
    "LD_LIBRARY_PATH": "shared libraries TVM, a conda toolchain or CUDA load at run time",
    "LIBRARY_PATH": "where gcc's linker finds libraries in non-system toolchains",
    "CC": "the C compiler tvm.support.cc uses when set",
    "CXX": "the C++ compiler tvm.support.cc uses when set",
    "PYTHONPATH": "how the child finds autosched when it is run from a source tree",
    "TVM_NUM_THREADS": "TVM's thread pool size: kernels are timed with the worker's threads",
    "TVM_BIND_THREADS": "TVM's thread pinning, as the worker's operator set it",
    "TVM_THREAD_POOL_SPIN_COUNT": "TVM's thread pool spinning, as the operator set it",
    "TVM_LIBRARY_PATH": "where TVM finds libtvm when it is not next to the Python package",
    "TVM_HOME": "TVM source/installation root for builds from source",
    "TVM_CUDA_COMPILE_MODE": "how TVM compiles CUDA (nvcc or nvrtc)",
    "OMP_NUM_THREADS": "OpenMP threads of numpy's BLAS and of OpenMP-built kernels",
    "OPENBLAS_NUM_THREADS": "numpy's OpenBLAS threads (reference outputs)",
    "MKL_NUM_THREADS": "numpy's MKL threads when numpy is built against MKL",
    "CUDA_VISIBLE_DEVICES": "the GPUs this worker owns",
    "CUDA_DEVICE_ORDER": "how CUDA numbers them (must match the worker's view)",
    "CUDA_HOME": "the CUDA toolkit (nvcc, libdevice) for GPU builds",
    "CUDA_PATH": "the CUDA toolkit, the name some tools read",
}
# Name prefixes allowed as a family, and why.
ENV_ALLOWED_PREFIXES: dict[str, str] = {
    "LC_": "locale categories (LC_ALL, LC_CTYPE, LC_MESSAGES, ...)",
}

_MiB = 1 << 20
_GiB = 1 << 30
# A sandbox never gets more address space than this, whatever the machine has.
MEMORY_CAP_BYTES = 8 * _GiB
# ... nor less: importing TVM and LLVM and building one kernel peaks at ~520 MB of address
# space (measured), so a smaller derived share would fail every candidate.
MEMORY_FLOOR_BYTES = 1 * _GiB
# Files a builder writes: one exported kernel library (a few MB, more with heavy unrolling)
# and its stderr log; a runner also writes reference outputs (one .npy per output tensor).
BUILDER_FSIZE_BYTES = 512 * _MiB


def _settings_env(settings: Settings) -> dict[str, str]:
    """The settings a child re-reads through ``get_settings()``, from the parent's object.

    Wire limits (``max_*``) decide whether a workload is valid; hardware overrides decide its
    static schedule and target. The child must see the worker's values, and nothing else.
    """
    names = ["num_cores", "vector_bits", "l1_bytes", "l2_bytes"]
    names += [n for n in type(settings).model_fields if n.startswith("max_")]
    env = {}
    for name in names:
        value = getattr(settings, name)
        if value is not None:
            env[f"AUTOSCHED_{name.upper()}"] = str(value)
    return env


def sandbox_env(settings: Settings, private_dir: str) -> dict[str, str]:
    """The whole environment of a sandbox child whose own directory is ``private_dir``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k in ENV_ALLOWED or k.startswith(tuple(ENV_ALLOWED_PREFIXES))
    }
    env.update(_settings_env(settings))
    env.update(
        # Scratch files (gcc's objects, TVM's temp dirs) go to the sandbox's own directory,
        # which is removed with it; HOME too, so no tool reads or writes the worker's dotfiles.
        TMPDIR=private_dir,
        HOME=private_dir,
        # No .pyc written next to the sources: a sandbox writes only where it is told to.
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def make_private_dir() -> str:
    """A fresh directory only this user can enter (mkdtemp: mode 0700)."""
    return tempfile.mkdtemp(prefix="autosched-sandbox-")


def remove_private_dir(path: str) -> None:
    """Remove a sandbox's directory, even where the sandbox took its own permissions away."""

    def make_accessible(_func: Any, p: str, _exc_info: Any) -> None:
        # rmtree cannot list or empty a directory without rwx; restore them and let the
        # next pass remove it (onexc is Python 3.12+).
        # Never through a symlink: chmod follows it, and the sandbox chose its target.
        target = p if os.path.isdir(p) and not os.path.islink(p) else os.path.dirname(p)
        with contextlib.suppress(OSError):
            os.chmod(target, stat.S_IRWXU)

    for _ in range(8):  # each pass reaches one level deeper below a locked directory
        shutil.rmtree(path, onerror=make_accessible)
        if not os.path.lexists(path):
            return


@dataclass(frozen=True)
class SandboxLimits:
    """Per-process limits a sandbox child sets on itself before serving requests."""

    as_bytes: int | None  # RLIMIT_AS: address space (None: unlimited)
    cpu_s: int | None  # RLIMIT_CPU budget of each request (and of start-up)
    fsize_bytes: int | None  # RLIMIT_FSIZE: largest file the child may write

    @classmethod
    def for_pool(
        cls, settings: Settings, pool_size: int, *, writes_tensors: bool = True
    ) -> SandboxLimits:
        """Limits for one of ``pool_size`` sandboxes running side by side on this worker."""
        return cls(
            as_bytes=sandbox_memory_bytes(settings, pool_size),
            cpu_s=settings.sandbox_cpu_s,
            fsize_bytes=fsize_bytes(settings, writes_tensors=writes_tensors),
        )

    def child_spec(self, max_uses: int | None) -> dict[str, Any]:
        """What the child's argv carries: the limits and the CPU hard limit of its lifetime."""
        spec = asdict(self)
        # RLIMIT_CPU's hard limit can be lowered but never raised again, so it bounds the
        # child's whole life: start-up plus ``max_uses`` requests, each within ``cpu_s``.
        spec["cpu_hard_s"] = (
            self.cpu_s * (max_uses + 1) if self.cpu_s is not None and max_uses else None
        )
        return spec


def sandbox_memory_bytes(settings: Settings, pool_size: int) -> int:
    """Address space of one sandbox: the setting, else the usable memory shared out.

    The worker process itself keeps one share (``pool_size + 1``); at most 8 GiB, at least
    what TVM needs to start.
    """
    if settings.sandbox_memory_bytes is not None:
        return settings.sandbox_memory_bytes
    from autosched.tune.resources import usable_memory_bytes

    share = usable_memory_bytes() // (max(1, pool_size) + 1)
    return max(MEMORY_FLOOR_BYTES, min(MEMORY_CAP_BYTES, share))


def fsize_bytes(settings: Settings, *, writes_tensors: bool) -> int:
    """RLIMIT_FSIZE: a builder's artifacts are small; a runner writes whole output tensors."""
    if not writes_tensors:
        return BUILDER_FSIZE_BYTES
    return max(BUILDER_FSIZE_BYTES, settings.max_tensor_bytes + _MiB)  # + the .npy header


# -- child side ----------------------------------------------------------------------------
def _set(res: int, soft: int | None, hard: int | None) -> None:
    """Lower a limit; never above the hard limit the child inherited (that would fail)."""
    import resource

    inf = resource.RLIM_INFINITY
    _, cur_hard = resource.getrlimit(res)
    hard_v = inf if hard is None else hard
    if cur_hard != inf:
        hard_v = cur_hard if hard_v == inf else min(hard_v, cur_hard)
    soft_v = inf if soft is None else soft
    if hard_v != inf:
        soft_v = hard_v if soft_v == inf else min(soft_v, hard_v)
    resource.setrlimit(res, (soft_v, hard_v))


#: Signals that mean the child's native code went wrong (a bad kernel, a bug in TVM).
FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)


def die_promptly_on_fatal_signals() -> None:
    """Make a crash end the child at once (call once TVM is loaded).

    Loading TVM installs a SIGSEGV handler that prints a C++ backtrace, allocating as it
    goes; a crash inside malloc (or a signal arriving while another thread holds its lock)
    then deadlocks the child, and the parent waits out the whole request timeout for what
    was a crash. Python's faulthandler writes the Python traceback to stderr with
    async-signal-safe calls only, then re-raises the signal with its default action, which
    ends the child; the parent names the signal and quotes that traceback.
    """
    for sig in FATAL_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    faulthandler.enable(file=sys.stderr, all_threads=True)


def apply_limits(spec: dict[str, Any]) -> None:
    """Set the child's limits (before TVM is imported, so that it runs under them too)."""
    import resource

    if spec.get("as_bytes"):
        _set(resource.RLIMIT_AS, spec["as_bytes"], spec["as_bytes"])
    # A crashing kernel must not leave a core file of a multi-GB process behind.
    _set(resource.RLIMIT_CORE, 0, 0)
    if spec.get("fsize_bytes"):
        _set(resource.RLIMIT_FSIZE, spec["fsize_bytes"], spec["fsize_bytes"])
        # Python ignores SIGXFSZ, and then a write past the limit is a short write that
        # numpy reports as "N requested and M written". The signal's default action ends the
        # child instead, and the parent names the limit.
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    if spec.get("cpu_s"):
        _set(resource.RLIMIT_CPU, None, spec.get("cpu_hard_s"))
        arm_cpu_limit(spec)
    # No RLIMIT_NPROC: it counts every thread of the worker's user (other sandboxes, the
    # worker, TVM's thread pools), so a value that lets gcc and TVM run bounds nothing. The
    # process group kill reaches whatever a sandbox spawns.


def cpu_used_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


def arm_cpu_limit(spec: dict[str, Any]) -> None:
    """Give the next request ``cpu_s`` CPU seconds: soft RLIMIT_CPU = used + ``cpu_s``.

    RLIMIT_CPU counts the process's whole life, and a sandbox serves many requests, so a
    fixed limit would bound the sum, not each request. Raising the soft limit before each
    request bounds each one; past it the kernel sends SIGXCPU, which ends the child (the
    parent reports it and starts a new one). The hard limit stays as ``apply_limits`` set it.
    """
    import resource

    if not spec.get("cpu_s"):
        return
    soft = math.ceil(cpu_used_s()) + int(spec["cpu_s"])
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def describe() -> dict[str, Any]:
    """What this sandbox sees: env names, the AUTOSCHED_ values, its directories and limits.

    A diagnostic for operators and tests (``{"op": "limits"}``); it reveals nothing the
    sandbox does not already have.
    """
    import resource

    rlimits = {
        name: list(resource.getrlimit(getattr(resource, f"RLIMIT_{name.upper()}")))
        for name in ("as", "cpu", "core", "fsize", "nproc")
    }
    return {
        "ok": True,
        "pid": os.getpid(),
        "env_keys": sorted(os.environ),
        "autosched_env": {k: v for k, v in os.environ.items() if k.startswith("AUTOSCHED_")},
        "cwd": os.getcwd(),
        "tmpdir": tempfile.gettempdir(),
        "home": os.environ.get("HOME"),
        "rlimits": rlimits,  # [soft, hard]; -1 is unlimited
        "cpu_used_s": cpu_used_s(),
    }
