"""Registers the worker; imports no worker code, so listing plugins stays cheap."""

from corral.api import WorkerSpec, hookimpl

CORRAL_PLUGIN_API = 2


@hookimpl
def corral_register_workers() -> list[WorkerSpec]:
    return [WorkerSpec(
        name="minimal",
        path="corral_minimal.worker:LoopWorker",
        description="core's selector loop, one request at a time; keep-alive",
        keepalive=True, concurrency="process", monkey_patches=False, preload_safe=True,
    )]
