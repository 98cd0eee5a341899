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
        deadline = time.monotonic() + timeout
        start = self.result.ok
        while self.result.ok - start < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"load made no progress: {self.result.failures[-5:]}")
            time.sleep(0.01)

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
