"""corral behind real nginx, with the configuration docs/deploy.md shows (docs/nginx/).

The test runs docs/nginx/corral.conf and docs/nginx/corral-stream.conf as
they are, swapping only addresses and certificate paths, so the documented
configuration is the tested one. nginx runs on loopback with its own prefix,
pid file and logs in tmp_path. Checked through it:

- scheme: nginx terminates TLS and sets X-Forwarded-Proto; corral trusts it
  from loopback and unix-socket peers, so wsgi.url_scheme is "https", over
  the unix-socket upstream and the TCP one;
- client address: X-Forwarded-For over HTTP, and REMOTE_ADDR/REMOTE_PORT
  from the PROXY header nginx's stream module sends before the TLS records
  (corral terminating TLS itself);
- streaming: /stream with proxy_buffering off arrives piece by piece.

Skipped when nginx is not installed (.ci/run installs it on Debian).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_helpers import Certs, find_program

from corral.plugins import make_plugin_manager, worker_registry
from corral.testing import CorralProcess

ROOT = Path(__file__).resolve().parents[2]
NGINX = find_program("nginx")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
INSTALLED = set(worker_registry(make_plugin_manager()[0]))

pytestmark = [pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)"),
              pytest.mark.timeout(60)]

# Routes /stream/environ to the test app's /environ, so that the scheme can
# be checked through the /stream location (the TCP upstream) too.
WRAPPER_APP = '''
from corral.testing.apps import app as _app

def app(environ, start_response):
    if environ["PATH_INFO"].startswith("/stream/"):
        environ["PATH_INFO"] = environ["PATH_INFO"][len("/stream"):]
    return _app(environ, start_response)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _swap(text: str, replacements: dict[str, str], name: str) -> str:
    for old, new in replacements.items():
        # A changed doc must fail here, not quietly test something else.
        assert old in text, f"{name} no longer contains {old!r}; update tests/deploy/test_nginx.py"
        text = text.replace(old, new)
    return text


def _stream_module_line() -> str | None:
    """The load_module line nginx needs for stream{}, '' when built in, None when unavailable."""
    assert NGINX is not None
    build = subprocess.run([NGINX, "-V"], capture_output=True, text=True, timeout=10).stderr
    if re.search(r"--with-stream(\s|$)", build):
        return ""
    if "--with-stream=dynamic" in build and os.path.exists(STREAM_MODULE):
        return f"load_module {STREAM_MODULE};"
    return None


@dataclass
class Nginx:
    https_port: int
    http_port: int
    l4_port: int | None


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Nginx]:
    assert NGINX is not None
    tmp = tmp_path_factory.mktemp("nginx")
    (tmp / "nginxapp.py").write_text(WRAPPER_APP)
    sock = tmp / "corral.sock"
    stream_class = "gevent" if "gevent" in INSTALLED else "sync"
    procs: list[CorralProcess] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        # As docs/nginx/corral.conf says: a sync pool on a unix socket, a
        # gevent pool on TCP for streaming.
        pools = CorralProcess("nginxapp:app", ["--pool", f"app:sync:1@unix:{sock}",
                                               "--pool", f"stream:{stream_class}:1@127.0.0.1:0"],
                              workdir=tmp, workers=None, bind=())
        procs.append(pools.start())
        (stream_addr,) = [a for a in pools.addresses if not a.startswith("unix:")]
        module = _stream_module_line()
        l4_port = None
        stream_block = ""
        if module is not None:
            # As docs/nginx/corral-stream.conf says: TLS and PROXY in corral.
            l4 = CorralProcess("nginxapp:app", ["--certfile", str(certs.cert), "--keyfile", str(certs.key),
                                                "--proxy-protocol", "--proxy-allow-from", "127.0.0.1"],
                               workdir=tmp)
            procs.append(l4.start())
            l4_port = _free_port()
            conf = (ROOT / "docs" / "nginx" / "corral-stream.conf").read_text()
            (tmp / "corral-stream.conf").write_text(_swap(conf, {
                "server 127.0.0.1:8443;": f"server 127.0.0.1:{l4.port};",
                "listen 443;": f"listen 127.0.0.1:{l4_port};",
            }, "docs/nginx/corral-stream.conf"))
            stream_block = f"stream {{ include {tmp}/corral-stream.conf; }}"
        https_port, http_port = _free_port(), _free_port()
        conf = (ROOT / "docs" / "nginx" / "corral.conf").read_text()
        (tmp / "corral.conf").write_text(_swap(conf, {
            "unix:/run/corral/corral.sock": f"unix:{sock}",
            "127.0.0.1:8001": stream_addr,
            "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
            "listen 80;": f"listen 127.0.0.1:{http_port};",
            "/etc/ssl/corral/fullchain.pem": str(certs.cert),
            "/etc/ssl/corral/privkey.pem": str(certs.key),
        }, "docs/nginx/corral.conf"))
        temp_paths = "\n".join(f"{kind}_temp_path {tmp}/{kind}_temp;"
                               for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (tmp / "nginx.conf").write_text(f"""
{module or ""}
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    {temp_paths}
    include {tmp}/corral.conf;
}}
{stream_block}
""")
        nginx = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=open(tmp / "nginx.out", "wb"), start_new_session=True)  # noqa: SIM115
        deadline = time.monotonic() + 15
        for port in (https_port, http_port, l4_port):
            while port is not None:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                    break
                except ConnectionRefusedError:
                    if nginx.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError("nginx did not start:\n" + _logs(tmp)) from None
                    time.sleep(0.02)
        yield Nginx(https_port, http_port, l4_port)
    finally:
        if nginx is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(nginx.pid, signal.SIGTERM)
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(nginx.pid, signal.SIGKILL)
                nginx.wait(5)
        for proc in procs:
            proc.kill()


def _logs(tmp: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (tmp / "nginx.out", tmp / "error.log")
                     if p.exists())


def _client(port: int, ctx: ssl.SSLContext | None, source: str = "127.0.0.2") -> socket.socket:
    """A connection from another loopback address, so that the client is told apart from nginx."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1") if ctx else raw


def _get(sock: socket.socket, path: str) -> tuple[int, dict[str, str], bytes, list[bytes]]:
    """GET over ``sock`` with Connection: close: (status, headers, body, the reads as they came)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".encode())
    reads = []
    while data := sock.recv(65536):
        reads.append(data)
    head, _, body = b"".join(reads).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        decoded = b""
        while True:
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line, 16)
            if not size:
                break
            decoded, body = decoded + body[:size], body[size + 2:]
        body = decoded
    return int(lines[0].split()[1]), headers, body, reads


def test_scheme_and_forwarded_for_over_unix_and_tcp_upstreams(deployment: Nginx, certs: Certs) -> None:
    for path in ("/environ", "/stream/environ"):  # unix-socket upstream, then TCP
        with _client(deployment.https_port, certs.client_context()) as sock:
            status, _, body, _ = _get(sock, path)
        assert status == 200, body
        environ = json.loads(body)
        assert environ["wsgi.url_scheme"] == "https", json.dumps(environ)
        assert environ["HTTP_X_FORWARDED_PROTO"] == "https"
        assert environ["HTTP_X_FORWARDED_FOR"] == "127.0.0.2"
        assert environ["HTTP_HOST"] == "example.com"
    with _client(deployment.http_port, None) as sock:
        status, headers, _, _ = _get(sock, "/anything?x=1")
    assert status == 301 and headers["location"] == "https://example.com/anything?x=1"


def test_streaming_arrives_piece_by_piece(deployment: Nginx, certs: Certs) -> None:
    with _client(deployment.https_port, certs.client_context()) as sock:
        status, _, body, reads = _get(sock, "/stream?n=3&delay=0.2")
    assert status == 200
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"
    # proxy_buffering off: the first piece came 0.2 s before the last was
    # even made, so no read may hold both (TLS never merges two records).
    first = next(i for i, r in enumerate(reads) if b"chunk 0" in r)
    assert b"chunk 2" not in reads[first], reads


def test_proxy_protocol_gives_the_client_address(deployment: Nginx, certs: Certs) -> None:
    if deployment.l4_port is None:
        pytest.skip("nginx has no stream module (Debian: libnginx-mod-stream)")
    with _client(deployment.l4_port, certs.client_context()) as sock:
        client_port = sock.getsockname()[1]
        status, _, body, _ = _get(sock, "/environ")
    assert status == 200
    environ = json.loads(body)
    # Without the PROXY header corral would see nginx: 127.0.0.1 and another port.
    assert environ["REMOTE_ADDR"] == "127.0.0.2"
    assert environ["REMOTE_PORT"] == str(client_port)
    assert environ["wsgi.url_scheme"] == "https"
