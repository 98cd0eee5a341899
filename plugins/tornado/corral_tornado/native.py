"""Native tornado apps behind corral's HTTP layer.

tornado's own HTTP server is not used. corral's parser reads the request
(so limits, refusals and error answers are the same as for every worker
class), and the app is driven through tornado's public server interface:
``app.start_request(server_conn, request_conn)`` gives an
``HTTPMessageDelegate``, which receives ``headers_received``,
``data_received`` and ``finish``. The app answers through
:class:`TornadoRequest`, our ``tornado.httputil.HTTPConnection``, which
serialises with corral's :class:`~corral.wsgi.response.Response`: corral's
Server and Date fields, Content-Length or chunked framing, no body for
HEAD/1xx/204/304, and corral's keep-alive decisions.

Differences from tornado's HTTPServer, on purpose:

- The Server field is corral's unless the app set its own (tornado's
  default ``TornadoServer/<version>`` would name the exact version).
- The scheme (``request.protocol``) follows corral's
  ``secure_scheme_headers`` and ``forwarded_allow_ips``, as
  ``wsgi.url_scheme`` does for WSGI apps; ``request.remote_ip`` is the peer.
- The body limit is ``--limit-request-body`` (tornado's ``max_body_size``
  does not apply), and ``detach()`` (websockets) is not available.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from tornado import httputil
from tornado.iostream import StreamClosedError

from corral.api import (
    CONTINUE_100,
    EMPTY_BODY,
    NEED_DATA,
    EndOfMessage,
    RequestHead,
    Response,
    ResponseError,
    after_response,
    before_app,
    body_wait_timed_out,
    build_environ,
    forwarded_secure,
    internal_error_response,
    keeps_connection,
)
from corral.api import errors as E

if TYPE_CHECKING:
    from corral.api import AsyncHttpConnection, Worker

#: tornado's RequestHandler sets this Server value by default; it is replaced
#: by corral's, which names no version.
_TORNADO_SERVER = "TornadoServer/"
class RequestContext:
    """What tornado's HTTPServerRequest reads from ``connection.context``."""

    __slots__ = ("address", "protocol", "remote_ip")

    def __init__(self, address: Any, remote_ip: str, protocol: str) -> None:
        self.address = address
        self.remote_ip = remote_ip
        self.protocol = protocol

    def __str__(self) -> str:
        return self.remote_ip


def _flow_done(fut: asyncio.Future[None], writable: bool) -> None:
    if fut.done():
        return
    if writable:
        fut.set_result(None)
    else:
        fut.set_exception(StreamClosedError())
        fut.exception()  # tornado handlers often ignore write futures; do not log them


class TornadoRequest(httputil.HTTPConnection):
    """The ``request_conn`` of one request: how the tornado app writes its response.

    Writes never block: they go to the transport's buffer, and the returned
    future resolves once the transport takes more (tornado's flow control),
    or fails with StreamClosedError when the client has gone.
    """

    def __init__(self, conn: AsyncHttpConnection, head: RequestHead, keep_alive: bool,
                 context: RequestContext) -> None:
        self.conn = conn
        self.head = head
        self.keep_alive = keep_alive
        self.context = context
        self.response: Response | None = None
        #: A response was started (or replaced by a 500): no error answer may follow.
        self.committed = False
        #: The app called finish() (or the response failed).
        self.finished = False
        #: headers_received was followed by finish() on the delegate.
        self.body_done = False
        self.delegate: httputil.HTTPMessageDelegate | None = None
        self.done: asyncio.Future[None] = conn.loop.create_future()
        self._close_callback: Any = None

    # -- tornado.httputil.HTTPConnection --------------------------------------------

    def write_headers(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
        chunk: bytes | None = None,
    ) -> asyncio.Future[None]:
        if self.committed:
            if self.finished or self.response is None:
                return self._flow()  # the response already failed; ignore the rest
            raise RuntimeError("write_headers() called twice")
        self.committed = True
        assert isinstance(start_line, httputil.ResponseStartLine)
        resp = Response(self.head, self.keep_alive)
        fields = [(name, value) for name, value in headers.get_all()
                  if not (name == "Server" and value.startswith(_TORNADO_SERVER))]
        try:
            resp.start(f"{start_line.code} {start_line.reason}", fields)
        except ResponseError:
            self.conn.worker.log.exception(
                "Invalid response to %s %s", self.head.method, self.head.target)
            self._fail()
            return self._flow()
        self.response = resp
        if chunk:
            self._send_piece(resp, chunk)
        else:
            # Headers without a body: finish() usually follows in the same
            # call stack and sends them with the right framing (length 0);
            # a handler that flush()es and then waits gets them on the next
            # loop iteration.
            self.conn.loop.call_soon(self._send_head)
        return self._flow()

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        if self.response is None:
            if self.committed:
                return self._flow()
            raise RuntimeError("write() before write_headers()")
        if not self.finished and chunk:
            self._send_piece(self.response, chunk)
        return self._flow()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        resp = self.response
        if resp is not None:
            if not resp.headers_sent:
                self._decide_keep_alive(resp)
            out = resp.end()
            if out:
                self.conn.send(out)
        elif not self.committed:
            self.conn.worker.log.error(
                "The app finished %s %s without a response", self.head.method, self.head.target)
            self._fail()
        self._resolve_done()

    def set_close_callback(self, callback: Any) -> None:
        """tornado's RequestHandler registers on_connection_close here."""
        self._close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        """Accepted for compatibility; corral's --limit-request-body applies."""

    def set_body_timeout(self, timeout: float) -> None:
        """Accepted for compatibility; corral's --header-timeout applies between body reads."""

    def detach(self) -> Any:
        raise NotImplementedError("corral's tornado worker cannot detach a connection (no websockets)")

    # -- internals -------------------------------------------------------------------

    def _send_piece(self, resp: Response, chunk: bytes) -> None:
        if not resp.headers_sent:
            self._decide_keep_alive(resp)
        out = resp.piece(chunk)
        if out:
            self.conn.send(out)

    def _decide_keep_alive(self, resp: Response) -> None:
        # When the head is about to be made: Connection: close once retiring.
        if resp.keep_alive and not self.conn.may_keep_alive():
            resp.keep_alive = False

    def _send_head(self) -> None:
        resp = self.response
        if resp is not None and not resp.headers_sent and not self.finished:
            self._decide_keep_alive(resp)
            self.conn.send(resp.make_head())

    def _flow(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.conn.loop.create_future()
        self.conn.protocol.when_writable(functools.partial(_flow_done, fut))
        return fut

    def _fail(self) -> None:
        """Answer 500 if nothing was sent yet, and close after it."""
        self.committed = True
        self.keep_alive = False
        resp = self.response
        if resp is None or not resp.headers_sent:
            self.conn.send(internal_error_response(self.head))
        self.response = None
        self.finished = True
        self._resolve_done()

    def _resolve_done(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self) -> None:
        """The client went away: tell the app, as tornado's HTTP1Connection would."""
        log = self.conn.worker.log
        if self.delegate is not None and not self.body_done:
            self.body_done = True
            try:
                self.delegate.on_connection_close()
            except Exception:
                log.exception("Error in on_connection_close")
        callback, self._close_callback = self._close_callback, None
        if callback is not None and not self.finished:
            try:
                callback()
            except Exception:
                log.exception("Error in the connection close callback")
        self._resolve_done()

    @property
    def response_keeps_alive(self) -> bool:
        return self.response is not None and self.response.keep_alive and self.keep_alive


class TornadoResponder:
    """Answers requests with a tornado ``HTTPServerConnectionDelegate`` (usually a web.Application)."""

    def __init__(self, worker: Worker, app: httputil.HTTPServerConnectionDelegate) -> None:
        self.worker = worker
        self.app = app
        #: (field name, value that means https), from secure_scheme_headers.
        self._secure = [(name, value.lower()) for name, value in
                        dict(worker.cfg.secure_scheme_headers).items()]

    async def handle(self, conn: AsyncHttpConnection, head: RequestHead) -> bool:
        worker = self.worker
        started = conn.loop.time()
        # Retiring is asked when the response head is made (conn.may_keep_alive).
        keep = conn.keepalive > 0 and head.keep_alive
        request: TornadoRequest | None = None
        in_flight = worker.in_flight
        in_flight[conn] = (head, time.monotonic())
        failed = 0  # the 500 corral answered for the app, if it had to
        try:
            headers = httputil.HTTPHeaders()
            for name, value in head.headers:
                headers.add(name, value)
            if head.target_scheme is not None:
                # Absolute-form target: its authority is the host, and tornado
                # routes on an origin-form path.
                headers["Host"] = head.host or ""
                target = head.path + ("?" + head.query if head.query else "")
            else:
                target = head.target
            request = TornadoRequest(conn, head, keep, self._context(conn, head, headers))
            if worker.pre_request is not None:
                before_app(worker, head, self._environ(conn, head))
            conn.protocol.on_lost = request.connection_lost
            delegate = self.app.start_request(conn, request)
            request.delegate = delegate
            ready = delegate.headers_received(
                httputil.RequestStartLine(head.method, target, head.version), headers)
            if ready is not None:
                await ready
            continue_sent = await self._deliver_body(conn, head, request, delegate)
            await request.done
        except httputil.HTTPInputError as exc:
            # tornado refused something corral let through (its Host or query rules).
            return self._refuse(conn, request, E.BadRequest(str(exc)))
        except E.HTTPError as exc:
            return self._refuse(conn, request, exc)
        except Exception:
            worker.log.exception("Error handling request %s %s", head.method, head.target)
            if request is not None:
                if not request.committed:
                    failed = 500
                    request._fail()
                request.connection_lost()
            else:
                failed = 500
                conn.send(internal_error_response(head))
            return False
        finally:
            conn.protocol.on_lost = None
            in_flight.pop(conn, None)
            worker.request_done()
            stats = worker.stats
            if stats is not None:
                resp = request.response if request is not None else None
                if resp is not None and resp.headers_sent:
                    stats.record((resp.status_code, resp.bytes_sent, conn.loop.time() - started))
                else:
                    # No head went out, or corral's own 4xx went (counted by send_error).
                    stats.record((failed, 0, conn.loop.time() - started))
        if conn.protocol.closed or request.response is None:
            return False
        if worker.post_request is not None or worker.access_log is not None:
            after_response(worker, head, self._environ(conn, head), request.response,
                           conn.loop.time() - started)
        if not keeps_connection(request.response_keeps_alive, head, continue_sent, conn.parser.done):
            return False
        return await conn.drain()

    async def _deliver_body(self, conn: AsyncHttpConnection, head: RequestHead,
                            request: TornadoRequest, delegate: httputil.HTTPMessageDelegate) -> bool:
        """Pass the body to the delegate, then finish(); True if 100 Continue was sent."""
        parser = conn.parser
        continue_sent = False
        while True:
            event = parser.next_event()
            if type(event) is bytes:
                if not request.finished:
                    flow: Awaitable[None] | None = delegate.data_received(event)
                    if flow is not None:
                        await flow
            elif event is NEED_DATA:
                if request.finished:
                    break  # answered already: the rest is drained, or the connection closes
                if head.expect_continue and not continue_sent:
                    if request.committed:
                        break  # answered before the body: do not invite it
                    conn.send(CONTINUE_100)
                    continue_sent = True
                if not await conn.receive(conn.loop.time() + conn.header_timeout):
                    raise body_wait_timed_out()
            else:
                assert isinstance(event, EndOfMessage)
                request.body_done = True
                delegate.finish()
                return continue_sent
        request.body_done = True
        return continue_sent

    def _refuse(self, conn: AsyncHttpConnection, request: TornadoRequest | None,
                exc: E.HTTPError) -> bool:
        """A protocol error before or while the body was read: answer it unless a response started."""
        if request is None or not request.committed:
            conn.send_error(exc)
        if request is not None:
            request.committed = request.finished = True
            request.connection_lost()
        return False

    def _context(self, conn: AsyncHttpConnection, head: RequestHead,
                 headers: httputil.HTTPHeaders) -> RequestContext:
        peer = conn.peer
        env = conn.env
        proxied = conn.parser.proxy
        if isinstance(peer, tuple):
            remote_ip = peer[0]
            trusted = remote_ip in env.trusted
        else:
            # tornado's convention for unix sockets; the peer is a local process.
            remote_ip = "0.0.0.0"
            trusted = True
        if proxied is not None and proxied.source is not None:
            # The client named by the PROXY header, as REMOTE_ADDR for WSGI apps.
            remote_ip = proxied.source[0]
        scheme = env.url_scheme
        if trusted and self._secure:
            secure = forwarded_secure(self._secure, headers.get)
            if secure is not None:
                scheme = "https" if secure else "http"
        return RequestContext(peer, remote_ip, scheme)

    def _environ(self, conn: AsyncHttpConnection, head: RequestHead) -> dict[str, Any]:
        """The WSGI environ of this request, for post_request and the access log.

        Built by corral's own build_environ, as for a WSGI app, so that hooks
        and log formats read the same keys on every class; its body is the
        empty one (tornado has consumed the real one by now).
        """
        proxied = conn.parser.proxy
        try:
            return build_environ(head, conn.env, EMPTY_BODY, conn.peer,
                                 client=proxied.source if proxied is not None else None)
        except E.HTTPError:
            # Conflicting scheme headers: tornado answered the request all the
            # same; the log still gets its line.
            return {"REQUEST_METHOD": head.method, "PATH_INFO": head.path, "QUERY_STRING": head.query,
                    "SERVER_PROTOCOL": head.version}

    def connection_closed(self, conn: AsyncHttpConnection) -> None:
        try:
            self.app.on_close(conn)
        except Exception:
            self.worker.log.exception("Error in the app's on_close")
