"""How a worker retires without losing a request: the one policy every worker class follows.

A worker retires when the arbiter sends TERM (a reload, the old generation
after an upgrade, TTOU or WINCH, a pool resized or removed, a graceful
shutdown) or after it asked to be replaced (``--max-requests``: see
:meth:`corral.workers.base.Worker.request_recycle`; its replacement is
serving before that TERM comes). From the moment ``worker.alive`` goes false:

1. It stops accepting at once. Its listeners close; the arbiter and the
   other workers keep theirs, so connections still queued in the kernel
   are taken by them. When the server stops for good (a shutdown, a
   listener no pool uses after a reload), nobody would: closing the last
   copy of a listener resets every connection in its queue, whose clients
   have mostly sent their requests. So the arbiter first marks such a
   listener (Listener.refuse_new_connections: over TCP no new handshake
   completes and a new client is refused a second later; a unix socket
   loses its file, so a new client finds none), and a retiring
   worker that finds the mark takes what is queued
   (:func:`queued_connections`) and serves it before closing its copy.
2. Every request already received is served: one in flight, ones pipelined
   behind it, ones waiting in the kernel's receive buffer of an open
   connection. A response offers keep-alive only while more input from its
   client has already arrived (each connection's ``may_keep_alive``: the
   worker serves, or the bytes after the current request are here); the
   last response on each connection says ``Connection: close``.
3. A connection between two requests is not cut. HTTP/1.1 gives a server
   one way to tell a client to send nothing more, a response that says
   ``Connection: close``, and a bare close can meet a request already on its
   way: the client then sees its connection closed under a request it sent,
   and will not retry it if it is a POST. So the connection keeps the wait
   it had (its keep-alive timeout; a fresh one no longer than that either,
   :func:`next_request_deadline`), and a request that arrives meanwhile is
   served and answered with ``Connection: close``. The one close that can
   still meet a request in flight is the one at the end of the keep-alive
   timeout, which happens whether the worker retires or not: the race
   RFC 9112 section 9.3.1 tells clients to expect on idle connections.
4. A connection closed while input from its client is unread is closed
   gracefully (RFC 9112 section 9.6): the write side is shut down first, and
   what the client still sends is read and dropped for up to
   :data:`CLOSE_LINGER` seconds. Closing a socket with unread input makes the
   kernel reset the connection, and a reset can destroy the response the
   client has not read yet.
5. The drain ends when no connection is left or at ``--graceful-timeout``,
   whichever comes first. Requests still running then are logged, each with
   its method, target and age (:meth:`InFlight.report`), and the worker exits.

Each worker class applies these rules in its own loop; the decisions
themselves are the functions here, so that they are made in one place.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from corral.http.parser import RequestHead
from corral.sockets import ACCEPT_RESOURCE_ERRNOS

if TYPE_CHECKING:
    import logging
    import socket
    from collections.abc import Callable, Iterator

    from corral.http.parser import RequestParser
    from corral.sockets import Acceptor, Listener

#: While retiring, a fresh connection (accepted, no byte of a request yet)
#: waits at least this long for its first request. Its client connected
#: while the worker was still accepting, usually a moment before, and sends
#: within a round trip; with ``--keep-alive 0`` (the sync class) it would
#: otherwise get no time at all.
FIRST_REQUEST_GRACE: Final = 1.0
#: A graceful close reads and drops what the client still sends for at most
#: this long after shutting down the write side. A client told
#: ``Connection: close`` closes within a round trip; one that keeps sending
#: must not keep the socket (or a sync worker) for long.
CLOSE_LINGER: Final = 2.0
#: ...and at most this much: more than a few pipelined requests' worth of
#: input after the last response is not a client waiting for an answer.
CLOSE_LINGER_BYTES: Final = 1 << 20
#: The graceful-timeout report lists at most this many requests, oldest first.
REPORT_MAX: Final = 20


def closing_for_good(listeners: list[Listener]) -> list[Listener]:
    """Rule 1: the listeners the arbiter marked (a shutdown): their queues are ours to empty."""
    return [lst for lst in listeners if lst.refuses_new_connections()]


def queued_connections(accept: Acceptor, room: int) -> Iterator[tuple[socket.socket, object]]:
    """Rule 1: the connections queued in a marked listener, at most ``room``, accepted now.

    Called by a retiring worker just before it closes the listener. The
    mark lets no new connection in, so the queue only shrinks: what this
    yields is all that is left, or all this worker has room for (another
    worker takes the rest before closing its own copy).
    """
    for _ in range(room):
        try:
            yield accept()
        except (BlockingIOError, InterruptedError):
            return  # empty
        except OSError as exc:
            if exc.errno in ACCEPT_RESOURCE_ERRNOS:
                return  # out of descriptors: what is left goes to a worker that has some
            # This connection died in the queue (ECONNABORTED...): the next one.


def next_request_in_hand(parser: RequestParser, input_waiting: Callable[[], bool]) -> bool:
    """Rule 2's test: bytes of a request after the current one have arrived.

    Only once the current request is wholly received can a later byte be
    told to belong to the next one; then it is in the parser's buffer or
    still waiting for the connection to read it (``input_waiting``: the
    kernel's receive queue, an asyncio protocol's buffer), which is asked
    last because it may cost a system call.
    """
    return parser.message_received and (parser.has_unread or input_waiting())


def next_request_deadline(deadline: float, *, retiring_since: float | None, keepalive: float) -> float:
    """When to give up waiting for the first byte of a connection's next (or first) request.

    :param deadline: the wait's own deadline: the keep-alive timeout after a
        response, ``--header-timeout`` on a fresh connection.
    :param retiring_since: when the worker began to retire (``time.monotonic()``),
        None while it serves.
    :param keepalive: ``--keep-alive`` in seconds.

    While retiring, no such wait lasts longer than the keep-alive timeout
    (at least :data:`FIRST_REQUEST_GRACE`) from the start of the retirement:
    a kept-alive connection keeps exactly the wait it had, a fresh one gets
    no longer than that. The worker's graceful deadline bounds it anyway.
    """
    if retiring_since is None:
        return deadline
    return min(deadline, retiring_since + max(keepalive, FIRST_REQUEST_GRACE))


class InFlight(dict[object, tuple[RequestHead, float]]):
    """The requests a worker is running, to say which ones a graceful timeout cut.

    A dict from the connection (one request at a time on each) to the
    request's head and its start (``time.monotonic()``). It is a dict, not
    a wrapper around one, because it is written twice per request on every
    class: ``in_flight[conn] = (head, started)`` and
    ``in_flight.pop(conn, None)`` are plain dict operations, no Python call
    (half the cost of :meth:`begin`/:meth:`end`, which do the same for
    workers that prefer names). Entries are set and removed by whichever
    thread or greenlet serves the connection: a store and a delete of
    distinct keys need no lock under the GIL, and :meth:`report` reads a copy.
    """

    __slots__ = ()

    def begin(self, key: object, head: RequestHead) -> None:
        self[key] = (head, time.monotonic())

    def end(self, key: object) -> None:
        self.pop(key, None)

    def describe(self, now: float | None = None) -> list[str]:
        """``"GET /path (running 3.2 s)"`` for each request, oldest first."""
        now = time.monotonic() if now is None else now
        running = sorted(self.copy().values(), key=lambda entry: entry[1])
        return [f"{head.method} {head.target} (running {now - started:.1f} s)"
                for head, started in running]

    def report(self, log: logging.Logger, pid: int) -> None:
        """Log the requests still running when the graceful timeout ended (nothing if none)."""
        lines = self.describe()
        if not lines:
            return
        more = f"\n  ... and {len(lines) - REPORT_MAX} more" if len(lines) > REPORT_MAX else ""
        log.warning("Worker %s: graceful_timeout is over; %s request(s) still running are cut:\n  %s%s",
                    pid, len(lines), "\n  ".join(lines[:REPORT_MAX]), more)
