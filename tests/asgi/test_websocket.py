"""WebSockets of the asgi worker (RFC 6455), Autobahn-style basics over real sockets.

The handshake and its refusals, messages (fragmented, too large, invalid
UTF-8, unmasked), ping and pong both ways, the close handshake from either
side, the close (1012) of a retiring worker and permessage-deflate. The
client is wsproto's client side where a well-behaved client will do, frames
built by hand (asgi_helpers.frame) where the client must misbehave, and the
``websockets`` library (another implementation) for permessage-deflate.
"""

from __future__ import annotations

import select
import signal
import socket
from pathlib import Path

import pytest
from asgi_helpers import (
    MARK,
    WS_ACCEPT,
    Serve,
    WsClient,
    close_payload,
    frame,
    parse_close,
    read_frame,
    read_head,
    wait_for_text,
    ws_request,
)

from corral.testing import parse_responses, read_until_close

wsproto_events = pytest.importorskip("wsproto.events")

pytestmark = pytest.mark.timeout(60)

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA

WS_APP = MARK + '''
from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"plain http"})
        return
    assert scope["type"] == "websocket"
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    name = q.get("id", "ws")
    path = scope["path"]
    connect = await receive()
    assert connect["type"] == "websocket.connect"
    if path == "/deny-close":
        await send({"type": "websocket.close"})
        return
    if path == "/deny-http":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "websocket.http.response.body", "body": b"who are you?"})
        return
    if path == "/slow-accept":
        import asyncio, os
        mark(name + "-pending", "yes")
        while not os.path.exists("accept"):
            await asyncio.sleep(0.01)
    offered = scope["subprotocols"]
    chosen = next((p for p in ("chat.v2", "chat.v1") if p in offered), None)
    await send({"type": "websocket.accept", "subprotocol": chosen, "headers": [(b"x-app", b"yes")]})
    mark(name + "-open", ",".join(offered) or "-")
    if path == "/slow-reader":
        # Reads nothing until the test says "go" (a file), then everything, and reports.
        import asyncio, os
        while not os.path.exists("go"):
            await asyncio.sleep(0.01)
        count = size = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "end":
                await send({"type": "websocket.send", "text": f"{count} {size}"})
                continue
            count += 1
            size += len(message["bytes"])
    if path == "/app-close":
        await send({"type": "websocket.send", "text": "closing"})
        await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
    elif path == "/raise":
        raise RuntimeError("the websocket app failed")
    elif path == "/return":
        await send({"type": "websocket.send", "bytes": b"returning"})
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            mark(name + "-disconnect", message["code"])
            return
        if path == "/silent":
            continue
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
'''


def _open(server_sock: socket.socket, path: str = "/echo", *extra: str) -> tuple[list[tuple[str, str]], bytes]:
    """A raw handshake that must succeed: the 101's fields and bytes after it."""
    server_sock.sendall(ws_request(path, *extra))
    status, fields, rest = read_head(server_sock)
    assert status == 101, (status, fields, rest)
    return fields, rest


def _expect_close(sock: socket.socket, buf: bytes, code: int) -> tuple[str, bytes]:
    """The next frame is a close with ``code``: its reason; the server then ends the TCP connection
    once the client answers."""
    fin, opcode, payload, buf = read_frame(sock, buf)
    assert (fin, opcode) == (True, CLOSE), (opcode, payload)
    got, reason = parse_close(payload)
    assert got == code, (got, reason)
    return reason, buf


# -- the handshake ---------------------------------------------------------------------------


def test_handshake_accept_token_and_subprotocol(serve: Serve, tmp_path: Path) -> None:
    server = serve(WS_APP)
    with server.connect() as sock:
        fields, rest = _open(sock, "/echo?id=a", "Sec-WebSocket-Protocol: chat.v1, chat.v2")
        headers = dict(fields)
        assert headers["upgrade"].lower() == "websocket"
        assert headers["connection"].lower() == "upgrade"
        assert headers["sec-websocket-accept"] == WS_ACCEPT
        assert headers["sec-websocket-protocol"] == "chat.v2"  # what the app chose
        assert headers["x-app"] == "yes"
        assert "sec-websocket-extensions" not in headers  # none offered
        assert "content-length" not in headers and "transfer-encoding" not in headers
        assert wait_for_text(tmp_path / "a-open") == "chat.v1,chat.v2"
        sock.sendall(frame(TEXT, b"hi there"))
        assert read_frame(sock, rest)[:3] == (True, TEXT, b"hi there")
    # wsproto's client checks the accept token itself.
    with server.connect() as sock:
        client = WsClient(sock)
        accepted = client.handshake("/echo?id=b", subprotocols=["chat.v1", "other"])
        assert isinstance(accepted, wsproto_events.AcceptConnection)
        assert accepted.subprotocol == "chat.v1"
        client.send(wsproto_events.BytesMessage(data=b"\x00\xffbin"))
        assert client.message() == b"\x00\xffbin"
    with server.connect() as sock:
        accepted = WsClient(sock).handshake("/echo?id=c", subprotocols=["unknown"])
        assert isinstance(accepted, wsproto_events.AcceptConnection)
        assert accepted.subprotocol is None
    assert wait_for_text(tmp_path / "c-open") == "unknown"


@pytest.mark.parametrize(("key", "why"), [(None, "missing"), ("c2hvcnQ=", "8 bytes"), ("not base64!!", "invalid"),
                                          ("", "empty")])
def test_bad_key_is_400(serve: Serve, tmp_path: Path, key: str | None, why: str) -> None:
    server = serve(WS_APP)
    data = server.raw(ws_request("/echo", key=key))
    ((status, headers, body),) = list(parse_responses(data))
    assert status == 400, data
    assert body == b"400 Bad Request\n"
    assert "sec-websocket-accept" not in headers and "upgrade" not in headers
    assert not (tmp_path / "ws-open").exists()  # the app never saw it
    server.wait_for_log("400 from .*invalid Sec-WebSocket-Key")


@pytest.mark.parametrize("version", ["8", "", "14"])
def test_other_version_is_426(serve: Serve, version: str) -> None:
    server = serve(WS_APP)
    data = server.raw(ws_request("/echo", version=version))
    ((status, headers, body),) = list(parse_responses(data))
    assert status == 426, data
    assert body == b"426 Upgrade Required\n"
    assert headers["sec-websocket-version"] == "13"
    assert "sec-websocket-accept" not in headers


def test_handshake_must_be_a_get(serve: Serve) -> None:
    server = serve(WS_APP)
    request = ws_request("/echo").replace(b"GET ", b"POST ", 1)
    ((status, _, _),) = list(parse_responses(server.raw(request.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"))))
    assert status == 400
    # Upgrade: websocket without Connection: upgrade is plain HTTP.
    request = ws_request("/echo").replace(b"Connection: Upgrade", b"Connection: close")
    ((status, _, body),) = list(parse_responses(server.raw(request)))
    assert (status, body) == (200, b"plain http")


def test_app_closing_before_accept_is_403(serve: Serve) -> None:
    server = serve(WS_APP)
    data = server.raw(ws_request("/deny-close"))
    ((status, headers, body),) = list(parse_responses(data))
    assert status == 403
    assert "sec-websocket-accept" not in headers
    assert headers["content-length"] == str(len(body))


def test_websocket_http_response_denial(serve: Serve) -> None:
    server = serve(WS_APP)
    data = server.raw(ws_request("/deny-http"))
    ((status, headers, body),) = list(parse_responses(data))
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert headers["content-type"] == "text/plain"
    assert headers["content-length"] == "12"
    assert body == b"who are you?"
    assert "sec-websocket-accept" not in headers and "upgrade" not in headers
    # wsproto's client sees the same as a rejection with that body.
    with server.connect() as sock:
        client = WsClient(sock)
        rejected = client.handshake("/deny-http")
        assert isinstance(rejected, wsproto_events.RejectConnection)
        assert rejected.status_code == 401 and rejected.has_body
        body = b""
        while True:
            event = client.next_event()
            assert isinstance(event, wsproto_events.RejectData)
            body += event.data
            if event.body_finished:
                break
        assert body == b"who are you?"


# -- messages --------------------------------------------------------------------------------


def test_fragmented_message_arrives_whole(serve: Serve) -> None:
    server = serve(WS_APP)
    with server.connect() as sock:
        _, buf = _open(sock)
        # Three frames of one text message, with a ping between two of them (RFC 6455 5.4).
        sock.sendall(frame(TEXT, b"Hel", fin=False) + frame(CONT, b"lo, ", fin=False)
                     + frame(PING, b"mid") + frame(CONT, "wörld".encode()))
        fin, opcode, payload, buf = read_frame(sock, buf)
        assert (fin, opcode, payload) == (True, PONG, b"mid")
        fin, opcode, payload, buf = read_frame(sock, buf)
        assert (fin, opcode, payload.decode()) == (True, TEXT, "Hello, wörld")  # one message, one frame
        # A multi-byte character split between two fragments.
        euro = "€".encode()
        sock.sendall(frame(TEXT, b"a" + euro[:1], fin=False) + frame(CONT, euro[1:] + b"b"))
        assert read_frame(sock, buf)[:3] == (True, TEXT, "a€b".encode())
    # A binary message in fragments, from wsproto's client.
    with server.connect() as sock:
        client = WsClient(sock)
        assert isinstance(client.handshake("/echo"), wsproto_events.AcceptConnection)
        for i, piece in enumerate((b"one-", b"two-", b"three")):
            client.send(wsproto_events.BytesMessage(data=piece, message_finished=i == 2))
        assert client.message() == b"one-two-three"


def test_ping_is_answered_with_the_same_payload(serve: Serve) -> None:
    server = serve(WS_APP)
    with server.connect() as sock:
        _, buf = _open(sock)
        for payload in (b"", b"ping-123", bytes(range(125))):
            sock.sendall(frame(PING, payload))
            fin, opcode, got, buf = read_frame(sock, buf)
            assert (fin, opcode, got) == (True, PONG, payload)
        # An unsolicited pong is ignored, and the socket still works.
        sock.sendall(frame(PONG, b"unsolicited") + frame(TEXT, b"still here"))
        assert read_frame(sock, buf)[:3] == (True, TEXT, b"still here")


def test_client_close_handshake(serve: Serve, tmp_path: Path) -> None:
    server = serve(WS_APP)
    with server.connect() as sock:
        _, buf = _open(sock, "/echo?id=c")
        sock.sendall(frame(CLOSE, close_payload(1000, "done")))
        _, buf = _expect_close(sock, buf, 1000)
        assert buf + read_until_close(sock) == b""  # then the server closes the TCP connection
    assert wait_for_text(tmp_path / "c-disconnect") == "1000"
    # With wsproto's client: a close with another code gets that code back.
    with server.connect() as sock:
        client = WsClient(sock)
        assert isinstance(client.handshake("/echo?id=d"), wsproto_events.AcceptConnection)
        client.send(wsproto_events.CloseConnection(code=1001, reason="going away"))
        event = client.next_event()
        assert isinstance(event, wsproto_events.CloseConnection) and event.code == 1001
    assert wait_for_text(tmp_path / "d-disconnect") == "1001"


def test_app_initiated_close(serve: Serve, tmp_path: Path) -> None:
    server = serve(WS_APP)
    with server.connect() as sock:
        client = WsClient(sock)
        assert isinstance(client.handshake("/app-close?id=e"), wsproto_events.AcceptConnection)
        assert client.message() == "closing"
        event = client.next_event()
        assert isinstance(event, wsproto_events.CloseConnection)
        assert (event.code, event.reason) == (4001, "bye")
        client.send(event.response())  # the client's answer completes the handshake
        assert read_until_close(sock) == b""
    # The app's receive after its own close: disconnect with the code of the client's answer.
    assert wait_for_text(tmp_path / "e-disconnect") == "4001"


def test_app_end_and_app_error_close_the_socket(serve: Serve) -> None:
    server = serve(WS_APP)
    with server.connect() as sock:
        _, buf = _open(sock, "/return")
        _fin, opcode, payload, buf = read_frame(sock, buf)
        assert (opcode, payload) == (BINARY, b"returning")
        _, buf = _expect_close(sock, buf, 1000)  # the app returned: a normal close
        sock.sendall(frame(CLOSE, close_payload(1000)))
        assert read_until_close(sock) == b""
    with server.connect() as sock:
        _, buf = _open(sock, "/raise")
        _, buf = _expect_close(sock, buf, 1011)  # the app raised: internal error
        sock.sendall(frame(CLOSE, close_payload(1011)))
    server.wait_for_log("Error in the WebSocket app for /raise")
    assert "RuntimeError: the websocket app failed" in server.log()


def test_oversized_message_closes_1009(serve: Serve, tmp_path: Path) -> None:
    server = serve(WS_APP, "--websocket-max-message-size", "1024")
    with server.connect() as sock:
        _, buf = _open(sock, "/echo?id=f")
        sock.sendall(frame(TEXT, b"a" * 1024))  # exactly the limit: fine
        _fin, opcode, payload, buf = read_frame(sock, buf)
        assert (opcode, len(payload)) == (TEXT, 1024)
        sock.sendall(frame(BINARY, b"b" * 2000))
        _expect_close(sock, buf, 1009)
    assert wait_for_text(tmp_path / "f-disconnect") == "1009"
    # Fragments count together: three of 500 bytes are one message of 1500.
    with server.connect() as sock:
        _, buf = _open(sock, "/echo?id=g")
        sock.sendall(frame(TEXT, b"x" * 500, fin=False) + frame(CONT, b"x" * 500, fin=False)
                     + frame(CONT, b"x" * 500))
        _expect_close(sock, buf, 1009)
    assert wait_for_text(tmp_path / "g-disconnect") == "1009"


def test_invalid_utf8_closes_1007(serve: Serve, tmp_path: Path) -> None:
    server = serve(WS_APP)
    with server.connect() as sock:
        _, buf = _open(sock, "/echo?id=h")
        sock.sendall(frame(TEXT, b"valid"))
        assert read_frame(sock, buf)[:3] == (True, TEXT, b"valid")
        sock.sendall(frame(TEXT, b"bad \xff\xfe bytes"))
        _expect_close(sock, b"", 1007)
    assert wait_for_text(tmp_path / "h-disconnect") == "1007"


def test_unmasked_client_frame_closes_1002(serve: Serve, tmp_path: Path) -> None:
    server = serve(WS_APP)
    with server.connect() as sock:
        _, buf = _open(sock, "/echo?id=i")
        sock.sendall(frame(TEXT, b"no mask", mask=False))
        _expect_close(sock, buf, 1002)
    assert wait_for_text(tmp_path / "i-disconnect") == "1002"


def test_server_pings_an_idle_client(serve: Serve) -> None:
    server = serve(WS_APP, "--websocket-ping-interval", "0.5")
    with server.connect() as sock:
        _, buf = _open(sock, "/echo")
        fin, opcode, payload, buf = read_frame(sock, buf)  # silent: the server pings
        assert (fin, opcode) == (True, PING)
        assert payload
        sock.sendall(frame(PONG, payload))
        # Still open after the pong, and pinged again while idle.
        sock.sendall(frame(TEXT, b"after pong"))
        fin, opcode, got, buf = read_frame(sock, buf)
        while opcode == PING:  # a ping may come first
            sock.sendall(frame(PONG, got))
            fin, opcode, got, buf = read_frame(sock, buf)
        assert (opcode, got) == (TEXT, b"after pong")
        fin, opcode, _, buf = read_frame(sock, buf)
        assert opcode == PING


def test_unanswered_ping_closes_1011(serve: Serve, tmp_path: Path) -> None:
    server = serve(WS_APP, "--websocket-ping-interval", "0.3", "--websocket-ping-timeout", "0.3")
    with server.connect() as sock:
        _, buf = _open(sock, "/silent?id=j")
        _fin, opcode, _payload, buf = read_frame(sock, buf)
        assert opcode == PING
        reason, buf = _expect_close(sock, buf, 1011)  # no pong in time
        assert reason == "keepalive ping timeout"
    # The client never answered anything: for the app, the connection was lost (1006).
    assert wait_for_text(tmp_path / "j-disconnect") == "1006"


def test_a_client_faster_than_the_app_is_held_back(serve: Serve, tmp_path: Path) -> None:
    # The app reads nothing for a while: the worker stops reading the socket once a few
    # messages wait for the app, and TCP holds the client back, instead of the worker
    # buffering all a client sends (which would let one client take the worker's memory).
    server = serve(WS_APP)
    piece = frame(BINARY, bytes(range(256)) * 4096)  # 1 MiB messages
    offered = 200
    with server.connect() as sock:
        _, buf = _open(sock, "/slow-reader")
        assert buf == b""
        sock.setblocking(False)
        out = memoryview(piece * offered)
        sent = 0
        while sent < len(out):
            try:
                sent += sock.send(out[sent:sent + (1 << 20)])
            except BlockingIOError:
                if not select.select([], [sock], [], 1.0)[1]:
                    break  # nothing taken for a second: held back
        assert sent < 64 * len(piece), f"{sent} bytes taken by a worker whose app reads nothing"
        worker = server.worker_pids()[0]
        status = Path(f"/proc/{worker}/status").read_text().splitlines()
        rss_kib = int(next(line.split()[1] for line in status if line.startswith("VmRSS:")))
        assert rss_kib < 150 * 1024, rss_kib
        # The app catches up: nothing was lost, and the rest goes through.
        (tmp_path / "go").write_text("go")
        sock.setblocking(True)
        sock.settimeout(20)
        sock.sendall(out[sent:])
        sock.sendall(frame(TEXT, b"end"))
        _fin, opcode, payload, buf = read_frame(sock, b"")
        assert (opcode, payload) == (TEXT, f"{offered} {offered * (1 << 20)}".encode())


def test_client_vanishing_gives_1006(serve: Serve, tmp_path: Path) -> None:
    server = serve(WS_APP)
    sock = server.connect()
    _open(sock, "/echo?id=l")
    wait_for_text(tmp_path / "l-open")
    sock.close()  # no close frame
    assert wait_for_text(tmp_path / "l-disconnect") == "1006"


# -- retirement ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["HUP", "TERM"])
def test_retiring_worker_closes_websockets_1012(serve: Serve, tmp_path: Path, sig: signal.Signals) -> None:
    server = serve(WS_APP, "--graceful-timeout", "10")
    old = server.worker_pids()
    socks = []
    for i in range(2):
        sock = server.connect()
        _, buf = _open(sock, f"/silent?id=k{i}")
        assert buf == b""
        socks.append(sock)
    wait_for_text(tmp_path / "k1-open")
    server.send_signal(sig)
    for i, sock in enumerate(socks):
        with sock:
            reason, buf = _expect_close(sock, b"", 1012)
            assert reason == "server restart"
            sock.sendall(frame(CLOSE, close_payload(1012)))
            assert buf + read_until_close(sock) == b""
        assert wait_for_text(tmp_path / f"k{i}-disconnect") == "1012"
    if sig == signal.SIGTERM:
        assert server.wait_exit(15) == 0
        return
    # HUP: a new worker takes new WebSockets.
    server.wait_for_workers(1, exclude=old)
    with server.connect() as sock:
        _, buf = _open(sock, "/echo?id=new")
        sock.sendall(frame(TEXT, b"new worker"))
        assert read_frame(sock, buf)[:3] == (True, TEXT, b"new worker")


def test_websocket_accepted_while_the_worker_retires_is_closed_1012(serve: Serve, tmp_path: Path) -> None:
    # The handshake arrived before the stop, the app accepts after it: 101, then 1012 at once.
    server = serve(WS_APP, "--graceful-timeout", "10")
    with server.connect() as sock:
        sock.sendall(ws_request("/slow-accept?id=m"))
        wait_for_text(tmp_path / "m-pending")
        server.send_signal(signal.SIGTERM)
        server.wait_for_log(r"Worker \d+ retiring")  # the worker knows
        (tmp_path / "accept").write_text("go")
        status, fields, buf = read_head(sock)
        assert status == 101 and dict(fields)["sec-websocket-accept"] == WS_ACCEPT
        reason, buf = _expect_close(sock, buf, 1012)
        assert reason == "server restart"
        sock.sendall(frame(CLOSE, close_payload(1012)))
        assert buf + read_until_close(sock) == b""
    assert wait_for_text(tmp_path / "m-disconnect") == "1012"
    assert server.wait_exit(15) == 0


# -- permessage-deflate ----------------------------------------------------------------------


def test_permessage_deflate_with_the_websockets_library(serve: Serve) -> None:
    sync_client = pytest.importorskip("websockets.sync.client")
    server = serve(WS_APP)
    with sync_client.connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=10,
                             subprotocols=["chat.v1"]) as ws:  # type: ignore[list-item]
        assert ws.response is not None
        extensions = ws.response.headers["Sec-WebSocket-Extensions"]
        assert extensions.startswith("permessage-deflate")
        assert ws.subprotocol == "chat.v1"
        for message in ("short", "z" * 200_000, "".join(chr(0x400 + i % 200) for i in range(5000))):
            ws.send(message)
            assert ws.recv(timeout=10) == message
        data = bytes(range(256)) * 400
        ws.send(data)
        assert ws.recv(timeout=10) == data
    # Without the library's offer: no extension in the answer.
    with sync_client.connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=10, compression=None) as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=10) == "plain"
