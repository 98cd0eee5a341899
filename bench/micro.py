#!/usr/bin/env python3
"""Parse + environ + serialise per request, without sockets (issue 3's micro-benchmark).

Times corral's sans-io request path for one typical browser GET (about 500
bytes of head) and a hello-world app, in the pieces a worker runs for every
request (see corral.workers.connection.HttpConnection.handle):

    parse     RequestParser: feed, the head, the end of the (empty) body
    environ   build_environ() (wsgi.input: the shared empty body)
    response  Response(), the app's start_response, write(), finish()

and, for corral only, what a line of the access log adds when it is on
(rendering, the buffer append, the writes to /dev/null it brings, as a
worker calls it after each response): in gunicorn's default format and in
JSON. Issue 5 asks that the log cost no more than a few percent.

Each figure is the best of several timeit repeats (the minimum is the run
least disturbed by the rest of the machine), in microseconds per request.
"total" runs the three in one function, so it also pays the calls between
them. When gunicorn is importable, its own parser + environ + response path
is timed the same way on an in-memory source, for comparison.

    python bench/micro.py [--repeat 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import timeit
from collections.abc import Callable, Iterable
from typing import Any, Final

from corral.accesslog import DEFAULT_FORMAT, AccessLog
from corral.http.parser import EndOfMessage, ParserLimits, RequestHead, RequestParser
from corral.wsgi.body import EMPTY_BODY
from corral.wsgi.environ import EnvironContext, TrustedPeers, build_environ
from corral.wsgi.response import Response

#: A Firefox-like navigation request: the header set and sizes a server sees
#: most, 500-odd bytes. Connection: keep-alive as browsers send it.
REQUEST: Final = (
    b"GET /articles/2024/11/fast-python-servers?page=2&sort=recent HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Cookie: sessionid=3f9a7c1e5b2d4a6f8e0c; csrftoken=Kq8ZpT2xWm4VnB7yR1sD; theme=dark\r\n"
    b"Connection: keep-alive\r\n"
    b"Referer: https://www.example.com/articles/2024/11/\r\n"
    b"\r\n"
)
PEER: Final = ("127.0.0.1", 54321)
HELLO: Final = b"Hello, World!"

StartResponse = Callable[..., Any]


def hello_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


def best_us(cases: dict[str, dict[str, Callable[[], object]]], repeat: int,
            number: int | None = None) -> dict[str, dict[str, float]]:
    """Best-of-``repeat`` microseconds per call for every case.

    The repeats are interleaved (every case once, then every case again...),
    so a burst of load from elsewhere on the machine spoils one repeat of
    many cases rather than every repeat of one; each repeat runs >= 0.2 s
    unless ``number`` fixes the calls per repeat (a smoke test's choice).
    """
    timers = {
        (server, name): timeit.Timer(fn) for server, named in cases.items() for name, fn in named.items()
    }
    numbers = {key: number or timer.autorange()[0] for key, timer in timers.items()}
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(repeat):
        for key, timer in timers.items():
            best[key] = min(best[key], timer.timeit(numbers[key]) / numbers[key] * 1e6)
    out: dict[str, dict[str, float]] = {}
    for (server, name), us in best.items():
        out.setdefault(server, {})[name] = us
    return out


# -- corral ----------------------------------------------------------------------


def corral_cases() -> dict[str, Callable[[], object]]:
    limits = ParserLimits()
    # As a worker builds it for a TCP listener (Worker.environ_context).
    ctx = EnvironContext(
        server_name="127.0.0.1",
        server_port="8000",
        trusted=TrustedPeers(["127.0.0.1", "::1"]),
        extra={"corral.pool": "main", "corral.worker_class": "sync"},
    )
    sent: list[bytes] = []
    send = sent.append

    def parse_fresh() -> RequestHead:
        # A new parser per request: a sync worker's connection serves one.
        parser = RequestParser(limits)
        parser.feed(REQUEST)
        head = parser.next_event()
        eom = parser.next_event()
        assert type(eom) is EndOfMessage
        return head  # type: ignore[return-value]

    reused = RequestParser(limits)

    def parse_reused() -> RequestHead:
        # Keep-alive: one parser for the connection's requests.
        reused.feed(REQUEST)
        head = reused.next_event()
        reused.next_event()
        reused.start_next()
        return head  # type: ignore[return-value]

    head = parse_fresh()

    def environ() -> dict[str, Any]:
        return build_environ(head, ctx, EMPTY_BODY, PEER)

    env = environ()

    def respond_to(h: RequestHead, e: dict[str, Any]) -> None:
        # What HttpConnection.handle does around the app, minus the socket.
        resp = Response(h, h.keep_alive)

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            resp.start(status, headers, exc_info)
            return write

        def write(data: bytes) -> None:
            out = resp.piece(data)
            if out:
                send(out)

        result = hello_app(e, start_response)
        if type(result) in (list, tuple) and len(result) == 1 and resp.content_length is None:
            resp.length_hint = len(result[0])  # type: ignore[index]
        for data in result:
            write(data)
        out = resp.end()
        if out:
            send(out)
        sent.clear()

    def response() -> None:
        respond_to(head, env)

    def total() -> None:
        h = parse_fresh()
        respond_to(h, build_environ(h, ctx, EMPTY_BODY, PEER))

    # Sanity: the pieces produce what a client expects.
    resp = Response(head, True)

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        resp.start(status, headers, exc_info)
        return lambda data: sent.append(resp.piece(data))

    sent.extend(resp.piece(data) for data in hello_app(env, start))
    sent.append(resp.end())
    wire = b"".join(sent)
    sent.clear()
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n") and wire.endswith(b"\r\n\r\n" + HELLO), wire
    assert env["HTTP_COOKIE"].startswith("sessionid=") and env["QUERY_STRING"] == "page=2&sort=recent"

    # The access log reads the finished response of the sanity check above.
    text_log = AccessLog("/dev/null", DEFAULT_FORMAT).log
    json_log = AccessLog("/dev/null", "json").log

    return {
        "parse": parse_fresh,
        "parse (reused parser)": parse_reused,
        "environ": environ,
        "response": response,
        "total": total,
        "access log line, text": lambda: text_log(head, env, resp, 0.000123),
        "access log line, json": lambda: json_log(head, env, resp, 0.000123),
    }


# -- gunicorn --------------------------------------------------------------------


class _FakeSocket:
    """What gunicorn's Response writes to: sendall() into a list."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)

    send = sendall

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8000)


def gunicorn_cases() -> tuple[dict[str, Callable[[], object]], str] | tuple[None, str]:
    try:
        import gunicorn
        from gunicorn.config import Config
        from gunicorn.http import wsgi
        from gunicorn.http.parser import RequestParser as GRequestParser
    except ImportError as exc:
        return None, f"gunicorn not importable ({exc}); skipped"
    cfg = Config()
    sock = _FakeSocket()
    server = ("127.0.0.1", 8000)

    def parse_fresh() -> Any:
        # An iterable source makes gunicorn read from memory (IterUnreader).
        return next(GRequestParser(cfg, [REQUEST], PEER))

    endless = GRequestParser(cfg, itertools.repeat(REQUEST), PEER)

    def parse_reused() -> Any:
        return next(endless)

    req = parse_fresh()

    def environ() -> Any:
        # gunicorn's create() builds the Response object along with the environ.
        return wsgi.create(req, sock, PEER, server, cfg)

    _, env = environ()

    def respond_to(r: Any, e: dict[str, Any]) -> None:
        # The sync worker's handle_request, minus the socket and the access log.
        resp = wsgi.Response(r, sock, cfg)
        for data in hello_app(e, resp.start_response):
            resp.write(data)
        resp.close()
        sock.sent.clear()

    def response() -> None:
        respond_to(req, env)

    def total() -> None:
        r = parse_fresh()
        resp, e = wsgi.create(r, sock, PEER, server, cfg)
        for data in hello_app(e, resp.start_response):
            resp.write(data)
        resp.close()
        sock.sent.clear()

    respond_to(req, env)
    return {
        "parse": parse_fresh,
        "parse (reused parser)": parse_reused,
        "environ": environ,
        "response": response,
        "total": total,
    }, f"gunicorn {gunicorn.__version__}"


# -- main --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=7, help="timeit repeats; the best is reported")
    p.add_argument("--json", type=str, default=None, help="also write the figures here")
    p.add_argument("--number", type=int, default=None,
                   help="calls per repeat (default: as many as take >= 0.2 s); few give rough figures")
    args = p.parse_args(argv)

    import corral

    labels = {"corral": f"corral {corral.__version__}"}
    cases = {"corral": corral_cases()}
    gcases, glabel = gunicorn_cases()
    labels["gunicorn"] = glabel
    if gcases is not None:
        cases["gunicorn"] = gcases
    results = best_us(cases, args.repeat, args.number)

    print(f"request head: {len(REQUEST)} bytes; Python {platform.python_version()}; best of {args.repeat}")
    names = list(results["corral"])
    cols = list(results)
    ratio_head = "    ratio" if len(cols) > 1 else ""
    print(f"{'us per request':24}" + "".join(f"{c:>12}" for c in cols) + ratio_head)
    for name in names:
        row = f"{name:24}" + "".join(f"{results[c][name]:12.2f}" if name in results[c] else f"{'-':>12}"
                                     for c in cols)
        if len(cols) > 1 and name in results["gunicorn"]:
            row += f"  {results['corral'][name] / results['gunicorn'][name]:6.2f}x"
        print(row)
    if gcases is None:
        print(glabel)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "request_bytes": len(REQUEST),
                    "python": sys.version,
                    "repeat": args.repeat,
                    "labels": labels,
                    "us": results,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
