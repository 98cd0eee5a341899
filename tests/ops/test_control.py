"""The control socket and `corral ctl`, against real arbiters over the real unix socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from corral.testing import CorralProcess
from corral.testing.load import KeepAliveMix
from corral.testing.process import free_ports
from corral_ops.ctl import request

APP = "corral.testing.apps:app"


def ctl(server: CorralProcess, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", "ctl", "--socket", path or server.control_path,
                           *args], capture_output=True, text=True, timeout=30)


def ask(path: str, message: Any) -> dict[str, Any]:
    """One request on the socket, as a script would send it (raw bytes for the malformed ones)."""
    if isinstance(message, dict):
        return request(path, message)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(message + b"\n")
        result: dict[str, Any] = json.loads(sock.makefile("rb").readline())
    return result


def status(server: CorralProcess) -> dict[str, Any]:
    answer = ask(server.control_path, {"command": "status"})
    assert answer["ok"], answer
    result: dict[str, Any] = answer["result"]
    return result


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def serving(server: CorralProcess, pool: str) -> list[int]:
    pools = {p["name"]: p for p in status(server)["pools"]}
    return [w["pid"] for w in pools[pool]["workers"] if w["state"] == "serving"]


@pytest.fixture
def three_pools(tmp_path: Path) -> Any:
    ports = free_ports(3)
    args = [f"--pool=web:gthread:2@127.0.0.1:{ports[0]}", f"--pool=api:sync:1@127.0.0.1:{ports[1]}",
            f"--pool=bg:gthread:1@127.0.0.1:{ports[2]}"]
    with CorralProcess(APP, args, workdir=tmp_path, workers=None, bind=()) as server:
        server.wait_for_workers(4)
        wait_until(lambda: status(server)["arbiter"]["ready"])
        yield server, ports


def test_status_counts_every_request_per_worker_and_pool(three_pools: Any) -> None:
    server, ports = three_pools
    with KeepAliveMix("127.0.0.1", ports[0], connections=4) as mix:
        mix.wait_for_requests(300)
    result = mix.result
    assert not result.failures and result.ok >= 300
    # A worker counts a request just after its last byte went out: a moment
    # after the client may have read it.
    wait_until(lambda: {p["name"]: p for p in status(server)["pools"]}["web"]["requests"] == result.ok)
    res = ctl(server, "--json", "status")
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)["result"]
    assert answer["arbiter"]["pid"] == server.pid and answer["arbiter"]["ready"] is True
    pools = {p["name"]: p for p in answer["pools"]}
    assert set(pools) == {"web", "api", "bg"}
    web = pools["web"]
    assert web["class"] == "gthread" and web["size"] == 2 and len(web["workers"]) == 2
    # Every response the client got, counted once, split over the two workers.
    assert web["requests"] == result.ok
    assert web["responses"]["2xx"] == result.ok and web["in_flight"] == 0
    assert sum(w["requests"] for w in web["workers"]) == result.ok
    for w in web["workers"]:
        assert w["state"] == "serving" and w["rss"] > 1 << 20
        assert 0 <= w["last_heartbeat"] < 5 and w["uptime"] > 0
    assert pools["api"]["requests"] == 0 and pools["bg"]["requests"] == 0
    # The text form says the same.
    text = ctl(server, "status").stdout
    assert "pool web: gthread x 2" in text and f"requests {result.ok}" in text


def test_workers_add_remove_and_kill_act_on_one_pool(three_pools: Any) -> None:
    server, _ = three_pools
    res = ctl(server, "workers", "add", "bg", "2")
    assert res.returncode == 0 and "pool bg: 1 -> 3 workers" in res.stdout, res.stderr
    wait_until(lambda: len(serving(server, "bg")) == 3)
    assert len(serving(server, "web")) == 2 and len(serving(server, "api")) == 1
    res = ctl(server, "workers", "remove", "bg", "1")
    assert res.returncode == 0, res.stderr
    wait_until(lambda: len(serving(server, "bg")) == 2 and len(server.worker_pids()) == 5)
    victim = serving(server, "web")[0]
    res = ctl(server, "worker", "kill", str(victim))
    assert res.returncode == 0 and "retiring" in res.stdout, res.stderr
    server.wait_for_log(f"Worker exiting \\(pid: {victim}\\)")
    wait_until(lambda: len(serving(server, "web")) == 2 and victim not in serving(server, "web"))


def test_bad_commands_get_a_clear_error_and_change_nothing(three_pools: Any) -> None:
    server, _ = three_pools
    before = {p["name"]: (p["size"], [w["pid"] for w in p["workers"]]) for p in status(server)["pools"]}
    path = server.control_path
    cases = [
        (b"this is not json", "not a JSON object"),
        ({"verb": "status"}, 'with a "command"'),
        ({"command": "explode"}, "unknown command 'explode'"),
        ({"command": "workers.add", "pool": "nope", "count": 1}, "no pool named 'nope'; pools: web, api, bg"),
        ({"command": "workers.add", "count": 1}, "name a pool: web, api, bg"),
        ({"command": "workers.add", "pool": "web", "count": -2}, "count must be a whole number"),
        ({"command": "workers.add", "pool": "web", "count": "3"}, "count must be a whole number"),
        ({"command": "workers.remove", "pool": "api", "count": 1}, "keeps at least 1"),
        ({"command": "worker.kill", "pid": 1}, "no worker with pid 1"),
        ({"command": "shutdown", "graceful": "yes"}, "graceful must be true or false"),
    ]
    for message, says in cases:
        answer = ask(path, message)
        assert answer["ok"] is False and says in answer["error"], (message, answer)
    res = ctl(server, "workers", "remove", "api", "5")
    assert res.returncode == 1 and "remove at most 0" in res.stderr
    res = ctl(server, "workers", "grow", "api")  # not a verb: the CLI says so
    assert res.returncode == 2 and "invalid choice" in res.stderr
    after = {p["name"]: (p["size"], [w["pid"] for w in p["workers"]]) for p in status(server)["pools"]}
    assert after == before
    assert server.proc is not None and server.proc.poll() is None


def test_config_listeners_reload_and_reopen(tmp_path: Path) -> None:
    conf = tmp_path / "corral.conf.py"
    conf.write_text("workers = 2\ntimeout = 31\n")
    with CorralProcess(APP, ["-c", str(conf)], workdir=tmp_path, workers=None) as server:
        old = set(server.wait_for_workers(2))
        config = json.loads(ctl(server, "--json", "config").stdout)["result"]
        assert config["main"]["timeout"] == 31 and config["main"]["workers"] == 2
        listeners = json.loads(ctl(server, "--json", "listeners").stdout)["result"]
        assert [lst["name"] for lst in listeners] == [f"127.0.0.1:{server.port}"]
        assert listeners[0]["pools"] == ["main"]
        conf.write_text("workers = 3\ntimeout = 32\n")
        res = ctl(server, "reload")
        assert res.returncode == 0 and "reloading (SIGHUP)" in res.stdout
        new = server.wait_for_workers(3, exclude=list(old))
        assert len(new) == 3
        wait_until(lambda: json.loads(ctl(server, "--json", "config").stdout)["result"]["main"]["timeout"] == 32)
        assert status(server)["arbiter"]["generation"] == 1
        # A broken config: the reload is refused by the arbiter, which keeps serving.
        conf.write_text("workers = 'many'\n")
        assert ctl(server, "reload").returncode == 0
        server.wait_for_log("Reload failed, still running on the previous configuration")
        assert sorted(server.worker_pids()) == sorted(new)
        os.rename(server.log_path, str(server.log_path) + ".1")
        assert ctl(server, "reopen").returncode == 0
        wait_until(lambda: server.log_path.exists())


def test_shutdown_is_graceful_by_default_and_finishes_what_is_in_flight(tmp_path: Path) -> None:
    with CorralProcess(APP, ["-k", "gthread", "--threads", "4"], workdir=tmp_path) as server:
        with KeepAliveMix("127.0.0.1", server.port, connections=2) as mix:
            mix.wait_for_requests(50)
            slow = mix.slow(2, 1.5, str(tmp_path))
            res = ctl(server, "shutdown")
            assert res.returncode == 0 and "stopping gracefully (SIGTERM)" in res.stdout
            for t in slow:
                t.join(20)
        assert server.wait_exit() == 0
        assert mix.result.slow_ok == 2 and not mix.result.failures, mix.result.failures
        assert not os.path.exists(server.control_path)  # the arbiter removed its socket


def test_shutdown_now(tmp_path: Path) -> None:
    with CorralProcess(APP, workdir=tmp_path) as server:
        res = ctl(server, "shutdown", "--now")
        assert res.returncode == 0 and "SIGQUIT" in res.stdout
        assert server.wait_exit() == 0
        server.wait_for_log("Handling signal: quit")


def test_the_socket_is_its_owners_only(tmp_path: Path) -> None:
    with CorralProcess(APP, workdir=tmp_path) as server:
        path = server.control_path
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600
        if os.geteuid() != 0:
            pytest.skip("needs root to try the socket as another user")
        # Let another user reach the directory, so that only the socket's own mode stands in the way.
        os.chmod(os.path.dirname(path), 0o755)
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                os.setgid(65534)
                os.setuid(65534)  # nobody
                try:
                    ask(path, {"command": "status"})
                    code = 0
                except PermissionError:
                    code = 1
            finally:
                os._exit(code)
        _, code = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(code) == 1, "another user could use the control socket"
        assert ask(path, {"command": "status"})["ok"]  # its owner still can


def test_a_second_server_leaves_a_socket_in_use_alone(tmp_path: Path) -> None:
    shared = str(tmp_path / "shared.ctl")
    with CorralProcess(APP, ["--control-socket", shared], workdir=tmp_path) as first:
        with CorralProcess(APP, ["--control-socket", shared], workdir=tmp_path) as second:
            second.wait_for_log("Control socket .* is in use by another server")
            assert ask(shared, {"command": "status"})["result"]["arbiter"]["pid"] == first.pid
            assert second.proc is not None and second.proc.poll() is None
        assert ask(shared, {"command": "status"})["result"]["arbiter"]["pid"] == first.pid


def test_no_control_socket(tmp_path: Path) -> None:
    with CorralProcess(APP, ["--no-control-socket"], workdir=tmp_path) as server:
        assert not os.path.exists(server.control_path)
        res = ctl(server, "status")
        assert res.returncode == 2 and "no answer on" in res.stderr


def test_the_socket_follows_a_usr2_upgrade(tmp_path: Path) -> None:
    with CorralProcess(APP, ["-w", "2"], workdir=tmp_path, workers=None) as server:
        old_workers = set(server.wait_for_workers(2))
        with KeepAliveMix("127.0.0.1", server.port, connections=3) as mix:
            mix.wait_for_requests(100)
            server.send_signal(signal.SIGUSR2)
            # The new arbiter owns the socket as soon as it starts.
            wait_until(lambda: status(server)["arbiter"]["pid"] != server.pid)
            new_pid = status(server)["arbiter"]["pid"]
            wait_until(lambda: status(server)["arbiter"]["ready"])
            mix.wait_for_requests(50)
            # The old arbiter goes, as an operator would send it: its socket file is not removed.
            server.send_signal(signal.SIGTERM)
            assert server.wait_exit() == 0
            mix.wait_for_requests(50)
        assert not mix.result.failures, mix.result.failures[:3]
        answer = status(server)
        assert answer["arbiter"]["pid"] == new_pid
        workers = [w["pid"] for p in answer["pools"] for w in p["workers"]]
        assert len(workers) == 2 and not set(workers) & old_workers
        assert ask(server.control_path, {"command": "shutdown"})["ok"]
        wait_until(lambda: not os.path.exists(server.control_path))


def test_status_without_worker_stats_says_so(tmp_path: Path) -> None:
    with CorralProcess(APP, ["--no-worker-stats", "-w", "2"], workdir=tmp_path, workers=None) as server:
        server.wait_for_workers(2)
        assert server.request()[0] == 200
        wait_until(lambda: len(serving(server, "main")) == 2)
        (pool,) = status(server)["pools"]
        assert pool["requests"] is None and all(w["requests"] is None for w in pool["workers"])
        res = ctl(server, "status")
        assert res.returncode == 0 and "requests -," in res.stdout
