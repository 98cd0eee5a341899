"""The asyncio-threads worker: connections on an asyncio loop, WSGI apps in threads.

One asyncio event loop per worker process accepts connections and reads
every request head with corral's parser, so an idle keep-alive client or a
slow sender costs a few kilobytes and no thread. A request whose head is
complete is handed to a bounded thread pool, where the WSGI app runs through
corral's own request code (environ, wsgi.input, start_response, the file
wrapper, hooks, access log); the response goes back through the loop. The
building blocks are core's (:mod:`corral.workers.asyncio_connection`); this
module owns accepting, the thread pool and stopping.

What it adds: load shedding. With ``--asyncio-queue-timeout SECONDS`` a
request that has waited that long for a free thread is answered 503 and
its connection closed, so under overload clients learn at once instead of
timing out behind a queue that only grows.

Lifecycle on the loop: accept on every listener until
``--worker-connections`` connections are open (then stop accepting until
one closes, leaving new connections to other workers); every
:data:`BEAT_INTERVAL` the request watchdog beats the heartbeat, unless a
request has run in its thread longer than ``--timeout``, in which case the
arbiter replaces the worker; the parent is checked at the same time. When
``alive`` goes false (TERM, max-requests, parent gone), the wake pipe or
the next beat starts the graceful stop: listeners are closed, idle
connections are closed, requests under way finish, and ``run`` returns when
the last connection is gone or ``--graceful-timeout`` has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Final

from corral.http.errors import HTTPError
from corral.workers.asyncio_connection import AsyncHttpConnection, ConnectionProtocol, WsgiThreadResponder
from corral.workers.base import Worker
from corral.workers.watchdog import RequestWatchdog

if TYPE_CHECKING:
    from corral.http.parser import RequestHead
    from corral.sockets import Listener
    from corral.wsgi.environ import EnvironContext

#: Threads when --threads is left at 1: one thread would make every request
#: wait for the one before it behind a loop that holds a thousand
#: connections; ten let slow requests (I/O waits, upstream calls) overlap
#: while CPU-bound apps are bounded by the GIL anyway.
DEFAULT_THREADS: Final = 10
#: Connections accepted per readiness event of a listener, so one busy
#: listener cannot starve the others (or the loop) in a connection storm.
ACCEPT_BATCH: Final = 64
#: Seconds between heartbeats. The watchdog looks this often, which replaces
#: a worker within about a second once a request outlives --timeout.
BEAT_INTERVAL: Final = 0.5


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


class AsyncioThreadsWorker(Worker):
    #: Requests of one process run at once, in threads (wsgi.multithread).
    multithread = True

    def init_concurrency(self) -> None:
        # Before the app is imported: an app that looks up the event loop at
        # import time finds the one it will be served on.
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

    def run(self) -> None:
        threads = self.cfg.threads if self.cfg.threads > 1 else DEFAULT_THREADS
        executor = ThreadPoolExecutor(threads, thread_name_prefix="corral-asyncio")
        self.watchdog = RequestWatchdog(self.heartbeat, self.cfg.timeout, self.log)
        # getattr: a pool may be configured from settings collected without
        # this plugin (a class given by path); then there is no shedding.
        queue_timeout = getattr(self.cfg, "asyncio_queue_timeout", 0.0)
        self.responder = BoundedThreadResponder(self, executor, self.watchdog, threads, queue_timeout)
        try:
            self.loop.run_until_complete(self.serve())
        finally:
            # Requests still running after the graceful timeout are abandoned:
            # the process exits (os._exit) as soon as run() returns.
            executor.shutdown(wait=False, cancel_futures=True)

    # -- serving ---------------------------------------------------------------------

    async def serve(self) -> None:
        self.connections: set[AsyncHttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self.open = 0  # accepted connections, including those still being set up
        self.accepting = False
        self.stopping = asyncio.Event()
        self.all_closed = asyncio.Event()
        self.listener_fds = {lst.sock.fileno(): lst for lst in self.listeners}
        for lst in self.listeners:
            lst.sock.setblocking(False)
        self.loop.add_reader(self._wake_r, self.on_wake)
        beat = self.loop.create_task(self.beat())
        self.resume_accepting()
        try:
            await self.stopping.wait()
            await self.graceful_stop()
        finally:
            beat.cancel()
            self.loop.remove_reader(self._wake_r)

    def accept(self, listener: Listener) -> None:
        env = self.envs[id(listener)]
        for _ in range(ACCEPT_BATCH):
            if self.open >= self.cfg.worker_connections:
                self.pause_accepting()
                return
            try:
                client, peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # the queue is empty, or another worker took it
            except OSError as exc:
                # Out of file descriptors and the like: try again on the next event.
                self.log.warning("accept() failed: %s", exc)
                return
            self.open += 1
            client.setblocking(False)
            task = self.loop.create_task(self.serve_client(client, peer, env))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def serve_client(self, client: socket.socket, peer: object, env: EnvironContext) -> None:
        conn: AsyncHttpConnection | None = None
        try:
            _, protocol = await self.loop.connect_accepted_socket(
                lambda: ConnectionProtocol(self.loop), client)
            conn = AsyncHttpConnection(self, protocol, peer, env, self.cfg.keepalive, self.responder)
            self.connections.add(conn)
            await conn.serve()  # corral's request loop: heads, timeouts, keep-alive, errors
        except Exception:
            self.log.exception("Error serving a connection from %s", peer)
            with contextlib.suppress(OSError):
                client.close()
        finally:
            if conn is not None:
                self.connections.discard(conn)
            self.open -= 1
            if not self.alive:
                if self.open == 0:
                    self.all_closed.set()
            elif not self.accepting:
                self.resume_accepting()

    def pause_accepting(self) -> None:
        if self.accepting:
            self.accepting = False
            for fd in self.listener_fds:
                self.loop.remove_reader(fd)

    def resume_accepting(self) -> None:
        if not self.accepting and self.alive:
            self.accepting = True
            for fd, lst in self.listener_fds.items():
                self.loop.add_reader(fd, self.accept, lst)

    # -- liveness and stopping -------------------------------------------------------

    async def beat(self) -> None:
        while True:
            self.watchdog.check()  # beats, unless a request is stuck in its thread
            if self.alive and not self.parent_alive():
                self.alive = False
            if not self.alive:
                self.stopping.set()
            await asyncio.sleep(BEAT_INTERVAL)

    def on_wake(self) -> None:
        # Worker.handle_exit (TERM) and request_done (max-requests) write here.
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 512)
        if not self.alive:
            self.stopping.set()

    async def graceful_stop(self) -> None:
        self.pause_accepting()
        self.listener_fds.clear()
        self.close_listeners()
        for conn in list(self.connections):
            conn.stop_when_idle()
        if self.open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_closed.wait(), self.cfg.graceful_timeout)
            if self.open:
                self.log.warning("Worker %s: %s connection(s) still open after the graceful timeout",
                                 self.pid, self.open)
