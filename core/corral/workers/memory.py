"""Giving the heap's free memory back to the system after a burst (glibc's ``malloc_trim``).

Python hands large buffers (request bodies, responses) to the C allocator,
and glibc's malloc keeps what is freed for later, returning only memory at
the very top of a heap. A thread's arena fragmented by 64 KiB pieces of
uploads keeps megabytes this way, so a gthread worker that served a burst
of 1 MiB uploads held 20-50 MiB it no longer used (a sync worker, one
thread on the main heap, gives it back by itself). ``malloc_trim(0)``
releases the free pages of every arena; 21.6 -> 7.8 MiB private in 1.5 ms
for that worker. Workers call it when they have gone idle after serving
(see :class:`IdleTrim`), never in the middle of a load.

Looked up once, at import: the arbiter imports this module before it forks
a worker class that uses it (``shared_modules``), so ctypes and the lookup
cost each worker nothing of its own. Where the C library has no
``malloc_trim`` (musl, macOS) nothing is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: its C library
    except (ImportError, OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM: Final = _find_malloc_trim()

#: A worker idle this long after serving trims the heap: long enough that
#: a load with pauses between requests does not trim at every pause.
IDLE_BEFORE_TRIM: Final = 1.0


def trim_available() -> bool:
    return _MALLOC_TRIM is not None


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; whether any were (False without glibc)."""
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))


def private_kib() -> int | None:
    """This process's private memory (Private_Clean + Private_Dirty) in KiB, for the debug log."""
    try:
        with open("/proc/self/smaps_rollup", "rb") as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
            total += int(line.split()[1])
    return total


class IdleTrim:
    """Decides when a worker trims: once per burst, after IDLE_BEFORE_TRIM without new work.

    The worker calls :meth:`check` from a periodic wake-up it has anyway
    (the gthread loop's 0.25 s check) with a count of the requests it has
    started so far and whether any is still running; the count is compared
    between checks, so nothing is added to the per-request path.
    """

    __slots__ = ("_count", "_idle_since", "_log", "_pid", "due")

    def __init__(self, log: logging.Logger | None = None, pid: int = 0) -> None:
        self._count = 0
        self._idle_since = 0.0
        #: Requests were served since the last trim.
        self.due = False
        # Reading /proc for the message costs only when debug is on.
        self._log = log.debug if log is not None and log.isEnabledFor(logging.DEBUG) else None
        self._pid = pid

    def check(self, now: float, started: int, busy: bool) -> bool:
        """Trim if the worker has been idle long enough since it last served; whether it did."""
        if started != self._count:
            self._count = started
            self._idle_since = now
            self.due = _MALLOC_TRIM is not None
            return False
        if not self.due or busy or now - self._idle_since < IDLE_BEFORE_TRIM:
            return False
        self.due = False
        if self._log is None:
            release_free_memory()
            return True
        before = private_kib()
        release_free_memory()
        after = private_kib()
        if before is not None and after is not None:
            self._log("Worker %s idle: gave %s KiB of free heap back (private memory %s -> %s KiB)",
                      self._pid, before - after, before, after)
        return True
