"""corral config file (``-c bench/profile_hooks.py``) that cProfiles each worker.

Used by bench/profile_worker.py. The profiler starts after the worker has
booted and loaded the app (post_worker_init), so imports and start-up are
not counted, and stops when the worker leaves its serving loop
(worker_exit, after a graceful TERM). Each worker writes
``$BENCH_PROFILE_OUT.<pid>`` (pstats) and ``.<pid>.json`` with the number of
requests it served, the denominator of the per-request figures.
"""

from __future__ import annotations

import cProfile
import json
import os

# Only modules and hook functions at the top level: corral reads every other
# public top-level name of a config file as a setting.
import typing

# Created in the arbiter (where this file is executed) and inherited by each
# forked worker, which enables its own copy.
_profiler = cProfile.Profile()


def post_worker_init(worker: typing.Any) -> None:
    _profiler.enable()


def worker_exit(server: typing.Any, worker: typing.Any) -> None:
    _profiler.disable()
    out = os.environ.get("BENCH_PROFILE_OUT")
    if not out:
        return
    _profiler.dump_stats(f"{out}.{worker.pid}")
    with open(f"{out}.{worker.pid}.json", "w") as f:
        json.dump({"requests": worker.nr, "pid": worker.pid}, f)
