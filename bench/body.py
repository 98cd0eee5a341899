#!/usr/bin/env python3
"""Reading a request body through wsgi.input, without sockets.

Times corral's parser and ``wsgi.input`` (corral.wsgi.body.Body) on a 1 MiB
upload that arrives in 64 KiB pieces, as a worker's recv() calls deliver
it (the first piece shares its bytes with the head), read by the app with
``read(65536)``, ``read(8192)`` and ``read()``: the copies and allocations
of the body path, which the ``post1m`` workload of run.py measures with
sockets. Best of several timeit repeats, microseconds per request.

    python bench/body.py [--repeat 5] [--number 200]
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Iterator

from corral.http.parser import NEED_DATA, RequestHead, RequestParser
from corral.wsgi.body import Body

SIZE = 1 << 20
PIECE = 65536
HEAD = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % SIZE


def pieces() -> list[bytes]:
    stream = HEAD + bytes(SIZE)
    return [stream[i : i + PIECE] for i in range(0, len(stream), PIECE)]


def read_upload(chunks: list[bytes], read_size: int) -> int:
    """Parse the head, then read the whole body as an app would; the bytes read."""
    parser = RequestParser()
    source: Iterator[bytes] = iter(chunks)
    parser.feed(next(source))
    if not isinstance(parser.next_event(), RequestHead):
        raise RuntimeError("the head did not parse")

    def receive() -> bytes:
        while True:
            event = parser.next_event()
            if type(event) is bytes:
                return event
            if event is NEED_DATA:
                parser.feed(next(source))
                continue
            return b""

    body = Body(receive)
    total = 0
    while data := body.read(read_size):
        total += len(data)
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeat", type=int, default=5, help="timeit repeats; the best is reported")
    p.add_argument("--number", type=int, default=200, help="requests per repeat")
    args = p.parse_args(argv)
    chunks = pieces()
    for read_size in (65536, 8192, -1):
        if read_upload(chunks, read_size) != SIZE:
            raise RuntimeError(f"read({read_size}) lost bytes")
        best = min(timeit.repeat(lambda rs=read_size: read_upload(chunks, rs),  # type: ignore[misc]
                                 number=args.number, repeat=args.repeat)) / args.number
        print(f"read({read_size}): {best * 1e6:.0f} us per 1 MiB body")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
