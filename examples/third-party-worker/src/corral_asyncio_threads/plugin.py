"""Registers the worker class and its setting; imports no worker code.

corral imports this module (through the ``corral`` entry point) in every
process that needs the registry: ``corral plugins``, ``--check-config``,
the arbiter. It must stay cheap; the worker module is named by import path
and imported only in the worker processes that run it.
"""

from __future__ import annotations

from corral.api import Setting, SettingsRegistry, WorkerSpec, hookimpl, seconds

#: The corral plugin API this plugin was written for. corral refuses to load
#: a plugin whose number differs from its own ``corral.PLUGIN_API``, naming
#: both, rather than failing later in a worker.
CORRAL_PLUGIN_API = 2

WORKER_NAME = "asyncio-threads"


@hookimpl
def corral_register_workers() -> list[WorkerSpec]:
    return [
        WorkerSpec(
            name=WORKER_NAME,
            path="corral_asyncio_threads.worker:AsyncioThreadsWorker",
            description="asyncio event loop for connections, WSGI apps in a bounded thread pool; keep-alive",
            keepalive=True,
            concurrency="event-loop",
            monkey_patches=False,
            # The loop and the threads are created after fork: an app
            # imported in the arbiter (--preload) is fine.
            preload_safe=True,
        )
    ]


@hookimpl
def corral_add_settings(settings: SettingsRegistry) -> None:
    # Settings share one namespace with corral's and every plugin's: the
    # name carries the plugin's prefix so it cannot clash with a future one.
    settings.add(Setting(
        name="asyncio_queue_timeout",
        section="asyncio-threads worker",
        validator=seconds,
        default=0.0,
        help="With the asyncio-threads worker: answer 503 to a request that waited this long "
             "for a free thread, instead of queueing it further (0: wait as long as it takes).",
        flags=("--asyncio-queue-timeout",),
        metavar="SECONDS",
    ))
