"""The tornado worker: native tornado apps, and what WSGI-in-a-pool adds to the conformance suite.

The conformance suite (tests/workers/test_conformance.py) already runs the
tornado class with the WSGI test app. Here: native ``tornado.web``
apps (concurrency on one loop, corral's error answers, bodies, streaming,
pipelining, stopping), and the loop's own duties (connection cap, timeouts,
a slow WSGI request not stalling the loop). Every test starts a real
corral with ``-k tornado`` and talks to it over real sockets.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import socket
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.testing import CorralProcess, parse_responses, read_until_close
from corral.testing.clients import closed_by_server, open_files_limit, read_head, read_response
from corral.testing.conformance import MALFORMED_REQUESTS, wait_for_file

pytest.importorskip("corral_tornado", reason="corral-tornado is not installed (pip install ./plugins/tornado)")

Server = Callable[..., CorralProcess]

pytestmark = pytest.mark.timeout(30)

#: The native test app, written next to each server that loads it.
NATIVE_APP = textwrap.dedent('''
    import asyncio
    import os
    import time

    from tornado import web

    released = asyncio.Event()


    class Hello(web.RequestHandler):
        def get(self):
            self.write("Hello, tornado!")

        head = get


    class Sleep(web.RequestHandler):
        async def get(self):
            marker = self.get_argument("marker", None)
            if marker:
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
            await asyncio.sleep(float(self.get_argument("t", "1")))
            self.write("slept")


    class Echo(web.RequestHandler):
        def post(self):
            self.set_header("Content-Type", "application/octet-stream")
            self.write(self.request.body)


    class Stream(web.RequestHandler):
        async def get(self):
            self.write("first\\n")
            await self.flush()
            await released.wait()
            released.clear()
            self.write("second\\n")
            await self.flush()
            self.finish("last\\n")


    class Release(web.RequestHandler):
        def get(self):
            released.set()
            self.write("released")


    class Info(web.RequestHandler):
        def get(self):
            r = self.request
            self.write({"remote_ip": r.remote_ip, "protocol": r.protocol, "host": r.host,
                        "uri": r.uri, "path": r.path, "query": r.query, "version": r.version,
                        "pid": os.getpid()})


    class Status(web.RequestHandler):
        def get(self):
            self.set_status(int(self.get_argument("code")))
            self.finish()


    class Fail(web.RequestHandler):
        def get(self):
            raise RuntimeError("native handler failed on purpose")


    class Block(web.RequestHandler):
        def get(self):
            while True:  # blocks the IOLoop itself
                time.sleep(0.01)


    app = web.Application([
        ("/", Hello), ("/sleep", Sleep), ("/echo", Echo), ("/stream", Stream),
        ("/release", Release), ("/info", Info), ("/status", Status), ("/fail", Fail),
        ("/block", Block),
    ])
''')


@pytest.fixture
def corral_worker_class() -> str:
    return "tornado"


def native_server(workdir: Path, *args: str) -> CorralProcess:
    (workdir / "native_app.py").write_text(NATIVE_APP)
    return CorralProcess("native_app:app", ["--chdir", str(workdir), *args], workdir=workdir,
                         worker_class="tornado")


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralProcess]:
    """One long-lived native-app server for the read-only checks."""
    server = native_server(tmp_path_factory.mktemp("native"), "--keep-alive", "10")
    with server:
        yield server


@pytest.fixture
def start_native(tmp_path: Path) -> Iterator[Callable[..., CorralProcess]]:
    servers: list[CorralProcess] = []

    def start(*args: str) -> CorralProcess:
        server = native_server(tmp_path, *args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


def concurrent_requests(port: int, count: int, request: bytes, timeout: float) -> list[bytes]:
    """Open ``count`` connections at once, send ``request`` on each, read each until close.

    One thread and a selector: the client must not be what limits concurrency.
    """
    sel = selectors.DefaultSelector()
    answers: dict[socket.socket, bytearray] = {}
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            answers[sock] = bytearray()
            sel.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + timeout
        open_count = count
        while open_count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{open_count} of {count} requests unanswered after {timeout} s")
            for key, events in sel.select(remaining):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                if events & selectors.EVENT_WRITE:
                    conn.sendall(request)  # tiny: fits the empty send buffer at once
                    sel.modify(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = conn.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    answers[conn] += data
                else:
                    sel.unregister(conn)
                    open_count -= 1
        return [bytes(a) for a in answers.values()]
    finally:
        sel.close()
        for sock in answers:
            sock.close()


# -- native tornado apps ---------------------------------------------------------------


def test_native_app_is_detected_and_served(native: CorralProcess) -> None:
    status, headers, body = native.request("GET", "/")
    assert (status, body) == (200, b"Hello, tornado!")
    # corral's Server field, not TornadoServer/<version>; tornado's Date is kept.
    assert headers["server"] == "corral"
    assert "date" in headers
    assert "Serving 'native_app:app' as a native tornado app" in native.log()


def test_native_500_concurrent_sleepers_on_one_worker(tmp_path: Path) -> None:
    with open_files_limit(1200):
        server = native_server(tmp_path, "--worker-connections", "1000")
        with server:
            assert server.request("GET", "/")[0] == 200  # warm: imports and first accept done
            start = time.monotonic()
            answers = concurrent_requests(
                server.port, 500, b"GET /sleep?t=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                timeout=20)
            elapsed = time.monotonic() - start
    responses = [list(parse_responses(a)) for a in answers]
    assert all(len(r) == 1 and r[0][0] == 200 and r[0][2] == b"slept" for r in responses)
    # 500 one-second sleeps overlap on the loop; about 1 s, bounded for a loaded 2-core box.
    assert elapsed < 3.0, elapsed


@pytest.mark.parametrize("name,raw,status", MALFORMED_REQUESTS, ids=[m[0] for m in MALFORMED_REQUESTS])
def test_native_malformed_requests_get_corrals_answers(native: CorralProcess, name: str, raw: bytes,
                                                       status: int) -> None:
    with native.connect() as sock:
        sock.sendall(raw + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = read_until_close(sock)  # returns only if the server closes
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]
    assert b"\r\nconnection: close" in head.lower()
    # corral's own error answer (tornado's would have no body), and nothing
    # after the error was parsed.
    status_line = head.split(b"\r\n", 1)[0]
    assert body == status_line.split(b" ", 1)[1] + b"\n"


def test_native_get_and_post_bodies(native: CorralProcess) -> None:
    payload = bytes(range(256)) * 400
    status, headers, body = native.request("POST", "/echo", body=payload)
    assert (status, body) == (200, payload)
    assert headers["content-length"] == str(len(payload))
    chunked = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    (status, _, body), = list(parse_responses(native.raw(chunked)))
    assert (status, body) == (200, b"hello world")
    with native.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert read_head(sock) == (100, [], b"")
        sock.sendall(b"howdy")
        (status, _, body), = list(parse_responses(read_until_close(sock)))
    assert (status, body) == (200, b"howdy")


def test_native_request_sees_peer_scheme_and_target(native: CorralProcess) -> None:
    _, _, body = native.request("GET", "/info?a=1", headers={"X-Forwarded-Proto": "https"})
    info = json.loads(body)
    assert info["remote_ip"] == "127.0.0.1"
    assert info["protocol"] == "https"  # loopback is in forwarded_allow_ips by default
    assert (info["path"], info["query"], info["version"]) == ("/info", "a=1", "HTTP/1.1")
    data = native.raw(b"GET http://example.com:8080/info?b=2 HTTP/1.1\r\nHost: other\r\n"
                      b"Connection: close\r\n\r\n")
    (status, _, body), = list(parse_responses(data))
    info = json.loads(body)
    assert (status, info["host"], info["uri"]) == (200, "example.com:8080", "/info?b=2")
    status, _, _ = native.request("GET", "/info", headers={"X-Forwarded-Proto": "https",
                                                           "X-Forwarded-Ssl": "off"})
    assert status == 400  # conflicting scheme headers, as for WSGI apps


def test_native_streaming_with_flush(native: CorralProcess) -> None:
    with native.connect() as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, fields, rest = read_head(sock)
        assert status == 200 and ("transfer-encoding", "chunked") in fields
        # The first piece arrives while the handler is still waiting: flush() sent it.
        while b"first\n" not in rest:
            chunk = sock.recv(65536)
            assert chunk, "closed before the first piece"
            rest += chunk
        assert native.request("GET", "/release")[2] == b"released"
        rest += read_until_close(sock)
    # The body, de-chunked by the kit's parser behind a head that says only that.
    (_, _, body), = list(parse_responses(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + rest))
    assert body == b"first\nsecond\nlast\n"


def test_native_keepalive_and_pipelining(native: CorralProcess) -> None:
    reqs = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    responses = list(parse_responses(native.raw(reqs)))
    assert [r[0] for r in responses] == [200, 200, 200, 404, 200, 200]
    assert [responses[0][2], responses[2][2], responses[5][2]] == [b"abc", b"xyz", b"Hello, tornado!"]
    assert responses[4][1]["connection"] == "keep-alive"  # HTTP/1.0 asked for it
    assert responses[5][1]["connection"] == "close"
    # Request after request on one connection, each answered before the next is sent.
    pids = set()
    with native.connect() as sock:
        for _ in range(3):
            sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
            pids.add(json.loads(read_response(sock)[2])["pid"])
    assert len(pids) == 1


def test_native_head_and_bodyless_statuses(native: CorralProcess) -> None:
    data = native.raw(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 15" in head.lower()
    assert rest == b""
    for code in (204, 304):
        data = native.raw(f"GET /status?code={code} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                          .encode())
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {code} ".encode())
        assert rest == b"", f"{code} carried a body"
        assert b"transfer-encoding" not in head.lower()


def test_native_handler_error_is_logged_in_corrals_log(native: CorralProcess) -> None:
    status, _, _ = native.request("GET", "/fail")
    assert status == 500
    native.wait_for_log("RuntimeError: native handler failed on purpose")
    assert native.request("GET", "/")[0] == 200


def test_native_term_finishes_inflight_and_keeps_idle_to_keepalive(
        start_native: Callable[..., CorralProcess], tmp_path: Path) -> None:
    server = start_native("--graceful-timeout", "20", "--keep-alive", "2")
    marker = tmp_path / "in-handler"
    with server.connect() as idle, server.connect() as late, server.connect() as busy:
        for sock in (idle, late):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[2] == b"Hello, tornado!"
        busy.sendall(f"GET /sleep?t=1&marker={marker} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_for_file(marker)
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait_for_log("retiring: accepts no more")
        # Sent during the drain on a kept-alive connection: served, told to close.
        late.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(late)
        assert (status, body, headers.get("connection")) == (200, b"Hello, tornado!", "close")
        status, headers, body = read_response(busy)
        assert (status, body, headers.get("connection")) == (200, b"slept", "close")
        assert closed_by_server(busy, timeout=5)
        assert closed_by_server(idle, timeout=5)  # at its keep-alive deadline
        assert time.monotonic() - start > 1.0
        assert server.wait_exit(10) == 0
    assert time.monotonic() - start < 6  # keep-alive's end, not the graceful timeout
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_native_max_requests_recycles_worker(start_native: Callable[..., CorralProcess]) -> None:
    # The old worker serves until its replacement is ready: nothing fails meanwhile.
    server = start_native("--max-requests", "2")
    (pid,) = server.wait_for_workers(1)
    pids: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not pids or pids[-1] == pid):
        status, _, body = server.request("GET", "/info")
        assert status == 200
        pids.append(json.loads(body)["pid"])
    assert pids[0] == pid and pids[-1] != pid, pids


def test_native_access_log_has_user_referer_and_agent(start_native: Callable[..., CorralProcess],
                                                     tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    server = start_native("--access-logfile", str(access))
    auth = "Basic " + base64.b64encode(b"alice:pw").decode()
    server.request("GET", "/?x=1", headers={"Referer": "http://r/", "User-Agent": 'ua "1"',
                                           "Authorization": auth})
    deadline = time.monotonic() + 10
    while not access.exists() or not access.read_text():  # written out at the next heartbeat
        assert time.monotonic() < deadline
        time.sleep(0.02)
    line = access.read_text().splitlines()[0]
    assert line.startswith("127.0.0.1 - alice [")
    assert line.endswith('"GET /?x=1 HTTP/1.1" 200 15 "http://r/" "ua \\x221\\x22"')


def test_native_post_request_gets_the_environ_a_wsgi_app_would(start_native: Callable[..., CorralProcess],
                                                               tmp_path: Path) -> None:
    # Hooks and log formats read the same keys on every class: the native
    # path builds its environ with corral's build_environ (corral.serve.cycle).
    seen = tmp_path / "environ.json"
    conf = tmp_path / "hooks.py"
    conf.write_text(
        "import json, os\n"
        f"_SEEN = {str(seen)!r}\n"
        "def post_request(worker, req, environ, resp):\n"
        "    keep = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int))}\n"
        "    with open(_SEEN + '.tmp', 'w') as f:\n"
        "        json.dump({'environ': keep, 'status': resp.status_code}, f)\n"
        "    os.replace(_SEEN + '.tmp', _SEEN)  # whole, or not there yet\n"
    )
    server = start_native("-c", str(conf))
    status, _, _ = server.request("GET", "/?x=1", headers={"User-Agent": "probe", "X-Custom": "yes"})
    assert status == 200
    wait_for_file(seen)
    got = json.loads(seen.read_text())
    environ = got["environ"]
    assert got["status"] == 200
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"]) == ("GET", "/", "x=1")
    assert environ["HTTP_USER_AGENT"] == "probe" and environ["HTTP_X_CUSTOM"] == "yes"
    assert environ["wsgi.url_scheme"] == "http" and environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == "127.0.0.1" and environ["SERVER_PORT"] == str(server.port)


def test_native_handler_blocking_the_loop_gets_worker_replaced(
        start_native: Callable[..., CorralProcess]) -> None:
    server = start_native("--timeout", "1", "--graceful-timeout", "1")
    (pid,) = server.wait_for_workers(1)
    with server.connect() as sock:
        sock.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        read_until_close(sock, timeout=10)
    server.wait_for_workers(1, timeout=10, exclude=[pid])
    server.wait_for_log(r"in get\n\s+time.sleep")  # the blocking frame, from the abort's stacks
    assert server.request("GET", "/")[0] == 200


# -- the loop's own duties (WSGI app) ----------------------------------------------------


def test_slow_wsgi_request_does_not_stall_the_loop(corral_server: Server, tmp_path: Path) -> None:
    server = corral_server()
    marker = tmp_path / "in-app"
    slow: list[tuple[int, dict[str, str], bytes]] = []
    t = threading.Thread(target=lambda: slow.append(server.request("GET", f"/sleep?t=2&marker={marker}")))
    t.start()
    try:
        wait_for_file(marker)
        start = time.monotonic()
        for _ in range(5):
            assert server.request("GET", "/")[0] == 200
        assert time.monotonic() - start < 2.0
    finally:
        t.join(10)
    assert slow and slow[0][0] == 200


MODULES_APP = """
import os
import sys

def app(environ, start_response):
    body = f"{os.getpid()} {sorted(m for m in sys.modules if m.split('.')[0] == 'tornado')}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def test_wsgi_app_worker_runs_without_tornado_and_keeps_beating(corral_server: Server,
                                                                  tmp_path: Path) -> None:
    # A WSGI app runs on asyncio and corral's thread pool alone: importing
    # tornado to learn that the app is not a tornado app cost each worker
    # about 1 MiB. The heartbeat is the loop's own timer, and with
    # --timeout 1 a worker left idle for 3 s must still be the same one.
    (tmp_path / "modulesapp.py").write_text(MODULES_APP)
    server = corral_server("--timeout", "1", app="modulesapp:app")
    (pid,) = server.wait_for_workers(1)
    status, _, body = server.request("GET", "/")
    assert status == 200 and body == f"{pid} []".encode()
    time.sleep(3)
    assert server.request("GET", "/")[2] == f"{pid} []".encode()
    assert server.worker_pids() == [pid]
    assert "WORKER TIMEOUT" not in server.log()


def test_default_pool_runs_wsgi_requests_concurrently(corral_server: Server) -> None:
    server = corral_server()
    start = time.monotonic()
    answers = concurrent_requests(server.port, 10,
                                  b"GET /sleep?t=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                                  timeout=15)
    elapsed = time.monotonic() - start
    assert all(next(parse_responses(a))[0] == 200 for a in answers)
    # Ten threads by default: ten 1 s sleeps overlap (serially they would take 10 s).
    assert elapsed < 4.0, elapsed


def test_worker_connections_cap_stops_accepting(corral_server: Server) -> None:
    server = corral_server("--worker-connections", "2", "--keep-alive", "30")
    with server.connect() as first, server.connect() as second, server.connect() as third:
        for sock in (first, second):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
        # The kernel completes the handshake, but the worker does not accept.
        third.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        third.settimeout(0.5)
        with pytest.raises(TimeoutError):
            third.recv(1)
        first.close()
        assert read_response(third)[0] == 200


FD_LIMIT_CONFIG = """
import os
import resource

def post_worker_init(worker):
    # Room for about three more file descriptors in this worker (listdir's
    # own descriptor is counted too, so four in practice).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 3, hard))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc/self/fd")
def test_out_of_file_descriptors_waits_and_recovers(corral_server: Server, tmp_path: Path) -> None:
    # accept() failing with EMFILE leaves the connection queued and the
    # listener readable: the worker must neither spin nor give up, but say
    # so once, and take the connection when a descriptor frees up.
    config = tmp_path / "fdlimit.py"
    config.write_text(FD_LIMIT_CONFIG)
    server = corral_server("-c", str(config), "--keep-alive", "30")
    held: list[socket.socket] = []
    try:
        for _ in range(10):
            sock = server.connect()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                assert read_response(sock, timeout=1.0)[0] == 200
            except TimeoutError:
                stalled = sock
                break
            held.append(sock)
        else:
            raise AssertionError("the worker never ran out of file descriptors")
        assert 1 <= len(held) <= 5
        server.wait_for_log(r"cannot accept on .*: Too many open files; retrying every")
        held.pop().close()
        assert read_response(stalled, timeout=5.0)[0] == 200
        stalled.close()
    finally:
        for sock in held:
            sock.close()
    assert server.log().count("cannot accept on") == 1  # said once, not ten times a second
    assert server.request("GET", "/")[0] == 200


def test_header_timeout_answers_408_and_keepalive_idle_closes(corral_server: Server) -> None:
    server = corral_server("--header-timeout", "1", "--keep-alive", "0.5")
    with server.connect() as slow, server.connect() as kept:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(kept)[0] == 200
        start = time.monotonic()
        assert closed_by_server(kept, timeout=5)
        assert time.monotonic() - start < 3
        answer = read_until_close(slow, timeout=5)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in answer


def test_wsgi_upload_larger_than_buffers_is_paced(corral_server: Server) -> None:
    server = corral_server()
    payload = bytes(range(256)) * 8192  # 2 MiB: past every read and write high-water mark
    status, _, body = server.request("POST", "/echo-pieces?size=65536", body=payload)
    assert (status, body) == (200, payload)


# -- request bodies gathered on the loop (asyncio_connection.GATHER_MAX) -------------


def test_slow_uploads_hold_no_pool_thread(corral_server: Server) -> None:
    # Two threads, two clients trickling their bodies: gathered on the loop,
    # they leave both threads free for a third client's request.
    server = corral_server("--threads", "2")
    size = 40
    slow = [server.connect() for _ in range(2)]
    try:
        for sock in slow:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sent = 0
        fast: list[float] = []
        while sent < size:
            for sock in slow:
                sock.sendall(b"x" * 10)
            sent += 10
            if sent == 20:
                start = time.monotonic()
                status, _, _ = server.request("GET", "/")
                fast.append(time.monotonic() - start)
                assert status == 200
            time.sleep(0.3)  # within GATHER_PATIENCE: still arriving
        for sock in slow:
            status, _, body = read_response(sock)
            assert (status, body) == (200, b"x" * size)
    finally:
        for sock in slow:
            sock.close()
    assert fast[0] < 0.25, f"the GET waited {fast[0]:.2f} s for a thread"


def test_stalled_body_goes_to_the_app_and_times_out_as_before(corral_server: Server) -> None:
    server = corral_server("--header-timeout", "3")
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        start = time.monotonic()
        data = read_until_close(sock, timeout=15)
    elapsed = time.monotonic() - start
    # Stalled for GATHER_PATIENCE (1 s), then the app's read waits up to
    # --header-timeout (3 s), the limit on each wait for body bytes.
    assert 3.0 <= elapsed < 6.5, elapsed
    assert data.startswith(b"HTTP/1.1 408 "), data[:80]


def test_expect_continue_body_is_not_waited_for(corral_server: Server) -> None:
    server = corral_server()
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        sock.settimeout(0.8)  # less than GATHER_PATIENCE: the 100 comes without it
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"hello")
