"""Process settings: --user/--group, --env, --umask, --daemon, --reload, --name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.testing import CorralProcess

APP = "corral.testing.apps:app"


def _status_ids(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_workers_drop_to_user_and_group(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    # --preload: this machine's Python may live under /root, which "nobody"
    # cannot read, so everything is imported before the workers drop to it.
    with CorralProcess(APP, ["-u", "nobody", "-g", "nogroup", "--preload"],
                       workdir=tmp_path) as server:
        (pid,) = server.wait_for_workers(1)
        import grp
        import pwd

        assert _status_ids(pid) == (pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
        assert _status_ids(server.pid) == (0, 0)  # the arbiter keeps its privileges
        assert server.request()[0] == 200


def test_unknown_user_is_a_config_error() -> None:
    res = subprocess.run([sys.executable, "-m", "corral", "-u", "no-such-user-x", APP],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "--user no-such-user-x: no such user" in res.stderr


def test_env_reaches_the_app_and_umask_applies(tmp_path: Path) -> None:
    with CorralProcess(APP, ["-e", "GREETING=hi there", "--env", "OTHER=x=y", "-m", "027"],
                       workdir=tmp_path) as server:
        (pid,) = server.wait_for_workers(1)
        env = json.loads(server.request("GET", "/osenv?names=GREETING,OTHER")[2])
        assert env == {"GREETING": "hi there", "OTHER": "x=y"}
        umask = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                 if line.startswith("Umask")]
        assert umask == ["Umask:\t0027"]


def test_daemon_detaches_and_writes_pidfile(tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    log = tmp_path / "d.log"
    res = subprocess.run(
        [sys.executable, "-m", "corral", "-D", "-p", str(pidfile), "--error-logfile", str(log),
         "-b", "127.0.0.1:0", APP], capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 0  # the foreground process returned at once
    deadline = time.monotonic() + 15
    while not (pidfile.exists() and "Ready:" in log.read_text()):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.02)
    pid = int(pidfile.read_text())
    try:
        # Detached: a session of its own (the second fork is not its leader,
        # so it can never reacquire a terminal).
        assert os.getsid(pid) != os.getsid(0)
        assert os.getsid(pid) != pid
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while pidfile.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_reload_restarts_worker_when_source_changes(tmp_path: Path) -> None:
    app = tmp_path / "devapp.py"
    app.write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'one']\n"
    )
    with CorralProcess("devapp:app", ["--reload", "--chdir", str(tmp_path)], workdir=tmp_path) as server:
        (pid,) = server.wait_for_workers(1)
        assert server.request()[2] == b"one"
        app.write_text(app.read_text().replace("b'one'", "b'two'"))
        os.utime(app, (time.time() + 5, time.time() + 5))  # mtime granularity
        server.wait_for_log("devapp.py changed; restarting worker")
        server.wait_for_workers(1, exclude=[pid])
        server.wait_for_log("Worker .* is ready|Ready: ", count=1)
        deadline = time.monotonic() + 10
        while server.request()[2] != b"two":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_reload_extra_files_restart_workers_too(tmp_path: Path) -> None:
    # gunicorn's --reload-extra-file: a template or data file the app reads once.
    data = tmp_path / "greeting.txt"
    data.write_text("hello")
    (tmp_path / "dataapp.py").write_text(
        "import pathlib\n"
        "GREETING = (pathlib.Path(__file__).parent / 'greeting.txt').read_bytes()\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [GREETING]\n"
    )
    args = ["--reload", "--reload-extra-file", str(data), "--chdir", str(tmp_path)]
    with CorralProcess("dataapp:app", args, workdir=tmp_path) as server:
        (pid,) = server.wait_for_workers(1)
        assert server.request()[2] == b"hello"
        data.write_text("goodbye")
        os.utime(data, (time.time() + 5, time.time() + 5))
        server.wait_for_log("greeting.txt changed; restarting worker")
        server.wait_for_workers(1, exclude=[pid])
        deadline = time.monotonic() + 10
        while server.request()[2] != b"goodbye":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_reload_serves_the_error_of_a_broken_save_until_the_file_is_fixed(tmp_path: Path) -> None:
    # A development server survives a typo, as gunicorn's does: it answers
    # 500 with the error, watches the broken file, and serves again once fixed.
    app = tmp_path / "devapp.py"
    good = ("def app(environ, start_response):\n"
            "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
            "    return [b'%s']\n")
    app.write_text(good % "one")
    with CorralProcess("devapp:app", ["--reload", "--chdir", str(tmp_path)], workdir=tmp_path) as server:
        (pid,) = server.wait_for_workers(1)
        app.write_text("def app(environ, start_response:\n")  # a syntax error
        os.utime(app, (time.time() + 5, time.time() + 5))
        server.wait_for_log("devapp.py changed; restarting worker")
        (broken,) = server.wait_for_workers(1, exclude=[pid])
        deadline = time.monotonic() + 10
        while (reply := server.request())[0] != 500:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert b"SyntaxError" in reply[2] and b"devapp.py" in reply[2]
        assert server.proc is not None and server.proc.poll() is None  # still running
        app.write_text(good % "two")
        os.utime(app, (time.time() + 10, time.time() + 10))
        server.wait_for_workers(1, exclude=[pid, broken])
        deadline = time.monotonic() + 10
        while server.request()[2] != b"two":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_print_config_shows_process_settings() -> None:
    res = subprocess.run([sys.executable, "-m", "corral", "--print-config", "-e", "A=1", "-m", "0o22",
                          APP], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    assert "raw_env" in res.stdout and "['A=1']" in res.stdout
    assert json.dumps(18) in res.stdout  # umask 0o22 == 18


def test_process_titles_name_role_pool_and_class(tmp_path: Path) -> None:
    pytest.importorskip("setproctitle")
    with CorralProcess(APP, ["-n", "shop"], workdir=tmp_path) as server:
        (pid,) = server.wait_for_workers(1)
        deadline = time.monotonic() + 10
        while True:
            master = Path(f"/proc/{server.pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
            worker = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
            if master.startswith(b"corral:") and worker.startswith(b"corral:"):
                break
            assert time.monotonic() < deadline, (master, worker)
            time.sleep(0.02)
        assert master == b"corral: master [shop]"
        assert worker == b"corral: worker [main: sync] [shop]"
