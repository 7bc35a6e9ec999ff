"""What this process may really use: CPUs and memory after affinity masks and cgroup limits.

``os.cpu_count()`` and MemTotal describe the host; a container or a ``taskset`` sees less.
The CPU count is the minimum of the affinity mask and the cgroup CPU quota (v2 ``cpu.max``,
v1 ``cpu.cfs_quota_us``); the memory is the minimum of MemTotal and the cgroup memory limit
(v2 ``memory.max``, v1 ``memory.limit_in_bytes``). Limits of ancestor cgroups count too.
Detection never fails: an unreadable file means "no limit from there".
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# Tests point this at a fake tree (proc/self/cgroup, proc/self/mountinfo, the cgroup files).
_ROOT = Path("/")
# cgroup v1 reports "no limit" as a huge page-aligned number rather than "max".
_UNLIMITED = 1 << 60


def _cgroup_dirs(controller: str, root: Path = _ROOT) -> list[Path]:
    """This process's cgroup directory for ``controller`` and its ancestors, innermost first.

    ``controller`` is a v1 controller name ("cpu", "memory") or "" for the v2 hierarchy.
    """
    try:
        memberships = (root / "proc/self/cgroup").read_text().splitlines()
        mounts = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    rel = None
    for line in memberships:
        hid, controllers, path = [*line.split(":", 2), "", ""][:3]
        v2 = hid == "0" and controllers == ""
        if (v2 and controller == "") or (controller and controller in controllers.split(",")):
            rel = path
            break
    if rel is None:
        return []
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields, fs = left.split(), right.split()
        if len(fields) < 5 or not fs:
            continue
        mount_root, mount_point = fields[3], fields[4]
        if controller == "":
            if fs[0] != "cgroup2":
                continue
        elif fs[0] != "cgroup" or controller not in fs[-1].split(","):
            continue
        # Inside a cgroup namespace the mount's root is our own cgroup: strip it.
        inner = rel[len(mount_root) :] if mount_root != "/" and rel.startswith(mount_root) else rel
        base = root / mount_point.lstrip("/")
        here = base / inner.lstrip("/")
        if not here.is_dir():
            here = base  # the path names the host's hierarchy; the mount is ours
        dirs = [here]
        while here != base and base in here.parents:
            here = here.parent
            dirs.append(here)
        return dirs
    return []


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_cpu_quota(root: Path = _ROOT) -> float | None:
    """The tightest CPU quota (in CPUs) of the v2 or v1 hierarchy, or None."""
    quotas: list[float] = []
    for d in _cgroup_dirs("", root):
        text = _read(d / "cpu.max")  # "max 100000" or "150000 100000"
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
                quotas.append(int(quota) / int(period))
    for d in _cgroup_dirs("cpu", root):
        quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        # v1 says "no quota" with -1.
        if quota and period and quota.isdigit() and period.isdigit() and int(period) > 0:
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def usable_cpus(root: Path = _ROOT) -> int:
    """CPUs this process may run on: min(affinity mask, cgroup quota rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(root)
    if quota is not None:
        # A quota of 1.5 CPUs can keep two threads busy half the time: round up.
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _meminfo_total(root: Path = _ROOT) -> int | None:
    text = _read(root / "proc/meminfo")
    for line in (text or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024  # kB
    return None


def usable_memory_bytes(root: Path = _ROOT) -> int:
    """Memory this process's cgroup may use: min(MemTotal, memory.max of the cgroup path)."""
    limits: list[int] = []
    total = _meminfo_total(root)
    if total:
        limits.append(total)
    for d in _cgroup_dirs("", root):
        text = _read(d / "memory.max")
        if text and text.isdigit():
            limits.append(int(text))
    for d in _cgroup_dirs("memory", root):
        text = _read(d / "memory.limit_in_bytes")
        if text and text.isdigit() and int(text) < _UNLIMITED:
            limits.append(int(text))
    return min(limits) if limits else 8 << 30
