"""Pools: sets of workers of one class with their own settings.

A deployment with no pools declared has exactly one pool, "main", built from
the top-level settings. The arbiter manages a list of pools and assumes
nothing about how many there are or which classes they run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.config import Config
    from corral.heartbeat import Heartbeat
    from corral.plugins import WorkerSpec
    from corral.sockets import Listener


@dataclass
class Pool:
    name: str
    spec: WorkerSpec
    size: int
    cfg: Config
    app_uri: str
    listeners: list[Listener] = field(default_factory=list)
    #: The app imported in the arbiter when this pool preloads.
    preloaded_app: Any = None


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
    #: time.monotonic() when SIGABRT was sent for a missed heartbeat.
    aborted_at: float | None = None
    #: time.monotonic() when SIGTERM was sent for a graceful retirement.
    retired_at: float | None = None

    @property
    def worker_class(self) -> str:
        return self.pool.spec.name


def cpu_count() -> int:
    """CPUs this process may use (affinity-aware); the container quota comes later."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
