"""Helpers of the asgi worker tests: apps written into tmp_path, raw HTTP and WebSocket frames."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from corral.testing import CorralProcess
from corral.testing.clients import read_head  # noqa: F401  (re-exported for the tests here)

#: The ``serve`` fixture (conftest.py): ``serve(source, *args, wait_ready=True, **kw)``.
Serve = Callable[..., CorralProcess]


def app_process(tmp_path: Path, source: str, *args: str, module: str = "app", attr: str = "app",
                workers: int = 1, env: dict[str, str] | None = None,
                worker_class: str = "asgi") -> CorralProcess:
    """Write ``source`` as ``tmp_path/module.py``; a server of ``module:attr`` (--chdir tmp_path), not started."""
    (tmp_path / f"{module}.py").write_text(source)
    return CorralProcess(f"{module}:{attr}", ["--chdir", str(tmp_path), *args], workdir=tmp_path,
                         worker_class=worker_class, workers=workers, env=env)


def wait_for_text(path: Path, timeout: float = 10.0) -> str:
    """The content of ``path`` once it exists and is not empty (apps write it with os.replace)."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            text = path.read_text()
            if text:
                return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


#: App-side: write a marker file atomically (the test never reads half of it).
MARK = '''
import os as _os

def mark(name, text):
    with open(name + ".tmp", "w") as f:
        f.write(str(text))
    _os.replace(name + ".tmp", name)
'''


def read_exact(sock: socket.socket, n: int, buf: bytes) -> tuple[bytes, bytes]:
    """``n`` bytes (buffered ones first), and what came after them."""
    while len(buf) < n:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += data
    return buf[:n], buf[n:]


def chunks_of(data: bytes) -> tuple[list[bytes], bool]:
    """The chunks of a chunked body, and whether the terminating 0-size chunk was there."""
    chunks = []
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            return chunks, False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return chunks, data.startswith(b"\r\n")
        if len(data) < size + 2:
            return chunks, False
        assert data[size:size + 2] == b"\r\n", data[:size + 10]
        chunks.append(data[:size])
        data = data[size + 2:]
    return chunks, False


# -- WebSocket frames by hand (for what a correct client never sends) -----------------------------

WS_KEY = base64.b64encode(b"0123456789abcdef").decode()
#: The accept token of WS_KEY (RFC 6455 section 1.3).
WS_ACCEPT = base64.b64encode(
    __import__("hashlib").sha1((WS_KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
).decode()


def ws_request(path: str, *extra: str, key: str | None = WS_KEY, version: str = "13") -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: localhost", "Upgrade: websocket", "Connection: Upgrade"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version:
        lines.append(f"Sec-WebSocket-Version: {version}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True) -> bytes:
    """One client frame; masked unless ``mask`` is false (which RFC 6455 forbids a client)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    maskbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, maskbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, maskbit | 126, n)
    else:
        head = struct.pack("!BBQ", first, maskbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


def read_frame(sock: socket.socket, buf: bytes) -> tuple[bool, int, bytes, bytes]:
    """One server frame (unmasked): (fin, opcode, payload, bytes after it)."""
    head, buf = read_exact(sock, 2, buf)
    fin, opcode = bool(head[0] & 0x80), head[0] & 0x0F
    assert not head[1] & 0x80, "a server frame is never masked"
    n = head[1] & 0x7F
    if n == 126:
        raw, buf = read_exact(sock, 2, buf)
        n = struct.unpack("!H", raw)[0]
    elif n == 127:
        raw, buf = read_exact(sock, 8, buf)
        n = struct.unpack("!Q", raw)[0]
    payload, buf = read_exact(sock, n, buf)
    return fin, opcode, payload, buf


def parse_close(payload: bytes) -> tuple[int, str]:
    if not payload:
        return 1005, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


class WsClient:
    """A WebSocket client of wsproto's (the client side of the same library, over a real socket)."""

    def __init__(self, sock: socket.socket) -> None:
        from wsproto import ConnectionType, WSConnection

        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[object] = []

    def handshake(self, target: str, **request: object) -> object:
        """Send the Request; the first answer event (AcceptConnection or RejectConnection)."""
        from wsproto.events import Request

        self.send(Request(host="localhost", target=target, **request))  # type: ignore[arg-type]
        return self.next_event()

    def send(self, event: object) -> None:
        self.sock.sendall(self.ws.send(event))  # type: ignore[arg-type]

    def next_event(self) -> object:
        while not self.pending:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
            if not data and not self.pending:
                raise AssertionError("the connection closed with no further event")
        return self.pending.pop(0)

    def message(self) -> str | bytes:
        """The next whole message (fragments joined)."""
        from wsproto.events import BytesMessage, TextMessage

        parts: list[str | bytes] = []
        while True:
            event = self.next_event()
            assert isinstance(event, TextMessage | BytesMessage), event
            parts.append(event.data)
            if event.message_finished:
                if isinstance(event, TextMessage):
                    return "".join(p for p in parts if isinstance(p, str))
                return b"".join(p for p in parts if isinstance(p, bytes))
