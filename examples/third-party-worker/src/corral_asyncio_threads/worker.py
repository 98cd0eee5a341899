"""The asyncio-threads worker: connections on an asyncio loop, WSGI apps in threads.

One asyncio event loop per worker process accepts connections and reads
every request head with corral's parser, so an idle keep-alive client or a
slow sender costs a few kilobytes and no thread. A request whose head is
complete is handed to a bounded thread pool, where the WSGI app runs through
corral's own request code (environ, wsgi.input, start_response, the file
wrapper, hooks, access log); the response goes back through the loop.

Everything but the thread pool is core's: the loop, accepting up to
``--worker-connections``, the heartbeat and the graceful stop come from
:class:`corral.workers.asyncio_worker.AsyncioWorker` (the base of corral's
own tornado worker), the request loop on each connection from
:mod:`corral.workers.asyncio_connection`. This module only says how a
request is answered, by overriding ``make_responder``.

What it adds: load shedding. With ``--asyncio-queue-timeout SECONDS`` a
request that has waited that long for a free thread is answered 503 and
its connection closed, so under overload clients learn at once instead of
timing out behind a queue that only grows.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Final

from corral.api import (
    AsyncHttpConnection,
    AsyncioWorker,
    HTTPError,
    RequestWatchdog,
    Responder,
    WsgiThreadResponder,
)

if TYPE_CHECKING:
    from corral.api import RequestHead, Worker

#: Threads when --threads is left at 1: one thread would make every request
#: wait for the one before it behind a loop that holds a thousand
#: connections; ten let slow requests (I/O waits, upstream calls) overlap
#: while CPU-bound apps are bounded by the GIL anyway.
DEFAULT_THREADS: Final = 10


class ServiceUnavailable(HTTPError):
    status, reason = 503, "Service Unavailable"


class BoundedThreadResponder(WsgiThreadResponder):
    """Runs each request's WSGI app in a thread, waiting at most ``queue_timeout`` for one.

    A request takes a slot before it is handed to the pool, so the pool's
    own queue stays empty and the wait is measured here, on the loop.
    """

    def __init__(self, worker: Worker, executor: Executor, watchdog: RequestWatchdog,
                 threads: int, queue_timeout: float) -> None:
        super().__init__(worker, executor, watchdog)
        self.free_threads = asyncio.Semaphore(threads)
        self.queue_timeout = queue_timeout

    async def handle(self, conn: AsyncHttpConnection, head: RequestHead) -> bool:
        try:
            await asyncio.wait_for(self.free_threads.acquire(), self.queue_timeout or None)
        except TimeoutError:
            # The app never saw the request: answer for it and close, since
            # its body (if any) was not read. Not counted for --max-requests.
            conn.send_error(ServiceUnavailable(
                f"{head.method} {head.target} waited {self.queue_timeout} s for a free thread"))
            return False
        try:
            return await super().handle(conn, head)
        finally:
            self.free_threads.release()


class AsyncioThreadsWorker(AsyncioWorker):
    def make_responder(self) -> Responder:
        threads = self.cfg.threads if self.cfg.threads > 1 else DEFAULT_THREADS
        # AsyncioWorker shuts the executor down when the worker stops, and
        # its heartbeat asks the watchdog, so that a request stuck in its
        # thread past --timeout gets the worker replaced.
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="corral-asyncio")
        self.watchdog = RequestWatchdog(self.heartbeat, self.cfg.timeout, self.log)
        # getattr: a pool may be configured from settings collected without
        # this plugin (a class given by path); then there is no shedding.
        queue_timeout = getattr(self.cfg, "asyncio_queue_timeout", 0.0)
        return BoundedThreadResponder(self, self.executor, self.watchdog, threads, queue_timeout)
