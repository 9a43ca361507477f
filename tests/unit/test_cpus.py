"""available_cpus / resolve_workers: the affinity mask bounded by the cgroup CPU quota, over fake /proc and /sys
trees built in tmp_path (SPEC §3.9 ``workers = "auto"``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from a3s_gateway import cpus
from a3s_gateway.cpus import available_cpus, cgroup_cpu_limit, resolve_workers


def tree(root: Path, files: dict[str, str]) -> str:
    """Write ``files`` (paths relative to ``root``) and return ``root`` as the ``root`` argument."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


@pytest.fixture
def affinity(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The process may run on 8 CPUs unless a test says otherwise."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    return monkeypatch


V2_OWN_ROOT = {"proc/self/cgroup": "0::/\n"}


# ----------------------------------------------------------------------------------------------------------------
# cgroup v2
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("150000 100000\n", 2),  # 1.5 CPUs round up
    ("200000 100000\n", 2),
    ("100000 100000\n", 1),
    ("50000 100000\n", 1),  # half a CPU is still one worker
    ("100001 100000\n", 2),
    ("300000 50000\n", 6),  # another period
])
def test_v2_quota_rounds_up_to_whole_cpus(tmp_path: Path, affinity: pytest.MonkeyPatch, cpu_max: str,
                                         expected: int) -> None:
    root = tree(tmp_path, {**V2_OWN_ROOT, "sys/fs/cgroup/cpu.max": cpu_max})
    assert cgroup_cpu_limit(root) == expected
    assert available_cpus(root) == expected


def test_v2_max_is_no_limit(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path, {**V2_OWN_ROOT, "sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) is None
    assert available_cpus(root) == 8


def test_v2_a_parent_lower_than_the_own_cgroup_wins(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path, {
        "proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
        "sys/fs/cgroup/kubepods/cpu.max": "600000 100000\n",
        "sys/fs/cgroup/kubepods/pod1/cpu.max": "250000 100000\n",
        "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "max 100000\n",
    })
    assert available_cpus(root) == 3


def test_v2_the_own_cgroup_lower_than_its_parents_wins(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path, {
        "proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
        "sys/fs/cgroup/kubepods/pod1/cpu.max": "max 100000\n",
        "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "120000 100000\n",
        "sys/fs/cgroup/cpu.max": "400000 100000\n",
    })
    assert available_cpus(root) == 2


def test_v2_host_path_with_the_container_cgroup_mounted_at_the_root(tmp_path: Path,
                                                                    affinity: pytest.MonkeyPatch) -> None:
    # no cgroup namespace: /proc/self/cgroup names the host's path, /sys/fs/cgroup is the container's own cgroup
    root = tree(tmp_path, {"proc/self/cgroup": "0::/system.slice/docker-abc.scope\n",
                           "sys/fs/cgroup/cpu.max": "300000 100000\n"})
    assert available_cpus(root) == 3


# ----------------------------------------------------------------------------------------------------------------
# cgroup v1
# ----------------------------------------------------------------------------------------------------------------


def test_v1_quota_under_the_cpu_cpuacct_mount(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path, {
        "proc/self/cgroup": "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        # another controller's numbers are not the CPU quota
        "sys/fs/cgroup/memory/docker/abc/cpu.cfs_quota_us": "100000\n",
        "sys/fs/cgroup/memory/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_limit(root) == 3
    assert available_cpus(root) == 3


def test_v1_cpu_mounted_alone_and_a_lower_parent(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path, {
        "proc/self/cgroup": "2:cpuacct:/a/b\n1:cpu:/a/b\n0::/\n",
        "sys/fs/cgroup/cpu/a/b/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu/a/b/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu/a/cpu.cfs_quota_us": "150000\n",
        "sys/fs/cgroup/cpu/a/cpu.cfs_period_us": "100000\n",
    })
    assert available_cpus(root) == 2


def test_v1_minus_one_is_no_limit(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path, {
        "proc/self/cgroup": "3:cpu,cpuacct:/\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_limit(root) is None
    assert available_cpus(root) == 8


def test_v1_and_v2_both_present_the_lower_wins(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path, {
        "proc/self/cgroup": "4:cpu,cpuacct:/\n0::/\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "500000\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu.max": "400000 100000\n",
    })
    assert available_cpus(root) == 4


# ----------------------------------------------------------------------------------------------------------------
# nothing to read, or nonsense: no limit, never an exception
# ----------------------------------------------------------------------------------------------------------------


def test_no_cgroup_files(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    assert cgroup_cpu_limit(str(tmp_path)) is None
    assert available_cpus(str(tmp_path)) == 8
    root = tree(tmp_path, {"proc/self/cgroup": "0::/a\n4:cpu,cpuacct:/a\n"})
    assert available_cpus(root) == 8


def test_unreadable_proc_self_cgroup_still_reads_the_namespaced_root(tmp_path: Path,
                                                                     affinity: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path, {"sys/fs/cgroup/cpu.max": "300000 100000\n"})
    assert available_cpus(root) == 3


@pytest.mark.parametrize("cpu_max", [
    "", "\n", "max", "150000", "1.5 100000", "150000 100000 7", "abc 100000", "150000 abc", "0 100000",
    "-100000 100000", "100000 0", "100000 -1", "max max",
])
def test_malformed_cpu_max_is_no_limit(tmp_path: Path, affinity: pytest.MonkeyPatch, cpu_max: str) -> None:
    root = tree(tmp_path, {**V2_OWN_ROOT, "sys/fs/cgroup/cpu.max": cpu_max})
    assert cgroup_cpu_limit(root) is None
    assert available_cpus(root) == 8


@pytest.mark.parametrize(("quota", "period"), [
    ("", "100000"), ("x", "100000"), ("0", "100000"), ("100000", ""), ("100000", "0"), ("100000", "-5"),
    ("--1", "100000"), ("2.5", "100000"),
])
def test_malformed_v1_files_are_no_limit(tmp_path: Path, affinity: pytest.MonkeyPatch, quota: str,
                                         period: str) -> None:
    root = tree(tmp_path, {
        "proc/self/cgroup": "4:cpu,cpuacct:/\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": quota,
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": period,
    })
    assert cgroup_cpu_limit(root) is None
    assert available_cpus(root) == 8


def test_a_quota_file_missing_its_period_is_no_limit(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path, {"proc/self/cgroup": "4:cpu,cpuacct:/\n",
                           "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "100000\n"})
    assert available_cpus(root) == 8


def test_binary_garbage_and_directories_are_no_limit(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_bytes(b"\xff\xfe0::/\x00\n")
    (tmp_path / "sys/fs/cgroup/cpu.max").mkdir(parents=True)  # a directory where a file should be
    assert available_cpus(str(tmp_path)) == 8
    (tmp_path / "proc/self/cgroup").write_text("garbage\n::\n0::\n\n")
    (tmp_path / "sys/fs/cgroup/cpu.max").rmdir()
    (tmp_path / "sys/fs/cgroup/cpu.max").write_bytes(b"\x80\x81 100000")
    assert available_cpus(str(tmp_path)) == 8


def test_a_path_cannot_climb_out_of_the_cgroup_tree(tmp_path: Path, affinity: pytest.MonkeyPatch) -> None:
    # ".." in a (corrupt) path is dropped: the walk stays under sys/fs/cgroup
    root = tree(tmp_path / "root", {"proc/self/cgroup": "0::/../../../outside\n", "sys/fs/cgroup/cgroup.procs": ""})
    tree(tmp_path, {"root/outside/cpu.max": "100000 100000\n", "root/sys/fs/outside/cpu.max": "100000 100000\n",
                    "root/sys/outside/cpu.max": "100000 100000\n"})
    assert available_cpus(root) == 8


# ----------------------------------------------------------------------------------------------------------------
# affinity against quota
# ----------------------------------------------------------------------------------------------------------------


def test_affinity_smaller_than_the_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5}, raising=False)
    root = tree(tmp_path, {**V2_OWN_ROOT, "sys/fs/cgroup/cpu.max": "400000 100000\n"})
    assert available_cpus(root) == 2


def test_quota_smaller_than_the_affinity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    root = tree(tmp_path, {**V2_OWN_ROOT, "sys/fs/cgroup/cpu.max": "150000 100000\n"})
    assert available_cpus(root) == 2


def test_without_sched_getaffinity_the_cpu_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert available_cpus(str(tmp_path)) == 6
    root = tree(tmp_path, {**V2_OWN_ROOT, "sys/fs/cgroup/cpu.max": "400000 100000\n"})
    assert available_cpus(root) == 4
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable": still one
    assert available_cpus(root) == 1


def test_an_affinity_error_falls_back_to_the_cpu_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(pid: int) -> set[int]:
        raise OSError("denied")

    monkeypatch.setattr(os, "sched_getaffinity", denied, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert available_cpus(str(tmp_path)) == 3


def test_this_machine() -> None:
    """On the real /proc and /sys: at least one CPU, never more than the affinity allows."""
    count = available_cpus()
    assert count >= 1
    if hasattr(os, "sched_getaffinity"):
        assert count <= len(os.sched_getaffinity(0))


# ----------------------------------------------------------------------------------------------------------------
# resolve_workers
# ----------------------------------------------------------------------------------------------------------------


def test_resolve_workers_auto_is_the_available_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def counted(root: str = "/") -> int:
        seen.append(root)
        return 5

    monkeypatch.setattr(cpus, "available_cpus", counted)
    assert resolve_workers("auto") == 5
    assert seen == ["/"]


def test_resolve_workers_auto_on_this_machine() -> None:
    assert resolve_workers("auto") == available_cpus()


@pytest.mark.parametrize("value", [1, 2, 64])
def test_resolve_workers_a_number_is_itself(value: int) -> None:
    assert resolve_workers(value) == value


@pytest.mark.parametrize("value", [0, -1, True, "AUTO", "2", "", "many"])
def test_resolve_workers_rejects_anything_else(value: int | str) -> None:
    with pytest.raises(ValueError, match=r'workers: expected an integer >= 1 or "auto", got '):
        resolve_workers(value)
