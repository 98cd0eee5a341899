"""systemd integration: socket activation (LISTEN_FDS) and sd_notify READY."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed (Debian package systemd)")
def test_socket_activation_and_ready_notification(tmp_path: Path) -> None:
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(20)
    port = _free_port()
    log = tmp_path / "err.log"
    # systemd-socket-activate binds, then execs corral on the first
    # connection with the socket at fd 3 and LISTEN_FDS/LISTEN_PID set, as
    # systemd does for a .socket unit.
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-E", f"NOTIFY_SOCKET={notify_path}",
         sys.executable, "-m", "corral", "-w", "2", "--error-logfile", str(log),
         "corral.testing.apps:app"],
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            message = notify.recv(4096).decode()
            assert "READY=1" in message
            assert f"MAINPID={proc.pid}" in message  # the exec keeps the pid
            text = log.read_text()
            assert f"Inherited 1 listener(s): 127.0.0.1:{port}" in text
            assert "Ready: 2 worker(s) serving" in text  # READY came after the workers booted
            assert client.recv(100).startswith(b"HTTP/1.1 200 ")
        proc.terminate()
        assert proc.wait(20) == 0
        assert "STOPPING=1" in notify.recv(4096).decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        notify.close()


@pytest.mark.parametrize("route,frame", [("/spin", "while True"), ("/hang", "time.sleep(1000)")])
def test_stuck_workers_stacks_are_logged(tmp_path: Path, route: str, frame: str) -> None:
    from corral.testing import CorralProcess, read_until_close

    with CorralProcess("corral.testing.apps:app", ["--timeout", "1"], workdir=tmp_path) as server:
        (pid,) = server.wait_for_workers(1)
        with server.connect() as sock:
            sock.sendall(f"GET {route} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            read_until_close(sock, timeout=10)
        server.wait_for_workers(1, exclude=[pid], timeout=5)
        log = server.wait_for_log(re.escape(frame))
        assert f"WORKER TIMEOUT (pid:{pid}" in log
        assert f"Worker {pid} (pool main) timed out; stacks of its threads" in log
        assert server.request()[0] == 200


def _wait_for_notification(notify: socket.socket, predicate: Any, seen: list[str]) -> str:
    """Receive datagrams (all kept in ``seen``) until one satisfies ``predicate``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        message = notify.recv(4096).decode()
        seen.append(message)
        if predicate(message):
            return message
    raise AssertionError(f"no such notification; got {seen}")


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return set()
    return {c for c in map(int, text.split()) if _alive(c)}


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        # Gone, or going: a process reaped between open() and read() makes
        # the read fail with ESRCH.
        return False
    return state != "Z"


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed (Debian package systemd)")
def test_usr2_upgrade_keeps_the_activated_socket(tmp_path: Path) -> None:
    """USR2 under socket activation: the new arbiter inherits the socket systemd passed.

    The old arbiter then stops with WINCH and TERM while clients keep being
    answered on the same port, and the service manager is told who the main
    process is now (MAINPID), never STOPPING: with NotifyAccess=all, systemd
    would take a STOPPING=1 from the old arbiter as the whole service stopping.
    """
    from corral.testing.load import LoadGenerator

    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(20)
    port = _free_port()
    log = tmp_path / "err.log"
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-E", f"NOTIFY_SOCKET={notify_path}",
         sys.executable, "-m", "corral", "-w", "1", "--error-logfile", str(log),
         "corral.testing.apps:app"],
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    old = proc.pid
    new = 0
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                # The first connection makes systemd-socket-activate exec corral.
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        _wait_for_notification(notify, lambda m: "READY=1" in m, seen)
        with LoadGenerator("127.0.0.1", port, concurrency=3, keepalive=False, max_seconds=40) as load:
            load.wait_for_requests(10)
            os.kill(old, signal.SIGUSR2)
            ready = _wait_for_notification(notify, lambda m: "READY=1" in m and "MAINPID=" in m, seen)
            new = int(re.search(r"MAINPID=(\d+)", ready).group(1))  # type: ignore[union-attr]
            assert new != old
            assert log.read_text().count(f"Inherited 1 listener(s): 127.0.0.1:{port}") == 2
            load.wait_for_requests(10)
            os.kill(old, signal.SIGWINCH)  # the old workers finish and stop
            deadline = time.monotonic() + 20
            while _children(old) != {new}:  # only the new arbiter is left
                assert time.monotonic() < deadline, f"old workers still running: {_children(old)}"
                time.sleep(0.02)
            load.wait_for_requests(10)
            load.mark()
            os.kill(old, signal.SIGTERM)
            assert proc.wait(20) == 0
            # The new arbiter, reparented, tells systemd it is the main process now.
            _wait_for_notification(notify, lambda m: m == f"MAINPID={new}", seen)
            load.wait_for_requests(10)
            result = load.stop()
        assert result.failures == []
        assert not any("STOPPING=1" in m for m in seen), seen
        # Once the old workers had stopped, the new arbiter's answered everything.
        answered = {int(b) for b in result.bodies_after_mark}
        assert answered and all(_parent(pid) == new for pid in answered)
        # Still the socket systemd made: the new arbiter serves on it alone.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = client.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200 ")
        os.kill(new, signal.SIGTERM)
        _wait_for_notification(notify, lambda m: "STOPPING=1" in m, seen)
        deadline = time.monotonic() + 20
        while _alive(new):
            assert time.monotonic() < deadline, "the new arbiter did not exit"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old, signal.SIGKILL)  # the new arbiter and its workers share the group
        if proc.poll() is None:
            proc.wait(5)
        notify.close()
