"""What the asgi worker sends: status lines, the app's fields, write pacing (HTTP and WebSockets alike)."""

from __future__ import annotations

import asyncio
import functools
import http
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from corral.api import AsyncHttpConnection

#: Status lines by code, with the standard reason phrase ("599 Unknown" for others).
_STATUS_LINES: Final = {s.value: f"{s.value} {s.phrase}" for s in http.HTTPStatus}


class ClientDisconnected(OSError):
    """The client is gone: raised by ``send`` (spec 2.4: a subclass of OSError)."""


def status_line(status: Any) -> str:
    if type(status) is not int or not 100 <= status <= 999:
        raise RuntimeError(f"http.response.start: invalid status {status!r}")
    return _STATUS_LINES.get(status) or f"{status} Unknown"


def response_fields(headers: Any) -> list[tuple[str, str]]:
    """The app's ``[(name, value), ...]`` in bytes as Response takes them (latin-1 str)."""
    out = []
    for item in headers:
        name, value = item
        if type(name) is not bytes:
            name = bytes(name)
        if type(value) is not bytes:
            value = bytes(value)
        if name.lower() == b"connection":
            if b"close" in value.lower():
                out.append(("Connection", "close"))
            continue  # keep-alive and friends: the server decides
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    return out


async def wait_writable(conn: AsyncHttpConnection) -> None:
    """Return once the transport takes more output; ClientDisconnected if it never will.

    A client that reads nothing for --timeout (the worker's write timeout)
    is dropped, as on every class: its response would otherwise hold memory
    and a connection slot for as long as it likes.
    """
    protocol = conn.protocol
    if not protocol.write_paused:
        return
    fut: asyncio.Future[bool] = conn.loop.create_future()
    protocol.when_writable(functools.partial(_settle, fut))
    try:
        writable = await asyncio.wait_for(fut, conn.worker.write_timeout or None)
    except TimeoutError:
        conn.transport.abort()
        raise ClientDisconnected("the client read nothing for --timeout") from None
    if not writable:
        raise ClientDisconnected("the client closed the connection")


def _settle(fut: asyncio.Future[bool], writable: bool) -> None:
    if not fut.done():
        fut.set_result(writable)
