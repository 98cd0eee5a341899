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

from corral.api import ClientDisconnected, RequestWatchdog, Worker
from corral_gthread.loop import IOLoop

if TYPE_CHECKING:
    from logging import Logger

    from corral_gthread.connection import PooledConnection


class ThreadWorker(Worker):
    multithread = True

    def run(self) -> None:
        self.watchdog = RequestWatchdog(self.heartbeat, self.cfg.timeout, self.log)
        threads = RequestThreads(self.cfg.threads, self.serve_connection, self.log)
        self.loop = IOLoop(self, threads.submit, self.watchdog)
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
        watchdog = self.watchdog if self.watchdog is not None and self.watchdog.timeout else None
        try:
            keep = conn.run_requests(watchdog)
            if keep and conn.sock.gettimeout() != 0.0:
                # The loop reads it without blocking; done here, off the loop's
                # thread, and only when needed (sendfile over TLS leaves it blocking):
                # setblocking is a system call, and each one hands the GIL around.
                conn.sock.setblocking(False)
        except (ClientDisconnected, OSError):
            keep = False
        except Exception:
            self.log.exception("Error serving a connection")
            keep = False
        self.loop.give_back(conn, keep)


class RequestThreads:
    """Up to ``count`` threads taking connections from one queue, started as needed.

    Lighter than concurrent.futures: no Future per request, and the queue
    is the C-implemented SimpleQueue. Like gunicorn's pool, threads start
    when the concurrency calls for them, not all at boot: a worker that
    never has more than two requests at once keeps two threads (each one a
    stack and its allocator arena: about 50 KiB touched each).
    """

    def __init__(self, count: int, serve: Callable[[PooledConnection], None], log: Logger) -> None:
        self.count = count
        self._serve = serve
        self._log = log
        self._queue: SimpleQueue[PooledConnection | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._start_one()  # one at once: the first request waits for no thread start

    def submit(self, conn: PooledConnection, in_hand: int) -> None:
        """Queue a connection for the next free thread; never blocks.

        :param in_hand: connections the loop has given to the pool and not
            taken back, this one included. More than threads started means
            none of them may be free: start another, up to ``count``. (A
            thread that just finished counts as busy until the loop takes its
            connection back, so a thread may start a little early, never late.)
        """
        started = len(self._threads)
        if in_hand > started and started < self.count:
            self._start_one()
        self._queue.put(conn)

    def _start_one(self) -> None:
        i = len(self._threads)
        # Daemon threads: a request still running when the graceful
        # timeout is over must not keep the process alive.
        t = threading.Thread(target=self._work, name=f"corral-request-{i}", daemon=True)
        try:
            t.start()
        except RuntimeError as exc:  # the process or user is out of threads
            if not self._threads:
                raise
            self.count = len(self._threads)  # do not try again at every request
            self._log.error("Could not start request thread %s (%s); serving with %s",
                            i + 1, exc, self.count)
            return
        self._threads.append(t)

    def stop(self) -> None:
        """Let idle threads end; busy ones end with the process."""
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        get = self._queue.get
        serve = self._serve
        while (conn := get()) is not None:
            serve(conn)
