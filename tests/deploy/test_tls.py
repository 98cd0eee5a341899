"""TLS terminated by corral: real processes, a generated CA, Python's ssl client.

What the design promises, and what is checked here:

- HTTPS with a certificate verified against the generated CA; wsgi.url_scheme
  is "https"; a file sent with wsgi.file_wrapper arrives whole (sendfile
  falls back to send() over TLS).
- The handshake happens in the connection's own thread of control, bounded
  by --ssl-handshake-timeout. A gevent worker keeps serving others while a
  client sits silent in its handshake; a sync worker serves one connection at
  a time by design, so a silent client holds it only until the handshake
  timeout, and is then dropped.
- Client certificates, the ssl_context hook, PROXY headers before the
  handshake, and the settings corral refuses at startup.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import Certs

from corral.plugins import make_plugin_manager, worker_registry
from corral.testing import CorralProcess

APP = "corral.testing.apps:app"
INSTALLED = set(worker_registry(make_plugin_manager()[0]))
needs_gevent = pytest.mark.skipif("gevent" not in INSTALLED, reason="corral-gevent is not installed")
needs_tornado = pytest.mark.skipif("tornado" not in INSTALLED, reason="corral-tornado is not installed")
needs_asgi = pytest.mark.skipif("asgi" not in INSTALLED, reason="corral-asgi is not installed")
#: The classes that serve TLS; the others refuse --certfile at startup.
TLS_CLASSES = {"sync", "gthread", "gevent", "tornado", "asgi"}

pytestmark = pytest.mark.timeout(60)


def tls_args(certs: Certs, *extra: str) -> list[str]:
    return ["--certfile", str(certs.cert), "--keyfile", str(certs.key), *extra]


def https(server: CorralProcess, path: str, ctx: ssl.SSLContext, timeout: float = 10.0,
          conn: http.client.HTTPSConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    if conn is None:
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[dict[str, CorralProcess]]:
    """One sync and (when installed) one gevent server, one worker each, shared by the module."""
    workdir = tmp_path_factory.mktemp("tls")
    started: dict[str, CorralProcess] = {}
    try:
        # A short handshake timeout, so that the sync test sees it expire.
        started["sync"] = CorralProcess(APP, tls_args(certs, "--ssl-handshake-timeout", "1"),
                                        workdir=workdir, worker_class="sync").start()
        # Two threads, a handshake timeout of 3 s: long enough for the waits below.
        started["gthread"] = CorralProcess(APP, tls_args(certs, "--keep-alive", "5", "--threads", "2",
                                                         "--ssl-handshake-timeout", "3"),
                                           workdir=workdir, worker_class="gthread").start()
        if "gevent" in INSTALLED:
            # The default handshake timeout (10 s): longer than any wait below.
            started["gevent"] = CorralProcess(APP, tls_args(certs, "--keep-alive", "5"),
                                              workdir=workdir, worker_class="gevent").start()
        if "tornado" in INSTALLED:
            started["tornado"] = CorralProcess(APP, tls_args(certs, "--keep-alive", "5"),
                                               workdir=workdir, worker_class="tornado").start()
        if "asgi" in INSTALLED:
            # The ASGI twin of the test app: the same routes (corral.testing.asgi_apps).
            started["asgi"] = CorralProcess("corral.testing.asgi_apps:app", tls_args(certs, "--keep-alive", "5"),
                                            workdir=workdir, worker_class="asgi").start()
        yield started
    finally:
        for server in started.values():
            server.kill()


@pytest.mark.parametrize("worker_class", ["sync", "gthread", pytest.param("gevent", marks=needs_gevent),
                                          pytest.param("tornado", marks=needs_tornado),
                                          pytest.param("asgi", marks=needs_asgi)])
def test_https_scheme_and_large_file(servers: dict[str, CorralProcess], certs: Certs,
                                     worker_class: str) -> None:
    server = servers[worker_class]
    ctx = certs.client_context()  # verifies the chain and the name 127.0.0.1
    status, body = https(server, "/environ", ctx)
    assert status == 200
    environ = json.loads(body)
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["SERVER_PORT"] == str(server.port)
    status, body = https(server, "/file?size=300000", ctx)
    assert status == 200 and body == bytes(i % 251 for i in range(300000))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.selected_alpn_protocol() is None  # the client offered none


@pytest.mark.parametrize("worker_class", ["gthread", pytest.param("gevent", marks=needs_gevent),
                                          pytest.param("asgi", marks=needs_asgi)])
def test_keepalive_over_tls(servers: dict[str, CorralProcess], certs: Certs, worker_class: str) -> None:
    server = servers[worker_class]
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=certs.client_context(), timeout=10)
    try:
        pids = {https(server, "/pid", certs.client_context(), conn=conn)[1] for _ in range(3)}
        assert len(pids) == 1
        assert conn.sock is not None  # the same connection served all three
    finally:
        conn.close()


def test_sync_silent_client_holds_the_worker_only_until_the_handshake_timeout(
        servers: dict[str, CorralProcess], certs: Certs) -> None:
    server = servers["sync"]  # one worker, --ssl-handshake-timeout 1
    with server.connect() as silent:
        # The worker is now in this connection's handshake (one at a time is
        # what sync is). It must give up after 1 s and serve the next client.
        started = time.monotonic()
        status, _ = https(server, "/", certs.client_context(), timeout=8)
        assert status == 200
        assert time.monotonic() - started < 8
        silent.settimeout(8)
        assert silent.recv(1) == b""  # dropped without an answer


def test_a_handshake_longer_than_timeout_does_not_kill_a_sync_worker(tmp_path: Path, certs: Certs) -> None:
    # Waiting for a client's handshake is waiting, not being stuck: the
    # worker beats meanwhile, and --ssl-handshake-timeout, longer than
    # --timeout here, ends the wait. (It used to be killed at --timeout.)
    server = CorralProcess(APP, tls_args(certs, "--timeout", "1", "--ssl-handshake-timeout", "3"),
                           workdir=tmp_path, worker_class="sync").start()
    try:
        (pid,) = server.wait_for_workers(1)
        with server.connect() as silent:
            silent.settimeout(10)
            started = time.monotonic()
            assert silent.recv(1) == b""  # dropped without an answer...
            assert time.monotonic() - started > 2.5  # ...at the handshake timeout
        assert https(server, "/", certs.client_context())[0] == 200
        assert server.worker_pids() == [pid]
        assert "WORKER TIMEOUT" not in server.log()
    finally:
        server.kill()


@needs_gevent
def test_gevent_silent_and_stalled_handshakes_do_not_block_others(
        servers: dict[str, CorralProcess], certs: Certs) -> None:
    server = servers["gevent"]  # one worker, handshake timeout 10 s
    with server.connect() as silent, server.connect() as stalled:
        # A TLS record header announcing a ClientHello that never comes.
        stalled.sendall(b"\x16\x03\x01\x02\x00")
        # Answered at once: with the handshake in the connection's own
        # greenlet, waiting clients hold nothing but their greenlet. The 3 s
        # client timeout is far below the 10 s the stalled ones may take.
        for _ in range(3):
            assert https(server, "/", certs.client_context(), timeout=3)[0] == 200
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.recv(1)  # still open: it was not answered or dropped by mistake


def test_gthread_stalled_handshakes_hold_a_thread_only_until_the_timeout_and_never_the_loop(
        servers: dict[str, CorralProcess], certs: Certs) -> None:
    server = servers["gthread"]  # one worker, two threads, --ssl-handshake-timeout 3
    with server.connect() as silent, server.connect() as stalled:
        stalled.sendall(b"\x16\x03\x01\x02\x00")  # a ClientHello that never comes
        # Both threads are in a handshake; the loop still accepts, and the
        # next client is served once a handshake times out (3 s), not never.
        started = time.monotonic()
        assert https(server, "/", certs.client_context(), timeout=10)[0] == 200
        assert time.monotonic() - started < 8
        for sock in (silent, stalled):
            sock.settimeout(8)
            assert sock.recv(1) == b""  # dropped without an answer at the timeout
    # Pipelined requests over TLS, one write: every response, in order.
    with server.connect() as raw, certs.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n" * 3
                    + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        tls.settimeout(10)
        while True:
            piece = tls.recv(65536)
            if not piece:
                break
            data += piece
        assert data.count(b"HTTP/1.1 200 OK") == 4


def test_plain_http_on_a_tls_port_is_dropped(servers: dict[str, CorralProcess], certs: Certs) -> None:
    server = servers["sync"]
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(8)
        try:
            data = sock.recv(100)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"HTTP/")
    assert https(server, "/", certs.client_context())[0] == 200


def test_client_certificates_required(tmp_path: Path, certs: Certs) -> None:
    args = tls_args(certs, "--cert-reqs", "required", "--ca-certs", str(certs.ca))
    with CorralProcess(APP, args, workdir=tmp_path) as server:
        ctx = certs.client_context()
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            https(server, "/", ctx)  # no client certificate
        ctx.load_cert_chain(certs.client_cert, certs.client_key)
        assert https(server, "/", ctx)[0] == 200


def test_ssl_context_hook_from_a_config_file(tmp_path: Path, certs: Certs) -> None:
    marker = tmp_path / "hook-ran"
    conf = tmp_path / "tls.conf.py"
    conf.write_text(
        "import os, ssl\n"
        "def ssl_context(config, default_ssl_context_factory):\n"
        "    ctx = default_ssl_context_factory()\n"
        "    ctx.minimum_version = ssl.TLSVersion.TLSv1_3\n"
        f"    open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "    return ctx\n"
    )
    with CorralProcess(APP, ["-c", str(conf), *tls_args(certs)], workdir=tmp_path) as server:
        (worker,) = server.wait_for_workers(1)
        assert marker.read_text() == str(worker)  # built in the worker, after fork
        old = certs.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            https(server, "/", old)
        status, body = https(server, "/environ", certs.client_context())
        assert status == 200 and json.loads(body)["wsgi.url_scheme"] == "https"


def _proxy_v2(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    addresses = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!HH", src[1], dst[1])
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


@pytest.mark.parametrize("worker_class", ["sync", "gthread", pytest.param("tornado", marks=needs_tornado)])
def test_proxy_protocol_header_before_the_handshake(tmp_path: Path, certs: Certs, worker_class: str) -> None:
    # A TCP load balancer (nginx stream, HAProxy, a cloud NLB) passes TLS
    # through and puts its PROXY header before the client's first TLS record.
    args = tls_args(certs, "--proxy-protocol", "--proxy-protocol-version", "auto")
    with CorralProcess(APP, args, workdir=tmp_path, worker_class=worker_class) as server:
        for header, client in [(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n", "203.0.113.7"),
                               (_proxy_v2(("198.51.100.9", 40001), ("127.0.0.1", 443)), "198.51.100.9")]:
            with server.connect() as raw:
                raw.sendall(header)
                with certs.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"GET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := tls.recv(65536):
                        data += chunk
            assert data.startswith(b"HTTP/1.1 200 ")
            environ = json.loads(data.partition(b"\r\n\r\n")[2])
            assert environ["REMOTE_ADDR"] == client
            assert environ["wsgi.url_scheme"] == "https"
        # No PROXY header: the ClientHello is not one, and the connection is dropped.
        with server.connect() as raw, pytest.raises(OSError), \
                certs.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            if not tls.recv(100):
                raise OSError("closed without an answer")


def _corral(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", *args, "--check-config", APP],
                          capture_output=True, text=True, timeout=30)


def test_tls_settings_without_a_certificate_are_ignored_with_a_warning(certs: Certs) -> None:
    res = _corral("--keyfile", str(certs.key), "--ciphers", "ECDHE+AESGCM")  # gunicorn ignores them too
    assert res.returncode == 0, res.stderr
    assert "--keyfile, --ciphers given without --certfile, which turns TLS on: ignored" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["--certfile", "{cert}", "--keyfile", "{client_key}"], "cannot use --certfile"),
    (["--certfile", "{tmp}/missing.pem"], "No such file"),
    (["--certfile", "{cert}", "--keyfile", "{key}", "--cert-reqs", "required"], "needs --ca-certs"),
    (["--certfile", "{cert}", "--keyfile", "{key}", "--ciphers", "NO-SUCH-CIPHER"], "cannot use --ciphers"),
    (["--certfile", "{cert}", "--keyfile", "{key}", "--ssl-minimum-version", "1.1"], "expected 1.2 or 1.3"),
])
def test_bad_tls_settings_are_config_errors(tmp_path: Path, certs: Certs, args: list[str],
                                            message: str) -> None:
    names: dict[str, Any] = {"key": certs.key, "cert": certs.cert, "client_key": certs.client_key,
                             "tmp": tmp_path}
    res = _corral(*(a.format(**names) for a in args))
    assert res.returncode == 2, res.stderr
    assert message in res.stderr


# Every installed class serves TLS now; a class given by path declares no TLS.
@pytest.mark.parametrize("worker_class", [*sorted(INSTALLED - TLS_CLASSES),
                                          "corral.workers.selector_loop:SelectorLoopWorker"])
def test_worker_classes_without_tls_refuse_it(certs: Certs, worker_class: str) -> None:
    res = _corral("-k", worker_class, *tls_args(certs))
    assert res.returncode == 2
    assert f"--certfile is not supported by worker class {worker_class!r} yet" in res.stderr


def test_hup_reloads_the_certificate_and_a_broken_one_keeps_the_old(
        tmp_path: Path, certs: Certs) -> None:
    from deploy_helpers import make_certs

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(certs.cert.read_bytes())
    key.write_bytes(certs.key.read_bytes())

    def served_certificate(ctx: ssl.SSLContext) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

    with CorralProcess(APP, ["--certfile", str(cert), "--keyfile", str(key)], workdir=tmp_path) as server:
        first = served_certificate(certs.client_context())
        cert.write_text("not a certificate\n")
        server.send_signal(signal.SIGHUP)
        server.wait_for_log("Reload failed, still running on the previous configuration: TLS: cannot use")
        assert served_certificate(certs.client_context()) == first
        (tmp_path / "renewed").mkdir()
        renewed = make_certs(tmp_path / "renewed")
        cert.write_bytes(renewed.cert.read_bytes())
        key.write_bytes(renewed.key.read_bytes())
        (old_worker,) = server.wait_for_workers(1)
        server.send_signal(signal.SIGHUP)
        server.wait_for_workers(1, exclude=[old_worker])
        assert served_certificate(renewed.client_context()) != first
