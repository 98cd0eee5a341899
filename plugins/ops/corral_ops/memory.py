"""Memory-based recycling: a worker whose memory stays over a limit is replaced, gracefully.

``--max-worker-memory 512M`` (per pool, as any worker setting): the arbiter
samples each serving worker's memory every ``max_worker_memory_interval``
seconds, RSS by default or PSS/USS (``max_worker_memory_metric``); a worker
over the limit on ``max_worker_memory_samples`` samples in a row is
recycled as ``--max-requests`` recycles: its replacement is started and
booted first, then the old worker retires with the graceful policy
(corral.serve.retirement), so no request is lost and the pool never runs
short. One sample over the limit is a peak; several are a leak.

Each recycle is logged and counted (``corral_worker_recycles_total`` with
``reason="memory"``). gunicorn has no equivalent; granian's
``--workers-max-rss`` and uWSGI's ``reload-on-rss`` do the same job.
"""

from __future__ import annotations

import time
from typing import Any

from corral.api import Setting, SettingsRegistry, hookimpl
from corral_ops.memory_info import memory
from corral_ops.values import count, interval, memory_kind, memory_size

CORRAL_PLUGIN_API = 2


@hookimpl
def corral_add_settings(settings: SettingsRegistry) -> None:
    section = "Memory recycling"
    settings.add(Setting(
        name="max_worker_memory", section=section, validator=memory_size, default=0,
        help="Replace a worker (gracefully, its successor ready first) whose memory stays above "
             "this: 512 (MiB), 512M, 1.5G (0: never).", flags=("--max-worker-memory",),
        metavar="SIZE", owner="memory",
    ))
    settings.add(Setting(
        name="max_worker_memory_metric", section=section, validator=memory_kind, default="rss",
        help="What max_worker_memory measures: rss (resident, shared pages included), pss "
             "(shared pages split among sharers) or uss (the worker's own pages).",
        flags=("--max-worker-memory-metric",), metavar="KIND", owner="memory",
    ))
    settings.add(Setting(
        name="max_worker_memory_samples", section=section, validator=count, default=3,
        help="Samples in a row over max_worker_memory before the worker is replaced.",
        flags=("--max-worker-memory-samples",), metavar="N", owner="memory",
    ))
    settings.add(Setting(
        name="max_worker_memory_interval", section=section, validator=interval, default=5.0,
        help="Seconds between memory samples of each worker.",
        flags=("--max-worker-memory-interval",), metavar="SECONDS", owner="memory",
    ))


class MemoryWatch:
    def __init__(self) -> None:
        #: pid -> (samples over the limit in a row, when it is sampled next)
        self.workers: dict[int, tuple[int, float]] = {}

    def tick(self, server: Any, now: float) -> None:
        seen = set()
        for handle in list(server.workers.values()):
            seen.add(handle.pid)
            cfg = handle.pool.cfg
            limit = cfg.max_worker_memory
            if not limit or not handle.booted or handle.retiring or handle.recycle:
                continue
            over, due = self.workers.get(handle.pid, (0, 0.0))
            if now < due:
                continue
            used = memory(handle.pid, cfg.max_worker_memory_metric)
            if used is None:
                continue
            over = over + 1 if used > limit else 0
            self.workers[handle.pid] = (over, now + cfg.max_worker_memory_interval)
            if over >= cfg.max_worker_memory_samples and server.recycle(handle, "memory"):
                server.log.warning(
                    "Worker %s (pool %s) uses %.1f MiB %s, over max_worker_memory (%.1f MiB) "
                    "for %s samples; replacing it", handle.pid, handle.pool.name, used / 2**20,
                    cfg.max_worker_memory_metric.upper(), limit / 2**20, over)
        for pid in [pid for pid in self.workers if pid not in seen]:
            del self.workers[pid]


_WATCHES: dict[int, MemoryWatch] = {}


@hookimpl
def corral_arbiter_tick(server: Any) -> None:
    watch = _WATCHES.get(id(server))
    if watch is None:
        watch = _WATCHES[id(server)] = MemoryWatch()
    watch.tick(server, time.monotonic())
