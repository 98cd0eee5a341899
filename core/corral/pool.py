"""Pools: sets of workers of one class with their own settings.

A deployment with no pools declared has exactly one pool, "main", built from
the top-level settings. The arbiter manages a list of pools and assumes
nothing about how many there are or which classes they run.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from corral.config import Config
    from corral.heartbeat import Heartbeat
    from corral.plugins import WorkerSpec
    from corral.sockets import Listener
    from corral.workers.balance import ConnectionShare


@dataclass
class Pool:
    name: str
    spec: WorkerSpec
    size: int
    cfg: Config
    app_uri: str
    listeners: list[Listener] = field(default_factory=list)
    #: The addresses this pool accepts on (its own binds or the deployment's).
    addresses: list[str] = field(default_factory=list)
    #: The app imported in the arbiter when this pool preloads.
    preloaded_app: Any = None
    #: Open-connection counts of the pool's workers, shared with them
    #: (corral.workers.balance); None for a pool made outside an arbiter.
    share: ConnectionShare | None = None


@dataclass
class WorkerHandle:
    """The arbiter's record of one worker process (also what arbiter hooks get)."""

    pid: int
    age: int
    pool: Pool
    heartbeat: Heartbeat
    generation: int
    booted: bool = False
    retiring: bool = False
    #: The worker asked to be replaced (max-requests): a replacement is
    #: started, and this one retires once the pool is at full strength without it.
    recycle: bool = False
    #: time.monotonic() when SIGABRT was sent for a missed heartbeat.
    aborted_at: float | None = None
    #: time.monotonic() when SIGTERM was sent for a graceful retirement.
    retired_at: float | None = None
    #: The worker's slot in ``pool.share``; None if it has none.
    slot: int | None = None
    #: The worker's slot in its pool's StatsTable (``Arbiter.stats[pool.name]``); None if uncounted.
    stats_slot: int | None = None

    @property
    def worker_class(self) -> str:
        return self.pool.spec.name


#: Where the cgroup filesystem is mounted (v2 unified, or the v1 controllers' parent).
CGROUP_ROOT: Final = "/sys/fs/cgroup"


def cpu_count(cgroup_root: str | Path = CGROUP_ROOT, proc_cgroup: str | Path = "/proc/self/cgroup") -> int:
    """CPUs this process may really use: what ``-w auto`` starts, one worker each.

    The CPU affinity (taskset, cpusets), lowered to the CFS quota of our cgroup
    when one is set (docker --cpus, Kubernetes CPU limits, systemd CPUQuota=):
    ``ceil(quota / period)``, at least 1, at most the affinity count. A quota
    of 1.5 CPUs gives 2 workers: the quota is shared by all of them, so a
    fractional CPU is better used by one more worker than left idle.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is None:
        return cpus
    return max(1, min(cpus, math.ceil(quota)))


def cgroup_cpu_quota(cgroup_root: str | Path = CGROUP_ROOT,
                     proc_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), or None if unlimited.

    Reads cgroup v2 ``cpu.max`` ("max 100000", "200000 100000") or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: unlimited), in our own
    cgroup (from ``proc_cgroup``) and every ancestor up to ``cgroup_root``:
    the tightest limit applies. In a container the cgroup namespace makes our
    cgroup the mount's root; without one (cgroup v1 docker) our path does not
    exist under the mount, and the mount's root, which is then ours, is read.
    Missing or unreadable files mean no limit.
    """
    root = Path(cgroup_root)
    v2 = (root / "cgroup.controllers").exists()
    base, rel = root, "/"
    try:
        for line in Path(proc_cgroup).read_text().splitlines():
            hid, controllers, path = line.split(":", 2)
            if v2 and hid == "0":
                rel = path
            elif not v2 and "cpu" in controllers.split(","):
                base, rel = root / controllers, path
    except (OSError, ValueError):
        pass
    if not v2 and not base.is_dir():
        base = root / "cpu"  # v1 mounts cpu,cpuacct with a "cpu" symlink
    quotas = []
    directory = base / rel.strip("/") if rel.strip("/") else base
    if not directory.is_dir():
        directory = base
    while True:
        quota = _read_quota(directory, v2)
        if quota is not None:
            quotas.append(quota)
        if directory == base or base not in directory.parents:
            break
        directory = directory.parent
    return min(quotas) if quotas else None


def _read_quota(directory: Path, v2: bool) -> float | None:
    try:
        if v2:
            quota_text, _, period_text = (directory / "cpu.max").read_text().strip().partition(" ")
            if quota_text == "max":
                return None
            quota, period = int(quota_text), int(period_text or 100000)
        else:
            quota = int((directory / "cpu.cfs_quota_us").read_text())
            period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:  # v1 says "no limit" with -1
        return None
    return quota / period


#: Settings a pool may override. Everything else applies to the whole deployment.
POOL_KEYS = frozenset({
    "worker_class", "workers", "threads", "worker_connections", "timeout", "graceful_timeout",
    "keepalive", "max_requests", "max_requests_jitter", "bind", "wsgi_app", "preload_app",
    "limit_request_line", "limit_request_fields", "limit_request_field_size", "limit_request_body",
    "header_timeout", "permit_obsolete_folding", "header_map", "forwarded_allow_ips",
    "secure_scheme_headers", "proxy_protocol", "proxy_allow_ips", "script_name",
    "worker_tmp_dir", "accesslog", "access_log_format", "reload",
})
_POOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


def parse_pool_flag(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:CLASS:COUNT[@BIND[,BIND...]]`` -> (name, overrides); ValueError explains the form."""
    form = "use NAME:CLASS:COUNT[@BIND,...], e.g. web:gthread:4@127.0.0.1:8001"
    spec, _, binds = text.partition("@")
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"{text!r}: {form}")
    name, worker_class, count = parts
    if not _POOL_NAME.fullmatch(name):
        raise ValueError(f"{text!r}: pool names are letters, digits, '-' and '_', starting with a letter")
    if not worker_class:
        raise ValueError(f"{text!r}: no worker class; {form}")
    overrides: dict[str, Any] = {"worker_class": worker_class, "workers": count}
    if binds:
        overrides["bind"] = [b for b in binds.split(",") if b]
    return name, overrides


def pools_setting(value: Any) -> dict[str, dict[str, Any]]:
    """Validator of the ``pools`` setting: a dict of name -> overrides, a list of
    dicts with a "name", or (command line) a list of ``--pool`` strings."""
    if value is None:
        return {}
    items = [value] if isinstance(value, str) else value
    pools: dict[str, dict[str, Any]] = {}
    if isinstance(items, dict):
        for name, overrides in items.items():
            if not isinstance(name, str) or not _POOL_NAME.fullmatch(name):
                raise ValueError(f"invalid pool name {name!r}")
            if not isinstance(overrides, dict):
                raise ValueError(f"pool {name!r}: expected a dict of settings")
            pools[name] = dict(overrides)
        return pools
    if not isinstance(items, list | tuple):
        raise ValueError("expected a dict of pool name to settings")
    for item in items:
        if isinstance(item, str):
            name, overrides = parse_pool_flag(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            overrides = dict(item)
            name = overrides.pop("name")
        else:
            raise ValueError(f"pool {item!r}: expected NAME:CLASS:COUNT[@BIND,...] or a dict with a name")
        if name in pools:
            raise ValueError(f"pool {name!r} is declared twice")
        pools[name] = overrides
    return pools
