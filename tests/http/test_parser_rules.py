"""RequestParser: request line, limits, header fields, Content-Length, keep-alive,
pipelining, errors and end of stream.

Every case runs three times through the ``parse`` fixture (whole, bytewise,
random splits; see conftest.py), so each rule is also a rule about partial input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from corral.http.errors import HTTPError
from corral.http.parser import (
    CONNECTION_CLOSED,
    NEED_DATA,
    PAUSED,
    ClientDisconnected,
    EndOfMessage,
    IncompleteBody,
    ParserLimits,
    RequestHead,
    RequestParser,
)

#: The fixture ``parse(data, limits=None, *, eof=False, pipeline=True) -> Outcome``.
Parse = Callable[..., Any]

HOST = b"Host: example.com"


def req(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    """A request: ``line``, ``fields``, the empty line, ``body``."""
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def line_of(length: int) -> bytes:
    """A valid request line of exactly ``length`` bytes."""
    line = b"GET /" + b"a" * (length - 14) + b" HTTP/1.1"
    assert len(line) == length
    return line


def case(id: str, *values: object) -> Any:
    return pytest.param(*values, id=id)


# -- request line -------------------------------------------------------------

ACCEPTED_LINES = [
    case(
        "origin-form",
        b"GET / HTTP/1.1",
        {
            "method": "GET",
            "target": "/",
            "path": "/",
            "query": "",
            "version": "HTTP/1.1",
            "host": "example.com",
            "target_scheme": None,
        },
    ),
    case("token-method", b"FOO-BAR /x HTTP/1.1", {"method": "FOO-BAR", "path": "/x"}),
    case("query", b"GET /a/b?x=1&y=2 HTTP/1.1", {"path": "/a/b", "query": "x=1&y=2"}),
    case("second-question-mark", b"GET /a?b?c HTTP/1.1", {"path": "/a", "query": "b?c"}),
    case("empty-query", b"GET /a? HTTP/1.1", {"path": "/a", "query": "", "target": "/a?"}),
    case("percent-encoding-kept", b"GET /%7Eu/a%20b HTTP/1.1", {"path": "/%7Eu/a%20b"}),
    case(
        "absolute-form-no-path",
        b"GET http://example.org HTTP/1.1",
        {"host": "example.org", "path": "/", "query": "", "target_scheme": "http"},
    ),
    case(
        "absolute-form-https",
        b"GET https://example.org:8443/p?q=1 HTTP/1.1",
        {"host": "example.org:8443", "path": "/p", "query": "q=1", "target_scheme": "https"},
    ),
    case(
        "absolute-form-scheme-case",
        b"GET HTTP://Example.ORG/ HTTP/1.1",
        {"host": "Example.ORG", "path": "/", "target_scheme": "http"},
    ),
    case("absolute-form-query-only", b"GET http://example.org?q HTTP/1.1", {"path": "/", "query": "q"}),
    case("absolute-form-ipv6", b"GET http://[::1]:8080/x HTTP/1.1", {"host": "[::1]:8080", "path": "/x"}),
    case("asterisk-form", b"OPTIONS * HTTP/1.1", {"target": "*", "path": "*", "query": ""}),
    case(
        "authority-form",
        b"CONNECT example.com:443 HTTP/1.1",
        {"method": "CONNECT", "host": "example.com:443", "path": "", "target": "example.com:443"},
    ),
    case("authority-form-ipv6", b"CONNECT [::1]:443 HTTP/1.1", {"host": "[::1]:443"}),
    case("http-1.0", b"GET / HTTP/1.0", {"version": "HTTP/1.0"}),
    case("http-1.2-as-1.1", b"GET / HTTP/1.2", {"version": "HTTP/1.1"}),
    case("http-1.9-as-1.1", b"GET / HTTP/1.9", {"version": "HTTP/1.1"}),
]


@pytest.mark.parametrize(("line", "expected"), ACCEPTED_LINES)
def test_request_line_accepted(parse: Parse, line: bytes, expected: dict[str, object]) -> None:
    out = parse(req(line, HOST))
    head = out.head
    assert out.events == [head, EndOfMessage()]
    assert {name: getattr(head, name) for name in expected} == expected


REFUSED_LINES = [
    case("method-65-bytes", b"M" * 65 + b" / HTTP/1.1", 501),
    case("method-1000-bytes", b"M" * 1000 + b" / HTTP/1.1", 501),
    case("method-not-token", b"GE(T / HTTP/1.1", 400),
    case("method-non-ascii", b"G\xc9T / HTTP/1.1", 400),
    case("double-space-after-method", b"GET  / HTTP/1.1", 400),
    case("double-space-after-target", b"GET /  HTTP/1.1", 400),
    case("tab-after-method", b"GET\t/ HTTP/1.1", 400),
    case("tab-after-target", b"GET /\tHTTP/1.1", 400),
    case("leading-space", b" GET / HTTP/1.1", 400),
    case("trailing-space", b"GET / HTTP/1.1 ", 400),
    case("no-target", b"GET HTTP/1.1", 400),
    case("no-version", b"GET /", 400),
    case("relative-target", b"GET a/b HTTP/1.1", 400),
    case("absolute-form-ftp", b"GET ftp://example.org/ HTTP/1.1", 400),
    case("absolute-form-empty-authority", b"GET http:///x HTTP/1.1", 400),
    case("absolute-form-no-slashes", b"GET http:/x HTTP/1.1", 400),
    case("absolute-form-userinfo", b"GET http://user@example.org/ HTTP/1.1", 400),
    case("absolute-form-bad-port", b"GET http://example.org:x/ HTTP/1.1", 400),
    case("asterisk-form-not-options", b"GET * HTTP/1.1", 400),
    case("asterisk-with-path", b"OPTIONS */x HTTP/1.1", 400),
    case("authority-form-not-connect", b"GET example.com:443 HTTP/1.1", 400),
    case("connect-origin-form", b"CONNECT / HTTP/1.1", 400),
    case("connect-without-port", b"CONNECT example.com HTTP/1.1", 400),
    case("connect-ipv6-without-port", b"CONNECT [::1] HTTP/1.1", 400),
    case("connect-absolute-form", b"CONNECT http://example.com:443/ HTTP/1.1", 400),
    case("http-2.0", b"GET / HTTP/2.0", 505),
    case("http-3.0", b"GET / HTTP/3.0", 505),
    case("http-9.1", b"GET / HTTP/9.1", 505),
    case("http-0.9-version", b"GET / HTTP/0.9", 400),
    case("junk-version", b"GET / JUNK/1.1", 400),
    case("lowercase-http", b"GET / http/1.1", 400),
    case("https-version", b"GET / HTTPS/1.1", 400),
    case("version-no-minor", b"GET / HTTP/1", 400),
    case("version-two-digit-minor", b"GET / HTTP/1.10", 400),
    case("version-no-dot", b"GET / HTTP/11", 400),
    case("version-letter", b"GET / HTTP/1.x", 400),
    case("version-trailing-junk", b"GET / HTTP/1.1x", 400),
    case("utf8-in-target", b"GET /caf\xc3\xa9 HTTP/1.1", 400),
    case("latin1-in-target", b"GET /\xa0 HTTP/1.1", 400),
    case("nul-in-target", b"GET /\x00 HTTP/1.1", 400),
    case("esc-in-target", b"GET /\x1b HTTP/1.1", 400),
    case("del-in-target", b"GET /\x7f HTTP/1.1", 400),
    case("vt-in-target", b"GET /\x0b HTTP/1.1", 400),
    case("bare-cr-in-line", b"GET /\r HTTP/1.1", 400),
    case("fragment", b"GET /a#frag HTTP/1.1", 400),
    case("empty-fragment", b"GET /a?q# HTTP/1.1", 400),
    case("fragment-absolute-form", b"GET http://example.org/a#f HTTP/1.1", 400),
]


@pytest.mark.parametrize("whole_head", [True, False], ids=["head", "line-only"])
@pytest.mark.parametrize(("line", "status"), REFUSED_LINES)
def test_request_line_refused(parse: Parse, line: bytes, status: int, whole_head: bool) -> None:
    # A bad request line is answered as soon as its CRLF arrives: the client
    # need not send (and the server need not buffer) the rest of the head.
    data = req(line, HOST) if whole_head else line + b"\r\n"
    out = parse(data)
    assert out.status == status
    assert out.events == []


REFUSED_STREAMS = [
    case("http-0.9-request", b"GET /\r\n", 400),
    case("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: example.com\n\n", 400),
    case("bare-lf-after-line", b"GET / HTTP/1.1\nHost: example.com\r\n\r\n", 400),
    case("bare-lf-after-field", b"GET / HTTP/1.1\r\nHost: example.com\n\r\n", 400),
    case("bare-lf-at-end", b"GET / HTTP/1.1\r\nHost: example.com\r\n\n", 400),
    case("bare-lf-head-incomplete", b"GET / HTTP/1.1\r\nHost: example.com\nX: y", 400),
    case("bare-lf-line-incomplete", b"GET / HTTP/1.1\n", 400),
    case("bare-lf-before-request", b"\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    case("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    case("nul-first", b"\x00GET / HTTP/1.1", 400),
]


@pytest.mark.parametrize(("data", "status"), REFUSED_STREAMS)
def test_stream_refused(parse: Parse, data: bytes, status: int) -> None:
    out = parse(data)
    assert (out.status, out.events) == (status, [])


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n", b"\r\n" * 7])
def test_leading_empty_lines_ignored(parse: Parse, prefix: bytes) -> None:
    out = parse(prefix + req(b"GET /x HTTP/1.1", HOST))
    assert out.head.path == "/x"
    assert out.events == [out.head, EndOfMessage()]


# -- limits -------------------------------------------------------------------

#: How a limit test ends its stream: a whole head, or a head that never ends
#: (the parser must refuse it from its partial-head checks).
HEAD_ENDINGS = [
    pytest.param(b"\r\n" + HOST + b"\r\n\r\n", id="whole-head"),
    pytest.param(b"\r\n", id="line-only"),
]


@pytest.mark.parametrize("ending", HEAD_ENDINGS)
@pytest.mark.parametrize("limit", [4094, 100])
def test_limit_request_line(parse: Parse, limit: int, ending: bytes) -> None:
    limits = ParserLimits(limit_request_line=limit)
    assert parse(line_of(limit) + ending, limits).error is None
    assert parse(line_of(limit + 1) + ending, limits).status == 414


@pytest.mark.parametrize("limit", [4094, 100])
def test_limit_request_line_unterminated(parse: Parse, limit: int) -> None:
    # A line that has not ended yet is refused once it cannot fit any more.
    limits = ParserLimits(limit_request_line=limit)
    assert parse(line_of(limit), limits).events == []
    assert parse(line_of(limit), limits).error is None
    assert parse(line_of(limit + 2), limits).status == 414
    assert parse(b"GET /" + b"a" * (3 * limit), limits).status == 414


def test_limit_request_line_default() -> None:
    assert ParserLimits().limit_request_line == 4094


def _fields(count: int) -> list[bytes]:
    return [HOST] + [b"X-Field-%d: v" % i for i in range(count - 1)]


@pytest.mark.parametrize("limit", [100, 5])
def test_limit_request_fields(parse: Parse, limit: int) -> None:
    limits = ParserLimits(limit_request_fields=limit)
    assert len(parse(req(b"GET / HTTP/1.1", *_fields(limit)), limits).head.headers) == limit
    assert parse(req(b"GET / HTTP/1.1", *_fields(limit + 1)), limits).status == 431


@pytest.mark.parametrize("limit", [100, 5])
def test_limit_request_fields_partial_head(parse: Parse, limit: int) -> None:
    limits = ParserLimits(limit_request_fields=limit)
    start = b"GET / HTTP/1.1\r\n"
    fits = parse(start + b"".join(f + b"\r\n" for f in _fields(limit)), limits)
    assert (fits.events, fits.error) == ([], None)
    assert parse(start + b"".join(f + b"\r\n" for f in _fields(limit + 1)), limits).status == 431


def test_limit_request_fields_counts_dropped_fields(parse: Parse) -> None:
    # A dropped field was still sent: it counts, or the answer would depend
    # on whether the head arrived in one piece (the partial check counts lines).
    limits = ParserLimits(limit_request_fields=3)
    assert parse(req(b"GET / HTTP/1.1", HOST, b"A_B: 1", b"C: 2"), limits).head.dropped == ["A_B"]
    assert parse(req(b"GET / HTTP/1.1", HOST, b"A_B: 1", b"C: 2", b"D: 3"), limits).status == 431


def test_limit_request_fields_counts_folded_lines(parse: Parse) -> None:
    limits = ParserLimits(limit_request_fields=3, permit_obsolete_folding=True)
    assert parse(req(b"GET / HTTP/1.1", HOST, b"A: 1", b" 2"), limits).head.get("A") == "1 2"
    assert parse(req(b"GET / HTTP/1.1", HOST, b"A: 1", b" 2", b"B: 3"), limits).status == 431


@pytest.mark.parametrize("limit", [8190, 64])
def test_limit_request_field_size(parse: Parse, limit: int) -> None:
    limits = ParserLimits(limit_request_field_size=limit)
    fits = b"X-Long: " + b"a" * (limit - 8)
    assert len(fits) == limit
    assert parse(req(b"GET / HTTP/1.1", HOST, fits), limits).head.get("X-Long") == "a" * (limit - 8)
    assert parse(req(b"GET / HTTP/1.1", HOST, fits + b"a"), limits).status == 431


@pytest.mark.parametrize("limit", [8190, 64])
def test_limit_request_field_size_partial_head(parse: Parse, limit: int) -> None:
    limits = ParserLimits(limit_request_field_size=limit)
    start = req(b"GET / HTTP/1.1", HOST)[:-2]  # the head has not ended
    assert parse(start + b"X-Long: " + b"a" * (limit - 8), limits).error is None
    assert parse(start + b"X-Long: " + b"a" * (limit + 2), limits).status == 431
    assert parse(start + b"X-Long: " + b"a" * (3 * limit), limits).status == 431


def test_limit_request_field_size_counts_whitespace(parse: Parse) -> None:
    # The field is measured as sent, padding included: the partial-head check
    # sees only raw bytes, and the answer must not depend on how they arrived.
    limits = ParserLimits(limit_request_field_size=64)
    assert parse(req(b"GET / HTTP/1.1", HOST, b"X: a" + b" " * 60), limits).head.get("X") == "a"
    assert parse(req(b"GET / HTTP/1.1", HOST, b"X: a" + b" " * 61), limits).status == 431
    assert parse(req(b"GET / HTTP/1.1", HOST, b"X:" + b" " * 61 + b"a"), limits).head.get("X") == "a"
    assert parse(req(b"GET / HTTP/1.1", HOST, b"X:" + b" " * 62 + b"a"), limits).status == 431
    assert parse(req(b"GET / HTTP/1.1", HOST, b"X: a" + b" " * 500), limits).status == 431


def test_limit_defaults() -> None:
    limits = ParserLimits()
    assert (limits.limit_request_fields, limits.limit_request_field_size) == (100, 8190)
    assert limits.limit_request_body == 0


@pytest.mark.parametrize("with_body", [True, False])
def test_limit_request_body_content_length(parse: Parse, with_body: bool) -> None:
    limits = ParserLimits(limit_request_body=10)
    ok = parse(req(b"POST / HTTP/1.1", HOST, b"Content-Length: 10", body=b"0123456789"), limits)
    assert ok.bodies == [b"0123456789"]
    body = b"0123456789a" if with_body else b""
    # Refused from the head alone, before any of the body is read.
    out = parse(req(b"POST / HTTP/1.1", HOST, b"Content-Length: 11", body=body), limits)
    assert (out.status, out.events) == (413, [])


def test_limit_request_body_zero_means_no_limit(parse: Parse) -> None:
    out = parse(req(b"POST / HTTP/1.1", HOST, b"Content-Length: 100000", body=b"x" * 100))
    assert out.error is None
    assert out.head.content_length == 100000


# -- header fields --------------------------------------------------------------

REFUSED_FIELDS = [
    case("empty-name", [HOST, b": x"], 400),
    case("space-before-colon", [HOST, b"X-A : x"], 400),
    case("space-before-colon-host", [b"Host : example.com"], 400),
    case("tab-before-colon", [HOST, b"X-A\t: x"], 400),
    case("space-in-name", [HOST, b"X A: x"], 400),
    case("no-colon", [HOST, b"X-A x"], 400),
    case("utf8-in-name", [HOST, b"X-\xc3\xa9: x"], 400),
    case("latin1-in-name", [HOST, b"X-\xe9: x"], 400),
    case("separator-in-name", [HOST, b"X(A): x"], 400),
    case("nul-in-value", [HOST, b"X-A: a\x00b"], 400),
    case("cr-in-value", [HOST, b"X-A: a\rb"], 400),
    case("cr-ending-value", [HOST, b"X-A: a\r"], 400),
    case("soh-in-value", [HOST, b"X-A: a\x01b"], 400),
    case("vt-in-value", [HOST, b"X-A: a\x0bb"], 400),
    case("esc-in-value", [HOST, b"X-A: a\x1bb"], 400),
    case("us-in-value", [HOST, b"X-A: a\x1fb"], 400),
    case("del-in-value", [HOST, b"X-A: a\x7fb"], 400),
    case("obs-fold", [HOST, b"X-A: a", b" b"], 400),
    case("obs-fold-tab", [HOST, b"X-A: a", b"\tb"], 400),
    case("whitespace-before-first-field", [b" " + HOST], 400),
    case("missing-host", [b"X-A: a"], 400),
    case("no-fields", [], 400),
    case("two-hosts", [HOST, HOST], 400),
    case("two-hosts-differing", [HOST, b"Host: example.org"], 400),
    case("two-hosts-case", [HOST, b"host: example.com"], 400),
    case("host-with-space", [b"Host: exa mple.com"], 400),
    case("host-with-path", [b"Host: example.com/x"], 400),
    case("host-with-userinfo", [b"Host: user@example.com"], 400),
    case("host-with-scheme", [b"Host: http://example.com"], 400),
    case("host-bad-port", [b"Host: example.com:x"], 400),
    case("host-two-ports", [b"Host: example.com:1:2"], 400),
    case("host-open-bracket", [b"Host: [::1"], 400),
    case("host-comma", [HOST + b", example.org"], 400),
    case("two-content-lengths", [HOST, b"Content-Length: 1", b"Content-Length: 1"], 400),
    case("two-content-lengths-differing", [HOST, b"Content-Length: 1", b"Content-Length: 2"], 400),
    case("content-length-list", [HOST, b"Content-Length: 1, 1"], 400),
    case("two-content-types", [HOST, b"Content-Type: text/plain", b"Content-Type: text/html"], 400),
]


@pytest.mark.parametrize(("fields", "status"), REFUSED_FIELDS)
def test_field_refused(parse: Parse, fields: list[bytes], status: int) -> None:
    out = parse(req(b"GET / HTTP/1.1", *fields))
    assert (out.status, out.events) == (status, [])


ACCEPTED_FIELDS = [
    case("plain", b"X-A: a", "a"),
    case("no-space", b"X-A:a", "a"),
    case("leading-ows", b"X-A: \t  a", "a"),
    case("trailing-ows", b"X-A: a b \t ", "a b"),
    case("inner-whitespace", b"X-A: a \t b", "a \t b"),
    case("empty", b"X-A:", ""),
    case("only-whitespace", b"X-A:  \t ", ""),
    case("obs-text", b"X-A: caf\xe9 \xff", "caf\xe9 \xff"),
    case("visible-ascii", b"X-A: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
]


@pytest.mark.parametrize(("field", "value"), ACCEPTED_FIELDS)
def test_field_value(parse: Parse, field: bytes, value: str) -> None:
    head = parse(req(b"GET / HTTP/1.1", HOST, field)).head
    assert head.headers == [("Host", "example.com"), ("X-A", value)]


def test_field_names_keep_their_case_and_order(parse: Parse) -> None:
    head = parse(req(b"GET / HTTP/1.1", b"x-b: 1", HOST, b"X-A: 2", b"x-b: 3")).head
    assert head.headers == [("x-b", "1"), ("Host", "example.com"), ("X-A", "2"), ("x-b", "3")]
    assert (head.get("X-B"), head.get("HOST"), head.get("missing")) == ("1", "example.com", None)


@pytest.mark.parametrize(
    ("folded", "value"),
    [
        pytest.param([b"X-A: a", b" b"], "a b", id="space"),
        pytest.param([b"X-A: a", b"\tb"], "a b", id="tab"),
        pytest.param([b"X-A: a", b" \t b", b"  c  "], "a b c", id="several"),
    ],
)
def test_obs_fold_permitted(parse: Parse, folded: list[bytes], value: str) -> None:
    limits = ParserLimits(permit_obsolete_folding=True)
    head = parse(req(b"GET / HTTP/1.1", HOST, *folded, b"X-B: z"), limits).head
    assert head.headers == [("Host", "example.com"), ("X-A", value), ("X-B", "z")]


def test_obs_fold_permitted_not_before_first_field(parse: Parse) -> None:
    limits = ParserLimits(permit_obsolete_folding=True)
    assert parse(req(b"GET / HTTP/1.1", b" " + HOST), limits).status == 400


@pytest.mark.parametrize(
    ("host_field", "host"),
    [
        pytest.param(HOST, "example.com", id="name"),
        pytest.param(b"Host: example.com:8080", "example.com:8080", id="port"),
        pytest.param(b"Host: 192.0.2.1", "192.0.2.1", id="ipv4"),
        pytest.param(b"Host: [2001:db8::1]:80", "[2001:db8::1]:80", id="ipv6"),
        pytest.param(b"HOST: example.com", "example.com", id="name-case"),
        pytest.param(b"Host:", "", id="empty"),
    ],
)
def test_host_accepted(parse: Parse, host_field: bytes, host: str) -> None:
    assert parse(req(b"GET / HTTP/1.1", host_field)).head.host == host


def test_http10_without_host(parse: Parse) -> None:
    head = parse(req(b"GET / HTTP/1.0")).head
    assert (head.host, head.version) == (None, "HTTP/1.0")


def test_http10_two_hosts_refused(parse: Parse) -> None:
    assert parse(req(b"GET / HTTP/1.0", HOST, HOST)).status == 400


def test_absolute_form_host_wins(parse: Parse) -> None:
    head = parse(req(b"GET http://example.org/x HTTP/1.1", HOST)).head
    assert (head.host, head.get("Host")) == ("example.org", "example.com")


@pytest.mark.parametrize(
    ("limits", "kept", "dropped"),
    [
        pytest.param(None, False, ["X_Forwarded_For"], id="drop-by-default"),
        pytest.param(ParserLimits(header_map="drop"), False, ["X_Forwarded_For"], id="drop"),
        pytest.param(ParserLimits(header_map="dangerous"), True, [], id="dangerous"),
    ],
)
def test_underscore_fields(parse: Parse, limits: ParserLimits | None, kept: bool, dropped: list[str]) -> None:
    head = parse(req(b"GET / HTTP/1.1", HOST, b"X_Forwarded_For: 1.2.3.4", b"X-A: b"), limits).head
    assert head.dropped == dropped
    assert (head.get("X_Forwarded_For") == "1.2.3.4") is kept
    assert head.get("X-A") == "b"
    assert len(head.headers) == (3 if kept else 2)


def test_underscore_refused(parse: Parse) -> None:
    limits = ParserLimits(header_map="refuse")
    out = parse(req(b"GET / HTTP/1.1", HOST, b"X_Forwarded_For: 1.2.3.4"), limits)
    assert (out.status, out.events) == (400, [])


def test_underscore_dropped_content_length_does_not_frame(parse: Parse) -> None:
    out = parse(req(b"POST / HTTP/1.1", HOST, b"Content_Length: 5", body=b"GET"))
    assert out.heads[0].content_length is None
    assert out.heads[0].dropped == ["Content_Length"]
    assert out.bodies[0] == b""  # "GET" is the start of the next request


@pytest.mark.parametrize(("name", "dropped"), [
    (b"Content_Length", True), (b"content_length", True), (b"Content_Type", True),
    (b"Transfer_Encoding", True), (b"Keep_Alive", True), (b"Proxy_Connection", True),
    (b"X_Content_Length", False),  # not a framing field: dangerous passes it on
])
def test_dangerous_never_lets_an_underscore_name_pose_as_a_framing_field(parse: Parse, name: bytes,
                                                                         dropped: bool) -> None:
    # header_map=dangerous passes underscore names on, but one that reads as
    # a field corral frames or routes on (or a hop-by-hop one) is dropped:
    # Content_Length: -1E23 beside Content-Length: 7 must not reach the app
    # as its CONTENT_LENGTH.
    limits = ParserLimits(header_map="dangerous")
    out = parse(req(b"POST / HTTP/1.1", HOST, b"Content-Length: 7", name + b": -1E23", body=b"payload"), limits)
    head = out.heads[0]
    assert head.dropped == ([name.decode()] if dropped else [])
    assert (head.get(name.decode()) == "-1E23") is not dropped
    assert head.content_length == 7 and out.bodies[0] == b"payload"


# -- Content-Length -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "length"),
    [
        pytest.param(b"0", 0, id="zero"),
        pytest.param(b"5", 5, id="five"),
        pytest.param(b"007", 7, id="leading-zeros"),
        pytest.param(b"5 \t", 5, id="trailing-ows"),
        pytest.param(b"9" * 19, 10**19 - 1, id="19-digits"),
    ],
)
def test_content_length_accepted(parse: Parse, value: bytes, length: int) -> None:
    body = b"x" * min(length, 7)
    out = parse(req(b"POST / HTTP/1.1", HOST, b"Content-Length: " + value, body=body))
    assert out.error is None
    assert out.heads[0].content_length == length
    assert out.heads[0].chunked is False
    assert out.bodies == [body]
    assert out.ends == ([EndOfMessage()] if length == len(body) else [])


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"+5", id="plus"),
        pytest.param(b"-1", id="minus"),
        pytest.param(b"1_0", id="underscore"),
        pytest.param(b" 5x", id="trailing-letter"),
        pytest.param(b"1,1", id="list"),
        pytest.param(b"1 1", id="space"),
        pytest.param(b"1.0", id="decimal"),
        pytest.param(b"1" * 20, id="20-digits"),
        pytest.param(b"0x10", id="hex"),
        pytest.param(b"\xa0 5", id="nbsp"),
        pytest.param("\u0665".encode(), id="arabic-digit"),
        pytest.param(b"", id="empty"),
    ],
)
def test_content_length_refused(parse: Parse, value: bytes) -> None:
    out = parse(req(b"POST / HTTP/1.1", HOST, b"Content-Length: " + value, body=b"hello"))
    assert (out.status, out.events) == (400, [])


def test_content_length_body(parse: Parse) -> None:
    out = parse(req(b"POST /u HTTP/1.1", HOST, b"Content-Length: 11", body=b"hello world"))
    assert out.events == [out.heads[0], b"hello world", EndOfMessage()]
    assert out.heads[0].has_body


def test_no_body_without_framing(parse: Parse) -> None:
    # No Content-Length and no Transfer-Encoding: the request has no body, and
    # what follows the head is the next request.
    out = parse(req(b"POST / HTTP/1.1", HOST) + req(b"GET /next HTTP/1.1", HOST))
    assert [h.path for h in out.heads] == ["/", "/next"]
    assert out.bodies == [b"", b""]
    assert not out.heads[0].has_body


# -- Expect ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        pytest.param(b"POST / HTTP/1.1", b"Expect: 100-continue", True, id="1.1"),
        pytest.param(b"POST / HTTP/1.1", b"Expect: 100-Continue", True, id="1.1-case"),
        pytest.param(b"POST / HTTP/1.0", b"Expect: 100-continue", False, id="1.0"),
        pytest.param(b"POST / HTTP/1.1", b"X-A: b", False, id="absent"),
    ],
)
def test_expect_continue(parse: Parse, line: bytes, field: bytes, expected: bool) -> None:
    out = parse(req(line, HOST, field, b"Content-Length: 2", body=b"ok"))
    assert out.heads[0].expect_continue is expected
    assert out.bodies == [b"ok"]


@pytest.mark.parametrize("value", [b"200-ok", b"100-continue, foo", b"foo", b"", b"100-continue=1"], ids=repr)
def test_expect_other_refused(parse: Parse, value: bytes) -> None:
    out = parse(req(b"POST / HTTP/1.1", HOST, b"Expect: " + value, b"Content-Length: 2", body=b"ok"))
    assert (out.status, out.events) == (417, [])


# -- keep-alive ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "fields", "keep_alive"),
    [
        pytest.param(b"HTTP/1.1", [], True, id="1.1-default"),
        pytest.param(b"HTTP/1.1", [b"Connection: close"], False, id="1.1-close"),
        pytest.param(b"HTTP/1.1", [b"Connection: Close"], False, id="1.1-close-case"),
        pytest.param(b"HTTP/1.1", [b"Connection: keep-alive"], True, id="1.1-keep-alive"),
        pytest.param(b"HTTP/1.1", [b"Connection: keep-alive, close"], False, id="1.1-list"),
        pytest.param(b"HTTP/1.1", [b"Connection: x", b"Connection: close"], False, id="1.1-two-fields"),
        pytest.param(b"HTTP/1.1", [b"Connection: upgrade", b"Upgrade: websocket"], True, id="1.1-upgrade"),
        pytest.param(b"HTTP/1.0", [], False, id="1.0-default"),
        pytest.param(b"HTTP/1.0", [b"Connection: keep-alive"], True, id="1.0-keep-alive"),
        pytest.param(b"HTTP/1.0", [b"Connection: Keep-Alive"], True, id="1.0-keep-alive-case"),
        pytest.param(b"HTTP/1.0", [b"Connection: x ,keep-alive"], True, id="1.0-list"),
        pytest.param(b"HTTP/1.0", [b"Connection: close"], False, id="1.0-close"),
        pytest.param(b"HTTP/1.0", [b"Connection: keep-alive, close"], False, id="1.0-both"),
    ],
)
def test_keep_alive(parse: Parse, version: bytes, fields: list[bytes], keep_alive: bool) -> None:
    head = parse(req(b"GET / " + version, HOST, *fields)).head
    assert head.keep_alive is keep_alive


# -- pipelining ------------------------------------------------------------------

PIPELINE = [
    req(b"GET /1 HTTP/1.1", HOST),
    req(b"POST /2 HTTP/1.1", HOST, b"Content-Length: 5", body=b"hello"),
    req(
        b"POST /3 HTTP/1.1",
        HOST,
        b"Transfer-Encoding: chunked",
        body=b"3\r\nabc\r\n3\r\ndef\r\n0\r\nT: v\r\n\r\n",
    ),
    req(b"GET /4 HTTP/1.0"),
]


@pytest.mark.parametrize("count", [2, 3, 4])
def test_pipelined_requests_in_order(parse: Parse, count: int) -> None:
    # The driver checks PAUSED between messages and that no byte of the next
    # request is consumed before start_next().
    out = parse(b"".join(PIPELINE[:count]))
    assert out.error is None
    assert [h.path for h in out.heads] == ["/1", "/2", "/3", "/4"][:count]
    assert out.bodies == [b"", b"hello", b"abcdef", b""][:count]
    assert out.ends == [EndOfMessage(), EndOfMessage(), EndOfMessage([("T", "v")]), EndOfMessage()][:count]
    assert out.leftover == b""


def test_pipelined_request_not_parsed_before_start_next() -> None:
    parser = RequestParser()
    parser.feed(b"".join(PIPELINE))
    rest = b"".join(PIPELINE[1:])
    first = parser.next_event()
    assert isinstance(first, RequestHead)
    assert first.path == "/1"
    assert parser.next_event() == EndOfMessage()
    for _ in range(3):
        assert parser.next_event() is PAUSED
    assert parser.trailing_data == (rest, False)
    assert parser.done
    parser.start_next()
    second = parser.next_event()
    assert isinstance(second, RequestHead)
    assert second.path == "/2"
    with pytest.raises(RuntimeError):
        parser.start_next()  # only a finished message may be followed by the next


def test_pipelined_bad_request_waits_for_start_next(parse: Parse) -> None:
    data = PIPELINE[0] + b"GET / HTTP/9.9\r\n\r\n"
    paused = parse(data, pipeline=False)
    assert (paused.error, paused.events) == (None, [paused.heads[0], EndOfMessage()])
    out = parse(data)
    assert out.status == 505
    assert out.events == paused.events


def test_empty_lines_between_pipelined_requests(parse: Parse) -> None:
    out = parse(PIPELINE[1] + b"\r\n" + PIPELINE[2] + b"\r\n\r\n" + PIPELINE[0])
    assert [h.path for h in out.heads] == ["/2", "/3", "/1"]
    assert out.error is None


# -- errors are final ------------------------------------------------------------


def test_error_is_final() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/2.0\r\n\r\n")
    with pytest.raises(HTTPError) as first:
        parser.next_event()
    assert first.value.status == 505
    parser.feed(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    parser.feed(b"")
    for _ in range(3):
        with pytest.raises(HTTPError) as again:
            parser.next_event()
        assert again.value is first.value
    assert parser.trailing_data[0].endswith(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")


def test_error_after_a_good_message_is_final(parse: Parse) -> None:
    # The driver re-checks finality (same object raised, nothing consumed).
    out = parse(PIPELINE[1] + b"BAD LINE\r\n\r\n" + PIPELINE[0])
    assert out.status == 400
    assert [h.path for h in out.heads] == ["/2"]


# -- end of stream ---------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\r\n", b"\r\n\r\n", b"\r"], ids=repr)
def test_eof_between_requests(parse: Parse, data: bytes) -> None:
    assert parse(data, eof=True).events == [CONNECTION_CLOSED]


def test_eof_after_requests(parse: Parse) -> None:
    out = parse(PIPELINE[0] + PIPELINE[1], eof=True)
    assert out.events[-1] is CONNECTION_CLOSED
    assert out.error is None
    assert len(out.heads) == 2


@pytest.mark.parametrize(
    "data",
    [
        b"G",
        b"GET / HTTP/1.1",
        b"GET / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r",
        PIPELINE[0] + b"GET /",
    ],
    ids=repr,
)
def test_eof_in_head(parse: Parse, data: bytes) -> None:
    out = parse(data, eof=True)
    assert isinstance(out.error, ClientDisconnected)
    assert out.status is None


@pytest.mark.parametrize("sent", [0, 1, 4])
def test_eof_in_content_length_body(parse: Parse, sent: int) -> None:
    out = parse(req(b"POST / HTTP/1.1", HOST, b"Content-Length: 5", body=b"hello"[:sent]), eof=True)
    assert isinstance(out.error, IncompleteBody)
    assert out.status == 400
    assert out.bodies == [b"hello"[:sent]]
    assert out.ends == []


def test_next_event_without_data() -> None:
    parser = RequestParser()
    assert parser.next_event() is NEED_DATA
    assert not parser.in_head
    parser.feed(b"GE")
    assert parser.next_event() is NEED_DATA
    assert parser.in_head


# -- the field-line cache -------------------------------------------------------------


def _head_of(data: bytes) -> RequestHead:
    parser = RequestParser()
    parser.feed(data)
    head = parser.next_event()
    assert isinstance(head, RequestHead)
    return head


def test_repeated_field_lines_parse_the_same_from_the_cache() -> None:
    # The second parse finds every line in the cache; its answers (framing
    # roles included) must not differ from the first, computed ones.
    from corral.http import parser as P

    P._FIELD_LINES.clear()
    data = req(b"POST /x HTTP/1.1", b"Host: a.example", b"X-A:  v1 \t", b"Content-Length: 3",
               b"Connection: close", b"X_Under: 1", body=b"abc")
    first = _head_of(data)
    assert "X-A:  v1 \t" in P._FIELD_LINES
    second = _head_of(data)
    for head in (first, second):
        assert head.headers == [("Host", "a.example"), ("X-A", "v1"), ("Content-Length", "3"),
                                ("Connection", "close")]
        assert head.dropped == ["X_Under"]
        assert (head.host, head.content_length, head.keep_alive) == ("a.example", 3, False)


def test_field_line_cache_stays_bounded() -> None:
    from corral.http import parser as P

    P._FIELD_LINES.clear()
    long_value = b"v" * (P._FIELD_LINE_CACHED_LEN + 1)
    _head_of(req(b"GET / HTTP/1.1", HOST, b"X-Long: " + long_value))
    assert not any(line.startswith("X-Long") for line in P._FIELD_LINES)  # long lines never kept
    for i in range(P._FIELD_LINES_MAX + 10):
        _head_of(req(b"GET / HTTP/1.1", HOST, b"X-N: %d" % i))
    assert len(P._FIELD_LINES) <= P._FIELD_LINES_MAX
    # Cleared when full, so the most recent lines are the ones kept.
    assert f"X-N: {P._FIELD_LINES_MAX + 9}" in P._FIELD_LINES


# -- the request-line cache -----------------------------------------------------------


@pytest.mark.parametrize("line", [
    b"GET /a/b?x=1&y=2 HTTP/1.1",
    b"HEAD http://h.example:8080/p?q HTTP/1.0",
    b"CONNECT h.example:443 HTTP/1.1",
    b"OPTIONS * HTTP/1.1",
])
def test_a_request_line_from_the_cache_parses_as_the_first_time(line: bytes) -> None:
    # Every form of target, computed once and then found in the cache: the
    # two heads agree on every field, and share nothing mutable.
    from corral.http import parser as P

    P._REQUEST_LINES.clear()
    first = _head_of(req(line, HOST))
    assert line.decode() in P._REQUEST_LINES
    second = _head_of(req(line, HOST))
    assert second == first
    assert second is not first and second.headers is not first.headers
    assert second.dropped is not first.dropped


@pytest.mark.parametrize(("line", "status"), [
    (b"GET /a#frag HTTP/1.1", 400),
    (b"GET / HTTP/2.0", 505),
    (b"G\\T / HTTP/1.1", 400),
])
def test_a_refused_request_line_is_refused_every_time(parse: Parse, line: bytes, status: int) -> None:
    from corral.http import parser as P

    P._REQUEST_LINES.clear()
    for _ in range(2):
        assert parse(req(line, HOST)).status == status
    assert not P._REQUEST_LINES


def test_request_line_cache_stays_bounded() -> None:
    from corral.http import parser as P

    P._REQUEST_LINES.clear()
    long_path = b"/" + b"p" * P._REQUEST_LINE_CACHED_LEN
    assert _head_of(req(b"GET " + long_path + b" HTTP/1.1", HOST)).path == long_path.decode()
    assert not P._REQUEST_LINES  # long lines never kept
    for i in range(P._REQUEST_LINES_MAX + 10):
        assert _head_of(req(b"GET /n/%d HTTP/1.1" % i, HOST)).path == f"/n/{i}"
    assert len(P._REQUEST_LINES) <= P._REQUEST_LINES_MAX
    # Cleared when full, so the most recent lines are the ones kept.
    assert f"GET /n/{P._REQUEST_LINES_MAX + 9} HTTP/1.1" in P._REQUEST_LINES


def test_a_body_piece_fed_whole_comes_back_uncopied_and_in_order() -> None:
    """A Content-Length body arriving in pieces skips the buffer, and nothing reorders.

    A piece fed while the buffer is empty and no longer than the rest of
    the body is returned as the same object; a second piece fed before the
    first was taken, and one that runs past the body (a pipelined request),
    go through the buffer behind it.
    """
    parser = RequestParser()
    parser.feed(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n")
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() is NEED_DATA and not parser.has_unread
    first = b"abcd"
    parser.feed(first)
    assert parser.has_unread and parser.trailing_data == (b"abcd", False)
    assert parser.next_event() is first
    parser.feed(b"efgh")
    parser.feed(b"ij")  # before the piece was taken: queued behind it
    assert parser.next_event() == b"efghij"
    parser.feed(b"klGET /next HTTP/1.1\r\nHost: h\r\n\r\n")  # past the body: buffered
    assert parser.next_event() == b"kl"
    assert parser.next_event() == EndOfMessage()
    parser.start_next()
    head = parser.next_event()
    assert isinstance(head, RequestHead) and head.path == "/next"


PERMIT = ParserLimits(permit_unconventional_http_method=True)


@pytest.mark.parametrize(("line", "limits", "outcome"), [
    # gunicorn's default: any token, but no lowercase letter and 3 to 20 bytes.
    (b"FOO-BAR /x HTTP/1.1", None, "FOO-BAR"),
    (b"M" * 20 + b" / HTTP/1.1", None, "M" * 20),
    (b"get / HTTP/1.1", None, 400),
    (b"Get / HTTP/1.1", None, 400),
    (b"GE / HTTP/1.1", None, 400),
    (b"M" * 21 + b" / HTTP/1.1", None, 400),
    (b"!#$%&'*+-.^_`|~09azAZ / HTTP/1.1", None, 400),
    # permit_unconventional_http_method: every RFC 9110 token, case kept, up to 64 bytes.
    (b"!#$%&'*+-.^_`|~09azAZ / HTTP/1.1", PERMIT, "!#$%&'*+-.^_`|~09azAZ"),
    (b"get / HTTP/1.1", PERMIT, "get"),
    (b"M" * 64 + b" / HTTP/1.1", PERMIT, "M" * 64),
    (b"M" * 65 + b" / HTTP/1.1", PERMIT, 501),
    (b"GE(T / HTTP/1.1", PERMIT, 400),  # still a token, whatever the policy
    # casefold_http_method (with permit: lowercase methods reach it).
    (b"get / HTTP/1.1", ParserLimits(permit_unconventional_http_method=True, casefold_http_method=True), "GET"),
    (b"get / HTTP/1.1", ParserLimits(casefold_http_method=True), 400),
], ids=repr)
def test_method_policy_is_gunicorns(parse: Parse, line: bytes, limits: ParserLimits | None,
                                    outcome: str | int) -> None:
    data = line + b"\r\nHost: x\r\n\r\n"
    if isinstance(outcome, int):
        out = parse(data, limits)
        assert out.error is not None and out.error.status == outcome
    else:
        assert parse(data, limits).heads[0].method == outcome


def test_a_missing_host_is_400_unless_permitted(parse: Parse) -> None:
    data = b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"
    out = parse(data)
    assert out.error is not None and out.error.status == 400
    head = parse(data, ParserLimits(permit_missing_host=True)).heads[0]
    assert (head.host, head.path) == (None, "/")
    # HTTP/1.0 never needed one, and a second Host stays an error either way.
    assert parse(b"GET / HTTP/1.0\r\n\r\n").error is None
    twice = parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", ParserLimits(permit_missing_host=True))
    assert twice.error is not None and twice.error.status == 400
