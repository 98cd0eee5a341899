"""RFC corner cases settled after the main rule tables were written."""

from __future__ import annotations

import pytest

from corral.http import errors as E
from corral.http.parser import EndOfMessage, RequestHead, RequestParser


def _events(data: bytes) -> list[object]:
    p = RequestParser()
    p.feed(data)
    out = []
    while True:
        ev = p.next_event()
        if not isinstance(ev, RequestHead | EndOfMessage | bytes):
            return out
        out.append(ev)
        if isinstance(ev, EndOfMessage):
            return out


@pytest.mark.parametrize("te", [b", chunked", b" , ,chunked"])
def test_empty_transfer_coding_elements_are_ignored(te: bytes) -> None:
    # RFC 9110 5.6.1: a recipient ignores empty list elements.
    events = _events(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + te + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert isinstance(events[0], RequestHead) and events[0].chunked
    assert events[1] == b"abc"


@pytest.mark.parametrize("te", [b",", b"chunked, ", b"chunked ,"])
def test_empty_or_trailing_empty_elements_are_refused(te: bytes) -> None:
    # llhttp refuses anything after the final "chunked", empty or not: a
    # stricter reading than RFC 9110 5.6.1, and never a misframing.
    with pytest.raises(E.BadRequest):
        _events(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + te + b"\r\n\r\n0\r\n\r\n")


@pytest.mark.parametrize("target", [b":443", b"[::1]", b"example.com"])
def test_connect_needs_host_and_port(target: bytes) -> None:
    with pytest.raises(E.BadRequest):
        _events(b"CONNECT " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")


def test_connect_with_host_and_port() -> None:
    (head, *_rest) = _events(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert isinstance(head, RequestHead) and head.host == "example.com:443"
