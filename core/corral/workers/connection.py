"""Serving one HTTP/1.1 connection: the request cycle, over a Transport.

Shared by every worker class: sync and gthread (blocking-style calls on
OS sockets), gevent (the same, waiting on its hub) and the asyncio workers'
WSGI requests in pool threads (over a thread bridge). The worker owns
accepting and concurrency; the transport (corral.serve.transport) moves
the bytes; this module owns the request loop on one connection: read a
head within the header timeout, run the app, write the response, drain
what the app left unread, and decide whether to keep the connection. All
protocol decisions are in corral.http, corral.serve and corral.wsgi.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any, ClassVar, cast

from corral.http import errors as E
from corral.http.parser import (
    NEED_DATA,
    ClientDisconnected,
    EndOfMessage,
    RequestHead,
    RequestParser,
)
from corral.serve.cycle import after_response, before_app, keeps_connection
from corral.serve.retirement import next_request_in_hand
from corral.serve.transport import RECV_SIZE, ClientTimeout, SocketTransport, Transport
from corral.serve.waits import Drain, HeadWait, body_wait_timed_out
from corral.workers.tls import start_tls
from corral.workers.watchdog import clock_stopper
from corral.wsgi.body import EMPTY_BODY, Body, EmptyBody
from corral.wsgi.environ import EnvironContext, build_environ
from corral.wsgi.filewrapper import FileWrapper
from corral.wsgi.response import (
    CONTINUE_100,
    Response,
    error_response,
    internal_error_response,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from corral.workers.base import Worker

#: Kept importable from here: plugins written against the first layout read them here.
__all__ = ["RECV_SIZE", "ClientTimeout", "HttpConnection", "proxy_trusted"]

#: What API-1 connections customised, and where it went.
_MOVED_TO_TRANSPORT: dict[str, str] = {
    "wait_io": "override wait() in a SocketTransport subclass and name it in transport_class",
    "cooperative": "pass a Transport of your own instead of the socket",
    "close_early": "a Transport says closes_early",
    "sendfile_cooperative": "a Transport of your own has sendfile()",
    "_sendfile": "SocketTransport.sendfile() sends files",
    "_linger": "SocketTransport.close() lingers",
}


class HttpConnection:
    """One client connection, served until it closes or must close.

    :param sock: an OS socket (served through :attr:`transport_class`) or a
        ready :class:`~corral.serve.transport.Transport` (a bridge, a test's).
    :param keepalive: seconds to wait for the next request; 0 closes after each response.
    """

    #: How an OS socket given to the constructor is served: a subclass of
    #: SocketTransport that replaces its ``wait`` (gevent waits on its hub).
    transport_class: ClassVar[type[SocketTransport]] = SocketTransport

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # An API-1 subclass that customised I/O here would now be bypassed
        # without a word (a cooperative framework's wait_io never called,
        # its scheduler blocked in poll): refuse it at import, naming the move.
        super().__init_subclass__(**kwargs)
        for name, instead in _MOVED_TO_TRANSPORT.items():
            if name in cls.__dict__:
                raise TypeError(f"{cls.__qualname__}.{name}: HttpConnection no longer has {name!r} "
                                f"(corral plugin API 2); {instead} (docs/writing-a-worker.md)")

    def __init__(
        self,
        worker: Worker,
        sock: socket.socket | Transport,
        peer: Any,
        env: EnvironContext,
        keepalive: float,
        parser: RequestParser | None = None,
    ) -> None:
        self.worker = worker
        self.peer = peer
        self.env = env
        self.keepalive = keepalive
        #: ``parser``: one the caller already reads the connection with (an
        #: event-loop worker's, handed to a pool thread); by default a new one.
        if parser is None:
            parser = RequestParser(worker.limits, proxy_trusted=proxy_trusted(worker, peer))
        self.parser = parser
        self.header_timeout = worker.header_timeout
        #: Stops the request's watchdog clock around waits for the client (None: no watchdog).
        self.client_wait = clock_stopper(worker.watchdog)
        # Told apart by what a Transport has, not by class: under gevent's
        # monkey-patching socket.socket is gevent's class, not the sockets'.
        if hasattr(sock, "send_last"):
            self.sock: socket.socket | None = None
            transport = cast("Transport", sock)
        else:
            #: The OS socket, for the loops that poll it (None over a bridge).
            self.sock = cast("socket.socket", sock)
            transport = self.transport_class(self.sock, worker.write_timeout, worker.notify,
                                             self.client_wait)
        self.transport = transport
        #: Bound once: the hot path's send.
        self._send = transport.send

    #: The response being served (set by handle()), and how its last bytes go:
    #: with _early, the final send closes the connection (Transport.send_last), once.
    _resp: Response
    _early: bool = False
    _last_sent: bool = False
    _head_wait: HeadWait | None = None

    # -- I/O: the transport moves the bytes ------------------------------------------

    def _recv(self, deadline: float) -> None:
        self.parser.feed(self.transport.recv(deadline))
        self.worker.notify()

    def _send_last(self, data: bytes) -> None:
        """Send the last bytes of a response after which the connection closes, and close it.

        Closing here, before the app's close() and the hooks run, is what
        makes holding the tail (MSG_MORE) free: nothing stands between it and
        the close, and a client that asked to close is not kept waiting for
        the app's cleanup. Only when every byte the client sent was read
        (closing with unread input makes the kernel reset the connection and
        throw away this response): a body the app left unread or a
        pipelined request already received makes this an ordinary send.
        """
        if (self._has_body and not self._body.complete) or self.parser.has_unread:
            if data:
                self._send(data)
            return
        self.transport.send_last(data)

    def next_head(self, first: bool) -> RequestHead | None:
        """The next request head, or None when the connection should just close (corral.serve.waits)."""
        wait = self._head_wait
        if wait is None or wait.parser is not self.parser:  # the first, or TLS made a new parser
            wait = self._head_wait = HeadWait(self.parser, time.monotonic,
                                              header_timeout=self.header_timeout, keepalive=self.keepalive)
        wait.begin(first, self.worker.retiring_since)
        while not wait.step():
            try:
                self._recv(wait.deadline)
            except ClientTimeout:
                wait.timed_out()
                return None
        return wait.head

    def _receive_body(self) -> bytes:
        parser = self.parser
        while True:
            event = parser.next_event()
            if type(event) is bytes:
                return event
            if event is NEED_DATA:
                try:
                    self._recv(time.monotonic() + self.header_timeout)
                except ClientTimeout:
                    raise body_wait_timed_out() from None
                continue
            assert isinstance(event, EndOfMessage)
            body = self._body
            if event.trailers and isinstance(body, Body):  # only a Body reads from here
                body.trailers = list(event.trailers)
            return b""

    def _drain(self) -> bool:
        """Read and drop the rest of the request body; False if the connection must close."""
        if self.parser.done:
            return True  # most calls: the body was read, or there was none
        drain = Drain(self.parser)
        while (verdict := drain.step()) is None:
            try:
                self._recv(drain.need_deadline(time.monotonic()))
            except ClientTimeout:
                return False
        return verdict

    # -- the request loop ----------------------------------------------------

    def serve(self) -> None:
        """Serve requests until the connection closes; never raises for client errors."""
        try:
            # TLS: handshake here, in this connection's own thread or greenlet.
            ctx = self.worker.ssl_context
            if ctx is None or start_tls(self, ctx):
                self._serve()
        except (ClientDisconnected, ConnectionError, TimeoutError, ClientTimeout):
            pass
        except OSError:
            pass
        finally:
            self.close_gracefully()

    def _serve(self) -> None:
        first = True
        while True:
            try:
                head = self.next_head(first)
            except E.HTTPError as exc:
                self.send_error(exc)
                return
            if head is None:
                return
            first = False
            if not self.handle(head):
                return
            # Retiring or not, a kept connection waits for its next request:
            # its last response offered keep-alive, so the client may have
            # sent one already (corral.serve.retirement, rule 3).
            self.parser.start_next()

    # -- closing and retirement ---------------------------------------------------

    def next_request_here(self) -> bool:
        """Bytes of a request after the current one have arrived (buffered, or in the kernel)."""
        return next_request_in_hand(self.parser, self.kernel_has_input)

    def kernel_has_input(self) -> bool:
        """Bytes from the client wait in the kernel (or, over a bridge, in the loop's buffer)."""
        return self.transport.has_input()

    def may_keep_alive(self) -> bool:
        """Asked when a response head is about to be made (_decide_keep_alive): keep-alive or close."""
        # corral.serve.retirement, rule 2; the check of the input only once
        # retiring (it may cost a system call), so serving pays nothing for it.
        return self.worker.alive or self.next_request_here()

    def close_gracefully(self) -> None:
        """Close the connection; with unread input, without a reset (Transport.close)."""
        self.transport.close(self.parser.has_unread)

    def send_error(self, exc: E.HTTPError) -> None:
        """Answer a protocol error (the caller then closes the connection)."""
        self.worker.log.info("%s from %s: %s", exc.status, self.peer_label(), exc.detail)
        self._send(error_response(exc))
        stats = self.worker.stats
        if stats is not None:
            stats.answered(exc.status)

    def handle(self, head: RequestHead) -> bool:
        """Run the app for one request whose head was read; True if the connection may serve another.

        Reads the body from the socket as the app asks for it, writes the
        response, then drains any unread body. After True, call
        ``parser.start_next()`` before reading the next head.
        """
        worker = self.worker
        started = time.monotonic()  # the access log's duration, the in-flight age
        # Whether the worker is retiring is asked when the head is made
        # (may_keep_alive): a request that arrived during the drain, or was
        # in flight when it began, then says Connection: close.
        keep = self.keepalive > 0 and head.keep_alive
        self._resp = resp = Response(head, keep)
        self._early = not head.keep_alive and self.transport.closes_early
        self._last_sent = False
        self._has_body = has_body = head.has_body
        continue_sent = False

        body: Body | EmptyBody
        if has_body:
            def send_continue() -> None:
                nonlocal continue_sent
                if head.expect_continue and not resp.headers_sent:
                    self._send(CONTINUE_100)
                    continue_sent = True

            body = Body(self._receive_body, send_continue)
        else:
            body = EMPTY_BODY
        self._body = body
        if head.dropped:
            worker.log.debug("dropped header fields with '_': %s", ", ".join(head.dropped))
        result = None
        environ: dict[str, Any] = {}
        in_flight = worker.in_flight
        in_flight[self] = (head, started)
        failed = 0  # the 500 corral answered for the app, if it had to
        try:
            proxied = self.parser.proxy
            environ = build_environ(head, self.env, body, self.peer,
                                    client=proxied.source if proxied is not None else None)
            if worker.pre_request is not None:
                before_app(worker, head, environ)
            result = worker.wsgi(environ, self.start_response)
            if isinstance(result, FileWrapper) and not resp.headers_sent:
                self._send_file(resp, result)
            else:
                if type(result) in (list, tuple) and len(result) == 1 and resp.content_length is None:
                    resp.length_hint = len(result[0])
                write = self.write
                for data in result:
                    write(data)
                self._finish(resp)
        except E.HTTPError as exc:
            # A framing error found while the app read the body.
            if not resp.headers_sent:
                self.send_error(exc)  # counted there (stats.answered)
            return False
        except (ClientDisconnected, ConnectionError, ClientTimeout):
            return False
        except Exception:
            worker.log.exception("Error handling request %s %s", head.method, head.target)
            if not resp.headers_sent:
                failed = 500
                try:
                    self._send(internal_error_response(head))
                except OSError:
                    pass
            return False
        finally:
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    worker.log.exception("Error closing the app's response iterable")
            in_flight.pop(self, None)
            worker.request_done()
            # One clock reading for the counters and the access log alike.
            took = time.monotonic() - started
            stats = worker.stats
            if stats is not None:
                stats.record((resp.status_code if resp.headers_sent else failed, resp.bytes_sent, took))
        if worker.post_request is not None:
            after_response(worker, head, environ, resp, took)
        elif worker.access_log is not None:  # after_response's last step, without its call
            worker.access_log(head, environ, resp, took)
        if not keeps_connection(resp.keep_alive, head, continue_sent, body.complete):
            return False
        try:
            return self._drain()
        except (E.HTTPError, ClientDisconnected):
            # The response went out; the unread body was malformed or cut
            # short. Nothing more can be said on this connection.
            return False

    # -- the response: Response makes the bytes, the connection sends them ------------

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        """WSGI's start_response for the request being served."""
        self._resp.start(status, headers, exc_info)
        return self.write

    def write(self, data: bytes) -> None:
        """WSGI's write(), and each piece the app's iterable yields: framed by Response, sent here."""
        resp = self._resp
        if not resp.headers_sent and resp.keep_alive and not self.may_keep_alive():
            resp.keep_alive = False  # _decide_keep_alive, inlined: once per response, on the hot path
        out = resp.piece(data)
        if out:
            if self._early and not resp.keep_alive and resp.complete:
                # Nothing can follow these bytes: send them and close at once.
                self._send_final(out)
            else:
                self._send(out)

    def _finish(self, resp: Response) -> None:
        """The app is done: send what is left; close at once if the connection closes after it."""
        if not resp.headers_sent:
            self._decide_keep_alive(resp)
        out = resp.end()
        if self._early and not resp.keep_alive:
            # Complete, whichever piece went last (a body without a length
            # ends only when the connection does): close now, not after the
            # app's close() and the hooks.
            self._send_final(out)
        elif out:
            self._send(out)

    def _decide_keep_alive(self, resp: Response) -> None:
        # Asked when the head is about to be made: a worker that began to
        # retire since the request arrived answers Connection: close
        # (corral.serve.retirement, rule 2).
        if resp.keep_alive and not self.may_keep_alive():
            resp.keep_alive = False

    def _send_final(self, data: bytes) -> None:
        # Once per response: after _send_last the socket may be closed.
        if not self._last_sent:
            self._last_sent = True
            self._send_last(data)

    def _send_file(self, resp: Response, wrapper: FileWrapper) -> None:
        fd = wrapper.fileno()
        if fd is None:
            for data in wrapper:
                self.write(data)
            self._finish(resp)
            return
        try:
            st = os.fstat(fd)
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            st = None
            offset = 0
        size = None
        if st is not None and (st.st_mode & 0o170000) == 0o100000:
            size = max(st.st_size - offset, 0)
        if resp.content_length is None and size is not None:
            resp.length_hint = size
        if (size is None or not self.worker.sendfile or resp.head.method == "HEAD"
                or resp.status_code in (204, 304)):
            # Only a regular file can go through sendfile (a pipe or a
            # socket behind the file-like object is read and sent), and
            # only when --no-sendfile did not turn it off.
            for data in wrapper:
                self.write(data)
            self._finish(resp)
            return
        count = size if resp.content_length is None else min(resp.content_length, size)
        self._decide_keep_alive(resp)
        self._send(resp.make_head())
        sent = self.transport.sendfile(wrapper.filelike, fd, offset, count)
        resp.sent_elsewhere(sent)
        self._finish(resp)

    def peer_label(self) -> str:
        if isinstance(self.peer, tuple):
            return f"{self.peer[0]}:{self.peer[1]}"
        return "unix socket"


def proxy_trusted(worker: Worker, peer: Any) -> bool:
    """May this peer send a PROXY header? Unix-socket peers are local, hence trusted."""
    if worker.limits.proxy_protocol == "off":
        return True
    return not isinstance(peer, tuple) or peer[0] in worker.proxy_peers
