"""Parsing listen addresses: ``HOST:PORT``, ``[IPv6]:PORT``, ``unix:PATH``, ``fd://N``."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class Address:
    kind: str  # "tcp", "unix" or "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse one bind address; ValueError says what was wrong and what is accepted."""
    hint = "use HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N"
    if text.startswith("unix:"):
        path = text[5:]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError(f"{text!r} has no socket path; {hint}")
        return Address("unix", path=path)
    if text.startswith("fd://"):
        fd = text[5:]
        if not fd.isdigit() or not fd.isascii():
            raise ValueError(f"{text!r}: fd:// takes a file descriptor number")
        return Address("fd", fd=int(fd))
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r} has no closing ']'; {hint}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':' after ']'; {hint}")
        port_text = rest[1:] if rest else "8000"
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: put IPv6 addresses in brackets, e.g. [::1]:8000")
    else:
        host, _, port_text = text.partition(":")
        port_text = port_text or "8000"
    if _PORT.fullmatch(port_text) is None or int(port_text) > 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535; {hint}")
    if "/" in host:
        raise ValueError(f"{text!r} looks like a path; did you mean unix:{text}?")
    return Address("tcp", host=host or "0.0.0.0", port=int(port_text))
