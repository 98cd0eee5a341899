"""The request thread pool: up to N daemon threads taking work from one queue.

The one pool of corral's classes: gthread's request threads (items are
connections, served by :meth:`SelectorLoopWorker.serve_connection
<corral.workers.selector_loop.SelectorLoopWorker.serve_connection>`) and the
asyncio classes' WSGI threads (items are callables, see
:func:`call`). Offered to any worker that runs requests in threads.

Lighter than concurrent.futures: no Future per request, and the queue is
the C-implemented SimpleQueue. Through ``loop.run_in_executor`` and a
ThreadPoolExecutor every request made a concurrent Future (with its
Condition) and chained it to an asyncio future: a fifth of a tornado
worker's time on a hello-world app (py-spy). Daemon threads: a request
still running when the graceful timeout is over must not keep the process
alive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Generic, TypeVar

T = TypeVar("T")


def call(fn: Callable[[], None]) -> None:
    """The ``serve`` of a pool whose items are callables: run it."""
    fn()


class RequestThreads(Generic[T]):
    """Up to ``count`` threads serving items from one queue, started as the load asks, or all at once.

    :param serve: called in a pool thread with each item.
    :param start_all: start every thread now (a pool whose callers do not
        know how much is in hand, :meth:`put`). Otherwise threads start
        when :meth:`submit` says the work in hand outnumbers them: like
        gunicorn's pool, a worker that never has more than two requests at
        once keeps two threads (each a stack and its allocator arena:
        about 50 KiB touched each).
    """

    def __init__(self, count: int, serve: Callable[[T], None], log: logging.Logger, *,
                 name: str = "corral-request", start_all: bool = False) -> None:
        self.count = count
        self.name = name
        self._serve = serve
        self._log = log
        self._queue: SimpleQueue[T | None] = SimpleQueue()
        #: Queue an item for the next free thread; never blocks, starts no
        #: thread (the queue's own put: no Python call on the way).
        self.put: Callable[[T], None] = self._queue.put
        self._threads: list[threading.Thread] = []
        # One at least at once: the first request waits for no thread start.
        for _ in range(count if start_all else 1):
            self._start_one()

    def submit(self, item: T, in_hand: int) -> None:
        """Queue an item for the next free thread; never blocks.

        :param in_hand: items given to the pool and not yet finished, this
            one included. More than threads started means none of them may
            be free: start another, up to ``count``. (A thread that just
            finished counts as busy until its item is taken back, so a
            thread may start a little early, never late.)
        """
        started = len(self._threads)
        if in_hand > started and started < self.count:
            self._start_one()
        self._queue.put(item)

    def _start_one(self) -> None:
        i = len(self._threads)
        t = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
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

    def shutdown(self, wait: bool = False, cancel_futures: bool = False) -> None:
        """:meth:`stop`, with the signature of ``Executor.shutdown`` (``wait`` joins the threads)."""
        self.stop()
        if wait:
            for t in self._threads:
                t.join()

    def _work(self) -> None:
        get = self._queue.get
        serve = self._serve
        while (item := get()) is not None:
            serve(item)
