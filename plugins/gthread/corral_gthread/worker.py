"""The gthread worker: an I/O loop and a pool of ``--threads`` threads per process.

How a worker runs, in its own process:

1. The I/O loop (core's :mod:`corral.workers.selector_loop`, in the main thread) accepts
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
:mod:`corral.workers.selector_loop`; the loop returns within
``--graceful-timeout`` and the process exits, taking any thread still
running with it.

All of it is core's (``corral.api.SelectorLoopWorker`` and
``corral.api.RequestThreads``): this class only says that requests run in
a pool of ``--threads`` threads.
"""

from __future__ import annotations

from corral.api import LoopConnection, RequestThreads, SelectorLoopWorker


class ThreadWorker(SelectorLoopWorker):
    multithread = True
    requests_in_main_thread = False  # the loop's thread only waits; at the deadline it exits

    def run(self) -> None:
        threads = int(self.cfg.threads)
        self.request_threads = RequestThreads[LoopConnection](threads, self.serve_connection, self.log)
        super().run()

    def request_slots(self) -> int:
        return int(self.cfg.threads)

    def dispatch(self, conn: LoopConnection, in_hand: int) -> None:
        self.request_threads.submit(conn, in_hand)

    def stop_dispatch(self) -> None:
        self.request_threads.stop()

    def notify(self) -> None:
        """Do nothing: only the loop beats the heartbeat (through the watchdog).

        Pool threads call this while they read request bodies. If they could
        beat, a worker whose loop had died would look alive while it no
        longer accepts a single connection.
        """
