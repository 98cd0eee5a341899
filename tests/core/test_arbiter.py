"""The arbiter under real signals: resize, reload, log reopening, hooks, boot timeouts."""

from __future__ import annotations

import ast
import signal
import time
from pathlib import Path

from corral.testing import CorralProcess

APP = "corral.testing.apps:app"


def test_ttin_ttou_change_worker_count(tmp_path: Path) -> None:
    with CorralProcess(APP, [], workdir=tmp_path, workers=2) as server:
        server.wait_for_workers(2)
        server.send_signal(signal.SIGTTIN)
        server.wait_for_workers(3)
        # Unix coalesces a signal sent while the same one is pending: wait
        # for each to be handled before sending the next.
        server.send_signal(signal.SIGTTOU)
        server.wait_for_log("Pool main: 3 -> 2 workers")
        server.send_signal(signal.SIGTTOU)
        server.wait_for_workers(1)
        server.send_signal(signal.SIGTTOU)  # never below one
        server.wait_for_log("Handling signal: ttou", count=3)
        assert len(server.wait_for_workers(1)) == 1
        assert server.request()[0] == 200


def test_hup_replaces_workers_and_rereads_config(tmp_path: Path) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 2\n")
    with CorralProcess(APP, ["-c", str(conf)], workdir=tmp_path, workers=None) as server:
        old = server.wait_for_workers(2)
        conf.write_text("workers = 3\n")
        server.send_signal(signal.SIGHUP)
        new = server.wait_for_workers(3, exclude=old)
        assert not set(new) & set(old)
        pids = {int(server.request("GET", "/pid")[2]) for _ in range(6)}
        assert pids <= set(new)


def test_hup_with_broken_config_keeps_serving(tmp_path: Path) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 1\n")
    with CorralProcess(APP, ["-c", str(conf)], workdir=tmp_path) as server:
        (pid,) = server.wait_for_workers(1)
        conf.write_text("workers = (\n")
        server.send_signal(signal.SIGHUP)
        log = server.wait_for_log("Reload failed, still running on the previous configuration")
        assert "syntax error" in log
        assert server.request()[0] == 200
        assert server.worker_pids() == [pid]
        conf.write_text("workers = 'many'\n")
        server.send_signal(signal.SIGHUP)
        log = server.wait_for_log("Reload failed", count=2)
        assert "setting workers" in log and "expected a whole number" in log
        assert server.request()[0] == 200


def test_usr1_reopens_log_file(tmp_path: Path) -> None:
    with CorralProcess(APP, [], workdir=tmp_path) as server:
        rotated = tmp_path / "rotated.log"
        server.log_path.rename(rotated)
        server.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not server.log_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.log_path.exists()
        server.send_signal(signal.SIGTTIN)
        server.wait_for_log("Handling signal: ttin")
        assert "Handling signal: usr1" in rotated.read_text()


def test_config_file_server_hooks_run(tmp_path: Path) -> None:
    marker = tmp_path / "hooks.txt"
    conf = tmp_path / "conf.py"
    conf.write_text(
        f"_MARK = {str(marker)!r}\n"
        "def _note(text):\n"
        "    with open(_MARK, 'a') as f:\n"
        "        f.write(text + '\\n')\n"
        "def on_starting(server):\n"
        "    _note('on_starting')\n"
        "def post_fork(server, worker):\n"
        "    _note(f'post_fork {worker.pid}')\n"
        "def pre_request(worker, req):\n"
        "    _note(f'pre_request {req.path}')\n"
        "def post_request(worker, req, environ, resp):\n"
        "    _note(f'post_request {resp.status_code}')\n"
        "def on_exit(server):\n"
        "    _note('on_exit')\n"
    )
    server = CorralProcess(APP, ["-c", str(conf)], workdir=tmp_path).start()
    try:
        (pid,) = server.wait_for_workers(1)
        assert server.request("GET", "/")[0] == 200
        assert server.stop() == 0
    finally:
        server.kill()
    lines = marker.read_text().splitlines()
    assert lines[0] == "on_starting"
    assert f"post_fork {pid}" in lines
    assert "pre_request /" in lines and "post_request 200" in lines
    assert lines[-1] == "on_exit"


def test_app_hanging_at_import_is_killed_and_reported(tmp_path: Path) -> None:
    (tmp_path / "slowimport.py").write_text(
        "import time\ntime.sleep(60)\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'late']\n"
    )
    server = CorralProcess("slowimport:app", ["--chdir", str(tmp_path), "--timeout", "1"],
                           workdir=tmp_path).start(wait_ready=False)
    try:
        log = server.wait_for_log(r"WORKER TIMEOUT \(pid:\d+, pool main, while booting", timeout=10)
        log = server.wait_for_log(r"slowimport.py", timeout=10)
        assert "time.sleep(60)" in log
    finally:
        server.kill()


_SHARED_HOOK = """\
import gc
import sys

def when_ready(server):
    with open({path!r} + ".tmp", "w") as f:
        f.write(repr(("corral_sync.worker" in sys.modules, gc.get_freeze_count())))
    import os
    os.replace({path!r} + ".tmp", {path!r})
"""

_FREEZE_APP = """\
import gc

def app(environ, start_response):
    body = str(gc.get_freeze_count()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_workers_share_what_the_arbiter_imported_and_never_collect_it(tmp_path: Path) -> None:
    # The worker class's shared_modules are imported by the arbiter before
    # fork; the inherited objects are frozen in the child (its collector
    # must not dirty their pages) and thawed in the arbiter.
    state = tmp_path / "arbiter-state"
    (tmp_path / "hooks.conf.py").write_text(_SHARED_HOOK.format(path=str(state)))
    (tmp_path / "freezeapp.py").write_text(_FREEZE_APP)
    with CorralProcess("freezeapp:app", ["-c", "hooks.conf.py"], workdir=tmp_path,
                       worker_class="sync") as server:
        deadline = time.monotonic() + 10
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        shared, arbiter_frozen = ast.literal_eval(state.read_text())
        assert shared is True
        assert arbiter_frozen == 0
        status, _, body = server.request("GET", "/")
        assert status == 200
        # Every object the arbiter had when it forked: thousands.
        assert int(body) > 1000
