"""A watchdog for requests that run in threads.

In a process-per-request worker a stuck request stops the heartbeat by
itself. In a thread pool (gthread, tornado's WSGI pool) the I/O loop keeps
beating while a request spins in another thread, so nothing would notice.
The worker's loop calls :meth:`RequestWatchdog.check` where it would beat;
once a request has run longer than ``timeout``, the watchdog writes that
thread's stack to the error log and expires the heartbeat, so the arbiter
aborts the worker (all stacks logged again) and starts a replacement at its
next check, within about a second.

Time a request spends waiting on its client (a slow upload, a client that
reads the response slowly) is not the app being stuck, and the connection's
own deadlines bound it: the clock stops for :meth:`RequestWatchdog.client_wait`
and starts again from zero after it, as a process-per-request worker beats
while it waits on a client.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from threading import get_ident
from time import monotonic
from typing import TYPE_CHECKING

from corral.http.parser import RequestHead

if TYPE_CHECKING:
    from corral.heartbeat import Heartbeat


class RequestWatchdog:
    def __init__(self, heartbeat: Heartbeat, timeout: float, log: logging.Logger) -> None:
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.log = log
        self._running: dict[int, tuple[float, object]] = {}
        self.tripped = False

    # No lock: each thread writes only its own entry, with one dict store
    # or pop (atomic, in CPython and in free-threaded builds alike), and
    # check() reads a copy taken in one call. A lock cost two acquisitions
    # per request, about 2% of a hello-world request's CPU in a gthread worker.

    def started(self, what: object) -> None:
        """Call in the thread that runs the request, before the app is called.

        :param what: names the request in the log if it gets stuck: a string,
            or a :class:`~corral.http.parser.RequestHead` (then "METHOD
            target", formatted only if it is ever logged).
        """
        self._running[get_ident()] = (monotonic(), what)

    def finished(self) -> None:
        self._running.pop(get_ident(), None)

    @property
    def busy(self) -> bool:
        """Some request is running in a thread (read without the lock: a hint, for the idle trim)."""
        return bool(self._running)

    @contextlib.contextmanager
    def client_wait(self) -> Iterator[None]:
        """Around a wait for the client, in the request's thread: the request's clock stops."""
        ident = get_ident()
        running = self._running
        entry = running.get(ident)
        if entry is not None:
            running[ident] = (math.inf, entry[1])
        try:
            yield
        finally:
            if entry is not None and ident in running:
                running[ident] = (monotonic(), entry[1])

    def check(self) -> bool:
        """Beat if every request is within the timeout; False once one is not."""
        if self.tripped:
            return False
        if self.timeout:
            now = monotonic()
            stuck = [(ident, start, what) for ident, (start, what) in self._running.copy().items()
                     if now - start > self.timeout]
            if stuck:
                self._trip(stuck, now)
                return False
        self.heartbeat.notify()
        return True

    def _trip(self, stuck: list[tuple[int, float, object]], now: float) -> None:
        self.tripped = True
        frames = sys._current_frames()
        for ident, start, what in stuck:
            frame = frames.get(ident)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(gone)\n"
            self.log.critical(
                "Request %s has run for %.1f s (timeout %s s, time waiting on its client not "
                "counted) in thread %s; the worker will be replaced. Its stack:\n%s",
                _describe(what), now - start, self.timeout, ident, stack,
            )
        self.heartbeat.expire()


def _describe(what: object) -> str:
    if isinstance(what, RequestHead):
        return f"{what.method} {what.target}"
    return str(what)


def clock_stopper(watchdog: RequestWatchdog | None) -> Callable[[], AbstractContextManager[None]] | None:
    """``watchdog.client_wait`` when a watchdog runs with a timeout; None when nothing is watched."""
    return watchdog.client_wait if watchdog is not None and watchdog.timeout else None
