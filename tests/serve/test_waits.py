"""The wait policy (corral.serve.waits) without sockets: deadlines, timeouts, the drain.

Every class waits through these functions, so their rules are checked
here once, as tests/http checks the parser: bytes and clocks in, verdicts out.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.http import errors as E
from corral.http.parser import ParserLimits, RequestHead, RequestParser
from corral.serve.retirement import FIRST_REQUEST_GRACE
from corral.serve.waits import (
    DRAIN_MAX_BYTES,
    DRAIN_MAX_SECONDS,
    Drain,
    HeadWait,
    body_wait_timed_out,
    first_byte_deadline,
    head_wait_timed_out,
)

HEADER_TIMEOUT = 10.0
KEEPALIVE = 2.0


def deadline(now: float = 100.0, *, first: bool, retiring_for: float | None = None,
             keepalive: float = KEEPALIVE) -> float:
    return first_byte_deadline(now, first=first, header_timeout=HEADER_TIMEOUT, keepalive=keepalive,
                               retiring_for=retiring_for)


def test_a_first_request_gets_the_header_timeout_a_later_one_the_keepalive() -> None:
    assert deadline(first=True) == 100.0 + HEADER_TIMEOUT
    assert deadline(first=False) == 100.0 + KEEPALIVE


def test_retiring_caps_the_wait_at_the_keepalive_from_the_retirement() -> None:
    # Retiring for 0.5 s: a fresh connection waits until 1.5 s from now (2 s
    # after the retirement began), not its 10 s header timeout.
    assert deadline(first=True, retiring_for=0.5) == pytest.approx(100.0 + KEEPALIVE - 0.5)
    # A kept-alive connection keeps exactly the wait it had when that is sooner.
    assert deadline(first=False, retiring_for=0.0) == 100.0 + KEEPALIVE
    # Long retired: the wait is over already (the caller closes at once).
    assert deadline(first=False, retiring_for=5.0) < 100.0


def test_retiring_with_a_tiny_keepalive_still_grants_the_first_request_grace() -> None:
    assert deadline(first=True, retiring_for=0.0, keepalive=0.1) == pytest.approx(100.0 + FIRST_REQUEST_GRACE)


@given(now=st.floats(0, 1e6), first=st.booleans(), retiring_for=st.none() | st.floats(0, 100),
       keepalive=st.floats(0.0, 60.0))
def test_retiring_never_lengthens_a_wait(now: float, first: bool, retiring_for: float | None,
                                         keepalive: float) -> None:
    serving = deadline(now, first=first, keepalive=keepalive)
    assert deadline(now, first=first, retiring_for=retiring_for, keepalive=keepalive) <= serving


def test_a_wait_that_ends_mid_head_is_a_408_else_a_quiet_close() -> None:
    parser = RequestParser()
    head_wait_timed_out(parser)  # nothing arrived: returns, the caller closes without a word
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head begun, not finished
    parser.next_event()
    with pytest.raises(E.RequestTimeout) as caught:
        head_wait_timed_out(parser)
    assert caught.value.status == 408
    assert body_wait_timed_out().status == 408


def parser_in_body(body_length: int) -> RequestParser:
    parser = RequestParser()
    parser.feed(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body_length)
    assert type(parser.next_event()) is RequestHead
    return parser


def test_drain_of_a_body_that_is_all_here_needs_no_read() -> None:
    parser = parser_in_body(5)
    parser.feed(b"hello")
    drain = Drain(parser)
    assert drain.step() is True
    assert drain.deadline == 0.0  # no read was due, so no clock was read


def test_drain_asks_for_bytes_with_one_deadline_for_the_whole_drain() -> None:
    parser = parser_in_body(10)
    parser.feed(b"hel")
    drain = Drain(parser)
    assert drain.step() is None
    assert drain.need_deadline(50.0) == 50.0 + DRAIN_MAX_SECONDS
    parser.feed(b"lo wo")
    assert drain.step() is None
    assert drain.need_deadline(51.0) == 50.0 + DRAIN_MAX_SECONDS  # the first read set it
    parser.feed(b"rld")
    assert drain.step() is True


def test_drain_gives_up_on_a_remainder_over_the_budget() -> None:
    parser = parser_in_body(DRAIN_MAX_BYTES + 10)
    drain = Drain(parser)
    parser.feed(b"x" * (DRAIN_MAX_BYTES // 2))
    assert drain.step() is None
    parser.feed(b"x" * (DRAIN_MAX_BYTES // 2 + 5))
    assert drain.step() is False


@given(size=st.integers(0, 3 * DRAIN_MAX_BYTES // 2), cuts=st.lists(st.integers(1, 1 << 19), max_size=6))
def test_drain_verdict_depends_on_the_body_not_on_how_it_arrives(size: int, cuts: list[int]) -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert type(parser.next_event()) is RequestHead
    wire = (b"%x\r\n" % size + b"y" * size + b"\r\n" if size else b"") + b"0\r\n\r\n"
    drain = Drain(parser)
    verdict = drain.step()
    pos = 0
    for cut in [*cuts, len(wire)]:
        if verdict is not None:
            break
        parser.feed(wire[pos:pos + cut])
        pos += cut
        verdict = drain.step()
    assert verdict is (size <= DRAIN_MAX_BYTES)


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_head_wait_gives_the_first_byte_its_deadline_then_the_head_its_own() -> None:
    clock = FakeClock()
    parser = RequestParser(ParserLimits())
    wait = HeadWait(parser, clock, header_timeout=10.0, keepalive=2.0).begin(False, None)
    assert not wait.step() and wait.deadline == 102.0 and not wait.started  # idle: the keep-alive
    clock.now = 101.5
    parser.feed(b"GET / HT")
    assert not wait.step() and wait.started and wait.deadline == 111.5  # a head began: its own 10 s
    parser.feed(b"TP/1.1\r\nHost: x\r\n\r\n")
    assert wait.step() and wait.head is not None and wait.head.target == "/"


def test_head_wait_ends_quietly_on_a_close_and_with_408_on_a_cut_head() -> None:
    parser = RequestParser(ParserLimits())
    wait = HeadWait(parser, FakeClock(), header_timeout=5.0, keepalive=2.0).begin(True, None)
    parser.feed(b"")
    assert wait.step() and wait.head is None
    parser = RequestParser(ParserLimits())
    wait = HeadWait(parser, FakeClock(), header_timeout=5.0, keepalive=2.0).begin(True, None)
    assert wait.deadline == 105.0
    wait.timed_out()  # nothing had come: a quiet close
    parser.feed(b"GET /")
    assert not wait.step()
    with pytest.raises(E.RequestTimeout):
        wait.timed_out()


def test_head_wait_while_retiring_caps_the_wait_and_is_reused_between_requests() -> None:
    clock = FakeClock()
    parser = RequestParser(ParserLimits())
    wait = HeadWait(parser, clock, header_timeout=10.0, keepalive=2.0)
    assert wait.begin(True, None).deadline == 110.0
    parser.feed(b"GET / HT")
    assert not wait.step() and wait.started
    # Retiring for long already: the wait ends at once but grants the first-request grace.
    import time as _time

    retired = _time.monotonic() - 60.0
    assert wait.begin(False, retired).deadline == pytest.approx(deadline(first=False, retiring_for=60.0), abs=0.5)
    assert wait.head is None and not wait.started
