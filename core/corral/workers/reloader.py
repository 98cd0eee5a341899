"""--reload: restart a worker when one of its loaded source files changes.

For development only. A daemon thread polls the mtimes of the files behind
every imported module once a second; on a change it logs the file and stops
the worker gracefully, and the arbiter starts a fresh one that imports the
new code. Polling needs no extra dependency and works for every worker
class, at the cost of a second of latency.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.workers.base import Worker

#: Seconds between two scans of the loaded files.
POLL_INTERVAL = 1.0


def _source_files() -> dict[str, float]:
    mtimes: dict[str, float] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        try:
            mtimes[path] = os.stat(path).st_mtime
        except OSError:
            continue
    return mtimes


def start_reloader(worker: Worker) -> threading.Thread:
    # The first scan here, before the worker says it is ready, not in the
    # thread: a thread scheduled late took a file saved meanwhile for the
    # original, and the change was never seen.
    known = _source_files()

    def watch() -> None:
        while worker.alive:
            time.sleep(POLL_INTERVAL)
            for path, mtime in _source_files().items():
                if known.get(path, mtime) != mtime:
                    worker.log.info("%s changed; restarting worker %s", path, worker.pid)
                    worker.alive = False
                    worker.wake()
                    return
                known[path] = mtime

    thread = threading.Thread(target=watch, name="corral-reloader", daemon=True)
    thread.start()
    return thread
