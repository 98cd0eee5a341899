"""Real ASGI frameworks served by ``-k asgi``: FastAPI, Starlette, Django.

Each test writes a small app of the framework into tmp_path, serves it with
a real corral process and talks to it over real sockets (http.client, raw
sockets, the ``websockets`` client library: another WebSocket
implementation than the server's wsproto).
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest
from asgi_helpers import Serve, chunks_of, read_exact, read_head, wait_for_text

from corral.testing import parse_responses, read_until_close, wait_for_file

pytest.importorskip("fastapi")
pytest.importorskip("django")
websockets_sync = pytest.importorskip("websockets.sync.client")

pytestmark = pytest.mark.timeout(60)


# -- FastAPI ---------------------------------------------------------------------------------

FASTAPI_APP = '''
import asyncio
import contextlib
import os

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import BaseModel


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.started_in = os.getpid()
    yield {"greeting": "hello from lifespan"}
    with open("shutdown.tmp", "w") as f:
        f.write(f"shut down {os.getpid()}")
    os.replace("shutdown.tmp", "shutdown")


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/items/{item_id}")
async def read_item(item_id: int, request: Request, q: str | None = None, n: int = 1):
    return {"item_id": item_id, "q": q, "n": n, "greeting": request.state.greeting,
            "started_in": request.app.state.started_in, "pid": os.getpid()}


@app.post("/items", status_code=201)
async def create_item(item: Item):
    return {"created": item.model_dump(), "total": item.price * len(item.tags)}


@app.get("/stream")
async def stream(n: int = 4):
    async def pieces():
        for i in range(n):
            yield f"piece {i}\\n".encode()
            await asyncio.sleep(0.01)  # each piece is its own send, so its own chunk
    return StreamingResponse(pieces(), media_type="text/plain")


@app.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text("echo: " + message["text"])
            else:
                await websocket.send_bytes(message["bytes"][::-1])
    except WebSocketDisconnect:
        pass
'''


def test_fastapi_path_query_and_json(serve: Serve) -> None:
    server = serve(FASTAPI_APP, "--asgi-lifespan", "on")
    status, headers, body = server.request("GET", "/items/42?q=hello%20world&n=3")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    data = json.loads(body)
    assert data["item_id"] == 42 and data["q"] == "hello world" and data["n"] == 3
    # The lifespan's state reached the request; app.state was set in startup, in the worker.
    assert data["greeting"] == "hello from lifespan"
    assert data["started_in"] == data["pid"]
    # Validation by FastAPI: 422 with its error document.
    status, headers, body = server.request("GET", "/items/not-a-number")
    assert status == 422
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["detail"][0]["loc"] == ["path", "item_id"]
    status, _, body = server.request("GET", "/nowhere")
    assert (status, json.loads(body)) == (404, {"detail": "Not Found"})


def test_fastapi_post_json_body(serve: Serve) -> None:
    server = serve(FASTAPI_APP)
    item = {"name": "widget", "price": 2.5, "tags": ["a", "b", "c"]}
    status, headers, body = server.request("POST", "/items", json.dumps(item).encode(),
                                           {"Content-Type": "application/json"})
    assert status == 201
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"created": item, "total": 7.5}
    # A body that does not fit the model.
    status, _, body = server.request("POST", "/items", b'{"name": "x"}', {"Content-Type": "application/json"})
    assert status == 422
    assert json.loads(body)["detail"][0]["loc"] == ["body", "price"]
    # A chunked request body reaches pydantic whole.
    with server.connect() as sock:
        payload = json.dumps(item).encode()
        half = len(payload) // 2
        sock.sendall(b"POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, payload[:half], len(payload) - half,
                                                               payload[half:]))
        status, _fields, rest = read_head(sock)
        rest += read_until_close(sock)
    assert status == 201
    assert json.loads(rest) == {"created": item, "total": 7.5}


def test_fastapi_streaming_response_is_chunked(serve: Serve) -> None:
    server = serve(FASTAPI_APP)
    with server.connect() as sock:
        sock.sendall(b"GET /stream?n=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, fields, rest = read_head(sock)
        headers = dict(fields)
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
        assert headers["content-type"].startswith("text/plain")
        while not rest.endswith(b"0\r\n\r\n"):
            data = sock.recv(65536)
            assert data, "closed before the last chunk"
            rest += data
        chunks, ended = chunks_of(rest)
        assert ended
        assert b"".join(chunks) == b"".join(f"piece {i}\n".encode() for i in range(5))
        assert len(chunks) >= 2, chunks  # streamed, not gathered into one
        # The connection is kept alive after a chunked response.
        sock.sendall(b"GET /items/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, fields, rest = read_head(sock)
        rest += read_until_close(sock)
    assert status == 200
    assert json.loads(rest)["item_id"] == 1


def test_fastapi_websocket_echo(serve: Serve) -> None:
    server = serve(FASTAPI_APP)
    with websockets_sync.connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo: hello"
        ws.send(b"\x00\x01\x02bytes")
        assert ws.recv(timeout=10) == b"setyb\x02\x01\x00"
        big = "x" * 100_000
        ws.send(big)
        assert ws.recv(timeout=10) == "echo: " + big
    # The server is still fine for HTTP afterwards.
    assert server.request("GET", "/items/7")[0] == 200


def test_fastapi_lifespan_shutdown_runs_on_term(serve: Serve, tmp_path: Path) -> None:
    server = serve(FASTAPI_APP, "--asgi-lifespan", "on")
    status, _, body = server.request("GET", "/items/1")
    assert status == 200
    pid = json.loads(body)["pid"]
    assert not (tmp_path / "shutdown").exists()
    assert server.stop(signal.SIGTERM) == 0
    assert (tmp_path / "shutdown").read_text() == f"shut down {pid}"


# -- Starlette --------------------------------------------------------------------------------

STARLETTE_APP = '''
import asyncio
import os

from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.middleware import Middleware
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute


def mark(name, text):
    with open(name + ".tmp", "w") as f:
        f.write(str(text))
    os.replace(name + ".tmp", name)


async def file(request):
    return FileResponse("big.bin", media_type="application/octet-stream")


async def hello(request):
    return PlainTextResponse("hello " + request.query_params.get("who", "world"))


async def watch(request):
    # Polls is_disconnected() while "working", as a long request would.
    mark("watch-started", "yes")
    for _ in range(1000):
        if await request.is_disconnected():
            mark("watch-disconnected", "yes")
            return PlainTextResponse("gone")
        await asyncio.sleep(0.01)
    return PlainTextResponse("never noticed")


async def endless(request):
    async def pieces():
        i = 0
        while True:
            yield f"line {i}\\n".encode()
            i += 1
            await asyncio.sleep(0.01)
    return StreamingResponse(pieces(), media_type="text/plain")


class RecordErrors:
    """What ended a request of the endless stream (spec 2.4: send raises OSError once the client is gone)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if scope.get("path") == "/endless":
                mark("endless-stopped", type(exc).__name__)
            raise


async def echo_json(request):
    body = await request.body()
    return JSONResponse({"size": len(body), "method": request.method, "path": request.url.path})


class Echo(WebSocketEndpoint):
    encoding = "text"

    async def on_connect(self, websocket):
        await websocket.accept()
        await websocket.send_text("welcome")

    async def on_receive(self, websocket, data):
        await websocket.send_text(data.upper())

    async def on_disconnect(self, websocket, close_code):
        mark("ws-disconnect", close_code)


app = Starlette(routes=[
    Route("/file", file, methods=["GET", "HEAD"]),
    Route("/hello", hello),
    Route("/watch", watch),
    Route("/endless", endless),
    Route("/echo", echo_json, methods=["POST", "PUT"]),
    WebSocketRoute("/ws", Echo),
], middleware=[Middleware(RecordErrors)])
'''

FILE_SIZE = 2 * 1024 * 1024


@pytest.fixture
def big_file(tmp_path: Path) -> bytes:
    data = hashlib.shake_256(b"corral").digest(FILE_SIZE)
    (tmp_path / "big.bin").write_bytes(data)
    return data


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # uvloop has no loop.sendfile
def test_starlette_file_response(serve: Serve, big_file: bytes, loop: str) -> None:
    server = serve(STARLETTE_APP, "--asgi-loop", loop)
    with server.connect() as sock:
        sock.sendall(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
        status, fields, rest = read_head(sock)
        headers = dict(fields)
        assert status == 200
        assert headers["content-length"] == str(FILE_SIZE)
        assert headers["content-type"] == "application/octet-stream"
        assert "etag" in headers and "last-modified" in headers
        assert "transfer-encoding" not in headers
        body, rest = read_exact(sock, FILE_SIZE, rest)
        assert body == big_file
        assert rest == b""
        # Kept alive after a file: the next request on the same connection.
        sock.sendall(b"GET /hello?who=file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, fields, rest = read_head(sock, rest)
        rest += read_until_close(sock)
    assert status == 200
    assert rest == b"hello file"
    # A range request: Starlette answers 206 with the piece.
    status, headers, body = server.request("GET", "/file", headers={"Range": "bytes=100-199"})
    if status == 206:  # Starlette >= 0.39 supports ranges
        assert headers["content-range"] == f"bytes 100-199/{FILE_SIZE}"
        assert body == big_file[100:200]
    else:
        assert status == 200 and body == big_file


def test_starlette_head_has_headers_and_no_body(serve: Serve, big_file: bytes) -> None:
    server = serve(STARLETTE_APP)
    data = server.raw(b"HEAD /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ncontent-length: 2097152" in head.lower()
    assert rest == b""  # no body for HEAD, whatever the app sends
    data = server.raw(b"HEAD /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ncontent-length: 11" in head.lower()
    assert rest == b""


def test_starlette_request_body_and_query(serve: Serve) -> None:
    server = serve(STARLETTE_APP)
    status, headers, body = server.request("PUT", "/echo", b"z" * 300_000)
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"size": 300_000, "method": "PUT", "path": "/echo"}
    status, headers, body = server.request("GET", "/hello?who=starlette")
    assert (status, body) == (200, b"hello starlette")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    status, _, _ = server.request("DELETE", "/echo")
    assert status == 405


def test_starlette_is_disconnected(serve: Serve, tmp_path: Path) -> None:
    server = serve(STARLETTE_APP)
    sock = server.connect()
    sock.sendall(b"GET /watch HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for_file(tmp_path / "watch-started")
    sock.close()
    assert wait_for_text(tmp_path / "watch-disconnected") == "yes"
    # The worker goes on serving.
    assert server.request("GET", "/hello")[2] == b"hello world"


def test_starlette_streaming_response_stops_when_the_client_leaves(serve: Serve, tmp_path: Path) -> None:
    server = serve(STARLETTE_APP)
    sock = server.connect()
    sock.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    status, fields, rest = read_head(sock)
    assert status == 200 and dict(fields)["transfer-encoding"] == "chunked"
    while rest.count(b"line ") < 3:
        data = sock.recv(65536)
        assert data
        rest += data
    assert rest.startswith(b"7\r\nline 0\n\r\n7\r\nline 1\n\r\n")
    sock.close()
    # The stream stopped soon after the client left: send raised OSError (spec 2.4), which
    # Starlette turns into its ClientDisconnect.
    assert wait_for_text(tmp_path / "endless-stopped") == "ClientDisconnect"
    assert server.request("GET", "/hello")[0] == 200


def test_starlette_websocket_endpoint(serve: Serve, tmp_path: Path) -> None:
    server = serve(STARLETTE_APP)
    with websockets_sync.connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "welcome"
        ws.send("shout")
        assert ws.recv(timeout=10) == "SHOUT"
        ws.send("again")
        assert ws.recv(timeout=10) == "AGAIN"
    assert wait_for_text(tmp_path / "ws-disconnect") == "1000"


# -- Django -----------------------------------------------------------------------------------

DJANGO_APP = '''
import asyncio
import threading

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="not-a-secret-only-a-test",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()

from django.core.asgi import get_asgi_application
from django.http import HttpResponse, JsonResponse
from django.urls import path


def sync_view(request):
    # Django runs a sync view in a thread of its own, off the event loop.
    return JsonResponse({"view": "sync", "thread_is_main": threading.current_thread() is threading.main_thread(),
                         "q": request.GET.get("q"), "path": request.path})


async def async_view(request):
    await asyncio.sleep(0.01)
    return JsonResponse({"view": "async", "method": request.method,
                         "agent": request.headers.get("User-Agent"),
                         "loop": type(asyncio.get_running_loop()).__module__})


def form_view(request):
    if request.method != "POST":
        return HttpResponse("POST only", status=405)
    return JsonResponse({"name": request.POST.get("name"), "colors": request.POST.getlist("color"),
                         "content_type": request.content_type})


urlpatterns = [
    path("sync/", sync_view),
    path("async/", async_view),
    path("form/", form_view),
]

app = get_asgi_application()
'''


def test_django_sync_and_async_views(serve: Serve) -> None:
    server = serve(DJANGO_APP)
    status, headers, body = server.request("GET", "/sync/?q=caf%C3%A9")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"view": "sync", "thread_is_main": False, "q": "café", "path": "/sync/"}
    status, headers, body = server.request("GET", "/async/", headers={"User-Agent": "corral-test/1"})
    assert status == 200
    data = json.loads(body)
    assert data["view"] == "async" and data["method"] == "GET" and data["agent"] == "corral-test/1"
    status, headers, body = server.request("GET", "/missing/")
    assert status == 404
    assert headers["content-type"].startswith("text/html")


def test_django_form_post(serve: Serve) -> None:
    server = serve(DJANGO_APP)
    form = b"name=Ada+Lovelace&color=red&color=green%20blue"
    status, _headers, body = server.request("POST", "/form/", form,
                                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert json.loads(body) == {"name": "Ada Lovelace", "colors": ["red", "green blue"],
                                "content_type": "application/x-www-form-urlencoded"}
    status, _, body = server.request("GET", "/form/")
    assert (status, body) == (405, b"POST only")
    # Keep-alive through Django: two requests on one connection.
    with server.connect() as sock:
        sock.sendall(b"GET /sync/ HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /form/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 6\r\nConnection: close\r\n\r\nname=B")
        (s1, _, b1), (s2, h2, b2) = list(parse_responses(read_until_close(sock)))
    assert (s1, json.loads(b1)["view"]) == (200, "sync")
    assert (s2, h2["connection"]) == (200, "close")
    assert json.loads(b2) == {"name": "B", "colors": [], "content_type": "application/x-www-form-urlencoded"}
