"""``-w auto`` honours the cgroup CPU quota (containers, systemd CPUQuota=), with faked cgroup files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.pool import cgroup_cpu_quota, cpu_count


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the process may run on 8 CPUs."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def v2(root: Path, own: str, limits: dict[str, str]) -> Path:
    """A cgroup v2 tree; ``limits`` maps a cgroup path ("" is the root) to its cpu.max.

    :return: the fake /proc/self/cgroup naming ``own`` as our cgroup.
    """
    write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    for rel, value in limits.items():
        write(root / rel / "cpu.max", value + "\n")
    proc = root.parent / "proc-self-cgroup"
    write(proc, f"0::{own}\n")
    return proc


@pytest.mark.parametrize("cpu_max,expected", [
    ("200000 100000", 2),   # docker --cpus 2
    ("150000 100000", 2),   # 1.5 CPUs: ceil, the fraction is used by one more worker
    ("10000 100000", 1),    # 0.1 CPU: still one worker
    ("1600000 100000", 8),  # more quota than CPUs: the affinity caps it
    ("max 100000", 8),      # no limit
    ("garbage", 8),         # unreadable: no limit
])
def test_cgroup_v2_container(tmp_path: Path, affinity: None, cpu_max: str, expected: int) -> None:
    # In a container with its own cgroup namespace, its cgroup is the mount's root.
    root = tmp_path / "cgroup"
    proc = v2(root, "/", {"": cpu_max})
    assert cpu_count(root, proc) == expected


def test_cgroup_v2_nested_service_takes_the_tightest_ancestor(tmp_path: Path, affinity: None) -> None:
    # systemd CPUQuota= sets cpu.max on the service's own cgroup; a slice above may be tighter.
    root = tmp_path / "cgroup"
    proc = v2(root, "/system.slice/corral.service", {"system.slice/corral.service": "300000 100000"})
    assert cgroup_cpu_quota(root, proc) == 3.0
    assert cpu_count(root, proc) == 3
    write(root / "system.slice" / "cpu.max", "100000 100000\n")
    assert cpu_count(root, proc) == 1


def test_cgroup_v2_own_path_not_mounted_falls_back_to_the_root(tmp_path: Path, affinity: None) -> None:
    root = tmp_path / "cgroup"
    proc = v2(root, "/kubepods/burstable/pod1/abc", {"": "400000 100000"})
    assert cpu_count(root, proc) == 4


@pytest.mark.parametrize("controllers", ["cpu,cpuacct", "cpu"])
def test_cgroup_v1(tmp_path: Path, affinity: None, controllers: str) -> None:
    root = tmp_path / "cgroup"
    ctl = root / controllers
    write(ctl / "cpu.cfs_quota_us", "300000\n")
    write(ctl / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "cgroup-file"
    # docker on cgroup v1 without a cgroup namespace: our path is the host's,
    # and the container's cgroup is mounted as the controller's root.
    write(proc, f"5:memory:/docker/abc\n4:{controllers}:/docker/abc\n0::/\n")
    assert cgroup_cpu_quota(root, proc) == 3.0
    assert cpu_count(root, proc) == 3
    write(ctl / "cpu.cfs_quota_us", "-1\n")  # unlimited
    assert cgroup_cpu_quota(root, proc) is None
    assert cpu_count(root, proc) == 8


def test_no_cgroup_files_means_no_limit(tmp_path: Path, affinity: None) -> None:
    assert cgroup_cpu_quota(tmp_path / "nothing", tmp_path / "no-proc-file") is None
    assert cpu_count(tmp_path / "nothing", tmp_path / "no-proc-file") == 8


def test_this_machine_gives_a_sane_count() -> None:
    n = cpu_count()
    assert 1 <= n <= (os.cpu_count() or 1)
