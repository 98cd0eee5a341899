"""The metrics endpoint (parsed by prometheus_client's own parser), readiness, and statsd push."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.testing import CorralProcess
from corral.testing.load import KeepAliveMix
from corral.testing.process import free_ports

APP = "corral.testing.apps:app"
CLASSES = ["sync", "gthread", "gevent", "tornado"]


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by name and labels, from the real parser."""
    status, headers, body = get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("worker_class", CLASSES)
def test_counters_move_under_keep_alive_load_per_worker(tmp_path: Path, worker_class: str) -> None:
    (mport,) = free_ports(1)
    args = ["-k", worker_class, "-w", "2", "--metrics-bind", f"127.0.0.1:{mport}"]
    with CorralProcess(APP, args, workdir=tmp_path, workers=None) as server:
        pids = server.wait_for_workers(2)
        wait_until(lambda: value(scrape(mport), "corral_ready") == 1)
        first = scrape(mport)
        assert value(first, "corral_requests_total", pool="main") == 0
        with KeepAliveMix("127.0.0.1", server.port, connections=4) as mix:
            mix.wait_for_requests(200)
            # Published at each heartbeat: moving while the load runs.
            wait_until(lambda: value(scrape(mport), "corral_requests_total", pool="main") > 0)
            during = value(scrape(mport), "corral_requests_total", pool="main")
            mix.wait_for_requests(200)
            wait_until(lambda: value(scrape(mport), "corral_requests_total", pool="main") > during)
        ok = mix.result.ok
        assert not mix.result.failures and ok >= 400
        assert during < ok
        # Corral's own 404 and a malformed request count as responses, not as app requests.
        assert get(server.port, "/no-such-route")[0] == 404
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Field: 1\r\n\r\n")
            assert b" 400 " in sock.recv(4096)[:20]
        total = ok + 1  # the 404 went through the app
        wait_until(lambda: value(scrape(mport), "corral_requests_total", pool="main") == total)
        after = scrape(mport)
        assert value(after, "corral_responses_total", pool="main", status="2xx") == ok
        assert value(after, "corral_responses_total", pool="main", status="4xx") == 2
        assert value(after, "corral_requests_in_flight", pool="main") == 0
        assert value(after, "corral_request_duration_seconds_count", pool="main") == total
        assert value(after, "corral_request_duration_seconds_bucket", pool="main", le="+Inf") == total
        assert value(after, "corral_response_body_bytes_total", pool="main") > 0
        per_worker = {pid: value(after, "corral_worker_requests_total", pool="main", pid=str(pid)) for pid in pids}
        # Which worker the kernel handed each connection to is its business; every request is in one.
        assert sum(per_worker.values()) == total
        for pid in pids:
            assert value(after, "corral_worker_resident_memory_bytes", pool="main", pid=str(pid)) > 1 << 20
            assert value(after, "corral_worker_heartbeat_age_seconds", pool="main", pid=str(pid)) < 5
        assert value(after, "corral_pool_workers", pool="main", state="serving") == 2
        assert value(after, "corral_pool_workers_desired", pool="main") == 2


def test_pool_totals_survive_worker_replacement(tmp_path: Path) -> None:
    (mport,) = free_ports(1)
    args = ["-k", "gthread", "-w", "2", "--max-requests", "40", "--metrics-bind", f"127.0.0.1:{mport}"]
    with CorralProcess(APP, args, workdir=tmp_path, workers=None) as server:
        server.wait_for_workers(2)
        with KeepAliveMix("127.0.0.1", server.port, connections=3) as mix:
            mix.wait_for_requests(300)
        assert not mix.result.failures, mix.result.failures[:3]
        wait_until(lambda: value(scrape(mport), "corral_requests_total", pool="main") == mix.result.ok)
        # Recycled workers are replaced first, then exit: wait until they have.
        wait_until(lambda: value(scrape(mport), "corral_pool_workers", pool="main", state="retiring")
                   + value(scrape(mport), "corral_pool_workers", pool="main", state="recycling") == 0)
        samples = scrape(mport)
        assert value(samples, "corral_requests_total", pool="main") == mix.result.ok
        assert value(samples, "corral_worker_recycles_total", pool="main", reason="max_requests") >= 1
        live = sum(v for (name, _), v in samples.items() if name == "corral_worker_requests_total")
        assert live < mix.result.ok  # the exited workers' share is in the pool total only


def test_readiness_booting_serving_and_stopping(tmp_path: Path) -> None:
    (mport,) = free_ports(1)
    args = ["-k", "gthread", "--metrics-bind", f"127.0.0.1:{mport}", "--graceful-timeout", "20"]
    with CorralProcess(APP, args, workdir=tmp_path) as server:
        wait_until(lambda: get(mport, "/readyz")[0] == 200)
        assert get(mport, "/healthz") == (200, get(mport, "/healthz")[1], b"ok\n")
        assert get(mport, "/readyz", "HEAD")[2] == b""
        assert get(mport, "/nope")[0] == 404
        assert get(mport, "/metrics", "POST")[0] == 405
        with socket.create_connection(("127.0.0.1", mport), timeout=10) as sock:
            sock.sendall(b"garbage\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
        # A reload replaces every worker, the new ones first: never a moment out of rotation.
        old = set(server.worker_pids())
        server.send_signal(1)
        answers = set()
        deadline = time.monotonic() + 20
        while old & set(server.worker_pids()) or len(server.worker_pids()) != 1:
            assert time.monotonic() < deadline
            answers.add(get(mport, "/readyz")[0])
        assert answers == {200}
        # A request in flight holds the stop open; meanwhile the server says it is not ready.
        reply: list[int] = []
        slow = threading.Thread(target=lambda: reply.append(get(server.port, "/sleep?t=2")[0]))
        slow.start()
        time.sleep(0.5)
        server.send_signal(15)
        wait_until(lambda: get(mport, "/readyz")[0] == 503, timeout=5)
        status, _, body = get(mport, "/readyz")
        assert (status, body) == (503, b"stopping\n")
        assert get(mport, "/healthz")[0] == 200
        slow.join(20)
        assert reply == [200]
        assert server.wait_exit() == 0


def test_a_client_that_sends_nothing_does_not_hold_the_arbiter(tmp_path: Path) -> None:
    (mport,) = free_ports(1)
    with CorralProcess(APP, ["--metrics-bind", f"127.0.0.1:{mport}"], workdir=tmp_path) as server:
        idle = [socket.create_connection(("127.0.0.1", mport), timeout=10) for _ in range(5)]
        partial = socket.create_connection(("127.0.0.1", mport), timeout=10)
        partial.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finished
        started = time.monotonic()
        assert get(mport, "/healthz")[0] == 200
        assert time.monotonic() - started < 2
        assert server.request()[0] == 200
        # Dropped after the client timeout (5 s).
        partial.settimeout(15)
        assert partial.recv(10) == b""
        for s in [*idle, partial]:
            s.close()


def test_statsd_packets_reach_a_real_listener(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    args = ["--statsd-host", f"127.0.0.1:{port}", "--statsd-prefix", "shop", "--statsd-interval", "0.2",
            "--dogstatsd-tags", "env:test"]
    with CorralProcess(APP, args, workdir=tmp_path) as server:
        for _ in range(7):
            assert server.request("GET", "/pid")[0] == 200
        seen: dict[str, list[str]] = {}
        requests = 0
        deadline = time.monotonic() + 15
        while (requests < 7 or "shop.corral.request.status.2xx" not in seen) and time.monotonic() < deadline:
            packet = listener.recv(4096).decode()
            name, _, rest = packet.partition(":")
            seen.setdefault(name, []).append(rest)
            if name == "shop.corral.requests":
                requests += int(rest.split("|")[0])
                assert rest.endswith("|c|#env:test")
        assert requests == 7, seen
        assert any(v.startswith("1|g") for v in seen["shop.corral.workers"])
        assert "shop.corral.request.status.2xx" in seen
    listener.close()
