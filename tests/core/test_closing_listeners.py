"""A listener closing for good: the mark that lets no new connection in, and the queue served before the close.

Real sockets on loopback. The process-level behaviour (a shutdown, a
removed pool, under a flood of new connections) is in
tests/retirement/test_matrix.py.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from corral.addresses import parse_address
from corral.serve.retirement import closing_for_good, queued_connections
from corral.sockets import (
    Listener,
    accept_new_connections,
    acceptor,
    bind,
    export_fds,
    inherited_paths,
    listener_from_fd,
    refuse_new_connections,
    refuses_new_connections,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="socket filters are Linux's")


def _tcp_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def test_a_marked_listener_completes_no_new_handshake_but_keeps_its_queue() -> None:
    sock = _tcp_listener()
    port = sock.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))
    queued.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not refuses_new_connections(sock)
    assert refuse_new_connections(sock)
    assert refuses_new_connections(sock)
    # The SYN is dropped: no handshake, so nothing can be sent on it.
    with pytest.raises(TimeoutError):
        socket.create_connection(("127.0.0.1", port), timeout=0.3)
    # What was queued before the mark is still there, and works both ways.
    conn, _ = sock.accept()
    assert conn.recv(100).startswith(b"GET / ")
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert queued.recv(100).startswith(b"HTTP/1.1 200")
    sock.close()
    # Once closed, a new client is refused at once.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    for s in (conn, queued):
        s.close()


def test_the_mark_can_be_removed_and_inherited_sockets_lose_it() -> None:
    sock = _tcp_listener()
    port = sock.getsockname()[1]
    assert refuse_new_connections(sock)
    accept_new_connections(sock)
    assert not refuses_new_connections(sock)
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # A socket inherited with a mark on it (a server stopped without
    # closing it, systemd's) would never take a connection: adoption removes it.
    refuse_new_connections(sock)
    adopted = listener_from_fd(sock.detach())
    assert not refuses_new_connections(adopted.sock)
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    adopted.close()
    accept_new_connections(adopted.sock)  # closed: nothing to do, no error


def test_a_unix_listener_is_marked_by_removing_its_file(tmp_path: Path) -> None:
    path = tmp_path / "s"
    listener = bind(f"unix:{path}", backlog=8, reuse_port=False, unix_mode=0o600, log=None)
    queued = socket.socket(socket.AF_UNIX)
    queued.connect(str(path))
    queued.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not refuse_new_connections(listener.sock)  # no socket filter for unix sockets
    assert not listener.refuses_new_connections()
    assert listener.refuse_new_connections()
    assert not path.exists() and listener.refuses_new_connections()
    with pytest.raises(FileNotFoundError):  # a new client: nothing sent
        socket.socket(socket.AF_UNIX).connect(str(path))
    conn, _ = listener.sock.accept()  # the queued one is still there
    assert conn.recv(100).startswith(b"GET / ")
    conn.close()
    queued.close()
    # Another server binds the path meanwhile: the old listener's close leaves its file alone.
    newer = bind(f"unix:{path}", backlog=8, reuse_port=False, unix_mode=0o600, log=None)
    assert listener.refuses_new_connections() and not newer.refuses_new_connections()
    listener.close(unlink=True)
    assert path.exists()
    socket.socket(socket.AF_UNIX).connect(str(path))
    newer.close(unlink=True)
    assert not path.exists()


def test_only_what_this_process_bound_is_marked(tmp_path: Path) -> None:
    # A unix socket inherited (USR2, systemd) has no file this process made.
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))
    sock.listen(4)
    inherited = listener_from_fd(sock.detach())
    assert not inherited.refuse_new_connections() and (tmp_path / "s").exists()
    assert not inherited.refuses_new_connections()
    inherited.close()


def test_queued_connections_takes_what_is_queued_up_to_the_room_given() -> None:
    sock = _tcp_listener()
    sock.setblocking(False)
    port = sock.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    refuse_new_connections(sock)
    listener = Listener(parse_address(f"127.0.0.1:{port}"), sock)
    other = Listener(parse_address("127.0.0.1:1"), _tcp_listener())
    assert closing_for_good([listener, other]) == [listener]
    accept = acceptor(sock)
    first = list(queued_connections(accept, 3))
    assert len(first) == 3
    rest = list(queued_connections(accept, 100))
    assert len(rest) == 2  # then the queue is empty: the generator stops
    assert list(queued_connections(accept, 100)) == []
    for conn, _ in first + rest:
        conn.close()
    for s in (*clients, sock, other.sock):
        s.close()


def test_an_upgrade_hands_the_unix_socket_file_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    listener = bind(f"unix:{path}", backlog=8, reuse_port=False, unix_mode=0o600, log=None)
    tcp = bind("127.0.0.1:0", backlog=8, reuse_port=False, unix_mode=0o600, log=None)
    # Recorded so that the test leaves the environment as it found it.
    monkeypatch.setenv("CORRAL_FD", "")
    monkeypatch.setenv("CORRAL_FD_PATHS", "")
    export_fds([listener, tcp])
    assert os.environ["CORRAL_FD"] == f"{listener.fileno()},{tcp.fileno()}"
    paths = inherited_paths()
    assert list(paths) == [listener.fileno()] and "CORRAL_FD_PATHS" not in os.environ
    taken = listener_from_fd(os.dup(listener.fileno()), path_id=paths[listener.fileno()])
    assert taken.owns_path and taken.refuse_new_connections() and not path.exists()
    # Garbage (a hand-edited environment) names nothing.
    monkeypatch.setenv("CORRAL_FD_PATHS", "x=1:2,3=:4,5=6:,7")
    assert inherited_paths() == {}
    for lst in (taken, listener, tcp):
        lst.close()


def test_someone_elses_filter_is_not_the_mark() -> None:
    import ctypes
    import struct

    sock = _tcp_listener()
    keep_all = struct.pack("=HBBI", 0x06, 0, 0, 0xFFFFFFFF)  # ret #-1: a filter that drops nothing
    program = ctypes.create_string_buffer(keep_all, len(keep_all))
    sock.setsockopt(socket.SOL_SOCKET, 26, struct.pack("@HP", 1, ctypes.addressof(program)))
    assert not refuses_new_connections(sock)
    assert refuse_new_connections(sock) and refuses_new_connections(sock)  # the mark replaces it
    sock.close()
    assert not refuses_new_connections(sock)
