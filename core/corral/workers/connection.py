"""Serving one HTTP/1.1 connection with blocking-style socket calls.

Shared by every worker whose sockets look blocking to the code that uses them:
sync and gthread (real blocking sockets) and gevent (cooperative ones). The
worker owns accepting and concurrency; this module owns the request loop on
one connection: read a head within the header timeout, run the app, write
the response, drain what the app left unread, and decide whether to keep the
connection. All protocol decisions are in corral.http and corral.wsgi.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import time
from termios import FIONREAD
from typing import TYPE_CHECKING, Any, ClassVar, Final

from corral.heartbeat import WAIT_SLICE
from corral.http import errors as E
from corral.http.parser import (
    CONNECTION_CLOSED,
    NEED_DATA,
    ClientDisconnected,
    EndOfMessage,
    RequestHead,
    RequestParser,
)
from corral.serve.cycle import after_response, keeps_connection
from corral.serve.retirement import CLOSE_LINGER, CLOSE_LINGER_BYTES, next_request_in_hand
from corral.serve.waits import (
    Drain,
    body_wait_timed_out,
    first_byte_deadline,
    head_wait_timed_out,
)
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

#: recv size. 64 KiB takes a typical head and a good slice of a body in one call.
RECV_SIZE: Final = 65536
#: Most bytes one os.sendfile call is asked for (the kernel sends what fits anyway).
SENDFILE_CHUNK: Final = 1 << 30
#: "More data follows": the kernel holds a segment's tail back (Linux; 0
#: elsewhere turns the closing send off). See HttpConnection._send_last.
MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)
#: FIONREAD's answer when no byte is waiting to be read (a C int).
_NO_BYTES: Final = bytes(4)


class ClientTimeout(Exception):
    pass


class HttpConnection:
    """One client connection, served until it closes or must close.

    :param keepalive: seconds to wait for the next request; 0 closes after each response.
    """

    def __init__(
        self,
        worker: Worker,
        sock: socket.socket,
        peer: Any,
        env: EnvironContext,
        keepalive: float,
        parser: RequestParser | None = None,
    ) -> None:
        self.worker = worker
        self.sock = sock
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

    # -- I/O -----------------------------------------------------------------

    #: True for sockets whose timeouts cost no system call (gevent's): then
    #: the socket's own timeout is used. For OS sockets CPython polls before
    #: every recv and send that has a timeout, so corral keeps them
    #: non-blocking, tries the call first, and polls only when it would block:
    #: one system call per recv or send in the common case instead of two.
    cooperative: ClassVar[bool] = False
    #: Whether a response after which the connection closes may end with
    #: :meth:`_send_last` (MSG_MORE, then the socket closed at once). None:
    #: only on a plain OS socket (TLS and stand-ins excluded). A worker whose
    #: sockets take send flags, ``fileno()`` and ``close()`` as OS sockets do
    #: sets True (gevent); TLS is excluded either way.
    close_early: ClassVar[bool | None] = None
    #: The response being served (set by handle()), and how its last bytes go:
    #: with _early, the final send closes the connection (_send_last), once.
    _resp: Response
    _early: bool = False
    _last_sent: bool = False

    def _recv(self, deadline: float) -> None:
        sock = self.sock
        if self.cooperative:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClientTimeout
            sock.settimeout(remaining)
            try:
                if self.client_wait is None:
                    data = sock.recv(RECV_SIZE)
                else:
                    with self.client_wait():
                        data = sock.recv(RECV_SIZE)
            except TimeoutError:
                raise ClientTimeout from None
            except OSError:
                data = b""
        else:
            if sock.gettimeout() != 0.0:
                sock.setblocking(False)
            while True:
                try:
                    data = sock.recv(RECV_SIZE)
                    break
                except (BlockingIOError, InterruptedError):
                    self.wait_io(select.POLLIN, deadline)
                except OSError as exc:
                    want = _ssl_want(exc)
                    if want:
                        self.wait_io(want, deadline)
                        continue
                    data = b""
                    break
        self.parser.feed(data)
        self.worker.notify()

    def _send(self, data: bytes, flags: int = 0) -> None:
        sock = self.sock
        timeout = self.worker.write_timeout
        if self.cooperative:
            sock.settimeout(timeout or None)
            # One send first: gevent's sendall asks the kernel for SO_SNDBUF
            # on every call, a second system call a short response never needs.
            # (A cooperative socket's send may block until some bytes went;
            # one that runs a watchdog stops the clock itself while it waits.)
            # Flags only when there are some: a stand-in socket (the tornado
            # bridge, a plugin's own) may take none.
            sent = sock.send(data, flags) if flags else sock.send(data)
            if sent < len(data):
                rest = memoryview(data)[sent:]
                if flags:
                    sock.sendall(rest, flags)
                else:
                    sock.sendall(rest)
            return
        if sock.gettimeout() != 0.0:
            sock.setblocking(False)
        # The usual case first: the whole response fits the socket's buffer
        # and goes out in one call; the deadline and the view are for the rest.
        try:
            sent = sock.send(data, flags) if data else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            if not _ssl_want(exc):
                raise
            sent = 0
        if sent == len(data):
            return
        deadline = time.monotonic() + timeout if timeout else float("inf")
        view = memoryview(data)[sent:]
        while view:
            try:
                sent = sock.send(view, flags)
            except (BlockingIOError, InterruptedError):
                self.wait_io(select.POLLOUT, deadline)
                continue
            except OSError as exc:
                want = _ssl_want(exc)
                if not want:
                    raise
                self.wait_io(want, deadline)
                continue
            view = view[sent:]

    def _send_last(self, data: bytes) -> None:
        """Send the last bytes of a response after which the connection closes, and close it.

        Sent with MSG_MORE, the tail waits in the kernel, and the close right
        after puts the FIN into the same segment: two TCP segments fewer per
        connection (10 -> 8 on loopback: the FIN and the ACK it draws), and
        the client learns that the response is complete from one packet.
        Closing here, before the app's close() and the hooks run, is what
        makes holding the tail free: nothing stands between it and the close,
        and a client that asked to close is not kept waiting for the app's
        cleanup.

        Only when every byte the client sent was read: closing a socket with
        unread input makes the kernel reset the connection and throw away
        what it still holds, this response. A body the app left unread or a
        pipelined request already received makes this an ordinary send. The
        kernel is asked too, after the send (a client that asked to close
        should send nothing more, but a stray CRLF or a late request may
        come): then the held tail is pushed out, and the connection closes
        later as any other. Not for TLS: an SSL socket takes no send flags
        (HttpConnection._early is False there).
        """
        if (self._has_body and not self._body.complete) or self.parser.has_unread:
            if data:
                self._send(data)
            return
        if data:
            self._send(data, MSG_MORE)
        sock = self.sock
        if fcntl.ioctl(sock.fileno(), FIONREAD, _NO_BYTES) != _NO_BYTES:
            # Bytes arrived after the last read: send what is held (setting
            # TCP_NODELAY pushes pending output; a unix socket holds nothing
            # back and has no such option) and close as before.
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return
        sock.close()

    def wait_io(self, events: int, deadline: float) -> None:
        """Block until the OS socket is ready for ``events``: waiting on the client, not stuck."""
        if self.client_wait is None:
            _wait(self.sock, events, deadline, self.worker.notify)
        else:
            with self.client_wait():
                _wait(self.sock, events, deadline, self.worker.notify)

    def next_head(self, first: bool) -> RequestHead | None:
        """The next request head, or None when the connection should just close (corral.serve.waits)."""
        parser = self.parser
        now = time.monotonic()
        since = self.worker.retiring_since
        deadline = first_byte_deadline(now, first=first, header_timeout=self.header_timeout,
                                       keepalive=self.keepalive,
                                       retiring_for=None if since is None else now - since)
        head_started = False
        while True:
            event = parser.next_event()
            if type(event) is RequestHead:
                return event
            if event is CONNECTION_CLOSED:
                return None
            assert event is NEED_DATA
            if not head_started and parser.in_head:
                # The whole head must arrive within header_timeout of its first byte.
                head_started = True
                deadline = time.monotonic() + self.header_timeout
            try:
                self._recv(deadline)
            except ClientTimeout:
                head_wait_timed_out(parser)
                return None

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
        try:
            return fcntl.ioctl(self.sock.fileno(), FIONREAD, _NO_BYTES) != _NO_BYTES
        except (OSError, ValueError, TypeError):
            return False  # closed, or not an OS socket (a stand-in): nothing known

    def may_keep_alive(self) -> bool:
        """Asked when a response head is about to be made (_decide_keep_alive): keep-alive or close."""
        # corral.serve.retirement, rule 2; the check of the input only once
        # retiring (it may cost a system call), so serving pays nothing for it.
        return self.worker.alive or self.next_request_here()

    def close_gracefully(self) -> None:
        """Close the socket; with unread input, as RFC 9112 section 9.6 says (no reset).

        A bare close with bytes unread makes the kernel answer with a reset,
        which can destroy the response the client has not read yet (a
        pipelined request behind a ``Connection: close``, a body the app
        left unread). So the write side is shut first, and what the client
        still sends is read and dropped until it closes, for at most
        CLOSE_LINGER seconds and CLOSE_LINGER_BYTES.
        """
        sock = self.sock
        try:
            if sock.fileno() < 0:
                return  # closed already (HttpConnection._send_last)
            if (self.parser.has_unread or self.kernel_has_input()) and not _is_tls(sock):
                self._linger(sock)
        except (OSError, ClientTimeout, ValueError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _linger(self, sock: socket.socket) -> None:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + CLOSE_LINGER
        budget = CLOSE_LINGER_BYTES
        if self.cooperative:
            sock.settimeout(CLOSE_LINGER)
        elif sock.gettimeout() != 0.0:
            sock.setblocking(False)
        while budget > 0:
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                self.wait_io(select.POLLIN, deadline)
                continue
            if not data:
                return
            budget -= len(data)

    def send_error(self, exc: E.HTTPError) -> None:
        """Answer a protocol error (the caller then closes the connection)."""
        self.worker.log.info("%s from %s: %s", exc.status, self.peer_label(), exc.detail)
        self._send(error_response(exc))

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
        early = False
        if not head.keep_alive and MSG_MORE:
            choice = self.close_early
            if choice is None:
                early = type(self.sock) is socket.socket
            elif choice:
                early = not _is_tls(self.sock)
        self._early = early
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
        try:
            proxied = self.parser.proxy
            environ = build_environ(head, self.env, body, self.peer,
                                    client=proxied.source if proxied is not None else None)
            if worker.pre_request is not None:
                worker.pre_request(worker=worker, req=head)
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
                self.send_error(exc)
            return False
        except (ClientDisconnected, ConnectionError, ClientTimeout):
            return False
        except Exception:
            worker.log.exception("Error handling request %s %s", head.method, head.target)
            if not resp.headers_sent:
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
        if worker.post_request is not None or worker.access_log is not None:
            after_response(worker, head, environ, resp, time.monotonic() - started)
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
        if size is None or resp.head.method == "HEAD" or resp.status_code in (204, 304):
            # Only a regular file can go through sendfile (a pipe or a
            # socket behind the file-like object is read and sent).
            for data in wrapper:
                self.write(data)
            self._finish(resp)
            return
        count = size if resp.content_length is None else min(resp.content_length, size)
        self._decide_keep_alive(resp)
        self._send(resp.make_head())
        if _is_tls(self.sock):
            # A TLS socket must encrypt: socket.sendfile sends what it reads
            # (it polls by itself).
            self.sock.settimeout(self.worker.write_timeout or None)
            sent = self.sock.sendfile(wrapper.filelike, offset, count) if count else 0
        elif self.cooperative:
            sent = self.sendfile_cooperative(wrapper.filelike, fd, offset, count) if count else 0
        else:
            sent = self._sendfile(fd, offset, count)
        resp.sent_elsewhere(sent)
        self._finish(resp)

    def sendfile_cooperative(self, filelike: Any, fd: int, offset: int, count: int) -> int:
        """Send a file over a cooperative socket; by default its own ``sendfile``.

        A worker overrides this when its sockets' sendfile is slow (gevent's
        socket.sendfile reads and sends 8 KiB at a time; that is one reason
        the gevent worker keeps OS sockets and overrides :meth:`wait_io`
        instead, so that files take the os.sendfile loop of :meth:`_sendfile`).
        """
        self.sock.settimeout(self.worker.write_timeout or None)
        return int(self.sock.sendfile(filelike, offset, count))

    def _sendfile(self, fd: int, offset: int, count: int) -> int:
        """os.sendfile on the non-blocking socket, waiting (and beating) only when it is full.

        Not socket.sendfile: it waits in a selector of its own for as long
        as the whole transfer takes, where no heartbeat can run, so a slow
        client downloading a large file got a sync worker killed as stuck.
        Each wait has its own --timeout, as with socket.sendfile: a client
        that stops reading is dropped, one that reads slowly is served.
        """
        sock = self.sock
        if sock.gettimeout() != 0.0:
            sock.setblocking(False)
        out = sock.fileno()
        timeout = self.worker.write_timeout
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(out, fd, offset + sent, min(count - sent, SENDFILE_CHUNK))
            except (BlockingIOError, InterruptedError):
                self.wait_io(select.POLLOUT, time.monotonic() + timeout if timeout else float("inf"))
                continue
            if n == 0:
                break  # the file is shorter than it was: the client sees a short body
            sent += n
        return sent

    def peer_label(self) -> str:
        if isinstance(self.peer, tuple):
            return f"{self.peer[0]}:{self.peer[1]}"
        return "unix socket"


def _is_tls(sock: socket.socket) -> bool:
    """An ssl.SSLSocket, judged without importing ssl (as _ssl_want does)."""
    return type(sock).__name__ == "SSLSocket"


def _ssl_want(exc: OSError) -> int:
    """POLLIN/POLLOUT for a TLS socket that must wait (SSLWantRead/WriteError), else 0.

    Judged by class name so that this module does not import ssl: importing
    it costs every worker about 5 MiB, TLS or not.
    """
    name = type(exc).__name__
    if name == "SSLWantReadError":
        return select.POLLIN
    if name == "SSLWantWriteError":
        return select.POLLOUT
    return 0


def _wait(sock: socket.socket, events: int, deadline: float, beat: Callable[[], None]) -> None:
    """Poll one socket until ``events`` or the deadline (ClientTimeout), beating the heartbeat meanwhile.

    A worker waiting for a slow client is not stuck: its own deadline
    (--header-timeout, or --timeout for a client that does not read) ends
    the wait with a 408 or a close. Without the beats the arbiter would
    kill it first whenever that deadline is longer than --timeout (a sync
    worker, one connection at a time, was killed by any client that sent
    half a head and waited).
    """
    poller = select.poll()
    poller.register(sock, events)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientTimeout
        if poller.poll(min(remaining, WAIT_SLICE) * 1000):
            return
        beat()


def proxy_trusted(worker: Worker, peer: Any) -> bool:
    """May this peer send a PROXY header? Unix-socket peers are local, hence trusted."""
    if worker.limits.proxy_protocol == "off":
        return True
    return not isinstance(peer, tuple) or peer[0] in worker.proxy_peers
