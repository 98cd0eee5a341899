"""The request parser: a sans-io state machine over one connection's bytes.

Design rules (they decide whether a proxy in front of corral can be
desynchronised, so they are written down here, above the code they govern):

1. Bytes only. Nothing here calls int(), str.strip(), splitlines() or upper()
   on input that a regular expression has not validated first: those accept
   "+5", "1_0", "\\xa0", "\\x85" and fold non-ASCII.
2. We find the end of every head ourselves (the first CRLF CRLF) and validate
   the request line ourselves. Only then is the header block handed to llhttp
   (through httptools), behind a canonical request line, so llhttp's strict
   C validators check every header name and value. llhttp never sees a byte
   past the head: httptools cannot tell where a message ended inside a
   buffer, and pipelining needs exactly that.
3. Body framing is ours: Content-Length is counted here, and chunked bodies
   are decoded by the small strict decoder below, for the same reason.
4. The first error is final. The parser enters the ERROR state, raises the
   same error on every later call, and never parses another byte: the worker
   answers with the error's status and closes.
5. One message at a time. After a message ends, the parser pauses until the
   worker calls :meth:`RequestParser.start_next` (after it sent the
   response), so pipelined requests are answered in order and a pipelined
   request is never parsed while the previous one is being handled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import httptools

from corral.http import errors as E
from corral.http import proxy
from corral.http.proxy import ProxyInfo

# RFC 9110 token characters.
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = rb"[" + _TCHAR + rb"]+"

# method SP request-target SP HTTP-version, each part validated strictly:
# a target is visible ASCII only (clients must percent-encode anything else).
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# A byte that can never appear in a request line: CTLs (but CR, which ends
# it), DEL and non-ASCII. Lets a TLS handshake or binary junk be refused at
# once instead of being buffered until the line limit.
_BAD_LINE_BYTE = re.compile(rb"[\x00-\x0c\x0e-\x1f\x7f-\xff]")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#@]*)([^#]*)")
_AUTHORITY = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,19}")
_OWS = b" \t"
#: SP and HTAB as byte values (indexing bytes gives ints).
_WSP: Final = frozenset(b" \t")
# The same checks on latin-1 text (the fields are split as text). ASCII-only
# classes: they match exactly what the bytes patterns match.
_AUTHORITY_STR = re.compile(_AUTHORITY.pattern.decode("ascii"))
_REQUEST_LINE_STR = re.compile(_REQUEST_LINE.pattern.decode("ascii"))
_ABSOLUTE_FORM_STR = re.compile(_ABSOLUTE_FORM.pattern.decode("ascii"))
_CONTENT_LENGTH_STR = re.compile(_CONTENT_LENGTH.pattern.decode("ascii"))
#: Fields the parser itself must look at, by lowercased name.
_FRAMING_FIELDS: Final = {n: n for n in (
    "host", "content-length", "transfer-encoding", "content-type", "connection", "expect")}
#: What an underscore name may never pose as, even under header_map=dangerous:
#: the fields the parser frames and routes on (above), and the hop-by-hop ones
#: whose WSGI keys (CONTENT_LENGTH, CONTENT_TYPE, HTTP_TRANSFER_ENCODING...)
#: an app reads as the request's own. ``Content_Length: -1E23`` beside a real
#: ``Content-Length: 7`` must not make CONTENT_LENGTH lie about the body.
_NEVER_FROM_UNDERSCORE: Final = frozenset(
    (*_FRAMING_FIELDS, "te", "trailer", "upgrade", "keep-alive", "proxy-connection"))
#: Field name as sent -> "" (nothing special), "_" (holds an underscore) or
#: its framing role. Names repeat from request to request, so one dict
#: lookup replaces a lower() and two tests; bounded so that a client making
#: up names cannot grow it.
_NAME_KINDS: dict[str, str] = {}
_NAME_KINDS_MAX: Final = 2048


#: Host values already found valid: the same few hosts arrive all day.
_VALID_HOSTS: set[str] = set()
#: The Connection values nearly every request carries, already split.
_CONNECTION_TOKENS: Final = {
    value: frozenset({value.lower()})
    for value in ("keep-alive", "Keep-Alive", "close", "Close", "upgrade", "Upgrade")
}


def _name_kind(name: str) -> str:
    kind = "_" if "_" in name else _FRAMING_FIELDS.get(name.lower(), "")
    if len(_NAME_KINDS) < _NAME_KINDS_MAX:
        _NAME_KINDS[name] = kind
    return kind


#: A whole field line as sent -> ((name, value), kind). Most lines of a
#: request repeat byte for byte in the next one (User-Agent, Accept...,
#: Host), so one dict lookup replaces a partition, a strip and the name
#: lookup, and the (immutable) pair is shared. Only lines llhttp accepted
#: get here, and the entry is a pure function of the line. Short lines
#: only, and cleared when full: memory stays bounded (about 1 MiB) whatever
#: clients send, and the cache follows the traffic of the day.
_FIELD_LINES: dict[str, tuple[tuple[str, str], str]] = {}
_FIELD_LINES_MAX: Final = 4096
_FIELD_LINE_CACHED_LEN: Final = 160

#: A request line as sent -> its checked parts (method, target, path, query,
#: version, host, target scheme). The lines of a site's busy pages, its API
#: calls and its health checks repeat all day, and a lookup replaces the
#: regex match and the checks of _judge_request_line. Only valid lines get
#: here; bounded and cleared when full, as _FIELD_LINES is. An entry holds
#: the line and up to three slices of it (about 1 KiB for the longest), so
#: a client sending nothing but new lines grows it to about 1 MiB at most.
_RequestLineParts = tuple[str, str, str, str, str, str | None, str | None]
_REQUEST_LINES: dict[str, _RequestLineParts] = {}
_REQUEST_LINES_MAX: Final = 1024
_REQUEST_LINE_CACHED_LEN: Final = 200


def _field_line(line: str) -> tuple[tuple[str, str], str]:
    name, _, value = line.partition(":")
    kind = _NAME_KINDS.get(name)
    if kind is None:
        kind = _name_kind(name)
    entry = ((name, value.strip(" \t")), kind)
    if len(line) <= _FIELD_LINE_CACHED_LEN:
        if len(_FIELD_LINES) >= _FIELD_LINES_MAX:
            _FIELD_LINES.clear()
        _FIELD_LINES[line] = entry
    return entry

# Chunked framing (RFC 9112 section 7.1). Extensions are allowed by the
# grammar but bounded by MAX_CHUNK_LINE; nothing reads them.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = (
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})" + _CHUNK_EXT)
_FIELD_VALUE = rb"(?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
_TRAILER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*")

#: Longer methods are answered 501: no registered method comes close (the
#: longest, VERSION-CONTROL, has 15 bytes) and it bounds what we log.
MAX_METHOD: Final = 64
#: The methods no policy ever refuses (IANA's registry, the common ones):
#: the per-request check is one set lookup for them.
_USUAL_METHODS: Final = frozenset({
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH",
    "MKCALENDAR", "ACL", "MERGE", "CHECKOUT", "CHECKIN", "UPDATE", "LABEL", "BIND", "UNBIND",
    "REBIND", "LINK", "UNLINK", "QUERY",
})
#: gunicorn's "unconventional" mark: a lowercase letter in a method.
_LOWERCASE: Final = re.compile(r"[a-z]")
#: A chunk-size line with extensions longer than this is refused (400): the
#: extensions are never used, so there is no reason to buffer much of them.
MAX_CHUNK_LINE: Final = 4096
#: What llhttp sees in place of the real request line: a method and a version
#: it knows, so that any RFC 9110 token method can be served.
_CANONICAL_LINE: Final = b"GET / HTTP/1.1\r\n"
_CANONICAL_LEN: Final = len(_CANONICAL_LINE)
#: Fields that must never arrive in a trailer: they change framing or routing.
_FORBIDDEN_TRAILERS: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})


@dataclass(slots=True)
class ParserLimits:
    """The limits and leniencies of one parser (gunicorn's names and defaults)."""

    limit_request_line: int = 4094
    limit_request_fields: int = 100
    limit_request_field_size: int = 8190
    #: 0 means no limit.
    limit_request_body: int = 0
    permit_obsolete_folding: bool = False
    #: What to do with a header whose name holds "_": "drop", "refuse", "dangerous".
    header_map: str = "drop"
    #: PROXY protocol header before the first request: "off", "v1", "v2", "auto".
    proxy_protocol: str = "off"
    #: Serve any RFC 9110 token as a method; by default (gunicorn's) a method
    #: with a lowercase letter, or shorter than 3 or longer than 20 bytes, is 400.
    permit_unconventional_http_method: bool = False
    #: Upper-case the method (only reaches lowercase ones when they are permitted).
    casefold_http_method: bool = False
    #: Serve an HTTP/1.1 request without Host (RFC 9112 section 3.2 says 400;
    #: gunicorn serves it), for old clients behind a trusted proxy.
    permit_missing_host: bool = False


@dataclass(slots=True)
class RequestHead:
    """A validated request head. Strings are latin-1 decodings of the wire bytes."""

    method: str
    target: str
    path: str
    query: str
    #: "HTTP/1.0" or "HTTP/1.1" (any other 1.x is answered as 1.1).
    version: str
    headers: list[tuple[str, str]]
    #: From the absolute-form target if there is one, else the Host field.
    host: str | None
    #: "http" or "https" when the target was in absolute form.
    target_scheme: str | None
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    #: Names with "_" that were dropped under header_map=drop, for the log.
    dropped: list[str] = field(default_factory=list)
    #: The Connection field has the "upgrade" token (RFC 9110 7.8).
    upgrade: bool = False
    #: The request's WSGI environ, set before pre_request runs (corral.serve.cycle.before_app).
    environ: dict[str, Any] | None = None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def get(self, name: str) -> str | None:
        """The first field named ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


@dataclass(slots=True)
class EndOfMessage:
    #: Trailer fields of a chunked body. Read-only: the instance for messages
    #: without trailers is shared (consumers copy before handing them on).
    trailers: list[tuple[str, str]] = field(default_factory=list)


#: Limits of a parser made without any (tests, tools); never changed.
_DEFAULT_LIMITS: Final = ParserLimits()
#: The end of every message without trailers; shared, since nothing in it changes.
_END_WITHOUT_TRAILERS: Final = EndOfMessage([])


class ParserSignal:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: More bytes are needed: call feed() (or feed(b"") at end of stream).
NEED_DATA: Final = ParserSignal("NEED_DATA")
#: The message ended; call start_next() after the response went out.
PAUSED: Final = ParserSignal("PAUSED")
#: The peer closed cleanly between two requests.
CONNECTION_CLOSED: Final = ParserSignal("CONNECTION_CLOSED")


class ClientDisconnected(Exception):
    """The peer closed in the middle of a request head: close without answering."""


class IncompleteBody(E.BadRequest):
    """The peer closed in the middle of a request body."""


class _Validator:
    """The protocol object llhttp gets: no callbacks at all.

    llhttp only validates the header block (token names, value bytes,
    line endings, Content-Length and Transfer-Encoding syntax); the fields
    are then split out of the validated block by plain bytes operations.
    Calling back into Python for every name and value cost three times as
    much as the whole C parse.
    """

    __slots__ = ()


_VALIDATOR: Final = _Validator()


_HEAD, _BODY_LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _DONE, _ERROR = range(8)


class RequestParser:
    """Turns the bytes of one connection into request events.

    Usage: ``feed(data)`` whatever arrives (``feed(b"")`` at end of stream),
    then call ``next_event()`` until it returns ``NEED_DATA`` or ``PAUSED``.
    Events, in order for each request: one :class:`RequestHead`, zero or more
    ``bytes`` of body, one :class:`EndOfMessage`. Errors are raised as
    :class:`corral.http.errors.HTTPError` subclasses (answer, then close) or
    :class:`ClientDisconnected` (close without answering).
    """

    # Per-connection state starts as these class attributes: a sync worker
    # makes a parser for every request, so __init__ sets only what differs.
    #: What the PROXY header said, once read.
    proxy: ProxyInfo | None = None
    _eof = False
    _state = _HEAD
    _error: Exception | None = None
    _scan = 0  # how far the current partial head was checked
    _line_end = -1  # end of the request line once seen
    _header_lines = 0
    _remaining = 0  # body bytes left (length or current chunk)
    _body_read = 0
    _trailers: list[tuple[str, str]]  # set when a chunked body starts
    #: A piece of a Content-Length body fed while the buffer was empty and
    #: no longer than what the body still lacks: returned as it came, not
    #: copied into the buffer and out again (a large upload arrives so).
    _piece: bytes | None = None

    def __init__(self, limits: ParserLimits | None = None, *, proxy_trusted: bool = True) -> None:
        """:param proxy_trusted: whether the peer may send a PROXY header (--proxy-allow-from)."""
        self.limits = limits = limits or _DEFAULT_LIMITS
        self._proxy_pending = limits.proxy_protocol != "off"
        self._proxy_trusted = proxy_trusted
        self._buf = bytearray()

    # -- input --------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if data:
            if self._piece is not None:
                self._buf += self._piece  # the buffer was empty: order kept
                self._piece = None
            elif (self._state == _BODY_LENGTH and not self._buf and type(data) is bytes
                    and len(data) <= self._remaining):
                self._piece = data
                return
            self._buf += data
        else:
            self._eof = True

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Unparsed bytes and whether the peer closed; for tests and draining."""
        if self._piece is not None:
            return self._piece, self._eof
        return bytes(self._buf), self._eof

    @property
    def has_unread(self) -> bool:
        """Bytes were received that no event has returned yet (a pipelined request, say)."""
        return bool(self._buf) or self._piece is not None

    @property
    def unread_size(self) -> int:
        """How many received bytes no event has returned yet."""
        piece = self._piece
        return len(self._buf) + (0 if piece is None else len(piece))

    @property
    def in_head(self) -> bool:
        """True while a head has started to arrive but is not complete."""
        return self._state == _HEAD and bool(self._buf)

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def message_received(self) -> bool:
        """Every byte of the current request has arrived (its end may not be returned yet).

        Then any byte received after it, here or still in the kernel, is the
        start of the next request (see corral.serve.retirement).
        """
        state = self._state
        return state == _DONE or (state == _BODY_LENGTH and self._remaining == 0)

    def start_next(self) -> None:
        """Allow the next pipelined request to be parsed."""
        if self._state != _DONE:
            raise RuntimeError(f"start_next() in state {self._state}")
        self._state = _HEAD

    # -- events -------------------------------------------------------------

    def next_event(self) -> RequestHead | bytes | EndOfMessage | ParserSignal:
        state = self._state
        try:
            if self._proxy_pending and state == _HEAD:
                if not self._read_proxy_header():
                    return NEED_DATA
            if state == _HEAD:
                return self._next_head()
            if state == _BODY_LENGTH:
                return self._next_length_data()
            if _CHUNK_SIZE <= state <= _TRAILERS:
                return self._next_chunked()
            if state == _DONE:
                return PAUSED
            assert self._error is not None
            raise self._error
        except (E.HTTPError, ClientDisconnected) as exc:
            self._state = _ERROR
            self._error = exc
            raise

    def _read_proxy_header(self) -> bool:
        if not self._proxy_trusted:
            raise E.Forbidden("PROXY protocol header from a peer not in proxy_allow_from")
        if not self._buf:
            # Nothing yet; or a clean close, which _next_head reports.
            return self._eof
        parsed = proxy.parse(self._buf, self.limits.proxy_protocol, self._eof)
        if parsed is None:
            return False
        consumed, self.proxy = parsed
        del self._buf[:consumed]
        self._proxy_pending = False
        return True

    # -- head -----------------------------------------------------------------

    def _next_head(self) -> RequestHead | ParserSignal:
        buf = self._buf
        if not buf:
            # The usual first call of a connection, before anything arrived.
            return CONNECTION_CLOSED if self._eof else NEED_DATA
        if self._line_end < 0 and buf[0] == 13 and buf[:2] == b"\r\n":  # 13: CR
            # Leading empty lines before a request line are ignored (RFC 9112 2.2).
            # Tested on _line_end, not on _scan == 0: a CR and its LF may come
            # in two reads, and a request line is never empty, so a head that
            # starts with CRLF before its request line ended is such a line.
            while buf[:2] == b"\r\n":
                del buf[:2]
            self._scan = 0
        end = buf.find(b"\r\n\r\n", max(self._scan - 3, 0))
        if end < 0:
            if self._eof:
                if not buf or buf == b"\r":
                    return CONNECTION_CLOSED
                raise ClientDisconnected("connection closed in the middle of a request head")
            self._check_partial_head()
            return NEED_DATA
        # One latin-1 decoding of the head serves the request line and the
        # fields (1 byte = 1 char, and every check below is ASCII-only).
        text = buf[:end].decode("latin-1")
        line_end = text.find("\r\n")
        if line_end < 0:  # a request line and no fields
            line_end = end
        if line_end > self.limits.limit_request_line:
            raise E.URITooLong("request line too long")
        head = self._parse_request_line(text[:line_end])
        # What llhttp gets, built with one copy: a line it knows, then the fields as sent.
        block = _CANONICAL_LINE + buf[line_end + 2 : end + 4]
        del buf[: end + 4]
        if self._scan:  # the head came in pieces: reset what the partial checks kept
            self._scan = 0
            self._line_end = -1
            self._header_lines = 0
        return self._parse_fields(head, block, text[line_end + 2 :].split("\r\n") if line_end < end else [])

    def _check_partial_head(self) -> None:
        """Refuse an incomplete head as early as its bytes allow."""
        buf = self._buf
        lim = self.limits
        start = max(self._scan - 1, 0)
        if self._line_end < 0:
            line_end = buf.find(b"\r\n", start)
            # Search the request line only: the LF of its CRLF, and HTAB or
            # obs-text in the header fields that may follow in the same read,
            # are no reason to refuse it (llhttp judges the fields).
            bad = _BAD_LINE_BYTE.search(buf, start, len(buf) if line_end < 0 else line_end)
            if bad is not None:
                raise E.BadRequest("invalid byte in request line")
            if line_end < 0:
                if b"\n" in buf[start:]:
                    raise E.BadRequest("request line ends in a bare LF")
                if len(buf) > lim.limit_request_line + 1:
                    raise E.URITooLong("request line too long")
                self._scan = len(buf)
                return
            if line_end > lim.limit_request_line:
                raise E.URITooLong("request line too long")
            # Answer 400/501/505 now rather than after the headers arrive.
            self._parse_request_line(buf[:line_end].decode("latin-1"))
            self._line_end = line_end
            start = line_end + 2
        if _BARE_LF.search(buf, max(start, self._line_end + 1)) is not None:
            raise E.BadRequest("header line ends in a bare LF")
        self._header_lines += buf.count(b"\r\n", max(start, self._line_end + 2))
        if self._header_lines > lim.limit_request_fields:
            raise E.HeaderFieldsTooLarge("too many header fields")
        last_line = len(buf) - (buf.rfind(b"\n") + 1)
        # The most a complete head may take; past it the answer is 431.
        max_head = (lim.limit_request_line + 2
                    + lim.limit_request_fields * (lim.limit_request_field_size + 2) + 2)
        if last_line > lim.limit_request_field_size + 2 or len(buf) > max_head:
            raise E.HeaderFieldsTooLarge("header field too large")
        self._scan = len(buf)

    def _judge_method(self, method: str) -> str:
        """gunicorn's method policy, for a method that is no registered one (any RFC 9110 token here)."""
        lim = self.limits
        if not lim.permit_unconventional_http_method and (
                not 3 <= len(method) <= 20 or _LOWERCASE.search(method) is not None):
            raise E.BadRequest(f"unconventional method {method[:20]!r} "
                               "(permit_unconventional_http_method serves it)")
        return method.upper() if lim.casefold_http_method else method

    def _parse_request_line(self, line: str) -> RequestHead:
        """``line``: the latin-1 text of the request line (ASCII-only patterns judge it)."""
        parts = _REQUEST_LINES.get(line)
        if parts is None:
            parts = _judge_request_line(line)
            if len(line) <= _REQUEST_LINE_CACHED_LEN:
                if len(_REQUEST_LINES) >= _REQUEST_LINES_MAX:
                    _REQUEST_LINES.clear()
                _REQUEST_LINES[line] = parts
        method, target, path, query, version, host, scheme = parts
        if method not in _USUAL_METHODS:
            method = self._judge_method(method)
        # Positional: measurably cheaper than keywords on this per-request path.
        # Order: method, target, path, query, version, headers, host,
        # target_scheme, content_length, chunked, keep_alive, expect_continue.
        return RequestHead(method, target, path, query, version, [], host, scheme,
                           None, False, version == "HTTP/1.1", False)

    def _parse_fields(self, head: RequestHead, block: bytes, lines: list[str]) -> RequestHead:
        """``block``: _CANONICAL_LINE, then the field lines and the empty line as sent;
        ``lines``: the field lines as latin-1 text."""
        lim = self.limits
        if block[_CANONICAL_LEN] in _WSP:
            raise E.BadRequest("whitespace before the first header field")
        # Field limits count lines as sent, as _check_partial_head does: a
        # dropped "_" field or an obs-fold line counts, and so does padding
        # that llhttp and on_header strip. Otherwise the answer would depend
        # on whether the head arrived in one read or trickled in.
        if len(lines) > lim.limit_request_fields:
            raise E.HeaderFieldsTooLarge("too many header fields")
        # No line is longer than the block: look at each only when it could be.
        if (len(block) - _CANONICAL_LEN > lim.limit_request_field_size
                and max(map(len, lines)) > lim.limit_request_field_size):
            raise E.HeaderFieldsTooLarge("header field too large")
        if lim.permit_obsolete_folding:
            # The opt-in leniency: an obs-fold becomes one SP (RFC 9112 5.2).
            block = re.sub(rb"\r\n[ \t]+", b" ", block)
            lines = block[_CANONICAL_LEN:].decode("latin-1").split("\r\n")
            del lines[-2:]
        parser = httptools.HttpRequestParser(_VALIDATOR)
        try:
            parser.feed_data(block)
        except httptools.HttpParserUpgrade:
            pass  # Upgrade is not served over WSGI: the request is handled as usual.
        except httptools.HttpParserError as exc:
            raise E.BadRequest(f"malformed header: {exc}") from None
        # llhttp accepted the block: every line is token ":" OWS value OWS, so
        # plain string operations on its latin-1 text cannot misread it.
        headers: list[tuple[str, str]] = []
        dropped = head.dropped
        host: str | None = None
        hosts = 0
        te: list[str] = []
        connection: list[str] = []
        expect: list[str] = []
        content_length: str | None = None
        content_types = 0
        header_map = lim.header_map
        append = headers.append
        cached = _FIELD_LINES
        for line in lines:
            entry = cached.get(line)
            if entry is None:
                entry = _field_line(line)
            pair, kind = entry
            if kind:
                name, value = pair
                if kind == "_":
                    # X_Forwarded_For must never pose as X-Forwarded-For in the environ.
                    if header_map == "drop":
                        dropped.append(name)
                        continue
                    if header_map == "refuse":
                        raise E.BadRequest("header name with '_'")
                    if name.lower().replace("_", "-") in _NEVER_FROM_UNDERSCORE:
                        dropped.append(name)  # dangerous, but never for framing (logged)
                        continue
                    append(pair)
                    continue
                if kind == "host":
                    hosts += 1
                    if host is None:
                        host = value
                elif kind == "content-length":
                    content_length = value
                elif kind == "transfer-encoding":
                    te.append(value)
                elif kind == "content-type":
                    content_types += 1
                elif kind == "connection":
                    connection.append(value)
                else:
                    expect.append(value)
            append(pair)
        head.headers = headers
        http11 = head.version == "HTTP/1.1"

        if hosts > 1:
            raise E.BadRequest("more than one Host field")
        if host is None:
            if http11 and not self.limits.permit_missing_host:
                raise E.BadRequest("HTTP/1.1 request without Host")
        else:
            if host not in _VALID_HOSTS:
                if _AUTHORITY_STR.fullmatch(host) is None:
                    raise E.BadRequest("malformed Host field")
                if len(_VALID_HOSTS) < _NAME_KINDS_MAX:
                    _VALID_HOSTS.add(host)
            if head.host is None:
                head.host = host
        if content_types > 1:
            raise E.BadRequest("more than one Content-Type field")

        if te:
            if content_length is not None:
                raise E.BadRequest("both Content-Length and Transfer-Encoding")
            if not http11:
                raise E.BadRequest("Transfer-Encoding in an HTTP/1.0 request")
            # Empty list elements ("chunked, ," or ", chunked") are ignored (RFC 9110 5.6.1).
            codings = [c for c in (c.strip(" \t").lower() for c in ",".join(te).split(",")) if c]
            if not codings:
                raise E.BadRequest("empty Transfer-Encoding")
            if codings[-1] != "chunked" or codings.count("chunked") != 1:
                raise E.BadRequest("Transfer-Encoding must end in a single chunked")
            if len(codings) > 1:
                raise E.MethodNotImplemented("unsupported transfer coding")
            head.chunked = True
        elif content_length is not None:
            if _CONTENT_LENGTH_STR.fullmatch(content_length) is None:
                raise E.BadRequest("malformed Content-Length")
            length = int(content_length)
            head.content_length = length
            if lim.limit_request_body and length > lim.limit_request_body:
                raise E.ContentTooLarge("request body larger than limit_request_body")

        if connection:
            tokens: frozenset[str] | set[str] | None = (
                _CONNECTION_TOKENS.get(connection[0]) if len(connection) == 1 else None)
            if tokens is None:
                tokens = {t.strip(" \t").lower() for t in ",".join(connection).split(",")}
            if "close" in tokens:
                head.keep_alive = False
            elif not http11:
                head.keep_alive = "keep-alive" in tokens
            # Asked to switch protocols (a WebSocket handshake): the ASGI
            # worker looks here instead of scanning the fields again.
            head.upgrade = "upgrade" in tokens

        for value in expect:
            if value.lower() == "100-continue":
                head.expect_continue = http11
            else:
                raise E.ExpectationFailed("unsupported expectation")

        if head.chunked:
            self._state = _CHUNK_SIZE
            self._body_read = 0
            self._trailers = []
        elif head.content_length:
            self._state = _BODY_LENGTH
            self._remaining = head.content_length
        else:
            self._state = _BODY_LENGTH
            self._remaining = 0
        return head

    # -- bodies ---------------------------------------------------------------

    def _take(self, n: int) -> bytes:
        buf = self._buf
        if n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        return data

    def _next_length_data(self) -> bytes | EndOfMessage | ParserSignal:
        if self._remaining == 0:
            self._state = _DONE
            return _END_WITHOUT_TRAILERS
        piece = self._piece
        if piece is not None:
            self._piece = None
            self._remaining -= len(piece)
            return piece
        if self._buf:
            data = self._take(self._remaining)
            self._remaining -= len(data)
            return data
        if self._eof:
            raise IncompleteBody("connection closed in the middle of the body")
        return NEED_DATA

    def _next_chunked(self) -> bytes | EndOfMessage | ParserSignal:
        buf = self._buf
        while True:
            state = self._state
            if state == _CHUNK_DATA:
                if not buf:
                    break
                data = self._take(self._remaining)
                self._remaining -= len(data)
                if self._remaining == 0:
                    self._state = _CHUNK_CRLF
                return data
            if state == _CHUNK_CRLF:
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise E.BadRequest("chunk data not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
                continue
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if b"\n" in buf:
                    raise E.BadRequest("bare LF in chunked framing")
                # "+ 1": the CR of the line's CRLF may be here already, so a
                # line of exactly the limit is not refused early; and a long
                # trailer is 431 as it is when it arrives whole (_check_trailer).
                if state == _CHUNK_SIZE:
                    if len(buf) > MAX_CHUNK_LINE + 1:
                        raise E.BadRequest("chunk-size line too long")
                elif len(buf) > self.limits.limit_request_field_size + 1:
                    raise E.HeaderFieldsTooLarge("trailer field too large")
                break
            line = bytes(buf[:line_end])
            del buf[: line_end + 2]
            if state == _CHUNK_SIZE:
                if line_end > MAX_CHUNK_LINE:
                    raise E.BadRequest("chunk-size line too long")
                m = _CHUNK_LINE.fullmatch(line)
                if m is None:
                    raise E.BadRequest("malformed chunk-size line")
                size = int(m.group(1), 16)
                self._body_read += size
                limit = self.limits.limit_request_body
                if limit and self._body_read > limit:
                    raise E.ContentTooLarge("request body larger than limit_request_body")
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._state = _CHUNK_DATA
                    self._remaining = size
                continue
            # Trailer section: lines until an empty one.
            if not line:
                self._state = _DONE
                return EndOfMessage(self._trailers)
            self._check_trailer(line)
        if self._eof:
            raise IncompleteBody("connection closed in the middle of a chunked body")
        return NEED_DATA

    def _check_trailer(self, line: bytes) -> None:
        lim = self.limits
        if len(line) > lim.limit_request_field_size:
            raise E.HeaderFieldsTooLarge("trailer field too large")
        if len(self._trailers) >= lim.limit_request_fields:
            raise E.HeaderFieldsTooLarge("too many trailer fields")
        m = _TRAILER_LINE.fullmatch(line)
        if m is None:
            raise E.BadRequest("malformed trailer field")
        name, value = m.groups()
        if name.lower() in _FORBIDDEN_TRAILERS:
            raise E.BadRequest("forbidden field in trailers")
        self._trailers.append((name.decode("ascii"), value.decode("latin-1")))


def _judge_request_line(line: str) -> _RequestLineParts:
    """Check a request line (its latin-1 text) and split it; raises the HTTPError it deserves."""
    m = _REQUEST_LINE_STR.fullmatch(line)
    if m is None:
        raise E.BadRequest("malformed request line")
    method, target, major, minor = m.groups()
    if len(method) > MAX_METHOD:
        raise E.MethodNotImplemented("method too long")
    if major != "1":
        if major == "0":
            raise E.BadRequest("HTTP/0.x is not supported")
        raise E.VersionNotSupported("only HTTP/1.x is served here")
    version = "HTTP/1.0" if minor == "0" else "HTTP/1.1"
    host: str | None = None
    scheme: str | None = None
    if target[0] == "/":
        if "#" in target:
            raise E.BadRequest("fragment in request target")
        if method == "CONNECT":
            raise E.BadRequest("CONNECT needs an authority-form target")
        path, _, query = target.partition("?")
    elif target == "*":
        if method != "OPTIONS":
            raise E.BadRequest("asterisk-form target is only for OPTIONS")
        path, query = "*", ""
    elif method == "CONNECT":
        # authority-form = uri-host ":" port (RFC 9112 3.2.3); the colons
        # inside an IPv6 literal are no port, so look after its "]".
        if (_AUTHORITY_STR.fullmatch(target) is None or ":" not in target.rpartition("]")[2]
                or target[0] == ":"):  # no host: ":443"
            raise E.BadRequest("malformed CONNECT target")
        path, query, host = "", "", target
    else:
        am = _ABSOLUTE_FORM_STR.fullmatch(target)
        if am is None:
            raise E.BadRequest("malformed request target")
        scheme, authority, rest = am.groups()
        scheme = scheme.lower()
        if scheme not in ("http", "https") or not authority:
            raise E.BadRequest("absolute-form target must be an http(s) URI")
        if _AUTHORITY_STR.fullmatch(authority) is None:
            raise E.BadRequest("malformed authority in request target")
        if rest and rest[0] not in "/?":
            raise E.BadRequest("malformed request target")
        path, _, query = rest.partition("?")
        path = path or "/"
        host = authority
    return method, target, path, query, version, host, scheme
