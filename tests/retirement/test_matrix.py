"""Nothing lost when a worker retires: every class x every way a worker retires x keep-alive load.

Real corral processes, real signals, keep-alive clients (8 and 64
connections) sending GETs and POSTs with bodies back to back, every
response checked and nothing retried (corral.testing.load.KeepAliveMix),
and slow requests (0.5 s in the app) in flight at each retirement. The
policy under test is corral.serve.retirement; docs/arbiter.md says what it
guarantees.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from corral.plugins import make_plugin_manager, worker_registry
from corral.testing import CorralProcess, parse_responses, read_until_close
from corral.testing.load import KeepAliveMix, MixResult
from corral.testing.plugin import default_app
from corral.testing.process import free_ports

INSTALLED = set(worker_registry(make_plugin_manager()[0]))
CLASSES = [c for c in ("sync", "gthread", "gevent", "tornado", "asgi") if c in INSTALLED]
SLOW = 0.5


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(30)


def _check(result: MixResult, slow: int, refused_ok: bool = False) -> None:
    assert result.failures == [], result.failures[:10]
    assert result.slow_ok == slow, (result.slow_ok, slow)
    assert result.ok > 50
    if not refused_ok:
        assert result.refused == 0


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(params=[8, 64], ids=["c8", "c64"])
def connections(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(params=CLASSES)
def worker_class(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_hup(tmp_path: Path, worker_class: str, connections: int) -> None:
    with CorralProcess(default_app(worker_class), ["--worker-connections", "200"], workdir=tmp_path, workers=2,
                       worker_class=worker_class) as server:
        pids = set(server.wait_for_workers(2))
        with KeepAliveMix("127.0.0.1", server.port, connections) as load:
            load.wait_for_requests(100)
            slow = []
            for i in range(2):
                slow += load.slow(2, SLOW, str(tmp_path))
                server.send_signal(signal.SIGHUP)
                server.wait_for_log("Reloading: replacing workers", count=i + 1)
                pids = set(server.wait_for_workers(2, exclude=list(pids)))
                load.wait_for_requests(100)
            _join(slow)
            result = load.stop()
        _check(result, slow=4)
        assert pids & result.pids, "the new workers answered"


def test_max_requests(tmp_path: Path, worker_class: str, connections: int) -> None:
    args = ["--max-requests", "150", "--max-requests-jitter", "30", "--worker-connections", "200"]
    with CorralProcess(default_app(worker_class), args, workdir=tmp_path, workers=2, worker_class=worker_class) as server:
        server.wait_for_workers(2)
        with KeepAliveMix("127.0.0.1", server.port, connections) as load:
            slow = load.slow(2, SLOW, str(tmp_path))
            server.wait_for_log("asked to be recycled", count=1)
            slow += load.slow(2, SLOW, str(tmp_path))
            server.wait_for_log("asked to be recycled", count=4)
            _join(slow)
            load.wait_for_requests(50)
            result = load.stop()
        _check(result, slow=4)
        assert len(result.pids) >= 4, "recycled workers answered, then their replacements"


def test_ttou(tmp_path: Path, worker_class: str, connections: int) -> None:
    with CorralProcess(default_app(worker_class), ["--worker-connections", "200"], workdir=tmp_path, workers=3,
                       worker_class=worker_class) as server:
        server.wait_for_workers(3)
        with KeepAliveMix("127.0.0.1", server.port, connections) as load:
            load.wait_for_requests(100)
            slow = load.slow(3, SLOW, str(tmp_path))
            for left in (2, 1):  # one at a time: two signals sent at once may arrive as one
                server.send_signal(signal.SIGTTOU)
                _wait(lambda n=left: len(server.worker_pids()) == n, 15, f"{left} worker(s) left")
            load.wait_for_requests(100)
            _join(slow)
            result = load.stop()
        _check(result, slow=3)


def test_usr2_then_term_of_the_old_arbiter(tmp_path: Path, worker_class: str, connections: int) -> None:
    pidfile = tmp_path / "corral.pid"
    server = CorralProcess(default_app(worker_class), ["-p", str(pidfile), "--worker-connections", "200"], workdir=tmp_path,
                           workers=2, worker_class=worker_class).start()
    try:
        old_master = server.pid
        old_workers = set(server.wait_for_workers(2))
        with KeepAliveMix("127.0.0.1", server.port, connections) as load:
            load.wait_for_requests(100)
            server.send_signal(signal.SIGUSR2)
            server.wait_for_log("Ready: ", count=2)
            new_pidfile = Path(f"{pidfile}.2")
            _wait(new_pidfile.exists, 15, "PIDFILE.2")
            slow = load.slow(2, SLOW, str(tmp_path))
            os.kill(old_master, signal.SIGTERM)
            assert server.wait_exit(20) == 0
            load.wait_for_requests(200)
            _join(slow)
            result = load.stop()
        _check(result, slow=2)
        assert result.pids - old_workers, "the new arbiter's workers answered"
    finally:
        server.kill()


def test_pool_removed_on_hup(tmp_path: Path, worker_class: str, connections: int) -> None:
    a, b = free_ports(2)
    conf = tmp_path / "pools.py"
    both = (f"pools = {{'kept': {{'worker_class': '{worker_class}', 'workers': 1, 'bind': ['127.0.0.1:{a}']}},"
            f" 'gone': {{'worker_class': '{worker_class}', 'workers': 1, 'bind': ['127.0.0.1:{b}']}}}}\n")
    conf.write_text(both)
    with CorralProcess(default_app(worker_class), ["-c", str(conf)], workdir=tmp_path, workers=None, bind=()) as server:
        server.wait_for_workers(2)
        # On the pool that goes, the clients stop once told to close (or refused):
        # nobody serves that port afterwards.
        with KeepAliveMix("127.0.0.1", a, connections // 2) as kept, \
                KeepAliveMix("127.0.0.1", b, connections // 2, reconnect=False) as gone:
            kept.wait_for_requests(50)
            # sync: one request each, then told to close.
            _wait(lambda: gone.result.ok >= connections // 2, 15, "requests on the doomed pool")
            slow = gone.slow(2, SLOW, str(tmp_path))
            conf.write_text(f"pools = {{'kept': {{'worker_class': '{worker_class}', 'workers': 1,"
                            f" 'bind': ['127.0.0.1:{a}']}}}}\n")
            server.send_signal(signal.SIGHUP)
            server.wait_for_log("Reloading: replacing workers")
            _wait(lambda: len(server.worker_pids()) == 1, 15, "the removed pool's worker gone")
            _join(slow)
            kept.wait_for_requests(50)
            rk, rg = kept.stop(), gone.stop()
        _check(rk, slow=0)
        assert rg.failures == [], rg.failures[:10]
        assert rg.slow_ok == 2


def test_pool_removed_on_hup_under_new_connections(tmp_path: Path, worker_class: str) -> None:
    """A pool removed by a reload, its port flooded with new connections: its listen queue is served.

    Nobody accepts on that port afterwards, so the last close would reset
    what is queued, as in a shutdown (the conformance suite's
    test_shutdown_serves_the_listen_queue, which failed 29 of 30 runs on
    every class before the listeners were marked).
    """
    a, b = free_ports(2)
    conf = tmp_path / "pools.py"
    def pool(name: str, port: int) -> str:
        return f"'{name}': {{'worker_class': '{worker_class}', 'workers': 1, 'bind': ['127.0.0.1:{port}']}}"

    kept, gone = pool("kept", a), pool("gone", b)
    conf.write_text(f"pools = {{{kept}, {gone}}}\n")
    with CorralProcess(default_app(worker_class), ["-c", str(conf)], workdir=tmp_path, workers=None, bind=()) as server:
        server.wait_for_workers(2)
        with KeepAliveMix("127.0.0.1", b, 8, fresh_connections=True) as load:
            load.wait_for_requests(300)
            conf.write_text(f"pools = {{{kept}}}\n")
            server.send_signal(signal.SIGHUP)
            server.wait_for_log("No pool listens at")
            _wait(lambda: len(server.worker_pids()) == 1, 15, "the removed pool's worker gone")
            result = load.stop()
        _check(result, slow=0, refused_ok=True)
        assert result.refused == 8


class UnixFlood:
    """Clients over a unix socket, a new connection per POST, every echo checked, until a connect fails."""

    def __init__(self, path: Path, clients: int = 8) -> None:
        self.path = path
        self.failures: list[str] = []
        self.ok = 0
        self.ended = 0
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def __enter__(self) -> UnixFlood:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _join(self.threads)

    def _client(self, index: int) -> None:
        for n in range(100_000):
            body = b"%d:%d;" % (index, n) * 50
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(10)
            try:
                sock.connect(str(self.path))
            except OSError:  # no file, or refused: nothing was sent
                self.ended += 1
                sock.close()
                return
            try:
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                ((status, _, echoed),) = list(parse_responses(read_until_close(sock, timeout=10)))
                if (status, echoed) != (200, body):
                    self.failures.append(f"request {n} of client {index}: {status} {echoed[:30]!r}")
                    return
                self.ok += 1
            except Exception as exc:
                self.failures.append(f"request {n} of client {index}: {exc!r}")
                return
            finally:
                sock.close()


def test_shutdown_serves_a_unix_sockets_listen_queue(tmp_path: Path, worker_class: str) -> None:
    """nginx in front over a unix socket, a new connection per request, and a graceful shutdown.

    A unix socket's queue is reset at its last close as a TCP one's is
    (gthread lost 15 requests in four such shutdowns); the arbiter removes
    the socket's file first, so new clients find none, and the workers
    serve what is queued. A connect that fails (no file, refused) sent nothing.
    """
    path = tmp_path / "corral.sock"
    with CorralProcess(default_app(worker_class), [], workdir=tmp_path, workers=2, worker_class=worker_class,
                       bind=(f"unix:{path}",)) as server:
        server.wait_for_workers(2)
        with UnixFlood(path) as flood:
            _wait(lambda: flood.ok >= 300, 20, "requests over the unix socket")
            server.send_signal(signal.SIGTERM)
            assert server.wait_exit(20) == 0
    assert flood.failures == [], flood.failures[:10]
    assert flood.ended == 8
    assert not path.exists()


def test_an_upgraded_arbiter_owns_its_unix_socket(tmp_path: Path) -> None:
    """USR2, TERM to the old arbiter, then a shutdown of the new one under the same flood.

    The new arbiter did not bind the socket; the old one names its file in
    the environment, so the new one removes it when it stops (first, so
    its workers serve the queue), as a server that bound it would.
    """
    path = tmp_path / "corral.sock"
    pidfile = tmp_path / "corral.pid"
    server = CorralProcess(default_app("gthread"), ["-p", str(pidfile)], workdir=tmp_path, workers=2,
                           worker_class="gthread", bind=(f"unix:{path}",)).start()
    try:
        old = server.pid
        server.wait_for_workers(2)
        server.send_signal(signal.SIGUSR2)
        server.wait_for_log("Ready: ", count=2)
        _wait(Path(f"{pidfile}.2").exists, 15, "PIDFILE.2")
        os.kill(old, signal.SIGTERM)
        assert server.wait_exit(20) == 0
        assert path.exists(), "the old arbiter left the file to the new one"
        _wait(lambda: pidfile.exists() and pidfile.read_text().strip() != str(old), 15, "the new pidfile")
        new = int(pidfile.read_text())
        with UnixFlood(path) as flood:
            _wait(lambda: flood.ok >= 300, 20, "requests to the new arbiter")
            os.kill(new, signal.SIGTERM)
            _wait(lambda: not Path(f"/proc/{new}").exists() or "zombie" in Path(f"/proc/{new}/status").read_text(),
                  20, "the new arbiter's exit")
    finally:
        server.kill()
    assert flood.failures == [], flood.failures[:10]
    assert flood.ended == 8
    assert not path.exists()
