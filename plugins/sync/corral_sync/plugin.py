"""Registers the sync worker class; importing this module imports no worker code."""

from __future__ import annotations

from corral.api import WorkerSpec, hookimpl

CORRAL_PLUGIN_API = 2


@hookimpl
def corral_register_workers() -> list[WorkerSpec]:
    return [
        WorkerSpec(
            name="sync",
            path="corral_sync.worker:SyncWorker",
            description="one request at a time per process; closes each connection",
            keepalive=False,
            concurrency="process",
            monkey_patches=False,
            preload_safe=True,
            # Serves through HttpConnection.serve(), which handshakes per connection.
            tls=True,
            # Imported by the arbiter before fork, shared by every worker.
            shared_modules=("corral_sync.worker",),
        )
    ]
