"""Zero-downtime reloads (HUP) and upgrades (USR2) under continuous load."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from corral.testing import CorralProcess
from corral.testing.load import LoadGenerator

APP = "corral.testing.apps:app"


def _wait(predicate, timeout: float = 15.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_ten_hups_under_load_lose_nothing(tmp_path: Path) -> None:
    with CorralProcess(APP, [], workdir=tmp_path, workers=2) as server:
        pids = set(server.wait_for_workers(2))
        with LoadGenerator("127.0.0.1", server.port, concurrency=4, keepalive=False) as load:
            load.wait_for_requests(20)
            for i in range(10):
                server.send_signal(signal.SIGHUP)
                server.wait_for_log("Reloading: replacing workers", count=i + 1)
                time.sleep(1)  # the issue asks for HUPs one second apart
            new = server.wait_for_workers(2, exclude=list(pids))
            load.mark()
            load.wait_for_requests(40)
            result = load.stop()
        assert result.failures == []
        assert result.ok > 100
        answered = {int(b) for b in result.bodies_after_mark}
        assert answered <= set(new), (answered, new)


def test_usr2_upgrade_under_load_then_winch_and_term(tmp_path: Path) -> None:
    pidfile = tmp_path / "corral.pid"
    server = CorralProcess(APP, ["-p", str(pidfile)], workdir=tmp_path, workers=2).start()
    try:
        old_master = server.pid
        old_workers = set(server.wait_for_workers(2))
        assert pidfile.read_text().strip() == str(old_master)
        with LoadGenerator("127.0.0.1", server.port, concurrency=4, keepalive=False) as load:
            load.wait_for_requests(20)
            server.send_signal(signal.SIGUSR2)
            server.wait_for_log(r"Inherited 1 listener\(s\)")
            server.wait_for_log("Ready: ", count=2)
            new_pidfile = Path(f"{pidfile}.2")
            _wait(new_pidfile.exists, what="PIDFILE.2")
            new_master = int(new_pidfile.read_text())
            assert new_master != old_master
            load.wait_for_requests(20)
            os.kill(old_master, signal.SIGWINCH)
            _wait(lambda: not (set(server.worker_pids()) & old_workers), what="old workers to stop")
            load.wait_for_requests(20)
            os.kill(old_master, signal.SIGTERM)
            assert server.wait_exit(20) == 0
            _wait(lambda: pidfile.exists() and pidfile.read_text().strip() == str(new_master),
                  what="the new arbiter to take over the pid file")
            load.mark()
            load.wait_for_requests(20)
            result = load.stop()
        assert result.failures == []
        answered = {int(b) for b in result.bodies_after_mark}
        assert not answered & old_workers
        os.kill(new_master, signal.SIGTERM)
        _wait(lambda: not pidfile.exists(), what="the new arbiter to exit and remove its pid file")
    finally:
        server.kill()


def test_failed_upgrade_leaves_old_arbiter_serving(tmp_path: Path) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 1\n")
    with CorralProcess(APP, ["-c", str(conf)], workdir=tmp_path, workers=None) as server:
        (worker,) = server.wait_for_workers(1)
        conf.write_text("workers = (\n")  # the new arbiter will refuse to start
        server.send_signal(signal.SIGUSR2)
        server.wait_for_log("The new arbiter .* exited with status 2; carrying on")
        assert server.request()[0] == 200
        assert server.worker_pids() == [worker]


def test_winch_stops_workers_and_hup_restores(tmp_path: Path) -> None:
    with CorralProcess(APP, [], workdir=tmp_path, workers=2) as server:
        server.wait_for_workers(2)
        server.send_signal(signal.SIGWINCH)
        server.wait_for_workers(0)
        server.send_signal(signal.SIGHUP)
        server.wait_for_workers(2)
        assert server.request()[0] == 200
