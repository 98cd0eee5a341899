"""How long a connection waits for its client, and when it gives up: the wait policy, once.

Every class waits for the same things, with its own I/O (blocking or
cooperative sockets, an asyncio protocol, a selector loop); what the waits
are, and what ends them, is decided here, without I/O, so that the rules
cannot drift apart between classes:

1. **A connection's first request** must start within ``--header-timeout``
   of the accept; **a kept-alive connection's next request** within
   ``--keep-alive`` of the last response. Ending either wait is a quiet
   close: the client sent nothing, so nothing is owed to it.
2. **A head, once its first byte is here,** must be complete within
   ``--header-timeout`` of that byte; a head cut off by the deadline is
   answered **408** and the connection closed.
3. **A body** must keep coming: each read waits at most ``--header-timeout``
   (a client that stops mid-body gets 408 too).
4. **While retiring** (:mod:`corral.serve.retirement`), the wait for a
   request's first byte ends no later than the keep-alive timeout (at least
   ``FIRST_REQUEST_GRACE``) after the retirement began.
5. **Dropping an unread body** (so that the connection can be kept) reads at
   most :data:`DRAIN_MAX_BYTES` within :data:`DRAIN_MAX_SECONDS`; a larger or
   slower remainder closes the connection instead (:class:`Drain`).

Times are plain floats in whatever clock the caller uses (``time.monotonic``
or an event loop's ``time()``): the policy only adds and compares.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from corral.http import errors as E
from corral.http.parser import CONNECTION_CLOSED, NEED_DATA, RequestHead, RequestParser
from corral.serve.retirement import next_request_deadline

#: After a response, at most this much unread request body is read and
#: dropped to keep the connection; a larger remainder closes it instead
#: (reading a large upload nobody wants costs more than a new connection).
DRAIN_MAX_BYTES: Final = 1 << 20
#: ...and draining may take at most this long.
DRAIN_MAX_SECONDS: Final = 2.0
#: What a client hears when its head did not arrive in time (rule 2).
HEAD_TIMEOUT_DETAIL: Final = "request head not received in time"
#: ...and when its body stopped coming (rule 3).
BODY_TIMEOUT_DETAIL: Final = "request body not received in time"


def first_byte_deadline(now: float, *, first: bool, header_timeout: float, keepalive: float,
                        retiring_for: float | None) -> float:
    """When to stop waiting for the first byte of a connection's next request (rules 1 and 4).

    :param first: the connection's first request (``--header-timeout``), or
        a later one (``--keep-alive``).
    :param retiring_for: how long ago the worker began to retire; None while
        it serves.
    """
    deadline = now + (header_timeout if first else keepalive)
    if retiring_for is None:
        return deadline
    return next_request_deadline(deadline, retiring_since=now - retiring_for, keepalive=keepalive)


def head_wait_timed_out(parser: RequestParser) -> None:
    """A wait for a head ran out (rules 1 and 2): 408 if the head had begun, else a quiet close (returns)."""
    if parser.in_head:
        raise E.RequestTimeout(HEAD_TIMEOUT_DETAIL)


def body_wait_timed_out() -> E.HTTPError:
    """A read of the body ran out (rule 3): the error to raise."""
    return E.RequestTimeout(BODY_TIMEOUT_DETAIL)


class HeadWait:
    """Waiting for a connection's next request head without I/O (rules 1, 2 and 4).

    Made once per connection; :meth:`begin` starts each wait (a new
    object per request cost a tenth of the per-request overhead it was
    meant to share). Then feed the parser and call :meth:`step`: True when the wait is over, with
    :attr:`head` the head, or None when the client closed between requests
    (close quietly); False: read more, until :attr:`deadline`. A read that
    reaches the deadline calls
    :meth:`timed_out`, which raises the 408 of a head cut off, or returns
    for a quiet close. :attr:`started` says whether a head has begun (its
    deadline is then ``--header-timeout`` from its first byte).

    :param clock: the caller's clock (``time.monotonic``, an event loop's ``time``).
    :param retiring_since: ``time.monotonic()`` when the worker began to
        retire; None while it serves.
    """

    __slots__ = ("clock", "deadline", "head", "header_timeout", "keepalive", "parser", "started")

    def __init__(self, parser: RequestParser, clock: Callable[[], float], *,
                 header_timeout: float, keepalive: float) -> None:
        self.parser = parser
        self.clock = clock
        self.header_timeout = header_timeout
        self.keepalive = keepalive
        self.started = False
        self.head: RequestHead | None = None
        self.deadline = 0.0

    def begin(self, first: bool, retiring_since: float | None) -> HeadWait:
        """Start waiting for the next head (the connection's first, or a later one)."""
        self.started = False
        self.head = None
        now = self.clock()
        if retiring_since is None:  # the usual case, without a call
            self.deadline = now + (self.header_timeout if first else self.keepalive)
        else:
            self.deadline = first_byte_deadline(now, first=first, header_timeout=self.header_timeout,
                                                keepalive=self.keepalive,
                                                retiring_for=time.monotonic() - retiring_since)
        return self

    def step(self) -> bool:
        parser = self.parser
        event = parser.next_event()
        if type(event) is RequestHead:
            self.head = event
            return True
        if event is CONNECTION_CLOSED:
            return True
        assert event is NEED_DATA  # between messages the parser yields no body events
        if not self.started and parser.in_head:
            # The whole head must arrive within header_timeout of its first byte.
            self.started = True
            self.deadline = self.clock() + self.header_timeout
        return False

    def timed_out(self) -> None:
        head_wait_timed_out(self.parser)


class Drain:
    """Dropping the rest of a request body without I/O (rule 5): feed the parser, call :meth:`step`.

    ``step()`` consumes what the parser holds and says what to do: True,
    the body is done (keep the connection); False, too much is left (close
    it); None, read more (until :attr:`deadline`, set at the first read, in
    the caller's clock: :meth:`need_deadline`).
    """

    __slots__ = ("budget", "deadline", "parser")

    def __init__(self, parser: RequestParser) -> None:
        self.parser = parser
        self.budget = DRAIN_MAX_BYTES
        self.deadline = 0.0

    def step(self) -> bool | None:
        parser = self.parser
        while not parser.done:
            event = parser.next_event()
            if type(event) is bytes:
                self.budget -= len(event)
                if self.budget < 0:
                    return False
            elif event is NEED_DATA:
                return None
        return True

    def need_deadline(self, now: float) -> float:
        """The deadline of the next read: DRAIN_MAX_SECONDS from the first one."""
        if not self.deadline:
            self.deadline = now + DRAIN_MAX_SECONDS
        return self.deadline
