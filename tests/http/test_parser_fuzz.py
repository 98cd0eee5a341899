"""RequestParser: property-based tests (hypothesis).

1. Any byte stream, cut anywhere, ends in allowed events or a typed protocol
   error, never another exception, and never in a loop; at end of stream the
   parser always reaches a final answer.
2. A valid request (or a pipeline of them) parses to exactly what was sent,
   however its bytes are cut, and its body reassembles exactly.

The invariants of every run (PAUSED until start_next, the first error is
final, no NEED_DATA after end of stream, bounded calls) are checked by the
driver in conftest.py.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.http.parser import (
    CONNECTION_CLOSED,
    ClientDisconnected,
    EndOfMessage,
    ParserLimits,
    RequestHead,
)

#: Any RFC 9110 token as a method: the generated requests test framing, not the method policy.
ANY_METHOD = ParserLimits(permit_unconventional_http_method=True)
#: The fixture ``parse_all(data, limits=None, mode="whole", *, eof=False, pipeline=True) -> Outcome``.
ParseAll = Callable[..., Any]

#: Enough examples to find split-dependent bugs in a few seconds; the suite
#: must stay fast. deadline=None: bytewise runs of long inputs vary in time.
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- arbitrary streams ---------------------------------------------------------------

#: Pieces of HTTP, right and wrong, that random concatenation turns into
#: streams reaching deep into the parser (heads, bodies, trailers, pipelines).
FRAGMENTS = [
    b"GET ",
    b"POST ",
    b"OPTIONS * ",
    b"CONNECT a:1 ",
    b"/",
    b"/p?q=1",
    b"http://h/x",
    b" HTTP/1.1",
    b" HTTP/1.0",
    b" HTTP/2.0",
    b"\r\n",
    b"\r\n\r\n",
    b"\r",
    b"\n",
    b" ",
    b"\t",
    b":",
    b"Host: a\r\n",
    b"Host: [::1]:80\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Expect: x\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Upgrade: x\r\nConnection: upgrade\r\n",
    b"X_Y: z\r\n",
    b" folded\r\n",
    b"X: \x80\xff\r\n",
    b"0\r\n",
    b"5\r\n",
    b'5;e="v"\r\n',
    b"hello",
    b"T: v\r\n",
    b"ffffffffffffffff\r\n",
    b"\x00",
    b"\xff",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
]

plausible_streams = st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=3), max_size=30).map(b"".join)
streams = st.binary(max_size=300) | plausible_streams

#: Small limits, so that random streams cross them.
limits = st.none() | st.builds(
    ParserLimits,
    limit_request_line=st.sampled_from([4094, 8, 20, 64]),
    limit_request_fields=st.sampled_from([100, 1, 2, 5]),
    limit_request_field_size=st.sampled_from([8190, 4, 10, 40]),
    limit_request_body=st.sampled_from([0, 1, 5, 40]),
    permit_obsolete_folding=st.booleans(),
    header_map=st.sampled_from(["drop", "refuse", "dangerous"]),
)


def cuts(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(1, max(1, len(data) - 1)), max_size=16)


@FUZZ
@given(data=streams, limits=limits, eof=st.booleans(), pipeline=st.booleans(), draw=st.data())
def test_any_stream_ends_in_events_or_typed_errors(
    parse_all: ParseAll,
    data: bytes,
    limits: ParserLimits | None,
    eof: bool,
    pipeline: bool,
    draw: st.DataObject,
) -> None:
    points = draw.draw(cuts(data), label="cuts")
    # Any other exception, a loop, NEED_DATA after EOF or a broken PAUSED or
    # error contract fails inside the driver.
    out = parse_all(data, limits, points, eof=eof, pipeline=pipeline)
    if eof and pipeline and out.error is None:
        assert out.events[-1] is CONNECTION_CLOSED


@FUZZ
@given(data=streams, limits=limits, eof=st.booleans(), draw=st.data())
def test_any_stream_same_answer_however_cut(
    parse_all: ParseAll, data: bytes, limits: ParserLimits | None, eof: bool, draw: st.DataObject
) -> None:
    # Not only valid requests: the same events, and an error in the same
    # place, whether the bytes arrive at once, one by one or cut anywhere.
    # Only the status may differ: a stream wrong in two ways (a NUL in an
    # over-long request line) may be refused for either, depending on which
    # of its bytes are seen first.
    def verdict(out: Any) -> tuple[object, ...]:
        return (out.events, out.error is None, isinstance(out.error, ClientDisconnected))

    whole = verdict(parse_all(data, limits, "whole", eof=eof))
    assert verdict(parse_all(data, limits, draw.draw(cuts(data), label="cuts"), eof=eof)) == whole
    assert verdict(parse_all(data, limits, "bytewise", eof=eof)) == whole


# -- valid requests -------------------------------------------------------------------

TCHAR = "!#$%&'*+-.^`|~" + string.digits + string.ascii_letters  # and "_", see below
#: Names whose fields the parser interprets; the generator adds them itself.
RESERVED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "content-type",
        "connection",
        "proxy-connection",
        "expect",
        "upgrade",
    }
)
VISIBLE = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
#: Wire spellings of optional whitespace around a value.
OWS = [b"", b" ", b"\t", b"  ", b" \t "]

names = st.text(alphabet=TCHAR, min_size=1, max_size=12).filter(lambda n: n.lower() not in RESERVED)


@st.composite
def field_values(draw: st.DrawFn) -> bytes:
    """A field value without leading or trailing whitespace."""
    if draw(st.integers(0, 9)) == 0:
        return b""
    inner = draw(st.lists(st.sampled_from(VISIBLE + b" \t"), max_size=24))
    return bytes([draw(st.sampled_from(VISIBLE)), *inner, draw(st.sampled_from(VISIBLE))])[
        : draw(st.integers(1, 26))
    ].rstrip(b" \t")


@dataclass
class Request:
    wire: bytes = b""
    events: list[object] = field(default_factory=list)


@st.composite
def chunked_bodies(draw: st.DrawFn, body: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    """``body`` chunk-encoded at random, with extensions and trailers."""
    points = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=6))))
    bounds = [0, *(p for p in points if p < len(body)), len(body)]
    extensions = st.sampled_from([b"", b";a", b";a=b", b' ; q="x y"', b';k="\\"";l'])
    wire = b""
    for start, end in itertools.pairwise(bounds):
        if end > start:
            size = draw(st.sampled_from(["%x", "%X"])) % (end - start)
            zeros = b"0" * draw(st.integers(0, 16 - len(size)))
            wire += zeros + size.encode() + draw(extensions) + b"\r\n" + body[start:end] + b"\r\n"
    wire += b"0" * draw(st.integers(1, 3)) + draw(extensions) + b"\r\n"
    trailers: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 3))):
        name, value = draw(names), draw(field_values())
        wire += (
            name.encode() + b":" + draw(st.sampled_from(OWS)) + value + draw(st.sampled_from(OWS)) + b"\r\n"
        )
        trailers.append((name, value.decode("latin-1")))
    return wire + b"\r\n", trailers


@st.composite
def valid_requests(draw: st.DrawFn) -> Request:
    """One valid request and the events it must parse to."""
    version = draw(st.sampled_from(["HTTP/1.0", "HTTP/1.1"]))
    http11 = version == "HTTP/1.1"
    method = draw(st.text(alphabet=TCHAR + "_", min_size=1, max_size=10).filter(lambda m: m != "CONNECT"))
    path_chars = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in "?#")
    path = "/" + draw(st.text(alphabet=path_chars, max_size=12))
    query = draw(st.none() | st.text(alphabet=path_chars + "?", max_size=10))
    authority = draw(st.from_regex(r"[a-z0-9.-]{1,12}(:[0-9]{1,5})?", fullmatch=True))
    form = draw(st.sampled_from(["origin", "origin", "absolute", "asterisk"]))
    scheme = None
    host = None
    if form == "asterisk":
        method, target, path, query = "OPTIONS", "*", "*", ""
    else:
        target = path + ("" if query is None else "?" + query)
        query = query or ""
        if form == "absolute":
            scheme = draw(st.sampled_from(["http", "https"]))
            target = draw(st.sampled_from([scheme, scheme.upper()])) + "://" + authority + target
            host = authority

    # Fields as (wire line, kept (name, value) or None when dropped).
    fields: list[tuple[bytes, tuple[str, str] | None]] = []
    dropped: list[str] = []
    if http11 or draw(st.booleans()):
        fields.append((b"Host: " + authority.encode(), ("Host", authority)))
        host = host or authority
    for _ in range(draw(st.integers(0, 6))):
        name = draw(names)
        if draw(st.integers(0, 5)) == 0:
            name += "_" + draw(names)
        value = draw(field_values())
        line = name.encode() + b":" + draw(st.sampled_from(OWS)) + value + draw(st.sampled_from(OWS))
        fields.append((line, None if "_" in name else (name, value.decode("latin-1"))))
    if draw(st.booleans()):
        fields.append((b"Content-Type: text/plain", ("Content-Type", "text/plain")))

    keep_alive = http11
    connection = draw(st.sampled_from([None, "close", "keep-alive", "Keep-Alive, x"]))
    if connection is not None:
        fields.append((b"Connection: " + connection.encode(), ("Connection", connection)))
        keep_alive = connection.lower().startswith("keep-alive") or (http11 and connection != "close")
    expect = draw(st.booleans())
    if expect:
        fields.append((b"Expect: 100-continue", ("Expect", "100-continue")))

    body = draw(st.binary(max_size=60))
    framing = draw(st.sampled_from(["none", "length", "chunked"] if http11 else ["none", "length"]))
    content_length = None
    trailers: list[tuple[str, str]] = []
    encoded = b""
    if framing == "none":
        body = b""
    elif framing == "length":
        content_length = len(body)
        fields.append((b"Content-Length: %d" % len(body), ("Content-Length", str(len(body)))))
        encoded = body
    else:
        fields.append((b"Transfer-Encoding: chunked", ("Transfer-Encoding", "chunked")))
        encoded, trailers = draw(chunked_bodies(body))

    fields = draw(st.permutations(fields))
    dropped = [line.partition(b":")[0].decode() for line, kept in fields if kept is None]
    prefix = draw(st.sampled_from([b"", b"", b"\r\n", b"\r\n\r\n"]))
    wire = (
        prefix
        + f"{method} {target} {version}\r\n".encode()
        + b"".join(line + b"\r\n" for line, _ in fields)
        + b"\r\n"
        + encoded
    )
    head = RequestHead(
        method=method,
        target=target,
        path=path,
        query=query,
        version=version,
        headers=[kept for _, kept in fields if kept is not None],
        host=host,
        target_scheme=scheme,
        content_length=content_length,
        chunked=framing == "chunked",
        keep_alive=keep_alive,
        expect_continue=expect and http11,
        dropped=dropped,
    )
    return Request(wire, [head, *([body] if body else []), EndOfMessage(trailers)])


@VALID
@given(requests=st.lists(valid_requests(), min_size=1, max_size=3), draw=st.data())
def test_valid_requests_parse_the_same_however_cut(
    parse_all: ParseAll, requests: list[Request], draw: st.DataObject
) -> None:
    wire = b"".join(r.wire for r in requests)
    expected = [event for r in requests for event in r.events]
    for mode in ("whole", "bytewise", draw.draw(cuts(wire), label="cuts")):
        out = parse_all(wire, ANY_METHOD, mode, eof=True)
        assert out.error is None, (mode, out.error)
        assert out.events == [*expected, CONNECTION_CLOSED], mode
