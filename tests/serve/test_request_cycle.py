"""The request cycle (HttpConnection.serve) driven without a socket: a scripted Transport in, bytes out.

The same path every blocking, threaded and cooperative class runs, down to
keep-alive, pipelining, the retirement rule, 100-continue, the drain and
the timeouts. The connection sees only the Transport protocol
(corral.serve.transport), so the tests need no kernel and no clock beyond
the deadlines they script.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import IO, Any

from corral.api import ClientTimeout, HttpConnection, InFlight, ParserLimits, Transport
from corral.testing import parse_responses
from corral.wsgi.environ import EnvironContext, TrustedPeers

#: In a script: the client sends nothing more until the connection's deadline.
STALL = object()


class ScriptedTransport:
    """recv() returns the script's pieces in turn, b"" after the last; STALL times the wait out.

    What the script still holds is what "the kernel" has received and the
    connection has not read.
    """

    closes_early = False

    def __init__(self, script: Iterable[object]) -> None:
        self.script = list(script)
        self.sent: list[bytes] = []
        self.deadlines: list[float] = []
        self.closed = False
        #: close() was asked for with input unread: the graceful close of RFC 9112 9.6.
        self.lingered = False

    def recv(self, deadline: float) -> bytes:
        self.deadlines.append(deadline)
        if not self.script:
            return b""
        piece = self.script.pop(0)
        if piece is STALL:
            raise ClientTimeout
        assert isinstance(piece, bytes)
        return piece

    def send(self, data: bytes) -> None:
        assert not self.closed, "sent on a closed transport"
        self.sent.append(bytes(data))

    def send_last(self, data: bytes) -> None:
        self.send(data)
        self.closed = True

    def sendfile(self, file: IO[bytes], fd: int, offset: int, count: int) -> int:
        file.seek(offset)
        data = file.read(count)
        self.send(data)
        return len(data)

    def has_input(self) -> bool:
        return any(piece is not STALL for piece in self.script)

    def close(self, unread: bool) -> None:
        if unread or self.has_input():
            self.lingered = True
            self.script.clear()  # read and dropped until the client closes
        self.closed = True

    def wire(self) -> bytes:
        return b"".join(self.sent)


class StubWorker:
    """What HttpConnection reads from its worker, and no more."""

    def __init__(self, app: Any) -> None:
        self.limits = ParserLimits()
        self.header_timeout = 10.0
        self.watchdog = None
        self.write_timeout = 10.0
        self.proxy_peers = TrustedPeers(["127.0.0.1"])
        self.ssl_context = None
        self.alive = True
        self.retiring_since: float | None = None
        self.in_flight = InFlight()
        self.pre_request = None
        self.post_request: Any = None
        self.access_log = None
        self.stats: Any = None
        self.log = logging.getLogger("test.cycle")
        self.wsgi = app
        self.done = 0

    def notify(self) -> None:
        pass

    def request_done(self) -> None:
        self.done += 1


def echo_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode() + b":" + body]


def serve(script: Iterable[object], app: Any = echo_app, *, keepalive: float = 5.0,
          worker: StubWorker | None = None) -> tuple[ScriptedTransport, StubWorker]:
    worker = worker or StubWorker(app)
    sock = ScriptedTransport(script)
    transport: Transport = sock  # it satisfies the protocol
    env = EnvironContext(server_name="127.0.0.1", server_port="8000")
    HttpConnection(worker, transport, ("127.0.0.1", 5555), env, keepalive).serve()  # type: ignore[arg-type]
    return sock, worker


GET = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"


def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    sock, worker = serve([GET % b"a" + GET % b"b" + b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"])
    responses = list(parse_responses(sock.wire()))
    assert [(status, body) for status, _, body in responses] == [(200, b"/a:"), (200, b"/b:"), (200, b"/c:xyz")]
    assert all("connection" not in headers for _, headers, _ in responses)
    assert worker.done == 3 and not worker.in_flight and sock.closed


def test_retiring_answers_what_it_holds_and_says_close_on_the_last() -> None:
    # Retirement began after the first response: the second request is
    # already here (pipelined), so the first keeps the connection, and the
    # second, the last this worker will serve, says Connection: close.
    worker = StubWorker(echo_app)

    def retire_during_first(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        worker.alive, worker.retiring_since = False, time.monotonic()
        return echo_app(environ, start_response)

    worker.wsgi = retire_during_first
    sock, _ = serve([GET % b"a" + GET % b"b", GET % b"never-sent-in-time"], worker=worker)
    responses = list(parse_responses(sock.wire()))
    assert [body for _, _, body in responses] == [b"/a:", b"/b:", b"/never-sent-in-time:"]
    # Each response offered keep-alive while the client's next request was in
    # hand (buffered, or in the "kernel" of the script); the last one says close.
    assert [h.get("connection") for _, h, _ in responses] == [None, None, "close"]


def test_a_head_cut_off_by_its_deadline_is_a_408_and_silence_is_a_quiet_close() -> None:
    sock, _ = serve([b"GET / HTTP/1.1\r\nHo", STALL])
    (status, headers, _), = list(parse_responses(sock.wire()))
    assert status == 408 and headers["connection"] == "close"
    sock, worker = serve([STALL])
    assert sock.wire() == b"" and worker.done == 0 and sock.closed


def test_an_unread_small_body_is_drained_and_the_connection_kept() -> None:
    def ignore_body(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ignored"]

    post = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
    sock, worker = serve([post, b"he", b"llo" + GET % b"next"], ignore_body)
    assert [status for status, _, _ in parse_responses(sock.wire())] == [200, 200]
    assert worker.done == 2


def test_a_client_told_to_hold_its_body_and_never_told_to_go_on_is_not_kept() -> None:
    # The app answered without reading: no 100 Continue went out, the client
    # may still send its body, which could not be told from a next request.
    def early_answer(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("413 Payload Too Large", [])
        return [b"no"]

    expect = b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    sock, worker = serve([expect, GET % b"looks-like-a-request"], early_answer)
    (status, _, body), = list(parse_responses(sock.wire()))
    assert (status, body) == (413, b"no")
    assert b"100 Continue" not in sock.wire() and worker.done == 1
    # Closed with input unread: write side shut first, the rest read and
    # dropped (RFC 9112 9.6), never a bare close that resets the 413 away.
    assert sock.lingered and sock.closed and not sock.script


def test_post_request_and_the_in_flight_record_see_every_request() -> None:
    seen: list[tuple[str, int, int]] = []
    worker = StubWorker(echo_app)
    worker.post_request = lambda **kw: seen.append((kw["environ"]["PATH_INFO"], kw["resp"].status_code,
                                                    len(worker.in_flight)))
    serve([GET % b"one" + GET % b"two"], worker=worker)
    # Still counted in flight while its post_request runs? No: the request is done by then.
    assert seen == [("/one", 200, 0), ("/two", 200, 0)]


def test_the_live_counters_count_what_went_out() -> None:
    # corral.stats: one slot of a real shared table, written by the serving
    # layer. Requests that reached the app, in flight back to 0, every
    # response by status class (corral's own 400 too), body bytes, latency.
    from corral.stats import BUCKETS, StatsTable

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("the app failed")
        if environ["PATH_INFO"] == "/missing":
            start_response("404 Not Found", [("Content-Length", "4")])
            return [b"nope"]
        start_response("200 OK", [("Content-Length", "5")])
        return [b"hello"]

    table = StatsTable(4)
    worker = StubWorker(app)
    worker.stats = table.member(2, 4242)
    serve([GET % b"a" + GET % b"missing" + GET % b"b" + GET % b"boom"], worker=worker)
    serve([b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"], worker=worker)
    assert table.read(2).requests == 0  # counted in the worker until its next heartbeat
    worker.stats.publish(len(worker.in_flight))
    snap = table.read(2)
    assert snap.pid == 4242 and snap.started > 0
    assert snap.requests == 4 and snap.in_flight == 0
    assert snap.status == [0, 2, 0, 2, 1]  # 200 200 / 404 and corral's 400 / the 500
    assert snap.bytes == 5 + 4 + 5
    assert snap.observed == 4 and snap.histogram[0] == 4  # all well under BUCKETS[0]
    assert 0 <= snap.latency_sum < BUCKETS[0] * 4
    assert table.read(1).requests == 0  # a neighbour's slot is untouched
    table.retire(2)
    assert table.read(2).requests == 0 and table.retired.requests == 4
    assert table.retired.status == [0, 2, 0, 2, 1]
