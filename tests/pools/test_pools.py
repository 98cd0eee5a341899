"""Several worker pools under one arbiter, against real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral.plugins import make_plugin_manager, worker_registry
from corral.testing import CorralProcess
from corral.testing.load import LoadGenerator
from corral.testing.process import free_ports

APP = "corral.testing.apps:app"
INSTALLED = set(worker_registry(make_plugin_manager()[0]))


def _environ(port: int) -> dict[str, object]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/environ")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.skipif(not {"gthread", "gevent"} <= INSTALLED, reason="needs the gthread and gevent plugins")
def test_three_classes_on_three_ports(tmp_path: Path) -> None:
    a, b, c = free_ports(3)
    conf = tmp_path / "pools.py"
    conf.write_text(
        "pools = {\n"
        f"    'plain': {{'worker_class': 'sync', 'workers': 2, 'bind': ['127.0.0.1:{a}']}},\n"
        f"    'threads': {{'worker_class': 'gthread', 'workers': 1, 'threads': 4, 'bind': ['127.0.0.1:{b}']}},\n"
        f"    'green': {{'worker_class': 'gevent', 'workers': 1, 'bind': ['127.0.0.1:{c}']}},\n"
        "}\n"
    )
    with CorralProcess(APP, ["-c", str(conf)], workdir=tmp_path, workers=None, bind=()) as server:
        for port, cls, patched in ((a, "sync", False), (b, "gthread", False), (c, "gevent", True)):
            for _ in range(4):
                env = _environ(port)
                assert env["corral.worker_class"] == cls
                assert env["socket_patched"] is patched
                assert env["gevent_imported"] is patched  # other pools never import gevent
        pids = server.wait_for_workers(4)
        by_pool = {pid: _title(pid) for pid in pids}
        sync_pids = [pid for pid, title in by_pool.items() if "[plain: sync]" in title]
        assert len(sync_pids) == 2, by_pool
        victim = sync_pids[0]
        os.kill(victim, signal.SIGKILL)
        new = server.wait_for_workers(4, exclude=[victim])
        replacement = set(new) - set(pids)
        assert len(replacement) == 1
        # The replacement joined the pool that lost a worker; the others are untouched.
        (newcomer,) = replacement
        deadline = time.monotonic() + 10
        while not _title(newcomer).startswith("corral: worker"):
            assert time.monotonic() < deadline, _title(newcomer)
            time.sleep(0.02)
        assert "[plain: sync]" in _title(newcomer)
        assert set(pids) - {victim} <= set(new)
        assert _environ(a)["corral.worker_class"] == "sync"


def test_two_apps_on_two_ports(tmp_path: Path) -> None:
    (tmp_path / "other.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'other app on ' + environ['corral.pool'].encode()]\n"
    )
    a, b = free_ports(2)
    conf = tmp_path / "apps.toml"
    conf.write_text(f"[pools.first]\nworker-class = 'sync'\nbind = ['127.0.0.1:{a}']\n"
                    f"[pools.second]\nworker-class = 'sync'\nbind = ['127.0.0.1:{b}']\nwsgi-app = 'other:app'\n")
    with CorralProcess(APP, ["--chdir", str(tmp_path), "-c", str(conf)], workdir=tmp_path,
                       bind=()) as server:
        server.wait_for_workers(2)
        import http.client

        def get(port: int) -> bytes:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/")
            return conn.getresponse().read()

        assert get(a) == b"Hello, World!"
        assert get(b) == b"other app on second"


def test_pool_flag_and_print_config(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "corral", "--print-config", "--pool", "web:sync:3@127.0.0.1:8001",
                          "--pool", "api:sync:2", APP], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "'web': {'worker_class': 'sync', 'workers': '3', 'bind': ['127.0.0.1:8001']}" in res.stdout
    for bad, needle in [("web:sync", "use NAME:CLASS:COUNT"), ("9x:sync:1", "pool names are"),
                        ("web:sync:many", "pool web: setting workers (--workers): expected a whole number")]:
        res = subprocess.run([sys.executable, "-m", "corral", "--pool", bad, APP], capture_output=True,
                             text=True, timeout=30)
        assert res.returncode == 2 and needle in res.stderr, res.stderr
    conf = tmp_path / "c.py"
    conf.write_text("pools = {'web': {'daemon': True}}\n")
    res = subprocess.run([sys.executable, "-m", "corral", "-c", str(conf), APP], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 2 and "'daemon' applies to the whole deployment" in res.stderr


def test_shared_listener_and_scale_one_pool(tmp_path: Path) -> None:
    # Two pools on the same (deployment) listener: the kernel spreads connections.
    args = ["--pool", "one:sync:1", "--pool", "two:sync:1", "-p", str(tmp_path / "c.pid")]
    with CorralProcess(APP, args, workdir=tmp_path, workers=None) as server:
        workers = server.wait_for_workers(2)
        # Two requests at once, each holding its sync worker for 0.3 s: with
        # both workers accepting, each takes one. (Sequential requests could
        # all go to one worker: the kernel favours the waiter that just
        # came back to accept().) Repeated while a worker is still booting.
        served: set[int] = set()
        deadline = time.monotonic() + 15
        while served != set(workers):
            assert time.monotonic() < deadline, (served, workers)
            with ThreadPoolExecutor(2) as ex:
                replies = list(ex.map(lambda _: server.request("GET", "/sleep?t=0.3"), range(2)))
            served |= {int(body.split()[1]) for _, _, body in replies}
        # One worker of each pool served.
        assert sorted("[one: sync]" in _title(pid) for pid in workers) == [False, True]
        assert sorted("[two: sync]" in _title(pid) for pid in workers) == [False, True]
        res = subprocess.run([sys.executable, "-m", "corral", "scale", str(tmp_path / "c.pid"), "two", "+2"],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        server.wait_for_log("Pool two: 2 -> 3 workers")
        pids = server.wait_for_workers(4)
        deadline = time.monotonic() + 10
        # A new worker names itself right after fork: wait for the titles.
        while sum("[two: sync]" in _title(pid) for pid in pids) != 3:
            assert time.monotonic() < deadline, [_title(pid) for pid in pids]
            time.sleep(0.02)
        assert sum("[one: sync]" in _title(pid) for pid in pids) == 1


@pytest.mark.skipif("gthread" not in INSTALLED, reason="needs the gthread plugin")
def test_hup_resizes_and_changes_class_under_load(tmp_path: Path) -> None:
    a, b = free_ports(2)
    conf = tmp_path / "pools.py"
    conf.write_text(f"pools = {{'web': {{'worker_class': 'sync', 'workers': 1, 'bind': ['127.0.0.1:{a}']}},"
                    f" 'api': {{'worker_class': 'sync', 'workers': 1, 'bind': ['127.0.0.1:{b}']}}}}\n")
    with CorralProcess(APP, ["-c", str(conf)], workdir=tmp_path, workers=None, bind=()) as server:
        old = server.wait_for_workers(2)
        with LoadGenerator("127.0.0.1", a, path="/environ", concurrency=2, keepalive=False) as la, \
                LoadGenerator("127.0.0.1", b, path="/environ", concurrency=2, keepalive=False) as lb:
            la.wait_for_requests(10)
            lb.wait_for_requests(10)
            conf.write_text(f"pools = {{'web': {{'worker_class': 'gthread', 'workers': 2, 'bind': ['127.0.0.1:{a}']}},"
                            f" 'api': {{'worker_class': 'sync', 'workers': 2, 'bind': ['127.0.0.1:{b}']}}}}\n")
            server.send_signal(signal.SIGHUP)
            server.wait_for_workers(4, exclude=old)
            la.mark()
            la.wait_for_requests(20)
            lb.wait_for_requests(20)
            ra, rb = la.stop(), lb.stop()
        assert ra.failures == [] and rb.failures == []
        assert {json.loads(body)["corral.worker_class"] for body in ra.bodies_after_mark} == {"gthread"}


@pytest.mark.skipif(not {"gthread", "gevent"} <= INSTALLED, reason="needs the gthread and gevent plugins")
def test_documented_example_config_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    base = _consecutive_free_ports(3)
    with CorralProcess("", ["-c", str(root / "examples/pools/corral.conf.py")], workdir=tmp_path,
                       workers=None, bind=(), env={"EXAMPLE_BASE_PORT": str(base)}) as server:
        server.wait_for_workers(4)
        assert [_environ(base + i)["corral.worker_class"] for i in range(3)] == ["sync", "gthread", "gevent"]


def _consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free now, below the ephemeral range.

    Below it because the ports are probed, closed, and bound again by the
    server a moment later: a port from the ephemeral range (where port 0
    binds and outgoing connections take theirs) can be taken meanwhile by
    any of the suite's parallel tests, and was (a flaky "in use").
    """
    low, _high = _ephemeral_range()
    rng = random.Random()
    while True:
        base = rng.randrange(10000, max(10001, low - count))
        probes: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                probes.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in probes:
                s.close()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; BSDs and macOS use 49152 and up


def _get_json(port: int, path: str, body: bytes | None = None) -> tuple[int, dict[str, object]]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.skipif(not {"gthread", "asgi"} <= INSTALLED, reason="needs the gthread and asgi plugins")
def test_django_wsgi_and_asgi_pools_example(tmp_path: Path) -> None:
    """docs/pools.md's Django deployment: WSGI views on gthread, async views and a WebSocket on asgi.

    One arbiter, one config file (examples/django-pools), and a HUP that
    replaces both pools' workers with the requests of both still answered.
    """
    pytest.importorskip("django")
    from websockets.sync.client import connect

    root = Path(__file__).resolve().parents[2]
    base = _consecutive_free_ports(2)
    conf = root / "examples/django-pools/corral.conf.py"
    with CorralProcess("", ["-c", str(conf)], workdir=tmp_path, workers=None, bind=(),
                       env={"EXAMPLE_BASE_PORT": str(base)}) as server:
        before = set(server.wait_for_workers(3))
        status, report = _get_json(base, "/report", b"abc")
        assert status == 200 and report["view"] == "report"
        assert report["digest"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        assert str(report["server"]).startswith("corral")  # WSGI's SERVER_SOFTWARE: the gthread pool
        status, feed = _get_json(base + 1, "/feed?wait=0.01")
        assert (status, feed["view"]) == (200, "feed")
        # The sync view also runs on the asgi pool (Django runs it in a thread), as ASGI.
        status, report = _get_json(base + 1, "/report", b"abc")
        assert (status, report["server"]) == (200, "asgi")
        with connect(f"ws://127.0.0.1:{base + 1}/ws/echo", open_timeout=10) as ws:
            ws.send("ping over asgi")
            assert ws.recv(timeout=10) == "ping over asgi"
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = set(server.worker_pids())
            if len(now) == 3 and not (now & before):
                break
            time.sleep(0.05)
        assert len(now) == 3 and not (now & before), (before, now)
        assert _get_json(base, "/report", b"abc")[0] == 200
        assert _get_json(base + 1, "/feed?wait=0.01")[0] == 200
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.mark.skipif("asgi" not in INSTALLED, reason="needs the asgi plugin")
def test_a_pool_whose_app_is_of_the_wrong_kind_stops_the_start(tmp_path: Path) -> None:
    """An ASGI app named for a WSGI pool is an error that names the pool, both kinds and the fix."""
    (tmp_path / "mixed.py").write_text("async def app(scope, receive, send):\n    pass\n")
    conf = tmp_path / "corral.conf.py"
    conf.write_text(
        "pools = {\n"
        "    'web': {'worker_class': 'gthread', 'wsgi_app': 'corral.testing.apps:app'},\n"
        "    'live': {'worker_class': 'gthread', 'wsgi_app': 'mixed:app'},\n"
        "}\n"
    )
    res = subprocess.run([sys.executable, "-m", "corral", "-c", str(conf), "--chdir", str(tmp_path),
                          "--check-config"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "pool live: APP_MODULE 'mixed:app' is an ASGI application" in res.stderr
    assert "--worker-class asgi" in res.stderr
    conf.write_text(conf.read_text().replace("'live': {'worker_class': 'gthread'",
                                             "'live': {'worker_class': 'asgi'"))
    res = subprocess.run([sys.executable, "-m", "corral", "-c", str(conf), "--chdir", str(tmp_path),
                          "--check-config"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "worker class asgi (pool live)" in res.stdout
