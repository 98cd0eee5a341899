"""The asgi worker: ASGI 3 apps on one asyncio loop per process (uvloop when installed).

Everything but answering a request is :class:`corral.api.AsyncioWorker`'s,
as for the tornado class: accepting, TLS, PROXY headers, the per-pool
accept balance, keep-alive and pipelining, corral's parser with its limits
and error answers, the heartbeat, and the graceful stop of
corral.serve.retirement (nothing a client already sent is lost when a
worker retires). This class adds:

- the loop (``asgi_loop``): uvloop when it is installed and asked for;
- the lifespan protocol (:mod:`corral_asgi.lifespan`): startup runs before
  the worker reports ready, so the arbiter never counts a worker whose app
  is not started; shutdown runs after the last connection is served;
- the responder (:mod:`corral_asgi.http`), which drives the app for each
  request on the loop, and WebSockets (:mod:`corral_asgi.websocket`);
- on retirement, open WebSockets are closed with 1012 (service restart),
  which tells a client to reconnect (to a worker that stays).

The heartbeat is the loop's own timer: an app that blocks the loop (a
synchronous call in a coroutine) stops it, and after ``--timeout`` the
arbiter aborts the worker, which logs the stack of the blocking code.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, ClassVar

from corral.api import APP_LOAD_ERROR, AsyncioWorker, Responder
from corral_asgi.http import AsgiResponder
from corral_asgi.lifespan import Lifespan, LifespanFailed


class AsgiWorker(AsyncioWorker):
    serves: ClassVar[str | None] = "asgi"
    #: One loop, one thread: requests interleave but never run at once.
    multithread = False

    def init_concurrency(self) -> None:
        self.loop = new_loop(self.cfg.asgi_loop, self.log)
        asyncio.set_event_loop(self.loop)
        #: The lifespan state (scope["state"]): what startup put there, copied into each request.
        self.lifespan_state: dict[str, Any] = {}
        self.lifespan: Lifespan | None = None

    def start_app(self) -> None:
        mode = self.cfg.asgi_lifespan
        if mode == "off":
            return
        self.lifespan = Lifespan(self.wsgi, self.lifespan_state, required=mode == "on", log=self.log)
        startup = self.lifespan.startup(self.cfg.timeout or None, self.heartbeat.beat,
                                        self.check_interval)
        try:
            self.loop.run_until_complete(startup)
        except LifespanFailed as exc:
            self.log.error("Worker %s: the application did not start (ASGI lifespan): %s", self.pid, exc)
            sys.stderr.flush()
            os._exit(APP_LOAD_ERROR)

    def make_responder(self) -> Responder:
        self.asgi_responder = AsgiResponder(self, self.wsgi, self.lifespan_state)
        return self.asgi_responder

    def retiring(self) -> None:
        # WebSockets would hold the worker until the graceful timeout: ask
        # their clients to come back (1012) while HTTP requests finish.
        self._stop_began = self.loop.time()
        self.asgi_responder.retire_websockets()

    async def stopped(self) -> None:
        if self.lifespan is not None:
            # What is left of the graceful timeout (the arbiter's patience), at least a moment.
            left = self.cfg.graceful_timeout - (self.loop.time() - self._stop_began)
            await self.lifespan.shutdown(max(left, 1.0))


def new_loop(choice: str, log: Any) -> asyncio.AbstractEventLoop:
    """The loop ``asgi_loop`` names: uvloop's for "uvloop" (and "auto" when importable), else asyncio's."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                log.error("asgi_loop = 'uvloop' but uvloop is not installed: pip install uvloop "
                          "(or corral-asgi[uvloop]), or set asgi_loop = 'asyncio'")
                sys.stderr.flush()
                os._exit(APP_LOAD_ERROR)
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()
