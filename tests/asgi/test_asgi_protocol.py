"""The ASGI HTTP protocol as the asgi worker speaks it, with hand-written raw ASGI apps.

The scope, the body in http.request messages, keep-alive and pipelining,
http.disconnect, send after a disconnect, what an app that misbehaves gets
(500, a cut connection), the response fields the server keeps for itself,
the lifespan modes, the app-interface checks at start, and the loop choice
(uvloop stays out of the arbiter). Real corral processes, real sockets.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import signal
import socket
import struct
import time
from pathlib import Path

import pytest
from asgi_helpers import MARK, Serve, chunks_of, read_exact, read_head, wait_for_text

from corral.testing import parse_responses, read_until_close, run_corral, wait_for_file

pytestmark = pytest.mark.timeout(60)

RAW_APP = MARK + '''
import asyncio
import contextvars
import hashlib
import json
from urllib.parse import parse_qs

REQUEST_VAR = contextvars.ContextVar("request_var", default=None)


def _scope_report(scope):
    out = {}
    for key, value in scope.items():
        if key == "headers":
            out[key] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in value]
        elif isinstance(value, bytes):
            out[key] = {"bytes": value.decode("latin-1")}
        elif isinstance(value, tuple):
            out[key] = list(value)
        elif isinstance(value, dict):
            out[key] = dict(value)  # as it was when the app got it
        else:
            out[key] = value
    out["_types"] = {k: type(v).__name__ for k, v in scope.items()}
    out["_header_types"] = sorted({f"{type(n).__name__},{type(v).__name__}" for n, v in scope["headers"]})
    return out


async def respond(send, body, status=200, headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["from_lifespan"] = "started"
                scope["state"]["counter"] = 0
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    path = scope["path"]
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path.endswith("/scope") or path.startswith("/api") or path.startswith("/a b"):
        report = _scope_report(scope)
        scope["state"]["mutated"] = True  # a copy per request: the next one must not see it
        await respond(send, json.dumps(report).encode())
    elif path == "/contextvar":
        # What one request sets must not be seen by the next on the connection.
        before = REQUEST_VAR.get()
        REQUEST_VAR.set(q["n"])
        await asyncio.sleep(float(q.get("wait", "0")))  # across a suspension too
        await respond(send, json.dumps({"before": before, "after": REQUEST_VAR.get()}).encode())
    elif path == "/messages":
        # Every http.request message, as the app saw it.
        seen = []
        digest = hashlib.sha256()
        while True:
            message = await receive()
            assert message["type"] == "http.request", message
            digest.update(message["body"])
            seen.append([len(message["body"]), message.get("more_body", False)])
            if not message.get("more_body"):
                break
        await respond(send, json.dumps({"messages": seen, "sha256": digest.hexdigest()}).encode())
    elif path == "/echo":
        body = b""
        while True:
            message = await receive()
            body += message["body"]
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"x-path", path.encode()),
                                (b"x-query", scope["query_string"])]})
        await send({"type": "http.response.body", "body": b"echo:" + body})
    elif path == "/wait-disconnect":
        first = await receive()
        mark("started", first["type"])
        message = await receive()
        mark("disconnected", message["type"])
    elif path == "/send-after-disconnect":
        await receive()
        mark("started", "yes")
        message = await receive()
        assert message["type"] == "http.disconnect"
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"too late"})
        except OSError as exc:
            mark("send-error", f"OSError {type(exc).__name__}")
        else:
            mark("send-error", "no error")
    elif path == "/stream-to-gone":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        mark("started", "yes")
        try:
            for i in range(2000):
                await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
                await asyncio.sleep(0.005)
        except OSError as exc:
            mark("send-error", f"OSError {type(exc).__name__}")
        else:
            mark("send-error", "no error")
    elif path == "/ignore-disconnect":
        await receive()
        mark("started", "yes")
        try:
            await asyncio.sleep(30)  # never reads receive(): only cancellation ends it
        except asyncio.CancelledError:
            mark("cancelled", "CancelledError")
            raise
    elif path == "/peek-disconnect":
        # Starlette's request.is_disconnected(): a receive() cancelled at once, then the answer.
        await receive()
        task = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        if q.get("wait"):
            await asyncio.sleep(float(q["wait"]))
        peeked = task.done()
        task.cancel()
        await respond(send, json.dumps({"peeked": peeked, "q": q.get("n")}).encode())
    elif path == "/no-response":
        return
    elif path == "/error-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("failed while streaming")
    elif path == "/bad-status":
        status = {"string": "200", "small": 42, "big": 1000, "none": None}[q["kind"]]
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/bad-header":
        value = {"crlf": b"a\\r\\nSet-Cookie: evil=1", "lf": b"a\\nx", "cr": b"a\\rx"}[q["kind"]]
        where = q.get("where", "value")
        header = (b"x-evil", value) if where == "value" else (b"x-ev" + value, b"v")
        await send({"type": "http.response.start", "status": 200, "headers": [header]})
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/connection":
        value = q["value"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"connection", value), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/hop-by-hop":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(q["name"].encode(), q["value"].encode()), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/loop":
        loop = asyncio.get_running_loop()
        await respond(send, json.dumps({"loop": type(loop).__module__ + "." + type(loop).__name__}).encode())
    else:
        await respond(send, b"not found", 404)
'''


def _get_json(sock: socket.socket, request: bytes) -> dict[str, object]:
    sock.sendall(request)
    status, fields, rest = read_head(sock)
    assert status == 200, (status, fields, rest)
    body, _ = read_exact(sock, int(dict(fields)["content-length"]), rest)
    result: dict[str, object] = json.loads(body)
    return result


# -- the scope -------------------------------------------------------------------------------


def test_http_scope(serve: Serve) -> None:
    server = serve(RAW_APP, "--asgi-lifespan", "on")
    with server.connect() as sock:
        scope = _get_json(sock, b"GET /a%20b/c%2Fd/scope?x=1&y=%20&z HTTP/1.1\r\nHost: example.com:8080\r\n"
                                b"X-Custom-Header: Some Value\r\nAccept: */*\r\n\r\n")
        client_port = sock.getsockname()[1]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/a b/c/d/scope"  # percent-decoded (%2F too, as the spec says)
    assert scope["raw_path"] == {"bytes": "/a%20b/c%2Fd/scope"}  # as sent, without the query
    assert scope["query_string"] == {"bytes": "x=1&y=%20&z"}  # bytes, not decoded
    assert scope["root_path"] == ""
    headers = scope["headers"]
    assert isinstance(headers, list)
    assert ["x-custom-header", "Some Value"] in headers  # names lowercased, values as sent
    assert ["host", "example.com:8080"] in headers
    assert ["accept", "*/*"] in headers
    assert scope["_header_types"] == ["bytes,bytes"]
    assert scope["client"] == ["127.0.0.1", client_port]
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["_types"]["client"] == "tuple" and scope["_types"]["server"] == "tuple"  # type: ignore[index]
    assert scope["_types"]["raw_path"] == "bytes" and scope["_types"]["query_string"] == "bytes"  # type: ignore[index]
    # What lifespan startup put in its state, copied into every request.
    assert scope["state"] == {"from_lifespan": "started", "counter": 0}


def test_http_scope_of_http_10_and_methods(serve: Serve) -> None:
    server = serve(RAW_APP)
    data = server.raw(b"POST /scope HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    ((status, _headers, body),) = list(parse_responses(data))
    assert status == 200
    scope = json.loads(body)
    assert (scope["http_version"], scope["method"]) == ("1.0", "POST")
    assert scope["query_string"] == {"bytes": ""}
    status, _, body = server.request("PATCH", "/scope?", b"{}")
    assert status == 200 and json.loads(body)["method"] == "PATCH"


def test_state_is_a_copy_per_request(serve: Serve) -> None:
    server = serve(RAW_APP, "--asgi-lifespan", "on")
    for _ in range(2):
        status, _, body = server.request("GET", "/scope")
        assert status == 200
        # The app set state["mutated"] in the previous request: not seen here.
        assert json.loads(body)["state"] == {"from_lifespan": "started", "counter": 0}


def test_root_path_from_script_name(serve: Serve) -> None:
    server = serve(RAW_APP, "--script-name", "/api")
    status, _, body = server.request("GET", "/api/x?k=v")
    assert status == 200
    scope = json.loads(body)
    assert (scope["path"], scope["root_path"]) == ("/api/x", "/api")
    assert scope["raw_path"] == {"bytes": "/api/x"}
    assert scope["query_string"] == {"bytes": "k=v"}
    # The mount point itself.
    status, _, body = server.request("GET", "/api")
    assert status == 200
    assert (json.loads(body)["path"], json.loads(body)["root_path"]) == ("/api", "/api")
    # A proxy that strips the mount point: the path gets it back (path = root_path + route).
    status, _, body = server.request("GET", "/scope")
    scope = json.loads(body)
    assert (scope["path"], scope["root_path"]) == ("/api/scope", "/api")
    # "/apix" is not under "/api".
    status, _, body = server.request("GET", "/apix/scope")
    assert json.loads(body)["path"] == "/api/apix/scope"


# -- bodies, keep-alive, pipelining ----------------------------------------------------------


def test_large_chunked_upload_arrives_in_several_messages(serve: Serve) -> None:
    server = serve(RAW_APP)
    payload = hashlib.shake_256(b"upload").digest(3 * 1024 * 1024 + 17)
    with server.connect() as sock:
        sock.sendall(b"POST /messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(payload), 256 * 1024):
            piece = payload[start:start + 256 * 1024]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        status, fields, rest = read_head(sock)
        body, _ = read_exact(sock, int(dict(fields)["content-length"]), rest)
    assert status == 200
    report = json.loads(body)
    assert report["sha256"] == hashlib.sha256(payload).hexdigest()
    messages = report["messages"]
    assert len(messages) >= 3, messages  # at most 1 MiB per message
    assert sum(n for n, _ in messages) == len(payload)
    assert [more for _, more in messages] == [True] * (len(messages) - 1) + [False]
    assert all(n <= 1 << 20 for n, _ in messages)


def test_body_in_messages_with_content_length(serve: Serve) -> None:
    server = serve(RAW_APP)
    status, _, body = server.request("POST", "/messages", b"a" * 100)
    report = json.loads(body)
    assert status == 200
    assert sum(n for n, _ in report["messages"]) == 100 and report["messages"][-1][1] is False
    assert report["sha256"] == hashlib.sha256(b"a" * 100).hexdigest()
    # No body: one empty http.request.
    status, _, body = server.request("GET", "/messages")
    assert json.loads(body)["messages"] == [[0, False]]


def test_keepalive_and_pipelining_with_bodies(serve: Serve) -> None:
    server = serve(RAW_APP)
    with server.connect() as sock:
        # Sequential requests on one connection.
        for i in range(3):
            sock.sendall(b"POST /echo?n=%d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nbody%d" % (i, i))
            status, fields, rest = read_head(sock)
            assert status == 200
            headers = dict(fields)
            assert headers["x-query"] == f"n={i}"
            assert "connection" not in headers  # HTTP/1.1 keeps alive without saying so
            # One body message without more_body: a Content-Length.
            assert headers["content-length"] == "10"
            body, rest = read_exact(sock, 10, rest)
            assert body == b"echo:body%d" % i and rest == b""
        # Pipelined: four requests in one write, a chunked one among them, the last closes.
        sock.sendall(
            b"POST /echo?n=a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /echo?n=b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n"
            b"GET /echo?n=c HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo?n=d HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlast"
        )
        responses = list(parse_responses(read_until_close(sock)))
    assert [(s, h["x-query"], b) for s, h, b in responses] == [
        (200, "n=a", b"echo:abc"), (200, "n=b", b"echo:def"), (200, "n=c", b"echo:"), (200, "n=d", b"echo:last"),
    ]
    assert responses[-1][1]["connection"] == "close"


# -- the client leaves -----------------------------------------------------------------------


def test_http_disconnect_when_the_client_closes(serve: Serve, tmp_path: Path) -> None:
    server = serve(RAW_APP)
    sock = server.connect()
    sock.sendall(b"GET /wait-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_for_text(tmp_path / "started") == "http.request"
    sock.close()
    assert wait_for_text(tmp_path / "disconnected") == "http.disconnect"
    assert server.request("GET", "/scope")[0] == 200


def _reset(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): the server's next read or write fails at once."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_send_after_disconnect_raises_oserror(serve: Serve, tmp_path: Path) -> None:
    server = serve(RAW_APP)
    sock = server.connect()
    sock.sendall(b"GET /send-after-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for_file(tmp_path / "started")
    _reset(sock)
    assert wait_for_text(tmp_path / "send-error") == "OSError ClientDisconnected"
    assert "Error handling request" not in server.log()
    assert server.request("GET", "/scope")[0] == 200


def test_streaming_to_a_client_that_closed_raises_oserror(serve: Serve, tmp_path: Path) -> None:
    server = serve(RAW_APP)
    sock = server.connect()
    sock.sendall(b"GET /stream-to-gone HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _rest = read_head(sock)
    assert status == 200
    wait_for_file(tmp_path / "started")
    sock.close()  # a plain close: the server finds out when its writes fail
    assert wait_for_text(tmp_path / "send-error") == "OSError ClientDisconnected"
    assert server.request("GET", "/scope")[0] == 200


def test_app_ignoring_disconnect_is_cancelled_after_the_grace_period(serve: Serve, tmp_path: Path) -> None:
    server = serve(RAW_APP, "--asgi-disconnect-grace-period", "0.5")
    sock = server.connect()
    sock.sendall(b"GET /ignore-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for_file(tmp_path / "started")
    _reset(sock)
    assert wait_for_text(tmp_path / "cancelled") == "CancelledError"
    assert server.request("GET", "/scope")[0] == 200


def test_each_request_has_a_context_of_its_own(serve: Serve) -> None:
    # As a task per request would give: a contextvar the app sets is gone at the
    # next request on the same connection, whether the app waited or not.
    server = serve(RAW_APP)
    with server.connect() as sock:
        for n, wait in enumerate(("0", "0.01", "0")):
            doc = _get_json(sock, b"GET /contextvar?n=%d&wait=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (n, wait.encode()))
            assert doc == {"before": None, "after": str(n)}
        sock.sendall(b"".join(b"GET /contextvar?n=p%d HTTP/1.1\r\nHost: x\r\n%s\r\n"
                              % (n, b"Connection: close\r\n" if n == 2 else b"") for n in range(3)))
        responses = list(parse_responses(read_until_close(sock)))
    assert [json.loads(b) for _, _, b in responses] == [{"before": None, "after": f"p{n}"} for n in range(3)]


def test_a_pending_receive_does_not_break_keepalive(serve: Serve) -> None:
    # An app that peeks for http.disconnect (then cancels the receive) before it answers, on
    # a kept-alive connection, sequentially and with the next requests pipelined behind it.
    server = serve(RAW_APP)
    with server.connect() as sock:
        for n in range(2):
            doc = _get_json(sock, b"GET /peek-disconnect?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
            assert doc == {"peeked": False, "q": str(n)}
        sock.sendall(b"".join(b"GET /peek-disconnect?n=%d&wait=0.05 HTTP/1.1\r\nHost: x\r\n\r\n" % n
                              for n in range(3))
                     + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlast")
        responses = list(parse_responses(read_until_close(sock)))
    assert [json.loads(b) for _, _, b in responses[:3]] == [{"peeked": False, "q": str(n)} for n in range(3)]
    assert responses[3][0] == 200 and responses[3][2] == b"echo:last"


def test_half_closed_client_still_gets_its_response(serve: Serve) -> None:
    server = serve(RAW_APP)
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nhalf")
        sock.shutdown(socket.SHUT_WR)
        ((status, _headers, body),) = list(parse_responses(read_until_close(sock)))
    assert (status, body) == (200, b"echo:half")


def test_expect_100_continue(serve: Serve) -> None:
    server = serve(RAW_APP)
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        status, fields, rest = read_head(sock)
        assert (status, fields, rest) == (100, [], b"")  # asked for when the app reads the body
        sock.sendall(b"hello")
        status, fields, rest = read_head(sock, rest)
        body, rest = read_exact(sock, len(b"echo:hello"), rest)
        assert (status, body) == (200, b"echo:hello")
        # The connection is still good.
        doc = _get_json(sock, b"GET /scope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert doc["path"] == "/scope"
    # An app that never reads the body: no 100, and the connection closes after the answer.
    with server.connect() as sock:
        sock.sendall(b"POST /no-such-route HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        responses = list(parse_responses(read_until_close(sock)))
    assert [s for s, _, _ in responses] == [404]


# -- apps that misbehave ---------------------------------------------------------------------


def test_app_returning_without_a_response_is_500(serve: Serve) -> None:
    server = serve(RAW_APP)
    status, headers, body = server.request("GET", "/no-response")
    assert status == 500
    assert headers["content-length"] == str(len(body)) and body
    assert headers.get("connection") == "close"
    server.wait_for_log(r"The app returned without a response to GET /no-response")


def test_error_after_start_cuts_the_connection(serve: Serve) -> None:
    server = serve(RAW_APP)
    data = server.raw(b"GET /error-after-start HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks, ended = chunks_of(rest)
    assert chunks == [b"partial"]
    assert not ended, "the terminating chunk would say the response is complete"
    assert not rest.endswith(b"0\r\n\r\n")
    server.wait_for_log(r"Error handling request GET /error-after-start")
    assert "RuntimeError: failed while streaming" in server.log()


@pytest.mark.parametrize("kind", ["string", "small", "big", "none"])
def test_invalid_status_is_500(serve: Serve, kind: str) -> None:
    server = serve(RAW_APP)
    status, _headers, body = server.request("GET", f"/bad-status?kind={kind}")
    assert status == 500
    assert b"never" not in body
    server.wait_for_log(r"invalid status")


@pytest.mark.parametrize(("kind", "where"), [("crlf", "value"), ("lf", "value"), ("cr", "value"),
                                             ("crlf", "name")])
def test_header_with_cr_or_lf_is_500(serve: Serve, kind: str, where: str) -> None:
    server = serve(RAW_APP)
    data = server.raw(f"GET /bad-header?kind={kind}&where={where} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    ((status, headers, _body),) = list(parse_responses(data))
    assert status == 500
    assert "set-cookie" not in headers and "x-evil" not in headers
    assert b"evil" not in data and b"never" not in data
    server.wait_for_log(r"Error handling request GET /bad-header")


def test_connection_keep_alive_from_the_app_is_dropped(serve: Serve) -> None:
    server = serve(RAW_APP)
    with server.connect() as sock:
        for _ in range(2):  # the connection stays open: a second request on it
            sock.sendall(b"GET /connection?value=keep-alive HTTP/1.1\r\nHost: x\r\n\r\n")
            status, fields, rest = read_head(sock)
            body, rest = read_exact(sock, 2, rest)
            assert (status, body, rest) == (200, b"ok", b"")
            names = [n for n, _ in fields]
            assert names.count("connection") == 0, fields  # no duplicate, none at all for 1.1
    # HTTP/1.0 with keep-alive asked by the client: one Connection header, the server's.
    with server.connect() as sock:
        sock.sendall(b"GET /connection?value=keep-alive HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, fields, rest = read_head(sock)
        assert status == 200
        assert [v.lower() for n, v in fields if n == "connection"] == ["keep-alive"]


@pytest.mark.parametrize(("name", "value"), [("keep-alive", "timeout=99"), ("transfer-encoding", "chunked"),
                                             ("upgrade", "h2c")])
def test_other_hop_by_hop_fields_from_the_app_are_500(serve: Serve, name: str, value: str) -> None:
    # As on every class (the conformance suite's /hop-header): the server's to send, never the app's.
    server = serve(RAW_APP)
    status, headers, body = server.request("GET", f"/hop-by-hop?name={name}&value={value}")
    assert status == 500
    assert body != b"ok" and name not in headers
    server.wait_for_log(f"hop-by-hop header '{name}' is the server's to send")


def test_connection_close_from_the_app_closes(serve: Serve) -> None:
    server = serve(RAW_APP)
    with server.connect() as sock:
        sock.sendall(b"GET /connection?value=close HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /scope HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_close(sock)  # the server closes: the second request is not answered
    ((status, headers, body),) = list(parse_responses(data))
    assert (status, body) == (200, b"ok")
    assert data.lower().count(b"\r\nconnection:") == 1
    assert headers["connection"] == "close"


# -- lifespan --------------------------------------------------------------------------------

NO_LIFESPAN_APP = MARK + '''
async def app(scope, receive, send):
    with open("scopes", "a") as f:
        f.write(scope["type"] + "\\n")
    if scope["type"] == "lifespan":
        raise ValueError("lifespan? never heard of it")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"state=" + repr(scope.get("state")).encode()})
'''

STARTUP_FAILS_APP = '''
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "database unreachable at db:5432"})
        return
    raise AssertionError("never served")
'''


def test_lifespan_on_with_an_app_without_lifespan_stops_the_start(serve: Serve) -> None:
    server = serve(NO_LIFESPAN_APP, "--asgi-lifespan", "on", wait_ready=False)
    code = server.wait_exit(20)
    assert code != 0
    log = server.log()
    assert "asgi_lifespan = 'on', but the app does not support lifespan" in log
    assert "ValueError: lifespan? never heard of it" in log
    assert "Ready: " not in log


def test_lifespan_startup_failed_stops_the_start(serve: Serve) -> None:
    for mode in ("on", "auto"):
        server = serve(STARTUP_FAILS_APP, "--asgi-lifespan", mode, wait_ready=False)
        assert server.wait_exit(20) != 0
        log = server.log()
        assert "the application did not start (ASGI lifespan): database unreachable at db:5432" in log
        assert "Ready: " not in log


def test_lifespan_auto_serves_an_app_without_lifespan(serve: Serve, tmp_path: Path) -> None:
    server = serve(NO_LIFESPAN_APP, "--asgi-lifespan", "auto")
    status, _, body = server.request("GET", "/")
    assert (status, body) == (200, b"state={}")
    server.wait_for_log(r"The app does not support the ASGI lifespan \(it raised ValueError: "
                        r"lifespan\? never heard of it\); serving it without")
    assert server.stop() == 0
    assert (tmp_path / "scopes").read_text() == "lifespan\nhttp\n"


def test_lifespan_off_never_sends_lifespan(serve: Serve, tmp_path: Path) -> None:
    server = serve(NO_LIFESPAN_APP, "--asgi-lifespan", "off")
    for _ in range(2):
        status, _, body = server.request("GET", "/")
        assert (status, body) == (200, b"state={}")
    assert server.stop() == 0
    assert (tmp_path / "scopes").read_text() == "http\nhttp\n"
    assert "lifespan" not in server.log().lower()


# -- the app interface -----------------------------------------------------------------------

WSGI_APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi"]
'''

ASGI_APP = '''
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"asgi"})
'''


@pytest.mark.parametrize(("source", "worker_class", "message"), [
    (WSGI_APP, "asgi", "is not an ASGI application"),
    (ASGI_APP, "gthread", "is an ASGI application"),
], ids=["wsgi-app-on-asgi", "asgi-app-on-gthread"])
def test_app_interface_mismatch(serve: Serve, tmp_path: Path, source: str, worker_class: str,
                                message: str) -> None:
    (tmp_path / "app.py").write_text(source)
    check = run_corral("--check-config", "--chdir", str(tmp_path), "-k", worker_class, "app:app", cwd=tmp_path)
    assert check.returncode == 1, (check.stdout, check.stderr)
    assert message in check.stderr
    assert "app:app" in check.stderr
    server = serve(source, wait_ready=False, worker_class=worker_class)
    assert server.wait_exit(20) != 0
    assert message in server.log()
    assert "Ready: " not in server.log()


def test_matching_app_interfaces_pass_the_check(tmp_path: Path) -> None:
    (tmp_path / "wsgi_app.py").write_text(WSGI_APP)
    (tmp_path / "asgi_app.py").write_text(ASGI_APP)
    for app, worker_class in (("asgi_app:app", "asgi"), ("wsgi_app:app", "gthread")):
        check = run_corral("--check-config", "--chdir", str(tmp_path), "-k", worker_class, app, cwd=tmp_path)
        assert check.returncode == 0, (app, check.stdout, check.stderr)


# -- the loop ----------------------------------------------------------------------------------

_MODULES_HOOK = """\
import os
import sys

def _record(name):
    with open(name + ".tmp", "w") as f:
        f.write(repr(sorted(m for m in sys.modules if m.split(".")[0] == "uvloop")))
    os.replace(name + ".tmp", name)

def on_starting(server):
    _record("arbiter-on-starting")

def when_ready(server):
    _record("arbiter-when-ready")
"""


@pytest.mark.parametrize(("loop", "expected"), [
    ("asyncio", "asyncio.unix_events._UnixSelectorEventLoop"),
    ("uvloop", "uvloop.Loop"),
    ("auto", "uvloop.Loop"),  # uvloop is installed
])
def test_asgi_loop_and_uvloop_stays_out_of_the_arbiter(serve: Serve, tmp_path: Path, loop: str,
                                                       expected: str) -> None:
    pytest.importorskip("uvloop")
    (tmp_path / "corral.conf.py").write_text(_MODULES_HOOK)
    server = serve(RAW_APP, "-c", str(tmp_path / "corral.conf.py"), "--asgi-loop", loop)
    status, _, body = server.request("GET", "/loop")
    assert status == 200
    assert json.loads(body)["loop"] == expected
    assert ast.literal_eval(wait_for_text(tmp_path / "arbiter-on-starting")) == []
    assert ast.literal_eval(wait_for_text(tmp_path / "arbiter-when-ready")) == []
    # After a reload, too: the arbiter forked new workers, still without uvloop.
    pids = server.worker_pids()
    (tmp_path / "arbiter-when-ready").unlink()
    server.send_signal(signal.SIGHUP)
    server.wait_for_workers(1, exclude=pids)
    status, _, body = server.request("GET", "/loop")
    assert json.loads(body)["loop"] == expected
    assert server.stop() == 0



# -- the access log: the same lines as a WSGI class writes ---------------------------

def _log_lines(path: Path, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while True:  # the worker writes its lines out at each heartbeat
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)


def test_access_log_default_format(serve: Serve, tmp_path: Path) -> None:
    # gunicorn's default format reads four environ keys, which the asgi
    # class builds alone (corral.wsgi.environ.partial_environ).
    access = tmp_path / "access.log"
    server = serve(ASGI_APP, "--access-logfile", str(access))
    user = base64.b64encode(b"ann:secret").decode()
    with server.connect() as sock:
        sock.sendall(b"GET /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t/1\r\nReferer: http://r/\r\n"
                     b"Authorization: Basic " + user.encode() + b"\r\n\r\n"
                     b"HEAD /q HTTP/1.1\r\nHost: h\r\nUser-Agent: a\"b\r\nConnection: close\r\n\r\n")
        responses = list(parse_responses(read_until_close(sock, 10)))
    assert [status for status, _, _ in responses] == [200, 200]
    first, second = _log_lines(access, 2)
    assert first.startswith("127.0.0.1 - ann [")
    assert first.endswith('"GET /a%20b?x=1 HTTP/1.1" 200 4 "http://r/" "t/1"')
    assert second.startswith("127.0.0.1 - - [")
    assert second.endswith('"HEAD /q HTTP/1.1" 200 0 "-" "a\\x22b"')


def test_access_log_format_that_reads_the_whole_environ(serve: Serve, tmp_path: Path) -> None:
    # wsgi.url_scheme depends on the trusted proxy headers: the whole environ is built.
    access = tmp_path / "access.log"
    fmt = "%(h)s %(U)s %({wsgi.url_scheme}e)s %({HTTP_X_THING}e)s %({SERVER_NAME}e)s %(s)s"
    server = serve(ASGI_APP, "--access-logfile", str(access), "--access-logformat", fmt)
    with server.connect() as sock:
        sock.sendall(b"GET /a%20b HTTP/1.1\r\nHost: example.org:81\r\nX-Forwarded-Proto: https\r\n"
                     b"X-Thing: 1\r\nX-Thing: 2\r\nConnection: close\r\n\r\n")
        assert [s for s, _, _ in parse_responses(read_until_close(sock, 10))] == [200]
    assert _log_lines(access, 1) == ["127.0.0.1 /a b https 1,2 example.org 200"]
