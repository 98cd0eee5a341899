"""The ASGI twin of :mod:`corral.testing.apps`: the same routes, the same bytes on the wire.

The conformance suite serves this app to a worker class that serves ASGI
apps (``WorkerSpec.app_interface == "asgi"``), so that every wire-level
check (framing, pipelining, limits, malformed requests, retirement) runs
unchanged against it. ``/environ`` reports the scope under the WSGI names
of the same facts (``REMOTE_ADDR`` is ``scope["client"][0]``,
``wsgi.url_scheme`` is ``scope["scheme"]``...), so that the checks of
forwarded schemes, PROXY headers and underscore fields read one report.
Routes that exist only in WSGI (``wsgi.file_wrapper`` of a pipe, an
iterable's ``close``) have their nearest ASGI meaning; the checks that are
about WSGI itself skip for ASGI classes.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


_START_TEXT: dict[str, Any] = {"type": "http.response.start", "status": 200,
                               "headers": [(b"content-type", b"text/plain")]}


async def _body(receive: Receive) -> bytes:
    pieces = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("the client went away")
        pieces.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(pieces)


async def _text(send: Send, body: bytes, status: int = 200, ctype: str = "text/plain",
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


def _report(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope's facts under the WSGI names the conformance checks read."""
    out: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "PATH_INFO": scope["path"][len(scope["root_path"]):],
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "RAW_URI": scope["raw_path"].decode("latin-1")
                   + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""),
        "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
        "SCRIPT_NAME": scope["root_path"],
        "wsgi.url_scheme": scope["scheme"],
        "asgi.version": scope["asgi"]["version"],
        "pid": os.getpid(),
    }
    if scope.get("client"):
        out["REMOTE_ADDR"], out["REMOTE_PORT"] = scope["client"][0], str(scope["client"][1])
    if scope.get("server"):
        out["SERVER_NAME"], out["SERVER_PORT"] = scope["server"][0], str(scope["server"][1])
    for name, value in scope["headers"]:
        key = name.decode("latin-1").upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
        text = value.decode("latin-1")
        out[key] = out[key] + "," + text if key in out else text
    return out


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        await send({"type": "websocket.close"})
        return
    path = scope["path"]
    p = {k: v[0] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}
    if path == "/":
        await _text(send, b"Hello, World!")
    elif path in ("/echo", "/echo-pieces"):
        data = await _body(receive)
        if path == "/echo":
            await _text(send, data, ctype="application/octet-stream", extra=[(b"x-trailers", b"[]")])
        else:
            await _text(send, data)
    elif path == "/echo-lines":
        data = await _body(receive)
        await _text(send, json.dumps([x.decode("latin-1") for x in data.splitlines(keepends=True)]).encode())
    elif path == "/ignore-body":
        await _text(send, b"ignored")
    elif path == "/environ":
        await _text(send, json.dumps(_report(scope)).encode(), ctype="application/json")
    elif path == "/osenv":
        env = {k: os.environ.get(k) for k in p["names"].split(",")}
        await _text(send, json.dumps(env).encode(), ctype="application/json")
    elif path == "/pid":
        await _text(send, str(os.getpid()).encode())
    elif path == "/sleep":
        if "marker" in p:
            with open(p["marker"], "w") as f:
                f.write(str(os.getpid()))
        await asyncio.sleep(float(p.get("t", "1")))
        await _text(send, f"slept {os.getpid()}".encode())
    elif path == "/spin":
        while True:  # blocks the loop: the worker's heartbeat stops
            pass
    elif path == "/hang":
        await asyncio.sleep(1000)
    elif path == "/error":
        raise RuntimeError("the test app failed on purpose")
    elif path == "/error-after-start":
        await send(_START_TEXT)
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("failed while streaming")
    elif path == "/stream":
        await send(_START_TEXT)
        delay = float(p.get("delay", "0"))
        for i in range(int(p.get("n", "3"))):
            if delay:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": f"chunk {i}\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/write":
        await send(_START_TEXT)
        await send({"type": "http.response.body", "body": b"written ", "more_body": True})
        await send({"type": "http.response.body", "body": b"then returned"})
    elif path == "/status":
        await send({"type": "http.response.start", "status": int(p.get("code", "200")),
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"body that must not be sent for some statuses"})
    elif path == "/file":
        # http.response.pathsend: the file goes out with sendfile.
        size = int(p.get("size", "100000"))
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            if p.get("fill") == "zero":
                tmp.truncate(size)
            else:
                tmp.write(bytes(i % 251 for i in range(size)))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/octet-stream"),
                                    (b"content-length", str(size).encode())]})
            await send({"type": "http.response.pathsend", "path": tmp.name})
        finally:
            os.unlink(tmp.name)
    elif path in ("/file-like", "/pipe"):
        size = int(p.get("size", "100000"))
        if path == "/pipe":
            size = min(size, 60000)
        data = bytes(size) if p.get("fill") == "zero" else bytes(i % 251 for i in range(size))
        piece = 65536 if p.get("fill") == "zero" else 4096
        headers = [(b"content-type", b"application/octet-stream")]
        if path == "/pipe":
            headers.append((b"content-length", str(size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for start in range(0, size, piece):
            await send({"type": "http.response.body", "body": data[start:start + piece], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/bad-header":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-evil", b"a\r\nSet-Cookie: x=1")]})
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/hop-header":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"transfer-encoding", b"chunked")]})
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/connection-close":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"connection", b"close"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/closing":
        await _text(send, b"closing")
        with open(p["marker"], "w") as f:
            f.write("closed")
    else:
        await _text(send, b"not found", 404)
