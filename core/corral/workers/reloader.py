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
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from corral.app import WSGIApp
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


def start_reloader(worker: Worker, extra_files: Sequence[str] = ()) -> threading.Thread:
    """Watch the loaded source files and ``extra_files`` (one that failed to import, say)."""
    # The first scan here, before the worker says it is ready, not in the
    # thread: a thread scheduled late took a file saved meanwhile for the
    # original, and the change was never seen.
    def scan() -> dict[str, float]:
        mtimes = _source_files()
        for path in extra_files:
            try:
                mtimes[path] = os.stat(path).st_mtime
            except OSError:
                mtimes[path] = -1.0  # gone: its return is a change too
        return mtimes

    known = scan()

    def watch() -> None:
        while worker.alive:
            time.sleep(POLL_INTERVAL)
            for path, mtime in scan().items():
                if known.get(path, mtime) != mtime:
                    worker.log.info("%s changed; restarting worker %s", path, worker.pid)
                    worker.alive = False
                    worker.wake()
                    return
                known[path] = mtime

    thread = threading.Thread(target=watch, name="corral-reloader", daemon=True)
    thread.start()
    return thread


def failed_files(exc: BaseException) -> list[str]:
    """Source files an import error points at: the file with the syntax error, the frames' files."""
    files: list[str] = []
    filename = getattr(exc, "filename", None)
    if isinstance(exc, SyntaxError) and filename:
        files.append(os.path.abspath(filename))
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith(".py") and os.path.exists(name) and name not in files:
            files.append(name)
        tb = tb.tb_next
    return files


def load_error_app(exc: BaseException, interface: str = "wsgi") -> WSGIApp:
    """The app a --reload worker serves while its own does not import: 500 and the error, every request.

    Of the interface the worker class serves (an ASGI class gets an ASGI app
    that answers HTTP requests so and refuses lifespan and websockets).
    """
    text = "".join(traceback.format_exception(exc)).encode("utf-8", "replace")
    body = b"The application failed to load (corral --reload serves it again once a saved file fixes it):\n\n"
    fields = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body) + len(text)))]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("500 Internal Server Error", fields)
        return [body, text]

    async def asgi_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            raise RuntimeError("the application failed to load")  # lifespan: unsupported; websocket: 403
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(k.encode(), v.encode()) for k, v in fields]})
        await send({"type": "http.response.body", "body": body + text})

    return asgi_app if interface == "asgi" else app
