"""How the request cycle moves bytes: the Transport protocol and the socket transport.

:class:`~corral.workers.connection.HttpConnection` runs the request cycle
and decides what to send; a :class:`Transport` moves the bytes, waits for
the client, and closes. Three kinds exist:

- :class:`SocketTransport`: an OS socket kept non-blocking, each call tried
  first and a poll (that beats the heartbeat) only when the kernel says it
  would block. sync, gthread and the selector loop use it as it is; gevent
  replaces only :meth:`SocketTransport.wait` with a wait on its hub; a TLS
  socket is the same transport after :meth:`SocketTransport.use_tls`.
- the thread bridge of the asyncio workers
  (:class:`corral.workers.asyncio_connection.ThreadBridge`): a request run
  in a pool thread whose bytes the event loop moves;
- a test's scripted transport (tests/serve), so that the request cycle and
  the wait policy are tested without a kernel.

Every deadline is a ``time.monotonic()`` value; a wait that reaches one
raises :class:`ClientTimeout`.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import time
from termios import FIONREAD
from typing import IO, TYPE_CHECKING, Final, Protocol

from corral.heartbeat import WAIT_SLICE
from corral.serve.retirement import CLOSE_LINGER, CLOSE_LINGER_BYTES

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

#: recv size. 64 KiB takes a typical head and a good slice of a body in one call.
RECV_SIZE: Final = 65536
#: Most bytes one os.sendfile call is asked for (the kernel sends what fits anyway).
SENDFILE_CHUNK: Final = 1 << 30
#: "More data follows": the kernel holds a segment's tail back (Linux; 0
#: elsewhere turns the closing send off). See SocketTransport.send_last.
MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)
#: FIONREAD's answer when no byte is waiting to be read (a C int).
_NO_BYTES: Final = bytes(4)


class ClientTimeout(Exception):
    """The client sent or read nothing by the deadline (a 408 or a close, never a 500)."""


class Transport(Protocol):
    """The byte-moving half of a connection, as the request cycle uses it."""

    #: Whether :meth:`send_last` may close the connection itself, right
    #: after the response's last bytes (False for TLS, a bridge, a stand-in).
    closes_early: bool

    def recv(self, deadline: float) -> bytes:
        """Bytes the client sent; ``b""`` once it closed (or the connection broke)."""
        ...

    def send(self, data: bytes) -> None:
        """Send all of ``data`` within the write timeout (:class:`ClientTimeout` past it)."""
        ...

    def send_last(self, data: bytes) -> None:
        """Send a response's last bytes and close, when nothing of the client's is unread.

        Only called when :attr:`closes_early` is true and the connection
        has read every byte the client sent; a transport that finds input
        after all sends and leaves the close to :meth:`close`.
        """
        ...

    def sendfile(self, file: IO[bytes], fd: int, offset: int, count: int) -> int:
        """Send ``count`` bytes of a regular file from ``offset``; return how many went."""
        ...

    def has_input(self) -> bool:
        """Bytes from the client wait to be read (cheap to ask; False when unknown)."""
        ...

    @property
    def closed(self) -> bool:
        """True once :meth:`send_last` or :meth:`close` closed the connection."""
        ...

    def close(self, unread: bool) -> None:
        """Close; with ``unread`` input, without a reset (RFC 9112 section 9.6)."""
        ...


class SocketTransport:
    """An OS socket, non-blocking, waited on with poll only when a call would block.

    For OS sockets CPython polls before every recv and send that has a
    timeout, so the socket is kept non-blocking and each call is tried
    first: one system call per recv or send in the common case instead of
    two. The waits beat the heartbeat (``beat``) and stop the request's
    watchdog clock (``client_wait``): a worker waiting for a slow client
    is not stuck.
    """

    closes_early: bool = bool(MSG_MORE)
    #: Set by :meth:`use_tls`: encrypted bytes take no send flags and no
    #: os.sendfile, and a TLS close does not linger.
    tls: bool = False

    def __init__(self, sock: socket.socket, write_timeout: float, beat: Callable[[], None],
                 client_wait: Callable[[], AbstractContextManager[object]] | None = None) -> None:
        self.sock = sock
        self.write_timeout = write_timeout
        self.beat = beat
        self.client_wait = client_wait

    def use_tls(self, tls_sock: socket.socket) -> None:
        """From now on, the bytes go through ``tls_sock`` (the handshake is the caller's)."""
        self.sock = tls_sock
        self.tls = True
        self.closes_early = False

    # -- waiting ---------------------------------------------------------------

    def wait(self, events: int, deadline: float) -> None:
        """Block until the socket is ready for ``events`` (select.POLLIN/POLLOUT), or ClientTimeout.

        The one method a cooperative framework replaces (gevent waits on its
        hub); the beats keep the arbiter from killing a worker whose own
        deadline (--header-timeout, --timeout) is longer than --timeout.
        """
        if self.client_wait is None:
            _poll(self.sock, events, deadline, self.beat)
        else:
            with self.client_wait():
                _poll(self.sock, events, deadline, self.beat)

    def _nonblocking(self) -> socket.socket:
        sock = self.sock
        if sock.gettimeout() != 0.0:  # accepted blocking, or left so by a TLS sendfile
            sock.setblocking(False)
        return sock

    # -- Transport -------------------------------------------------------------

    def recv(self, deadline: float) -> bytes:
        sock = self._nonblocking()
        while True:
            try:
                return sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                self.wait(select.POLLIN, deadline)
            except OSError as exc:
                want = _ssl_want(exc)
                if not want:
                    return b""  # reset by the peer: a close, for the parser
                self.wait(want, deadline)

    def send(self, data: bytes, flags: int = 0) -> None:
        sock = self._nonblocking()
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
        timeout = self.write_timeout
        deadline = time.monotonic() + timeout if timeout else float("inf")
        view = memoryview(data)[sent:]
        while view:
            try:
                sent = sock.send(view, flags)
            except (BlockingIOError, InterruptedError):
                self.wait(select.POLLOUT, deadline)
                continue
            except OSError as exc:
                want = _ssl_want(exc)
                if not want:
                    raise
                self.wait(want, deadline)
                continue
            view = view[sent:]

    def send_last(self, data: bytes) -> None:
        """Send with MSG_MORE and close at once: the FIN rides in the tail's segment.

        Two TCP segments fewer per connection (10 -> 8 on loopback: the FIN
        and the ACK it draws), and the client learns that the response is
        complete from one packet. The kernel is asked after the send whether
        the client sent more meanwhile (a stray CRLF, a late request):
        closing with unread input would reset the connection and destroy
        this response, so then the held tail is pushed out (TCP_NODELAY
        pushes pending output; a unix socket holds nothing back and has no
        such option) and the close is left to :meth:`close`.
        """
        if data:
            self.send(data, MSG_MORE)
        sock = self.sock
        if fcntl.ioctl(sock.fileno(), FIONREAD, _NO_BYTES) != _NO_BYTES:
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return
        sock.close()

    def sendfile(self, file: IO[bytes], fd: int, offset: int, count: int) -> int:
        """os.sendfile on the non-blocking socket, waiting (and beating) only when it is full.

        Not socket.sendfile: it waits in a selector of its own for as long
        as the whole transfer takes, where no heartbeat can run, so a slow
        client downloading a large file got a sync worker killed as stuck.
        Each wait has its own --timeout, as with socket.sendfile: a client
        that stops reading is dropped, one that reads slowly is served.
        A TLS socket must encrypt: it reads and sends (socket.sendfile).
        """
        if not count:
            return 0
        timeout = self.write_timeout
        if self.tls:
            self.sock.settimeout(timeout or None)
            return self.sock.sendfile(file, offset, count)
        out = self._nonblocking().fileno()
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(out, fd, offset + sent, min(count - sent, SENDFILE_CHUNK))
            except (BlockingIOError, InterruptedError):
                self.wait(select.POLLOUT, time.monotonic() + timeout if timeout else float("inf"))
                continue
            if n == 0:
                break  # the file is shorter than it was: the client sees a short body
            sent += n
        return sent

    def has_input(self) -> bool:
        try:
            return fcntl.ioctl(self.sock.fileno(), FIONREAD, _NO_BYTES) != _NO_BYTES
        except (OSError, ValueError):
            return False  # closed: nothing known

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def close(self, unread: bool) -> None:
        """Close; with input unread, shut the write side and read and drop until the client closes.

        A bare close with bytes unread makes the kernel answer with a reset,
        which can destroy the response the client has not read yet (a
        pipelined request behind a ``Connection: close``, a body the app
        left unread). So what the client still sends is read and dropped,
        for at most CLOSE_LINGER seconds and CLOSE_LINGER_BYTES. Not over
        TLS, whose close is its own alert.
        """
        sock = self.sock
        try:
            if sock.fileno() < 0:
                return  # closed already (send_last)
            if (unread or self.has_input()) and not self.tls:
                self._linger()
        except (OSError, ClientTimeout, ValueError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _linger(self) -> None:
        sock = self._nonblocking()
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + CLOSE_LINGER
        budget = CLOSE_LINGER_BYTES
        while budget > 0:
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                self.wait(select.POLLIN, deadline)
                continue
            if not data:
                return
            budget -= len(data)


def is_tls(sock: socket.socket) -> bool:
    """An ssl.SSLSocket, judged without importing ssl (as _ssl_want does)."""
    return type(sock).__name__ == "SSLSocket"


def is_ssl_want(exc: OSError) -> bool:
    """A non-blocking TLS socket must wait for more bytes (or room) before this call can go on."""
    return _ssl_want(exc) != 0


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


def _poll(sock: socket.socket, events: int, deadline: float, beat: Callable[[], None]) -> None:
    """Poll one socket until ``events`` or the deadline (ClientTimeout), beating meanwhile.

    Each slice is at most WAIT_SLICE, so the heartbeat keeps its cadence
    however long the client's deadline is (a sync worker, one connection at
    a time, was killed by any client that sent half a head and waited).
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
