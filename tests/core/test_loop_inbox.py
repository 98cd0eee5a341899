"""LoopInbox: the pool threads' way back to an asyncio loop (corral.workers.asyncio_connection).

What the tornado worker (and any worker built on WsgiThreadResponder)
relies on: every callback runs exactly once, on the loop, in the order one
thread queued it; a burst from many threads wakes the loop once, not once
per callback; a failing callback is reported and does not strand the rest;
and code on the loop that flushes the inbox (as sendfile does before it
starts, and the executor path before it reuses a connection) sees a
thread's earlier callbacks first, however the other threads race.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from corral.workers.asyncio_connection import LoopInbox


def _run_on_loop(body: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(body(loop))
    finally:
        loop.close()


def test_callbacks_from_many_threads_run_once_each_in_per_thread_order() -> None:
    threads, per_thread = 8, 500

    async def body(loop: asyncio.AbstractEventLoop) -> dict[int, list[int]]:
        inbox = LoopInbox(loop)
        seen: dict[int, list[int]] = {t: [] for t in range(threads)}
        on_loop = threading.get_ident()
        wrong_thread: list[int] = []
        done = asyncio.Event()
        remaining = [threads * per_thread]

        def record(t: int, i: int) -> None:
            if threading.get_ident() != on_loop:
                wrong_thread.append(t)
            seen[t].append(i)
            remaining[0] -= 1
            if not remaining[0]:
                done.set()

        def produce(t: int) -> None:
            for i in range(per_thread):
                inbox.call(record, t, i)

        workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        await asyncio.wait_for(done.wait(), 10)
        for w in workers:
            w.join()
        assert not wrong_thread
        return seen

    seen = _run_on_loop(body)
    assert all(order == list(range(per_thread)) for order in seen.values())


def test_a_burst_wakes_the_loop_once() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> tuple[int, list[int]]:
        inbox = LoopInbox(loop)
        wakes = 0
        real = loop.call_soon_threadsafe

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal wakes
            wakes += 1
            return real(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        ran: list[int] = []
        # The loop is busy in this coroutine while another thread queues 100
        # callbacks: they must all ride on the first wake-up.
        t = threading.Thread(target=lambda: [inbox.call(ran.append, i) for i in range(100)])
        t.start()
        t.join()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return wakes, ran

    wakes, ran = _run_on_loop(body)
    assert ran == list(range(100))
    assert wakes == 1


def test_a_failing_callback_is_reported_and_the_rest_still_run() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> tuple[list[str], list[dict[str, Any]]]:
        inbox = LoopInbox(loop)
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        ran: list[str] = []

        def boom() -> None:
            raise ValueError("boom")

        inbox.call(ran.append, "before")
        inbox.call(boom)
        inbox.call(ran.append, "after")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return ran, reported

    ran, reported = _run_on_loop(body)
    assert ran == ["before", "after"]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)


def test_a_flush_runs_what_the_thread_queued_before_it_scheduled_directly() -> None:
    # ThreadBridge queues a response head through the inbox and then starts
    # loop.sendfile with run_coroutine_threadsafe; the coroutine flushes the
    # inbox first, so the head goes first whatever the other threads are
    # doing with the inbox meanwhile.
    rounds = 300

    async def body(loop: asyncio.AbstractEventLoop) -> list[tuple[int, str]]:
        inbox = LoopInbox(loop)
        events: list[tuple[int, str]] = []
        stop = threading.Event()

        def noise() -> None:
            # Other threads racing for the flag, as other connections' pool
            # threads do; they yield between calls like real requests.
            while not stop.is_set():
                inbox.call(lambda: None)
                time.sleep(0)

        async def second(i: int) -> None:
            inbox.flush()
            events.append((i, "direct"))

        def produce() -> None:
            for i in range(rounds):
                inbox.call(events.append, (i, "inbox"))
                asyncio.run_coroutine_threadsafe(second(i), loop).result(10)

        noisy = [threading.Thread(target=noise) for _ in range(3)]
        for n in noisy:
            n.start()
        try:
            await asyncio.wait_for(asyncio.to_thread(produce), 30)
        finally:
            stop.set()
            for n in noisy:
                n.join()
        return events

    events = _run_on_loop(body)
    assert events == [(i, kind) for i in range(rounds) for kind in ("inbox", "direct")]


def test_flush_runs_callbacks_whose_drain_another_thread_has_not_scheduled_yet() -> None:
    # The race the flush exists for, made deterministic: another thread has
    # set the flag and not yet scheduled its drain, so this thread's
    # callback waits in the inbox with no drain of its own; a coroutine it
    # then starts directly on the loop (sendfile) must still see it first.
    async def body(loop: asyncio.AbstractEventLoop) -> list[str]:
        inbox = LoopInbox(loop)
        events: list[str] = []
        inbox._scheduled = True  # the other thread's drain, still on its way

        async def sendfile_like() -> None:
            inbox.flush()
            events.append("direct")

        def thread() -> None:
            inbox.call(events.append, "queued")
            asyncio.run_coroutine_threadsafe(sendfile_like(), loop).result(5)

        await asyncio.to_thread(thread)
        inbox._drain()  # the other thread's drain arrives at last: nothing runs twice
        return events

    assert _run_on_loop(body) == ["queued", "direct"]
