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

pytest.importorskip("corral_gthread")

from corral_gthread.loop import SATURATED_PEEK, IOLoop


@pytest.fixture
def loop() -> Iterator[IOLoop]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    wake_r, wake_w = os.pipe()
    cfg = SimpleNamespace(keepalive=5.0, worker_connections=1000, graceful_timeout=30.0,
                          header_timeout=10.0, threads=1)
    worker = SimpleNamespace(cfg=cfg, listeners=[SimpleNamespace(sock=listener)],
                             envs={}, _wake_r=wake_r, log=logging.getLogger("test"))
    worker.envs[id(worker.listeners[0])] = None
    ioloop = IOLoop(worker, lambda conn, n: None, None)  # type: ignore[arg-type]
    try:
        yield ioloop
    finally:
        ioloop.poller.close()
        listener.close()
        os.close(wake_r)
        os.close(wake_w)


def test_a_resume_between_two_saturations_keeps_the_peek_due(loop: IOLoop) -> None:
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


def test_a_peek_while_accepting_again_ends_the_peeking(loop: IOLoop) -> None:
    loop.resume_accepting()
    loop.in_threads = loop.saturation
    loop.saturate()
    loop.in_threads = 0
    loop.resume_accepting()
    loop.peek(time.monotonic())  # nothing queued: accepts nothing
    assert loop.peek_at == math.inf  # the listeners' own events take over


def test_a_peek_while_saturated_schedules_the_next(loop: IOLoop) -> None:
    loop.resume_accepting()
    loop.in_threads = loop.saturation
    loop.saturate()
    now = time.monotonic()
    loop.peek(now)
    assert loop.peek_at == now + SATURATED_PEEK
