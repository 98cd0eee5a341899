"""corral.stats' worker side: records folded into counts, from many threads at once.

The serving layer records each request as one tuple (``WorkerStats.record``,
kept as three items of a flat list) and folds the records in C-level
passes; these tests hold the fold to the per-request arithmetic it
replaced (a bucket search per request, a class per status code), and show
that records made from many threads while others fold and publish are
each counted exactly once.
"""

from __future__ import annotations

import bisect
import threading
import types

from hypothesis import example, given
from hypothesis import strategies as st

from corral.stats import BUCKETS, FOLD_EVERY, StatsTable, WorkerStats
from corral.workers.base import Worker

statuses = st.one_of(st.sampled_from([0, 99, 100, 199, 200, 204, 301, 404, 499, 500, 599, 600, 999,
                                      1000, 1234]), st.integers(0, 2000))
latencies = st.one_of(st.sampled_from([0.0, *BUCKETS, 20.0]), st.floats(0, 30, allow_nan=False))
records = st.lists(st.tuples(statuses, st.integers(0, 10**9), latencies), max_size=300)


def expected(recs: list[tuple[int, int, float]], answers: list[int]) -> tuple[list[int], list[int]]:
    """Classes and histogram, one request at a time (what WorkerStats did before it folded)."""
    classes = [0] * 5
    histogram = [0] * (len(BUCKETS) + 1)
    for status, _sent, took in recs:
        if 100 <= status < 600:
            classes[status // 100 - 1] += 1
        histogram[bisect.bisect_left(BUCKETS, took)] += 1  # le: exactly a bound is in its bucket
    for status in answers:
        if 100 <= status < 600:
            classes[status // 100 - 1] += 1
    return classes, histogram


@given(records, st.lists(statuses, max_size=20), st.integers(1, 5))
@example([(200, 5, BUCKETS[0]), (200, 5, BUCKETS[0] + 1e-9), (404, 0, 10.0), (500, 1, 10.5)],
         [400, 0, 700], 2)
@example([(0, 0, 0.0), (999, 1, 0.0), (1000, 2, 30.0), (100, 3, 0.0), (599, 4, 0.0)], [], 1)
# The fold's fast paths (one status, one bucket) and their edges: a bound is
# in its own bucket, a hair above it is in the next, +Inf is a bucket too.
@example([(200, 1, 0.001)] * 10 + [(200, 1, BUCKETS[0])] * 5, [], 1)
@example([(200, 1, BUCKETS[0]), (200, 1, BUCKETS[0] + 1e-9)], [], 1)
@example([(404, 1, 20.0), (404, 2, 30.0), (404, 3, BUCKETS[-1] + 1e-9)], [], 1)
@example([(200, 1, 0.001), (200, 1, 0.002), (201, 1, 0.003)], [], 1)
def test_the_fold_counts_as_one_request_at_a_time(recs: list[tuple[int, int, float]],
                                                  answers: list[int], parts: int) -> None:
    table = StatsTable(2)
    stats = table.member(1, 77)
    # Folded in several goes (heartbeats and request_done between them).
    step = max(1, len(recs) // parts)
    for i in range(0, len(recs), step):
        for rec in recs[i : i + step]:
            stats.record(rec)
        stats.fold()
    for status in answers:
        stats.answered(status)
    stats.publish(3)
    snap = table.read(1)
    classes, histogram = expected(recs, answers)
    assert snap.pid == 77 and snap.in_flight == 3
    assert snap.requests == len(recs) and snap.observed == len(recs)
    assert snap.status == classes
    assert snap.histogram == histogram
    assert snap.bytes == sum(sent for _, sent, _ in recs)
    assert abs(snap.latency_sum - sum(took for _, _, took in recs)) <= 1e-6 * (len(recs) + 1)
    assert table.read(0).requests == 0  # the other slot is untouched


def test_end_is_record_with_three_arguments() -> None:
    table = StatsTable(1)
    stats = table.member(0, 1)
    stats.end(201, 7, 0.02)
    stats.record((201, 7, 0.02))
    stats.publish(0)
    snap = table.read(0)
    assert snap.requests == 2 and snap.status == [0, 2, 0, 0, 0] and snap.bytes == 14
    assert snap.histogram[BUCKETS.index(0.025)] == 2


def test_records_from_many_threads_are_each_counted_once() -> None:
    # Eight request threads record as fast as they can while one thread
    # publishes (a heartbeat) and the request threads fold now and then (as
    # request_done does): every record is counted exactly once, and the
    # published numbers only grow.
    table = StatsTable(1)
    stats = table.member(0, 1)
    per_thread = 20_000
    threads = 8
    done = threading.Event()
    seen: list[int] = []

    def request_thread(k: int) -> None:
        status = 200 + k  # a status of its own: the classes sum them, by_status keeps them apart
        for i in range(per_thread):
            stats.record((status, k, 0.001 if i % 2 else 0.2))
            if i % 997 == 0:
                stats.fold()

    def heartbeat() -> None:
        while not done.is_set():
            stats.publish(0)
            seen.append(table.read(0).requests)

    beat = threading.Thread(target=heartbeat)
    beat.start()
    workers = [threading.Thread(target=request_thread, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    done.set()
    beat.join()
    stats.publish(0)
    snap = table.read(0)
    total = per_thread * threads
    assert snap.requests == total
    assert snap.status == [0, total, 0, 0, 0]
    assert snap.bytes == per_thread * sum(range(threads))
    assert snap.histogram[0] == total // 2 and snap.histogram[BUCKETS.index(0.25)] == total // 2
    assert seen == sorted(seen) and len(seen) > 1


def test_request_done_folds_every_so_often() -> None:
    # Between heartbeats a fast worker's records are folded by the request
    # that completes FOLD_EVERY + 1 of them, so they never pile up.
    table = StatsTable(1)
    stats = table.member(0, 1)
    worker = types.SimpleNamespace(nr=0, max_requests=0, recycle_asked_at=None, stats=stats)
    longest = 0
    for _ in range(5 * (FOLD_EVERY + 1)):
        stats.record((200, 1, 0.0))
        Worker.request_done(worker)  # type: ignore[arg-type]
        longest = max(longest, len(stats._pending) // 3)  # three items per record
    assert worker.nr == 5 * (FOLD_EVERY + 1)
    assert longest == FOLD_EVERY  # the (FOLD_EVERY + 1)th folds them all, every time
    assert not stats._pending
    stats.publish(0)
    assert table.read(0).requests == 5 * (FOLD_EVERY + 1)


def test_a_worker_without_counters_folds_nothing() -> None:
    worker = types.SimpleNamespace(nr=FOLD_EVERY, max_requests=0, recycle_asked_at=None, stats=None)
    Worker.request_done(worker)  # type: ignore[arg-type]
    assert worker.nr == FOLD_EVERY + 1


def test_a_worker_stats_is_what_member_gives() -> None:
    assert isinstance(StatsTable(1).member(0, 1), WorkerStats)
