"""Live per-worker counters, shared with the arbiter without locks or system calls.

The arbiter gives each pool a table in anonymous shared memory
(:class:`StatsTable`, made before the first fork, so every worker maps the
same pages); each worker writes only its own slot (:class:`WorkerStats`)
and the arbiter only reads, so no lock is needed between them: a reader
may see a number a request old, never a torn one (each field is one
aligned 8-byte word). A request costs a handful of memory writes: no
system call, no message, nothing the arbiter has to drain.

What the slot holds, per worker: its pid and start time, requests served,
requests in flight, body bytes sent, responses by status class, and a
latency histogram of the requests that reached the app (Prometheus's
default buckets). The control socket, the metrics endpoint and statsd
(:mod:`corral.ops`) read the table; a worker that exits has its final
numbers folded into its pool's totals (:meth:`StatsTable.retire`), so a
pool's counters never go backwards when workers are replaced.

``--no-worker-stats`` turns the writes off (bench/run.py measures both).
"""

from __future__ import annotations

import bisect
import mmap
import threading
import time
from dataclasses import dataclass, field
from typing import Final

#: Latency histogram upper bounds in seconds (Prometheus's default buckets);
#: one more bucket, +Inf, follows them.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The same, under its public name (corral.api).
LATENCY_BUCKETS: Final = BUCKETS

# Word offsets inside a slot.
PID: Final = 0
STARTED: Final = 1  # time.time() of the worker's start, in milliseconds
REQUESTS: Final = 2
IN_FLIGHT: Final = 3
BYTES: Final = 4
STATUS: Final = 5  # five words: 1xx, 2xx, 3xx, 4xx, 5xx
LATENCY_SUM: Final = 10  # microseconds, requests that reached the app
HISTOGRAM: Final = 11  # len(BUCKETS) + 1 words, not cumulative
FIELDS: Final = HISTOGRAM + len(BUCKETS) + 1

#: The counters a retired worker leaves to its pool (everything but its
#: identity and what is in flight).
_COUNTERS: Final = (REQUESTS, BYTES, *range(STATUS, FIELDS))


@dataclass
class Snapshot:
    """One worker's numbers (or a pool's sum), read from the table."""

    pid: int = 0
    started: float = 0.0
    requests: int = 0
    in_flight: int = 0
    bytes: int = 0
    #: Responses by status class: index 0 is 1xx, 4 is 5xx.
    status: list[int] = field(default_factory=lambda: [0] * 5)
    latency_sum: float = 0.0
    #: Observations per bucket (BUCKETS, then +Inf), not cumulative.
    histogram: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))

    @property
    def observed(self) -> int:
        return sum(self.histogram)

    def add(self, other: Snapshot) -> None:
        self.requests += other.requests
        self.in_flight += other.in_flight
        self.bytes += other.bytes
        self.status = [a + b for a, b in zip(self.status, other.status, strict=True)]
        self.latency_sum += other.latency_sum
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram, strict=True)]


class StatsTable:
    """One pool's slots, in memory shared across fork; the arbiter's side.

    Slot ``i`` belongs to the worker the arbiter gave slot ``i`` in the
    pool's connection table (``WorkerHandle.slot``): one numbering for both.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, 8 * FIELDS * slots, flags=mmap.MAP_SHARED)
        self.words = memoryview(self._map).cast("q")
        #: What the pool's exited workers served, folded in by retire().
        self.retired = Snapshot()

    def member(self, slot: int, pid: int, *, threaded: bool) -> WorkerStats:
        """The worker's side (called in the worker, after fork): a zeroed slot with its pid."""
        base = slot * FIELDS
        words = self.words
        for i in range(base, base + FIELDS):
            words[i] = 0
        words[base + STARTED] = int(time.time() * 1000)
        words[base + PID] = pid
        return (LockedWorkerStats if threaded else WorkerStats)(words, base)

    def read(self, slot: int) -> Snapshot:
        base = slot * FIELDS
        w = self.words[base : base + FIELDS].tolist()
        return Snapshot(
            pid=w[PID], started=w[STARTED] / 1000, requests=w[REQUESTS], in_flight=w[IN_FLIGHT],
            bytes=w[BYTES], status=w[STATUS : STATUS + 5], latency_sum=w[LATENCY_SUM] / 1e6,
            histogram=w[HISTOGRAM:FIELDS],
        )

    def retire(self, slot: int) -> None:
        """A worker exited: keep what it served in the pool's totals and free its slot."""
        snap = self.read(slot)
        snap.in_flight = 0
        self.retired.add(snap)
        base = slot * FIELDS
        for i in range(base, base + FIELDS):
            self.words[i] = 0

    def clear_counters(self, slot: int) -> None:
        for i in _COUNTERS:
            self.words[slot * FIELDS + i] = 0


class WorkerStats:
    """A worker's own slot: :meth:`begin` when a request reaches the app, :meth:`end` after.

    ``requests`` and the histogram count requests that reached the app;
    the status classes count every response sent, so :meth:`answered` adds
    one corral made itself (a 400 for a malformed head, a 413 for a body
    read by the app). :meth:`end` with status 0: no response went out, or
    it was counted by :meth:`answered`.
    """

    __slots__ = ("_base", "_words")

    def __init__(self, words: memoryview, base: int) -> None:
        self._words = words
        self._base = base

    def begin(self) -> None:
        self._words[self._base + IN_FLIGHT] += 1

    def end(self, status: int, sent: int, took: float) -> None:
        words = self._words
        base = self._base
        words[base + IN_FLIGHT] -= 1
        words[base + REQUESTS] += 1
        words[base + BYTES] += sent
        if 100 <= status < 600:
            words[base + STATUS - 1 + status // 100] += 1
        words[base + LATENCY_SUM] += int(took * 1e6)
        words[base + HISTOGRAM + bisect.bisect_left(BUCKETS, took)] += 1

    def answered(self, status: int) -> None:
        """A response no app made (a 400 for a malformed head): its status class only."""
        if 100 <= status < 600:
            self._words[self._base + STATUS - 1 + status // 100] += 1


class LockedWorkerStats(WorkerStats):
    """For classes that run requests in threads: ``+=`` on shared memory is a
    read and a write, and two threads between them would lose a count."""

    __slots__ = ("_lock",)

    def __init__(self, words: memoryview, base: int) -> None:
        super().__init__(words, base)
        self._lock = threading.Lock()

    def begin(self) -> None:
        with self._lock:
            WorkerStats.begin(self)

    def end(self, status: int, sent: int, took: float) -> None:
        with self._lock:
            WorkerStats.end(self, status, sent, took)

    def answered(self, status: int) -> None:
        with self._lock:
            WorkerStats.answered(self, status)
