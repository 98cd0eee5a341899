"""Binding listening sockets, and receiving them from a parent or from systemd.

Listeners are bound in the arbiter before any worker is forked, so all
workers accept on the same kernel queue. Their fds survive an exec (USR2
upgrade) through the CORRAL_FD environment variable, and systemd socket
activation through LISTEN_FDS/LISTEN_PID.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from corral.addresses import Address, parse_address

#: Environment variable naming inherited listener fds (comma separated).
FD_ENV: Final = "CORRAL_FD"
#: systemd passes sockets starting at this fd (sd_listen_fds(3)).
SD_LISTEN_FDS_START: Final = 3
#: A busy address is retried this many times, a second apart, before giving
#: up: an old process may still be closing it during a restart.
BIND_RETRIES: Final = 5


@dataclass
class Listener:
    address: Address
    sock: socket.socket
    #: True for a unix socket this process created (and must unlink on exit).
    owns_path: bool = False

    @property
    def name(self) -> str:
        if self.address.kind == "fd" or self.address.port == 0:
            return format_sockname(self.sock)
        return str(self.address)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self, unlink: bool = True) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if unlink and self.owns_path:
            with contextlib.suppress(OSError):
                os.unlink(self.address.path)


#: Accepts one connection from a listener: (socket, peer address).
Acceptor = Callable[[], tuple[socket.socket, Any]]
#: accept() errors that mean "out of a resource" (descriptors, memory), not
#: "this connection" nor "this listener": the connection stays queued and
#: the listener readable, so a worker that retried at once would spin. Every
#: worker class backs off instead.
ACCEPT_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def acceptor(sock: socket.socket, *, nodelay: bool = True) -> Acceptor:
    """``sock.accept`` for a non-blocking listener, without its per-call overhead, with TCP_NODELAY.

    :param nodelay: set TCP_NODELAY on each connection accepted from a TCP
        listener (unix sockets have no such option). On by default, for
        every worker class but sync (one response per connection, and the
        close pushes out its tail): a response goes out in several writes (head,
        chunks of a streamed body, the last chunk), and with Nagle's
        algorithm each small write after the first waits for the client's
        ACK of the one before, which a client delays up to 40 ms on a
        kept-alive connection. A streamed response then took 44 ms instead
        of 0.2 (tests: conformance's test_streamed_responses_are_not_held_back).
        asyncio sets the option on its transports only for sockets whose
        ``proto`` says TCP, which the sockets of corral's listeners do not
        (they are made with proto 0), so the asyncio classes need it here too.

    socket.accept() turns the listener's family and type into enum members
    on every call and checks the default timeout; that is 2-3 µs of a
    sync worker's ~50 µs per Connection: close request (bench/micro.py has
    no socket, so this was measured with timeit on loopback). The numbers
    are read once here. The new socket is built exactly as accept() builds
    it; on Linux accept4() never passes O_NONBLOCK on to it, so accept()'s
    setblocking(True), a no-op there, is not needed. Elsewhere (BSDs,
    macOS) the plain method is used.
    """
    tcp = nodelay and sock.family in (socket.AF_INET, socket.AF_INET6)
    if sys.platform != "linux":
        plain = sock.accept
        if not tcp:
            return plain

        def accept_plain() -> tuple[socket.socket, Any]:
            conn, peer = plain()
            _set_nodelay(conn)
            return conn, peer

        return accept_plain
    family, kind, proto = int(sock.family), int(sock.type), sock.proto
    raw_accept = sock._accept  # type: ignore[attr-defined]  # what socket.accept() itself calls
    new = socket.socket

    if not tcp:
        def accept() -> tuple[socket.socket, Any]:
            fd, peer = raw_accept()
            return new(family, kind, proto, fd), peer

        return accept

    def accept_nodelay() -> tuple[socket.socket, Any]:
        fd, peer = raw_accept()
        conn = new(family, kind, proto, fd)
        _set_nodelay(conn)
        return conn, peer

    return accept_nodelay


def _set_nodelay(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # the peer reset it already: the first read or write will say so


def format_sockname(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


def _bind_tcp(addr: Address, backlog: int, reuse_port: bool) -> socket.socket:
    infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and addr.host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(addr: Address, backlog: int, mode: int) -> socket.socket:
    path = addr.path
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        # A stale socket from a crashed run: remove it only if nobody listens.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise OSError(errno.EADDRINUSE, f"{path} is in use by another server")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 ^ mode)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


def bind(address: str, *, backlog: int, reuse_port: bool, unix_mode: int, log: object) -> Listener:
    """Bind one address; retries while it is busy, then raises OSError."""
    addr = parse_address(address)
    if addr.kind == "fd":
        sock = socket.socket(fileno=addr.fd)
        return Listener(addr, sock)
    for attempt in range(BIND_RETRIES):
        try:
            if addr.kind == "unix":
                return Listener(addr, _bind_unix(addr, backlog, unix_mode), owns_path=True)
            return Listener(addr, _bind_tcp(addr, backlog, reuse_port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == BIND_RETRIES - 1:
                raise
            log.warning("%s is in use, retrying in 1 s", address)  # type: ignore[attr-defined]
            time.sleep(1)
    raise AssertionError("unreachable")


def inherited_fds() -> list[int]:
    """Listener fds handed down by a parent corral (USR2) or by systemd."""
    fds: list[int] = []
    value = os.environ.pop(FD_ENV, "")
    if value:
        fds = [int(x) for x in value.split(",") if x.isdigit()]
    elif os.environ.get("LISTEN_PID") == str(os.getpid()):
        count = int(os.environ.get("LISTEN_FDS", "0") or 0)
        fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    return fds


def listener_from_fd(fd: int) -> Listener:
    sock = socket.socket(fileno=fd)
    name = format_sockname(sock)
    addr = parse_address(name) if sock.family != socket.AF_UNIX else Address("unix", path=name[5:])
    return Listener(addr, sock)
