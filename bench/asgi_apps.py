"""The ASGI app every benchmarked ASGI server runs (``asgi_apps:app`` from bench/).

The same routes and the same bytes as bench/apps.py's WSGI app, written the
way an ASGI app would (``await asyncio.sleep`` for /sleep), so corral's
asgi class, gunicorn's ``-k asgi`` and uvicorn serve identical responses:

    /            hello world (13 bytes)
    /100k        a 100 KiB body from memory
    /upload      reads the whole request body (POST), answers its length
    /sleep?ms=N  awaits asyncio.sleep(N ms) (default 10): concurrency on one loop
    /stream      32 MiB sent in 1 MiB pieces with more_body (chunked)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from apps import BODY_100K, DEFAULT_SLEEP_MS, HELLO, STREAM_PIECE, STREAM_PIECES

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_HELLO_START = {"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]}
_HELLO_BODY = {"type": "http.response.body", "body": HELLO}
_100K_LENGTH = str(len(BODY_100K)).encode()
_100K_START = {"type": "http.response.start", "status": 200,
               "headers": [(b"content-type", b"text/plain"), (b"content-length", _100K_LENGTH)]}


def _sleep_ms(query: bytes) -> float:
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"ms":
            try:
                return float(value)
            except ValueError:
                break
    return DEFAULT_SLEEP_MS


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/":
        await send(_HELLO_START)
        await send(_HELLO_BODY)
    elif path == "/100k":
        await send(_100K_START)
        await send({"type": "http.response.body", "body": BODY_100K})
    elif path == "/upload":
        total = 0
        more = True
        while more:
            message = await receive()
            total += len(message.get("body", b""))
            more = message.get("more_body", False)
        out = str(total).encode()
        length = str(len(out)).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", length)]})
        await send({"type": "http.response.body", "body": out})
    elif path == "/sleep":
        await asyncio.sleep(_sleep_ms(scope["query_string"]) / 1000.0)
        await send(_HELLO_START)
        await send(_HELLO_BODY)
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(STREAM_PIECES):
            await send({"type": "http.response.body", "body": STREAM_PIECE, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"9")]})
        await send({"type": "http.response.body", "body": b"not found"})
