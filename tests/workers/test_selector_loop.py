"""The gthread loop's accepting states, without a server: what a real run cannot show on demand.

Under keep-alive load a worker can go from saturated (its listeners left
alone, a peek at their queues due every SATURATED_PEEK) to free and back
within one loop iteration: the threads hand their connections back, and the
next requests arrive with the same events. Its listeners are then watched
only between two polls and never report a connection. Each resume used to
cancel the pending peek, so the peek never came either, and new connections
waited in the listen queue until the load stopped: 1-4 s in
``bench/run.py --server-cpus 1 --client-cpus 0`` (docs/workers/gthread.md).
Python clients in a test do not produce that load reliably, so the states
are driven here directly, on a real loop with a real epoll and listener.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from corral.workers.selector_loop import SATURATED_PEEK, SelectorLoop


@pytest.fixture
def loop() -> Iterator[SelectorLoop]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    wake_r, wake_w = os.pipe()
    cfg = SimpleNamespace(keepalive=5.0, worker_connections=1000, graceful_timeout=30.0,
                          header_timeout=10.0, threads=1)
    worker = SimpleNamespace(cfg=cfg, listeners=[SimpleNamespace(sock=listener)],
                             envs={}, wake_fd=wake_r, log=logging.getLogger("test"), check_interval=0.25)
    worker.envs[id(worker.listeners[0])] = None
    ioloop = SelectorLoop(worker, lambda conn, n: None, None)  # type: ignore[arg-type]
    try:
        yield ioloop
    finally:
        ioloop.poller.close()
        listener.close()
        os.close(wake_r)
        os.close(wake_w)


def test_a_resume_between_two_saturations_keeps_the_peek_due(loop: SelectorLoop) -> None:
    loop.resume_accepting()
    assert loop.accepting and loop.peek_at == math.inf
    loop.in_threads = loop.saturation  # two requests in hand for one thread
    loop.saturate()
    due = loop.peek_at
    assert not loop.accepting and due <= time.monotonic() + SATURATED_PEEK
    loop.in_threads = 0  # the thread handed its connections back ...
    loop.resume_accepting()
    assert loop.accepting
    assert loop.peek_at == due, "a resume cancelled the peek that was due"
    loop.in_threads = loop.saturation  # ... and their next requests came at once
    loop.saturate()
    assert loop.peek_at == due, "saturating again pushed the peek back"


def test_a_peek_while_accepting_again_ends_the_peeking(loop: SelectorLoop) -> None:
    loop.resume_accepting()
    loop.in_threads = loop.saturation
    loop.saturate()
    loop.in_threads = 0
    loop.resume_accepting()
    loop.peek(time.monotonic())  # nothing queued: accepts nothing
    assert loop.peek_at == math.inf  # the listeners' own events take over


def test_a_peek_while_saturated_schedules_the_next(loop: SelectorLoop) -> None:
    loop.resume_accepting()
    loop.in_threads = loop.saturation
    loop.saturate()
    now = time.monotonic()
    loop.peek(now)
    assert loop.peek_at == now + SATURATED_PEEK


def test_threads_freed_and_filled_in_one_iteration_leave_the_listeners_alone(loop: SelectorLoop) -> None:
    """The flip between saturated and free within one iteration costs no system call.

    Resuming at once, in take_back(), watched the listeners only for the
    rest of that iteration's events to unwatch them again: two epoll_ctl
    calls per listener for a watch no poll ever saw.
    """
    calls: list[tuple[str, int]] = []
    watch, unwatch = loop.poller.watch, loop.poller.unwatch

    def counting_watch(fd: int, data: object) -> None:
        calls.append(("watch", fd))
        watch(fd, data)

    def counting_unwatch(fd: int) -> None:
        calls.append(("unwatch", fd))
        unwatch(fd)

    loop.poller.watch = counting_watch  # type: ignore[method-assign]
    loop.poller.unwatch = counting_unwatch  # type: ignore[method-assign]
    loop.resume_accepting()
    loop.in_threads = loop.saturation
    loop.saturate()
    calls.clear()
    # The thread hands its connections back (closed ones, to keep this small) ...
    for _ in range(loop.saturation):
        loop.returned.append(SimpleNamespace(open=False, counted=True, first_head_due=False))  # type: ignore[arg-type]
    loop.take_back()
    assert loop.in_threads == 0 and not loop.accepting
    # ... and the same poll's events bring as many requests again.
    loop.in_threads = loop.saturation
    loop.saturate()
    assert calls == []
    # With a thread still free when the loop next waits, it watches again first.
    loop.in_threads = 0
    loop.run_once(math.inf)
    (listener,) = loop.listeners
    assert loop.accepting and not loop.saturated
    assert calls == [("watch", listener.fileno())]
