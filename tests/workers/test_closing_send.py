"""A response on a connection that closes after it: its end and the close travel together.

The workers built on HttpConnection (sync, gthread, gevent) send the last
bytes of such a response with MSG_MORE and close the socket at once, before
the app's close() and the hooks run (HttpConnection._send_last): the FIN
rides in the response's last segment, and a client that asked to close is
not kept waiting for the app's cleanup. Where the client sent bytes that
were not read, closing would reset the connection and lose the held bytes,
so there the response goes out as an ordinary send. Real corral processes
over real sockets; the segment count needs Linux's TCP_INFO.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.plugins import make_plugin_manager, worker_registry
from corral.testing import CorralProcess
from corral.testing.process import parse_responses, read_until_close

pytestmark = pytest.mark.timeout(60)

_CLASSES = [k for k in ("sync", "gthread", "gevent") if k in worker_registry(make_plugin_manager()[0])]


@pytest.fixture(params=_CLASSES)
def corral_worker_class(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(corral_shared_server: Callable[[str], CorralProcess], corral_worker_class: str) -> Iterator[CorralProcess]:
    proc = corral_shared_server(corral_worker_class)
    yield proc
    # A response that reached the client is not enough: nothing may have
    # failed after it (a second close, a send on the closed socket).
    log = proc.log()
    assert "Traceback" not in log, log


def _segments_in(sock: socket.socket) -> int:
    """Segments this socket has received (struct tcp_info's tcpi_segs_in, Linux >= 4.2)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 140)[0])


def _ask(server: CorralProcess, request: bytes) -> socket.socket:
    sock = server.connect()
    sock.sendall(request)
    return sock


_CLOSING = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="sized"),
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="head"),
    pytest.param(b"GET /status?code=204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="204"),
    pytest.param(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", id="http10"),
    pytest.param(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
                 id="body-read"),
]


@pytest.mark.skipif(sys.platform != "linux", reason="MSG_MORE and tcpi_segs_in are Linux's")
@pytest.mark.parametrize("request_bytes", _CLOSING)
def test_the_fin_travels_with_the_response(server: CorralProcess, request_bytes: bytes) -> None:
    # The client receives the ACK of its request and one segment with the
    # whole response and the FIN. Before this change: 3 every time (the FIN
    # came on its own).
    counts = []
    for _ in range(6):
        sock = server.connect()
        before = _segments_in(sock)
        sock.sendall(request_bytes)
        data = read_until_close(sock)
        counts.append(_segments_in(sock) - before)
        sock.close()
        ((status, _, body),) = list(parse_responses(data))
        assert status in (200, 204), data
        if request_bytes.startswith(b"POST"):
            assert body == b"hello"
    assert max(counts) <= 2, counts


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_a_slow_app_close_does_not_delay_the_end_of_the_response(
        server: CorralProcess, tmp_path: Path, version: str) -> None:
    # HTTP/1.1 without a length: chunked, ended by the last chunk;
    # HTTP/1.0: ended by the close itself. Either way the client sees the
    # whole response and the end of the stream while the app's close() still sleeps.
    marker = tmp_path / f"closed-{version}"
    sock = _ask(server, f"GET /closing?marker={marker}&delay=0.6 HTTP/{version}\r\nHost: x\r\n"
                        "Connection: close\r\n\r\n".encode())
    started = time.monotonic()
    data = read_until_close(sock, timeout=10)
    took = time.monotonic() - started
    sock.close()
    assert not marker.exists(), "the app's close() had already returned: this proves nothing"
    assert took < 0.45, f"the end of the response waited for the app's close(): {took:.2f} s"
    ((status, headers, body),) = list(parse_responses(data))
    assert status == 200 and body == b"closing", data
    assert headers.get("connection") == "close"
    deadline = time.monotonic() + 10
    while not marker.exists():  # close() still ran, after the response
        assert time.monotonic() < deadline, "the app's close() never ran"
        time.sleep(0.05)


def test_unread_input_still_gets_the_whole_response(server: CorralProcess) -> None:
    # A body the app does not read, and a request pipelined behind a closing
    # one: closing with unread input resets the connection, so these go out
    # as ordinary sends. Were the response held back for the FIN, the reset
    # would throw it away and the client would see nothing.
    for request in (
        b"POST /ignore-body HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n\r\n0123456789",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        for _ in range(10):
            sock = _ask(server, request)
            time.sleep(0.02)  # let every byte reach the server before it answers
            try:
                data = read_until_close(sock)
            finally:
                sock.close()
            responses = list(parse_responses(data))
            assert len(responses) == 1 and responses[0][0] == 200, (request, data)


@pytest.mark.parametrize("late", [
    pytest.param(b"0123456789", id="unread-body"),
    pytest.param(b"\r\n", id="stray-crlf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="late-request"),
])
def test_bytes_arriving_while_the_app_runs_do_not_cost_the_response(
        server: CorralProcess, late: bytes) -> None:
    # The client's extra bytes reach the server after it read the request
    # and before it answers (the app sleeps): the kernel holds unread input
    # when the response is sent. Had the response been held back for the FIN
    # and the socket closed, the kernel would reset the connection and drop it.
    length = b"Content-Length: 10\r\n" if late == b"0123456789" else b""
    for _ in range(2):
        sock = _ask(server, b"POST /sleep?t=0.25 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + length + b"\r\n")
        time.sleep(0.05)
        sock.sendall(late)
        try:
            data = read_until_close(sock)
        except ConnectionResetError:
            data = b"(reset)"
        finally:
            sock.close()
        responses = list(parse_responses(data)) if data != b"(reset)" else []
        assert len(responses) == 1 and responses[0][0] == 200, data
        assert responses[0][2].startswith(b"slept"), data
