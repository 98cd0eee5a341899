"""The ASGI entry point (``mysite.asgi:application``), served by the asgi pool.

Django's ASGI handler serves HTTP (sync and async views). Django has no
WebSocket support without Channels; this module answers ``/ws/echo`` with
a plain ASGI WebSocket handler in front of Django, which is all a small
live feature needs.
"""

import os
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django_app = get_asgi_application()


async def echo(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
               send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})


async def application(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                      send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] == "websocket":
        if scope["path"] == "/ws/echo":
            await echo(scope, receive, send)
        else:
            await send({"type": "websocket.close"})  # 403
        return
    await django_app(scope, receive, send)
