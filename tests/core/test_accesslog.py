"""The access log: every atom, the JSON form, escaping, reopening on USR1."""

from __future__ import annotations

import base64
import json
import re
import signal
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.accesslog import (
    DEFAULT_FORMAT,
    Entry,
    compile_buffered_log,
    compile_format,
    compile_renderer,
)
from corral.http.parser import RequestHead
from corral.testing import CorralProcess


class _Resp:
    status_code = 201
    bytes_sent = 1234
    headers = [("Content-Type", "text/plain"), ("X-Out", "o-value")]


def _entry(**headers: str) -> Entry:
    head = RequestHead(method="POST", target="/p?a=1", path="/p", query="a=1", version="HTTP/1.1",
                       headers=list(headers.items()), host="h", target_scheme=None,
                       content_length=None, chunked=False, keep_alive=True, expect_continue=False)
    environ = {"REMOTE_ADDR": "10.1.2.3", "PATH_INFO": "/p", "MY_VAR": "env-value",
               "HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"alice:secret").decode()}
    # As build_environ puts them: %(f)s and %(a)s read the environ, as in gunicorn.
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
    return Entry(head, environ, _Resp(), took=1.5)


@pytest.mark.parametrize("atom,expected", [
    ("h", "10.1.2.3"), ("l", "-"), ("u", "alice"), ("r", "POST /p?a=1 HTTP/1.1"), ("m", "POST"),
    ("U", "/p"), ("q", "a=1"), ("H", "HTTP/1.1"), ("s", "201"), ("B", "1234"), ("b", "1234"),
    ("f", "http://ref/"), ("a", "agent/1.0"), ("T", "1"), ("M", "1500"), ("D", "1500000"),
    ("L", "1.500000"), ("{X-In}i", "in-value"), ("{x-out}o", "o-value"), ("{MY_VAR}e", "env-value"),
    ("{Missing}i", "-"),
])
def test_each_atom(atom: str, expected: str) -> None:
    render = compile_format(f"%({atom})s")
    entry = _entry(Referer="http://ref/", **{"User-Agent": "agent/1.0", "X-In": "in-value"})
    assert render(entry) == expected


def test_time_and_pid_atoms() -> None:
    out = compile_format("%(t)s %(p)s")(_entry())
    assert out.startswith("[") and "/" in out and out.split()[-1].startswith("<")


def test_unknown_atom_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown access log atom %\(z\)s"):
        compile_format("%(z)s")


def test_text_format_escapes_quotes_and_controls() -> None:
    line = compile_format(DEFAULT_FORMAT)(_entry(**{"User-Agent": 'evil" 200 "forged\nline\\'}))
    assert '"evil\\x22 200 \\x22forged\\x0aline\\x5c"' in line
    assert "\n" not in line


def test_json_format_cannot_be_forged() -> None:
    line = compile_format("json")(_entry(**{"User-Agent": 'a", "status": 999, "x": "\n'}))
    record = json.loads(line)
    assert record["status"] == 201
    assert record["user_agent"] == 'a", "status": 999, "x": "\n'
    assert "\n" not in line
    assert set(record) >= {"remote_addr", "time", "request", "method", "path", "bytes", "duration_us"}


def test_access_log_written_and_reopened_on_usr1(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    args = ["--access-logfile", str(access), "--access-logformat", "json"]
    with CorralProcess("corral.testing.apps:app", args, workdir=tmp_path) as server:
        server.request("GET", "/?q=1", headers={"User-Agent": 'quote " and \\ backslash'})
        deadline = time.monotonic() + 10
        while not access.exists() or not access.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        record = json.loads(access.read_text().splitlines()[0])
        assert record["path"] == "/" and record["query"] == "q=1" and record["status"] == 200
        assert record["user_agent"] == 'quote " and \\ backslash'
        access.rename(tmp_path / "access.log.1")
        server.send_signal(signal.SIGUSR1)
        server.wait_for_log("Handling signal: usr1")
        deadline = time.monotonic() + 10
        while True:  # the workers reopen when their signal arrives
            server.request("GET", "/after")
            if access.exists() and "/after" in access.read_text():
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "/after" not in (tmp_path / "access.log.1").read_text()


def test_default_format_line(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    with CorralProcess("corral.testing.apps:app", ["--access-logfile", str(access)],
                       workdir=tmp_path) as server:
        server.request("GET", "/", headers={"User-Agent": "t/1", "Referer": "http://r/"})
        deadline = time.monotonic() + 10
        while not access.exists() or not access.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    line = access.read_text().splitlines()[0]
    assert line.startswith("127.0.0.1 - - [")
    assert line.endswith('"GET / HTTP/1.1" 200 13 "http://r/" "t/1"')


# -- the compiled fast path renders exactly what escaping every value renders --------

_CLIENT_TEXT = st.text(alphabet=st.sampled_from('ab "\\\t\n\r\x00\x1f\x7f\x85é€{}%'), max_size=8)
_FORMAT = DEFAULT_FORMAT + ' %(U)s %(q)s "%({X-In}i)s" %({MY_VAR}e)s\t%(D)s'


def _reference_escape(value: object) -> str:
    return re.sub(r'[\x00-\x1f\x7f"\\]', lambda m: f"\\x{ord(m.group()):02x}", str(value))


@given(target=_CLIENT_TEXT, query=_CLIENT_TEXT, referer=_CLIENT_TEXT, agent=_CLIENT_TEXT,
       path=_CLIENT_TEXT, header=_CLIENT_TEXT, var=_CLIENT_TEXT)
def test_fast_rendering_equals_escaping_every_value(
        target: str, query: str, referer: str, agent: str, path: str, header: str, var: str) -> None:
    head = RequestHead("GET", "/" + target, "/", query, "HTTP/1.1", [("X-In", header)], None, None,
                       None, False, True, False)
    environ = {"REMOTE_ADDR": "10.0.0.1", "PATH_INFO": path, "HTTP_REFERER": referer,
               "HTTP_USER_AGENT": agent, "MY_VAR": var}
    resp = _Resp()
    start = 1_700_000_000.25
    line = compile_renderer(_FORMAT)(head, environ, resp, 0.5, start)
    stamp = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(int(start)))
    esc = _reference_escape
    assert line == (
        f'10.0.0.1 - - {stamp} "{esc("GET /" + target + " HTTP/1.1")}" 201 1234 "{esc(referer or "-")}"'
        f' "{esc(agent or "-")}" {esc(path)} {esc(query)} "{esc(header or "-")}" {esc(var)}\t500000'
    )
    encoded = compile_renderer(_FORMAT, encode=True)(head, environ, resp, 0.5, start)
    assert encoded == (line + "\n").encode("utf-8", "backslashreplace")

    record_line = compile_renderer("json")(head, environ, resp, 0.5, start)
    record = json.loads(record_line)
    assert record_line == json.dumps(record)  # exactly json's own escaping
    assert (record["referer"], record["user_agent"], record["path"], record["query"]) == (
        referer or "-", agent or "-", path, query)
    assert record["request"] == "GET /" + target + " HTTP/1.1" and record["status"] == 201
    assert compile_renderer("json", encode=True)(head, environ, resp, 0.5, start) == (
        record_line + "\n").encode("ascii")

    # What a worker calls (the renderer's statements inlined, the line
    # appended to the buffer) writes those same bytes, but for the time
    # (it reads the clock itself), compared without the time atom.
    for fmt in (_FORMAT.replace("%(t)s", "-"), "json"):
        buf = bytearray()
        log = compile_buffered_log(fmt, buf, lambda: None, 1 << 20, _fail)
        log(head, environ, resp, 0.5)
        log(head, environ, resp, 0.5)
        expected = compile_renderer(fmt, encode=True)(head, environ, resp, 0.5, start)
        if fmt == "json":
            want = json.loads(expected)
            del want["time"]
            got = [json.loads(x) for x in bytes(buf).splitlines()]
            for g in got:
                del g["time"]
            assert got == [want, want]
        else:
            assert bytes(buf) == expected * 2


def _fail(message: str) -> None:
    raise AssertionError(message)


def test_buffered_log_flushes_at_its_limit_and_reports_a_failure() -> None:
    flushed: list[bytes] = []
    errors: list[str] = []
    buf = bytearray()

    def flush() -> None:
        flushed.append(bytes(buf))
        del buf[:]

    log = compile_buffered_log("%(s)s %(b)s", buf, flush, 20, errors.append)
    resp = _Resp()
    head = RequestHead("GET", "/", "/", "", "HTTP/1.1", [], None, None, None, False, True, False)
    for _ in range(3):
        log(head, {}, resp, 0.1)
    assert flushed == [b"201 1234\n" * 3] and buf == b""
    log(head, {}, None, 0.1)  # a response without its attributes: logged as an error, never raised
    assert errors == ["Failed to write the access log"] and buf == b""


def test_time_atom_follows_each_requests_own_second() -> None:
    # The second's text is cached; a request that started in another second
    # (later, or earlier: a slow one logged after a quick one) gets its own.
    render = compile_renderer("%(t)s")
    head = RequestHead("GET", "/", "/", "", "HTTP/1.1", [], None, None, None, False, True, False)
    for start in (1_700_000_000.2, 1_700_000_000.9, 1_700_000_001.0, 1_699_999_999.5, 1_700_000_000.0):
        expected = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(int(start)))
        assert render(head, {}, _Resp(), 0.0, start) == expected
