"""RequestParser: Transfer-Encoding, the chunked decoder, trailers, body limits.

Every case runs three times through the ``parse`` fixture (whole, bytewise,
random splits; see conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from corral.http.parser import MAX_CHUNK_LINE, EndOfMessage, IncompleteBody, ParserLimits

#: The fixture ``parse(data, limits=None, *, eof=False, pipeline=True) -> Outcome``.
Parse = Callable[..., Any]

HOST = b"Host: example.com"
CHUNKED = b"Transfer-Encoding: chunked"


def req(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def chunked(body: bytes) -> bytes:
    """A chunked POST whose encoded body is ``body``."""
    return req(b"POST / HTTP/1.1", HOST, CHUNKED, body=body)


def case(id: str, *values: object) -> Any:
    return pytest.param(*values, id=id)


# -- Transfer-Encoding -----------------------------------------------------------


# Not b"chunked\t": llhttp refuses an HTAB after the coding (400), though
# RFC 9110 5.5 allows trailing OWS; a space is accepted.
@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b"chunked  "], ids=repr)
def test_transfer_encoding_chunked(parse: Parse, value: bytes) -> None:
    out = parse(req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: " + value, body=b"2\r\nok\r\n0\r\n\r\n"))
    head = out.heads[0]
    assert (head.chunked, head.content_length, head.has_body) == (True, None, True)
    assert out.events == [head, b"ok", EndOfMessage()]


REFUSED_TRANSFER_ENCODINGS = [
    case("gzip-only", [b"Transfer-Encoding: gzip"], 400),
    case("identity", [b"Transfer-Encoding: identity"], 400),
    case("empty", [b"Transfer-Encoding:"], 400),
    case("chunked-not-last", [b"Transfer-Encoding: chunked, gzip"], 400),
    case("chunked-twice", [b"Transfer-Encoding: chunked, chunked"], 400),
    case("chunked-twice-two-fields", [CHUNKED, CHUNKED], 400),
    case("chunked-with-parameter", [b"Transfer-Encoding: chunked;q=1"], 400),
    case("chunked-prefix", [b"Transfer-Encoding: xchunked"], 400),
    case("chunked-suffix", [b"Transfer-Encoding: chunkedx"], 400),
    case("content-length-first", [b"Content-Length: 5", CHUNKED], 400),
    case("content-length-last", [CHUNKED, b"Content-Length: 5"], 400),
    case("content-length-zero", [CHUNKED, b"Content-Length: 0"], 400),
    case("gzip-chunked", [b"Transfer-Encoding: gzip, chunked"], 501),
    case("deflate-chunked", [b"Transfer-Encoding: deflate,chunked"], 501),
    case("gzip-chunked-two-fields", [b"Transfer-Encoding: gzip", CHUNKED], 501),
]


@pytest.mark.parametrize(("fields", "status"), REFUSED_TRANSFER_ENCODINGS)
def test_transfer_encoding_refused(parse: Parse, fields: list[bytes], status: int) -> None:
    out = parse(req(b"POST / HTTP/1.1", HOST, *fields, body=b"5\r\nhello\r\n0\r\n\r\n"))
    assert (out.status, out.events) == (status, [])


@pytest.mark.parametrize("fields", [[CHUNKED], [CHUNKED, b"Content-Length: 5"]], ids=["te", "te-cl"])
def test_transfer_encoding_refused_on_http10(parse: Parse, fields: list[bytes]) -> None:
    out = parse(req(b"POST / HTTP/1.0", HOST, *fields, body=b"5\r\nhello\r\n0\r\n\r\n"))
    assert (out.status, out.events) == (400, [])


# -- chunked bodies ------------------------------------------------------------------

ACCEPTED_BODIES = [
    case("one-chunk", b"5\r\nhello\r\n0\r\n\r\n", b"hello", []),
    case("two-chunks", b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world", []),
    case("empty", b"0\r\n\r\n", b"", []),
    case("hex-upper", b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", []),
    case("hex-lower", b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789", []),
    case("16-digit-size", b"000000000000000a\r\n0123456789\r\n0\r\n\r\n", b"0123456789", []),
    case("16-digit-last-chunk", b"2\r\nok\r\n0000000000000000\r\n\r\n", b"ok", []),
    case("crlf-in-data", b"4\r\n\r\n\r\n\r\n0\r\n\r\n", b"\r\n\r\n", []),
    case("binary-data", b"3\r\n\x00\xff\n\r\n0\r\n\r\n", b"\x00\xff\n", []),
    case("request-in-data", b"12\r\nGET / HTTP/1.1\r\n\r\n\r\n0\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n", []),
    case("ext-token", b"5;foo\r\nhello\r\n0\r\n\r\n", b"hello", []),
    case("ext-token-value", b"5;foo=bar\r\nhello\r\n0\r\n\r\n", b"hello", []),
    case("ext-quoted", b'5;foo="b a;\\"r"\r\nhello\r\n0\r\n\r\n', b"hello", []),
    case("ext-quoted-empty", b'5;foo=""\r\nhello\r\n0\r\n\r\n', b"hello", []),
    case("ext-several", b'5;a;b=c;d="e"\r\nhello\r\n0\r\n\r\n', b"hello", []),
    case("ext-bws", b"5 ; foo = bar\r\nhello\r\n0\r\n\r\n", b"hello", []),
    case("ext-tab", b"5\t;foo\r\nhello\r\n0\r\n\r\n", b"hello", []),
    case("ext-on-last-chunk", b"5\r\nhello\r\n0;end=1\r\n\r\n", b"hello", []),
    case("ext-longest-line", b"5;" + b"e" * (MAX_CHUNK_LINE - 2) + b"\r\nhello\r\n0\r\n\r\n", b"hello", []),
    case("trailer", b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n", b"hello", [("X-Checksum", "abc")]),
    case(
        "trailers",
        b"0\r\nX-A: 1\r\nx-b:2 \t\r\nX-A:  3\r\n\r\n",
        b"",
        [("X-A", "1"), ("x-b", "2"), ("X-A", "3")],
    ),
    case("trailer-empty-value", b"0\r\nX:\r\n\r\n", b"", [("X", "")]),
    case("trailer-inner-space", b"0\r\nX: a \t b\r\n\r\n", b"", [("X", "a \t b")]),
    case("trailer-obs-text", b"0\r\nX: caf\xe9\r\n\r\n", b"", [("X", "caf\xe9")]),
]


@pytest.mark.parametrize(("encoded", "body", "trailers"), ACCEPTED_BODIES)
def test_chunked_body(parse: Parse, encoded: bytes, body: bytes, trailers: list[tuple[str, str]]) -> None:
    out = parse(chunked(encoded))
    head = out.heads[0]
    assert out.error is None
    assert out.events == [head, *([body] if body else []), EndOfMessage(trailers)]
    assert out.leftover == b""


REFUSED_BODIES = [
    case("17-digit-size", b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
    case("17-digit-last-chunk", b"00000000000000000\r\n\r\n"),
    case("plus", b"+5\r\nhello\r\n0\r\n\r\n"),
    case("minus", b"-5\r\nhello\r\n0\r\n\r\n"),
    case("0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
    case("leading-space", b" 5\r\nhello\r\n0\r\n\r\n"),
    case("trailing-space", b"5 \r\nhello\r\n0\r\n\r\n"),
    case("underscore", b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n"),
    case("nbsp", b"\xa05\r\nhello\r\n0\r\n\r\n"),
    case("not-hex", b"g\r\nhello\r\n0\r\n\r\n"),
    case("empty-size", b"\r\nhello\r\n0\r\n\r\n"),
    case("no-last-chunk", b"5\r\nhello\r\n\r\n"),
    case("ext-empty", b"5;\r\nhello\r\n0\r\n\r\n"),
    case("ext-no-value", b"5;foo=\r\nhello\r\n0\r\n\r\n"),
    case("ext-no-name", b"5;=bar\r\nhello\r\n0\r\n\r\n"),
    case("ext-unterminated-quote", b'5;foo="bar\r\nhello\r\n0\r\n\r\n'),
    case("ext-space-in-name", b"5;fo o\r\nhello\r\n0\r\n\r\n"),
    case("ext-ctl", b"5;foo=\x01\r\nhello\r\n0\r\n\r\n"),
    case("ext-no-semicolon", b"5 foo\r\nhello\r\n0\r\n\r\n"),
    case("ext-line-too-long", b"5;" + b"e" * (MAX_CHUNK_LINE - 1) + b"\r\nhello\r\n0\r\n\r\n"),
    case("ext-line-unterminated", b"5;" + b"e" * (2 * MAX_CHUNK_LINE)),
    case("size-line-unterminated", b"1" * (MAX_CHUNK_LINE + 10)),
    case("data-too-long", b"5\r\nhelloX\r\n0\r\n\r\n"),
    case("data-too-short", b"5\r\nhell\r\n0\r\n\r\n"),
    case("data-lf-only", b"5\r\nhello\n0\r\n\r\n"),
    case("data-cr-only", b"5\r\nhello\r0\r\n\r\n"),
    case("data-no-crlf", b"5\r\nhello0\r\n\r\n"),
    case("bare-lf-size-line", b"5\nhello\r\n0\r\n\r\n"),
    case("bare-lf-last-chunk", b"5\r\nhello\r\n0\n\n"),
    case("bare-lf-end", b"0\r\n\n"),
    case("bare-lf-trailer", b"0\r\nX: a\n\r\n"),
    case("trailer-host", b"0\r\nHost: example.org\r\n\r\n"),
    case("trailer-content-length", b"0\r\nContent-Length: 5\r\n\r\n"),
    case("trailer-transfer-encoding", b"0\r\nTransfer-Encoding: chunked\r\n\r\n"),
    case("trailer-forbidden-case", b"0\r\ncontent-LENGTH: 5\r\n\r\n"),
    case("trailer-obs-fold", b"0\r\nX: a\r\n b\r\n\r\n"),
    case("trailer-space-before-colon", b"0\r\nX : a\r\n\r\n"),
    case("trailer-no-colon", b"0\r\nX\r\n\r\n"),
    case("trailer-empty-name", b"0\r\n: a\r\n\r\n"),
    case("trailer-non-ascii-name", b"0\r\nX\xe9: a\r\n\r\n"),
    case("trailer-nul", b"0\r\nX: a\x00\r\n\r\n"),
    case("trailer-cr", b"0\r\nX: a\rb\r\n\r\n"),
    case("trailer-del", b"0\r\nX: a\x7f\r\n\r\n"),
]


@pytest.mark.parametrize("encoded", REFUSED_BODIES)
def test_chunked_body_refused(parse: Parse, encoded: bytes) -> None:
    out = parse(chunked(encoded))
    assert out.status == 400
    assert out.ends == []
    assert len(out.heads) == 1


# -- limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "ok"),
    [
        pytest.param(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", True, id="exactly-the-limit"),
        pytest.param(b"a\r\n0123456789\r\n0\r\n\r\n", True, id="one-chunk-at-the-limit"),
        pytest.param(b"5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n", False, id="second-chunk-over"),
        pytest.param(b"b\r\n0123456789a\r\n0\r\n\r\n", False, id="first-chunk-over"),
        pytest.param(b"ffffffffffffffff\r\n", False, id="huge-chunk"),
    ],
)
def test_limit_request_body_chunked(parse: Parse, encoded: bytes, ok: bool) -> None:
    out = parse(chunked(encoded), ParserLimits(limit_request_body=10))
    if ok:
        assert out.error is None
        assert len(out.bodies[0]) == 10
    else:
        # Refused on the size line: no byte of the chunk over the limit is passed on.
        assert out.status == 413
        assert len(out.bodies[0]) <= 5


def test_huge_chunk_without_limit(parse: Parse) -> None:
    out = parse(chunked(b"ffffffffffffffff\r\nabc"))
    assert out.error is None
    assert out.bodies == [b"abc"]
    assert out.ends == []


@pytest.mark.parametrize("limit", [64, 8190])
def test_trailer_field_size(parse: Parse, limit: int) -> None:
    limits = ParserLimits(limit_request_field_size=limit)
    fits = b"X: " + b"a" * (limit - 3)
    out = parse(chunked(b"0\r\n" + fits + b"\r\n\r\n"), limits)
    assert out.ends == [EndOfMessage([("X", "a" * (limit - 3))])]
    assert parse(chunked(b"0\r\n" + fits + b"a\r\n\r\n"), limits).status == 431
    # An unterminated trailer is refused once it cannot fit any more.
    assert parse(chunked(b"0\r\n" + fits), limits).error is None
    assert parse(chunked(b"0\r\n" + fits + b"aa"), limits).status == 431
    assert parse(chunked(b"0\r\n" + fits * 3), limits).status == 431


def test_trailer_field_count(parse: Parse) -> None:
    limits = ParserLimits(limit_request_fields=2)
    out = parse(chunked(b"0\r\nA: 1\r\nB: 2\r\n\r\n"), limits)
    assert out.ends == [EndOfMessage([("A", "1"), ("B", "2")])]
    assert parse(chunked(b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), limits).status == 431


# -- end of stream -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "body"),
    [
        pytest.param(b"", b"", id="after-head"),
        pytest.param(b"5", b"", id="in-size-line"),
        pytest.param(b"5;ext", b"", id="in-extension"),
        pytest.param(b"5\r\n", b"", id="before-data"),
        pytest.param(b"5\r\nhel", b"hel", id="in-data"),
        pytest.param(b"5\r\nhello", b"hello", id="before-data-crlf"),
        pytest.param(b"5\r\nhello\r", b"hello", id="in-data-crlf"),
        pytest.param(b"5\r\nhello\r\n", b"hello", id="before-next-size"),
        pytest.param(b"5\r\nhello\r\n0\r\n", b"hello", id="before-trailers-end"),
        pytest.param(b"0\r\nX: a", b"", id="in-trailer"),
        pytest.param(b"0\r\nX: a\r\n", b"", id="after-trailer"),
        pytest.param(b"0\r\n\r", b"", id="in-final-crlf"),
    ],
)
def test_eof_in_chunked_body(parse: Parse, encoded: bytes, body: bytes) -> None:
    out = parse(chunked(encoded), eof=True)
    assert isinstance(out.error, IncompleteBody)
    assert out.status == 400
    assert out.bodies == [body]
    assert out.ends == []


def test_eof_after_chunked_body(parse: Parse) -> None:
    out = parse(chunked(b"5\r\nhello\r\n0\r\n\r\n"), eof=True)
    assert out.error is None
    assert out.events[1:] == [b"hello", EndOfMessage(), out.events[-1]]
    assert len(out.events) == 4


def test_chunked_then_pipelined(parse: Parse) -> None:
    data = chunked(b"3\r\nabc\r\n0\r\nT: 1\r\n\r\n") + chunked(b"0\r\n\r\n") + req(b"GET /x HTTP/1.1", HOST)
    out = parse(data)
    assert out.error is None
    assert out.bodies == [b"abc", b"", b""]
    assert out.ends == [EndOfMessage([("T", "1")]), EndOfMessage(), EndOfMessage()]
    assert out.heads[-1].path == "/x"


def test_expect_continue_with_chunked_body(parse: Parse) -> None:
    out = parse(req(b"PUT / HTTP/1.1", HOST, b"Expect: 100-continue", CHUNKED, body=b"1\r\nz\r\n0\r\n\r\n"))
    assert out.heads[0].expect_continue is True
    assert out.bodies == [b"z"]
