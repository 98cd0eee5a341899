"""A small closed-loop load generator for signal tests (HUP, USR2 under load).

Threads send requests back to back until stopped, each on a fresh
connection or over keep-alive, and record every failure with its exception,
so a test can assert "zero failed requests" and see what failed if not.
Bounded: it stops by itself after ``max_seconds``.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


def _wait_for_progress(result: LoadResult | MixResult, count: int, timeout: float) -> None:
    """Return once ``count`` more requests succeeded; fail (showing the last failures) after ``timeout``."""
    deadline = time.monotonic() + timeout
    start = result.ok
    while result.ok - start < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"load made no progress: {result.failures[-5:]}")
        time.sleep(0.01)


@dataclass
class LoadResult:
    ok: int = 0
    #: Idempotent requests retried because an idle keep-alive connection closed.
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    #: Response bodies seen after mark() was called, e.g. worker pids.
    bodies_after_mark: list[bytes] = field(default_factory=list)


class LoadGenerator:
    def __init__(self, host: str, port: int, path: str = "/pid", concurrency: int = 4,
                 keepalive: bool = True, max_seconds: float = 60.0) -> None:
        self.host, self.port, self.path = host, port, path
        self.concurrency = concurrency
        self.keepalive = keepalive
        self.max_seconds = max_seconds
        self.result = LoadResult()
        self._stop = threading.Event()
        self._marked = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def __enter__(self) -> LoadGenerator:
        self.start_time = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mark(self) -> None:
        """From now on, record response bodies (to check who answered)."""
        self._marked.set()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        _wait_for_progress(self.result, count, timeout)

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return self.result

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        reused = False
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                    reused = False
                headers = {} if self.keepalive else {"Connection": "close"}
                conn.request("GET", self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
                with self._lock:
                    self.result.ok += 1
                    if self._marked.is_set():
                        self.result.bodies_after_mark.append(body)
                reused = True
                if resp.will_close or not self.keepalive:
                    conn.close()
                    conn = None
            except Exception as exc:
                if conn is not None:
                    conn.close()
                conn = None
                if reused and isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
                    # The server closed an idle keep-alive connection just as
                    # we reused it: the race RFC 9112 section 9.3.1 lets
                    # clients retry idempotent requests for. Counted apart.
                    with self._lock:
                        self.result.retried += 1
                    continue
                with self._lock:
                    self.result.failures.append(repr(exc))


@dataclass
class MixResult:
    """What :class:`KeepAliveMix` saw: every response checked, nothing retried."""

    ok: int = 0
    #: Responses that said ``Connection: close`` (the client then reconnects).
    closes: int = 0
    #: Slow requests (``/sleep``) answered in full.
    slow_ok: int = 0
    #: New connections refused (the thread then stops): no request was sent on them.
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)


class KeepAliveMix:
    """Persistent connections as production clients hold them, with nothing forgiven.

    Each of ``connections`` threads keeps one HTTP/1.1 connection and sends,
    back to back, a mix of ``GET /pid`` and ``POST /echo`` with a body of a
    few KiB (a request no client library retries), and checks each
    response: status, the echoed body byte for byte. A response that says
    ``Connection: close`` is honoured by reconnecting, as clients do. Any
    error (a reset, a connection closed under a request, a wrong body) is a
    failure: there is no retry, so a server that closes a connection under a
    request it received cannot pass. :meth:`slow` starts requests that sleep
    in the app, to have some in flight when a worker retires.

    With ``fresh_connections`` every request asks for ``Connection: close``,
    so each thread opens a new connection per request, as a proxy without
    an upstream keep-alive pool does: new connections arrive all the time,
    some of them in the listen queue when a listener closes.

    Bounded: every thread stops after ``max_seconds``.
    """

    def __init__(self, host: str, port: int, connections: int = 8, max_seconds: float = 60.0,
                 reconnect: bool = True, fresh_connections: bool = False) -> None:
        self.host, self.port = host, port
        self.max_seconds = max_seconds
        self.reconnect = reconnect
        self.headers = {"Connection": "close"} if fresh_connections else {}
        self.result = MixResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(connections)]

    def __enter__(self) -> KeepAliveMix:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_requests(self, count: int, timeout: float = 20.0) -> None:
        _wait_for_progress(self.result, count, timeout)

    def slow(self, count: int, seconds: float, marker_dir: str) -> list[threading.Thread]:
        """Start ``count`` POSTs that sleep ``seconds`` in the app; returns once all are in it."""
        import os

        threads = []
        stamp = time.monotonic_ns()
        markers = [os.path.join(marker_dir, f"slow-{id(self)}-{i}-{stamp}") for i in range(count)]
        for marker in markers:
            t = threading.Thread(target=self._slow_one, args=(seconds, marker), daemon=True)
            t.start()
            threads.append(t)
        deadline = time.monotonic() + 20
        while not all(os.path.exists(m) for m in markers):
            if time.monotonic() > deadline:
                raise AssertionError("slow requests never reached the app")
            time.sleep(0.01)
        return threads

    def stop(self) -> MixResult:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.result

    def _fail(self, what: str) -> None:
        with self._lock:
            self.result.failures.append(what)

    def _slow_one(self, seconds: float, marker: str) -> None:
        body = b"slow" * 256
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            conn.request("POST", f"/sleep?t={seconds}&marker={marker}", body=body)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            if resp.status != 200 or not data.startswith(b"slept "):
                self._fail(f"slow request: {resp.status} {data[:40]!r}")
                return
            with self._lock:
                self.result.slow_ok += 1
        except Exception as exc:
            self._fail(f"slow request: {exc!r}")

    def _run(self, index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        deadline = time.monotonic() + self.max_seconds
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            n += 1
            post = (n + index) % 2 == 0
            body = (b"%d:%d;" % (index, n)) * (200 + n % 400) if post else b""
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
                try:
                    conn.connect()
                except (ConnectionRefusedError, TimeoutError):
                    # Nothing was sent: a listener that is gone (a removed
                    # pool, a shutdown) loses no request by refusing a new
                    # connection; one closing for good lets no handshake
                    # complete until it is gone (refuse_new_connections).
                    with self._lock:
                        self.result.refused += 1
                    return
            try:
                if post:
                    conn.request("POST", "/echo", body=body, headers=self.headers)
                else:
                    conn.request("GET", "/pid", headers=self.headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
                if post and data != body:
                    raise RuntimeError(f"echo of {len(body)} bytes came back as {len(data)} different ones")
                with self._lock:
                    self.result.ok += 1
                    if not post:
                        self.result.pids.add(int(data))
                    if resp.will_close:
                        self.result.closes += 1
                if resp.will_close:
                    conn.close()
                    conn = None
                    if not self.reconnect:
                        return
            except Exception as exc:
                if conn is not None:
                    conn.close()
                conn = None
                what = "POST /echo" if post else "GET /pid"
                self._fail(f"{what} (request {n} of connection {index}): {exc!r}")
                if not self.reconnect:
                    return
        if conn is not None:
            conn.close()
