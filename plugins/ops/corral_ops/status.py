"""What the arbiter knows, as plain data: for `corral ctl status` and the metrics.

Read from the arbiter's records (pools, worker handles, recycles) and the
pools' live counters (``server.stats``). Nothing here changes anything.
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from corral.api import Snapshot
from corral_ops.memory_info import memory

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def _version() -> str:
    try:
        return version("corral")
    except PackageNotFoundError:
        return "unknown"


def worker_snapshot(server: Any, handle: Any) -> Snapshot | None:
    table = server.stats.get(handle.pool.name)
    if table is None or handle.stats_slot is None:
        return None
    snap: Snapshot = table.read(handle.stats_slot)
    # The slot is the worker's once it wrote its pid there (it zeroes it first).
    return snap if snap.pid == handle.pid else None


def pool_totals(server: Any, name: str) -> Snapshot:
    """A pool's counters: its exited workers' and its live ones' together."""
    total = Snapshot()
    table = server.stats.get(name)
    if table is None:
        return total
    total.add(table.retired)
    for handle in server.workers.values():
        if handle.pool.name == name:
            snap = worker_snapshot(server, handle)
            if snap is not None:
                total.add(snap)
    return total


def _counters(snap: Snapshot | None) -> dict[str, Any]:
    if snap is None:
        return {"requests": None, "in_flight": None, "bytes_sent": None, "responses": None}
    return {
        "requests": snap.requests,
        "in_flight": snap.in_flight,
        "bytes_sent": snap.bytes,
        "responses": dict(zip(STATUS_CLASSES, snap.status, strict=True)),
    }


def worker_status(server: Any, handle: Any, now: float) -> dict[str, Any]:
    snap = worker_snapshot(server, handle)
    try:
        beat = round(now - handle.heartbeat.last_beat(), 3)
    except OSError:
        beat = None
    started = snap.started if snap is not None and snap.started else None
    return {
        "pid": handle.pid,
        "age": handle.age,
        "class": handle.pool.spec.name,
        "generation": handle.generation,
        "state": ("retiring" if handle.retiring else "recycling" if handle.recycle
                  else "serving" if handle.booted else "booting"),
        "started": started,
        "uptime": round(now - started, 3) if started else None,
        "last_heartbeat": beat,
        "rss": memory(handle.pid, "rss"),
        **_counters(snap),
    }


def pools_in_view(server: Any) -> list[Any]:
    """The pools of the running configuration, then any a reload removed whose workers remain."""
    pools = list(server.pools)
    names = {p.name for p in pools}
    for handle in server.workers.values():
        if handle.pool.name not in names:
            names.add(handle.pool.name)
            pools.append(handle.pool)
    return pools


def status(server: Any) -> dict[str, Any]:
    now = time.time()
    pools = []
    for pool in pools_in_view(server):
        workers = sorted((h for h in server.workers.values() if h.pool.name == pool.name),
                         key=lambda h: h.age)
        totals = pool_totals(server, pool.name)
        pools.append({
            "name": pool.name,
            "class": pool.spec.name,
            "app": pool.app_uri,
            "size": pool.size if pool in server.pools else 0,
            "listeners": [lst.name for lst in pool.listeners],
            "recycled": {reason: n for (name, reason), n in sorted(server.recycles.items())
                         if name == pool.name},
            **_counters(totals if pool.name in server.stats else None),
            "workers": [worker_status(server, h, now) for h in workers],
        })
    return {
        "arbiter": {
            "pid": server.pid,
            "version": _version(),
            "started": server.started_at,
            "uptime": round(now - server.started_at, 3),
            "generation": server.generation,
            "ready": server.ready,
            "stopping": server.stopping,
            "upgrading_to": server.reexec_pid or None,
        },
        "pools": pools,
    }


def listeners(server: Any) -> list[dict[str, Any]]:
    out = []
    for address, lst in server.listeners.items():
        out.append({
            "address": address,
            "name": lst.name,
            "fd": lst.fileno(),
            "pools": [p.name for p in server.pools if lst in p.listeners],
        })
    return out
