"""``wsgi.file_wrapper``: lets a worker send a real file with os.sendfile."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

#: Read size for the plain-iterator fallback; 64 KiB matches the socket
#: buffers on Linux, so each chunk is one send.
DEFAULT_BLOCK_SIZE = 65536


class FileWrapper:
    """Wraps a file-like object; iterating reads it in blocks.

    A worker that sees this type and finds a real file descriptor behind it
    sends it with ``socket.sendfile`` instead of iterating.
    """

    def __init__(self, filelike: IO[bytes] | Any, blksize: int = DEFAULT_BLOCK_SIZE) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data

    def fileno(self) -> int | None:
        """The fd if the wrapped object is a real file, else None."""
        try:
            return int(self.filelike.fileno())
        except (AttributeError, OSError, ValueError):
            return None
