"""A connection whose heads are read by the I/O loop and whose requests run in a pool thread.

The connection belongs to one side at a time, and the hand-over is the only
synchronisation it needs:

- the loop owns it while it waits for a complete request head: its socket
  is non-blocking and armed in the loop's poller, and
  :meth:`LoopConnection.read_head` is called when it is readable;
- a pool thread owns it from the moment the loop submits it (no longer
  registered) until the thread hands it back: the thread runs
  :meth:`LoopConnection.run_requests`, which reads the body and writes the
  response with blocking calls through the shared
  :class:`~corral.workers.connection.HttpConnection` code.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from corral.http import errors as E
from corral.http.parser import NEED_DATA, RequestHead
from corral.serve.transport import SocketTransport, is_ssl_want
from corral.workers.connection import RECV_SIZE, HttpConnection

if TYPE_CHECKING:
    import socket

    from corral.http.parser import EndOfMessage, ParserSignal
    from corral.workers.watchdog import RequestWatchdog


class LoopConnection(HttpConnection):
    #: Always over an OS socket: the loop polls it.
    sock: socket.socket
    transport: SocketTransport
    #: time.monotonic() by which the loop closes it (or answers 408) while
    #: the loop watches it; negative otherwise. See corral.workers.selector_loop.Deadlines.
    deadline: float = -1.0
    #: Whether the loop already started the header_timeout of the head in progress.
    head_started: bool = False
    #: The complete head the loop read, for the thread to serve.
    head: RequestHead | None = None
    #: A protocol error (or the 408) the loop found, for the thread to answer.
    error: E.HTTPError | None = None
    #: False once the socket is closed.
    open: bool = True
    #: Counted out of the loop's open connections (see SelectorLoop.count_closed).
    counted: bool = False
    #: Waiting for readiness in the loop's poller (see corral.workers.poller).
    armed: bool = False
    #: The socket's fd as registered with the poller, -1 when not registered.
    fd: int = -1
    #: TLS is on and the handshake (with any PROXY header before it) is still
    #: to do: the loop hands the connection to whoever runs requests first.
    handshake_due: bool = False
    #: Back from its handshake: its first head is due within header_timeout.
    first_head_due: bool = False

    # -- in the loop thread ----------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Owned by the loop, waiting for (the rest of) a head."""
        return self.deadline >= 0

    def read_head(self) -> RequestHead | bytes | EndOfMessage | ParserSignal:
        """Read what the (non-blocking) socket holds and return the parser's next event.

        Returns a :class:`RequestHead` once complete, ``NEED_DATA`` to wait,
        ``CONNECTION_CLOSED`` when the client closed between requests (never
        body events: the loop only calls this between messages). Raises
        :class:`~corral.http.errors.HTTPError` (answer it, then close) and
        :class:`~corral.http.parser.ClientDisconnected` (just close).
        """
        sock = self.sock
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            # Nothing new (a connection tried right after accept): the
            # parser said NEED_DATA last time and still would.
            return NEED_DATA
        except OSError as exc:
            if self.transport.tls and is_ssl_want(exc):
                return NEED_DATA  # a TLS record not complete yet
            data = b""  # reset by the peer: same as a close for the parser
        if self.transport.tls and data:
            # Decrypted bytes OpenSSL holds are no event for the poller: take them now.
            while sock.pending():  # type: ignore[attr-defined]
                data += sock.recv(RECV_SIZE)
        self.parser.feed(data)
        return self.parser.next_event()

    # -- in a pool thread ------------------------------------------------------

    def run_requests(self, watchdog: RequestWatchdog | None) -> bool:
        """Serve the head the loop read, and any pipelined heads after it.

        :param watchdog: told when each request starts and ends; None when
            ``--timeout`` is 0 and nothing watches.
        :return: True to hand the connection back to the loop (it waits for
            more bytes), False to close it. Socket errors propagate: close.
        """
        if self.error is not None:
            exc, self.error = self.error, None
            self.send_error(exc)
            return False
        head = self.head
        self.head = None
        assert head is not None
        parser = self.parser
        while True:
            if watchdog is None:
                keep = self.handle(head)
            else:
                watchdog.started(head)
                try:
                    keep = self.handle(head)
                finally:
                    watchdog.finished()
            if not keep:
                return False
            parser.start_next()
            try:
                event = parser.next_event()
            except E.HTTPError as exc:
                self.send_error(exc)
                return False
            if type(event) is not RequestHead:
                # NEED_DATA: back to the loop; CONNECTION_CLOSED: close.
                return event is NEED_DATA
            # A pipelined head is already here: no reason to wait for the loop.
            head = event

    # -- either side (whichever owns it) ----------------------------------------

    def close(self) -> None:
        self.open = False
        with contextlib.suppress(OSError):
            self.sock.close()

    def close_gracefully(self) -> None:
        """In a pool thread: close without a reset (HttpConnection.close_gracefully)."""
        self.open = False
        super().close_gracefully()
