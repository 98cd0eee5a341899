"""Serving one HTTP/1.1 connection on an asyncio event loop.

The asyncio counterpart of :mod:`corral.workers.connection`, for worker
classes built on an event loop (tornado's IOLoop runs on asyncio). The
worker accepts and owns the loop; this module owns one connection's request
loop: read a head within the header timeout, hand the request to a
*responder*, keep the connection alive or close it. Parsing, limits and
error answers are corral's own (corral.http, corral.wsgi), so the wire
behaviour matches every other worker class.

Three pieces:

- :class:`ConnectionProtocol` turns transport events into buffered input
  and write flow control. It never parses: bytes wait in it until the
  current owner of the parser asks for them, which bounds buffering
  (reading pauses past :data:`READ_HIGH_WATER`) and lets a pool thread own
  the parser for the length of one request.
- :class:`AsyncHttpConnection` is the request loop on the loop thread.
- A responder answers one request. :class:`WsgiThreadResponder` runs a WSGI
  app in a thread pool through the blocking :class:`HttpConnection` code,
  over a :class:`ThreadBridge`, the Transport whose bytes the loop moves; a
  worker plugin may bring its own responder (tornado's native apps).

On shutdown the worker calls :meth:`AsyncHttpConnection.stop_when_idle` on
every connection, which applies :mod:`corral.serve.retirement`: a
connection waiting for a request keeps waiting, at most the keep-alive
timeout, and serves one that arrives with ``Connection: close``; one in the
middle of a request finishes it, answering with ``Connection: close``
unless its client's next request is already here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, cast

from corral.http import errors as E
from corral.http.parser import (
    ClientDisconnected,
    RequestHead,
    RequestParser,
)
from corral.serve.retirement import (
    CLOSE_LINGER,
    CLOSE_LINGER_BYTES,
    next_request_deadline,
    next_request_in_hand,
)
from corral.serve.threads import RequestThreads
from corral.serve.transport import ClientTimeout
from corral.serve.waits import Drain, HeadWait
from corral.workers.connection import HttpConnection, proxy_trusted
from corral.workers.watchdog import clock_stopper
from corral.wsgi.environ import EnvironContext
from corral.wsgi.response import error_response

if TYPE_CHECKING:

    from corral.workers.base import Worker
    from corral.workers.watchdog import RequestWatchdog

#: Unparsed input a connection may hold before it stops reading from the
#: socket: enough for a large head plus a good slice of body or pipelined
#: requests, small enough that 1000 connections cannot hold much memory.
READ_HIGH_WATER: Final = 256 * 1024
#: Response bytes a pool thread may hand to the loop before it waits for the
#: socket to take them: a typical response never waits, a large or slow one
#: is paced by the client instead of piling up in memory.
THREAD_SEND_HIGH_WATER: Final = 256 * 1024
#: A file goes out through loop.sendfile in pieces of at most this many
#: bytes; each finished piece is progress, and a transfer with none for the
#: write timeout (--timeout) is given up, as a socket.sendfile wait would be.
#: Large, because each piece costs a round of loop.sendfile's set-up.
SENDFILE_PIECE: Final = 1 << 20
#: A request body of at most this many bytes (by its Content-Length) is
#: gathered on the loop before a pool thread takes the request: the thread
#: then reads it in one take instead of one loop round trip per piece
#: (tornado `post1m`: 594 against 647 µs of server CPU per request), and
#: a slow upload holds no thread while it trickles in.
GATHER_MAX: Final = 4 << 20
#: Body bytes a worker gathers at once, all requests together; past it, a
#: body streams to its thread as it arrives, as larger ones always do.
GATHER_BUDGET: Final = 64 << 20
#: A body that stops arriving for this long goes to its thread as it is
#: (the thread then waits for the rest under --header-timeout, as always).
GATHER_PATIENCE: Final = 1.0
#: A closed connection whose client does not read the rest of the response
#: is dropped after this long without one (when the worker has no --timeout).
DEFAULT_CLOSE_LINGER: Final = 30.0
#: A wait with no timeout still needs a deadline for loop.call_at.
_NO_DEADLINE: Final = 24 * 3600.0

Reader = Callable[[bytes | None], object]


def _resolve(fut: asyncio.Future[Any], value: object) -> None:
    # A task cancelled at shutdown leaves its future cancelled; data that
    # arrives later must not raise InvalidStateError inside the transport.
    if not fut.done():
        fut.set_result(value)


class ConnectionProtocol(asyncio.Protocol):
    """Transport events of one connection: buffered input, write flow control, loss.

    Input waits here until the parser's owner takes it (:meth:`take`) or
    waits for it (:meth:`wait_data`). Every method runs on the loop thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._reading_paused = False
        self._reader: Reader | None = None
        self._reader_timer: asyncio.TimerHandle | None = None
        #: The peer sent EOF or the connection is gone.
        self.eof = False
        #: The connection is gone: nothing more can be written.
        self.closed = False
        self.write_paused = False
        self._writable: list[Callable[[bool], object]] = []
        #: Called once when the connection is lost (a responder's close callback).
        self.on_lost: Callable[[], object] | None = None
        #: Input held before reading pauses; raised by :meth:`gather` for one body.
        self._high_water = READ_HIGH_WATER
        #: A :meth:`gather` under way: its target size and callback.
        self._gather: tuple[int, Callable[[bool], object]] | None = None
        self._gather_timer: asyncio.TimerHandle | None = None
        #: Closing gracefully (:meth:`linger_close`): input is dropped; how much more may come.
        self._discard: int | None = None
        #: Keep the transport open after the client's EOF (a half-close); a
        #: TLS transport cannot, and asyncio warns when asked to.
        self.keep_half_open = True

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._discard is not None:
            self._discard -= len(data)
            if self._discard < 0:
                self.transport.close()
            return
        reader = self._reader
        if reader is not None:
            # Someone is waiting: hand the bytes over without buffering.
            self._reader = None
            if self._reader_timer is not None:
                self._reader_timer.cancel()
            reader(data)
            return
        self._pending.append(data)
        size = self._pending_size = self._pending_size + len(data)
        gather = self._gather
        if gather is not None and size >= gather[0]:
            self._end_gather(True)
        if size >= self._high_water and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self._discard is not None:
            return False  # closing gracefully and the client has closed too: done
        self.eof = True
        self._wake_reader(b"")
        self._end_gather(True)
        # Keep the transport open: a client may half-close after its request
        # and still wait for the answer.
        return self.keep_half_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.closed = True
        self._wake_reader(b"")
        self._end_gather(True)
        waiting, self._writable = self._writable, []
        for callback in waiting:
            callback(False)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiting, self._writable = self._writable, []
        for callback in waiting:
            callback(True)

    # -- input ---------------------------------------------------------------------

    def take(self) -> bytes | None:
        """What arrived since the last take: bytes, ``b""`` at end of stream, None if nothing yet."""
        pending = self._pending
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            self._pending_size = 0
            if self._reading_paused and not self.closed:
                self._reading_paused = False
                self.transport.resume_reading()
            return data
        if self.eof:
            return b""
        return None

    def wait_data(self, reader: Reader, deadline: float) -> None:
        """Call ``reader`` once: with input as :meth:`take` gives it, or None at ``deadline`` (loop time)."""
        data = self.take()
        if data is not None:
            reader(data)
            return
        self._reader = reader
        self._reader_timer = self.loop.call_at(deadline, self.stop_waiting)

    def gather(self, size: int, patience: float, callback: Callable[[bool], object]) -> None:
        """``callback(True)`` once ``size`` bytes wait here; False if none come for ``patience`` s.

        A request body gathered on the loop is read by its pool thread in
        one take instead of one loop round trip per piece. End of stream
        counts as done: the reader then finds out what is missing.
        """
        if self._pending_size >= size or self.eof:
            callback(True)
            return
        self._gather = (size, callback)
        self._high_water = max(size, READ_HIGH_WATER)
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self._gather_timer = self.loop.call_later(patience, self._check_gather, self._pending_size, patience)

    def _check_gather(self, seen: int, patience: float) -> None:
        if self._pending_size == seen:
            self._end_gather(False)  # nothing for `patience` s: the thread reads the rest as it comes
        else:
            self._gather_timer = self.loop.call_later(patience, self._check_gather, self._pending_size,
                                                      patience)

    def _end_gather(self, done: bool) -> None:
        gather = self._gather
        if gather is None:
            return
        self._gather = None
        self._high_water = READ_HIGH_WATER
        if self._gather_timer is not None:
            self._gather_timer.cancel()
            self._gather_timer = None
        gather[1](done)

    @property
    def pending_size(self) -> int:
        return self._pending_size

    def stop_waiting(self) -> None:
        """End a :meth:`wait_data` now, as if its deadline had passed."""
        self._wake_reader(None)

    def shorten_wait(self, deadline: float) -> None:
        """Move the deadline of a :meth:`wait_data` under way to ``deadline`` if that is sooner."""
        timer = self._reader_timer
        if self._reader is not None and timer is not None and timer.when() > deadline:
            timer.cancel()
            self._reader_timer = self.loop.call_at(deadline, self.stop_waiting)

    def _wake_reader(self, value: bytes | None) -> None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            if self._reader_timer is not None:
                self._reader_timer.cancel()
            reader(value)

    def linger_close(self, linger: float) -> None:
        """Close as RFC 9112 section 9.6 says: shut the write side, drop input until the client closes.

        The transport sends what it holds, then its FIN (``write_eof``);
        whatever the client still sends is dropped, up to CLOSE_LINGER_BYTES,
        and the transport closes when the client does, or after ``linger``
        seconds. Unread input at a plain close would make the kernel reset
        the connection, which can destroy the response not yet read.
        """
        transport = self.transport
        self._pending.clear()
        self._pending_size = 0
        self._discard = CLOSE_LINGER_BYTES
        if self.eof:
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        transport.write_eof()
        self.loop.call_later(linger, transport.close)

    # -- output --------------------------------------------------------------------

    def when_writable(self, callback: Callable[[bool], object]) -> None:
        """``callback(True)`` once the transport takes more output; ``callback(False)`` if it never will."""
        if self.closed:
            callback(False)
        elif not self.write_paused:
            callback(True)
        else:
            self._writable.append(callback)


class Responder(Protocol):
    """Answers one request on an :class:`AsyncHttpConnection` (a WSGI app, a tornado app, ...)."""

    async def handle(self, conn: AsyncHttpConnection, head: RequestHead) -> bool:
        """Run the request whose head was read and send its response.

        Reads the body through the connection's parser as needed, and before
        returning True consumes whatever body the app left unread (see
        :meth:`AsyncHttpConnection.drain`). Returns True if the connection may
        serve another request. Protocol errors found while reading the body
        are answered here; the worker counts the request here
        (``worker.request_done()``).
        """
        ...

    def connection_closed(self, conn: AsyncHttpConnection) -> None:
        """The connection ended; forget any state kept for it."""
        ...


class AsyncHttpConnection:
    """One client connection on the loop thread, served until it closes or must close.

    :param keepalive: seconds to wait for the next request; 0 closes after each response.
    """

    __slots__ = (
        "_head_wait",
        "env",
        "header_timeout",
        "keepalive",
        "loop",
        "parser",
        "peer",
        "protocol",
        "responder",
        "state",
        "transport",
        "waiting",
        "worker",
    )

    def __init__(
        self,
        worker: Worker,
        protocol: ConnectionProtocol,
        peer: Any,
        env: EnvironContext,
        keepalive: float,
        responder: Responder,
    ) -> None:
        self.worker = worker
        self.protocol = protocol
        self.loop = protocol.loop
        self.transport = protocol.transport
        self.peer = peer
        self.env = env
        self.keepalive = keepalive
        self.responder = responder
        self.parser = RequestParser(worker.limits, proxy_trusted=proxy_trusted(worker, peer))
        self.header_timeout = worker.cfg.header_timeout
        #: While waiting for the first byte of a request: "fresh" on a new
        #: connection, "idle" between two requests; None otherwise.
        self.waiting: str | None = None
        #: Whatever the responder keeps for this connection.
        self.state: Any = None
        self._head_wait: HeadWait | None = None

    # -- I/O -------------------------------------------------------------------------

    async def receive(self, deadline: float) -> bool:
        """Feed the parser what arrives by ``deadline`` (loop time); False if nothing did."""
        data = self.protocol.take()
        if data is None:
            fut: asyncio.Future[bytes | None] = self.loop.create_future()
            self.protocol.wait_data(functools.partial(_resolve, fut), deadline)
            data = await fut
            if data is None:
                return False
        self.parser.feed(data)
        return True

    def send(self, data: bytes) -> None:
        """Queue bytes for the client; never blocks (see ``protocol.when_writable`` for pacing)."""
        if not self.transport.is_closing():
            self.transport.write(data)

    def send_error(self, exc: E.HTTPError) -> None:
        """Answer a protocol error (the caller then closes the connection)."""
        self.worker.log.info("%s from %s: %s", exc.status, self.peer_str(), exc.detail)
        self.send(error_response(exc))
        stats = self.worker.stats
        if stats is not None:
            stats.answered(exc.status)

    def next_request_here(self) -> bool:
        """Bytes of a request after the current one have arrived (in the parser or the protocol)."""
        protocol = self.protocol
        return next_request_in_hand(self.parser, lambda: protocol.pending_size > 0)

    def may_keep_alive(self) -> bool:
        """Asked when a response head is about to be made: keep-alive or close."""
        # corral.serve.retirement, rule 2; the check of the input only once
        # retiring (it may cost a system call), so serving pays nothing for it.
        return self.worker.alive or self.next_request_here()

    def close(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        protocol = self.protocol
        if (self.parser.has_unread or protocol.pending_size) and not protocol.eof \
                and transport.can_write_eof():
            protocol.linger_close(CLOSE_LINGER)
            return
        transport.close()
        if transport.get_write_buffer_size():
            # close() waits for the buffer to drain; a client that never reads
            # must not keep the socket (and a connection slot) forever.
            linger = self.worker.cfg.timeout or DEFAULT_CLOSE_LINGER
            self.loop.call_later(linger, transport.abort)

    def stop_when_idle(self) -> None:
        """The worker retires: a wait for a request lasts no longer than the keep-alive timeout.

        The connection is not cut: a request on its way is served, with
        ``Connection: close`` (corral.serve.retirement, rule 3). A request
        under way is finished first.
        """
        if self.waiting is not None:
            cutoff = next_request_deadline(float("inf"), retiring_since=self.loop.time(),
                                           keepalive=self.keepalive)
            self.protocol.shorten_wait(cutoff)

    def peer_str(self) -> str:
        if isinstance(self.peer, tuple):
            return f"{self.peer[0]}:{self.peer[1]}"
        return "unix socket"

    async def drain(self) -> bool:
        """Read and drop the rest of the request body; False if the connection must close."""
        drain = Drain(self.parser)
        while (verdict := drain.step()) is None:
            if not await self.receive(drain.need_deadline(self.loop.time())):
                return False
        return verdict

    # -- the request loop ------------------------------------------------------------

    async def serve(self) -> None:
        """Serve requests until the connection closes; never raises for client errors."""
        first = True
        try:
            while True:
                try:
                    head = await self.next_head(first)
                except E.HTTPError as exc:
                    self.send_error(exc)
                    return
                except ClientDisconnected:
                    return
                if head is None:
                    return
                first = False
                try:
                    keep = await self.responder.handle(self, head)
                except (E.HTTPError, ClientDisconnected, ConnectionError):
                    # A framing error or a disconnect while dropping the unread
                    # body: the response is out, so just close.
                    return
                # Kept even while retiring: the response offered keep-alive,
                # so the next request may be on its way (see stop_when_idle).
                if not keep or self.protocol.closed:
                    return
                self.parser.start_next()
        finally:
            self.waiting = None
            self.close()
            self.responder.connection_closed(self)

    async def next_head(self, first: bool) -> RequestHead | None:
        """The next request head, or None when the connection should just close (corral.serve.waits)."""
        protocol = self.protocol
        wait = self._head_wait
        if wait is None or wait.parser is not self.parser:
            wait = self._head_wait = HeadWait(self.parser, self.loop.time,
                                              header_timeout=self.header_timeout, keepalive=self.keepalive)
        wait.begin(first, self.worker.retiring_since)
        while not wait.step():
            data = protocol.take()
            if data is not None:
                self.parser.feed(data)
                continue
            self.waiting = None if wait.started else "fresh" if first else "idle"
            try:
                got = await self.receive(wait.deadline)
            finally:
                self.waiting = None
            if not got:
                wait.timed_out()
                return None
        return wait.head


# -- WSGI apps in a thread pool ----------------------------------------------------------


class LoopInbox:
    """Callbacks from pool threads to one event loop, with one wake-up per batch.

    ``loop.call_soon_threadsafe`` writes a byte to the loop's self-pipe on
    every call. A request answered from a pool thread made two (its bytes,
    then its result): a tenth of a tornado worker's CPU on hello world
    (py-spy). Here a callback queued while a drain is already on its way to
    the loop rides along with it, so a busy loop is woken once per batch.
    Callbacks run in the order they were queued.

    Something a thread schedules on the loop by another way (a sendfile
    coroutine, an executor's result) may run before a drain that another
    thread is still about to schedule; code on the loop that must see the
    thread's earlier callbacks first calls :meth:`flush`. (An earlier
    version held a lock across the scheduling instead: the threads then
    queued up on that lock, about 20 µs a request.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        #: A drain is scheduled (or about to be) and has not started. Read
        #: and written without a lock: a thread that reads a stale True
        #: appended its item before the drain clears the flag, so that drain
        #: (or a flush) runs it; a stale False costs one extra, empty drain.
        self._scheduled = False

    def call(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop; from any thread (RuntimeError once the loop is closed)."""
        self._items.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:  # on the loop
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """On the loop: run every callback queued so far, now.

        Only those: threads that keep queueing meanwhile cannot hold the
        loop here (what they add gets its own drain).
        """
        items = self._items
        for _ in range(len(items)):
            fn, args = items.popleft()
            try:
                fn(*args)
            except Exception as exc:  # as the loop does for its own callbacks
                self._loop.call_exception_handler(
                    {"message": f"Exception in callback {fn!r}", "exception": exc})


class ThreadBridge:
    """The :class:`~corral.serve.transport.Transport` of a request run in a pool thread.

    Blocking calls from the thread become work on the loop: ``recv`` waits
    for the connection's protocol to deliver input, ``send`` hands bytes to
    the transport (waiting only once more than :data:`THREAD_SEND_HIGH_WATER`
    bytes are still unsent, so a slow client paces the app), ``sendfile``
    runs ``loop.sendfile``. Waits end at their deadline (recv) or after
    ``--timeout`` without progress (send, sendfile) with ClientTimeout, and
    stop the request's watchdog clock: the request waits, it is not stuck.

    The loop never touches the parser while a thread runs a request (the
    connection's coroutine is awaiting the thread), so the thread may use it
    directly; input stays in the protocol until the thread asks. The loop
    owns the socket: the bridge never closes it.
    """

    #: The loop closes the connection once the thread hands it back.
    closes_early = False
    closed = False

    def __init__(self, conn: AsyncHttpConnection, inbox: LoopInbox) -> None:
        self._conn = conn
        self._loop = conn.loop
        self._inbox = inbox
        self._call = inbox.call
        self._protocol = conn.protocol
        self._write_timeout = conn.worker.write_timeout or None
        self._lock = threading.Lock()
        #: Built on ``_lock`` the first time a thread must wait for the client
        #: to read (most connections never do: a Condition costs 2 µs to make).
        self._cond: threading.Condition | None = None
        #: Bytes handed to the loop that the transport has not yet taken.
        self._unsent = 0
        self.client_wait = clock_stopper(conn.worker.watchdog) or contextlib.nullcontext

    def recv(self, deadline: float) -> bytes:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise ClientTimeout
        timeout = min(timeout, _NO_DEADLINE)
        answer: concurrent.futures.Future[bytes | None] = concurrent.futures.Future()
        # In the loop's own clock (uvloop's need not be time.monotonic's).
        self._call(self._protocol.wait_data, answer.set_result, self._loop.time() + timeout)
        # The loop answers by the deadline; the margin only guards against a
        # loop that has stopped for good.
        with self.client_wait():
            data = answer.result(timeout + 5.0)
        if data is None:
            raise ClientTimeout
        return data

    def send(self, data: bytes) -> None:
        if self._protocol.closed:
            raise ConnectionResetError("the client closed the connection")
        with self._lock:
            self._unsent += len(data)
            unsent = self._unsent
        self._call(self._write, data)
        if unsent > THREAD_SEND_HIGH_WATER:
            # A slow reader paces the app: its request is waiting, not stuck.
            with self.client_wait(), self._lock:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition(self._lock)
                if not cond.wait_for(self._may_send, self._write_timeout):
                    raise ClientTimeout
            if self._protocol.closed:
                raise ConnectionResetError("the client closed the connection")

    def send_last(self, data: bytes) -> None:
        self.send(data)  # never called (closes_early is False); the loop closes

    def _may_send(self) -> bool:
        return self._unsent <= THREAD_SEND_HIGH_WATER or self._protocol.closed

    def _write(self, data: bytes) -> None:  # on the loop
        self._conn.send(data)
        self._protocol.when_writable(functools.partial(self._taken, len(data)))

    def _taken(self, size: int, writable: bool) -> None:  # on the loop
        with self._lock:
            self._unsent -= size
            if self._cond is not None:
                self._cond.notify()

    def sendfile(self, file: IO[bytes], fd: int, offset: int, count: int) -> int:
        if not count:
            return 0
        # Bytes handed earlier reach the transport first: _sendfile flushes
        # the inbox, and loop.sendfile waits for the buffer to empty.
        progress = [0]
        future = asyncio.run_coroutine_threadsafe(self._sendfile(file, offset, count, progress), self._loop)
        timeout = self._write_timeout
        seen = -1
        # Waiting for a (slow) client to read: the request is not stuck. It is
        # given up once a whole --timeout passes without a piece going out.
        with self.client_wait():
            while True:
                try:
                    return future.result(timeout)
                except concurrent.futures.TimeoutError:
                    if progress[0] == seen:
                        future.cancel()
                        raise ClientTimeout from None
                    seen = progress[0]

    async def _sendfile(self, file: IO[bytes], offset: int, count: int, progress: list[int]) -> int:
        self._inbox.flush()
        transport = self._conn.transport
        total = 0
        while total < count:
            if transport.is_closing():
                raise ConnectionResetError("the client closed the connection")
            piece = min(SENDFILE_PIECE, count - total)
            sent = await self._loop.sendfile(transport, file, offset + total, piece)
            total += sent
            progress[0] = total
            if sent < piece:
                break  # the end of the file
        return total

    def has_input(self) -> bool:
        # The loop reads the socket as bytes come: what arrived waits in the protocol.
        return self._protocol.pending_size > 0

    def close(self, unread: bool) -> None:
        """The loop owns the real socket; the connection's coroutine closes it."""


#: The pool a WsgiThreadResponder takes besides a concurrent.futures
#: Executor: callables, every thread started at once (corral.serve.threads).
RequestThreadPool = RequestThreads[Callable[[], None]]


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    # On the loop. The awaiting coroutine may have been cancelled meanwhile
    # (the worker stopping): then nobody wants the result.
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class WsgiThreadResponder:
    """Runs a WSGI app for each request in a bounded thread pool, off the loop.

    One slow request occupies one pool thread, never the loop. In the thread
    the request goes through the same :meth:`HttpConnection.handle` as in the
    blocking workers (environ, wsgi.input, start_response, file wrapper,
    hooks, access log, draining), over a :class:`ThreadBridge`. The watchdog
    notes each request so that one stuck in its thread past ``--timeout``
    gets the worker replaced (the loop would otherwise keep beating).
    """

    def __init__(
        self,
        worker: Worker,
        executor: concurrent.futures.Executor | RequestThreadPool,
        watchdog: RequestWatchdog,
    ) -> None:
        self.worker = worker
        self.executor = executor
        self.watchdog = watchdog
        self._inbox: LoopInbox | None = None  # made on the loop by the first handle()
        #: Body bytes being gathered on the loop or waiting for their thread.
        self._gathered = 0

    async def handle(self, conn: AsyncHttpConnection, head: RequestHead) -> bool:
        executor = self.executor
        loop = conn.loop
        inbox = self._inbox
        if inbox is None:  # made here, on the loop, before any thread needs it
            inbox = self._inbox = LoopInbox(loop)
        if not isinstance(executor, RequestThreads):
            try:
                return await loop.run_in_executor(executor, self._handle_in_thread, conn, head, inbox)
            finally:
                # The executor's result came by its own way: the response's
                # last bytes may still wait in the inbox. They go out before
                # the connection is reused or closed.
                inbox.flush()
        done: asyncio.Future[bool] = loop.create_future()

        def run() -> None:  # in a pool thread
            result: bool | None = None
            error: BaseException | None = None
            try:
                result = self._handle_in_thread(conn, head, inbox)
            except BaseException as exc:  # handed to the awaiting coroutine
                error = exc
            try:
                inbox.call(_settle, done, result, error)
            except RuntimeError:
                pass  # the loop is closed: the worker is exiting

        length = head.content_length
        if length and not head.expect_continue:
            # A client that sent Expect: 100-continue waits for the app to
            # start reading before it sends the body: never gathered.
            need = length - conn.parser.unread_size
            if need > conn.protocol.pending_size and length <= GATHER_MAX \
                    and self._gathered + length <= GATHER_BUDGET:
                self._gathered += length
                try:
                    await self._gather(conn, need)
                    executor.put(run)
                    return await done
                finally:
                    self._gathered -= length
        executor.put(run)
        return await done

    @staticmethod
    async def _gather(conn: AsyncHttpConnection, size: int) -> None:
        """Let ``size`` bytes of body arrive on the loop (or stop waiting once they stall)."""
        gathered: asyncio.Future[bool] = conn.loop.create_future()
        conn.protocol.gather(size, GATHER_PATIENCE, functools.partial(_resolve, gathered))
        await gathered

    def _handle_in_thread(self, conn: AsyncHttpConnection, head: RequestHead, inbox: LoopInbox) -> bool:
        blocking: HttpConnection | None = conn.state
        if blocking is None:
            blocking = HttpConnection(conn.worker, ThreadBridge(conn, inbox), conn.peer, conn.env,
                                      conn.keepalive, conn.parser)
            conn.state = blocking
        self.watchdog.started(head)
        try:
            return blocking.handle(head)
        finally:
            self.watchdog.finished()

    def connection_closed(self, conn: AsyncHttpConnection) -> None:
        conn.state = None

