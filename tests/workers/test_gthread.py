"""The gthread worker: what a loop plus a thread pool must do beyond the conformance suite.

The tests run a real corral with ``-k gthread`` (the module overrides the
conformance conftest's parametrised worker class) over real sockets; only
the configuration rule for ``sync`` with threads is checked in-process.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral.testing import CorralProcess
from corral.testing.clients import closed_by_server, open_files_limit, read_response
from corral.testing.conformance import wait_for_file
from corral.testing.process import read_until_close

Server = Callable[..., CorralProcess]
GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"

pytest.importorskip("corral_gthread")
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def corral_worker_class() -> str:
    return "gthread"


@pytest.fixture(autouse=True, params=["epoll", "select"])
def poller(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with each of the loop's pollers (corral.workers.poller).

    With epoll, pool threads re-arm kept-alive connections themselves; the
    portable selector hands them back through the loop. Both must behave
    the same on the wire. (CorralProcess copies this process's environment.)
    """
    monkeypatch.setenv("CORRAL_POLLER", request.param)
    return str(request.param)


def timed_get(server: CorralProcess, path: str = "/") -> float:
    start = time.perf_counter()
    status, _, _ = server.request("GET", path)
    assert status == 200
    return time.perf_counter() - start


@contextlib.contextmanager
def idle_keepalive_connections(server: CorralProcess, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that each completed one request and now sit idle."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = server.connect()
            sock.sendall(GET % b"/")
            socks.append(sock)
        for sock in socks:
            assert read_response(sock)[2] == b"Hello, World!"
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_idle_keepalive_connections_do_not_delay_a_fresh_request(corral_server: Server) -> None:
    with open_files_limit(2048):
        server = corral_server("--threads", "4", "--keep-alive", "60")
        timed_get(server)  # warm up: imports, first accept
        with idle_keepalive_connections(server, 500) as idle:
            latencies = [timed_get(server) for _ in range(15)]
            # The idle connections are still served afterwards.
            idle[0].sendall(GET % b"/")
            assert read_response(idle[0])[0] == 200
    assert statistics.median(latencies) < 0.05, latencies


def test_slowloris_holds_no_thread_and_gets_408(corral_server: Server) -> None:
    server = corral_server("--threads", "1", "--header-timeout", "2")
    started = threading.Event()
    answer: list[bytes] = []

    def slowloris() -> None:
        with server.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            sock.settimeout(0.2)
            for i in range(30):  # one header byte every 0.2 s, until the server gives up
                try:
                    sock.sendall(b"X-Slow: a\r\n"[i % 11 : i % 11 + 1])
                    if i == 3:
                        started.set()
                    if sock.recv(65536, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            answer.append(read_until_close(sock, timeout=5))

    t = threading.Thread(target=slowloris)
    t.start()
    try:
        assert started.wait(5)
        # The only thread is free: the slowloris is still in the loop.
        assert timed_get(server) < 0.5
        assert timed_get(server) < 0.5
    finally:
        t.join(10)
    assert answer and answer[0].startswith(b"HTTP/1.1 408 "), answer


def test_idle_timeouts_close_without_a_word(corral_server: Server) -> None:
    server = corral_server("--keep-alive", "0.5", "--header-timeout", "1")
    with server.connect() as after_request, server.connect() as silent:
        after_request.sendall(GET % b"/")
        assert read_response(after_request)[0] == 200
        start = time.monotonic()
        assert closed_by_server(after_request, timeout=5)
        assert 0.4 < time.monotonic() - start < 3
        # A connection that never sends a byte: no 408, just closed.
        assert closed_by_server(silent, timeout=5)


def test_an_app_setting_a_default_socket_timeout_does_not_block_the_loop(corral_server: Server,
                                                                        tmp_path: Path) -> None:
    # After socket.setdefaulttimeout() (some libraries call it at import)
    # every accepted socket starts with that timeout, and CPython polls
    # before each recv on such a socket: a loop that read a new connection
    # as accepted would wait there, whenever the client has sent nothing
    # yet, for the whole timeout. (It makes each socket non-blocking first;
    # reading sockets left blocking with MSG_DONTWAIT instead, tried and
    # dropped in docs/performance.md, fails this test unless it checks the
    # timeout too.)
    (tmp_path / "timeoutapp.py").write_text(
        "import socket\nsocket.setdefaulttimeout(20)\nfrom corral.testing.apps import app\n")
    server = corral_server("--threads", "2", app="timeoutapp:app")
    with server.connect() as silent, server.connect() as partial, server.connect() as client:
        # The loop tries each new connection at once: `silent` has nothing to read.
        assert silent.fileno() >= 0
        partial.sendall(b"GET / HT")  # a head begun, then nothing
        for _ in range(3):  # keep-alive: back to the loop between requests
            start = time.monotonic()
            client.sendall(GET % b"/")
            assert read_response(client)[0] == 200
            assert time.monotonic() - start < 2
    assert timed_get(server) < 2


def test_pipelined_head_split_across_reads(corral_server: Server) -> None:
    server = corral_server("--threads", "2")
    with server.connect() as sock:
        # The second head starts in the same read as the first request; its
        # thread hands the connection back to the loop to wait for the rest.
        sock.sendall(GET % b"/pid" + b"GET /environ HT")
        status, _, pid = read_response(sock)
        assert status == 200
        sock.sendall(b"TP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(sock)
        env = json.loads(body)
        assert (status, str(env["pid"])) == (200, pid.decode())
        assert env["wsgi.multithread"] is True


# -- concurrency and limits -------------------------------------------------------


def test_threads_run_requests_concurrently(corral_server: Server) -> None:
    server = corral_server("--threads", "8")
    timed_get(server)
    with ThreadPoolExecutor(8) as pool:
        start = time.monotonic()
        results = list(pool.map(lambda _: server.request("GET", "/sleep?t=0.5"), range(8)))
        elapsed = time.monotonic() - start
    assert [r[0] for r in results] == [200] * 8
    assert len({r[2] for r in results}) == 1  # one worker served them all
    assert elapsed < 1.5


def _os_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads in /proc")
def test_threads_start_when_the_concurrency_needs_them(corral_server: Server) -> None:
    # Not all --threads at boot: requests one at a time leave the pool at
    # one thread, or a few (a new request may reach the loop before the
    # thread that served the last one has handed its connection back, and
    # then counts as needing a thread of its own); 8 at once start the
    # rest; 16 at once start no more than --threads.
    server = corral_server("--threads", "8")
    (pid,) = server.worker_pids()
    for _ in range(20):
        timed_get(server)
    one_at_a_time = _os_threads(pid)

    def burst(n: int) -> None:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda _: server.request("GET", "/sleep?t=0.3"), range(n)))
        assert [r[0] for r in results] == [200] * n

    burst(8)
    eight_at_once = _os_threads(pid)
    assert 4 <= eight_at_once - one_at_a_time <= 7
    burst(16)
    assert _os_threads(pid) == eight_at_once


def test_a_saturated_worker_leaves_new_connections_to_a_free_one(corral_server: Server) -> None:
    # Two workers of two threads, more clients than threads, a new
    # connection per request. A worker whose threads are taken and whose
    # queue holds as many again stops accepting, so the next connections
    # go to the other worker. Accepting regardless, the worker that wins
    # the wake-ups queues requests while the other's threads idle: the
    # split was about 3:2 (docs/workers/gthread.md).
    server = corral_server("--threads", "2", workers=2)
    server.wait_for_workers(2)
    time.sleep(1.0)  # both loops are running
    stop_at = time.monotonic() + 2.0

    def client() -> list[str]:
        pids = []
        while time.monotonic() < stop_at:
            status, _, body = server.request("GET", "/sleep?t=0.02")
            assert status == 200
            pids.append(body.split()[1])
        return pids

    with ThreadPoolExecutor(12) as pool:
        served = Counter(pid for pids in pool.map(lambda _: client(), range(12)) for pid in pids)
    assert len(served) == 2, served
    low, high = sorted(served.values())
    assert low >= 0.85 * high, served


def _open_sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_a_saturated_worker_still_takes_new_connections_every_few_ms(corral_server: Server,
                                                                     tmp_path: Path) -> None:
    # One worker, one thread: a request running and one queued saturate it
    # (twice --threads in hand), so it stops watching the listener. With no
    # other worker to take a new connection, it must still accept it (the
    # 5 ms peek) rather than leave it in the listen queue until both
    # requests are done.
    server = corral_server("--threads", "1")
    (pid,) = server.wait_for_workers(1)
    marker = tmp_path / "in-app"
    with server.connect() as first, server.connect() as second:
        first.sendall(GET % f"/sleep?t=2&marker={marker}".encode())
        wait_for_file(marker)
        second.sendall(GET % b"/sleep?t=0.1")
        time.sleep(0.3)  # its head read and queued: the worker is saturated now
        before = _open_sockets(pid)
        with server.connect() as third:
            third.sendall(GET % b"/pid")
            deadline = time.monotonic() + 1.0
            while _open_sockets(pid) == before:
                assert time.monotonic() < deadline, "the saturated worker left the connection queued"
                time.sleep(0.01)
            assert read_response(first)[0] == 200
            assert read_response(second)[0] == 200
            assert read_response(third)[0] == 200


def test_worker_connections_cap_stops_accepting(corral_server: Server) -> None:
    server = corral_server("--worker-connections", "2", "--keep-alive", "30")
    with idle_keepalive_connections(server, 2) as (first, _second), server.connect() as third:
        # The kernel completes the handshake, but the worker does not accept.
        third.sendall(GET % b"/")
        third.settimeout(0.5)
        with pytest.raises(TimeoutError):
            third.recv(1)
        first.close()
        assert read_response(third)[0] == 200


def test_sync_with_threads_runs_gthread(tmp_path: Path) -> None:
    with CorralProcess("corral.testing.apps:app", ["--threads", "4"], workdir=tmp_path,
                       worker_class="sync") as server:
        status, _, body = server.request("GET", "/environ")
        env = json.loads(body)
        assert status == 200
        assert env["corral.worker_class"] == "gthread"
        assert env["wsgi.multithread"] is True
        assert "running 'gthread' instead, as gunicorn does" in server.log()


def test_a_pools_class_is_never_changed_by_threads() -> None:
    from corral.config import Config
    from corral.errors import ConfigError
    from corral.settings import default_registry
    from corral_gthread.plugin import corral_configure

    cfg = Config(default_registry())
    cfg.set("threads", 4, "test")
    cfg.set("pools", {
        "inherits": {},                                              # the deployment's class
        "named": {"worker_class": "sync"},                           # stays sync, threads 4 or not
        "single": {"worker_class": "sync", "threads": 1},            # stays sync
        "other": {"worker_class": "gevent"},                         # not ours to change
    }, "test")
    corral_configure(config=cfg)
    classes = {name: pcfg.worker_class for name, pcfg in cfg.pool_configs()}
    assert classes == {"inherits": "gthread", "named": "sync", "single": "sync", "other": "gevent"}
    # The deployment's default class switched, as gunicorn's single class does; one warning.
    assert cfg.worker_class == "gthread" and len(cfg.warnings) == 1
    cfg = Config(default_registry())
    cfg.set("pools", {"own": {"worker-class": "sync", "threads": 2}}, "test")  # TOML spelling
    with pytest.raises(ConfigError, match="pool own: worker class 'sync' runs one request at a time"):
        corral_configure(config=cfg)


def test_heartbeat_beats_while_every_thread_is_busy(corral_server: Server) -> None:
    server = corral_server("--threads", "1", "--timeout", "1.5")
    (pid,) = server.wait_for_workers(1)
    with server.connect() as sock:
        # The only thread stays busy for 3 s, each request within the timeout.
        sock.sendall((GET % b"/sleep?t=1") * 3)
        for _ in range(3):
            assert read_response(sock)[2] == f"slept {pid}".encode()
    assert server.worker_pids() == [pid]
    assert "WORKER TIMEOUT" not in server.log()


# -- stopping ------------------------------------------------------------------


def test_term_keeps_idle_connections_to_keepalive_and_finishes_inflight(corral_server: Server,
                                                                      tmp_path: Path) -> None:
    server = corral_server("--graceful-timeout", "20", "--keep-alive", "2")
    marker = tmp_path / "in-app"
    with idle_keepalive_connections(server, 11) as idle, server.connect() as busy:
        busy.sendall(GET % f"/sleep?t=1&marker={marker}".encode())
        wait_for_file(marker)
        # A head that has begun to arrive counts as in flight too.
        *idle, started, late = idle
        started.sendall(b"GET /pid HTTP/1.1\r\nHo")
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait_for_log("retiring: accepts no more")
        # A request sent on a kept-alive connection during the drain is served, with close.
        late.sendall(GET % b"/pid")
        status, headers, _ = read_response(late)
        assert (status, headers["connection"]) == (200, "close")
        started.sendall(b"st: x\r\n\r\n")
        status, headers, _ = read_response(started)
        assert (status, headers["connection"]) == (200, "close")
        status, headers, body = read_response(busy)
        assert (status, body[:5], headers["connection"]) == (200, b"slept", "close")
        assert closed_by_server(busy, timeout=5)
        # Idle connections wait out their keep-alive (2 s), not cut at once.
        assert all(closed_by_server(sock, timeout=5) for sock in idle)
        assert time.monotonic() - start > 1.0
        assert server.wait_exit(10) == 0
    assert time.monotonic() - start < 6  # keep-alive's end, not graceful_timeout


def test_hup_retires_worker_with_idle_connections(corral_server: Server) -> None:
    server = corral_server("--graceful-timeout", "20", "--keep-alive", "2")
    (old,) = server.wait_for_workers(1)
    with idle_keepalive_connections(server, 5) as idle:
        start = time.monotonic()
        server.send_signal(signal.SIGHUP)
        assert all(closed_by_server(sock, timeout=10) for sock in idle)
        server.wait_for_workers(1, timeout=10, exclude=[old])
        assert time.monotonic() - start < 6
    assert server.request("GET", "/")[0] == 200


def test_a_deployment_wide_threads_leaves_a_sync_pool_sync(tmp_path: Path) -> None:
    # --threads 4 for the deployment: the gthread pool gets 4 threads, the
    # pool that names sync stays sync and tells its app it is not threaded.
    sock = tmp_path / "api.sock"
    args = ["--threads", "4", "--pool", "web:sync:1@127.0.0.1:0", "--pool", f"api:gthread:1@unix:{sock}"]
    with CorralProcess("corral.testing.apps:app", args, workdir=tmp_path, bind=(), workers=None) as server:
        server.wait_for_workers(2)
        host, _, port = server.addresses[0].rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/environ")
        web = json.loads(conn.getresponse().read())
        conn.close()
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(10)
            unix.connect(str(sock))
            unix.sendall(b"GET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            api = json.loads(read_until_close(unix).split(b"\r\n\r\n", 1)[1])
        assert (web["corral.worker_class"], web["wsgi.multithread"]) == ("sync", False)
        assert (api["corral.worker_class"], api["wsgi.multithread"]) == ("gthread", True)
        assert "running 'gthread' instead" not in server.log()
