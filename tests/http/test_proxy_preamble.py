"""The PROXY-before-TLS reader (corral.http.proxy.ProxyPreamble) without sockets.

What a peek shows may run past the header into the TLS records; only the
header's bytes may be consumed, whatever the peeks' sizes.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.http import errors as E
from corral.http.proxy import ProxyPreamble

HEADER = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n"
TLS = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)


class Wire:
    """A socket's receive queue: bytes arrive in steps; peek looks, recv takes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.arrived = 0
        self.pos = 0

    def arrive(self, n: int) -> None:
        self.arrived = min(len(self.data), self.arrived + n)

    def peek(self, n: int) -> bytes:
        return self.data[self.pos:min(self.arrived, self.pos + n)]

    def recv(self, n: int) -> bytes:
        out = self.peek(n)
        self.pos += len(out)
        return out


def read(stream: bytes, arrivals: list[int]) -> tuple[bytes, object]:
    """Drive the preamble as a worker does: peek, consume what it says; (consumed bytes, the info)."""
    preamble = ProxyPreamble("v1")
    wire = Wire(stream)
    steps = iter(arrivals)
    while True:
        wire.arrive(next(steps, len(stream)))  # the last step: everything is here
        take, info = preamble.peeked(wire.peek(preamble.want()))
        preamble.consume(wire.recv, take)
        if info is not None:
            return stream[:wire.pos], info


def test_only_the_header_is_consumed_when_tls_bytes_follow_in_the_same_peek() -> None:
    consumed, info = read(HEADER + TLS, [len(HEADER) + len(TLS)])
    assert consumed == HEADER
    assert info.source == ("203.0.113.7", 51234)  # type: ignore[attr-defined]


@given(st.lists(st.integers(1, 20), min_size=1, max_size=30))
def test_any_arrival_pattern_consumes_exactly_the_header(sizes: list[int]) -> None:
    consumed, _ = read(HEADER + TLS, sizes)
    assert consumed == HEADER


def test_a_close_before_the_end_of_the_header_is_a_400() -> None:
    preamble = ProxyPreamble("v1")
    take, info = preamble.peeked(HEADER[:10])
    assert (take, info) == (10, None)
    preamble.consumed(HEADER[:10])
    with pytest.raises(E.BadRequest):
        preamble.peeked(b"")


def test_a_malformed_header_is_a_400() -> None:
    with pytest.raises(E.BadRequest):
        ProxyPreamble("v1").peeked(b"PROXY NONSENSE\r\n" + TLS)
