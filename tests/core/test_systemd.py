"""systemd integration: socket activation (LISTEN_FDS) and sd_notify READY."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

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
