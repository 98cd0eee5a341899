"""The WSGI layer without sockets: wsgi.input, start_response, serialisation."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.http.parser import ParserLimits, RequestHead, RequestParser
from corral.wsgi.body import Body
from corral.wsgi.environ import EnvironContext, build_environ
from corral.wsgi.response import Response, ResponseError


def body_of(data: bytes, piece: int = 3) -> Body:
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    return Body(lambda: pieces.pop(0) if pieces else b"")


def test_body_read_styles() -> None:
    data = b"one\ntwo\nthree\nfour"
    assert body_of(data).read() == data
    assert body_of(data).read(5) == b"one\nt"
    b = body_of(data)
    assert [b.readline(), b.readline(2), b.readline(), b.readline(), b.readline()] == \
        [b"one\n", b"tw", b"o\n", b"three\n", b"four"]
    assert body_of(data).readlines() == [b"one\n", b"two\n", b"three\n", b"four"]
    assert body_of(data).readlines(5) == [b"one\n", b"two\n"]
    assert list(body_of(data)) == [b"one\n", b"two\n", b"three\n", b"four"]
    b = body_of(data)
    assert b.read(100) == data and b.read() == b"" and b.readline() == b""


def test_the_empty_body_answers_as_a_body_with_nothing_in_it() -> None:
    # wsgi.input of every bodyless request: one shared, stateless instance
    # that must behave as a Body over an empty source in every call.
    from corral.wsgi.body import EMPTY_BODY

    def calls(body: object) -> list[object]:
        b: Any = body
        return [b.read(), b.read(5), b.read(None), b.readline(), b.readline(3), b.readlines(),
                b.readlines(10), list(b), b.complete, b.trailers]

    assert calls(EMPTY_BODY) == calls(Body(lambda: b""))
    with pytest.raises(AttributeError):
        EMPTY_BODY.anything = 1  # type: ignore[attr-defined]
    EMPTY_BODY.trailers.append(("X", "y"))  # a copy each time: nothing is shared
    assert EMPTY_BODY.trailers == []


def test_body_calls_on_first_read_once() -> None:
    calls = []
    b = Body(lambda: b"", lambda: calls.append(1))
    b.read()
    b.read()
    assert calls == [1]


#: One operation on wsgi.input: ("read", n), ("readline", n) with None for no limit.
_ops = st.lists(st.tuples(st.sampled_from(["read", "readline"]),
                          st.one_of(st.none(), st.integers(-1, 40))), max_size=30)


@given(data=st.binary(max_size=200), pieces=st.lists(st.integers(1, 50), min_size=1), ops=_ops)
def test_body_matches_a_file_whatever_the_pieces(data: bytes, pieces: list[int], ops: list) -> None:
    """Any mix of read(n), read(), readline(n) over any split of the body reads as a file does.

    read() hands pieces on whole, or as views joined, and keeps a split
    piece's tail as a view: the cases where that could lose or reorder
    bytes are the splits and the switches between read and readline.
    """
    cuts: list[bytes] = []
    i = 0
    for n in pieces * (len(data) // sum(pieces) + 1):
        if i >= len(data):
            break
        cuts.append(data[i : i + n])
        i += n
    body = Body(lambda: cuts.pop(0) if cuts else b"")
    ref = io.BytesIO(data)
    for op, n in ops:
        got = getattr(body, op)(n)
        assert type(got) is bytes
        assert got == getattr(ref, op)(n), (op, n)
    assert body.read() == ref.read()


def test_body_read_hands_on_whole_pieces_without_copying() -> None:
    pieces = [b"a" * 8, b"b" * 8, b"c" * 8]
    sent = list(pieces)
    body = Body(lambda: sent.pop(0) if sent else b"")
    assert body.read(8) is pieces[0]  # exactly a piece: the same object
    assert body.read(20) == b"b" * 8 + b"c" * 8
    assert body.read(8) == b""
    only = b"y" * 10
    box = [only]
    assert Body(lambda: box.pop(0) if box else b"").read() is only  # read() of one piece


def _head(method: str = "GET", version: str = "HTTP/1.1") -> RequestHead:
    p = RequestParser(ParserLimits())
    host = b"Host: h\r\n" if version == "HTTP/1.1" else b""
    p.feed(f"{method} / {version}\r\n".encode() + host + b"\r\n")
    head = p.next_event()
    assert isinstance(head, RequestHead)
    return head


def _run(app_result: list[bytes], status: str, headers: list[tuple[str, str]], *,
         method: str = "GET", version: str = "HTTP/1.1", hint: bool = True) -> bytes:
    resp = Response(_head(method, version), True)
    resp.start(status, headers)
    if hint and len(app_result) == 1:
        resp.length_hint = len(app_result[0])
    out = [resp.piece(data) for data in app_result]
    return b"".join([*out, resp.end()])


def test_single_piece_gets_a_length_and_one_send() -> None:
    resp = Response(_head(), True)
    resp.start("200 OK", [("Content-Type", "text/plain")])
    resp.length_hint = 5
    out = resp.piece(b"hello")
    assert out.endswith(b"Content-Length: 5\r\n\r\nhello")
    assert resp.complete  # nothing can follow: a closing connection may close right after
    assert resp.end() == b""


def test_unknown_length_is_chunked_on_11_and_close_delimited_on_10() -> None:
    data = _run([b"a", b"bc"], "200 OK", [], hint=False)
    assert b"Transfer-Encoding: chunked" in data and data.endswith(b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n")
    data = _run([b"a", b"bc"], "200 OK", [], version="HTTP/1.0", hint=False)
    assert b"Connection: close" in data and data.endswith(b"\r\n\r\nabc")


def test_no_body_for_head_204_304() -> None:
    assert _run([b"body"], "200 OK", [], method="HEAD").endswith(b"Content-Length: 4\r\n\r\n")
    for status in ("204 No Content", "304 Not Modified"):
        data = _run([b"body"], status, [], hint=False)
        assert data.endswith(b"\r\n\r\n") and b"Transfer-Encoding" not in data


def test_never_more_than_content_length() -> None:
    resp = Response(_head(), True)
    resp.start("200 OK", [("Content-Length", "3")])
    out = resp.piece(b"abcdef") + resp.end()
    assert out.endswith(b"\r\n\r\nabc") and resp.keep_alive is False


def test_short_body_closes_connection() -> None:
    resp = Response(_head(), True)
    resp.start("200 OK", [("Content-Length", "10")])
    resp.piece(b"abc")
    assert not resp.complete
    resp.end()
    assert resp.keep_alive is False


@pytest.mark.parametrize("headers", [
    [("X-A", "a\r\nInjected: 1")], [("X-A", "a\nb")], [("X-A", "a\x00")], [("Bad Name", "v")],
    [("Transfer-Encoding", "chunked")], [("Upgrade", "h2c")], [("Keep-Alive", "5")],
    [("Content-Length", "+5")], [(b"X", "v")],  # type: ignore[list-item]
])
def test_bad_response_headers_refused(headers: list[tuple[str, str]]) -> None:
    resp = Response(_head(), True)
    with pytest.raises(ResponseError):
        resp.start("200 OK", headers)


@pytest.mark.parametrize("status", ["200", "OK 200", "2000 X", "200 bad\r\nX: y", 200])
def test_bad_status_refused(status: object) -> None:
    resp = Response(_head(), True)
    if status == "200":
        resp.start(status, [])  # a bare code is allowed
        return
    with pytest.raises(ResponseError):
        resp.start(status, [])  # type: ignore[arg-type]


def test_exc_info_before_and_after_headers() -> None:
    resp = Response(_head(), True)
    resp.start("200 OK", [])
    with pytest.raises(ResponseError):
        resp.start("500 Oops", [])  # a second call needs exc_info
    try:
        raise ValueError("app failed")
    except ValueError:
        resp.start("500 Oops", [("Content-Length", "0")], sys.exc_info())
    assert resp.end().startswith(b"HTTP/1.1 500 Oops\r\n")
    sent = Response(_head(), True)
    sent.start("200 OK", [])
    sent.piece(b"x")
    with pytest.raises(ValueError, match="late"):
        try:
            raise ValueError("late")
        except ValueError:
            sent.start("500 Oops", [], sys.exc_info())


def test_connection_close_from_app_is_honoured() -> None:
    data = _run([b"x"], "200 OK", [("Connection", "close")])
    assert data.count(b"Connection: close") == 1


def test_a_field_validated_before_goes_out_the_same_and_keeps_its_role() -> None:
    # The second response finds its fields among those already validated:
    # the head is byte for byte the first one's, the app's own Server and
    # Date still replace corral's, and the fields the app sees are its own.
    from corral.wsgi import response as R

    R._VALID_FIELDS.clear()
    headers = [("Content-Type", "text/plain"), ("Server", "mine"), ("Date", "Thu, 01 Jan 1970 00:00:00 GMT"),
               ("X-Custom", "a b"), ("Content-Length", "1")]
    first = _run([b"x"], "200 OK", headers)
    assert ("X-Custom", "a b") in R._VALID_FIELDS and ("Content-Length", "1") not in R._VALID_FIELDS
    second = _run([b"x"], "200 OK", headers)
    assert second == first
    assert first.count(b"Server:") == 1 and b"Server: mine\r\n" in first
    assert first.count(b"Date:") == 1
    resp = Response(_head(), True)
    resp.start("200 OK", headers)
    assert resp.headers == headers


@pytest.mark.parametrize("field", [("Connection", "close"), ("Keep-Alive", "5"), ("X-A", "a\r\nB: 1")])
def test_hop_by_hop_and_refused_fields_are_judged_every_time(field: tuple[str, str]) -> None:
    from corral.wsgi import response as R

    R._VALID_FIELDS.clear()
    for _ in range(2):
        resp = Response(_head(), True)
        if field[0] == "Connection":
            resp.start("200 OK", [field])
            assert resp.keep_alive is False and resp.headers == []
        else:
            with pytest.raises(ResponseError):
                resp.start("200 OK", [field])
    assert not R._VALID_FIELDS


def test_an_unhashable_value_is_refused_as_an_error_of_the_app() -> None:
    # The field cache is a dict: a list value must not turn into a TypeError.
    resp = Response(_head(), True)
    with pytest.raises(ResponseError, match="must be str"):
        resp.start("200 OK", [("X-A", ["v"])])  # type: ignore[list-item]


def test_a_list_pair_is_refused_even_when_its_values_were_seen() -> None:
    from corral.wsgi import response as R

    R._VALID_FIELDS.clear()
    _run([b"x"], "200 OK", [("X-A", "1")])
    resp = Response(_head(), True)
    with pytest.raises(ResponseError, match="tuple"):
        resp.start("200 OK", [["X-A", "1"]])  # type: ignore[list-item]


def test_environ_script_name_and_decoding() -> None:
    p = RequestParser()
    p.feed(b"GET /app/caf%C3%A9?q=%20 HTTP/1.1\r\nHost: example.com:8080\r\nX-Multi: a\r\nX-Multi: b\r\n\r\n")
    head = p.next_event()
    assert isinstance(head, RequestHead)
    ctx = EnvironContext(server_name="0.0.0.0", server_port="8000", script_name="/app")
    env = build_environ(head, ctx, None, ("10.0.0.1", 1234))
    assert env["SCRIPT_NAME"] == "/app"
    assert env["PATH_INFO"] == "/caf\xc3\xa9"  # latin-1 decoding of the percent-decoded bytes
    assert env["QUERY_STRING"] == "q=%20"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.com", "8080")
    assert env["HTTP_X_MULTI"] == "a,b"
    assert env["wsgi.url_scheme"] == "http"  # 10.0.0.1 is not a trusted proxy
