"""The ASGI lifespan protocol: the app's startup before serving, its shutdown after.

One task per worker runs ``app({"type": "lifespan", ...}, receive, send)``
for the worker's life. :meth:`Lifespan.startup` sends
``lifespan.startup`` and waits for the app's answer; the worker reports
ready only after ``lifespan.startup.complete``. :meth:`Lifespan.shutdown`
sends ``lifespan.shutdown`` once the last connection is served.

What counts as "the app does not support lifespan" (``asgi_lifespan =
"auto"``: served without it, logged at info): the app raises before it
answers the startup, or returns without answering. With ``"on"`` those are
failures, as ``lifespan.startup.failed`` always is: the worker exits with
the app-load status and the arbiter stops with the app's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


class LifespanFailed(Exception):
    """The app's startup failed, or (asgi_lifespan = on) the app does not support lifespan."""


class Lifespan:
    def __init__(self, app: Callable[..., Any], state: dict[str, Any], *, required: bool,
                 log: logging.Logger) -> None:
        self.app = app
        self.state = state
        self.required = required
        self.log = log
        self._inbox: asyncio.Queue[dict[str, Any]] | None = None
        self._answers: asyncio.Queue[dict[str, Any] | BaseException | None] | None = None
        self._task: asyncio.Task[None] | None = None
        #: The app answered the startup (complete): shutdown will be sent.
        self.running = False

    async def startup(self, timeout: float | None, beat: Callable[[], object], every: float) -> None:
        """Run the app's startup; raises LifespanFailed. Beats the heartbeat while the app starts."""
        self._inbox = asyncio.Queue()
        self._answers = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._wait(self._answers.get(), timeout, beat, every, "startup")
        if isinstance(answer, dict) and answer["type"] == "lifespan.startup.complete":
            self.running = True
            return
        if isinstance(answer, dict):  # lifespan.startup.failed
            raise LifespanFailed(answer.get("message") or "lifespan.startup.failed (no message)")
        # The app raised (answer is the exception) or returned without answering (None).
        what = ("it returned without answering lifespan.startup" if answer is None
                else f"it raised {type(answer).__name__}: {answer}")
        if self.required:
            raise LifespanFailed(f"asgi_lifespan = 'on', but the app does not support lifespan: {what}")
        self.log.info("The app does not support the ASGI lifespan (%s); serving it without", what)

    async def shutdown(self, timeout: float) -> None:
        """Send lifespan.shutdown and wait up to ``timeout`` s for the app's answer."""
        if not self.running or self._inbox is None or self._answers is None:
            return
        self.running = False
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            answer = await asyncio.wait_for(self._answers.get(), timeout)
        except TimeoutError:
            self.log.warning("The app's lifespan shutdown did not finish within %s s", timeout)
            answer = None
        if isinstance(answer, dict) and answer["type"] == "lifespan.shutdown.failed":
            self.log.error("The app's lifespan shutdown failed: %s", answer.get("message") or "(no message)")
        elif isinstance(answer, BaseException):
            self.log.error("The app's lifespan shutdown raised %s: %s", type(answer).__name__, answer)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _wait(self, get: Any, timeout: float | None, beat: Callable[[], object], every: float,
                    phase: str) -> Any:
        task = asyncio.ensure_future(get)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            wait = every if deadline is None else min(every, deadline - loop.time())
            done, _ = await asyncio.wait({task}, timeout=max(wait, 0))
            if done:
                return task.result()
            if deadline is not None and loop.time() >= deadline:
                task.cancel()
                raise LifespanFailed(f"the app's lifespan {phase} did not finish within {timeout} s "
                                     "(--timeout)")
            beat()  # starting, not stuck: the arbiter must not time the worker out

    async def _run(self) -> None:
        assert self._inbox is not None and self._answers is not None
        inbox, answers = self._inbox, self._answers
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}

        async def receive() -> dict[str, Any]:
            return await inbox.get()

        async def send(message: dict[str, Any]) -> None:
            kind = message.get("type")
            if kind not in ("lifespan.startup.complete", "lifespan.startup.failed",
                            "lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                raise RuntimeError(f"unexpected ASGI message in lifespan: {kind!r}")
            await answers.put(message)

        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # Before startup in auto mode this means "not supported", which
            # startup() logs at info; otherwise the traceback is the story.
            if self.running:
                self.log.exception("The app's lifespan task raised")
            elif self.required:
                self.log.error("The app's lifespan raised", exc_info=exc)
            await answers.put(exc)
            return
        await answers.put(None)
