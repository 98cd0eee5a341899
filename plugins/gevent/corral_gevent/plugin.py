"""Registers the gevent worker class.

This module must not import gevent, directly or through corral_gevent.worker:
the arbiter and ``corral plugins`` import every plugin's registration module,
and gevent in the arbiter would be imported by (and could be patched into)
processes that never run a gevent pool.
"""

from __future__ import annotations

from corral.api import WorkerSpec, hookimpl

CORRAL_PLUGIN_API = 2


@hookimpl
def corral_register_workers() -> list[WorkerSpec]:
    return [
        WorkerSpec(
            name="gevent",
            path="corral_gevent.worker:GeventWorker",
            description="greenlets on gevent: up to --worker-connections connections per process",
            keepalive=True,
            concurrency="greenlets",
            monkey_patches=True,
            # The standard library is patched in the worker after fork; an app
            # imported in the arbiter before that would hold unpatched modules.
            preload_safe=False,
            # Serves through HttpConnection.serve(), which handshakes per connection.
            tls=True,
            # Imported by the arbiter before fork and shared by every worker:
            # corral's connection code, and the stdlib modules patch_all()
            # imports to patch them (ssl alone is ~4 MiB private per process;
            # shared, an idle worker's PSS fell 18.1 -> 15.5 MiB). Importing
            # them unpatched is safe: gevent patches the module attributes,
            # and warns only if another module grabbed ssl.SSLContext first.
            # Never gevent or greenlet (patching happens after fork).
            shared_modules=("corral.workers.connection", "ssl", "subprocess"),
        )
    ]
