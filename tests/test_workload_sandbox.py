"""The template sandbox: the same answers as in-process, refusals as WireFormatErrors, and a
child that overruns its time or dies is a 422 for that request only (the pool recovers)."""

from __future__ import annotations

import copy
import signal
import threading
import time
from typing import Any

import psutil
import pytest

from autosched.errors import WireFormatError
from autosched.hardware import HardwareParams, detect_hardware
from autosched.service import workload_sandbox as ws
from autosched.wire import Workload
from tests.api_support import matmul
from tests.kernels import chain

HW = detect_hardware()
OTHER_HW = HardwareParams(4, 256, 32768, 524288, 8388608, "haswell")
FEW = (2, 4, 8, 16, 32, 64)  # core counts: distinct machines


def sandbox_children() -> list[psutil.Process]:
    """This process's live template-sandbox children."""
    found = []
    for p in psutil.Process().children():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and ws.HANDLER in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # gone (or a zombie) between listing and looking
            pass
    return found


def _busiest_child(window_s: float = 0.5, timeout_s: float = 20.0) -> psutil.Process:
    """The sandbox child that is building: the one that used most of ``window_s`` in CPU
    (waited for, since the request may not have reached a child yet)."""
    ws.pool().warm()  # the whole pool, also when this test runs alone
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = sandbox_children()
        before = {c.pid: sum(c.cpu_times()[:2]) for c in children}
        time.sleep(window_s)
        used = {c.pid: sum(c.cpu_times()[:2]) - before[c.pid] for c in children}
        busiest = max(children, key=lambda c: used[c.pid])
        if used[busiest.pid] > window_s / 4:
            return busiest
    raise AssertionError("no template sandbox child got busy")


def _wait_until_idle(timeout_s: float = 60.0) -> None:
    """Every child of the pool started and quiet: a child still starting up (the previous
    test killed one, and the pool restarts it in the background) would otherwise look like
    the busiest one."""
    ws.pool().warm()  # the whole pool, also when this test runs alone
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = sandbox_children()
        try:
            before = {c.pid: sum(c.cpu_times()[:2]) for c in children}
            time.sleep(0.3)
            used = [sum(c.cpu_times()[:2]) - before[c.pid] for c in children]
        except psutil.Error:  # one went away while we looked: look again
            continue
        if len(children) == ws.POOL_SIZE and max(used) < 0.02:
            return
    raise AssertionError("the template sandbox pool did not settle")


def test_sandbox_answers_what_the_library_computes_in_process():
    doc, _ = matmul()
    facts = ws.describe(doc, [HW, OTHER_HW], trace=True)
    local = ws.describe_workload(Workload.from_json(doc), [HW, OTHER_HW], trace=True)
    assert facts == local
    assert facts.key == Workload.from_json(doc).key
    assert [t.target_key for t in facts.targets] == [HW.target_key, OTHER_HW.target_key]
    assert facts.targets[0].static_trace
    built = facts.targets[1]
    trace, version = ws.static_trace(
        facts.wire, built.hardware, built.template, built.static_config
    )
    assert trace == built.static_trace and version == facts.tvm_version


def test_refusals_come_back_with_message_and_path():
    doc, _ = matmul()
    bad = copy.deepcopy(doc)
    bad["stages"][0]["body"]["source"]["a"]["a"]["tensor"] = "nope"
    with pytest.raises(WireFormatError) as refused:
        ws.describe(bad, [HW])  # the child validates again: it never trusts its parent
    assert refused.value.path.startswith("stages[0].body") and "nope" in refused.value.message
    doc_, _ = matmul()
    facts = ws.describe(doc_, [HW])
    with pytest.raises(WireFormatError, match="could not build"):
        ws.static_trace(facts.wire, HW.to_json(), facts.targets[0].template, {"stages": {}})


def test_overlong_declaration_is_killed_and_the_pool_recovers():
    slow = chain(200)  # ~0.5 s of analysis here, ten times the limit
    start = time.monotonic()
    with pytest.raises(WireFormatError, match=r"longer than template_timeout_s=0.05 s"):
        ws.describe(slow, [HW], timeout_s=0.05)
    assert time.monotonic() - start < 3.0
    doc, _ = matmul()
    assert ws.describe(doc, [HW]).key == Workload.from_json(doc).key


def test_crashed_child_is_a_refusal_and_is_replaced():
    doc, _ = matmul()
    ws.describe(doc, [HW])  # children started
    _wait_until_idle()
    outcome: list[BaseException | None] = []

    # A few seconds of work to kill it in: the static schedule and trace of a long chain
    # for several machines (each ~0.35 s here).
    machines = [HW] + [HardwareParams(c, 256, 32768, 524288, 8388608, "haswell") for c in FEW]

    def slow_call() -> None:
        try:
            ws.describe(chain(250), machines, trace=True, timeout_s=60)  # seconds
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=slow_call)
    thread.start()
    _busiest_child().send_signal(signal.SIGSEGV)  # what a segfault in TVM does to it
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], WireFormatError)
    assert "TVM crashed on this declaration" in str(outcome[0])
    assert ws.describe(doc, [HW]).key == Workload.from_json(doc).key


def test_concurrent_calls_share_a_small_pool():
    docs = [matmul()[0] for _ in range(6)]
    keys: list[str] = []
    lock = threading.Lock()

    def one(doc: dict[str, Any]) -> None:
        key = ws.describe(doc, [HW]).key
        with lock:
            keys.append(key)

    threads = [threading.Thread(target=one, args=(d,)) for d in docs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(keys) == sorted(Workload.from_json(d).key for d in docs)
    assert ws.pool() is ws.pool()
    assert 1 <= len(sandbox_children()) <= ws.POOL_SIZE
