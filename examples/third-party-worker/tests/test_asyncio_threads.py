"""What asyncio-threads promises beyond the conformance suite.

Each test starts a real corral with the worker (corral.testing's
``corral_server`` fixture) and talks to it over real sockets. Readiness is
awaited through the server's log or a marker file the test app writes,
never by sleeping; every wait has a deadline.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from corral.testing import CorralProcess, parse_responses, read_until_close, run_corral, wait_for_file

Server = Callable[..., CorralProcess]

GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length framed response from a kept-alive connection."""
    sock.settimeout(timeout)
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(rest) >= length:
                ((status, headers, body),) = list(parse_responses(head + sep + rest[:length]))
                return status, headers, body
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk


@contextmanager
def idle_connections(server: CorralProcess, count: int) -> Iterator[list[socket.socket]]:
    """``count`` keep-alive connections that each had one answer and now sit idle."""
    socks = [server.connect() for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(GET % b"/")
        for sock in socks:
            assert read_response(sock)[2] == b"Hello, World!"
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_listed_with_its_setting() -> None:
    res = run_corral("plugins", "--json")
    assert res.returncode == 0, res.stderr
    plugin = next(p for p in json.loads(res.stdout)["plugins"] if p["name"] == "asyncio-threads")
    assert plugin["distribution"] == "corral-asyncio-threads"
    assert [w["name"] for w in plugin["workers"]] == ["asyncio-threads"]
    assert plugin["settings"] == ["asyncio_queue_timeout"]
    help_text = run_corral("--help").stdout
    assert "asyncio-threads plugin:" in help_text and "--asyncio-queue-timeout" in help_text


def test_bad_setting_is_a_config_error() -> None:
    res = run_corral("-k", "asyncio-threads", "--asyncio-queue-timeout", "soon", "--check-config",
                     "corral.testing.apps:app")
    assert res.returncode == 2
    assert "asyncio-queue-timeout" in res.stderr or "asyncio_queue_timeout" in res.stderr


def test_requests_run_in_threads_of_one_process(corral_server: Server) -> None:
    server = corral_server("--threads", "4")
    env = json.loads(server.request("GET", "/environ")[2])
    assert env["wsgi.multithread"] is True
    assert env["corral.worker_class"] == "asyncio-threads"
    with ThreadPoolExecutor(4) as pool:
        start = time.monotonic()
        results = list(pool.map(lambda _: server.request("GET", "/sleep?t=1"), range(4)))
        elapsed = time.monotonic() - start
    assert [r[0] for r in results] == [200] * 4
    assert len({r[2] for r in results}) == 1  # one process answered them all...
    assert elapsed < 3.5  # ...at once (one after the other would take 4 s)


def test_idle_connections_hold_no_thread(corral_server: Server) -> None:
    # Two threads, fifty idle keep-alive clients: a thread per connection
    # would leave nothing for a new client until --keep-alive runs out.
    server = corral_server("--threads", "2", "--keep-alive", "60")
    with idle_connections(server, 50) as idle:
        start = time.monotonic()
        assert server.request("GET", "/")[0] == 200
        assert time.monotonic() - start < 2
        idle[0].sendall(GET % b"/")  # and the idle ones are still served
        assert read_response(idle[0])[0] == 200


def test_queue_timeout_sheds_load_with_503(corral_server: Server, tmp_path: Path) -> None:
    server = corral_server("--threads", "2", "--asyncio-queue-timeout", "0.2")
    markers = [tmp_path / "first", tmp_path / "second"]
    busy = [server.connect() for _ in markers]
    try:
        for sock, marker in zip(busy, markers, strict=True):
            sock.sendall(GET % f"/sleep?t=2.5&marker={marker}".encode())
        for marker in markers:
            wait_for_file(marker)
        # Both threads are taken: the next request is refused at once.
        start = time.monotonic()
        status, headers, _ = server.request("GET", "/")
        assert (status, headers["connection"]) == (503, "close")
        assert time.monotonic() - start < 2
        server.wait_for_log("503 from .* waited 0.2 s for a free thread")
        for sock in busy:  # the running requests were not disturbed
            assert read_response(sock)[2].startswith(b"slept ")
    finally:
        for sock in busy:
            sock.close()
    assert server.request("GET", "/")[0] == 200


def test_without_queue_timeout_requests_wait_for_a_thread(corral_server: Server, tmp_path: Path) -> None:
    server = corral_server("--threads", "2")
    marker = tmp_path / "in-app"
    results: list[int] = []

    def slow() -> None:
        results.append(server.request("GET", f"/sleep?t=0.5&marker={marker}")[0])

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for_file(marker)
    assert server.request("GET", "/")[0] == 200  # queued, then served
    for t in threads:
        t.join(10)
    assert results == [200, 200]


def test_term_keeps_idle_connections_to_keepalive_and_finishes_inflight(corral_server: Server,
                                                                      tmp_path: Path) -> None:
    server = corral_server("--keep-alive", "2", "--graceful-timeout", "20")
    marker = tmp_path / "in-app"
    with idle_connections(server, 5) as idle, server.connect() as busy:
        busy.sendall(GET % f"/sleep?t=1&marker={marker}".encode())
        wait_for_file(marker)
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        # Idle connections are not cut: they wait out their keep-alive (2 s),
        # in case a request is on its way (corral.serve.retirement).
        for sock in idle:
            assert read_until_close(sock, timeout=5) == b""
        assert time.monotonic() - start > 1.0
        status, _, body = read_response(busy)
        assert (status, body[:5]) == (200, b"slept")
        assert server.wait_exit(10) == 0
    assert time.monotonic() - start < 6  # keep-alive's end, not --graceful-timeout
