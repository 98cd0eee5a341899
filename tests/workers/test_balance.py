"""Spreading a pool's connections over its workers (corral.workers.balance).

The table itself is tested in-process (and across a real fork); the
workers' use of it with real corral processes, real sockets and SIGSTOP.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from corral.testing import CorralProcess
from corral.testing.clients import read_response
from corral.workers.balance import BACKOFF, PATIENCE, SLACK, ConnectionShare

# -- the table -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_free_slot_is_the_lowest_not_taken() -> None:
    share = ConnectionShare(4)
    assert share.free_slot(set()) == 0
    assert share.free_slot({0, 1, 3}) == 2
    assert share.free_slot({0, 1, 2, 3}) is None


def test_a_worker_steps_aside_only_for_a_clearly_less_loaded_peer_that_accepts() -> None:
    share = ConnectionShare(4)
    clock = Clock()
    me, peer = share.member(0, clock), share.member(1, clock)
    me.join()
    for _ in range(SLACK + 3):
        me.opened()
    assert not me.step_aside(), "the peer has not joined: nobody to leave the connection to"
    peer.join()
    assert me.step_aside(), f"{SLACK + 3} connections against 0"
    for _ in range(3):
        peer.opened()
    assert not me.step_aside(), "within the slack"
    # With many connections the slack is a quarter of the peer's count.
    for _ in range(40):
        peer.opened()
        me.opened()
    for _ in range(6):
        me.opened()
    assert not me.step_aside(), "53 against 43: within a quarter of 43"
    me.opened()
    assert me.step_aside(), "54 against 43"
    peer.leave()
    assert not me.step_aside(), "a stopping peer takes nothing"
    peer.opened()
    assert share.counts[1] == 0, "a worker that left does not come back by itself"


def test_stepping_aside_gives_up_after_patience_and_backs_off() -> None:
    share = ConnectionShare(2)
    clock = Clock()
    me, peer = share.member(0, clock), share.member(1, clock)
    me.join()
    peer.join()
    for _ in range(SLACK + 1):
        me.opened()
    assert me.step_aside()
    clock.now += PATIENCE / 2
    assert me.step_aside()
    clock.now += PATIENCE / 2
    assert not me.step_aside(), "the peer took nothing for PATIENCE: accept"
    clock.now += BACKOFF / 2
    assert not me.step_aside(), "backing off"
    clock.now += BACKOFF / 2
    assert me.step_aside(), "balancing again after the backoff"
    for _ in range(SLACK):
        me.closed()
    assert not me.step_aside()
    assert share.counts[0] == 2 and share.counts[1] == 1  # counts are published plus one


def test_the_table_is_shared_across_fork_and_cleared_by_the_arbiter() -> None:
    share = ConnectionShare(2)
    pid = os.fork()
    if pid == 0:
        child = share.member(1)
        child.join()
        for _ in range(7):
            child.opened()
        os._exit(0)
    os.waitpid(pid, 0)
    assert share.counts[1] == 8
    share.clear(1)  # what the arbiter does when it reaps the worker
    assert share.counts[1] == 0


# -- real workers -------------------------------------------------------------------------

BALANCING_CLASSES = [name for name, module in
                     [("gthread", "corral_gthread"), ("gevent", "corral_gevent"), ("tornado", "corral_tornado")]
                     if importlib.util.find_spec(module) is not None]


@pytest.fixture(params=BALANCING_CLASSES)
def corral_worker_class(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def open_and_ask(server: CorralProcess, count: int, held: list[socket.socket]) -> Counter[int]:
    """Open ``count`` keep-alive connections at once; which worker serves each (by pid)."""
    socks = [server.connect() for _ in range(count)]
    held.extend(socks)
    for sock in socks:
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    pids: Counter[int] = Counter()
    for sock in socks:
        status, _, body = read_response(sock)
        assert status == 200
        pids[int(body)] += 1
    return pids


def test_new_connections_go_to_the_worker_holding_fewer(corral_server: Callable[..., CorralProcess],
                                                        held: list[socket.socket]) -> None:
    server = corral_server("--keep-alive", "60", workers=2)
    a, b = server.wait_for_workers(2)
    # Ten connections all on worker a: b is stopped, so a steps aside for
    # PATIENCE at most and then takes them.
    os.kill(b, signal.SIGSTOP)
    try:
        start = time.monotonic()
        first = open_and_ask(server, 10, held)
        took = time.monotonic() - start
    finally:
        os.kill(b, signal.SIGCONT)
    assert first == {a: 10}
    assert took < 2.0, "a stopped peer may delay accepts a little, never hold them"
    time.sleep(BACKOFF + 0.3)  # a's backoff after giving up on b
    # Now a holds 10 and b none: new connections go to b until it holds about as many.
    second = open_and_ask(server, 8, held)
    assert second[b] >= 10 - SLACK, f"b got {second[b]} of 8 while a held 10 (a got {second[a]})"
