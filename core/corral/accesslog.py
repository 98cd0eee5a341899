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
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from corral.http.parser import RequestHead

#: gunicorn's default access_log_format.
DEFAULT_FORMAT: Final = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
_ATOM = re.compile(r"%\((\{[^}]+\}[ioe]|[A-Za-z]+)\)s")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\]')
#: The same set as bytes, for bytes.translate().
_UNSAFE_BYTES: Final = bytes(range(0x20)) + b'\x7f"\\'
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
    """One request's log inputs, for callers that render a single line (tests, tools)."""

    __slots__ = ("environ", "head", "resp", "start_wall", "took")

    def __init__(self, head: RequestHead, environ: dict[str, Any], resp: Any, took: float) -> None:
        self.head = head
        self.environ = environ
        self.resp = resp
        self.took = took
        self.start_wall = time.time() - took


#: A renderer: (head, environ, resp, took, start_wall) -> line. Positional
#: arguments rather than an Entry: building an object per line cost more
#: than the rest of the line.
Render = Callable[[RequestHead, dict[str, Any], Any, float, float], Any]


def _request_header(head: RequestHead, lname: str) -> str:
    for key, value in head.headers:
        if key.lower() == lname:
            return value or "-"
    return "-"


def _response_header(resp: Any, lname: str) -> str:
    for key, value in resp.headers:
        if key.lower() == lname:
            return str(value)
    return "-"


def _user(environ: dict[str, Any]) -> str:
    auth = environ.get("HTTP_AUTHORIZATION")
    if auth and auth[:6].lower() == "basic ":
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


#: [(second, next second, the first one's %(t)s text)]: the generated code
#: compares the request's start with the bounds and calls _clf_time only
#: when it falls outside them (no call per line, not even int()). One
#: tuple in one slot: a thread reads bounds and text of the same second.
_CLF: list[tuple[float, float, str]] = [(0.0, 0.0, "")]


def _clf_time(when: float) -> str:
    text = _format_time("[%d/%b/%Y:%H:%M:%S %z]", when)
    second = int(when)
    _CLF[0] = (float(second), float(second + 1), text)
    return text


def _iso_time(when: float) -> str:
    return _format_time("%Y-%m-%dT%H:%M:%S%z", when)


def _pid() -> str:
    return f"<{os.getpid()}>"


#: atom -> (Python expression over head, environ, resp, took, start; whether
#: the value can hold client-chosen text and so must be escaped). The
#: referer and user agent come from the environ, as in gunicorn: one dict
#: lookup instead of a scan of the header list.
_ATOMS: Final[dict[str, tuple[str, bool]]] = {
    "h": ('(environ.get("REMOTE_ADDR") or "-")', True),
    "l": ('"-"', False),
    "u": ('(_user(environ) if "HTTP_AUTHORIZATION" in environ else "-")', True),
    "t": ("(_t[2] if (_t := _CLF[0])[0] <= start < _t[1] else _clf_time(start))", False),
    "r": ('(head.method + " " + head.target + " " + head.version)', True),
    "m": ("head.method", False),
    "U": ('environ.get("PATH_INFO", "")', True),
    "q": ("head.query", True),
    "H": ("head.version", False),
    "s": ("resp.status_code", False),
    "B": ("resp.bytes_sent", False),
    # gunicorn's, not Apache's: 0 for a bodiless response (HEAD, 204, 304), not "-".
    "b": ("resp.bytes_sent", False),
    "f": ('(environ.get("HTTP_REFERER") or "-")', True),
    "a": ('(environ.get("HTTP_USER_AGENT") or "-")', True),
    "T": ("int(took)", False),
    "M": ("int(took * 1000)", False),
    "D": ("int(took * 1000000)", False),
    "L": ('format(took, ".6f")', False),
    "p": ("_pid()", False),
}
#: Atoms written as several f-string fields on the fast path rather than one
#: concatenated value (the unescaped line needs no intermediate string).
_FAST_PARTS: Final = {"r": "f'{head.method} {head.target} {head.version}'"}
#: Atoms whose JSON value is a number.
_JSON_NUMBERS: Final = frozenset("sBDp")
#: JSON values keep their types (status and sizes are numbers).
_JSON_ATOMS: Final = {**{k: v[0] for k, v in _ATOMS.items()}, "t": "_iso_time(start)", "p": "_getpid()"}


def _atom_expr(atom: str, names: dict[str, Any]) -> tuple[str, bool]:
    """The expression for one atom; header and variable names become constants in ``names``."""
    if atom.startswith("{"):
        name, kind = atom[1:-2], atom[-1]
        const = f"_c{len(names)}"
        if kind == "i":
            names[const] = name.lower()
            return f"_request_header(head, {const})", True
        if kind == "o":
            names[const] = name.lower()
            return f"_response_header(resp, {const})", True
        names[const] = name
        return f'str(environ.get({const}, "-"))', True
    try:
        return _ATOMS[atom]
    except KeyError:
        raise ValueError(f"unknown access log atom %({atom})s") from None


def _namespace() -> dict[str, Any]:
    return {
        "_request_header": _request_header, "_response_header": _response_header,
        "_user": _user, "_clf_time": _clf_time, "_CLF": _CLF, "_iso_time": _iso_time, "_pid": _pid,
        "_getpid": os.getpid, "_escape": _escape,
    }


def _define(source: str, names: dict[str, Any], name: str = "render") -> Any:
    # The format is known at startup and fixed for the worker's life, so it
    # is compiled into one function: an f-string of attribute and dict
    # lookups, no call per atom. Only expressions from the tables above and
    # repr()'d literals reach the source; names from the format (header and
    # environ variable names) are passed in as constants, never pasted in.
    exec(compile(source, "<access_log_format>", "exec"), names)
    return names[name]


def _count_unsafe(data: bytes) -> int:
    return len(data) - len(data.translate(None, _UNSAFE_BYTES))


def _json_body(names: dict[str, Any], encode: bool) -> tuple[list[str], str]:
    # The fast path writes the object as a template, each string value
    # between quotes as it is; that is valid, exactly escaped JSON when the
    # line is ASCII and holds no quote, backslash or control character
    # besides the template's own. Anything else goes through json.dumps.
    template: list[str] = []
    literals: list[str] = []
    literal = "{"
    for key, atom in JSON_FIELDS.items():
        quoted = atom not in _JSON_NUMBERS
        literals.append(literal + f'"{key}": ' + ('"' if quoted else ""))
        template += [repr(literals[-1]), f"f'{{{_JSON_ATOMS[atom]}}}'"]
        literal = ('"' if quoted else "") + ", "
    literals.append(literal[:-2] + "}" + ("\n" if encode else ""))
    template.append(repr(literals[-1]))
    names["_EXPECTED"] = _count_unsafe("".join(literals).encode("ascii"))
    names["_UNSAFE"] = _UNSAFE_BYTES
    names["_NL"] = "\n"
    names["_encode"] = json.JSONEncoder(ensure_ascii=True).encode
    items = ", ".join(f"{key!r}: {_JSON_ATOMS[atom]}" for key, atom in JSON_FIELDS.items())
    fallback = f"_encode({{{items}}})"
    if encode:  # ensure_ascii: the text is ASCII already
        fallback = f"({fallback} + _NL).encode('ascii')"
    result = "data" if encode else "line"
    return [
        f"line = {' '.join(template)}",
        "ok = line.isascii()",
        "if ok:",
        "    data = line.encode('ascii')",
        "    ok = len(data) - len(data.translate(None, _UNSAFE)) == _EXPECTED",
        "if not ok:",
        f"    {result} = {fallback}",
    ], result


def _text_body(fmt: str, names: dict[str, Any], encode: bool) -> tuple[list[str], str]:
    fast: list[str] = []
    safe: list[str] = []
    literals: list[str] = []
    pos = 0
    for m in _ATOM.finditer(fmt):
        literals.append(fmt[pos : m.start()])
        expr, client = _atom_expr(m.group(1), names)
        fast += [repr(literals[-1]), _FAST_PARTS.get(m.group(1)) or f"f'{{{expr}}}'"]
        safe += [repr(literals[-1]), f"f'{{_escape(str({expr}))}}'" if client else f"f'{{{expr}}}'"]
        pos = m.end()
    literals.append(fmt[pos:] + ("\n" if encode else ""))
    fast.append(repr(literals[-1]))
    safe.append(fast[-1])
    names["_UNSAFE"] = _UNSAFE_BYTES
    names["_EXPECTED"] = _count_unsafe("".join(literals).encode("utf-8", "backslashreplace"))
    # The unescaped line is right when no value brought a quote, a backslash
    # or a control character, that is, when its unsafe bytes are exactly
    # those of the format's own text. One bytes.translate() over the whole
    # line (C speed; str.isprintable() cost twice as much) replaces a check
    # per value; otherwise the line is rendered again with every client
    # value escaped. UTF-8 never puts an ASCII byte inside a multi-byte
    # character, so counting bytes counts characters.
    escaped = " ".join(safe)
    if encode:
        result, fallback = "data", f"({escaped}).encode('utf-8', 'backslashreplace')"
    else:
        result, fallback = "line", escaped
    return [
        f"line = {' '.join(fast)}",
        "data = line.encode('utf-8', 'backslashreplace')",
        "if len(data) - len(data.translate(None, _UNSAFE)) != _EXPECTED:",
        f"    {result} = {fallback}",
    ], result


def _body(fmt: str, names: dict[str, Any], encode: bool) -> tuple[list[str], str]:
    """The statements that render one line into a local, and that local's name."""
    if fmt.strip().lower() == "json":
        return _json_body(names, encode)
    return _text_body(fmt, names, encode)


def compile_renderer(fmt: str, *, encode: bool = False) -> Render:
    """Turn an access_log_format into a renderer; ValueError for unknown atoms.

    With ``encode`` the renderer returns the line as UTF-8 bytes ending in a
    newline, ready for the file (what AccessLog writes); otherwise a str.
    """
    names = _namespace()
    body, result = _body(fmt, names, encode)
    source = "def render(head, environ, resp, took, start):\n"
    source += "".join(f"    {line}\n" for line in body) + f"    return {result}\n"
    render: Render = _define(source, names)
    return render


LogLine = Callable[[RequestHead, dict[str, Any], Any, float], None]


def compile_buffered_log(fmt: str, buf: bytearray, flush: Callable[[], None], limit: int,
                         error: Callable[[str], None]) -> LogLine:
    """What a worker calls after each response: renders the line into ``buf``, flushes at ``limit``.

    The renderer's statements inlined into the function the worker calls:
    a Python call less per line than a writer that calls the renderer.
    """
    names = _namespace()
    body, result = _body(fmt, names, True)
    names.update(_now=time.time, _append=buf.extend, _buf=buf, _flush=flush, _LIMIT=limit, _error=error)
    source = (
        "def log(head, environ, resp, took):\n"
        "    try:\n"
        "        start = _now() - took\n"
        + "".join(f"        {line}\n" for line in body)
        + f"        _append({result})\n"
        "        if len(_buf) >= _LIMIT:\n"
        "            _flush()\n"
        "    except Exception:\n"
        "        _error('Failed to write the access log')\n"
    )
    log: LogLine = _define(source, names, "log")
    return log


#: The environ key each atom reads (the others read the head and the response).
_ATOM_ENVIRON: Final = {"h": "REMOTE_ADDR", "u": "HTTP_AUTHORIZATION", "U": "PATH_INFO",
                        "f": "HTTP_REFERER", "a": "HTTP_USER_AGENT"}


def environ_keys(fmt: str) -> frozenset[str]:
    """The environ keys a format reads: a class with no WSGI environ of its own
    (asgi) builds just those for the log (corral.wsgi.environ.partial_environ)."""
    if fmt.strip().lower() == "json":
        atoms = list(JSON_FIELDS.values())
    else:
        atoms = [m.group(1) for m in _ATOM.finditer(fmt)]
    keys = {_ATOM_ENVIRON[a] for a in atoms if a in _ATOM_ENVIRON}
    keys.update(a[1:-2] for a in atoms if a.startswith("{") and a.endswith("}e"))
    return frozenset(keys)


def compile_format(fmt: str) -> Callable[[Entry], str]:
    """Turn an access_log_format into a function of one Entry; ValueError for unknown atoms."""
    render = compile_renderer(fmt)
    return lambda e: render(e.head, e.environ, e.resp, e.took, e.start_wall)


class AccessLog:
    """The access log of one worker: its ``log(head, environ, resp, took)`` runs after each response.

    Lines are rendered to bytes and appended to an in-memory buffer, which
    is written out when it holds 64 KiB, at every heartbeat (the worker
    beats at least every half second while it is alive), on USR1 and when
    the worker exits. A crash loses at most the last beat's lines. Through
    the logging module, a write per line halved the requests per second of
    a hello-world app; this way a line adds about 8% to a gthread
    hello-world request (docs/logging.md).

    Appending to a bytearray is one C call, atomic under the GIL, so the
    threads of a gthread worker share the buffer without a lock; writing it
    out takes the lock so that two flushes never interleave their bytes.

    When the operator hands logging a configuration (``--log-config``,
    ``--log-config-json``, ``logconfig_dict``), lines go through the
    ``corral.access`` logger instead, so that configuration decides.
    """

    #: Buffer size; a full buffer is written out at once.
    BUFFER = 65536

    def __init__(self, target: str, fmt: str, *, via_logging: bool = False) -> None:
        self.target = target
        self.logger: logging.Logger | None = None
        self._file: Any = None
        self._buf = bytearray()
        self._lock = threading.Lock()
        #: The environ keys the format reads (environ_keys()).
        self.environ_keys = environ_keys(fmt)
        #: What the worker calls after each response: log(head, environ, resp, took).
        self.log: LogLine
        if via_logging:
            self.logger = logging.getLogger("corral.access")
            if not self.logger.handlers:
                handler: logging.Handler = (logging.StreamHandler(sys.stdout) if target == "-"
                                            else logging.FileHandler(target))
                handler.setFormatter(logging.Formatter("%(message)s"))
                self.logger.addHandler(handler)
                self.logger.setLevel(logging.INFO)
                self.logger.propagate = False
            self.log = self._logging_writer(compile_renderer(fmt))
        else:
            self._file = self._open()
            self.log = compile_buffered_log(fmt, self._buf, self.flush, self.BUFFER,
                                            logging.getLogger("corral.error").exception)

    def _open(self) -> Any:
        if self.target == "-":
            return open(os.dup(sys.stdout.fileno()), "ab", buffering=0)
        return open(self.target, "ab", buffering=0)

    def __call__(self, head: RequestHead, environ: dict[str, Any], resp: Any, took: float) -> None:
        self.log(head, environ, resp, took)

    def _logging_writer(self, render: Render) -> LogLine:
        assert self.logger is not None
        info = self.logger.info

        def log(head: RequestHead, environ: dict[str, Any], resp: Any, took: float) -> None:
            try:
                info(render(head, environ, resp, took, time.time() - took))
            except Exception:
                logging.getLogger("corral.error").exception("Failed to write the access log")

        return log

    def flush(self) -> None:
        """Write out buffered lines (the heartbeat calls this; so do USR1 and exit)."""
        if self._file is None or not self._buf:
            return
        with self._lock:
            buf = self._buf
            # Lines appended by other threads meanwhile stay for the next flush.
            data = bytes(buf)
            del buf[: len(data)]
            try:
                self._file.write(data)
            except (OSError, ValueError):
                logging.getLogger("corral.error").exception("Failed to write the access log")

    def reopen(self) -> None:
        """USR1: finish the old file, continue in a new one at the same path."""
        if self._file is None:
            return
        self.flush()
        with self._lock:
            old, self._file = self._file, self._open()
        try:
            old.close()
        except (OSError, ValueError):
            pass
