"""SocketTransport over real sockets: the waits, the deadlines, the closing send and the graceful close."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from corral.api import ClientTimeout, HttpConnection, SocketTransport


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    yield server, client
    server.close()
    client.close()


def transport(sock: socket.socket, write_timeout: float = 5.0) -> tuple[SocketTransport, list[float]]:
    beaten: list[float] = []
    return SocketTransport(sock, write_timeout, lambda: beaten.append(time.monotonic())), beaten


def test_recv_returns_what_came_and_empty_once_the_client_closed(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = tcp_pair
    t, _ = transport(server)
    client.sendall(b"hello")
    assert t.recv(time.monotonic() + 5) == b"hello"
    client.close()
    assert t.recv(time.monotonic() + 5) == b""


def test_a_silent_client_times_out_at_the_deadline_and_the_wait_beats(
        tcp_pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    import corral.serve.transport as tr

    monkeypatch.setattr(tr, "WAIT_SLICE", 0.05)
    server, _ = tcp_pair
    t, beaten = transport(server)
    started = time.monotonic()
    with pytest.raises(ClientTimeout):
        t.recv(started + 0.3)
    assert time.monotonic() - started >= 0.3
    assert len(beaten) >= 3  # the heartbeat kept its cadence during the wait


def test_a_large_send_waits_for_a_slow_reader_and_arrives_whole(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = tcp_pair
    t, _ = transport(server)
    payload = bytes(range(256)) * 40_000  # 10 MB: far more than the socket buffers hold
    received = bytearray()

    def read_slowly() -> None:
        time.sleep(0.2)
        while len(received) < len(payload):
            data = client.recv(1 << 20)
            if not data:
                break
            received.extend(data)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    t.send(payload)
    reader.join(10)
    assert bytes(received) == payload


def test_a_client_that_never_reads_is_given_up_after_the_write_timeout(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = tcp_pair
    t, _ = transport(server, write_timeout=0.3)
    with pytest.raises(ClientTimeout):
        t.send(b"x" * (64 << 20))


def test_send_last_closes_at_once_when_nothing_is_unread(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = tcp_pair
    t, _ = transport(server)
    t.send_last(b"the end")
    assert t.closed
    client.settimeout(5)
    assert client.recv(100) == b"the end" and client.recv(100) == b""


def test_send_last_with_late_input_pushes_the_tail_and_leaves_the_close(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = tcp_pair
    t, _ = transport(server)
    client.sendall(b"GET /late HTTP/1.1\r\n")
    deadline = time.monotonic() + 5
    while not t.has_input():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    t.send_last(b"the end")
    # Not closed over unread input (that would reset the response away),
    # and the held tail is not held: it arrives now.
    assert not t.closed
    assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    client.settimeout(5)
    assert client.recv(100) == b"the end"
    t.close(unread=True)
    assert client.recv(100) == b""


def test_close_with_unread_input_shuts_the_write_side_and_reads_until_the_client_closes(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = tcp_pair
    t, _ = transport(server)
    client.sendall(b"a body nobody read")
    t.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
    closer = threading.Thread(target=t.close, args=(True,))
    closer.start()
    client.settimeout(5)
    got = b""
    while True:  # the response, then the FIN of the shut write side
        data = client.recv(100)
        if not data:
            break
        got += data
    assert got.startswith(b"HTTP/1.1 413")
    assert closer.is_alive()  # still reading what the client sends
    client.sendall(b"more of the body")  # read and dropped, never a reset
    client.close()
    closer.join(5)
    assert not closer.is_alive() and t.closed


def test_sendfile_sends_the_range_asked_for(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = tcp_pair
    t, _ = transport(server)
    with tempfile.TemporaryFile() as f:
        f.write(b"0123456789" * 1000)
        f.flush()
        assert t.sendfile(f, f.fileno(), 5, 20) == 20
    client.settimeout(5)
    got = b""
    while len(got) < 20:
        got += client.recv(100)
    assert got == (b"0123456789" * 3)[5:25]


def test_an_api1_connection_that_customised_io_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match=r"Old\.wait_io: HttpConnection no longer has 'wait_io'.*"
                                        r"SocketTransport subclass"):
        class Old(HttpConnection):
            def wait_io(self, events: int, deadline: float) -> None:
                pass
