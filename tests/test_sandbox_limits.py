"""Sandboxes get nothing they do not need: environment, directory, resource limits, CPUs.

Real child processes throughout; each observes itself through the ``limits`` diagnostic op.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tvm
from tvm import te

from autosched.hardware import cpu_target, detect_hardware
from autosched.settings import Settings, get_settings
from autosched.tune import resources
from autosched.tune.builder import BUILD_HANDLER, LocalBuilder
from autosched.tune.runner import RUN_HANDLER, LocalRunner, RunnerInput
from autosched.tune.sandbox import SandboxWorker
from autosched.tune.sandbox.policy import (
    ENV_ALLOWED,
    ENV_ALLOWED_PREFIXES,
    SandboxLimits,
    sandbox_memory_bytes,
)
from autosched.tune.trial import TrialStatus
from autosched.wire import serialize

SECRETS = {
    "DATABASE_URL": "postgresql://user:hunter2@db/autosched",
    "REDIS_URL": "redis://:hunter2@redis:6379/0",
    "AUTOSCHED_DATABASE_URL": "postgresql://user:hunter2@db/other",
    "AUTOSCHED_REDIS_URL": "redis://:hunter2@redis:6379/1",
    "AUTOSCHED_API_TOKEN": "as_hunter2",
    "AWS_SECRET_ACCESS_KEY": "hunter2",
}
GiB = 1 << 30
SHAPE = (64, 64)


@pytest.fixture
def hostile_parent_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The worker's environment holds secrets, and one wire limit the children must see."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AUTOSCHED_MAX_RANK", "5")
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        get_settings.cache_clear()  # monkeypatch restores the variables after this


def _describe(worker: SandboxWorker) -> dict:
    reply = worker.call({"op": "limits"}, timeout_s=120)
    assert reply["ok"], reply
    return reply


@pytest.mark.parametrize("handler", [RUN_HANDLER, BUILD_HANDLER])
def test_child_environment_is_allow_listed(hostile_parent_env: Settings, handler: str) -> None:
    assert all(os.environ[name] == value for name, value in SECRETS.items())
    worker = SandboxWorker(handler, max_uses=10)
    try:
        seen = _describe(worker)
    finally:
        worker.close()
    keys = set(seen["env_keys"])
    assert not keys & set(SECRETS), keys & set(SECRETS)
    settings_keys = {k for k in keys if k.startswith("AUTOSCHED_")}
    own = {"TMPDIR", "HOME", "PYTHONDONTWRITEBYTECODE"}
    inherited = keys - settings_keys - own
    assert all(k in ENV_ALLOWED or k.startswith(tuple(ENV_ALLOWED_PREFIXES)) for k in inherited)
    # Only the settings that change validation or scheduling, with the parent's values.
    assert seen["autosched_env"]["AUTOSCHED_MAX_RANK"] == "5"
    hardware = {"AUTOSCHED_NUM_CORES", "AUTOSCHED_VECTOR_BITS", "AUTOSCHED_L1_BYTES"}
    hardware.add("AUTOSCHED_L2_BYTES")
    assert all(k.startswith("AUTOSCHED_MAX_") or k in hardware for k in settings_keys)
    # What TVM needs does get through.
    assert "PATH" in keys
    if "TVM_NUM_THREADS" in os.environ:
        assert "TVM_NUM_THREADS" in keys


def test_private_directory_is_fresh_and_removed() -> None:
    worker = SandboxWorker(RUN_HANDLER, max_uses=10)
    try:
        first = _describe(worker)
        private = worker.private_dir
        assert private is not None
        assert first["cwd"] == first["tmpdir"] == first["home"] == os.path.realpath(private)
        st = os.stat(private)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
        Path(private, "scratch.o").write_bytes(b"left behind")

        # A child that dies is replaced by one with a new directory; the old one is gone.
        os.kill(first["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while worker.alive and time.monotonic() < deadline:  # let it die before the next call
            time.sleep(0.01)
        second = _describe(worker)
        assert second["pid"] != first["pid"]
        assert second["cwd"] != first["cwd"]
        assert not os.path.exists(private)
        private = worker.private_dir
    finally:
        worker.close()
    assert private is not None and not os.path.exists(private)


def test_rlimits_are_set_in_builders_and_runners(tmp_path: Path) -> None:
    settings = Settings(sandbox_cpu_s=45)
    with LocalBuilder(tmp_path, max_workers=2, settings=settings, max_uses=7) as builder:
        assert builder.limits.as_bytes == sandbox_memory_bytes(settings, 2)
        worker = SandboxWorker(BUILD_HANDLER, max_uses=7, limits=builder.limits, settings=settings)
        try:
            seen = _describe(worker)
        finally:
            worker.close()
    limits = seen["rlimits"]
    assert limits["as"] == [builder.limits.as_bytes] * 2  # builders are bounded too
    assert limits["core"] == [0, 0]
    assert limits["fsize"] == [builder.limits.fsize_bytes] * 2
    assert builder.limits.fsize_bytes is not None and builder.limits.fsize_bytes <= GiB
    soft, hard = limits["cpu"]
    # Each request gets 45 CPU seconds beyond what the child has used; its life, 8 x 45.
    assert seen["cpu_used_s"] + 45 <= soft <= seen["cpu_used_s"] + 46
    assert hard == 45 * (7 + 1)

    runner = LocalRunner(tmp_path, settings=settings, rlimit_as_bytes=3 * GiB)
    assert runner.limits.as_bytes == 3 * GiB and runner.limits.cpu_s == 45
    # A runner writes whole reference outputs: its file limit is one tensor's .npy.
    assert runner.limits.fsize_bytes is not None
    assert runner.limits.fsize_bytes > settings.max_tensor_bytes


def test_memory_share_comes_from_settings_or_usable_memory() -> None:
    assert sandbox_memory_bytes(Settings(sandbox_memory_bytes=512 << 20), 4) == 512 << 20
    derived = sandbox_memory_bytes(Settings(), 3)
    expected = resources.usable_memory_bytes() // 4
    assert derived == max(GiB, min(8 * GiB, expected))
    assert SandboxLimits.for_pool(Settings(), 3, writes_tensors=False).as_bytes == derived


def _doubling_doc() -> dict:
    a = te.placeholder(SHAPE, "float32", name="A")
    return serialize([a, te.compute(SHAPE, lambda i, j: a[i, j] * 2.0, name="B")], "double")


def _export(tensors: list[te.Tensor], path: Path) -> str:
    func = te.create_prim_func(tensors)
    target = cpu_target(detect_hardware())
    tvm.compile(tvm.IRModule({"main": func}), target=target).export_library(str(path))
    return str(path)


def _good_artifact(path: Path) -> str:
    a = te.placeholder(SHAPE, "float32", name="A")
    return _export([a, te.compute(SHAPE, lambda i, j: a[i, j] * 2.0, name="B")], path)


def _cpu_burner(path: Path) -> str:
    """The doubling signature, plus a 2**40-step reduction the output depends on."""
    a = te.placeholder(SHAPE, "float32", name="A")
    k1 = te.reduce_axis((0, 1 << 20), name="k1")
    k2 = te.reduce_axis((0, 1 << 20), name="k2")
    spin = te.compute((1,), lambda _: te.sum(a[k1 % 64, k2 % 64], axis=[k1, k2]), name="spin")
    b = te.compute(SHAPE, lambda i, j: a[i, j] * 2.0 + spin[0] * 1e-30, name="B")
    return _export([a, b], path)


def test_cpu_burning_request_fails_as_data_and_next_works(tmp_path: Path) -> None:
    doc = _doubling_doc()
    good = _good_artifact(tmp_path / "good.so")
    burner = _cpu_burner(tmp_path / "burn.so")
    settings = Settings(sandbox_cpu_s=2)
    with LocalRunner(
        tmp_path, timeout_s=120, repeat=1, min_repeat_ms=1, settings=settings
    ) as runner:
        t0 = time.monotonic()
        ok, burnt, after = runner.run([RunnerInput(p, doc) for p in (good, burner, good)])
        assert ok.status == TrialStatus.OK, ok.error
        assert burnt.status == TrialStatus.RUN_ERROR, burnt
        assert "SIGXCPU" in burnt.error and "CPU-time limit" in burnt.error
        assert after.status == TrialStatus.OK, after.error
        # Killed by its CPU budget, long before the wall-clock timeout.
        assert time.monotonic() - t0 < 60


def test_runaway_allocation_fails_as_data_and_next_works(tmp_path: Path) -> None:
    # 2 GiB of float32 input (within the wire limits); its float64 random fill needs 4 GiB.
    big_shape = (16384, 32768)
    a = te.placeholder(big_shape, "float32", name="A")
    big = serialize([a, te.compute(big_shape, lambda i, j: a[i, j] + 1.0, name="B")], "big")
    doc = _doubling_doc()
    good = _good_artifact(tmp_path / "good.so")
    with LocalRunner(
        tmp_path, timeout_s=60, repeat=1, min_repeat_ms=1, rlimit_as_bytes=2 * GiB
    ) as runner:
        pid_before = _describe_runner(runner)
        huge, after = runner.run(
            [RunnerInput(str(tmp_path / "never-built.so"), big), RunnerInput(good, doc)]
        )
        # The reference could not be computed here: the environment's fault (retried
        # elsewhere up to the cap), not the kernel's.
        assert huge.status == TrialStatus.ENV_ERROR, huge
        assert "out of memory" in huge.error and "2048 MiB" in huge.error, huge.error
        assert after.status == TrialStatus.OK, after.error
        assert _describe_runner(runner) != pid_before  # the sandbox was replaced


def test_oversized_file_fails_as_data_and_leaves_nothing(tmp_path: Path) -> None:
    shape = (1024, 1024)  # a 4 MiB reference output under a 1 MiB file-size limit
    a = te.placeholder(shape, "float32", name="A")
    wide = serialize([a, te.compute(shape, lambda i, j: a[i, j] * 2.0, name="B")], "wide")
    good = _good_artifact(tmp_path / "good.so")
    limits = SandboxLimits(as_bytes=None, cpu_s=None, fsize_bytes=1 << 20)
    with LocalRunner(tmp_path, repeat=1, min_repeat_ms=1, limits=limits) as runner:
        never_built = RunnerInput(str(tmp_path / "never-built.so"), wide)
        big, after = runner.run([never_built, RunnerInput(good, _doubling_doc())])
        assert big.status == TrialStatus.ENV_ERROR, big  # a reference failure
        assert "SIGXFSZ" in big.error and "file-size limit" in big.error, big.error
        assert after.status == TrialStatus.OK, after.error
    assert not list(tmp_path.glob("*.tmp*"))  # no partial .npy left in the work dir


def _describe_runner(runner: LocalRunner) -> int:
    reply = runner._call({"op": "limits"}, 120)
    assert reply["ok"], reply
    return int(reply["pid"])


# -- usable CPUs and memory ----------------------------------------------------------------
def _run_pinned(code: str) -> str:
    """Run ``code`` in a fresh interpreter allowed on one CPU only."""
    cpu = min(os.sched_getaffinity(0))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        check=True,
    )
    return proc.stdout.strip()


def test_builder_pool_follows_the_affinity_mask(tmp_path: Path) -> None:
    code = (
        "from autosched.tune.resources import usable_cpus\n"
        "from autosched.tune.builder import LocalBuilder\n"
        f"print(usable_cpus(), LocalBuilder({str(tmp_path)!r}).max_workers)\n"
    )
    assert _run_pinned(code) == "1 1"
    assert LocalBuilder(tmp_path).max_workers == resources.usable_cpus()
    assert resources.usable_cpus() <= len(os.sched_getaffinity(0))


def _fake_host(root: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    (root / "proc/meminfo").write_text("MemTotal:       16384000 kB\nMemFree: 1 kB\n")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_cgroup_v2_limits_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    root = _fake_host(
        tmp_path,
        "0::/jobs/worker\n",
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
        {
            "sys/fs/cgroup/jobs/worker/cpu.max": "max 100000\n",
            "sys/fs/cgroup/jobs/worker/memory.max": "3221225472\n",
            "sys/fs/cgroup/jobs/cpu.max": "100000 100000\n",  # the parent's quota: 1 CPU
            "sys/fs/cgroup/jobs/memory.max": "max\n",
        },
    )
    assert resources.usable_cpus(root) == 1
    assert resources.usable_memory_bytes(root) == 3 * GiB


def test_cgroup_v1_quota_and_memory_limit(tmp_path: Path) -> None:
    root = _fake_host(
        tmp_path,
        "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        "40 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:30 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
        {
            # Inside the container's namespace the mount's root is its own cgroup.
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "1073741824\n",
        },
    )
    assert resources.usable_cpus(root) == 1  # half a CPU still runs one process
    assert resources.usable_memory_bytes(root) == GiB


def test_no_cgroup_limits_means_the_host(tmp_path: Path) -> None:
    root = _fake_host(tmp_path, "0::/\n", "", {})
    assert resources.usable_cpus(root) == len(os.sched_getaffinity(0))
    assert resources.usable_memory_bytes(root) == 16384000 * 1024
    # And on this machine, detection gives something usable.
    assert resources.usable_memory_bytes() > 256 << 20
