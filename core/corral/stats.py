"""Live per-worker counters, shared with the arbiter without locks or system calls.

The arbiter gives each pool a table in anonymous shared memory
(:class:`StatsTable`, made before the first fork, so every worker maps the
same pages); each worker writes only its own slot (:class:`WorkerStats`)
and the arbiter only reads, so no lock is needed between them: each field
is one aligned 8-byte word, never torn. A worker counts in its own memory
and copies the counts into its slot at each heartbeat (at most 0.5 s
apart) and as it exits: a request costs one list extended by a tuple, no
system call, no message, nothing the arbiter has to drain.

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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, cast

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

    def member(self, slot: int, pid: int) -> WorkerStats:
        """The worker's side (called in the worker, after fork): a zeroed slot with its pid."""
        base = slot * FIELDS
        words = self.words
        for i in range(base, base + FIELDS):
            words[i] = 0
        words[base + STARTED] = int(time.time() * 1000)
        words[base + PID] = pid
        return WorkerStats(words, base)

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



#: How many requests a worker records before the request that completes
#: them folds them (besides every heartbeat): bounds the pending records to
#: about 12 KiB however fast the worker serves (768 list slots and the
#: latencies' floats), small enough to stay in the CPU's caches between
#: folds (256 records fold faster per record than 1024 too: 0.08 against
#: 0.10 us, as tuples). A power of two less one: the check is
#: ``nr & FOLD_EVERY``.
FOLD_EVERY: Final = 255


class WorkerStats:
    """A worker's counters: recorded in the process, folded and published to its slot at each heartbeat.

    A request that reached the app is one ``record((status, sent, took))``:
    its status code (0 if no response went out, or corral's own error
    response went and was counted by :meth:`answered`), body bytes and
    seconds. ``record`` is a list's own ``extend``: one tuple and one C
    call, no Python frame, no lock, safe from any thread (an extend by a
    tuple is one operation under the GIL, and under a free-threaded
    build's per-list lock). The list is flat, three items a request, and
    the tuple is freed at once: the fold then splits the records with
    three slices instead of unzipping tuples (a fold of 256 records cost
    114 ns a record as tuples, 46 ns flat with the fast paths below, against
    14 ns more for extend than append). :meth:`fold` turns the records into
    counts in C-level passes (slices, ``list.count``, ``min``/``max``, and
    ``Counter`` and ``sorted`` when a batch holds more than one status or
    latency bucket) under a lock of its own, and
    :meth:`publish` copies the counts into the shared slot; the worker
    calls it from its heartbeat (at most 0.5 s apart) and as it exits, and
    :meth:`~corral.workers.base.Worker.request_done` folds every
    :data:`FOLD_EVERY` + 1 requests in between.

    Why a list of records rather than additions per request: the additions
    touch half a dozen objects (the counts, their lists, the ints they
    hold) that the rest of a request has evicted from the CPU's caches by
    the next one, and a thread's own counts add a thread-local lookup. On
    a hello-world request that cost 0.8 us unthreaded and 1.3 us threaded
    with cold caches, 4-7% of gthread's CPU per request in bench/ab.py,
    where callgrind counted only 1.1% of its instructions; an extend
    touches the end of one list (docs/performance.md).
    """

    __slots__ = ("_answered", "_base", "_by_status", "_bytes", "_histogram", "_latency_sum",
                 "_lock", "_pending", "_pending_answers", "_words", "answered", "record")

    def __init__(self, words: memoryview, base: int) -> None:
        self._words = words
        self._base = base
        #: Three items per request, flat: status, sent, took.
        self._pending: list[float] = []
        #: Record one request that reached the app: ``record((status, sent, took))``,
        #: exactly three items, as the list is flat (:meth:`end` cannot be given
        #: two or four).
        self.record: Callable[[tuple[int, int, float]], None] = self._pending.extend
        self._pending_answers: list[int] = []
        #: Count a response no app made (corral's own 400 for a malformed
        #: head): ``answered(status)``.
        self.answered: Callable[[int], None] = self._pending_answers.append
        self._lock = threading.Lock()
        #: Requests that reached the app, by status code (0: no response went out).
        self._by_status: Counter[int] = Counter()
        #: corral's own responses, by status code.
        self._answered: Counter[int] = Counter()
        self._bytes = 0
        self._latency_sum = 0.0
        self._histogram = [0] * (len(BUCKETS) + 1)

    def end(self, status: int, sent: int, took: float) -> None:
        """``record((status, sent, took))``, as a method with three arguments."""
        self._pending.extend((status, sent, took))

    def fold(self) -> None:
        """Turn the records so far into counts; from any thread."""
        with self._lock:
            pending = self._pending
            n = len(pending)
            if n:
                # Two operations, each atomic: a record from another thread
                # between them lands past n and stays for the next fold (each
                # extend is atomic too, so n is a multiple of three).
                batch = pending[:n]
                del pending[:n]
                statuses = cast("list[int]", batch[0::3])
                sent = cast("list[int]", batch[1::3])
                took = batch[2::3]
                n //= 3
                # Fast paths for a batch of one status and one latency bucket
                # (most batches of a busy worker): a C-level count and
                # min/max instead of a Counter's per-item update and a sort.
                first = statuses[0]
                if statuses.count(first) == n:
                    self._by_status[first] += n
                else:
                    self._by_status.update(statuses)
                self._bytes += sum(sent)
                self._latency_sum += sum(took)
                histogram = self._histogram
                # bisect_left: the bucket whose bound is the first >= the
                # latency ("le": a request of exactly `bound` is in it).
                low = bisect.bisect_left(BUCKETS, min(took))
                if low == bisect.bisect_left(BUCKETS, max(took)):
                    histogram[low] += n
                else:
                    ordered = sorted(took)
                    below = 0
                    for i, bound in enumerate(BUCKETS):
                        upto = bisect.bisect_right(ordered, bound, below)
                        histogram[i] += upto - below
                        below = upto
                    histogram[-1] += n - below
            answers = self._pending_answers
            n = len(answers)
            if n:
                self._answered.update(answers[:n])
                del answers[:n]

    def classes(self) -> list[int]:
        """Responses by status class, 1xx to 5xx (corral's own answers included), as folded so far.

        Status codes are three digits (RFC 9110 15): 0 (no response went
        out) and anything outside 100-599 counts in no class.
        """
        classes = [0] * 5
        for counts in (self._by_status, self._answered):
            for status, n in counts.items():
                if 100 <= status < 600:
                    classes[status // 100 - 1] += n
        return classes

    def publish(self, in_flight: int) -> None:
        self.fold()
        with self._lock:
            histogram = list(self._histogram)
            classes = self.classes()
            sent = self._bytes
            took = self._latency_sum
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
