"""A worker process built on one asyncio event loop: the base of tornado's and the asyncio example's.

:mod:`corral.workers.asyncio_connection` serves one connection on a loop;
this module owns the rest of such a worker, which every asyncio-based class
needs alike: the loop, accepting, TLS and PROXY headers, the heartbeat, and
the graceful stop. A subclass says how requests are answered by overriding
:meth:`AsyncioWorker.make_responder` (tornado: its native apps on the loop;
the example: a thread pool that sheds load); the default runs the WSGI app
in a :class:`~corral.serve.threads.RequestThreads` (callables, every thread started at once).

Lifecycle on the loop: accept on every listener until ``--worker-connections``
connections are open (then stop accepting until one closes, leaving new
connections to other workers); every ``check_interval`` the request
watchdog beats the heartbeat (unless a request has been stuck in its thread
past ``--timeout``, so that the arbiter replaces the worker; a responder
without a watchdog beats directly, and one that blocks the loop stops the
beat by itself) and the parent is checked. When ``alive`` goes false (TERM,
reload, parent gone) the wake pipe or the next beat starts the graceful
stop of :mod:`corral.serve.retirement`: listeners are closed at once,
every request already received is served, connections waiting for a
request wait no longer than the keep-alive timeout, and ``run`` returns
when the last connection is gone or ``--graceful-timeout`` has passed
(logging the requests it cuts).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from concurrent.futures import Executor
from typing import TYPE_CHECKING, ClassVar, Final

from corral.http import errors as E
from corral.http import proxy
from corral.http.parser import RequestParser
from corral.http.proxy import ProxyInfo
from corral.serve.retirement import closing_for_good, queued_connections
from corral.serve.threads import call
from corral.sockets import ACCEPT_RESOURCE_ERRNOS, Acceptor, acceptor
from corral.workers.asyncio_connection import (
    AsyncHttpConnection,
    ConnectionProtocol,
    RequestThreadPool,
    Responder,
    WsgiThreadResponder,
)
from corral.workers.balance import STEP
from corral.workers.base import Worker
from corral.workers.connection import proxy_trusted
from corral.workers.memory import IdleTrim
from corral.workers.watchdog import RequestWatchdog

if TYPE_CHECKING:
    from corral.sockets import Listener
    from corral.wsgi.environ import EnvironContext

#: Pool size for WSGI apps when --threads is left at 1. One thread would make
#: a WSGI app strictly serial behind an event loop that accepts a thousand
#: connections; ten lets a few slow requests (I/O waits, upstream calls)
#: overlap while a CPU-bound app is still bounded by the GIL, not by the pool.
DEFAULT_WSGI_THREADS: Final = 10
#: Connections accepted per readiness event of a listener, so that one busy
#: listener cannot starve the others (or the loop) under a connection storm,
#: and so that a burst is shared: while this worker sets up the connections
#: it took, another can take the rest. A keep-alive connection stays with
#: its worker; with 64 here, one worker took all of wrk's 64 connections in
#: 7 of 30 runs and the other idled (0 of 34 with 16; docs/performance.md).
ACCEPT_BATCH: Final = 16
#: After accept() ran out of file descriptors or memory, try again this much
#: later (or as soon as one of our connections closes).
ACCEPT_RETRY: Final = 0.1


class AsyncioWorker(Worker):
    """Many connections per process on one asyncio loop; requests answered by a responder."""

    #: WSGI apps run in a thread pool (wsgi.multithread).
    multithread = True
    #: Connections accepted per readiness event of a listener.
    accept_batch: ClassVar[int] = ACCEPT_BATCH

    #: What :meth:`make_responder` set up; stopped (without waiting) when
    #: ``run`` ends: requests still running after the graceful timeout are
    #: abandoned, and the process exits.
    executor: RequestThreadPool | Executor | None = None
    #: Beats the heartbeat for requests that run in threads; None when the
    #: responder runs on the loop (then the beat is the loop's own).
    watchdog: RequestWatchdog | None = None

    def init_concurrency(self) -> None:
        # The loop exists before the app is imported, so an app module that
        # binds to IOLoop.current() or asyncio.get_event_loop() at import
        # time gets the loop it will be served on.
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

    def make_responder(self) -> Responder:
        """The responder for every request of this worker (called once, on the loop).

        By default the WSGI app runs in a pool of ``--threads`` threads
        (:data:`DEFAULT_WSGI_THREADS` when that is 1), watched by a
        :class:`RequestWatchdog`. An override that runs threads sets
        ``self.executor`` and ``self.watchdog`` likewise.
        """
        threads = self.cfg.threads if self.cfg.threads > 1 else DEFAULT_WSGI_THREADS
        self.executor = RequestThreadPool(threads, call, self.log, name="corral-wsgi", start_all=True)
        self.watchdog = RequestWatchdog(self.heartbeat, self.cfg.timeout, self.log)
        return WsgiThreadResponder(self, self.executor, self.watchdog)

    def run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=False, cancel_futures=True)

    # -- serving ------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = self.loop
        self.responder = self.make_responder()
        self._connections: set[AsyncHttpConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self._open = 0  # accepted connections, including those still being set up
        self._accepting = False
        self._accept_trouble_logged = False
        self._stopping = loop.create_future()
        self._all_closed = asyncio.Event()
        for lst in self.listeners:
            lst.sock.setblocking(False)
        # Each listener with its accept function, made once (corral.sockets.acceptor).
        self._listener_fds = {lst.sock.fileno(): (lst, acceptor(lst.sock)) for lst in self.listeners}
        loop.add_reader(self.wake_fd, self._on_wake)
        # The WSGI threads' malloc arenas keep what big bodies freed: give it
        # back once the worker goes idle (corral.workers.memory).
        self._idle_trim = IdleTrim(self.log, self.pid)
        self._beat_handle = loop.call_later(self.check_interval, self._beat)
        if self.balance is not None:
            self.balance.join()
        self._resume_accepting()
        try:
            if self.alive:
                await self._stopping
            await self._graceful_stop()
        finally:
            self._beat_handle.cancel()
            loop.remove_reader(self.wake_fd)

    def _accept(self, listener: Listener, accept: Acceptor) -> None:
        env = self.envs[id(listener)]
        cap = self.cfg.worker_connections
        balance = self.balance
        for _ in range(self.accept_batch):
            if not self.alive:
                # Stopping (max-requests, TERM) but the wake-up is still on its
                # way: leave the connection queued for a worker that stays.
                self._pause_accepting()
                self._begin_stop()
                return
            if self._open >= cap:
                self._pause_accepting()
                return
            if balance is not None and balance.step_aside():
                # A peer holds far fewer connections: let it take this one.
                self._pause_accepting()
                self.loop.call_later(STEP, self._resume_accepting)
                return
            try:
                client, peer = accept()
            except (BlockingIOError, InterruptedError):
                return  # the queue is empty, or another worker took it
            except OSError as exc:
                if exc.errno not in ACCEPT_RESOURCE_ERRNOS:
                    continue  # this one connection failed (ECONNABORTED...): take the next
                # Out of file descriptors or memory: the listener stays readable,
                # so stop watching it for a moment instead of spinning.
                if not self._accept_trouble_logged:
                    self._accept_trouble_logged = True
                    self.log.warning("cannot accept on %s: %s; retrying every %s s",
                                     listener.name, exc.strerror, ACCEPT_RETRY)
                self._pause_accepting()
                self.loop.call_later(ACCEPT_RETRY, self._resume_accepting)
                return
            self._adopt(client, peer, env)

    def _adopt(self, client: socket.socket, peer: object, env: EnvironContext) -> None:
        """Serve a connection just accepted, in a task of its own."""
        self._open += 1
        if self.balance is not None:
            self.balance.opened()
        client.setblocking(False)
        task = self.loop.create_task(self._serve_client(client, peer, env))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_client(self, client: socket.socket, peer: object, env: EnvironContext) -> None:
        conn: AsyncHttpConnection | None = None
        try:
            proxied = None
            protocol = ConnectionProtocol(self.loop)
            if self.ssl_context is not None:
                # asyncio does the handshake, within --ssl-handshake-timeout; a
                # PROXY header comes before the TLS records and is read first.
                if self.limits.proxy_protocol != "off":
                    proxied = await self._read_proxy_header(client, peer)
                    if proxied is None:
                        client.close()
                        return
                # Ours is kept, not what the call returns: uvloop returns its
                # own SSLProtocol wrapped around it.
                protocol.keep_half_open = False  # a TLS transport closes at EOF whatever we say
                await self.loop.connect_accepted_socket(
                    lambda: protocol, client, ssl=self.ssl_context,
                    ssl_handshake_timeout=self.cfg.ssl_handshake_timeout)
            else:
                await self.loop.connect_accepted_socket(lambda: protocol, client)
            conn = AsyncHttpConnection(self, protocol, peer, env, self.cfg.keepalive, self.responder)
            if proxied is not None:
                conn.parser = RequestParser(dataclasses.replace(self.limits, proxy_protocol="off"))
                conn.parser.proxy = proxied
            self._connections.add(conn)
            await conn.serve()  # corral's request loop: heads, timeouts, keep-alive, errors
        except Exception:
            self.log.exception("Error serving a connection from %s", peer)
            with contextlib.suppress(OSError):
                client.close()
        finally:
            if conn is not None:
                self._connections.discard(conn)
            self._open -= 1
            if self.balance is not None:
                self.balance.closed()
            if not self.alive:
                if self._open == 0:
                    self._all_closed.set()
            elif not self._accepting:
                self._resume_accepting()

    async def _read_proxy_header(self, client: socket.socket, peer: object) -> ProxyInfo | None:
        """Read one PROXY header off the raw socket without touching the TLS bytes after it.

        None when the sender is not trusted, the header is malformed, or it
        does not arrive within --ssl-handshake-timeout (the connection is then
        closed without an answer: no TLS session exists to answer on).
        """
        if not proxy_trusted(self, peer):
            return None
        fd = client.fileno()
        preamble = proxy.ProxyPreamble(self.limits.proxy_protocol)
        deadline = self.loop.time() + self.cfg.ssl_handshake_timeout
        try:
            while True:
                ready = self.loop.create_future()
                self.loop.add_reader(fd, ready.set_result, None)
                try:
                    await asyncio.wait_for(ready, max(deadline - self.loop.time(), 0))
                finally:
                    self.loop.remove_reader(fd)
                take, info = preamble.peeked(client.recv(preamble.want(), socket.MSG_PEEK))
                preamble.consume(client.recv, take)
                if info is not None:
                    return info
        except (OSError, TimeoutError, E.HTTPError):
            return None

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            for fd in self._listener_fds:
                self.loop.remove_reader(fd)

    def _resume_accepting(self) -> None:
        if not self._accepting and self.alive:
            self._accepting = True
            for fd, (lst, accept) in self._listener_fds.items():
                self.loop.add_reader(fd, self._accept, lst, accept)

    # -- liveness and stopping ---------------------------------------------------------

    def _beat(self) -> None:
        # Re-armed first, so that an error below (logged by the loop's
        # exception handler) cannot stop the heartbeat for good.
        self._beat_handle = self.loop.call_later(self.check_interval, self._beat)
        if self.watchdog is not None:
            self.watchdog.check()
            self._idle_trim.check(self.loop.time(), self.nr, self.watchdog.busy)
        else:
            self.notify()
            self._idle_trim.check(self.loop.time(), self.nr, False)
        if self.alive and not self.keep_serving():
            self.alive = False
        if not self.alive:
            self._begin_stop()

    def _on_wake(self) -> None:
        # Worker.handle_exit (TERM) and request_done (max-requests) write here.
        self.clear_wake()
        if not self.alive:
            self._begin_stop()

    def _begin_stop(self) -> None:
        if not self._stopping.done():
            self._stopping.set_result(None)

    def retiring(self) -> None:
        """The graceful stop begins (on the loop): a subclass's long-lived
        connections (WebSockets) can be asked to end; HTTP requests in hand
        are served either way."""

    async def stopped(self) -> None:
        """The last connection is gone (or the graceful timeout passed): a
        subclass's shutdown work (an ASGI app's lifespan shutdown)."""

    async def _graceful_stop(self) -> None:
        self.retiring()
        self.retirement_started()
        self._pause_accepting()
        if self.balance is not None:
            self.balance.leave()
        # A shutdown: what is queued in a listener the arbiter marked would
        # be reset at its close; it is served first (retirement rule 1).
        closing = closing_for_good(self.listeners)
        for lst, accept in self._listener_fds.values():
            if lst in closing:
                for client, peer in queued_connections(accept, self.cfg.worker_connections - self._open):
                    self._adopt(client, peer, self.envs[id(lst)])
                    # Set if every connection had closed by now: these are open.
                    self._all_closed.clear()
        self._listener_fds.clear()
        self.close_listeners()
        for conn in list(self._connections):
            conn.stop_when_idle()
        if self._open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), self.cfg.graceful_timeout)
            if self._open:
                self.log.warning("Worker %s: %s connection(s) still busy after graceful_timeout; exiting",
                                 self.pid, self._open)
                self.in_flight.report(self.log, self.pid)
        await self.stopped()
