"""The shared worker conformance suite: what every corral worker class must do.

A worker plugin, corral's own or a third party's, is done when it passes
this suite. Run it from the plugin's own tests::

    # tests/conftest.py
    import pytest

    @pytest.fixture
    def corral_worker_class() -> str:
        return "myworker"

    # tests/test_conformance.py
    from corral.testing.conformance import *  # noqa: F403

or without writing a file::

    python -m pytest --pyargs corral.testing.conformance --corral-worker-class myworker

Every check runs a real corral process with that worker class and talks to
it over real sockets; the fixtures come from corral's pytest plugin
(:mod:`corral.testing.plugin`), and ``corral_server_args`` adds arguments to
every server the suite starts. Behaviour that depends on what the class
declares in its WorkerSpec (keep-alive, concurrency) is checked against
that declaration, so the class must be registered by a plugin (a class
given as ``package.module:Class`` has no declaration to check against).
"""

from __future__ import annotations

import importlib
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.plugins import WorkerSpec, make_plugin_manager, worker_registry
from corral.testing.process import CorralProcess, parse_responses, read_until_close, wait_for_file
from corral.testing.reserved import collisions

__all__ = [
    "MALFORMED_REQUESTS",
    "test_app_exception_is_500_and_logged",
    "test_chunked_request_body_with_trailers",
    "test_connection_close_from_app",
    "test_environ_is_complete",
    "test_error_after_start_closes_connection",
    "test_expect_100_continue",
    "test_file_wrapper_sends_whole_file",
    "test_flask_app",
    "test_forwarded_scheme_from_trusted_peers_only",
    "test_graceful_timeout_bounds_the_stop",
    "test_head_and_bodyless_statuses",
    "test_hello",
    "test_iterable_close_is_called",
    "test_keepalive_and_pipelining",
    "test_killed_worker_is_replaced",
    "test_large_response_reaches_a_slow_reader_intact",
    "test_limit_request_body",
    "test_malformed_requests",
    "test_max_requests_recycles_worker",
    "test_mutated_requests_never_crash_or_hang",
    "test_proxy_protocol",
    "test_request_body_read_styles",
    "test_response_header_injection_refused",
    "test_retirement_serves_a_request_sent_on_a_kept_alive_connection",
    "test_retirement_under_keepalive_load",
    "test_slow_clients_never_get_the_worker_killed",
    "test_streamed_responses_are_not_held_back",
    "test_streaming_response_is_chunked",
    "test_stuck_worker_is_killed_and_replaced",
    "test_term_finishes_inflight_request",
    "test_underscore_fields_never_pose_as_framing_fields",
    "test_validator_wrapped_app",
    "test_worker_class_keeps_clear_of_base_attributes",
]

Shared = Callable[[str], CorralProcess]


def wsgi_only(worker_class: str, why: str) -> None:
    """Skip a check of the WSGI interface itself for a class that serves ASGI apps."""
    if worker_spec(worker_class).app_interface != "wsgi":
        pytest.skip(f"a check of the WSGI interface ({why}); the class serves "
                    f"{worker_spec(worker_class).app_interface.upper()} apps")


def worker_spec(name: str) -> WorkerSpec:
    """The WorkerSpec an installed plugin registers for ``name``; fails the test if there is none."""
    pm, _, problems = make_plugin_manager()
    registry = worker_registry(pm)
    if name not in registry:
        pytest.fail(
            f"worker class {name!r} is not registered by an installed plugin, and the conformance "
            "suite checks the class against what its WorkerSpec declares. Install the plugin "
            "(pip install -e .) and give its registered name."
            + "".join(f"\n{problem}" for problem in problems),
            pytrace=False,
        )
    return registry[name]


def _get(server: CorralProcess, path: str, **kw: object) -> tuple[int, dict[str, str], bytes]:
    return server.request("GET", path, **kw)  # type: ignore[arg-type]


def test_worker_class_keeps_clear_of_base_attributes(corral_worker_class: str) -> None:
    """The class's own code takes no attribute its corral base classes keep (corral.testing.reserved).

    Reusing ``self.limits`` or ``self.write_timeout`` for a setting of its
    own silently changes what the base does; reading a private name ties the
    class to one release of corral.
    """
    module, _, name = worker_spec(corral_worker_class).path.partition(":")
    worker_class = getattr(importlib.import_module(module), name)
    found = collisions(worker_class)
    assert not found, "\n".join(found)


# -- the basics ---------------------------------------------------------------


def test_hello(corral_shared_server: Shared, corral_worker_class: str) -> None:
    status, headers, body = _get(corral_shared_server(corral_worker_class), "/")
    assert status == 200
    assert body == b"Hello, World!"
    assert headers["server"] == "corral"
    assert "date" in headers


def test_environ_is_complete(corral_shared_server: Shared, corral_worker_class: str) -> None:
    wsgi_only(corral_worker_class, "the environ")
    server = corral_shared_server(corral_worker_class)
    status, _, body = _get(server, "/environ/../environ?a=1&b=%20", headers={"X-Custom": "v"})
    # http.client does not normalise the path; the server must not either.
    assert status == 404
    status, _, body = _get(server, "/environ?a=1&b=%20", headers={"X-Custom": "v", "Cookie": "a=1"})
    env = json.loads(body)
    assert status == 200
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["RAW_URI"] == "/environ?a=1&b=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"].isdigit()
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(server.port)
    assert env["SCRIPT_NAME"] == ""
    assert env["HTTP_X_CUSTOM"] == "v"
    assert env["HTTP_COOKIE"] == "a=1"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.run_once"] is False
    assert env["corral.worker_class"] == corral_worker_class
    spec = worker_spec(corral_worker_class)
    assert env["wsgi.multithread"] is spec.runs_requests_at_once
    # Percent-decoding of PATH_INFO is latin-1, as PEP 3333 asks.
    status, _, body = _get(server, "/%65nviron")
    assert json.loads(body)["PATH_INFO"] == "/environ"


def test_request_body_read_styles(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    payload = b"line one\nline two\n" + bytes(range(256)) * 300
    status, _, body = server.request("POST", "/echo", body=payload)
    assert (status, body) == (200, payload)
    status, _, body = server.request("POST", "/echo-pieces?size=7", body=payload)
    assert body == payload
    status, _, body = server.request("POST", "/echo-lines", body=b"a\nbb\n\nccc")
    assert json.loads(body) == ["a\n", "bb\n", "\n", "ccc"]


def test_chunked_request_body_with_trailers(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    req = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Sum: 11\r\n\r\n")
    (status, headers, body), = list(parse_responses(server.raw(req)))
    assert (status, body) == (200, b"hello world")
    # Trailers reach WSGI apps as wsgi.input.trailers; ASGI has no message for them.
    wanted = [["X-Sum", "11"]] if worker_spec(corral_worker_class).app_interface == "wsgi" else []
    assert json.loads(headers["x-trailers"]) == wanted


def test_streaming_response_is_chunked(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    data = server.raw(b"GET /stream?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    (status, headers, body), = list(parse_responses(data))
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"
    # HTTP/1.0 has no chunked coding: the body is delimited by closing.
    data = server.raw(b"GET /stream?n=2 HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower() and b"connection: close" in head.lower()
    assert body == b"chunk 0\nchunk 1\n"
    status, _, body = _get(server, "/write")
    assert status == 200
    assert body == b"written then returned"


#: Streamed responses timed by test_streamed_responses_are_not_held_back.
STREAMED_RESPONSES = 20
#: A response this late waited for a delayed ACK (Linux delays one up to
#: 40 ms): a small write held back by Nagle's algorithm.
HELD_BACK = 0.035


def _read_streamed(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed in a streamed response: {data[-200:]!r}")
        data += chunk
    return data


def test_streamed_responses_are_not_held_back(corral_shared_server: Shared, corral_worker_class: str) -> None:
    """A response written in several small pieces reaches the client at once (TCP_NODELAY).

    With Nagle's algorithm on, a small write waits until the client has
    acknowledged the one before, and a client delays that ACK up to 40 ms
    on a kept-alive connection: each streamed response (head, chunks,
    last chunk) then takes 40 ms instead of a fraction of one. A worker
    that accepts sockets itself must set TCP_NODELAY on them, as corral's
    accept paths do. Timed, but not a benchmark: it counts responses that
    took a delayed ACK's time, and allows a quarter of them for a busy machine.
    """
    server = corral_shared_server(corral_worker_class)
    spec = worker_spec(corral_worker_class)
    request = b"GET /stream?n=4 HTTP/1.1\r\nHost: x\r\n\r\n"
    late = []
    sock = server.connect()
    try:
        for _ in range(STREAMED_RESPONSES):
            if not spec.keepalive:
                sock.close()
                sock = server.connect()
            started = time.monotonic()
            sock.sendall(request)
            data = _read_streamed(sock)
            took = time.monotonic() - started
            assert data.endswith(b"chunk 3\n\r\n0\r\n\r\n"), data[-200:]
            if took >= HELD_BACK:
                late.append(round(took * 1000))
    finally:
        sock.close()
    assert len(late) <= STREAMED_RESPONSES // 4, (
        f"{len(late)} of {STREAMED_RESPONSES} streamed responses took {HELD_BACK * 1000:.0f} ms or more "
        f"({late} ms): small writes are held back (set TCP_NODELAY on accepted TCP sockets)")


def test_head_and_bodyless_statuses(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    data = server.raw(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert rest == b"" and b"content-length: 13" in head.lower()
    for code in (204, 304):
        data = server.raw(f"GET /status?code={code} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {code} ".encode())
        assert rest == b"", f"{code} carried a body"
        assert b"transfer-encoding" not in head.lower()


def test_expect_100_continue(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        interim = sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        rest = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        sock.sendall(b"hello")
        rest += read_until_close(sock)
    (status, _, body), = list(parse_responses(rest))
    assert (status, body) == (200, b"hello")


def test_file_wrapper_sends_whole_file(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    status, headers, body = _get(server, "/file?size=300000")
    assert status == 200
    assert headers["content-length"] == "300000"
    assert body == bytes(i % 251 for i in range(300000))
    status, headers, body = _get(server, "/file-like?size=70000")
    assert (status, body) == (200, bytes(i % 251 for i in range(70000)))
    # A pipe has a file descriptor but no size: read and sent, not sendfile'd.
    status, headers, body = _get(server, "/pipe?size=50000")
    assert (status, body) == (200, bytes(i % 251 for i in range(50000)))
    data = server.raw(b"HEAD /file?size=5000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"content-length: 5000" in head.lower() and rest == b""


def test_connection_close_from_app(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    data = server.raw(b"GET /connection-close HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    responses = list(parse_responses(data))
    assert len(responses) == 1 and responses[0][1]["connection"] == "close"


def test_iterable_close_is_called(corral_shared_server: Shared, corral_worker_class: str,
                                  tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    status, _, body = _get(corral_shared_server(corral_worker_class), f"/closing?marker={marker}")
    assert (status, body) == (200, b"closing")
    deadline = time.monotonic() + 5
    # The file appears before its text is written: wait for the text.
    while not (marker.exists() and marker.read_text() == "closed") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.read_text() == "closed"


def test_keepalive_and_pipelining(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    spec = worker_spec(corral_worker_class)
    reqs = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /ignore-body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    responses = list(parse_responses(server.raw(reqs)))
    if spec.keepalive:
        assert [r[0] for r in responses] == [200, 200, 200, 200]
        assert [r[2] for r in responses][0::2] == [b"abc", b"ignored"]
        assert responses[3][2] == b"Hello, World!"
    else:
        # A worker without keep-alive answers the first request and closes.
        assert len(responses) == 1 and responses[0][1]["connection"] == "close"
        assert responses[0][2] == b"abc"


# -- errors ------------------------------------------------------------------

#: (name, raw request, expected status). Each must be answered with that status
#: and "Connection: close", and then the connection closes.
MALFORMED_REQUESTS: list[tuple[str, bytes, int]] = [
    ("nul in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
    ("no host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("duplicate content-length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    ("content-length and chunked", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("signed content-length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("content-length list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    ("unknown coding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("chunked not last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("chunked on 1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("bad chunk size", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("chunk without crlf", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
    ("framing trailer", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n", 400),
    ("long request line", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    ("too many fields", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    ("huge field", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 9000 + b"\r\n\r\n", 431),
    ("http/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("http/0.9", b"GET /\r\n\r\n", 400),
    ("junk version", b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
    ("bad method", b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("long method", b"A" * 100 + b" / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("unknown expectation", b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
    ("asterisk for GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bare lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("non-ascii target", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("connect origin-form", b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("tls to plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
]


@pytest.mark.parametrize("name,raw,status", MALFORMED_REQUESTS, ids=[m[0] for m in MALFORMED_REQUESTS])
def test_malformed_requests(corral_shared_server: Shared, corral_worker_class: str,
                            name: str, raw: bytes, status: int) -> None:
    server = corral_shared_server(corral_worker_class)
    with server.connect() as sock:
        sock.sendall(raw + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = read_until_close(sock)  # returns only if the server closes
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]
    assert b"\r\nconnection: close" in head.lower()
    # Exactly one response: nothing after the error was parsed.
    assert body.count(b"HTTP/1.1") == 0


#: Requests the mutation test starts from: a body by length, a chunked body
#: with a trailer, HTTP/1.0 keep-alive, and a PROXY line (refused unless
#: enabled: a 400).
_MUTATION_SEEDS = (
    b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
)
#: What the mutations insert: line ends alone and in pairs, separators,
#: framing fields, bogus numbers, a token longer than any limit.
_MUTATION_TOKENS = (
    b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b";", b"chunked", b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n", b"\xff", b"9" * 30, b"-1", b"0x10", b"HTTP/1.1",
    b"Expect: 100-continue\r\n", b"%00", b"/../", b"A" * 9000,
)


def _mutations(count: int, seed: int) -> list[bytes]:
    """``count`` requests, each a seed request with 1-4 random edits (the same list for the same seed)."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(rnd.choice(_MUTATION_SEEDS))
        for _ in range(rnd.randint(1, 4)):
            op, pos = rnd.random(), rnd.randint(0, len(data))
            if op < 0.3:
                data[pos:pos] = rnd.choice(_MUTATION_TOKENS)
            elif op < 0.5:
                del data[pos:pos + rnd.randint(1, 5)]
            elif op < 0.7 and pos < len(data):
                data[pos] = rnd.randrange(256)
            elif op < 0.8:
                del data[pos:]
            else:
                data[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        out.append(bytes(data))
    return out


def test_mutated_requests_never_crash_or_hang(corral_server: Callable[..., CorralProcess]) -> None:
    # Hundreds of damaged requests, each on its own connection and followed
    # by the client's end of stream: every one gets an HTTP/1.1 answer or a
    # close, within seconds; nothing reaches the error log as a crash; and
    # the worker still serves afterwards, the same one (never replaced).
    server = corral_server("--header-timeout", "2")
    (pid,) = server.wait_for_workers(1)
    for raw in _mutations(300, seed=7):
        with server.connect(timeout=5) as sock:
            try:
                sock.sendall(raw)
                sock.shutdown(socket.SHUT_WR)
                data = read_until_close(sock, timeout=5)
            except ConnectionResetError:
                continue  # closed with input unread: a reset is a close
            except TimeoutError:
                pytest.fail(f"no answer and no close within 5 s for {raw[:200]!r}")
        assert not data or data.startswith(b"HTTP/1.1 "), (raw[:200], data[:200])
    assert server.request("GET", "/")[0] == 200
    assert server.worker_pids() == [pid]
    log = server.log()
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]


def test_limit_request_body(corral_server: Callable[..., CorralProcess]) -> None:
    server = corral_server("--limit-request-body", "10")
    status, _, _ = server.request("POST", "/echo", body=b"x" * 11)
    assert status == 413
    status, _, body = server.request("POST", "/echo", body=b"x" * 10)
    assert (status, body) == (200, b"x" * 10)
    data = server.raw(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 413 ")


def test_forwarded_scheme_from_trusted_peers_only(corral_server: Callable[..., CorralProcess]) -> None:
    server = corral_server()  # loopback is trusted by default, as with gunicorn
    _, _, body = server.request("GET", "/environ", headers={"X-Forwarded-Proto": "https"})
    assert json.loads(body)["wsgi.url_scheme"] == "https"
    status, _, _ = server.request("GET", "/environ", headers={"X-Forwarded-Proto": "https",
                                                              "X-Forwarded-Ssl": "off"})
    assert status == 400  # conflicting scheme headers
    other = corral_server("--forwarded-allow-ips", "10.9.8.7")
    _, _, body = other.request("GET", "/environ", headers={"X-Forwarded-Proto": "https"})
    assert json.loads(body)["wsgi.url_scheme"] == "http"


def test_underscore_fields_never_pose_as_framing_fields(corral_server: Callable[..., CorralProcess]) -> None:
    """Even with ``--header-map dangerous``, CONTENT_LENGTH and CONTENT_TYPE say what framed the request."""
    server = corral_server("--header-map", "dangerous")
    data = server.raw(b"POST /environ HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nContent-Type: text/plain\r\n"
                      b"Content_Length: -1E23\r\nContent_Type: application/evil\r\nX_Custom: passed\r\n"
                      b"Connection: close\r\n\r\npayload")
    (status, _, body), = list(parse_responses(data))
    assert status == 200
    env = json.loads(body)
    assert (env["CONTENT_LENGTH"], env["CONTENT_TYPE"]) == ("7", "text/plain")
    assert env["HTTP_X_CUSTOM"] == "passed"  # what dangerous is for


def test_proxy_protocol(corral_server: Callable[..., CorralProcess]) -> None:
    import struct

    server = corral_server("--proxy-protocol")
    req = b"GET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    (status, _, body), = list(parse_responses(server.raw(b"PROXY TCP4 203.0.113.9 10.0.0.1 4567 80\r\n" + req)))
    env = json.loads(body)
    assert (status, env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (200, "203.0.113.9", "4567")
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x21" + struct.pack("!H", 36)
          + bytes.fromhex("20010db8000000000000000000000001") + bytes(16) + struct.pack("!HH", 999, 80))
    (status, _, body), = list(parse_responses(server.raw(v2 + req)))
    assert (status, json.loads(body)["REMOTE_ADDR"]) == (200, "2001:db8::1")
    assert server.raw(b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n" + req).startswith(b"HTTP/1.1 400 ")
    assert server.raw(req).startswith(b"HTTP/1.1 400 ")  # the header is required
    untrusted = corral_server("--proxy-protocol-version", "v1", "--proxy-allow-from", "10.9.8.7")
    assert untrusted.raw(b"PROXY TCP4 1.2.3.4 10.0.0.1 1 2\r\n" + req).startswith(b"HTTP/1.1 403 ")


def test_app_exception_is_500_and_logged(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    status, headers, _ = _get(server, "/error")
    assert status == 500 and headers["connection"] == "close"
    server.wait_for_log("RuntimeError: the test app failed on purpose")
    assert _get(server, "/")[0] == 200


def test_error_after_start_closes_connection(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    data = server.raw(b"GET /error-after-start HTTP/1.1\r\nHost: x\r\n\r\n")
    # Headers went out; the body is cut short and the connection closed,
    # so the client can tell (no terminating zero-length chunk).
    assert data.startswith(b"HTTP/1.1 200 ")
    assert not data.endswith(b"0\r\n\r\n")
    server.wait_for_log("failed while streaming")


def test_response_header_injection_refused(corral_shared_server: Shared, corral_worker_class: str) -> None:
    server = corral_shared_server(corral_worker_class)
    status, headers, _ = _get(server, "/bad-header")
    assert status == 500 and "set-cookie" not in headers
    status, _, _ = _get(server, "/hop-header")
    assert status == 500


def test_validator_wrapped_app(corral_server: Callable[..., CorralProcess], corral_worker_class: str) -> None:
    wsgi_only(corral_worker_class, "wsgiref's PEP 3333 validator")
    server = corral_server(app="corral.testing.apps:validated_app()")
    # The validator insists on read(size): use the routes that read that way.
    for method, path, body in [("GET", "/", None), ("POST", "/echo-pieces?size=100", b"x" * 1000),
                               ("GET", "/stream?n=2", None), ("GET", "/environ", None),
                               ("POST", "/echo-lines", b"a\nb\n"), ("GET", "/file?size=1000", None)]:
        status, _, _ = server.request(method, path, body=body)
        assert status == 200, (method, path)
    assert "AssertionError" not in server.log()


def test_flask_app(corral_server: Callable[..., CorralProcess], tmp_path: Path,
                   corral_worker_class: str) -> None:
    wsgi_only(corral_worker_class, "a Flask app")
    pytest.importorskip("flask")
    (tmp_path / "flaskapp.py").write_text(
        "from flask import Flask, request, jsonify\n"
        "app = Flask(__name__)\n"
        "@app.route('/hi/<name>')\n"
        "def hi(name):\n"
        "    return jsonify(name=name, q=request.args.get('q'))\n"
        "@app.post('/upload')\n"
        "def upload():\n"
        "    return str(len(request.get_data()))\n"
    )
    server = corral_server("--chdir", str(tmp_path), app="flaskapp:app")
    status, _, body = server.request("GET", "/hi/bob?q=1")
    assert status == 200 and json.loads(body) == {"name": "bob", "q": "1"}
    status, _, body = server.request("POST", "/upload", body=b"z" * 100000)
    assert (status, body) == (200, b"100000")
    status, _, _ = server.request("GET", "/missing")
    assert status == 404


# -- process management -----------------------------------------------------------


def test_killed_worker_is_replaced(corral_server: Callable[..., CorralProcess]) -> None:
    server = corral_server(workers=2)
    pids = server.wait_for_workers(2)
    import os

    os.kill(pids[0], signal.SIGKILL)
    new = server.wait_for_workers(2, timeout=2.0, exclude=[pids[0]])
    assert pids[1] in new
    assert server.request("GET", "/")[0] == 200


def test_stuck_worker_is_killed_and_replaced(corral_server: Callable[..., CorralProcess]) -> None:
    server = corral_server("--timeout", "2", "--graceful-timeout", "1")
    (pid,) = server.wait_for_workers(1)
    with server.connect(timeout=10) as sock:
        sock.sendall(b"GET /spin HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        read_until_close(sock, timeout=10)
    server.wait_for_workers(1, timeout=5, exclude=[pid])
    assert time.monotonic() - start < 2 + 2 + 1.5
    log = server.wait_for_log("WORKER TIMEOUT")
    # The stuck frame is in the error log, whatever runs the request.
    server.wait_for_log(r"in app\n\s+while True")
    assert server.request("GET", "/")[0] == 200
    assert "WORKER TIMEOUT" in log


def _read_slowly(sock: socket.socket, rate: float) -> bytes:
    """Everything until the server closes, at about ``rate`` bytes a second."""
    chunks: list[bytes] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        time.sleep(len(data) / rate)


def _small_window(server: CorralProcess) -> socket.socket:
    """A connection whose receive buffer cannot absorb a large response."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    return sock


def test_large_response_reaches_a_slow_reader_intact(corral_shared_server: Shared, corral_worker_class: str) -> None:
    # A body the app returns whole, larger than the socket's send buffer:
    # the first send takes only part of it, and the rest must follow from
    # exactly where it stopped. Bytes that differ everywhere, so that a
    # piece sent twice or skipped cannot go unnoticed.
    server = corral_shared_server(corral_worker_class)
    data = random.Random(3).randbytes(6 << 20)
    with _small_window(server) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        ((status, _, body),) = list(parse_responses(_read_slowly(sock, 40e6)))
    assert status == 200
    assert len(body) == len(data)
    assert body == data
    assert server.request("GET", "/")[0] == 200


@pytest.mark.timeout(120)
def test_slow_clients_never_get_the_worker_killed(corral_server: Callable[..., CorralProcess]) -> None:
    # Waiting on a client is not being stuck: a worker waiting for bytes
    # that trickle in, or for a client to read a large response, keeps
    # beating (a threaded worker's watchdog does not count the wait), and
    # the client's own deadlines end the wait: --header-timeout for each
    # read (a 408), --timeout for each write without progress (dropped).
    # With --timeout 2, each of these keeps its worker waiting longer than
    # 2 s. (A sync worker used to be killed by any of them; gthread and
    # tornado by the slow readers and a slow upload.) The clients run at
    # once, on five workers so that a worker that serves one connection at
    # a time (sync, gthread's single thread) takes about as long as the
    # slowest case, not as long as all of them.
    server = corral_server("--timeout", "2", "--header-timeout", "4", workers=5)
    pids = sorted(server.wait_for_workers(5))
    size = 14 << 20  # the server's send buffer alone can take 4 MiB of it

    def half_head() -> object:
        with server.connect(timeout=60) as sock:
            start = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow:")
            statuses = [status for status, _, _ in parse_responses(read_until_close(sock, timeout=60))]
            return statuses, time.monotonic() - start >= 3.5

    def short_body() -> object:
        with server.connect(timeout=60) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            return [status for status, _, _ in parse_responses(read_until_close(sock, timeout=60))]

    def slow_reader(path: str) -> object:
        # Both ways a file leaves: sendfile (a real file), iteration (file-like).
        with _small_window(server) as sock:
            sock.sendall(f"GET {path}?size={size}&fill=zero HTTP/1.1\r\nHost: x\r\n"
                         "Connection: close\r\n\r\n".encode())
            ((status, _, body),) = list(parse_responses(_read_slowly(sock, 2.5e6)))
            return status, len(body) == size

    def stops_reading() -> object:
        with _small_window(server) as sock:
            sock.sendall(f"GET /file?size={2 * size}&fill=zero HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            first = sock.recv(1)  # being served
            time.sleep(5)
            return first != b"" and 1 + len(read_until_close(sock, timeout=60)) < 2 * size

    cases: dict[str, Callable[[], object]] = {
        "half a head": half_head,
        "a body that stops short": short_body,
        "a slow reader of a file": lambda: slow_reader("/file"),
        "a slow reader of a file-like object": lambda: slow_reader("/file-like"),
        "a client that stops reading": stops_reading,
    }
    results: dict[str, object] = {}

    def run(name: str, case: Callable[[], object]) -> None:
        try:
            results[name] = case()
        except Exception as exc:  # reported below, with the others
            results[name] = exc

    threads = [threading.Thread(target=run, args=item) for item in cases.items()]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(110)
    assert results == {
        "half a head": ([408], True),  # a 408, at the header timeout, not before
        "a body that stops short": [408],
        "a slow reader of a file": (200, True),  # the whole body
        "a slow reader of a file-like object": (200, True),
        "a client that stops reading": True,  # dropped: it got less than the file
    }
    assert sorted(server.worker_pids()) == pids
    assert "WORKER TIMEOUT" not in server.log()
    assert server.request("GET", "/")[0] == 200


def test_term_finishes_inflight_request(corral_server: Callable[..., CorralProcess], tmp_path: Path) -> None:
    server = corral_server("--graceful-timeout", "10")
    result: list[object] = []
    marker = tmp_path / "in-app"

    def client() -> None:
        result.append(server.request("GET", f"/sleep?t=1&marker={marker}"))

    t = threading.Thread(target=client)
    t.start()
    wait_for_file(marker)
    code = server.stop(signal.SIGTERM)
    t.join(10)
    assert code == 0
    assert result and result[0][0] == 200  # type: ignore[index]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def stop_outliving_graceful_timeout(corral_server: Callable[..., CorralProcess], tmp_path: Path) -> CorralProcess:
    """Stop a server (``--graceful-timeout 1``) while a request sleeps 30 s; the stopped server.

    Asserts what every class must do: the request's connection is closed
    unanswered, and the arbiter exits 0 within graceful_timeout plus the
    second (ABORT_GRACE) it leaves workers to exit in order before it kills
    them. Who cut the request, the worker itself or the arbiter's SIGKILL,
    is the class's to choose (its log says which).
    """
    server = corral_server("--graceful-timeout", "1")
    marker = tmp_path / "in-app"
    with server.connect(timeout=10) as busy:
        busy.sendall(f"GET /sleep?t=30&marker={marker} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_for_file(marker)
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert read_until_close(busy, timeout=10) == b""
        assert server.wait_exit(10) == 0
    assert time.monotonic() - start < 1 + 1 + 2
    return server


def test_graceful_timeout_bounds_the_stop(corral_server: Callable[..., CorralProcess], tmp_path: Path) -> None:
    # A request that outlives --graceful-timeout does not hold the stop up.
    stop_outliving_graceful_timeout(corral_server, tmp_path)


def test_max_requests_recycles_worker(corral_server: Callable[..., CorralProcess]) -> None:
    # The worker asks for its replacement and serves on until the arbiter,
    # once that one is ready, retires it: with -w 1 every request is still
    # answered, by the old worker and then by the new one.
    server = corral_server("--max-requests", "3")
    (pid,) = server.wait_for_workers(1)
    pids: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not pids or pids[-1] == pid):
        status, _, body = server.request("GET", "/pid")
        assert status == 200
        pids.append(int(body))
    assert pids[0] == pid and pids[-1] != pid, pids
    server.wait_for_log(r"asked to be recycled; starting its replacement")
    # The old worker is gone once its replacement serves.
    server.wait_for_workers(1, exclude=[pid])


# -- retirement (corral.serve.retirement) ----------------------------------------------


def test_retirement_under_keepalive_load(corral_server: Callable[..., CorralProcess], tmp_path: Path) -> None:
    # Two HUPs under keep-alive clients that send GETs and POSTs with bodies
    # back to back and retry nothing, with slow requests in flight at each:
    # every response arrives, complete and right. A worker that closes a
    # kept-alive connection under a request it received fails here.
    from corral.testing.load import KeepAliveMix

    server = corral_server("--worker-connections", "100", workers=2)
    pids = set(server.wait_for_workers(2))
    with KeepAliveMix("127.0.0.1", server.port, connections=8) as load:
        load.wait_for_requests(100)
        slow = []
        for i in range(2):
            slow += load.slow(2, 0.5, str(tmp_path))
            server.send_signal(signal.SIGHUP)
            server.wait_for_log("Reloading: replacing workers", count=i + 1)
            pids = set(server.wait_for_workers(2, exclude=list(pids)))
            load.wait_for_requests(100)
        for t in slow:
            t.join(30)
        result = load.stop()
    assert result.failures == [], result.failures[:10]
    assert result.slow_ok == 4 and result.refused == 0
    assert pids & result.pids


def test_shutdown_serves_the_listen_queue(corral_server: Callable[..., CorralProcess], tmp_path: Path) -> None:
    # A graceful shutdown while new connections keep arriving (a proxy
    # without upstream keep-alive): the connections queued in the listener
    # when it closes have sent their requests, and the close would reset
    # them. A worker that does not serve what closing_for_good() marks
    # (corral.serve.retirement, rule 1) loses some here. Refused clients
    # sent nothing: not a loss.
    from corral.testing.load import KeepAliveMix

    server = corral_server(workers=2)
    server.wait_for_workers(2)
    with KeepAliveMix("127.0.0.1", server.port, connections=8, fresh_connections=True) as load:
        load.wait_for_requests(300)
        slow = load.slow(2, 0.5, str(tmp_path))
        server.send_signal(signal.SIGTERM)
        assert server.wait_exit(20) == 0
        for t in slow:
            t.join(30)
        result = load.stop()
    assert result.failures == [], result.failures[:10]
    assert result.slow_ok == 2 and result.refused == 8


def test_retirement_serves_a_request_sent_on_a_kept_alive_connection(
        corral_server: Callable[..., CorralProcess], corral_worker_class: str) -> None:
    # TERM with a connection kept alive: a request sent on it during the
    # drain is answered, with Connection: close, rather than met by a close.
    if not worker_spec(corral_worker_class).keepalive:
        pytest.skip("the class closes every connection after its response")
    server = corral_server("--keep-alive", "3", "--graceful-timeout", "10")
    with server.connect() as late:
        late.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or len(first.partition(b"\r\n\r\n")[2]) < int(
                first.lower().partition(b"content-length:")[2].split(b"\r\n")[0] or b"0"):
            chunk = late.recv(65536)
            assert chunk, "closed before the first response"
            first += chunk
        assert b"connection: close" not in first.lower()
        server.send_signal(signal.SIGTERM)
        server.wait_for_log("retiring: accepts no more")
        late.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        ((status, headers, body),) = list(parse_responses(read_until_close(late, timeout=10)))
        assert (status, body, headers.get("connection")) == (200, b"hello", "close")
    assert server.wait_exit(10) == 0
