"""The gthread worker: an I/O loop and a pool of ``--threads`` threads per process.

How a worker runs, in its own process:

1. The I/O loop (:mod:`corral_gthread.loop`, in the main thread) accepts
   connections and reads request heads without blocking. Idle keep-alive
   connections and slow clients wait there, under ``--keep-alive`` and
   ``--header-timeout``; they hold no thread.
2. Once a head is complete, the connection goes to a pool thread, which
   runs the request with corral's shared HttpConnection: it reads the body
   and writes the response with blocking socket calls, then serves any
   pipelined request already received, then hands the connection back to
   the loop (keep-alive) or closes it.
3. ``--worker-connections`` caps the connections a worker holds, idle or
   not; at the cap the loop stops accepting, and new connections wait in
   the kernel's listen queue for this or another worker. So do they while
   the worker has twice ``--threads`` requests in hand, so that they go to
   a worker with a thread free (see ``IOLoop.saturate``).

The heartbeat is beaten by the loop, through a
:class:`~corral.workers.watchdog.RequestWatchdog`: it keeps beating while
every thread is busy, and stops (so the arbiter logs every stack, kills and
replaces the worker) as soon as one request has run longer than
``--timeout``. A thread stuck for good would otherwise shrink the pool
unnoticed.

Stopping (TERM, HUP, max-requests, the parent gone): see
:mod:`corral_gthread.loop`; the loop returns within ``--graceful-timeout``
and the process exits, taking any thread still running with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import TYPE_CHECKING

from corral.http.parser import ClientDisconnected
from corral.workers.base import Worker
from corral.workers.watchdog import RequestWatchdog
from corral_gthread.loop import IOLoop

if TYPE_CHECKING:
    from corral_gthread.connection import PooledConnection


class ThreadWorker(Worker):
    multithread = True

    def run(self) -> None:
        self.watchdog = RequestWatchdog(self.heartbeat, self.cfg.timeout, self.log)
        threads = RequestThreads(self.cfg.threads)
        self.loop = IOLoop(self, threads.submit, self.watchdog)
        threads.start(self.serve_connection)
        try:
            self.loop.run()
        finally:
            threads.stop()

    def notify(self) -> None:
        """Do nothing: only the loop beats the heartbeat (through the watchdog).

        Pool threads call this while they read request bodies. If they could
        beat, a worker whose loop had died would look alive while it no
        longer accepts a single connection.
        """

    def serve_connection(self, conn: PooledConnection) -> None:
        """In a pool thread: run the connection's requests, then give it back to the loop."""
        watchdog = self.watchdog if self.watchdog.timeout else None
        try:
            keep = conn.run_requests(watchdog)
            if keep and conn.sock.gettimeout() != 0.0:
                # The loop reads it without blocking; done here, off the loop's
                # thread, and only when needed (sendfile leaves it blocking):
                # setblocking is a system call, and each one hands the GIL around.
                conn.sock.setblocking(False)
        except (ClientDisconnected, OSError):
            keep = False
        except Exception:
            self.log.exception("Error serving a connection")
            keep = False
        self.loop.give_back(conn, keep)


class RequestThreads:
    """A fixed set of threads taking connections from one queue.

    Lighter than concurrent.futures: no Future per request, and the queue
    is the C-implemented SimpleQueue.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._queue: SimpleQueue[PooledConnection | None] = SimpleQueue()
        #: Queue a connection for the next free thread; never blocks.
        self.submit: Callable[[PooledConnection], None] = self._queue.put
        self._threads: list[threading.Thread] = []

    def start(self, serve: Callable[[PooledConnection], None]) -> None:
        for i in range(self.count):
            # Daemon threads: a request still running when the graceful
            # timeout is over must not keep the process alive.
            t = threading.Thread(target=self._work, args=(serve,), name=f"corral-request-{i}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Let idle threads end; busy ones end with the process."""
        for _ in self._threads:
            self._queue.put(None)

    def _work(self, serve: Callable[[PooledConnection], None]) -> None:
        get = self._queue.get
        while (conn := get()) is not None:
            serve(conn)
