"""start_response, response validation and serialisation, and error answers.

Rules this module enforces for every worker:

- Status and header fields from the application are validated before a
  byte is sent: a CR or LF in a value would let the app (or data it echoes)
  split the response, so it is refused with an error instead.
- Hop-by-hop fields belong to the server. ``Connection: close`` from the app
  is honoured (the connection closes after the response); any other
  hop-by-hop field is refused.
- HEAD, 1xx, 204 and 304 responses never carry a body; bytes the app yields
  for them are dropped.
- Framing: the app's Content-Length if it gave one (never more bytes than
  that are sent); else a length we know (one-element list, a real file);
  else chunked for HTTP/1.1; else close-delimited for HTTP/1.0.
- Headers are sent with the first non-empty body piece, in one send.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from typing import Any, Final

from corral.http.errors import HTTPError
from corral.http.parser import RequestHead

_STATUS = re.compile(r"([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
_NO_BODY_STATUS: Final = frozenset({204, 304})
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: (name, value) pairs already validated -> (which of _HAS_SERVER and
#: _HAS_DATE the field is, its head line). Apps send the same fields again
#: and again (Content-Type, Cache-Control...), so a field found here skips
#: every check: the regular expressions run once per distinct pair. Never
#: Content-Length (its value is parsed every time) nor hop-by-hop fields
#: (each needs a decision). Bounded so that values that vary (dates, ETags)
#: cannot grow it without end.
_VALID_FIELDS: dict[tuple[str, str], tuple[int, str]] = {}
_VALID_FIELDS_MAX: Final = 4096
#: Status lines already found valid, with their code: apps send a handful.
_STATUS_CODES: dict[str, int] = {}

#: Value of the Server field. No version: it would only help attackers pick exploits.
SERVER_HEADER: Final = "corral"

#: [second, Date value, whole "Date: ...\r\n" line] for the current second.
_date_cache: list[Any] = [0, "", ""]
_SERVER_LINE: Final = f"Server: {SERVER_HEADER}\r\n"
# Bits of Response._own.
_HAS_SERVER: Final = 1
_HAS_DATE: Final = 2


def http_date() -> str:
    """The Date field value, formatted at most once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True)
        _date_cache[2] = f"Date: {_date_cache[1]}\r\n"
    return _date_cache[1]


def date_line() -> str:
    """The whole Date field line, as the response head carries it."""
    if _date_cache[0] != int(time.time()):
        http_date()
    return _date_cache[2]


class ResponseError(Exception):
    """The application broke the WSGI or HTTP rules in its response."""


class Response:
    """The response to one request, as bytes: a writer with no I/O and no callbacks.

    The connection (whoever owns the socket) feeds it and sends what it
    returns:

    - :meth:`start` validates the app's status and headers (what WSGI's
      ``start_response`` receives; the connection's ``start_response``
      calls it and returns its own ``write``);
    - :meth:`piece` frames one piece of body, with the head before the
      first one, and returns the bytes to send (``b""``: nothing yet);
    - :meth:`end` returns what is left to send (the head of an empty
      response, the last chunk) and settles :attr:`keep_alive`;
    - :attr:`complete` says that nothing can follow the bytes returned so
      far: with ``keep_alive`` false, the connection may close right after
      them (corral.workers.connection: HttpConnection._send_last).

    :attr:`keep_alive` is the connection's to lower until the head is made
    (a retiring worker answers ``Connection: close``); the app lowers it
    with ``Connection: close``; framing lowers it when the length cannot be
    kept.

    :param keep_alive: whether the connection may stay open if framing allows.
    """

    __slots__ = (
        "_chunked",
        "_lines",
        "_no_body",
        "_own",
        "bytes_sent",
        "content_length",
        "head",
        "headers",
        "headers_sent",
        "keep_alive",
        "length_hint",
        "status",
        "status_code",
    )

    def __init__(self, head: RequestHead, keep_alive: bool) -> None:
        self.head = head
        self.keep_alive = keep_alive
        self.status: str | None = None
        self.status_code = 0
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.content_length: int | None = None
        self.length_hint: int | None = None
        self.bytes_sent = 0
        self._chunked = False
        self._no_body = False
        self._own = 0  # which of Server/Date the app set itself

    # -- WSGI ------------------------------------------------------------------

    def start(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: Any = None,
    ) -> None:
        """What WSGI's ``start_response`` receives: validate and keep it (PEP 3333 on a second call)."""
        if exc_info is not None:
            try:
                if self.headers_sent:
                    # PEP 3333: too late to change the response; re-raise.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise ResponseError("start_response called a second time without exc_info")
        code = _STATUS_CODES.get(status) if type(status) is str else None
        if code is None:
            if not isinstance(status, str) or _STATUS.fullmatch(status) is None:
                raise ResponseError(f"invalid status {status!r}: want 'NNN Reason'")
            code = int(status[:3])
            if len(_STATUS_CODES) < _VALID_FIELDS_MAX:
                _STATUS_CODES[status] = code
        content_length: int | None = None
        keep_alive = self.keep_alive
        checked: list[tuple[str, str]] = []
        lines: list[str] = []  # the same fields as head lines
        own = 0
        valid = _VALID_FIELDS
        for item in headers:
            if type(item) is not tuple:
                raise ResponseError(f"header {item!r} is not a (name, value) tuple")
            # A hit is a pair equal to one of str found valid before: its
            # line is the one to send, whatever the item's own types. An
            # unhashable item (a list for a value) is judged below like any miss.
            try:
                known = valid.get(item)
            except TypeError:
                known = None
            if known is not None:
                own |= known[0]
                checked.append(item)
                lines.append(known[1])
                continue
            if len(item) != 2:
                raise ResponseError(f"header {item!r} is not a (name, value) tuple")
            name, value = item
            if type(name) is not str or type(value) is not str:
                raise ResponseError(f"header {item!r}: name and value must be str")
            if name == "Content-Length" or name == "content-length":
                lname = "content-length"  # its value varies: checked below, never cached
            else:
                if _FIELD_NAME.fullmatch(name) is None:
                    raise ResponseError(f"invalid header name {name!r}")
                if _FIELD_VALUE.fullmatch(value) is None:
                    raise ResponseError(f"invalid value for header {name}: CR, LF and controls are refused")
                lname = name.lower()
            if lname in _HOP_BY_HOP:
                if lname == "connection" and value.strip().lower() == "close":
                    keep_alive = False
                    continue
                raise ResponseError(f"hop-by-hop header {name!r} is the server's to send")
            line = f"{name}: {value}\r\n"
            if lname == "content-length":
                if not value.isascii() or not value.isdigit():
                    raise ResponseError(f"invalid Content-Length {value!r}")
                content_length = int(value)
                if code < 200 or code == 204:
                    continue  # these never carry a body, nor a length
            else:
                bit = _HAS_SERVER if lname == "server" else _HAS_DATE if lname == "date" else 0
                own |= bit
                if len(valid) < _VALID_FIELDS_MAX:
                    valid[(name, value)] = (bit, line)
            checked.append((name, value))
            lines.append(line)
        self._own = own
        self._lines = lines
        self.status = status
        self.status_code = code
        self.headers = checked
        self.content_length = content_length
        self.keep_alive = keep_alive

    def piece(self, data: bytes) -> bytes:
        """One piece of the body (a yielded item, a write() call): the bytes to send for it."""
        if self.status is None:
            raise ResponseError("write() before start_response()")
        if type(data) is not bytes:
            if isinstance(data, bytes | bytearray | memoryview):
                data = bytes(data)
            else:
                raise ResponseError(f"the app yielded {type(data).__name__}, not bytes")
        if not self.headers_sent:
            if not data:
                return b""
            return self.make_head() + self._frame(data)
        if not data:
            return b""
        return self._frame(data)

    def end(self) -> bytes:
        """The app is done: the bytes left to send (the head if none went out, the last chunk)."""
        out = b""
        if not self.headers_sent:
            if self.status is None:
                raise ResponseError("the app returned without calling start_response()")
            if self.content_length is None and self.length_hint is None:
                self.length_hint = 0
            # Not chunked (the length is known by now): the head is all there is.
            out = self.make_head()
        if self._chunked:
            return out + b"0\r\n\r\n"
        if self.content_length is not None and not self._no_body and self.bytes_sent < self.content_length:
            # The client is waiting for bytes that will never come.
            self.keep_alive = False
        return out

    def sent_elsewhere(self, count: int) -> None:
        """Body bytes that went out past :meth:`piece` (a file through sendfile, after the head)."""
        self.bytes_sent += count

    @property
    def complete(self) -> bool:
        """Nothing can follow what was returned so far (no body, or the announced length is out).

        A chunked or close-delimited body is complete only at :meth:`end`.
        """
        if not self.headers_sent:
            return False
        if self._no_body:
            return True
        length = self.content_length
        return not self._chunked and length is not None and self.bytes_sent >= length

    # -- serialisation ---------------------------------------------------------

    def make_head(self) -> bytes:
        """The response head (once): status line, the app's fields, Server, Date, framing, Connection."""
        head = self.head
        code = self.status_code
        self._no_body = head.method == "HEAD" or code < 200 or code in _NO_BODY_STATUS
        lines = [f"HTTP/1.1 {self.status}\r\n"]
        lines += self._lines
        if not self._own & _HAS_SERVER:
            lines.append(_SERVER_LINE)
        if not self._own & _HAS_DATE:
            lines.append(date_line())
        if self.content_length is None and not (code < 200 or code == 204):
            if self.length_hint is not None and (not self._no_body or head.method == "HEAD"):
                if not (self._no_body and code == 304):
                    self.content_length = self.length_hint
                    lines.append(f"Content-Length: {self.length_hint}\r\n")
            elif not self._no_body:
                if head.version == "HTTP/1.1":
                    self._chunked = True
                    lines.append("Transfer-Encoding: chunked\r\n")
                else:
                    self.keep_alive = False
        if not self.keep_alive:
            lines.append("Connection: close\r\n")
        elif head.version == "HTTP/1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        self.headers_sent = True
        return "".join(lines).encode("latin-1")

    def _frame(self, data: bytes) -> bytes:
        if self._no_body:
            return b""
        if self._chunked:
            self.bytes_sent += len(data)
            # join, not b"%x\r\n%b\r\n" %: bytes formatting copies a large
            # piece through a growing buffer, 20x slower (200 x 1 MiB streamed
            # chunked on gthread: 0.146 s, gunicorn 0.056 s).
            return b"".join((b"%x\r\n" % len(data), data, b"\r\n"))
        limit = self.content_length
        if limit is not None:
            room = limit - self.bytes_sent
            if len(data) > room:
                # Never send more than announced: it would desync the client.
                data = data[:room] if room > 0 else b""
                self.keep_alive = False
        self.bytes_sent += len(data)
        return data


def error_response(exc: HTTPError, *, close: bool = True) -> bytes:
    """The one place a protocol error becomes bytes on the wire.

    The body is the fixed reason phrase: it never echoes client input.
    """
    body = f"{exc.status} {exc.reason}\n".encode("ascii")
    head = (
        f"HTTP/1.1 {exc.status} {exc.reason}\r\n"
        f"Server: {SERVER_HEADER}\r\n"
        f"Date: {http_date()}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in exc.fields)
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode("ascii") + body


def internal_error_response(head: RequestHead | None) -> bytes:
    """The 500 sent when the application raised before sending anything."""
    body = b"500 Internal Server Error\n"
    if head is not None and head.method == "HEAD":
        body = b""
    return (
        "HTTP/1.1 500 Internal Server Error\r\n"
        f"Server: {SERVER_HEADER}\r\n"
        f"Date: {http_date()}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Length: 26\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii") + body
