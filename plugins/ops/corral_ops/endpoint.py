"""A small request/answer server that lives in the arbiter's main loop.

The control socket and the metrics endpoint are both: accept a connection,
read one request (a JSON line, an HTTP head), answer it, close. Everything
is non-blocking and driven by ``server.add_reader``, so the arbiter never
waits on a client: a client that sends nothing is dropped after
:data:`CLIENT_TIMEOUT` (swept from ``corral_arbiter_tick``), one that sends
too much is answered with an error, and one that does not read its answer
is dropped once the kernel's send buffer is full.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any, Final

#: A client has this long to send its request.
CLIENT_TIMEOUT: Final = 5.0
#: Requests are small; anything bigger is refused.
MAX_REQUEST: Final = 65536
#: Connections accepted per wake-up (the rest wait for the next one).
ACCEPT_BATCH: Final = 32
#: At most this many clients at once; more are closed at accept.
MAX_CLIENTS: Final = 64


class RequestServer:
    """Accepts on ``sock``; ``complete(buffer)`` says when a request is whole,
    ``answer(buffer)`` returns the bytes to send back (the connection then closes).
    """

    def __init__(
        self,
        server: Any,
        sock: socket.socket,
        complete: Callable[[bytes], bool],
        answer: Callable[[bytes, socket.socket], bytes],
        too_large: bytes,
    ) -> None:
        self.server = server
        self.sock = sock
        self.complete = complete
        self.answer = answer
        self.too_large = too_large
        self.clients: dict[int, tuple[socket.socket, bytearray, float]] = {}
        sock.setblocking(False)
        server.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of fds, or the client is gone already: next time
            if len(self.clients) >= MAX_CLIENTS:
                conn.close()
                continue
            conn.setblocking(False)
            fd = conn.fileno()
            self.clients[fd] = (conn, bytearray(), time.monotonic() + CLIENT_TIMEOUT)
            self.server.add_reader(fd, lambda fd=fd: self._read(fd))

    def _read(self, fd: int) -> None:
        conn, buf, _ = self.clients[fd]
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        buf += data
        if len(buf) > MAX_REQUEST:
            self._reply(fd, self.too_large)
        elif self.complete(bytes(buf)):
            try:
                reply = self.answer(bytes(buf), conn)
            except Exception:
                self.server.log.exception("%s: answering a request failed", type(self).__name__)
                reply = self.too_large
            self._reply(fd, reply)

    def _reply(self, fd: int, data: bytes) -> None:
        conn = self.clients[fd][0]
        with contextlib.suppress(OSError):
            # Small answers fit the send buffer; a client that leaves a large
            # one unread loses the rest rather than holding the arbiter.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(len(data), 65536))
            conn.send(data)
        self._drop(fd)

    def _drop(self, fd: int) -> None:
        conn, _, _ = self.clients.pop(fd)
        self.server.remove_reader(fd)
        conn.close()

    def expire(self, now: float | None = None) -> None:
        """Drop clients past their deadline (call from corral_arbiter_tick)."""
        now = time.monotonic() if now is None else now
        for fd in [fd for fd, (_, _, deadline) in self.clients.items() if deadline < now]:
            self._drop(fd)

    def close(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        self.server.remove_reader(self.sock.fileno())
        self.sock.close()


def bind_unix(path: str, mode: int) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode`` from the start (no window
    where it is open to all), replacing a stale socket file but never anything else."""
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket; remove it or choose another path")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(16)
    return sock


def in_use(path: str) -> bool:
    """Whether a live process accepts on the unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def file_id(path: str) -> tuple[int, int] | None:
    """The socket file's identity, taken right after bind (fstat on the socket
    itself names the socket's inode, not the file's)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def owns(path: str, ident: tuple[int, int] | None) -> bool:
    """Whether the socket file at ``path`` is still the one we bound (not a successor's)."""
    return ident is not None and file_id(path) == ident
