"""The gevent worker: many connections per process, each served in a greenlet.

Only gevent worker processes import this module (the arbiter imports the
worker class after fork, in the child), so gevent never enters the arbiter.

How a worker runs, in its own process:

1. :meth:`GeventWorker.init_concurrency` monkey-patches the standard library
   (socket, ssl, time.sleep, select, threading, queue, subprocess, signal,
   os.fork...) before the application is imported, so that the app's own
   blocking calls, and those of pure-Python drivers, yield to other greenlets.
2. :meth:`GeventWorker.run` makes the inherited listening sockets
   non-blocking (they stay OS sockets, as do the connections: only waits go
   to the hub) and starts one accept greenlet per listener, a heartbeat
   greenlet, and then waits on the worker's wake pipe.
3. Each accepted connection is served by corral's shared
   :class:`~corral.workers.connection.HttpConnection` in a serving greenlet,
   at most ``--worker-connections`` at once. With every slot taken the
   accept greenlets stop accepting; new connections wait in the kernel's
   listen queue (``--backlog``), where another worker may take them. A
   serving greenlet that finished its connection waits for the next one
   (up to :data:`MAX_SPARES` of them) rather than dying.

Stopping (TERM, the parent gone) follows :mod:`corral.serve.retirement`:
the accept greenlets are killed and the listeners closed at once; every
request already received is served, with ``Connection: close`` on the last
response of each connection; a connection waiting for a request keeps
waiting (no longer than the keep-alive timeout) and serves one that comes;
at ``graceful_timeout`` whatever is left is logged and killed, and the
process exits.

The heartbeat comes from its own greenlet, so it keeps beating while
requests wait on I/O. A greenlet that never yields (a CPU loop, a C call
that blocks) stops every greenlet, the heartbeat included; the arbiter then
sees a silent worker after ``--timeout`` and sends SIGABRT, whose handler
(installed by the Worker base with plain ``signal.signal``) runs in that
very greenlet and logs its stack. A request that waits cooperatively for a
long time (``time.sleep(1000)``) is not stuck in that sense and is not
killed, as with any async worker.
"""

from __future__ import annotations

import contextlib
import errno
import math
import select
import time
from socket import AF_INET, AF_INET6, IPPROTO_TCP, TCP_NODELAY
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

import gevent
import gevent.socket
from gevent import monkey
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.socket import wait_read, wait_write

from corral.api import (
    ACCEPT_RESOURCE_ERRNOS,
    ClientTimeout,
    HttpConnection,
    SocketTransport,
    Worker,
    closing_for_good,
    next_request_deadline,
    queued_connections,
)

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from greenlet import greenlet as RawGreenlet

    from corral.api import EnvironContext, RequestHead

#: How long to wait before retrying an accept that ran out of a resource
#: (corral.sockets.ACCEPT_RESOURCE_ERRNOS): long enough not to burn
#: CPU, short enough that a closing connection's slot is used at once.
ACCEPT_BACKOFF: Final = 0.1
#: accept() errors about one connection that died in the queue (or a
#: firewall refusing it): skip it and accept the next.
_TRANSIENT_ERRNOS: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
#: At most this many accepts in a row before the accept greenlet yields, so
#: that a burst of connections cannot starve the greenlets already serving
#: (gevent's accept returns without switching while the kernel queue is not
#: empty). 64 made a burst one long batch whose last connection waited for
#: all the others; 1 and 4 cost hello-world with closing clients 10-26%.
ACCEPT_BURST: Final = 16
#: The batch shrinks so that the greenlets it starts take about this long
#: before the accept greenlet runs again. A batch is served one greenlet
#: after another, so its last connection waits for all the others: 16 hello
#: worlds take 1-4 ms, but 16 responses of 1 MiB took 12-40 ms, which was the
#: p99 of 1 MiB files to closing clients (gunicorn accepts one connection per
#: turn when it has several workers). Measured in docs/performance.md.
ACCEPT_BATCH_TIME: Final = 0.005
#: The main greenlet re-checks ``alive`` this often even without a wake-up,
#: in case something cleared it without writing to the wake pipe.
STOP_POLL: Final = 1.0
#: When the graceful timeout is over, greenlets still running get this long
#: to unwind after being killed before the process exits anyway.
KILL_GRACE: Final = 1.0
#: At most this many serving greenlets wait, idle, for the next connection.
#: A greenlet that finished a connection takes the next one instead of
#: dying: a new greenlet costs an allocation of its own Python frame stack
#: (an mmap and a munmap of 16 KiB, and the page faults to touch it) and
#: gevent's bookkeeping: with clients that close after each response,
#: reusing greenlets took a worker's CPU per request from 95 to 52 µs
#: (docs/performance.md). The spares are bounded so that a burst
#: of a thousand connections leaves no thousand idle greenlets behind.
MAX_SPARES: Final = 64


class _HubTransport(SocketTransport):
    """corral's socket transport, waiting on gevent's hub instead of in poll.

    Not a gevent socket: the socket transport already tries each call first
    and waits only when the kernel says it would block, so gevent's wrapper
    would only add its cost: two event watchers built for every connection
    (each checks its fd with a system call), a Python frame around every
    recv and send, a settimeout before each, and a deferred close. The
    waits, the only place that must yield, go to the hub here. Files go
    through the transport's non-blocking ``os.sendfile`` loop, which waits
    through the same method. The heartbeat has a greenlet of its own, so
    there is nothing to beat here.
    """

    def wait(self, events: int, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientTimeout
        wait = wait_read if events & select.POLLIN else wait_write
        try:
            if self.client_wait is None:
                wait(self.sock.fileno(), timeout=remaining)
            else:
                with self.client_wait():
                    wait(self.sock.fileno(), timeout=remaining)
        except TimeoutError:
            raise ClientTimeout from None


class _Connection(HttpConnection):
    """HttpConnection on a plain non-blocking OS socket that waits on gevent's hub (_HubTransport).

    A graceful stop leaves a connection that waits for a request alone
    until its wait ends by itself (no longer than the keep-alive timeout
    once retiring, see corral.serve.retirement): a request on its way is
    served rather than met by a close.
    """

    waiting = False
    #: The loop's iteration when the current request's head was read.
    _turn = -1
    #: The hub's loop. libev counts its iterations; libuv's says -1 always,
    #: and then a connection yields before every request, as it used to.
    _hub: Any = None
    transport_class = _HubTransport
    #: The greenlet serving this connection, to kill it when it is idle at stop.
    greenlet: RawGreenlet | None = None

    def next_head(self, first: bool) -> RequestHead | None:
        loop = self._hub
        if not first and loop.iteration == self._turn:
            # The request just served never gave the CPU away (the loop has
            # not polled since its head was read): let every other ready
            # greenlet run before this one reads its next request, or a
            # client that answers at once keeps this greenlet on the CPU
            # (a recv that finds data never yields). A request whose app
            # waited has let the others run already. The p99s behind both
            # halves of the rule: docs/performance.md (gevent's yield).
            gevent.sleep(0)
        self.waiting = True
        try:
            head = super().next_head(first)
        finally:
            self.waiting = False
        self._turn = loop.iteration
        return head

    @property
    def idle(self) -> bool:
        return self.waiting and not self.parser.in_head


class GeventWorker(Worker):
    """Serves up to ``--worker-connections`` connections at once in greenlets."""

    # Requests of one process run concurrently in greenlets: PEP 3333 asks
    # for wsgi.multithread to be true, since thread-locals and shared state
    # see the same interleaving as with threads.
    multithread = True

    def init_concurrency(self) -> None:
        # Patching here, after fork and before the app is imported, keeps
        # the arbiter (and every pool of another class) unpatched; that is
        # why --preload is refused for this class (preload_safe=False): a
        # preloaded app would hold references to the unpatched modules.
        # The signal handlers the base installed before this stay plain
        # Python handlers; gevent's loop runs them between callbacks.
        if not monkey.patch_all():
            # A gevent plugin subscribed to the patch events vetoed it.
            self.log.warning("gevent's monkey-patching was cancelled; blocking calls will block")
        self._hub_loop = gevent.get_hub().loop
        #: One slot per connection being served (--worker-connections).
        self._slots = Semaphore(self.cfg.worker_connections)
        self._connections: set[_Connection] = set()
        #: Serving greenlets waiting in the hub for their next connection.
        self._spares: list[RawGreenlet] = []
        self._active = 0  # connections being served
        self._all_done = Event()  # set when _active drops to 0 while stopping

    # -- serving -----------------------------------------------------------------

    def run(self) -> None:
        accepters = []
        for listener in self.listeners:
            listener.sock.setblocking(False)
            accepters.append(gevent.spawn(self._accept_loop, listener.sock, listener.name,
                                          self.envs[id(listener)]))
        heartbeat = gevent.spawn(self._heartbeat_loop)
        try:
            self._wait_for_stop()
            gevent.killall(accepters)
            self._take_queued()
            self.close_listeners()
            self._drain()
        finally:
            heartbeat.kill()

    def _take_queued(self) -> None:
        """A shutdown: serve what is queued in a listener the arbiter marked (retirement rule 1).

        Its close would reset those connections, whose clients have
        mostly sent their requests already.
        """
        for listener in closing_for_good(self.listeners):
            room = self.cfg.worker_connections - self._active
            tcp = listener.sock.family in (AF_INET, AF_INET6)
            for client, peer in queued_connections(_plain_acceptor(listener.sock), room):
                if tcp:
                    with contextlib.suppress(OSError):
                        client.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
                self._slots.acquire()  # free: room counted them
                self._active += 1
                self._all_done.clear()  # set if every connection had closed by now
                gevent.spawn_raw(self._serve_loop, (client, peer, self.envs[id(listener)]))

    def _accept_loop(self, sock: socket.socket, name: str, env: EnvironContext) -> None:
        # The listener, made before patching, stays a plain non-blocking OS
        # socket, and so do the connections (see _Connection): accept() is
        # tried first, and only an empty queue waits, on the hub.
        accept = _plain_acceptor(sock)
        hub = gevent.get_hub()
        readable = hub.loop.io(sock.fileno(), 1)
        # Responses may go out in several sends (a streamed body, the final
        # chunk); with Nagle on, a keep-alive client's delayed ACK would hold
        # each later piece back by up to 40 ms.
        nodelay = sock.family in (AF_INET, AF_INET6)
        slots = self._slots
        spares = self._spares
        run_callback = hub.loop.run_callback
        serve = self._serve_loop
        burst = 0
        batch = ACCEPT_BURST  # adapted to how long the previous batch kept this greenlet away
        starved = False  # out of fds (or memory): logged once per episode, not 10 times a second
        while self.alive:
            if slots.locked():
                burst = 0
            # With every slot taken, leave further connections in the kernel
            # queue until one frees up; another worker may take them meanwhile.
            slots.acquire()
            try:
                client, peer = accept()
            except BlockingIOError:
                slots.release()
                hub.wait(readable)
                continue
            except OSError as exc:
                slots.release()
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                if exc.errno in ACCEPT_RESOURCE_ERRNOS:
                    if not starved:
                        starved = True
                        self.log.error("Worker %s cannot accept on %s: %s (%d connections open); "
                                       "retrying", self.pid, name, exc.strerror, self._active)
                    gevent.sleep(ACCEPT_BACKOFF)
                    continue
                if self.alive:
                    self.log.exception("Worker %s stops accepting on %s", self.pid, name)
                return
            except BaseException:
                slots.release()
                raise
            if starved:
                starved = False
                self.log.info("Worker %s accepts on %s again", self.pid, name)
            if nodelay:
                with contextlib.suppress(OSError):  # the client may be gone already
                    client.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
            self._active += 1
            job = (client, peer, env)
            if spares:
                run_callback(spares.pop().switch, job)
            else:
                gevent.spawn_raw(serve, job)
            burst += 1
            if burst >= batch:
                started = perf_counter()
                gevent.sleep(0)
                away = max(perf_counter() - started, 1e-6)
                batch = max(1, min(ACCEPT_BURST, int(burst * ACCEPT_BATCH_TIME / away)))
                burst = 0

    def _serve_loop(self, job: tuple[socket.socket, Any, EnvironContext] | None) -> None:
        """Serve connections one after another in this greenlet, waiting between them as a spare."""
        hub = gevent.get_hub()
        spares = self._spares
        me = gevent.getcurrent()
        while job is not None:
            try:
                self._serve(*job)
            finally:
                job = None
                self._active -= 1
                self._slots.release()
                if not self.alive and not self._active:
                    self._all_done.set()
            if not self.alive or len(spares) >= MAX_SPARES:
                return
            spares.append(me)
            try:
                # The accept greenlet hands the next connection over with a
                # callback that switches back here; None means stop.
                job = hub.switch()
            except BaseException:
                if me in spares:  # killed while waiting
                    spares.remove(me)
                raise
            # Each connection starts in an empty contextvars context, as it
            # did in a greenlet of its own (thread-locals, gevent.local
            # included, carry over, as between the requests of one
            # connection and in any thread pool).
            me.gr_context = None

    def _serve(self, client: socket.socket, peer: Any, env: EnvironContext) -> None:
        conn = _Connection(self, client, peer, env, self.cfg.keepalive)
        conn.greenlet = gevent.getcurrent()
        conn._hub = self._hub_loop
        connections = self._connections
        connections.add(conn)
        try:
            conn.serve()
        except Exception:
            # serve() handles client and app errors itself; anything else is
            # a bug that belongs in the error log, not on gevent's stderr.
            self.log.exception("Error serving a connection from %s", conn.peer_label())
        finally:
            connections.discard(conn)
            conn.greenlet = None

    # -- heartbeat and stopping -------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        interval = self.check_interval  # a worker that is merely busy never looks stuck
        while True:
            # notify, not beat: throttled like every class's, and it runs the
            # beat's periodic work (the access log flush, the counters' publish).
            self.heartbeat.notify()
            if self.alive and not self.keep_serving():
                self.alive = False
                self.wake()
            gevent.sleep(interval)

    def _wait_for_stop(self) -> None:
        """Block this greenlet until ``alive`` goes false (signal handlers write the wake pipe)."""
        while self.alive:
            with contextlib.suppress(TimeoutError):
                gevent.socket.wait_read(self.wake_fd, timeout=STOP_POLL)
            self.clear_wake()

    def _drain(self) -> None:
        """Serve what was received, let waiting connections wait out, kill what is left at the end.

        Connections keep the waits they are in: one waiting for its next
        request ends it at its keep-alive deadline, and a fresh one (whose
        deadline is --header-timeout) is ended by :meth:`_end_waits` once
        the retirement is as old as the keep-alive timeout.
        """
        since = self.retirement_started()
        run_callback = gevent.get_hub().loop.run_callback
        for spare in self._spares:
            run_callback(spare.switch, None)
        cutoff = next_request_deadline(math.inf, retiring_since=since, keepalive=self.cfg.keepalive)
        ender = gevent.spawn_later(max(cutoff - time.monotonic(), 0.0), self._end_waits)
        try:
            if self._active and not self._all_done.wait(timeout=self.cfg.graceful_timeout):
                self.log.warning(
                    "Worker %s: %d connection(s) still busy after graceful_timeout (%s s); closing them",
                    self.pid, self._active, self.cfg.graceful_timeout,
                )
                self.in_flight.report(self.log, self.pid)
                for conn in list(self._connections):
                    if conn.greenlet is not None:
                        gevent.kill(conn.greenlet)
                self._all_done.wait(timeout=KILL_GRACE)
        finally:
            ender.kill()

    def _end_waits(self) -> None:
        """Close the connections still waiting for a request's first byte, unless bytes are here.

        What arrived is read first: such a connection's greenlet is about to
        wake and serve it (a kill would close it under that request).
        """
        for conn in list(self._connections):
            if conn.idle and conn.greenlet is not None and not conn.kernel_has_input():
                # Killed in its wait; serve()'s finally closes the socket.
                gevent.kill(conn.greenlet)


def _plain_acceptor(sock: socket.socket) -> Callable[[], tuple[socket.socket, Any]]:
    """accept() on the unpatched listener, giving plain OS sockets (as _accept_loop does)."""
    new_socket = monkey.get_original("socket", "socket")
    family, kind, proto = int(sock.family), int(sock.type), sock.proto
    raw_accept = sock._accept  # type: ignore[attr-defined]  # what socket.accept() calls

    def accept() -> tuple[socket.socket, Any]:
        fd, peer = raw_accept()
        return new_socket(family, kind, proto, fd), peer

    return accept
