"""Live per-worker counters, shared with the arbiter without locks or system calls.

The arbiter gives each pool a table in anonymous shared memory
(:class:`StatsTable`, made before the first fork, so every worker maps the
same pages); each worker writes only its own slot (:class:`WorkerStats`)
and the arbiter only reads, so no lock is needed between them: each field
is one aligned 8-byte word, never torn. A worker counts in its own memory
and copies the counts into its slot at each heartbeat (at most 0.5 s
apart) and as it exits: a request costs a few additions on Python ints,
no system call, no message, nothing the arbiter has to drain.

What the slot holds, per worker: its pid and start time, requests served,
requests in flight, body bytes sent, responses by status class, and a
latency histogram of the requests that reached the app (Prometheus's
default buckets). The control socket, the metrics endpoint and statsd
(:mod:`corral.ops`) read the table; a worker that exits has its final
numbers folded into its pool's totals (:meth:`StatsTable.retire`), so a
pool's counters never go backwards when workers are replaced.

``--no-worker-stats`` turns the counting off (bench/ab.py and bench/instructions.py
measure what it saves: docs/performance.md).
"""

from __future__ import annotations

import array
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

    Slot ``i`` belongs to the live worker of the pool whose
    ``WorkerHandle.stats_slot`` is ``i`` (a numbering of its own: the
    connection table is per Pool object and a reload makes new ones, while
    this table lasts as long as the pool's name).
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
        return (ThreadedWorkerStats if threaded else WorkerStats)(words, base)

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



#: Status codes are three digits (RFC 9110 15); a slot per code makes the
#: class a sum at publish time instead of a division per request. Callers
#: pass 0 (no response went out) or a three-digit code; 0 and 600-999 count
#: in no class, and anything past 999 counts as 0.
_CODES: Final = 1000


class _Counts:
    """One thread's counts (one per worker in a class without request threads)."""

    __slots__ = ("answered", "by_status", "bytes", "histogram", "latency_sum")

    def __init__(self) -> None:
        #: Requests that reached the app, by status code (0: no response went out).
        self.by_status = [0] * _CODES
        #: Responses no app made (corral's own 400s), by status // 100.
        self.answered = [0] * 6
        self.bytes = 0
        self.latency_sum = 0.0
        self.histogram = [0] * (len(BUCKETS) + 1)

    def classes(self) -> list[int]:
        """Responses by status class, 1xx to 5xx (corral's own answers included)."""
        by = self.by_status
        return [sum(by[k * 100 : k * 100 + 100]) + self.answered[k] for k in range(1, 6)]


_FIRST_BUCKET: Final = BUCKETS[0]
_bisect = bisect.bisect_left


class WorkerStats:
    """A worker's counters: kept in the process, published to its slot at each heartbeat.

    :meth:`end` is called once per request that reached the app (``status``
    0: no response went out, or corral's own error response was counted by
    :meth:`answered`); :meth:`answered` counts a response no app made (a 400
    for a malformed head). Both touch only Python objects of this process:
    four additions, about 0.15 us (bench/instructions.py counts what they
    add to a request; a first version that wrote the shared slot through a
    memoryview on every request cost 1.4 to 3 us). :meth:`publish` copies
    the sums into the shared slot; the worker calls it from its heartbeat
    (at most 0.5 s apart) and as it exits, so the arbiter's view is never
    older than a beat.
    """

    __slots__ = ("_base", "_counts", "_words")

    def __init__(self, words: memoryview, base: int) -> None:
        self._words = words
        self._base = base
        self._counts = _Counts()

    def end(self, status: int, sent: int, took: float) -> None:
        """One request that reached the app: its status code (0 if none went out), body bytes, seconds."""
        # Written for the interpreter: every operation here is paid per request.
        c = self._counts
        try:
            c.by_status[status] += 1
        except IndexError:
            c.by_status[0] += 1
        c.bytes += sent
        c.latency_sum += took
        # Most requests land in the first bucket: skip the search for them.
        c.histogram[0 if took <= _FIRST_BUCKET else _bisect(BUCKETS, took)] += 1

    def answered(self, status: int) -> None:
        if 100 <= status < 600:
            self._counts.answered[status // 100] += 1

    def _all(self) -> list[_Counts]:
        return [self._counts]

    def publish(self, in_flight: int) -> None:
        classes = [0] * 5
        histogram = [0] * (len(BUCKETS) + 1)
        sent = 0
        took = 0.0
        for c in self._all():
            classes = [a + b for a, b in zip(classes, c.classes(), strict=True)]
            histogram = [a + b for a, b in zip(histogram, c.histogram, strict=True)]
            sent += c.bytes
            took += c.latency_sum
        words = self._words
        base = self._base
        words[base + REQUESTS] = sum(histogram)  # one observation per request that reached the app
        words[base + IN_FLIGHT] = in_flight
        words[base + BYTES] = sent
        words[base + STATUS : base + STATUS + 5] = _q(classes)
        words[base + LATENCY_SUM] = int(took * 1e6)
        words[base + HISTOGRAM : base + FIELDS] = _q(histogram)


def _q(values: list[int]) -> memoryview:
    return memoryview(array.array("q", values))


class ThreadedWorkerStats(WorkerStats):
    """For classes that run requests in threads: each thread counts in a
    ``_Counts`` of its own (no lock per request: two threads between the read
    and the write of one ``+=`` would lose a count), and publish() adds them
    up. Request threads are a fixed pool, so the list stays short."""

    __slots__ = ("_local", "_lock", "_threads")

    def __init__(self, words: memoryview, base: int) -> None:
        super().__init__(words, base)
        self._local = threading.local()
        self._threads: list[_Counts] = []
        self._lock = threading.Lock()

    def _mine(self) -> _Counts:
        counts = self._local.counts = _Counts()
        with self._lock:
            self._threads.append(counts)
        return counts

    def end(self, status: int, sent: int, took: float) -> None:
        # WorkerStats.end with the thread's own counts; the thread-local
        # lookup is inline (a call to find it cost as much as the additions).
        try:
            c = self._local.counts
        except AttributeError:
            c = self._mine()
        try:
            c.by_status[status] += 1
        except IndexError:
            c.by_status[0] += 1
        c.bytes += sent
        c.latency_sum += took
        c.histogram[0 if took <= _FIRST_BUCKET else _bisect(BUCKETS, took)] += 1

    def answered(self, status: int) -> None:
        if 100 <= status < 600:
            try:
                c = self._local.counts
            except AttributeError:
                c = self._mine()
            c.answered[status // 100] += 1

    def _all(self) -> list[_Counts]:
        with self._lock:
            return list(self._threads)
