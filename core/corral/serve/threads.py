"""The request thread pool: up to N threads taking work from one queue, started as needed.

Used by the gthread class (through :class:`corral.workers.selector_loop.SelectorLoopWorker`)
and offered to any worker that runs requests in threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from logging import Logger

T = TypeVar("T")


class RequestThreads(Generic[T]):
    """Up to ``count`` threads taking connections from one queue, started as needed.

    Lighter than concurrent.futures: no Future per request, and the queue
    is the C-implemented SimpleQueue. Like gunicorn's pool, threads start
    when the concurrency calls for them, not all at boot: a worker that
    never has more than two requests at once keeps two threads (each one a
    stack and its allocator arena: about 50 KiB touched each).
    """

    def __init__(self, count: int, serve: Callable[[T], None], log: Logger) -> None:
        self.count = count
        self._serve = serve
        self._log = log
        self._queue: SimpleQueue[T | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._start_one()  # one at once: the first request waits for no thread start

    def submit(self, item: T, in_hand: int) -> None:
        """Queue an item (a connection) for the next free thread; never blocks.

        :param in_hand: connections the loop has given to the pool and not
            taken back, this one included. More than threads started means
            none of them may be free: start another, up to ``count``. (A
            thread that just finished counts as busy until the loop takes its
            connection back, so a thread may start a little early, never late.)
        """
        started = len(self._threads)
        if in_hand > started and started < self.count:
            self._start_one()
        self._queue.put(item)

    def _start_one(self) -> None:
        i = len(self._threads)
        # Daemon threads: a request still running when the graceful
        # timeout is over must not keep the process alive.
        t = threading.Thread(target=self._work, name=f"corral-request-{i}", daemon=True)
        try:
            t.start()
        except RuntimeError as exc:  # the process or user is out of threads
            if not self._threads:
                raise
            self.count = len(self._threads)  # do not try again at every request
            self._log.error("Could not start request thread %s (%s); serving with %s",
                            i + 1, exc, self.count)
            return
        self._threads.append(t)

    def stop(self) -> None:
        """Let idle threads end; busy ones end with the process."""
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        get = self._queue.get
        serve = self._serve
        while (item := get()) is not None:
            serve(item)
