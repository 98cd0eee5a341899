"""Registers the gthread worker class; importing this module imports no worker code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.api import ConfigError, WorkerSpec, hookimpl

if TYPE_CHECKING:
    from corral.api import Config

CORRAL_PLUGIN_API = 2


@hookimpl
def corral_register_workers() -> list[WorkerSpec]:
    return [
        WorkerSpec(
            name="gthread",
            path="corral_gthread.worker:ThreadWorker",
            description="an I/O loop and --threads request threads per process; keep-alive",
            keepalive=True,
            concurrency="threads",
            monkey_patches=False,
            # Plain threads started after fork: an app imported before fork is fine.
            preload_safe=True,
            # The selector loop hands each new TLS connection to a pool thread
            # for its handshake (within --ssl-handshake-timeout), never the loop.
            tls=True,
            # Imported by the arbiter before fork, shared by every worker
            # (threading is imported; no thread starts before the worker runs).
            shared_modules=("corral_gthread.worker",),
        )
    ]


@hookimpl
def corral_configure(config: Config) -> None:
    # gunicorn runs its gthread worker when asked for sync with threads > 1;
    # deployments moving over keep the concurrency they asked for rather
    # than silently losing it (or failing to start).
    # Only for what runs the deployment's class: no pools, or a pool that names none.
    pools = config.values.get("pools") or {}
    inherits = not pools or any("worker_class" not in o and "worker-class" not in o for o in pools.values())
    if config.worker_class == "sync" and config.threads > 1 and inherits:
        config.set("worker_class", "gthread", "threads > 1 with sync (as gunicorn)")
        config.warnings.append(_switched("", config.threads))
    # A pool's class is never changed: a pool that names sync runs sync. A
    # deployment-wide --threads applies to the pools whose class has threads
    # (sync runs one request at a time, wsgi.multithread false); threads set
    # on a sync pool itself would do nothing, which is refused, not ignored.
    for name, overrides in pools.items():
        own_class = overrides.get("worker_class", overrides.get("worker-class"))
        own_threads = overrides.get("threads")
        if own_class == "sync" and own_threads is not None and int(own_threads) > 1:
            raise ConfigError(f"pool {name}: worker class 'sync' runs one request at a time, so "
                              f"threads = {own_threads} would do nothing: name gthread for this "
                              "pool, or drop its threads")


def _switched(where: str, threads: int) -> str:
    return (f"{where}--threads {threads} with worker class 'sync': running 'gthread' instead, "
            "as gunicorn does (set the worker class to gthread to make this explicit)")
