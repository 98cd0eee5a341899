"""Registers the gthread worker class; importing this module imports no worker code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.api import WorkerSpec, hookimpl

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
    if config.worker_class == "sync" and config.threads > 1:
        config.set("worker_class", "gthread", "threads > 1 with sync (as gunicorn)")
        config.warnings.append(_switched("", config.threads))
    # The same rule for every pool, on its effective settings: its own
    # overrides over the top-level ones (which may just have switched).
    for name, overrides in (config.values.get("pools") or {}).items():
        pool = config.derive(overrides, f"pool {name}")
        if pool.worker_class == "sync" and pool.threads > 1:
            overrides.pop("worker-class", None)  # the TOML spelling
            overrides["worker_class"] = "gthread"
            config.warnings.append(_switched(f"pool {name}: ", pool.threads))


def _switched(where: str, threads: int) -> str:
    return (f"{where}--threads {threads} with worker class 'sync': running 'gthread' instead, "
            "as gunicorn does (set the worker class to gthread to make this explicit)")
