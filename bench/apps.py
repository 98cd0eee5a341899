"""The one WSGI app every benchmarked server runs (``apps:app`` from bench/).

Each workload of bench/run.py is a route here, so corral, gunicorn and
granian serve byte-for-byte the same responses from the same code:

    /            hello world (13 bytes)
    /100k        a 100 KiB body from memory
    /file        a 1 MiB file through wsgi.file_wrapper (sendfile where the server has it)
    /upload      reads the whole request body (POST), answers its length
    /sleep?ms=N  sleeps N ms (default 10) in time.sleep, which gevent workers patch
    /stream      32 MiB yielded in 1 MiB pieces with no Content-Length (chunked)

Every response but /stream carries Content-Length: the servers then never
fall back to chunked or close-delimited framing, which would compare
framing, not speed. /stream is there to compare exactly that: a streaming
app (an export, a proxied download) whose length is unknown up front.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]

HELLO = b"Hello, World!"
#: 100 KiB: bigger than one socket send on loopback, small enough to build once.
BODY_100K = b"x" * (100 * 1024)
#: /stream's piece and count: a generator of large pieces, framed chunked.
STREAM_PIECE = b"s" * (1 << 20)
STREAM_PIECES = 32
#: 1 MiB: large enough that sendfile against read+send shows.
FILE_SIZE = 1024 * 1024
#: Read size for the upload route; 64 KiB is what a server recv()s at once.
UPLOAD_READ = 65536
#: Sleep when the query gives none: a fast database call.
DEFAULT_SLEEP_MS = 10.0
_TEXT = ("Content-Type", "text/plain")


def _bench_file() -> str:
    """The 1 MiB file: run.py makes it and names it in $BENCH_FILE; else we make one."""
    path = os.environ.get("BENCH_FILE")
    if path and os.path.getsize(path) == FILE_SIZE:
        return path
    path = os.path.join(tempfile.gettempdir(), f"corral-bench-{FILE_SIZE}.bin")
    if not os.path.exists(path) or os.path.getsize(path) != FILE_SIZE:
        # Write under another name and rename: two workers may race here.
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(os.urandom(FILE_SIZE))
        os.replace(tmp, path)
    return path


FILE_PATH = _bench_file()
_FILE_LENGTH = str(FILE_SIZE)


def _sleep_ms(query: str) -> float:
    # Only "ms=<number>" is ever sent by the harness; anything else falls back.
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "ms":
            try:
                return float(value)
            except ValueError:
                break
    return DEFAULT_SLEEP_MS


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/":
        start_response("200 OK", [_TEXT, ("Content-Length", "13")])
        return [HELLO]
    if path == "/100k":
        start_response("200 OK", [_TEXT, ("Content-Length", str(len(BODY_100K)))])
        return [BODY_100K]
    if path == "/file":
        f = open(FILE_PATH, "rb")  # noqa: SIM115 - the server closes the wrapper
        start_response(
            "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", _FILE_LENGTH)]
        )
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is None:
            return iter(lambda: f.read(65536), b"")
        return wrapper(f, 65536)  # type: ignore[no-any-return]
    if path == "/upload":
        body = environ["wsgi.input"]
        # PEP 3333: read no more than CONTENT_LENGTH (not every server
        # guarantees an empty read at the end of the body).
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
        total = 0
        while remaining > 0:
            data = body.read(min(UPLOAD_READ, remaining))
            if not data:
                break
            total += len(data)
            remaining -= len(data)
        out = str(total).encode()
        start_response("200 OK", [_TEXT, ("Content-Length", str(len(out)))])
        return [out]
    if path == "/sleep":
        time.sleep(_sleep_ms(environ.get("QUERY_STRING", "")) / 1000.0)
        start_response("200 OK", [_TEXT, ("Content-Length", "13")])
        return [HELLO]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _stream()
    start_response("404 Not Found", [_TEXT, ("Content-Length", "9")])
    return [b"not found"]


def _stream() -> Iterable[bytes]:
    for _ in range(STREAM_PIECES):
        yield STREAM_PIECE
