"""RequestWatchdog: the clock a threaded worker keeps on each running request.

Unit tests of the class itself; the conformance suite's stuck-worker and
slow-client tests run it inside real gthread and tornado workers.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from corral.http.parser import RequestHead, RequestParser
from corral.workers.watchdog import RequestWatchdog


def _head(line: bytes) -> RequestHead:
    parser = RequestParser()
    parser.feed(line + b"\r\nHost: h\r\n\r\n")
    head = parser.next_event()
    assert isinstance(head, RequestHead)
    return head


class Heartbeat:
    def __init__(self) -> None:
        self.beats = 0
        self.expired = False

    def notify(self) -> None:
        self.beats += 1

    def expire(self) -> None:
        self.expired = True


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    # Threads change hands every microsecond instead of every 5 ms, so that a
    # check() reading the running requests meets the other threads' writes.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_beats_while_requests_are_within_the_timeout() -> None:
    hb = Heartbeat()
    dog = RequestWatchdog(hb, 30.0, logging.getLogger("test"))  # type: ignore[arg-type]
    dog.started("GET /")
    assert dog.busy
    assert dog.check() and hb.beats == 1
    dog.finished()
    assert not dog.busy
    assert dog.check() and hb.beats == 2 and not hb.expired


def test_a_request_over_the_timeout_is_logged_with_its_stack_and_expires_the_heartbeat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hb = Heartbeat()
    dog = RequestWatchdog(hb, 0.05, logging.getLogger("test.watchdog"))  # type: ignore[arg-type]
    release = threading.Event()

    def stuck_request() -> None:
        # As the workers pass it: the head itself, named only if it is logged.
        dog.started(_head(b"GET /spin?x=1 HTTP/1.1"))
        release.wait(5)
        dog.finished()

    t = threading.Thread(target=stuck_request)
    t.start()
    try:
        time.sleep(0.2)
        with caplog.at_level(logging.CRITICAL, logger="test.watchdog"):
            assert dog.check() is False
        assert hb.expired and hb.beats == 0
        assert dog.check() is False  # tripped for good: the worker is about to be replaced
        text = caplog.text
        assert "Request GET /spin?x=1 has run for" in text
        assert "stuck_request" in text  # the thread's own stack, not the checker's
    finally:
        release.set()
        t.join()


def test_a_stuck_request_named_by_a_string_is_logged_by_it(caplog: pytest.LogCaptureFixture) -> None:
    hb = Heartbeat()
    dog = RequestWatchdog(hb, 0.01, logging.getLogger("test.watchdog"))  # type: ignore[arg-type]
    dog.started("job 42")
    time.sleep(0.05)
    with caplog.at_level(logging.CRITICAL, logger="test.watchdog"):
        assert dog.check() is False
    dog.finished()
    assert "Request job 42 has run for" in caplog.text


def test_time_waiting_on_the_client_does_not_count() -> None:
    hb = Heartbeat()
    dog = RequestWatchdog(hb, 0.05, logging.getLogger("test"))  # type: ignore[arg-type]
    dog.started("POST /upload")
    with dog.client_wait():
        time.sleep(0.15)
        assert dog.check()  # waiting on the client: not stuck
    assert dog.check()  # the clock started again from zero
    time.sleep(0.15)
    assert not dog.check()  # the app itself ran past the timeout
    dog.finished()


def test_requests_starting_and_ending_in_many_threads_while_the_loop_checks(frequent_switches: None) -> None:
    # No lock guards the running requests: check() must read them whole
    # while pool threads add and remove theirs.
    hb = Heartbeat()
    dog = RequestWatchdog(hb, 30.0, logging.getLogger("test"))  # type: ignore[arg-type]
    stop = threading.Event()
    errors: list[BaseException] = []

    def pool_thread() -> None:
        try:
            while not stop.is_set():
                dog.started("GET /")
                with dog.client_wait():
                    pass
                dog.finished()
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=pool_thread) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert dog.check()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert not dog.busy and not hb.expired
    assert hb.beats > 100
