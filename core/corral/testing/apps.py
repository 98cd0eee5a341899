"""WSGI apps for testing servers; importable as ``corral.testing.apps:app``.

One routing app covers what the conformance suite needs: echoing bodies in
several read styles, reporting the environ and the process, sleeping,
spinning, failing, streaming and sending files.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]


def _params(environ: dict[str, Any]) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _text(start_response: StartResponse, body: bytes, status: str = "200 OK",
          ctype: str = "text/plain") -> list[bytes]:
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def _environ_report(environ: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if isinstance(value, str | bool | int | float) or value is None:
            out[key] = value
        elif isinstance(value, tuple):
            out[key] = list(value)
    out["pid"] = os.getpid()
    out["socket_patched"] = socket.socket.__module__ != "socket"
    out["gevent_imported"] = "gevent" in sys.modules
    out["wsgi.input_type"] = type(environ["wsgi.input"]).__name__
    return out


def _stream(n: int, delay: float) -> Iterator[bytes]:
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield f"chunk {i}\n".encode()


class _Closing:
    """An iterable whose close() is observable through the X-Closed marker file."""

    def __init__(self, marker: str, delay: float = 0.0) -> None:
        self.marker = marker
        self.delay = delay

    def __iter__(self) -> Iterator[bytes]:
        yield b"closing"

    def close(self) -> None:
        if self.delay:
            time.sleep(self.delay)  # cleanup that takes a while (closing a database session, say)
        with open(self.marker, "w") as f:
            f.write("closed")


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    p = _params(environ)
    body_in = environ["wsgi.input"]
    if path == "/":
        return _text(start_response, b"Hello, World!")
    if path == "/echo":
        data = body_in.read()
        trailers = getattr(body_in, "trailers", [])
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(data))),
                                  ("X-Trailers", json.dumps(trailers))])
        return [data]
    if path == "/echo-pieces":
        size = int(p.get("size", "7"))
        pieces = []
        while True:
            piece = body_in.read(size)
            if not piece:
                break
            pieces.append(piece)
        return _text(start_response, b"".join(pieces))
    if path == "/echo-lines":
        lines = list(body_in)
        return _text(start_response, json.dumps([x.decode("latin-1") for x in lines]).encode())
    if path == "/ignore-body":
        return _text(start_response, b"ignored")
    if path == "/environ":
        return _text(start_response, json.dumps(_environ_report(environ)).encode(),
                     ctype="application/json")
    if path == "/osenv":
        env = {k: os.environ.get(k) for k in p["names"].split(",")}
        return _text(start_response, json.dumps(env).encode(), ctype="application/json")
    if path == "/pid":
        return _text(start_response, str(os.getpid()).encode())
    if path == "/sleep":
        if "marker" in p:
            # Lets a test know the request reached the app, without sleeping.
            with open(p["marker"], "w") as f:
                f.write(str(os.getpid()))
        time.sleep(float(p.get("t", "1")))
        return _text(start_response, f"slept {os.getpid()}".encode())
    if path == "/spin":
        while True:
            pass
    if path == "/hang":
        time.sleep(1000)
    if path == "/error":
        raise RuntimeError("the test app failed on purpose")
    if path == "/error-after-start":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def broken() -> Iterator[bytes]:
            yield b"partial"
            raise RuntimeError("failed while streaming")

        return broken()
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(int(p.get("n", "3")), float(p.get("delay", "0")))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"then returned"]
    if path == "/status":
        code = p.get("code", "200")
        start_response(f"{code} Whatever", [("Content-Type", "text/plain")])
        return [b"body that must not be sent for some statuses"]
    if path == "/file":
        size = int(p.get("size", "100000"))
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 - the server closes it via the wrapper
        if p.get("fill") == "zero":
            tmp.truncate(size)  # large files at once, without a pattern to check
        else:
            tmp.write(bytes(i % 251 for i in range(size)))
        tmp.seek(0)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](tmp, 8192)
    if path == "/pipe":
        # A real file descriptor that sendfile cannot read from (a pipe),
        # with its length declared: the server must read and send it.
        size = min(int(p.get("size", "1000")), 60000)  # fits the pipe's buffer
        r, w = os.pipe()
        # Closed through the file object, not os.close: gevent's os.close
        # defers closing a pipe until its hub runs, and the read below
        # would then wait for an end of file that never comes.
        with os.fdopen(w, "wb") as out:
            out.write(bytes(i % 251 for i in range(size)))
        start_response("200 OK", [("Content-Length", str(size))])
        return environ["wsgi.file_wrapper"](os.fdopen(r, "rb"), 8192)
    if path == "/file-like":
        # No file descriptor behind it: the server must iterate, not sendfile.
        size = int(p.get("size", "100000"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        data = bytes(size) if p.get("fill") == "zero" else bytes(i % 251 for i in range(size))
        return environ["wsgi.file_wrapper"](io.BytesIO(data), 65536 if p.get("fill") == "zero" else 4096)
    if path == "/bad-header":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: x=1")])
        return [b"never"]
    if path == "/hop-header":
        start_response("200 OK", [("Transfer-Encoding", "chunked")])
        return [b"never"]
    if path == "/connection-close":
        start_response("200 OK", [("Connection", "close"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/closing":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _Closing(p["marker"], float(p.get("delay", "0")))
    return _text(start_response, b"not found", "404 Not Found")


def validated_app() -> Callable[..., Any]:
    """``app`` wrapped in wsgiref's PEP 3333 validator (a factory for APP_MODULE)."""
    from wsgiref.validate import validator

    return validator(app)
