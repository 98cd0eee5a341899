"""A selector loop for worker classes: accept, wait for heads, time out, retire.

Requests run where the worker says.

This is the loop of corral's gthread class, offered to every worker class
(``corral.api.SelectorLoop`` and ``corral.api.SelectorLoopWorker``). One
loop per worker process, in its main thread (signal handlers run there, so
TERM and ABRT interrupt its wait). It accepts, reads request heads, and
enforces the idle timeouts; a connection reaches the worker's
:meth:`SelectorLoopWorker.dispatch` only once its whole head has arrived,
so slow and idle clients cost a file descriptor and about a kilobyte. What
runs the request is the worker's choice: inline in the loop thread, one
at a time (the default, the sync model with keep-alive handled by the
loop), or a pool of threads (gthread's :class:`corral.serve.threads.RequestThreads`).

Only the loop thread touches the deadlines and the connection count.
Threads hand connections back through a deque (:meth:`SelectorLoop.give_back`);
a connection kept alive is also re-armed by its thread (see
:mod:`corral.workers.poller`), so the loop only learns of it for its idle
deadline, at its next wake-up. A closed one wakes the loop when it may be
asleep, since a slot for a new connection is free.

Timeouts, as the sync worker's HttpConnection applies them:

- a new connection must start its first head within ``header_timeout``,
  else it is closed without a word;
- a head, once its first byte arrived, must be complete within
  ``header_timeout``, else it is answered 408 and closed;
- between requests a keep-alive connection may stay idle for ``keepalive``
  seconds, then it is closed without a word.

Stopping (``worker.alive`` false: TERM from a reload, an upgrade, TTOU or
a shutdown; max-requests; the parent gone) follows
:mod:`corral.serve.retirement`: the listeners are closed at once; every
request already received is served, the last one on each connection with
``Connection: close``; connections waiting for a request keep waiting
(their keep-alive deadline, and no longer than the keep-alive timeout from
the stop: :meth:`SelectorLoop.end_waits`) and serve a request that comes;
the loop returns once every connection is closed or ``graceful_timeout``
has passed, logging the requests it cuts.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from corral.http import errors as E
from corral.http.parser import NEED_DATA, ClientDisconnected, RequestHead
from corral.serve.retirement import closing_for_good, next_request_deadline, queued_connections
from corral.serve.waits import HEAD_TIMEOUT_DETAIL
from corral.sockets import ACCEPT_RESOURCE_ERRNOS, Acceptor, acceptor
from corral.workers.base import Worker
from corral.workers.loop_connection import LoopConnection
from corral.workers.memory import IdleTrim
from corral.workers.poller import make_poller
from corral.workers.tls import start_tls
from corral.workers.watchdog import RequestWatchdog

if TYPE_CHECKING:
    from corral.wsgi.environ import EnvironContext

#: accept() failed for lack of a resource (file descriptors, memory): the
#: connection stays queued and the listener readable, so retrying at once
#: would spin. Stop accepting for this long.
ACCEPT_BACKOFF: Final = 0.1
#: While every pool thread is taken (and as many requests queued) the loop
#: stops watching the listeners, so that a connection goes to a worker with
#: a thread free (SelectorLoop.saturate); but it still looks at their queues this
#: often, so that under sustained load on every worker a new connection
#: waits milliseconds, not until the load ends.
SATURATED_PEEK: Final = 0.005
#: A deadline queue is not compacted below this length: compacting a short
#: queue would cost more than the stale entries do.
COMPACT_MIN: Final = 1024


class Deadlines:
    """Connections that wait with one fixed delay, in deadline order.

    Every deadline is ``now + delay`` for the same delay, so appending keeps
    the queue sorted and the loop needs neither a heap nor a scan. A
    connection that moves on (served, closed, given a new deadline) leaves a
    stale entry behind, recognised by ``conn.deadline`` no longer matching:
    it is dropped when it reaches the front, or earlier by a compaction once
    the queue has doubled, so that a long ``--keep-alive`` under load does
    not pile up one entry per request.
    """

    __slots__ = ("_compact_at", "_queue", "delay")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._queue: deque[tuple[float, LoopConnection]] = deque()
        self._compact_at = COMPACT_MIN

    def add(self, conn: LoopConnection, now: float) -> None:
        conn.deadline = deadline = now + self.delay
        queue = self._queue
        queue.append((deadline, conn))
        if len(queue) > self._compact_at:
            # Amortised O(1): the next compaction waits until the queue doubles again.
            live = [entry for entry in queue if entry[1].deadline == entry[0]]
            self._queue = deque(live)
            self._compact_at = max(2 * len(live), COMPACT_MIN)

    def next(self) -> float:
        """The earliest deadline (maybe stale: the loop then wakes for nothing), or infinity."""
        return self._queue[0][0] if self._queue else math.inf

    def expired(self, now: float) -> list[LoopConnection]:
        queue = self._queue
        out = []
        while queue and queue[0][0] <= now:
            deadline, conn = queue.popleft()
            if conn.deadline == deadline:
                out.append(conn)
        return out


class SelectorLoop:
    """Accepts, waits for heads, submits connections with a complete head; see the module docstring.

    :param submit: runs a connection's requests, or queues it for a thread
        that will (never blocks the loop for long), given how many
        connections are then in hand (a pool may start threads on demand).
        Whoever runs them calls :meth:`give_back` when done.
    :param watchdog: checked instead of beating the heartbeat directly, so a
        request stuck in a thread is noticed although the loop is fine.
    :param slots: how many requests run at once (threads): the loop stops
        accepting while twice as many are in hand (:meth:`saturate`).
    """

    def __init__(
        self,
        worker: Worker,
        submit: Callable[[LoopConnection, int], None],
        watchdog: RequestWatchdog,
        slots: int = 1,
    ) -> None:
        cfg = worker.cfg
        self.worker = worker
        self.submit = submit
        self.watchdog = watchdog
        self.keepalive: float = cfg.keepalive
        self.max_connections: int = cfg.worker_connections
        self.graceful_timeout: float = cfg.graceful_timeout
        #: It runs the watchdog (which beats), checks the parent and re-checks
        #: ``alive`` at least this often (Worker.check_interval: one cadence for every class).
        self.check_interval = worker.check_interval
        self.poller = make_poller()
        self.header_deadlines = Deadlines(cfg.header_timeout)
        self.idle_deadlines = Deadlines(cfg.keepalive)
        #: Connections handed back by pool threads (appended there, popped here).
        self.returned: deque[LoopConnection] = deque()
        #: True while the loop may be blocked in select(); see give_back().
        self.sleeping = False
        #: Something in `returned` needs the loop now (a closed connection,
        #: or any connection without a thread-safe poller): do not block.
        #: Kept-alive connections a thread re-armed only need their idle
        #: deadline, which can wait for the next wake-up.
        self.urgent = False
        #: Open connections, wherever they are: the --worker-connections count.
        self.connections = 0
        #: Connections submitted to the pool and not yet given back.
        self.in_threads = 0
        # Pool threads' malloc arenas keep what big bodies freed: give it
        # back once the worker goes idle (corral.workers.memory).
        self.idle_trim = IdleTrim(worker.log, os.getpid())
        self.threads: int = slots
        #: saturate() at this many, and accept again once a thread is free:
        #: the gap keeps a loaded worker from toggling its listeners (two
        #: system calls each way) at every request.
        self.saturation: int = 2 * slots
        #: When the listeners are next peeked at while the worker is too busy
        #: to watch them (see saturate()); infinity when no peek is due.
        self.peek_at = math.inf
        #: Listeners left alone until a thread is free (see saturate()).
        self.saturated = False
        self.accepting = False
        self.accept_backoff_until = 0.0
        self.stopping = False
        #: Each listening socket with what its connections need: its accept
        #: function (which sets TCP_NODELAY) and environ context.
        self.listeners: dict[socket.socket, tuple[Acceptor, EnvironContext]] = {}
        for listener in worker.listeners:
            # Shared with the arbiter and the other workers (one open file
            # description): the sync worker sets the same.
            listener.sock.setblocking(False)
            self.listeners[listener.sock] = (acceptor(listener.sock), worker.envs[id(listener)])
        self.poller.watch(worker.wake_fd, None)

    # -- called from pool threads ----------------------------------------------

    def give_back(self, conn: LoopConnection, keep: bool) -> None:
        """Return a connection from a pool thread: to wait for its next request, or to close."""
        if not keep:
            self.poller.forget(conn)
            conn.close_gracefully()  # here, in the thread: it may linger (RFC 9112 9.6)
        # Appended before the connection is re-armed: the loop takes back
        # what was returned before it handles events, so it has seen this
        # connection (and set its idle deadline) before it can hand it to a
        # thread again.
        self.returned.append(conn)
        if keep and self.poller.threadsafe and not self.stopping:
            self.poller.arm(conn)
            # No wake-up even when the loop stopped accepting for want of a
            # thread (saturate()): under load it wakes soon for another
            # event, and SATURATED_PEEK bounds the wait anyway.
            return
        # The loop sets `sleeping` before it reads `urgent` and selects; so
        # either it sees `urgent` (and does not block), or we see `sleeping`
        # and wake it. A spare wake-up costs one empty iteration.
        self.urgent = True
        if self.sleeping:
            self.worker.wake()

    # -- the loop ----------------------------------------------------------------

    def run(self) -> None:
        """Serve until the worker stops, then drain; returns when the worker may exit."""
        worker = self.worker
        self.resume_accepting()
        next_check = 0.0
        while worker.alive:
            next_check = self.run_once(next_check)
        since = worker.retirement_started()
        self.stop()
        deadline = since + self.graceful_timeout
        cutoff = next_request_deadline(deadline, retiring_since=since, keepalive=self.keepalive)
        while self.connections and time.monotonic() < deadline:
            if cutoff and time.monotonic() >= cutoff:
                cutoff = 0.0
                self.end_waits()
                continue
            next_check = self.run_once(next_check, cutoff or deadline)
        if self.connections:
            worker.log.warning("Worker %s: %s connection(s) still busy after graceful_timeout; exiting",
                               worker.pid, self.connections)
            worker.in_flight.report(worker.log, worker.pid)

    def run_once(self, next_check: float, until: float = math.inf) -> float:
        """One wait and what it brought; returns when the next check is due."""
        if not self.accepting:
            # Listeners are watched again here, just before the wait, not
            # the moment a thread or a slot frees up: under keep-alive load
            # a worker often frees threads (take_back) and fills them again
            # (the events of the same poll) within one iteration, and a
            # resume there would cost an epoll_ctl each way per listener
            # for a watch that no poll ever sees.
            self.resume_accepting()
        now = time.monotonic()
        wake_at = min(next_check, self.header_deadlines.next(), self.idle_deadlines.next(), until)
        if self.accept_backoff_until:
            wake_at = min(wake_at, self.accept_backoff_until)
        wake_at = min(wake_at, self.peek_at)
        self.sleeping = True
        timeout = 0.0 if self.urgent else max(wake_at - now, 0.0)
        ready = self.poller.poll(timeout)
        self.sleeping = False
        # Before the events: see give_back().
        self.take_back()
        conn_type = LoopConnection
        for data in ready:
            if type(data) is conn_type:
                if data.open:
                    self.on_readable(data, registered=True)
            elif data is None:
                self.worker.clear_wake()
            else:
                self.accept(data)
        now = time.monotonic()
        for conn in self.header_deadlines.expired(now):
            self.timed_out(conn)
        for conn in self.idle_deadlines.expired(now):
            self.timed_out(conn)
        if self.accept_backoff_until and now >= self.accept_backoff_until:
            self.accept_backoff_until = 0.0  # accepting resumes before the next wait
        if now >= self.peek_at:
            self.peek(now)
        if now >= next_check:
            next_check = now + self.check_interval
            self.watchdog.check()
            self.idle_trim.check(now, self.worker.nr, self.in_threads > 0)
            if self.worker.alive and not self.worker.keep_serving():
                self.worker.alive = False
        return next_check

    # -- accepting ---------------------------------------------------------------

    def resume_accepting(self) -> None:
        if self.accepting or self.stopping or self.accept_backoff_until:
            return
        if self.connections >= self.max_connections:
            return
        if self.saturated and self.in_threads >= self.threads:
            return  # saturated until a thread is free: see saturate()
        # A peek already due stays due. Under keep-alive load a worker can
        # go from saturated to free and back within one iteration (threads
        # hand connections back, their next requests arrive with the same
        # events), so its listeners are watched only between two polls and
        # never report; clearing the peek here kept new connections in the
        # listen queue for seconds (docs/workers/gthread.md).
        self.saturated = False
        for sock, data in self.listeners.items():
            self.poller.watch(sock.fileno(), data)
        self.accepting = True

    def saturate(self) -> None:
        """Every thread is taken and as many requests wait: leave new connections to others.

        A connection accepted now would wait in this worker's queue while
        another worker may have an idle thread; left in the kernel's listen
        queue, it goes to whichever worker asks first. (With 2 workers and
        `Connection: close` clients, accepting regardless split the load
        3:2 and left threads idle: see docs/workers/gthread.md.) Idle and
        slow connections hold no thread, so they never stop us accepting.
        """
        self.pause_accepting()
        self.saturated = True
        if self.peek_at == math.inf and not self.stopping:
            self.peek_at = time.monotonic() + SATURATED_PEEK

    def peek(self, now: float) -> None:
        """Saturated for SATURATED_PEEK: take what waits in the listen queues, one batch.

        Had another worker a thread free, it would have taken these
        already; so every worker is busy, and they are served in turn here.
        """
        for data in self.listeners.values():
            for _ in range(self.threads):
                if (self.accept_backoff_until or self.connections >= self.max_connections
                        or not self.accept(data)):
                    break
        self.peek_at = now + SATURATED_PEEK if self.saturated and not self.stopping else math.inf

    def pause_accepting(self) -> None:
        # Unregistered, the listeners' queued connections wait in the kernel
        # backlog, where another worker (or this one, later) takes them.
        if not self.accepting:
            return
        for sock in self.listeners:
            self.poller.unwatch(sock.fileno())
        self.accepting = False

    def accept(self, data: tuple[Acceptor, EnvironContext]) -> bool:
        """Accept one connection if one is queued; whether one was."""
        # One accept per readiness event: with several workers on one
        # listener, a greedy worker would take connections others could serve.
        accept, env = data
        try:
            sock, peer = accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return False  # another worker took it, or it died in the queue
        except OSError as exc:
            if exc.errno in ACCEPT_RESOURCE_ERRNOS:
                self.worker.log.error("accept() failed: %s; pausing for %s s", exc, ACCEPT_BACKOFF)
                self.pause_accepting()
                self.accept_backoff_until = time.monotonic() + ACCEPT_BACKOFF
                return False
            raise
        self.adopt(sock, peer, env)
        return True

    def adopt(self, sock: socket.socket, peer: Any, env: EnvironContext) -> None:
        """Take a connection just accepted: serve it, or wait for its first head."""
        sock.setblocking(False)  # (TCP_NODELAY is set by the acceptor)
        conn = LoopConnection(self.worker, sock, peer, env, self.keepalive)
        self.connections += 1
        if self.connections >= self.max_connections:
            self.pause_accepting()
        if self.worker.ssl_context is not None:
            # The handshake (and a PROXY header before it) blocks: it runs
            # where requests run, within --ssl-handshake-timeout, never in
            # the loop (serve_connection). The connection then comes back
            # to wait for its first head.
            conn.handshake_due = True
            self.to_thread(conn)
            return
        # Clients usually send the request with (or right after) the
        # handshake: try now rather than after another trip through select().
        self.on_readable(conn, registered=False)

    # -- connections -------------------------------------------------------------

    def on_readable(self, conn: LoopConnection, registered: bool) -> None:
        """Read what a connection sent; :param registered: it waited in the poller (now disarmed)."""
        try:
            event = conn.read_head()
        except E.HTTPError as exc:
            conn.error = exc
            self.to_thread(conn)
            return
        except ClientDisconnected:
            self.close(conn)
            return
        if event is NEED_DATA:
            if not registered:
                self.wait(conn, fresh=True)
                return
            if not conn.head_started and conn.parser.in_head:
                # The whole head must arrive within header_timeout of its first byte.
                conn.head_started = True
                self.header_deadlines.add(conn, time.monotonic())
            self.poller.arm(conn)
        elif type(event) is RequestHead:
            conn.head = event
            self.to_thread(conn)
        else:  # CONNECTION_CLOSED
            self.close(conn)

    def wait(self, conn: LoopConnection, fresh: bool) -> None:
        """Watch a connection the loop now owns until its next head is complete.

        :param fresh: just accepted (its first head is due within
            header_timeout) rather than back from a request (keep-alive).
        """
        self.set_deadline(conn, fresh)
        self.poller.arm(conn)

    def set_deadline(self, conn: LoopConnection, fresh: bool) -> None:
        now = time.monotonic()
        if conn.parser.in_head:
            # Part of the next head is here already (it came with the last
            # request, or with the handshake): its header_timeout runs.
            conn.head_started = True
            self.header_deadlines.add(conn, now)
        elif fresh:
            self.header_deadlines.add(conn, now)
        else:
            self.idle_deadlines.add(conn, now)

    def to_thread(self, conn: LoopConnection) -> None:
        # Before the thread can run: it reads the socket itself now. (A
        # connection that reached us through an event is disarmed already.)
        self.poller.disarm(conn)
        conn.deadline = -1.0
        conn.head_started = False
        self.in_threads += 1
        if self.in_threads >= self.saturation and not self.saturated:
            self.saturate()
        self.submit(conn, self.in_threads)

    def close(self, conn: LoopConnection) -> None:
        self.poller.forget(conn)
        conn.deadline = -1.0  # its queued deadlines are stale now
        conn.close()
        self.count_closed(conn)  # accepting resumes before the next wait (run_once)

    def count_closed(self, conn: LoopConnection) -> None:
        # Once per connection: one the loop closed at stop may still be in
        # `returned`, put there by its thread just before.
        if not conn.counted:
            conn.counted = True
            self.connections -= 1

    def timed_out(self, conn: LoopConnection) -> None:
        """A deadline passed: 408 for a head in progress, else close without a word.

        An idle connection's bytes that arrived since the last poll are read
        first: a request that came just in time is served, not closed on.
        """
        if not conn.parser.in_head and conn.armed:
            self.poller.disarm(conn)
            self.on_readable(conn, registered=True)
            if not conn.open or not conn.waiting or conn.parser.in_head:
                return  # closed by the client, its request went to a thread, or a head began
            self.close(conn)
            return
        if conn.parser.in_head:
            conn.error = E.RequestTimeout(HEAD_TIMEOUT_DETAIL)
            self.to_thread(conn)
        else:
            self.close(conn)

    def take_back(self) -> None:
        """Connections pool threads returned: watch them again, or count them closed."""
        self.urgent = False  # before popping: a later give_back sets it again
        returned = self.returned
        while returned:
            conn = returned.popleft()
            self.in_threads -= 1
            fresh, conn.first_head_due = conn.first_head_due, False  # back from its handshake
            if not conn.open:
                self.count_closed(conn)
            elif self.poller.threadsafe and not self.stopping:
                self.set_deadline(conn, fresh=fresh)  # its thread re-armed it
            else:
                self.wait(conn, fresh=fresh)
        # Accepting resumes (if threads are free now) before the next wait: run_once.

    # -- stopping ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting and close the listeners; every connection goes on.

        Requests in flight finish; connections waiting for a request keep
        waiting (see :meth:`end_waits`), so that one already on its way is
        served, with ``Connection: close``.
        """
        self.stopping = True
        self.pause_accepting()
        self.peek_at = math.inf  # no peeking at listeners about to close
        closing = {lst.sock for lst in closing_for_good(self.worker.listeners)}
        for sock, data in self.listeners.items():
            if sock in closing:  # a shutdown: what is queued is ours (retirement rule 1)
                accept, env = data
                for client, peer in queued_connections(accept, self.max_connections - self.connections):
                    self.adopt(client, peer, env)
        self.worker.close_listeners()
        # Connections threads gave back first: with epoll a thread re-arms
        # its connection itself, and the loop must own it (take_back) before
        # it may hand it to a thread again. (Handing it over first, then
        # closing it in take_back, closed sockets under the threads serving
        # them: EBADF in the middle of a response.)
        self.take_back()

    def end_waits(self) -> None:
        """The retirement is as old as the keep-alive timeout: close connections with nothing to serve.

        A connection the loop holds with no byte of a request is closed;
        one whose bytes have arrived since the last poll is read first, and
        its request served (a close would meet it on its way).
        """
        self.take_back()
        for conn in self.poller.armed():
            if conn.parser.in_head:
                continue  # a head in progress: its header deadline decides
            self.poller.disarm(conn)
            self.on_readable(conn, registered=True)
            if conn.open and conn.waiting and not conn.parser.in_head and conn.head is None:
                self.close(conn)


class SelectorLoopWorker(Worker):
    """A worker class whose main thread runs a :class:`SelectorLoop`.

    Complete as it is: requests run inline in the loop thread, one at a
    time, while idle keep-alive connections and slow clients wait in the
    loop (they cost no request slot). A subclass changes where requests
    run by overriding :meth:`dispatch` (and :meth:`request_slots`,
    :meth:`stop_dispatch`); whatever runs them calls
    :meth:`serve_connection`, which serves the connection's requests and
    gives it back to the loop. Accepting (with TCP_NODELAY, errno backoff
    and the ``--worker-connections`` cap), deadlines, the wake pipe, the
    heartbeat through the watchdog, and retirement are the loop's.
    """

    #: The loop; set by :meth:`run`.
    loop: SelectorLoop
    #: Inline by default: a request running at the graceful timeout is cut
    #: by the base's alarm. A class that dispatches to threads sets False.
    requests_in_main_thread = True

    def run(self) -> None:
        self.watchdog = RequestWatchdog(self.heartbeat, self.cfg.timeout, self.log)
        self.loop = SelectorLoop(self, self.dispatch, self.watchdog, self.request_slots())
        try:
            self.loop.run()
        finally:
            self.stop_dispatch()

    def request_slots(self) -> int:
        """How many requests run at once (inline: one)."""
        return 1

    def dispatch(self, conn: LoopConnection, in_hand: int) -> None:
        """Run ``conn``'s requests: inline, in the loop thread, by default.

        :param in_hand: connections dispatched and not yet given back, this
            one included.
        """
        self.serve_connection(conn)

    def stop_dispatch(self) -> None:
        """The loop has returned: let whatever runs requests end (nothing to do inline)."""

    def serve_connection(self, conn: LoopConnection) -> None:
        """Run the connection's requests (the head the loop read, and pipelined ones), then give it back."""
        watchdog = self.watchdog if self.watchdog is not None and self.watchdog.timeout else None
        try:
            if conn.handshake_due:
                conn.handshake_due = False
                keep = self.ssl_context is not None and start_tls(conn, self.ssl_context)
                conn.first_head_due = keep
            else:
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
