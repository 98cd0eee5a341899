"""``wsgi.input``: a file-like view of one request body that never reads past it."""

from __future__ import annotations

from collections.abc import Callable, Iterator


class Body:
    """The request body as PEP 3333 wants it: read, readline, readlines, iteration.

    ``receive()`` returns the next piece of decoded body, and ``b""`` once the
    body is complete; the worker implements it on top of the parser, so
    chunked bodies are decoded as they are read and nothing past the body is
    consumed. ``on_first_read`` runs before the first receive (the worker
    sends ``100 Continue`` there when the client asked for it).

    Errors from ``receive`` (a timeout, a closed connection, a framing error)
    propagate to the application, which normally lets them turn into a 500 or
    a closed connection.
    """

    __slots__ = ("_buf", "_done", "_on_first_read", "_receive", "trailers")

    def __init__(
        self,
        receive: Callable[[], bytes],
        on_first_read: Callable[[], None] | None = None,
    ) -> None:
        self._receive = receive
        self._on_first_read = on_first_read
        self._buf = bytearray()
        self._done = False
        #: Filled in when a chunked body ends with trailer fields.
        self.trailers: list[tuple[str, str]] = []

    def _fill(self) -> bool:
        if self._done:
            return False
        if self._on_first_read is not None:
            callback, self._on_first_read = self._on_first_read, None
            callback()
        data = self._receive()
        if not data:
            self._done = True
            return False
        self._buf += data
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._buf)
            self._buf.clear()
            return data
        while len(self._buf) < size and self._fill():
            pass
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl >= 0:
                end = nl + 1
                break
            if 0 <= limit <= len(self._buf):
                end = limit
                break
            start = len(self._buf)
            if not self._fill():
                end = len(self._buf)
                break
        if 0 <= limit < end:
            end = limit
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    @property
    def complete(self) -> bool:
        """True once the whole body has been received (read or not)."""
        return self._done


EMPTY_BODY_SOURCE: Callable[[], bytes] = lambda: b""  # noqa: E731 - a shared constant
