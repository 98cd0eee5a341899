"""The access log: gunicorn's format atoms, or one JSON object per request.

The format is compiled once into a list of (literal, getter) pairs, so a
request costs a handful of function calls and one write. With no
``--access-logfile`` the worker has no access logger at all and pays
nothing.

Every value that came from the client is escaped before it is written:
in the text format a quote, a backslash or a control character becomes
``\\xHH`` (so a header holding ``"`` cannot forge a field); the JSON format
relies on json.dumps, which escapes them by construction.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from corral.http.parser import RequestHead

#: gunicorn's default access_log_format.
DEFAULT_FORMAT: Final = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
_ATOM = re.compile(r"%\((\{[^}]+\}[ioe]|[A-Za-z]+)\)s")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\]')
#: The atoms the JSON format writes, under readable names.
JSON_FIELDS: Final = {
    "remote_addr": "h", "time": "t", "request": "r", "method": "m", "path": "U",
    "query": "q", "protocol": "H", "status": "s", "bytes": "B", "referer": "f",
    "user_agent": "a", "user": "u", "duration_us": "D", "pid": "p",
}


def _escape(value: str) -> str:
    # Most values need nothing: two substring tests and isprintable() (C
    # speed) decide that before the regular expression runs.
    if '"' not in value and "\\" not in value and value.isprintable():
        return value
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


class Entry:
    """What one log line is made of; built only when an access log is on."""

    __slots__ = ("environ", "head", "resp", "start_wall", "took")

    def __init__(self, head: RequestHead, environ: dict[str, Any], resp: Any, took: float) -> None:
        self.head = head
        self.environ = environ
        self.resp = resp
        self.took = took
        self.start_wall = time.time() - took


def _request_header(name: str) -> Callable[[Entry], str]:
    return lambda e: e.head.get(name) or "-"


def _response_header(name: str) -> Callable[[Entry], str]:
    lname = name.lower()

    def get(e: Entry) -> str:
        for key, value in e.resp.headers:
            if key.lower() == lname:
                return str(value)
        return "-"

    return get


def _environ_var(name: str) -> Callable[[Entry], str]:
    return lambda e: str(e.environ.get(name, "-"))


def _user(e: Entry) -> str:
    auth = e.environ.get("HTTP_AUTHORIZATION", "")
    if auth[:6].lower() == "basic ":
        try:
            return base64.b64decode(auth[6:].strip(), validate=True).decode("latin-1").split(":", 1)[0]
        except (binascii.Error, ValueError):
            return "-"
    return "-"


_time_cache: dict[str, tuple[int, str]] = {}


def _format_time(fmt: str, when: float) -> str:
    """time.strftime of ``when``, computed once per second and format."""
    second = int(when)
    cached = _time_cache.get(fmt)
    if cached is None or cached[0] != second:
        cached = (second, time.strftime(fmt, time.localtime(second)))
        _time_cache[fmt] = cached
    return cached[1]


def _strftime(e: Entry) -> str:
    return _format_time("[%d/%b/%Y:%H:%M:%S %z]", e.start_wall)


def _request_line(e: Entry) -> str:
    return f"{e.head.method} {e.head.target} {e.head.version}"


_ATOMS: dict[str, Callable[[Entry], Any]] = {
    "h": lambda e: e.environ.get("REMOTE_ADDR") or "-",
    "l": lambda e: "-",
    "u": _user,
    "t": _strftime,
    "r": _request_line,
    "m": lambda e: e.head.method,
    "U": lambda e: e.environ.get("PATH_INFO", ""),
    "q": lambda e: e.head.query,
    "H": lambda e: e.head.version,
    "s": lambda e: e.resp.status_code,
    "B": lambda e: e.resp.bytes_sent,
    "b": lambda e: e.resp.bytes_sent or "-",
    "f": lambda e: e.head.get("referer") or "-",
    "a": lambda e: e.head.get("user-agent") or "-",
    "T": lambda e: int(e.took),
    "M": lambda e: int(e.took * 1000),
    "D": lambda e: int(e.took * 1_000_000),
    "L": lambda e: f"{e.took:.6f}",
    "p": lambda e: f"<{os.getpid()}>",
}


def _getter(atom: str) -> Callable[[Entry], Any]:
    if atom.startswith("{"):
        name, kind = atom[1:-2], atom[-1]
        if kind == "i":
            return _request_header(name)
        if kind == "o":
            return _response_header(name)
        return _environ_var(name)
    try:
        return _ATOMS[atom]
    except KeyError:
        raise ValueError(f"unknown access log atom %({atom})s") from None


def compile_format(fmt: str) -> Callable[[Entry], str]:
    """Turn an access_log_format into a function of one Entry; ValueError for unknown atoms."""
    if fmt.strip().lower() == "json":
        getters = {key: _ATOMS[atom] for key, atom in JSON_FIELDS.items()}
        getters["time"] = lambda e: _format_time("%Y-%m-%dT%H:%M:%S%z", e.start_wall)
        pid = os.getpid()  # a worker's pid never changes (the log is built after fork)
        getters["pid"] = lambda e: pid
        items = list(getters.items())
        encode = json.JSONEncoder(ensure_ascii=True).encode

        def as_json(e: Entry) -> str:
            return encode({k: g(e) for k, g in items})

        return as_json
    parts: list[tuple[str, Callable[[Entry], Any] | None]] = []
    pos = 0
    for m in _ATOM.finditer(fmt):
        parts.append((fmt[pos : m.start()], _getter(m.group(1))))
        pos = m.end()
    tail = fmt[pos:]

    def as_text(e: Entry) -> str:
        out = []
        for literal, getter in parts:
            out.append(literal)
            if getter is not None:
                out.append(_escape(str(getter(e))))
        out.append(tail)
        return "".join(out)

    return as_text


class AccessLog:
    """Callable the worker invokes after each response: ``access_log(head, environ, resp, took)``.

    Lines go straight into a 64 KiB buffer that is written out at most a
    second after a line was added (at the next heartbeat, or the next line),
    on USR1 and when the worker exits: through the logging module, with a
    write per line, the access log halved the requests per second of a
    hello-world app. A crash loses at most the last second of lines.

    When the operator hands logging a configuration (``--log-config``,
    ``--log-config-json``, ``logconfig_dict``), lines go through the
    ``corral.access`` logger instead, so that configuration decides.
    """

    #: Buffer size; a full buffer is written out at once.
    BUFFER = 65536
    #: Longest a line waits in the buffer.
    FLUSH_INTERVAL = 1.0

    def __init__(self, target: str, fmt: str, *, via_logging: bool = False) -> None:
        self.render = compile_format(fmt)
        self.target = target
        self.logger: logging.Logger | None = None
        self._file: Any = None
        self._next_flush = 0.0
        if via_logging:
            self.logger = logging.getLogger("corral.access")
            if not self.logger.handlers:
                handler: logging.Handler = (logging.StreamHandler(sys.stdout) if target == "-"
                                            else logging.FileHandler(target))
                handler.setFormatter(logging.Formatter("%(message)s"))
                self.logger.addHandler(handler)
                self.logger.setLevel(logging.INFO)
                self.logger.propagate = False
        else:
            self._file = self._open()

    def _open(self) -> Any:
        if self.target == "-":
            return open(os.dup(sys.stdout.fileno()), "ab", buffering=self.BUFFER)
        return open(self.target, "ab", buffering=self.BUFFER)

    def __call__(self, head: RequestHead, environ: dict[str, Any], resp: Any, took: float) -> None:
        try:
            line = self.render(Entry(head, environ, resp, took))
            if self.logger is not None:
                self.logger.info(line)
                return
            self._file.write(line.encode("utf-8", "backslashreplace") + b"\n")
            now = time.monotonic()
            if now >= self._next_flush:
                self._next_flush = now + self.FLUSH_INTERVAL
                self._file.flush()
        except Exception:
            logging.getLogger("corral.error").exception("Failed to write the access log")

    def flush(self) -> None:
        """Write out buffered lines (the heartbeat calls this; so do USR1 and exit)."""
        if self._file is not None:
            try:
                self._file.flush()
            except (OSError, ValueError):
                pass

    def reopen(self) -> None:
        """USR1: finish the old file, continue in a new one at the same path."""
        if self._file is None:
            return
        old, self._file = self._file, self._open()
        try:
            old.close()
        except (OSError, ValueError):
            pass
