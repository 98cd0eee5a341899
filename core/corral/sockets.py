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
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from corral.addresses import Address, parse_address

#: Environment variable naming inherited listener fds (comma separated).
FD_ENV: Final = "CORRAL_FD"
#: Unix socket files a parent corral made, by inherited fd: "fd=dev:ino,...".
PATHS_ENV: Final = "CORRAL_FD_PATHS"
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
    #: Passed by systemd (socket activation), which keeps it open when corral
    #: stops: connections queued then wait for the next start.
    systemd: bool = False
    #: For a unix socket this process bound: its file's (st_dev, st_ino), to
    #: tell whether the path still names this socket.
    path_id: tuple[int, int] | None = None

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
            self.unlink()

    def unlink(self) -> None:
        """Remove the unix socket's file, if it is still this socket's (not a new server's)."""
        if self.names_this_socket():
            with contextlib.suppress(OSError):
                os.unlink(self.address.path)

    def names_this_socket(self) -> bool:
        """The unix socket's path still leads to this socket (False once removed or replaced)."""
        try:
            st = os.stat(self.address.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.path_id

    def refuse_new_connections(self) -> bool:
        """Closing for good: let no new connection in, keep the queued ones (True if done).

        A TCP listener gets the mark of :func:`refuse_new_connections`; a
        unix socket this process bound loses its file, so a new client
        finds no socket (nothing sent) while the queue stays.
        """
        if self.address.kind == "unix" or self.sock.family == socket.AF_UNIX:
            if not self.owns_path or not self.names_this_socket():
                return False
            self.unlink()
            return True
        return refuse_new_connections(self.sock)

    def refuses_new_connections(self) -> bool:
        """Whether :meth:`refuse_new_connections` was done (by this or another process)."""
        if self.sock.family == socket.AF_UNIX:
            return self.path_id is not None and not self.names_this_socket()
        return refuses_new_connections(self.sock)


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


#: SO_ATTACH_FILTER / SO_GET_FILTER (the same number) and SO_DETACH_FILTER, from
#: <asm-generic/socket.h>; the socket module does not name them.
_SO_ATTACH_FILTER: Final = 26
_SO_DETACH_FILTER: Final = 27
#: A classic BPF program run on every segment the listener receives: drop
#: those with SYN set and ACK clear (a new connection's first segment), keep
#: the rest. The filter sees the TCP header at offset 0; byte 13 holds the
#: flags. (code, jt, jf, k) per instruction, as struct sock_filter.
_DROP_SYN: Final = (
    (0x30, 0, 0, 13),          # ldb [13]           the flags byte
    (0x54, 0, 0, 0x12),        # and #0x12          SYN | ACK
    (0x15, 0, 1, 0x02),        # jeq #0x02 ? next : skip one
    (0x06, 0, 0, 0),           # ret #0             a bare SYN: dropped
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1            anything else: kept
)
_DROP_SYN_CODE: Final = b"".join(struct.pack("=HBBI", *insn) for insn in _DROP_SYN)


def refuse_new_connections(sock: socket.socket) -> bool:
    """Mark a TCP listener as closing for good: new connections no longer complete, queued ones stay.

    Closing a listening socket resets every connection still in its
    accept queue, and a client that connected a moment before the close has
    usually sent its request already: the request is lost (a POST will
    not be retried). Closing cannot be made atomic with a last accept(), so
    the arbiter, when it shuts down for good, marks each listener first
    with a socket filter that drops a new connection's first segment (its
    SYN). No handshake completes after that; the client retransmits the
    SYN a second later and by then meets a closed port (ECONNREFUSED,
    nothing sent), the answer it would have had after the close. The
    queue can then only shrink, and a retiring worker that sees the mark
    (:func:`refuses_new_connections`) accepts and serves what is queued
    before it closes its copy (corral.serve.retirement, rule 1).

    The filter is on the socket, so it reaches every process holding it:
    only for a socket nobody will accept on again (never across a USR2
    upgrade, nor on one systemd keeps). Linux only; True if marked. A unix
    socket is marked by removing its file instead (Listener.refuse_new_connections).
    """
    if sys.platform != "linux" or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        import ctypes  # for the program's address; some minimal builds lack it
    except ImportError:
        return False

    program = ctypes.create_string_buffer(_DROP_SYN_CODE, len(_DROP_SYN_CODE))
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;}:
    # the kernel copies the program during the call, so the buffer may go after it.
    fprog = struct.pack("@HP", len(_DROP_SYN), ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


def refuses_new_connections(sock: socket.socket) -> bool:
    """Whether :func:`refuse_new_connections` marked this listener (by this or another process)."""
    if sys.platform != "linux":
        return False
    try:
        # SO_GET_FILTER copies the program out and reports its length in
        # instructions, which Python takes for a length in bytes: what comes
        # back is the program's first len(program) bytes (nothing without a
        # filter). Compared with ours, so that a filter someone else put on
        # the socket is not taken for the mark.
        got = sock.getsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, 64)
    except OSError:
        return False  # closed, or a program of more than 64 instructions: not ours
    return len(got) == len(_DROP_SYN) and got == _DROP_SYN_CODE[: len(got)]


def accept_new_connections(sock: socket.socket) -> None:
    """Remove a mark left on an inherited socket (harmless when there is none)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)


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
                sock = _bind_unix(addr, backlog, unix_mode)
                st = os.stat(addr.path)
                return Listener(addr, sock, owns_path=True, path_id=(st.st_dev, st.st_ino))
            return Listener(addr, _bind_tcp(addr, backlog, reuse_port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == BIND_RETRIES - 1:
                raise
            log.warning("%s is in use, retrying in 1 s", address)  # type: ignore[attr-defined]
            time.sleep(1)
    raise AssertionError("unreachable")


def inherited_fds() -> tuple[list[int], bool]:
    """Listener fds handed down by a parent corral (USR2) or by systemd, and whether by systemd."""
    value = os.environ.pop(FD_ENV, "")
    if value:
        return [int(x) for x in value.split(",") if x.isdigit()], False
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return [], False
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)), True


def export_fds(listeners: list[Listener]) -> None:
    """Name the listeners' fds for the new arbiter of an upgrade (USR2), in os.environ.

    Each unix socket whose file the old arbiter made is named in
    :data:`PATHS_ENV` with the file's identity, so the new one takes over
    the file: it removes it when it stops for good, first of all, so that
    its workers serve the listen queue (Listener.refuse_new_connections).
    Apart from CORRAL_FD so that an older corral, upgraded to, still reads it.
    """
    fds, paths = [], []
    for listener in listeners:
        fd = listener.fileno()
        os.set_inheritable(fd, True)
        fds.append(str(fd))
        if listener.owns_path and listener.names_this_socket() and listener.path_id is not None:
            dev, ino = listener.path_id
            paths.append(f"{fd}={dev}:{ino}")
    os.environ[FD_ENV] = ",".join(fds)
    os.environ[PATHS_ENV] = ",".join(paths)


def inherited_paths() -> dict[int, tuple[int, int]]:
    """The unix socket files a parent corral made, by inherited fd (see :func:`export_fds`)."""
    out: dict[int, tuple[int, int]] = {}
    for item in os.environ.pop(PATHS_ENV, "").split(","):
        fd, _, ident = item.partition("=")
        dev, _, ino = ident.partition(":")
        if fd.isdigit() and dev.isdigit() and ino.isdigit():
            out[int(fd)] = (int(dev), int(ino))
    return out


def listener_from_fd(fd: int, *, systemd: bool = False, path_id: tuple[int, int] | None = None) -> Listener:
    """A listener for an inherited fd; ``path_id``: its unix socket file, which a parent corral made."""
    sock = socket.socket(fileno=fd)
    # A mark a stopped server could have left (refuse_new_connections)
    # would keep this one from ever completing a connection.
    accept_new_connections(sock)
    name = format_sockname(sock)
    addr = parse_address(name) if sock.family != socket.AF_UNIX else Address("unix", path=name[5:])
    listener = Listener(addr, sock, systemd=systemd, path_id=path_id)
    # Still the file the parent made (not one put there since): ours to remove.
    listener.owns_path = sock.family == socket.AF_UNIX and listener.names_this_socket()
    return listener
