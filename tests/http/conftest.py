"""Helpers for the socket-free tests of :class:`corral.http.parser.RequestParser`.

Every rule is checked three ways, because a parser that is right only when a
whole request arrives in one ``recv()`` is wrong on the wire:

- ``whole``: all bytes in one ``feed()``;
- ``bytewise``: one ``feed()`` per byte;
- ``random``: several seeded random splittings, which must all agree.

:func:`parse_all` runs one byte stream through a parser the way a worker does
(feed, then drain ``next_event()`` until it asks for more) and checks the
parser's contract on every step, so every test checks it too:

- an :class:`EndOfMessage` is followed by ``PAUSED`` until ``start_next()``,
  and no byte of a pipelined request is consumed before that;
- the first error is final: later calls raise the same exception object and
  consume nothing, even when more bytes arrive;
- after end of stream the parser never answers ``NEED_DATA``;
- the parser never loops: the number of calls is bounded by the input size.

Test modules do not import from here (several ``conftest`` modules share one
name under pytest's default import mode); they use the fixtures below:
``parse_all`` (the function itself), ``mode`` (the three modes) and ``parse``
(``parse_all`` bound to ``mode``, so a test that takes it runs three times).
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from corral.http.errors import HTTPError
from corral.http.parser import (
    CONNECTION_CLOSED,
    NEED_DATA,
    PAUSED,
    ClientDisconnected,
    EndOfMessage,
    ParserLimits,
    RequestHead,
    RequestParser,
)

#: How a byte stream is cut into feed() calls; see the module docstring.
MODES: tuple[str, ...] = ("whole", "bytewise", "random")
#: Random splittings tried per call in "random" mode; all must agree. Five
#: catch split-dependent bugs reliably while keeping the suite fast.
RANDOM_TRIALS = 5
#: At most this many cut points per random splitting: a few cuts land
#: anywhere, many cuts approach bytewise, which is tested on its own.
RANDOM_MAX_CUTS = 6
#: Bytes fed after an error to check that the parser consumes nothing more.
AFTER_ERROR = b"GET / HTTP/1.1\r\nHost: after.error\r\n\r\n"

#: One element of Outcome.events: a head, the merged body bytes of one
#: message, an EndOfMessage, or CONNECTION_CLOSED.
Event = RequestHead | bytes | EndOfMessage | object


class ParseAll(Protocol):
    def __call__(
        self,
        data: bytes,
        limits: ParserLimits | None = None,
        mode: str | Sequence[int] = "whole",
        *,
        eof: bool = False,
        pipeline: bool = True,
    ) -> Outcome: ...


@dataclass
class Outcome:
    """What a parser made of one byte stream.

    ``events`` are the events in order, with consecutive body chunks merged
    (how a body is cut depends on the split, its content must not) and the
    NEED_DATA/PAUSED sentinels left out. ``error`` is the exception that ended
    parsing, if any. ``leftover`` is what the parser had not consumed.
    """

    events: list[Event] = field(default_factory=list)
    error: Exception | None = None
    leftover: bytes = field(default=b"", compare=False)

    def key(self) -> tuple[Any, ...]:
        """What must not depend on how the bytes were split."""
        error = self.error
        return (self.events, type(error), getattr(error, "status", None))

    @property
    def status(self) -> int | None:
        """The HTTP status of the error, or None (no error, or a disconnect)."""
        return self.error.status if isinstance(self.error, HTTPError) else None

    @property
    def heads(self) -> list[RequestHead]:
        return [e for e in self.events if isinstance(e, RequestHead)]

    @property
    def head(self) -> RequestHead:
        """The one head of a single-request stream, which must have no error."""
        assert self.error is None, f"unexpected error {self.error!r}"
        heads = self.heads
        assert len(heads) == 1, heads
        return heads[0]

    @property
    def bodies(self) -> list[bytes]:
        """The body of each message, ended or not."""
        bodies: list[bytes] = []
        for event in self.events:
            if isinstance(event, RequestHead):
                bodies.append(b"")
            elif isinstance(event, bytes):
                bodies[-1] += event
        return bodies

    @property
    def ends(self) -> list[EndOfMessage]:
        return [e for e in self.events if isinstance(e, EndOfMessage)]


def split_points(data: bytes, mode: str | Sequence[int], trial: int = 0) -> list[int]:
    """The cut points for one splitting: sorted, inside (0, len(data))."""
    if isinstance(mode, str):
        if mode == "whole":
            return []
        if mode == "bytewise":
            return list(range(1, len(data)))
        if mode == "random":
            # Seeded by the data, so a failure reproduces on the next run.
            rng = random.Random(zlib.crc32(data) * 31 + trial)
            if len(data) < 2:
                return []
            cuts = rng.randint(1, min(RANDOM_MAX_CUTS, len(data) - 1))
            return rng.sample(range(1, len(data)), cuts)
        raise ValueError(f"unknown mode {mode!r}")
    return sorted({p for p in mode if 0 < p < len(data)})


def split(data: bytes, points: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _assert_error_is_final(parser: RequestParser, exc: Exception) -> None:
    buffered, eof = parser.trailing_data
    with pytest.raises(type(exc)) as again:
        parser.next_event()
    assert again.value is exc, "a later call raised a different error"
    assert parser.trailing_data == (buffered, eof), "the parser consumed bytes after an error"
    parser.feed(AFTER_ERROR)
    with pytest.raises(type(exc)) as again:
        parser.next_event()
    assert again.value is exc, "the parser recovered from an error"
    assert parser.trailing_data == (buffered + AFTER_ERROR, eof), "bytes parsed after an error"


def run_chunks(
    chunks: Sequence[bytes],
    limits: ParserLimits | None = None,
    *,
    eof: bool = False,
    pipeline: bool = True,
) -> Outcome:
    """Feed ``chunks`` one by one, draining events after each; see module doc.

    With ``pipeline=False`` the driver stops at the first ended message, feeds
    the rest and checks that the parser stays PAUSED without consuming any of it.
    """
    parser = RequestParser(limits)
    out = Outcome()
    events = out.events
    # Every event but a zero-length EndOfMessage consumes at least one byte,
    # and each message has one head; so this bound is only hit by a loop.
    calls_left = 4 * sum(len(c) for c in chunks) + 16 * (len(chunks) + 2)
    in_message = False

    def drain(after_eof: bool) -> bool:
        """Drain events; True when the driver must stop feeding."""
        nonlocal calls_left, in_message
        while True:
            calls_left -= 1
            assert calls_left > 0, "the parser does not make progress"
            try:
                event = parser.next_event()
            except (HTTPError, ClientDisconnected) as exc:
                out.error = exc
                out.leftover = parser.trailing_data[0]
                _assert_error_is_final(parser, exc)
                return True
            if event is NEED_DATA:
                assert not after_eof, "NEED_DATA after end of stream"
                return False
            assert event is not PAUSED, "PAUSED outside of a finished message"
            if event is CONNECTION_CLOSED:
                assert after_eof and not in_message
                events.append(event)
                assert parser.next_event() is CONNECTION_CLOSED
                return True
            if isinstance(event, RequestHead):
                assert not in_message, "a head inside a message"
                in_message = True
                events.append(event)
            elif isinstance(event, bytes):
                assert in_message and event, "body bytes outside a message, or empty"
                if isinstance(events[-1], bytes):
                    events[-1] += event
                else:
                    events.append(event)
            else:
                assert isinstance(event, EndOfMessage), f"unknown event {event!r}"
                assert in_message, "EndOfMessage without a head"
                in_message = False
                events.append(event)
                paused_on = parser.trailing_data
                for _ in range(2):
                    assert parser.next_event() is PAUSED
                    assert parser.trailing_data == paused_on, "parsed a byte before start_next()"
                if not pipeline:
                    return True
                parser.start_next()

    stopped = False
    for index, chunk in enumerate(chunks):
        parser.feed(chunk)
        stopped = drain(after_eof=False)
        if stopped:
            if not pipeline and out.error is None:
                # Paused: whatever else arrives must stay untouched.
                paused_on = parser.trailing_data[0]
                rest = b"".join(chunks[index + 1 :])
                if rest:
                    parser.feed(rest)
                if eof:
                    parser.feed(b"")
                assert parser.next_event() is PAUSED
                assert parser.trailing_data == (paused_on + rest, eof), "parsed a byte while paused"
            break
    if not stopped and eof:
        parser.feed(b"")
        drain(after_eof=True)
    if out.error is None:
        out.leftover = parser.trailing_data[0]
    return out


def parse_all(
    data: bytes,
    limits: ParserLimits | None = None,
    mode: str | Sequence[int] = "whole",
    *,
    eof: bool = False,
    pipeline: bool = True,
) -> Outcome:
    """Parse ``data`` fed as ``mode`` says ("whole", "bytewise", "random" or
    explicit cut points); with ``eof`` the stream ends after it.

    Returns the events, or the events up to the raised error and the error.
    In "random" mode every splitting must give the same :meth:`Outcome.key`.
    """
    if mode != "random":
        return run_chunks(split(data, split_points(data, mode)), limits, eof=eof, pipeline=pipeline)
    first = run_chunks(split(data, []), limits, eof=eof, pipeline=pipeline) if len(data) < 2 else None
    for trial in range(RANDOM_TRIALS if first is None else 0):
        points = split_points(data, "random", trial)
        out = run_chunks(split(data, points), limits, eof=eof, pipeline=pipeline)
        if first is None:
            first = out
        else:
            assert out.key() == first.key(), f"cut at {sorted(points)} the result differs"
    assert first is not None
    return first


Parse = Callable[..., Outcome]


@pytest.fixture(scope="session", name="parse_all")
def parse_all_fixture() -> ParseAll:
    return parse_all


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def parse(mode: str) -> Parse:
    """``parse_all`` bound to the ``mode`` of this test run."""

    def bound(data: bytes, limits: ParserLimits | None = None, **options: bool) -> Outcome:
        return parse_all(data, limits, mode, **options)

    return bound
