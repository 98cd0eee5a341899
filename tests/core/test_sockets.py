"""corral.sockets.acceptor: the fast accept must hand out the same sockets as socket.accept()."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.sockets import acceptor


def _listener(kind: str, tmp_path: Path) -> tuple[socket.socket, object]:
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / "s"))
    elif kind == "tcp6":
        if not socket.has_ipv6:
            pytest.skip("no IPv6")
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.bind(("::1", 0))
        except OSError:
            sock.close()
            pytest.skip("no IPv6 loopback")
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)  # as every worker keeps its listeners
    return sock, sock.getsockname()


@pytest.fixture(params=["tcp4", "tcp6", "unix"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, object, str]]:
    sock, addr = _listener(request.param, tmp_path)
    yield sock, addr, request.param
    sock.close()


def _connect(sock: socket.socket, addr: object) -> socket.socket:
    client = socket.socket(sock.family, socket.SOCK_STREAM)
    client.connect(addr)
    return client


def test_acceptor_gives_what_accept_gives(listener: tuple[socket.socket, object, str]) -> None:
    sock, addr, kind = listener
    fast = acceptor(sock)
    c1, c2 = _connect(sock, addr), _connect(sock, addr)
    try:
        plain, plain_peer = sock.accept()
        ours, our_peer = fast()
        with plain, ours:
            for attr in ("family", "type", "proto"):
                assert getattr(ours, attr) == getattr(plain, attr), attr
            assert ours.gettimeout() == plain.gettimeout()
            assert ours.getblocking() == plain.getblocking()
            assert ours.getsockname() == plain.getsockname()
            if kind != "unix":  # an unnamed unix client's peer is ''
                assert our_peer == c2.getsockname()
                assert plain_peer == c1.getsockname()
            assert type(our_peer) is type(plain_peer)
            # It is a working connection, in blocking mode like accept()'s.
            c2.sendall(b"ping")
            assert ours.recv(4) == b"ping"
            ours.sendall(b"pong")
            assert c2.recv(4) == b"pong"
    finally:
        c1.close()
        c2.close()


def test_acceptor_follows_the_default_timeout(listener: tuple[socket.socket, object, str]) -> None:
    """An app may set socket.setdefaulttimeout(); accept() honours it, so must we."""
    sock, addr, _ = listener
    client = _connect(sock, addr)
    socket.setdefaulttimeout(7.0)
    try:
        ours, _ = acceptor(sock)()
        with ours:
            assert ours.gettimeout() == 7.0
    finally:
        socket.setdefaulttimeout(None)
        client.close()


def test_acceptor_raises_like_accept_when_nothing_is_queued(listener: tuple[socket.socket, object, str]) -> None:
    sock, _, _ = listener
    with pytest.raises(BlockingIOError):
        sock.accept()
    with pytest.raises(BlockingIOError):
        acceptor(sock)()
