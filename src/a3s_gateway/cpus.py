"""How many CPUs this process may use: what ``workers = "auto"`` means (SPEC §3.9).

The smaller of the CPUs the scheduler lets the process run on (its affinity mask, which a cpuset narrows) and the
CPU quota of its cgroup rounded up to whole CPUs (a container's ``resources.limits.cpu``, ``docker run --cpus``): a
container limited to 1.5 CPUs on a 64-core host gets 2 workers, not 64. cgroup v2 (``cpu.max``) and v1
(``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) are both read, along the process's own cgroup and each of its
ancestors (a parent's quota bounds its children). A file that is missing, unreadable or malformed means "no limit":
counting CPUs never fails. Standard library only (base layer).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

__all__ = ["AUTO", "available_cpus", "cgroup_cpu_limit", "resolve_workers"]

AUTO: Final = "auto"


def available_cpus(root: str = "/") -> int:
    """CPUs available to the process, at least 1: its affinity bounded by its cgroup CPU quota.

    ``root`` is where ``/proc`` and ``/sys`` are looked for (tests build fake trees)."""
    cpus = _affinity_cpus()
    limit = cgroup_cpu_limit(root)
    return cpus if limit is None else min(cpus, limit)


def resolve_workers(value: int | str) -> int:
    """The number of worker processes for a ``workers`` value: ``"auto"`` is :func:`available_cpus`."""
    if value == AUTO:
        return available_cpus()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'workers: expected an integer >= 1 or "auto", got {value!r}')
    return value


def cgroup_cpu_limit(root: str = "/") -> int | None:
    """The smallest CPU quota, in whole CPUs rounded up, set on the process's cgroup or an ancestor (cgroup v2 and
    v1); None when there is none or none can be read."""
    base = os.path.join(root, "sys", "fs", "cgroup")
    limits: list[int | None] = []
    for controllers, path in _own_cgroups(root):
        if controllers == "":
            limits.extend(_v2_limit(directory) for directory in _up_from(base, path))
        elif "cpu" in controllers.split(","):
            mount = _v1_mount(base, controllers)
            if mount is not None:
                limits.extend(_v1_limit(directory) for directory in _up_from(mount, path))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _affinity_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def _own_cgroups(root: str) -> list[tuple[str, str]]:
    """``(controllers, path)`` per line of /proc/self/cgroup (``""`` controllers: the v2 hierarchy). Unreadable:
    the v2 root alone, which is the container's own cgroup under a cgroup namespace."""
    text = _read(os.path.join(root, "proc", "self", "cgroup"))
    if text is None:
        return [("", "/")]
    entries: list[tuple[str, str]] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            entries.append((fields[1], fields[2]))
    return entries


def _up_from(base: str, path: str) -> Iterator[str]:
    """``base/path``, then each of its parents up to ``base`` itself. Without a cgroup namespace the path is the
    host's while ``base`` may already be the container's cgroup: the walk still ends there."""
    parts = [p for p in path.split("/") if p not in ("", ".", "..")]
    for depth in range(len(parts), -1, -1):
        yield os.path.join(base, *parts[:depth])


def _v1_mount(base: str, controllers: str) -> str | None:
    """Where the v1 hierarchy holding the cpu controller is mounted (``cpu,cpuacct``, or ``cpu`` alone)."""
    for name in (controllers, "cpu,cpuacct", "cpuacct,cpu", "cpu"):
        directory = os.path.join(base, name)
        if os.path.isdir(directory):
            return directory
    return None


def _v2_limit(directory: str) -> int | None:
    """Whole CPUs of a ``cpu.max`` ("$QUOTA $PERIOD", or "max $PERIOD" for none)."""
    text = _read(os.path.join(directory, "cpu.max"))
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _whole_cpus(_integer(fields[0]), _integer(fields[1]))


def _v1_limit(directory: str) -> int | None:
    """Whole CPUs of ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (a quota of -1: none)."""
    quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))
    period = _read(os.path.join(directory, "cpu.cfs_period_us"))
    if quota is None or period is None:
        return None
    return _whole_cpus(_integer(quota), _integer(period))


def _whole_cpus(quota: int | None, period: int | None) -> int | None:
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    return max(1, -(-quota // period))


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, ValueError):  # missing, unreadable, not text
        return None
