"""The PROXY protocol (HAProxy's v1 text and v2 binary headers), sans-io.

A load balancer that speaks it sends one header before the first request
of a connection, naming the client's real address. corral reads it only
when --proxy-protocol is on, and only from peers in --proxy-allow-from
(anyone else could claim any address): from others the answer is 403.
A malformed header is answered 400. With "auto" either version is
accepted; the header is still required, since without it a client could
simply omit it and be taken at its socket address when policy expected a
proxy in between.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from corral.http import errors as E

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v1 header, CRLF included (spec section 2.1).
V1_MAX: Final = 107
_V1 = re.compile(
    rb"PROXY (?:UNKNOWN(?: [\x21-\x7e ]*)?|(TCP4|TCP6) ([0-9A-Fa-f:.]+) ([0-9A-Fa-f:.]+) "
    rb"([0-9]{1,5}) ([0-9]{1,5}))"
)


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    #: (address, port) of the client as the proxy saw it; None for UNKNOWN/LOCAL.
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    version: int


def _address(text: bytes, family: bytes) -> str:
    try:
        ip = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise E.BadRequest("malformed address in PROXY header") from None
    if (ip.version == 4) != (family == b"TCP4"):
        raise E.BadRequest("PROXY address does not match its family")
    return str(ip)


def _port(text: bytes) -> int:
    port = int(text)
    if port > 65535 or (len(text) > 1 and text[:1] == b"0"):
        raise E.BadRequest("malformed port in PROXY header")
    return port


def parse(buf: bytearray, mode: str, eof: bool) -> tuple[int, ProxyInfo] | None:
    """Parse a PROXY header at the start of ``buf``.

    :param mode: "v1", "v2" or "auto".
    :return: (bytes consumed, info), or None when more bytes are needed.
    :raises BadRequest: when the bytes cannot be the header ``mode`` allows.
    """
    want_v2 = mode in ("v2", "auto")
    want_v1 = mode in ("v1", "auto")
    if want_v2 and buf[:12] == V2_SIGNATURE[: len(buf[:12])]:
        if len(buf) < 16:
            _need(eof)
            return None
        return _parse_v2(buf)
    if want_v1 and buf[:6] == b"PROXY "[: len(buf[:6])]:
        end = buf.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buf) >= V1_MAX:
                raise E.BadRequest("PROXY v1 header too long")
            _need(eof)
            return None
        m = _V1.fullmatch(bytes(buf[:end]))
        if m is None:
            raise E.BadRequest("malformed PROXY v1 header")
        family, src, dst, sport, dport = m.groups()
        if family is None:
            return end + 2, ProxyInfo(None, None, 1)
        return end + 2, ProxyInfo((_address(src, family), _port(sport)),
                                  (_address(dst, family), _port(dport)), 1)
    raise E.BadRequest("expected a PROXY protocol header")


def _need(eof: bool) -> None:
    """More bytes are needed: fine unless the client already closed."""
    if eof:
        raise E.BadRequest("connection closed inside a PROXY header")


def _parse_v2(buf: bytearray) -> tuple[int, ProxyInfo] | None:
    ver_cmd, fam, length = struct.unpack_from("!BBH", buf, 12)
    if ver_cmd >> 4 != 2 or (ver_cmd & 0xF) > 1:
        raise E.BadRequest("unsupported PROXY v2 version or command")
    total = 16 + length
    if len(buf) < total:
        return None
    if ver_cmd & 0xF == 0:  # LOCAL: the proxy's own connection (health check)
        return total, ProxyInfo(None, None, 2)
    if fam == 0x11 and length >= 12:  # TCP over IPv4
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", buf, 16)
    elif fam == 0x21 and length >= 36:  # TCP over IPv6
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", buf, 16)
    elif fam == 0x00:
        return total, ProxyInfo(None, None, 2)
    else:
        raise E.BadRequest("unsupported PROXY v2 address family")
    return total, ProxyInfo((str(ipaddress.ip_address(src)), sport),
                            (str(ipaddress.ip_address(dst)), dport), 2)


#: The longest PROXY header: a v2 header's 16 fixed bytes and a 16-bit length
#: (a v1 line is at most 107 bytes).
PROXY_MAX: Final = 16 + 0xFFFF


class ProxyPreamble:
    """Reading a PROXY header that comes before TLS records, without I/O.

    Such a header must be taken off the raw socket before the handshake,
    and not one byte more: the TLS records behind it belong to the
    handshake. So the caller peeks at what has arrived (at most
    :meth:`want` bytes, ``MSG_PEEK``), hands it to :meth:`peeked`, then
    receives (consumes) exactly the count it returns, already queued, and
    hands that to :meth:`consumed`. Blocking and asyncio workers wrap this
    one loop in their own waits.
    """

    __slots__ = ("buf", "mode")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.buf = bytearray()

    def want(self) -> int:
        """How many bytes to peek at."""
        return PROXY_MAX - len(self.buf)

    def peeked(self, data: bytes) -> tuple[int, ProxyInfo | None]:
        """What a peek returned: (bytes to consume now, the header once it is complete).

        :raises BadRequest: for a malformed header, or a close (no bytes) before its end.
        """
        if not data:
            raise E.BadRequest("connection closed before the end of a PROXY header")
        parsed = parse(self.buf + data, self.mode, eof=False)
        if parsed is None:
            return len(data), None
        return parsed[0] - len(self.buf), parsed[1]

    def consumed(self, data: bytes) -> None:
        """Bytes received after a peek (part of the header)."""
        if not data:
            raise E.BadRequest("connection closed inside a PROXY header")
        self.buf += data

    def consume(self, recv: Callable[[int], bytes], take: int) -> None:
        """Receive the ``take`` bytes a peek showed (queued already, so ``recv`` returns at once)."""
        while take:
            got = recv(take)
            self.consumed(got)
            take -= len(got)
