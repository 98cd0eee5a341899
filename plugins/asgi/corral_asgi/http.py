"""ASGI 3 HTTP: one request of an :class:`AsyncHttpConnection` driven through the app, on the loop.

corral's parser has read and validated the head (limits, framing,
PROXY/forwarded rules: the same as every other class); this module makes
the scope, feeds the body to the app through ``receive`` and turns what the
app ``send``s into bytes with corral's :class:`Response` (Server and Date,
Content-Length or chunked, no body for HEAD/1xx/204/304, ``Connection:
close`` once the worker retires).

Choices, where the ASGI spec leaves room:

- ``receive`` hands over the body as it arrives (whatever is buffered, in
  one message), sends ``100 Continue`` the first time the app waits for a
  body the client holds back, and after the body returns
  ``http.disconnect`` once the response is complete or the client is gone
  (an end of stream from the client counts: it has nothing more to say,
  though a response is still written for a half-closed client).
- ``send`` after the connection is lost raises :class:`ClientDisconnected`
  (an OSError, as spec 2.4 asks); the app then has
  ``asgi_disconnect_grace_period`` seconds to finish before its task is
  cancelled.
- A single ``http.response.body`` without ``more_body`` gets a
  Content-Length; a streamed one is chunked (HTTP/1.1) or closes (1.0).
  An empty body message with ``more_body`` sends the head at once (server-
  sent events start so).
- Response headers are checked as WSGI ones are (a CR/LF or an invalid name
  is a 500, never sent); hop-by-hop fields are the server's, except that
  ``connection: close`` is honoured and any other Connection value dropped.
- ``http.response.pathsend`` (the extension Starlette's FileResponse uses)
  goes out with the loop's sendfile.
- Request trailers are not delivered (ASGI has no message for them); the
  response ``trailers`` flag is accepted and the trailers message ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from corral.api import (
    CONTINUE_100,
    EMPTY_BODY,
    NEED_DATA,
    EndOfMessage,
    RequestHead,
    Response,
    after_response,
    before_app,
    body_wait_timed_out,
    build_environ,
    builds_alone,
    forwarded_secure,
    internal_error_response,
    keeps_connection,
    partial_environ,
)
from corral.api import (
    ClientDisconnected as StreamEnded,
)
from corral.api import errors as E
from corral_asgi.output import ClientDisconnected, response_fields, status_line, wait_writable
from corral_asgi.websocket import WebSocketSession, is_websocket_upgrade

if TYPE_CHECKING:
    from corral.api import AsyncHttpConnection, Worker

ASGI_VERSION: Final = {"version": "3.0", "spec_version": "2.4"}
#: Body bytes handed to the app in one http.request message at most.
RECEIVE_MAX: Final = 1 << 20
#: A file goes out through loop.sendfile in pieces of at most this many bytes.
SENDFILE_PIECE: Final = 1 << 20
#: A file sent without sendfile goes out in pieces of this size.
FILE_PIECE: Final = 256 * 1024


#: Field names as sent -> lowercased bytes for the scope; names repeat, so one dict lookup
#: replaces a lower() and an encode(). Bounded, so that a client making up names cannot grow it.
_NAMES: dict[str, bytes] = {}
_NAMES_MAX: Final = 2048


class HttpCycle:
    """The receive and send of one request, and what happened to it."""

    __slots__ = ("_body_lock", "_done", "_watching", "body_done", "cancel", "complete", "conn",
                 "continue_sent", "disconnected", "error", "grace", "head", "keep", "lost", "requested",
                 "response", "started", "task")

    def __init__(self, conn: AsyncHttpConnection, head: RequestHead, keep: bool, grace: float) -> None:
        self.conn = conn
        self.grace = grace  # asgi_disconnect_grace_period
        self.head = head
        self.keep = keep
        self.response: Response | None = None
        self.started = False  # http.response.start received
        self.complete = False  # the last body message was sent
        self.body_done = not head.has_body
        #: The app has had its (first) http.request message.
        self.requested = False
        self.continue_sent = False
        #: The client will send nothing more (end of stream, loss, a framing error).
        self.disconnected = False
        #: The connection is gone: nothing can be written.
        self.lost = False
        #: A protocol error found while the app read the body, answered after it.
        self.error: E.HTTPError | None = None
        #: Made when the app first waits for the end of the request (most never do).
        self._done: asyncio.Future[None] | None = None
        self._body_lock: asyncio.Lock | None = None
        self._watching = False
        #: The app's task, and the timer that cancels it once its client is gone.
        self.task: asyncio.Task[Any] | None = None
        self.cancel: asyncio.TimerHandle | None = None

    # -- receive ---------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.requested:
            self.requested = True
            if self.body_done:  # no body: one empty http.request, as the spec wants
                return {"type": "http.request", "body": b"", "more_body": False}
        if not self.body_done and not self.disconnected:
            lock = self._body_lock
            if lock is None:
                lock = self._body_lock = asyncio.Lock()
            async with lock:  # two tasks reading the body would tear it
                if not self.body_done and not self.disconnected:
                    return await self._read_body()
        if not self.disconnected and not self.complete:
            done = self._done
            if done is None:
                done = self._done = self.conn.loop.create_future()
            self._watch()
            await asyncio.shield(done)
        return {"type": "http.disconnect"}

    async def _read_body(self) -> dict[str, Any]:
        conn = self.conn
        parser = conn.parser
        pieces: list[bytes] = []
        size = 0
        try:
            while True:
                event = parser.next_event()
                if type(event) is bytes:
                    pieces.append(event)
                    size += len(event)
                    if size >= RECEIVE_MAX:
                        break
                elif event is NEED_DATA:
                    if pieces:
                        break
                    if self.head.expect_continue and not self.continue_sent and not self.started:
                        conn.send(CONTINUE_100)
                        self.continue_sent = True
                    if not await conn.receive(conn.loop.time() + conn.header_timeout):
                        raise body_wait_timed_out()
                else:
                    assert isinstance(event, EndOfMessage)
                    self.body_done = True
                    break
        except E.HTTPError as exc:
            self.error = exc
            self._disconnect()
            return {"type": "http.disconnect"}
        except (StreamEnded, ConnectionError):
            # The stream ended in the middle of the body, or the connection broke.
            self._disconnect()
            return {"type": "http.disconnect"}
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return {"type": "http.request", "body": body, "more_body": not self.body_done}

    def _watch(self) -> None:
        """Wait for the client's end of stream while the app works (its http.disconnect)."""
        if self._watching:
            return
        protocol = self.conn.protocol
        if self.conn.parser.has_unread or protocol.pending_size:
            return  # the next request is here: this client is not leaving
        self._watching = True
        protocol.wait_data(self._watched, self.conn.loop.time() + 24 * 3600.0)

    def _watched(self, data: bytes | None) -> None:
        self._watching = False
        if data is None:
            return  # unwatch() or the deadline
        if data == b"":
            self._disconnect()
        else:
            self.conn.parser.feed(data)  # a pipelined request: kept for its turn

    def unwatch(self) -> None:
        if self._watching:
            self.conn.protocol.stop_waiting()

    def _disconnect(self) -> None:
        self.disconnected = True
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def connection_lost(self) -> None:
        """The transport is gone: the app gets http.disconnect, and its grace period starts."""
        self.lost = True
        self._disconnect()
        task = self.task
        if task is not None and not task.done():
            self.cancel = self.conn.loop.call_later(self.grace, task.cancel)

    # -- send ------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.lost:
            raise ClientDisconnected("the client closed the connection")
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            started = Response(self.head, self.keep)
            started.start(status_line(message["status"]), response_fields(message.get("headers", ())))
            self.started = True
            self.response = started
            return
        resp = self.response
        if resp is None:
            raise RuntimeError(f"{kind} before http.response.start")
        if self.complete:
            if kind == "http.response.trailers":
                return
            raise RuntimeError(f"{kind} after the response was complete")
        if kind == "http.response.body":
            body = message.get("body", b"")
            more = message.get("more_body", False)
            out = b""
            if not resp.headers_sent:
                self._decide_keep_alive(resp)
                if not more and resp.content_length is None:
                    resp.length_hint = len(body)
                if not body and more:
                    out = resp.make_head()
            if body:
                out += resp.piece(body)
            if not more:
                out += resp.end()
                self.complete = True
            if out:
                self.conn.send(out)
            if not more:
                self._finish()
            if self.conn.protocol.write_paused:  # a slow reader paces the app
                await wait_writable(self.conn)
        elif kind == "http.response.pathsend":
            await self._send_path(resp, message["path"])
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in an HTTP request")

    def _decide_keep_alive(self, resp: Response) -> None:
        # When the head is made: Connection: close once the worker retires.
        if resp.keep_alive and not self.conn.may_keep_alive():
            resp.keep_alive = False

    def _finish(self) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    async def _send_path(self, resp: Response, path: str) -> None:
        conn = self.conn
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            if resp.content_length is None:
                resp.length_hint = size
            self._decide_keep_alive(resp)
            conn.send(resp.make_head())
            count = min(size, resp.content_length if resp.content_length is not None else size)
            code = resp.status_code
            if count and self.head.method != "HEAD" and code >= 200 and code not in (204, 304):
                resp.sent_elsewhere(await self._file_body(f, count))
        out = resp.end()
        if out:
            conn.send(out)
        self.complete = True
        self._finish()


    async def _file_body(self, f: Any, count: int) -> int:
        """``count`` bytes of ``f`` to the client: the loop's sendfile, or pieces where it has none."""
        conn = self.conn
        timeout = conn.worker.write_timeout or None
        sent = 0
        try:
            # In pieces, so that a client that stops reading is given up
            # after --timeout without progress, as on every class.
            while sent < count:
                if conn.transport.is_closing():
                    raise ClientDisconnected("the client closed the connection")
                piece = min(SENDFILE_PIECE, count - sent)
                try:
                    done = await asyncio.wait_for(conn.loop.sendfile(conn.transport, f, sent, piece), timeout)
                except TimeoutError:
                    conn.transport.abort()
                    raise ClientDisconnected("the client read nothing for --timeout") from None
                sent += done
                if done < piece:
                    return sent
            return sent
        except NotImplementedError:
            pass  # uvloop has no loop.sendfile: read and write, paced by the client
        f.seek(sent)
        while sent < count:
            piece = f.read(min(FILE_PIECE, count - sent))
            if not piece:
                break
            conn.send(piece)
            sent += len(piece)
            await wait_writable(self.conn)
        return sent


class AsgiResponder:
    """Answers every request of an asgi worker with its ASGI app (HTTP here, WebSockets in websocket.py)."""

    def __init__(self, worker: Worker, app: Callable[..., Any], state: dict[str, Any]) -> None:
        self.worker = worker
        self.app = app
        self.state = state
        cfg = worker.cfg
        self.grace = cfg.asgi_disconnect_grace_period
        #: (lowercased field name, value that means https), from secure_scheme_headers.
        self._secure = [(name.lower(), value.lower()) for name, value in
                        dict(cfg.secure_scheme_headers).items()]
        self._secure_names = frozenset(name.encode("latin-1") for name, _ in self._secure)
        #: scope["server"] per listener (its EnvironContext), made once.
        self._servers: dict[int, tuple[str, int | None]] = {}
        self.root_path = cfg.script_name.rstrip("/")
        self.websockets: set[WebSocketSession] = set()
        self.retiring = False
        #: The environ keys the access log reads, when those alone will do
        #: (log_environ; a post_request hook is given the whole environ).
        logger = worker.access_logger
        self._log_keys: frozenset[str] | None = None
        if logger is not None and builds_alone(logger.environ_keys):
            self._log_keys = logger.environ_keys

    # -- the scope ---------------------------------------------------------------------

    def scope(self, conn: AsyncHttpConnection, head: RequestHead, kind: str) -> dict[str, Any]:
        """The request's ASGI scope (one pass over the fields; this runs for every request)."""
        env = conn.env
        peer = conn.peer
        client: tuple[str, int] | None = None
        trusted = True
        if type(peer) is tuple:
            client = (peer[0], peer[1])
            trusted = peer[0] in env.trusted
        proxied = conn.parser.proxy
        if proxied is not None and proxied.source is not None:
            client = (proxied.source[0], int(proxied.source[1]))
        names = _NAMES
        headers: list[tuple[bytes, bytes]] = []
        append = headers.append
        watched = self._secure_names if trusted else None
        said: dict[str, str] | None = None
        for name, value in head.headers:
            lname = names.get(name)
            if lname is None:
                lname = name.lower().encode("latin-1")
                if len(names) < _NAMES_MAX:
                    names[name] = lname
            append((lname, value.encode("latin-1")))
            if watched is not None and lname in watched:
                if said is None:
                    said = {}
                said.setdefault(lname.decode("latin-1"), value)
        secure = env.url_scheme == "https"
        if said is not None:
            verdict = forwarded_secure(self._secure, said.get)  # BadRequest when they disagree
            if verdict is not None:
                secure = verdict
        if kind == "websocket":
            scheme = "wss" if secure else "ws"
        else:
            scheme = "https" if secure else "http"
        raw_path = head.path
        root = self.root_path
        if root and not (raw_path == root or raw_path.startswith(root + "/")):
            # A proxy that strips the mount point: the path still carries it,
            # as ASGI frameworks expect (path = root_path + the route).
            raw_path = root + raw_path
        return {
            "type": kind,
            "asgi": ASGI_VERSION,
            "http_version": "1.1" if head.version == "HTTP/1.1" else "1.0",
            "method": head.method,
            "scheme": scheme,
            "path": unquote(raw_path) if "%" in raw_path else raw_path,
            "raw_path": raw_path.encode("latin-1"),
            "query_string": head.query.encode("latin-1"),
            "root_path": root,
            "headers": headers,
            "client": client,
            "server": self._servers.get(id(env)) or self._server(env),
            "state": self.state.copy() if self.state else {},
            "extensions": ({"websocket.http.response": {}} if kind == "websocket"
                           else {"http.response.pathsend": {}}),
        }

    def _server(self, env: Any) -> tuple[str, int | None]:
        server = (env.server_name, int(env.server_port) if env.server_port.isdigit() else None)
        self._servers[id(env)] = server
        return server

    def environ(self, conn: AsyncHttpConnection, head: RequestHead) -> dict[str, Any]:
        """A WSGI environ of the request, for pre/post_request hooks and the access log.

        The same keys as on every other class, so hooks and log formats read alike.
        """
        proxied = conn.parser.proxy
        try:
            return build_environ(head, conn.env, EMPTY_BODY, conn.peer,
                                 client=proxied.source if proxied is not None else None)
        except E.HTTPError:
            return {"REQUEST_METHOD": head.method, "PATH_INFO": head.path, "QUERY_STRING": head.query,
                    "SERVER_PROTOCOL": head.version}

    def log_environ(self, conn: AsyncHttpConnection, head: RequestHead) -> dict[str, Any]:
        """The environ for the access log: only the keys its format reads, when those alone will do."""
        keys = self._log_keys
        if keys is None:
            return self.environ(conn, head)
        proxied = conn.parser.proxy
        return partial_environ(head, conn.env, conn.peer, keys,
                               client=proxied.source if proxied is not None else None)

    # -- Responder ---------------------------------------------------------------------

    async def handle(self, conn: AsyncHttpConnection, head: RequestHead) -> bool:
        if head.upgrade and is_websocket_upgrade(head):
            return await self._websocket(conn, head)
        worker = self.worker
        loop = conn.loop
        started = loop.time()
        keep = conn.keepalive > 0 and head.keep_alive
        try:
            scope = self.scope(conn, head, "http")
        except E.HTTPError as exc:
            conn.send_error(exc)
            return False
        cycle = HttpCycle(conn, head, keep, self.grace)
        in_flight = worker.in_flight
        in_flight[conn] = (head, time.monotonic())
        environ: dict[str, Any] | None = None
        failed = 0
        conn.protocol.on_lost = cycle.connection_lost
        try:
            if worker.pre_request is not None:
                environ = self.environ(conn, head)
                before_app(worker, head, environ)
            cycle.task = loop.create_task(self.app(scope, cycle.receive, cycle.send))
            await cycle.task
        except asyncio.CancelledError:
            if not cycle.lost:
                raise  # the worker is stopping
            return False
        except Exception as exc:
            sent = cycle.response is not None and cycle.response.headers_sent
            if cycle.error is not None:
                # The body was malformed, too large or too slow: the app got
                # http.disconnect and gave up; the client gets the 4xx.
                worker.log.debug("The app ended on a bad request body: %r", exc)
                if not sent and not cycle.lost:
                    conn.send_error(cycle.error)
                return False
            if cycle.disconnected and (isinstance(exc, OSError) or cycle.lost):
                # The client left; the app noticed (send raised, or it gave up on the body).
                worker.log.debug("The client of %s %s left: %r", head.method, head.target, exc)
                return False
            worker.log.exception("Error handling request %s %s", head.method, head.target)
            if not cycle.lost and (cycle.response is None or not cycle.response.headers_sent):
                failed = 500
                conn.send(internal_error_response(head))
            return False
        finally:
            if cycle.cancel is not None:
                cycle.cancel.cancel()
            cycle.unwatch()
            conn.protocol.on_lost = None
            in_flight.pop(conn, None)
            worker.request_done()
            # One clock reading for the counters and the access log alike.
            took = loop.time() - started
            stats = worker.stats
            if stats is not None:
                resp = cycle.response
                if resp is not None and resp.headers_sent:
                    stats.record((resp.status_code, resp.bytes_sent, took))
                else:
                    stats.record((failed, 0, took))
        resp = cycle.response
        if cycle.lost or conn.protocol.closed:
            return False
        if cycle.error is not None and (resp is None or not resp.headers_sent):
            conn.send_error(cycle.error)  # a framing error in the body: 400 (or 408, 413)
            return False
        if resp is None or not cycle.complete:
            if resp is None:
                worker.log.error("The app returned without a response to %s %s", head.method, head.target)
                conn.send(internal_error_response(head))
            else:
                worker.log.error("The app returned before its response to %s %s was complete",
                                 head.method, head.target)
            return False
        if worker.post_request is not None:
            after_response(worker, head, environ or self.environ(conn, head), resp, took)
        elif worker.access_log is not None:  # after_response's last step, without its call
            worker.access_log(head, environ or self.log_environ(conn, head), resp, took)
        if cycle.error is not None:
            return False
        if not keeps_connection(resp.keep_alive and keep, head, cycle.continue_sent, conn.parser.done):
            return False
        # Most requests were read to their end by now: nothing to drop.
        return conn.parser.done or await conn.drain()

    async def _websocket(self, conn: AsyncHttpConnection, head: RequestHead) -> bool:
        try:
            scope = self.scope(conn, head, "websocket")
        except E.HTTPError as exc:
            conn.send_error(exc)
            return False
        session = WebSocketSession(self, conn, head, scope)
        self.websockets.add(session)
        self.worker.in_flight[conn] = (head, time.monotonic())
        try:
            if self.retiring:
                session.going_away = True
            await session.run()
        finally:
            self.websockets.discard(session)
            self.worker.in_flight.pop(conn, None)
            self.worker.request_done()
        return False  # a WebSocket connection is never reused for HTTP

    def retire_websockets(self) -> None:
        """The worker retires: ask every WebSocket client to reconnect elsewhere (1012)."""
        self.retiring = True
        for session in list(self.websockets):
            session.retire()

    def connection_closed(self, conn: AsyncHttpConnection) -> None:
        """Nothing is kept per connection."""
