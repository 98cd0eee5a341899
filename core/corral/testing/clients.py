"""Small raw-socket clients for worker tests: one framed response, a close, more files.

For what http.client cannot do: read one response off a keep-alive or
pipelining connection, tell a silent close from a pending answer, and let a
test open thousands of connections.
"""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Iterator

import pytest


def read_head(sock: socket.socket, buf: bytes = b"") -> tuple[int, list[tuple[str, str]], bytes]:
    """Read one response head: (status, [(lowercased name, value)] in order, bytes after the head).

    ``buf`` holds bytes already read from ``sock``; duplicate fields are kept.
    """
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a response head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    return int(lines[0].split()[1]), fields, rest


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length framed response from a connection that stays open.

    Fails the test if the server closes early or sends more than one response.
    """
    sock.settimeout(timeout)
    status, fields, body = read_head(sock)
    headers = dict(fields)
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("closed in the middle of a response body")
        body += chunk
    assert len(body) == length, "more bytes than one response"
    return status, headers, body


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True if the server closes within ``timeout`` without sending anything (more)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@contextlib.contextmanager
def open_files_limit(wanted: int) -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE to the hard limit for the block, or skip the test.

    A server started inside the block inherits the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} open files, the hard limit is {hard}")
    raised = max(soft, wanted) if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
