"""A worker's heartbeat: a temp file whose mtime the worker refreshes.

The arbiter creates the file before fork (both processes hold the fd),
unlinks it at once so nothing is left behind, and compares its mtime with
the clock. A file, rather than a pipe message, costs the arbiter nothing to
read and survives a worker that is stuck in C code.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Final

from corral.settings import default_tmp_dir

#: The heartbeat file is touched at most this often (os.utime is a system
#: call; Heartbeat.notify is called as often as a loop likes).
BEAT_THROTTLE: Final = 0.5
#: One cadence for every worker class: busy or idle, a worker wakes at least
#: this often to beat, check keep_serving() and run its watchdog
#: (Worker.check_interval: a quarter of --timeout when that is shorter).
#: Half the throttle, so beats are never more than 0.75 s apart in any class.
CHECK_INTERVAL: Final = 0.25
#: A worker blocked waiting for a client wakes this often to beat
#: (corral.serve.transport, corral.workers.tls): waiting on a client with a
#: deadline of its own is not being stuck. The same cadence.
WAIT_SLICE: Final = CHECK_INTERVAL


class Heartbeat:
    def __init__(self, tmp_dir: str | None) -> None:
        fd, path = tempfile.mkstemp(prefix="corral-hb-", dir=tmp_dir or default_tmp_dir())
        os.unlink(path)
        self.fd = fd
        self._next = 0.0
        #: Refresh at most this often: os.utime is a syscall, the check is cheap.
        self.interval = BEAT_THROTTLE
        #: Called at each beat: periodic work that must not wait for traffic
        #: (the worker flushes its access log buffer here).
        self.on_beat: Callable[[], None] | None = None
        self.beat()

    def beat(self) -> None:
        os.utime(self.fd)

    def notify(self) -> None:
        """Beat if the last beat is older than ``interval``: call as often as you like."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            os.utime(self.fd)
            if self.on_beat is not None:
                self.on_beat()

    def expire(self) -> None:
        """Make the arbiter see this worker as silent now (a request is stuck in a thread)."""
        os.utime(self.fd, (0, 0))
        self._next = float("inf")  # and never beat again

    def last_beat(self) -> float:
        """Wall-clock time of the last beat."""
        return os.fstat(self.fd).st_mtime

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
