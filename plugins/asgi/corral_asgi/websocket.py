"""ASGI WebSockets (RFC 6455): corral reads the upgrade request, wsproto frames the messages.

The handshake request is parsed and validated by corral's HTTP parser like
any other request; this module checks what RFC 6455 section 4.2.1 asks of
it (GET, HTTP/1.1, ``Upgrade: websocket``, ``Connection: upgrade``, a
16-byte key, version 13), answers 400 or 426 when it falls short, and then
lets the app decide: ``websocket.accept`` sends 101 (with the subprotocol
the app picked and permessage-deflate when the client offered it),
``websocket.close`` before that sends 403, and the
``websocket.http.response`` extension sends a response of the app's own.

After the 101, wsproto's frame protocol (sans-io) turns bytes into events.
What this module adds to it:

- whole messages for the app, at most ``websocket_max_message_size``
  bytes (a larger one closes with 1009 before it is all buffered);
- invalid frames and invalid UTF-8 in a text message close with wsproto's
  code (1002, 1007), and the app gets ``websocket.disconnect`` with it;
- flow control: once the app has :data:`INBOX_MAX_MESSAGES` messages or
  :data:`INBOX_MAX_BYTES` bytes waiting for its ``receive``, the socket is
  not read until it catches up (TCP then holds the client back), so a
  client cannot fill the worker's memory with messages a slow app has not
  read; pings, pongs and a close frame wait their turn meanwhile;
- pings are answered; an idle connection is pinged every
  ``websocket_ping_interval`` s and closed (1011) when no pong comes within
  ``websocket_ping_timeout`` s;
- the close handshake: a client's close is answered with the same code;
  a close the app or the server starts waits for the client's answer at
  most :data:`CLOSE_TIMEOUT` s;
- a worker that retires closes with 1012 (service restart): a client
  reconnects, to a worker that stays.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token

from corral.api import RequestHead, Response, after_response
from corral.api import errors as E
from corral_asgi.output import response_fields, status_line, wait_writable

if TYPE_CHECKING:
    from corral.api import AsyncHttpConnection
    from corral_asgi.http import AsgiResponder

#: How long a close we sent waits for the client's close frame.
CLOSE_TIMEOUT: Final = 5.0
#: Close codes (RFC 6455 section 7.4.1).
NORMAL: Final = 1000
ABNORMAL: Final = 1006
TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011
SERVICE_RESTART: Final = 1012
#: The app's unread messages (count, bytes) past which the socket is not read until it catches up.
INBOX_MAX_MESSAGES: Final = 32
INBOX_MAX_BYTES: Final = 1 << 20


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


def is_websocket_upgrade(head: RequestHead) -> bool:
    """The request asks to become a WebSocket (``Upgrade: websocket``); validated by WebSocketSession.

    A request whose Connection field lacks "upgrade" is not a handshake
    (RFC 6455 4.2.1) and is answered as plain HTTP; the parser noted the
    token, so ordinary requests cost one attribute read here.
    """
    return head.upgrade and "websocket" in _tokens(head.get("upgrade"))


class WebSocketClosed(OSError):
    """The WebSocket is closed: nothing more can be sent."""


class WebSocketSession:
    """One WebSocket connection: the handshake, then messages between the client and the app."""

    def __init__(self, responder: AsgiResponder, conn: AsyncHttpConnection, head: RequestHead,
                 scope: dict[str, Any]) -> None:
        self.responder = responder
        self.worker = responder.worker
        self.conn = conn
        self.head = head
        self.scope = scope
        cfg = self.worker.cfg
        self.max_size: int = cfg.websocket_max_message_size
        self.ping_interval: float = cfg.websocket_ping_interval
        self.ping_timeout: float = cfg.websocket_ping_timeout
        self.ws: Connection | None = None
        #: connecting (before accept), open, closing (our close is out), closed.
        self.state = "connecting"
        self.connect_delivered = False
        self.inbox: deque[dict[str, Any]] = deque()
        #: Size of the messages in the inbox (characters of text, bytes of binary: a bound, not a count).
        self._inbox_bytes = 0
        self._wake: asyncio.Event = asyncio.Event()
        #: Set when the inbox has room again (or the WebSocket is over): the reader goes on.
        self._drained: asyncio.Event = asyncio.Event()
        self.disconnect: dict[str, Any] | None = None
        #: The worker retires: close with 1012 as soon as the socket is open.
        self.going_away = False
        self._reader: asyncio.Task[None] | None = None
        self._closed_by_peer: asyncio.Event = asyncio.Event()
        self._http_response: Response | None = None
        self._partial: list[bytes | str] = []
        self._partial_size = 0
        self._sent = 0
        self._status = 0

    # -- the whole session -------------------------------------------------------------

    async def run(self) -> None:
        started = self.conn.loop.time()
        refusal = self._check_handshake()
        if refusal is not None:
            self.conn.send_error(refusal)
            return
        app = self.responder.app
        task = self.conn.loop.create_task(app(self.scope, self.receive, self.send))
        self.conn.protocol.on_lost = self._lost
        try:
            await task
        except asyncio.CancelledError:
            if self.state != "closed":
                raise
        except Exception:
            self.worker.log.exception("Error in the WebSocket app for %s", self.head.target)
            if self.state == "connecting" and self._http_response is None:
                self._status = 500
                self.conn.send(_plain_response(self.head, 500, b"500 Internal Server Error\n"))
            elif self.state == "open":
                await self._close(INTERNAL_ERROR, "")
        else:
            if self.state == "connecting":
                if self._http_response is None:
                    self._refuse_403()
            elif self.state == "open":
                await self._close(NORMAL, "")
        finally:
            self.conn.protocol.on_lost = None
        if self.state == "closing":
            await self._wait_peer_close()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        self._record(started)

    def _record(self, started: float) -> None:
        worker = self.worker
        took = self.conn.loop.time() - started
        if worker.stats is not None:
            worker.stats.record((self._status, self._sent, took))
        if worker.access_log is not None or worker.post_request is not None:
            resp = self._http_response
            if resp is None:
                resp = Response(self.head, False)
                resp.status = _status_text(self._status)
                resp.status_code = self._status
                resp.headers_sent = True
                resp.bytes_sent = self._sent
            after_response(worker, self.head, self.responder.environ(self.conn, self.head), resp, took)

    def _check_handshake(self) -> E.HTTPError | None:
        head = self.head
        if head.method != "GET" or head.version != "HTTP/1.1":
            return E.BadRequest("a WebSocket handshake is a GET over HTTP/1.1")
        version = head.get("sec-websocket-version")
        if version is None or version.strip() != "13":
            return _UpgradeRequired()
        key = head.get("sec-websocket-key") or ""
        try:
            if len(base64.b64decode(key.strip(), validate=True)) != 16:
                raise ValueError
        except (ValueError, binascii.Error):
            return E.BadRequest("invalid Sec-WebSocket-Key")
        protocols = head.get("sec-websocket-protocol")
        self.scope["subprotocols"] = [p.strip() for p in (protocols or "").split(",") if p.strip()]
        return None

    # -- ASGI receive / send -----------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        while True:
            if self.inbox:
                message = self.inbox.popleft()
                self._inbox_bytes -= len(message.get("text") or message.get("bytes") or "")
                if not self._inbox_full():
                    self._drained.set()
                return message
            if self.disconnect is not None:
                return self.disconnect
            self._wake.clear()
            await self._wake.wait()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            if self.state != "connecting" or self._http_response is not None:
                raise RuntimeError("websocket.accept after the handshake was answered")
            if self.disconnect is not None:
                raise WebSocketClosed("the client went away before the WebSocket was accepted")
            self._accept(message)
            if self.going_away:
                await self._close(SERVICE_RESTART, "server restart")
            return
        if kind == "websocket.close":
            if self.state == "connecting" and self._http_response is None:
                self._refuse_403()
            elif self.state == "open":
                await self._close(message.get("code") or NORMAL, message.get("reason") or "")
            return  # closing twice, or after the client left: nothing to do
        if kind == "websocket.send":
            if self.state != "open":
                if self.state == "connecting":
                    raise RuntimeError("websocket.send before websocket.accept")
                raise WebSocketClosed("the WebSocket is closed")
            assert self.ws is not None
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                out = self.ws.send(BytesMessage(data=data))
            elif text is not None:
                out = self.ws.send(TextMessage(data=text))
            else:
                raise RuntimeError("websocket.send with neither bytes nor text")
            self._write(out)
            await self._flow()
            return
        if kind in ("websocket.http.response.start", "websocket.http.response.body"):
            await self._denial(kind, message)
            return
        raise RuntimeError(f"unexpected ASGI message {kind!r} in a WebSocket")

    # -- the handshake's answers --------------------------------------------------------

    def _accept(self, message: dict[str, Any]) -> None:
        head = self.head
        key = (head.get("sec-websocket-key") or "").strip().encode("ascii")
        lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade",
                 b"Sec-WebSocket-Accept: " + generate_accept_token(key)]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            if subprotocol not in self.scope["subprotocols"]:
                raise RuntimeError(f"websocket.accept: subprotocol {subprotocol!r} was not offered")
            lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("ascii"))
        extensions: list[Any] = []
        offered = head.get("sec-websocket-extensions")
        if offered:
            deflate = PerMessageDeflate()
            accepted = server_extensions_handshake([o.strip() for o in offered.split(",")], [deflate])
            if accepted:
                lines.append(b"Sec-WebSocket-Extensions: " + accepted)
                extensions.append(deflate)
        for name, value in message.get("headers", ()):
            if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value or b":" in name:
                raise RuntimeError(f"websocket.accept: invalid header {name!r}")
            if name.lower() in (b"upgrade", b"connection", b"sec-websocket-accept",
                                b"sec-websocket-protocol", b"sec-websocket-extensions"):
                continue  # the handshake's own fields are the server's
            lines.append(name + b": " + value)
        self.conn.send(b"\r\n".join(lines) + b"\r\n\r\n")
        self._status = 101
        # Bytes the client sent after its head (frames it did not wait to send).
        early = self.conn.parser.trailing_data[0]
        self.ws = Connection(ConnectionType.SERVER, extensions=extensions, trailing_data=early)
        self.state = "open"
        self._reader = self.conn.loop.create_task(self._read())

    def _refuse_403(self) -> None:
        self._status = 403
        self.conn.send(_plain_response(self.head, 403, b"403 Forbidden\n"))
        self.state = "closed"

    async def _denial(self, kind: str, message: dict[str, Any]) -> None:
        """The websocket.http.response extension: the app answers the handshake with HTTP."""
        if self.state != "connecting":
            raise RuntimeError(f"{kind} after the WebSocket was accepted")
        if kind == "websocket.http.response.start":
            if self._http_response is not None:
                raise RuntimeError("websocket.http.response.start sent twice")
            denial = Response(self.head, False)
            denial.start(status_line(message["status"]), response_fields(message.get("headers", ())))
            self._http_response = denial
            self._status = denial.status_code
            return
        resp = self._http_response
        if resp is None:
            raise RuntimeError("websocket.http.response.body before websocket.http.response.start")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if not resp.headers_sent and not more and resp.content_length is None:
            resp.length_hint = len(body)
        out = resp.piece(body) if body else b""
        if not more:
            out += resp.end()
            self.state = "closed"
        if out:
            self._write(out)
        await self._flow()

    # -- after the 101 ------------------------------------------------------------------

    async def _read(self) -> None:
        """Bytes from the client to events, until the connection closes."""
        assert self.ws is not None
        ws = self.ws
        loop = self.conn.loop
        protocol = self.conn.protocol
        ping_sent: float | None = None
        try:
            self._handle_events()
            while self.disconnect is None:
                if self._inbox_full():
                    # The app reads slower than the client sends: read nothing more until
                    # it catches up. The app is behind, not the client: no ping is pending.
                    self._drained.clear()
                    await self._drained.wait()
                    ping_sent = None
                    continue
                if ping_sent is not None:
                    deadline = ping_sent + self.ping_timeout
                elif self.ping_interval > 0 and self.state == "open":
                    deadline = loop.time() + self.ping_interval
                else:
                    deadline = loop.time() + 3600.0
                fut: asyncio.Future[bytes | None] = loop.create_future()
                protocol.wait_data(functools.partial(_resolve, fut), deadline)
                data = await fut
                if data is None:  # the deadline: ping, or the ping went unanswered
                    if self.state != "open":
                        continue
                    if ping_sent is not None:
                        await self._close(INTERNAL_ERROR, "keepalive ping timeout")
                        self._gone(ABNORMAL, "keepalive ping timeout")
                        return
                    ping_sent = loop.time()
                    self._write(ws.send(Ping(payload=str(int(time.time() * 1000)).encode())))
                    continue
                ping_sent = None  # anything from the client shows it is there
                ws.receive_data(data if data else None)
                self._handle_events()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.worker.log.exception("Error reading a WebSocket")
            self._gone(ABNORMAL, "")

    def _handle_events(self) -> None:
        assert self.ws is not None
        ws = self.ws
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                if self.state != "open":
                    continue  # closing: what still arrives is dropped
                self._partial.append(bytes(event.data) if isinstance(event.data, bytearray) else event.data)
                self._partial_size += len(event.data)
                if self.max_size and self._partial_size > self.max_size:
                    self._partial.clear()
                    self._close_now(TOO_BIG, "message too big")
                    self._gone(TOO_BIG, "message too big")
                    return
                if event.message_finished:
                    parts, self._partial = self._partial, []
                    self._partial_size = 0
                    if isinstance(event, TextMessage):
                        text = "".join(p for p in parts if isinstance(p, str))
                        self.inbox.append({"type": "websocket.receive", "text": text})
                        self._inbox_bytes += len(text)
                    else:
                        data = b"".join(p for p in parts if isinstance(p, bytes))
                        self.inbox.append({"type": "websocket.receive", "bytes": data})
                        self._inbox_bytes += len(data)
                    self._wake.set()
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    self._write(ws.send(event.response()))
            elif isinstance(event, Pong):
                pass  # any input resets the ping clock (_read)
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    # The client closes: answer with its code, then the socket closes.
                    self._write(ws.send(event.response()))
                    self._gone(event.code, event.reason or "")
                elif ws.state is ConnectionState.OPEN:
                    # wsproto found the client's frames invalid (1002, 1007, ...).
                    self._close_now(event.code, event.reason or "")
                    self._gone(event.code, event.reason or "")
                else:
                    # The answer to our close, or the connection was lost (1006).
                    self._gone(event.code, event.reason or "")
                self._closed_by_peer.set()
                return

    def _inbox_full(self) -> bool:
        return len(self.inbox) >= INBOX_MAX_MESSAGES or self._inbox_bytes >= INBOX_MAX_BYTES

    def _close_now(self, code: int, reason: str) -> None:
        assert self.ws is not None
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._write(self.ws.send(CloseConnection(code=code, reason=reason[:120])))
        self.state = "closing"

    async def _close(self, code: int, reason: str) -> None:
        """Start the close handshake (the app's websocket.close, the end of the app, retirement)."""
        if self.state != "open":
            return
        self._close_now(code, reason)
        await self._flow()

    async def _wait_peer_close(self) -> None:
        if self.disconnect is None:
            try:
                await asyncio.wait_for(self._closed_by_peer.wait(), CLOSE_TIMEOUT)
            except TimeoutError:
                self._gone(ABNORMAL, "no close frame from the client")
        self.state = "closed"

    def retire(self) -> None:
        """The worker retires: 1012 now if open, at accept if still connecting."""
        self.going_away = True
        if self.state == "open":
            self._close_now(SERVICE_RESTART, "server restart")

    def _gone(self, code: int, reason: str) -> None:
        """The WebSocket is over: the app's next receive gets websocket.disconnect."""
        if self.disconnect is None:
            self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        if self.state == "open":
            self.state = "closing"
        self._wake.set()
        self._drained.set()

    def _lost(self) -> None:
        self._gone(ABNORMAL, "")
        self.state = "closed"
        self._closed_by_peer.set()

    def _write(self, data: bytes) -> None:
        if data:
            self._sent += len(data)
            self.conn.send(data)

    async def _flow(self) -> None:
        try:
            await wait_writable(self.conn)
        except OSError:
            self._lost()
            raise WebSocketClosed("the client closed the connection, or read nothing for --timeout") from None


class _UpgradeRequired(E.HTTPError):
    """426: the client asked for a WebSocket version other than 13."""

    status = 426
    reason = "Upgrade Required"
    fields = (("Sec-WebSocket-Version", "13"),)

    def __init__(self) -> None:
        super().__init__("unsupported Sec-WebSocket-Version (this server speaks 13)")


def _status_text(code: int) -> str:
    return {101: "101 Switching Protocols", 403: "403 Forbidden"}.get(code, f"{code} Error")


def _plain_response(head: RequestHead, code: int, body: bytes) -> bytes:
    resp = Response(head, False)
    resp.start(_status_text(code) if code != 500 else "500 Internal Server Error",
               [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return resp.piece(body) + resp.end()


def _resolve(fut: asyncio.Future[Any], value: object) -> None:
    if not fut.done():
        fut.set_result(value)

