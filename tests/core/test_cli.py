"""The corral command: usage errors, help, config sources, app loading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.testing import CorralProcess

CORRAL = [sys.executable, "-m", "corral"]


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_unknown_worker_class_lists_installed_and_exits_2() -> None:
    # With the gevent plugin disabled, the message says where gevent comes from.
    res = run("-k", "nosuchworker", "corral.testing.apps:app", env={"CORRAL_DISABLE_PLUGINS": "gevent"})
    assert res.returncode == 2
    assert "unknown worker class 'nosuchworker'" in res.stderr
    assert "Installed worker classes: " in res.stderr and "sync" in res.stderr
    assert "gevent: pip install corral[gevent]" in res.stderr


def test_help_lists_every_option_with_default() -> None:
    from corral.settings import default_registry

    res = run("--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for setting in default_registry():
        for flag in setting.flags:
            assert flag in text, flag
    assert text.count("(default:") >= sum(1 for s in default_registry() if s.flags)


def test_version() -> None:
    from corral import __version__

    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"corral {__version__}"


def test_missing_app_module_names_the_fix() -> None:
    res = run()
    assert res.returncode == 2
    assert "no APP_MODULE given" in res.stderr


@pytest.mark.parametrize("args,needle", [
    (["-w", "zero"], "setting workers (--workers): expected a whole number"),
    (["-w", "+5"], "expected a whole number"),
    (["-b", "localhost:http"], "port must be a number"),
    (["-b", "::1:8000"], "put IPv6 addresses in brackets"),
    (["--header-map", "maybe"], "expected one of drop, refuse, dangerous"),
    (["--timeout", "-1"], "expected a number of seconds"),
])
def test_bad_values_name_setting_and_expectation(args: list[str], needle: str) -> None:
    res = run(*args, "corral.testing.apps:app")
    assert res.returncode == 2
    assert needle in res.stderr


def test_unknown_flag_exits_2() -> None:
    res = run("--no-such-flag", "corral.testing.apps:app")
    assert res.returncode == 2 and "unrecognized arguments: --no-such-flag" in res.stderr


@pytest.mark.parametrize("flag,suggestion", [
    ("--graceful-timout", "--graceful-timeout"),
    ("--wokers=3", "--workers"),
    ("--keepalive", "--keep-alive"),
])
def test_misspelled_flag_suggests_the_right_one(flag: str, suggestion: str) -> None:
    res = run(flag, *([] if "=" in flag else ["5"]), "corral.testing.apps:app")
    assert res.returncode == 2
    assert f"unrecognized arguments: {flag}" in res.stderr
    assert f"did you mean {suggestion}?" in res.stderr


def test_config_file_typo_suggests_setting(tmp_path: Path) -> None:
    conf = tmp_path / "c.py"
    conf.write_text("worker = 3\n")
    res = run("-c", str(conf), "corral.testing.apps:app")
    assert res.returncode == 2
    assert "unknown setting 'worker'; did you mean 'workers'?" in res.stderr


def test_config_file_syntax_error_names_line(tmp_path: Path) -> None:
    conf = tmp_path / "c.py"
    conf.write_text("workers = 2\nbind = [\n")
    res = run("-c", str(conf), "corral.testing.apps:app")
    assert res.returncode == 2
    assert f"config file {conf}, line" in res.stderr and "syntax error" in res.stderr


def test_config_sources_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "corral.conf.py"
    conf.write_text("import multiprocessing\nworkers = 3\ntimeout = 11\nkeepalive = 7\nhelper_value = 1\n")
    res = run("--print-config", "corral.testing.apps:app", cwd=tmp_path,
              env={"CORRAL_CMD_ARGS": "--timeout 12 --keep-alive 8", "WEB_CONCURRENCY": "5"})
    assert res.returncode == 0, res.stderr
    lines = {line.split("=")[0].strip(): line for line in res.stdout.splitlines()}
    assert "= 3  # config file corral.conf.py" in lines["workers"]  # file beats WEB_CONCURRENCY
    assert "= 12.0  # $CORRAL_CMD_ARGS" in lines["timeout"]  # env args beat the file
    res = run("--print-config", "--keep-alive", "9", "corral.testing.apps:app", cwd=tmp_path,
              env={"CORRAL_CMD_ARGS": "--keep-alive 8"})
    assert "= 9.0  # command line" in res.stdout  # the command line beats everything
    assert "'helper_value' is not a corral setting; ignored" in res.stderr


def test_web_concurrency_and_port(tmp_path: Path) -> None:
    res = run("--print-config", "corral.testing.apps:app", cwd=tmp_path,
              env={"WEB_CONCURRENCY": "5", "PORT": "9123"})
    assert "= 5  # environment WEB_CONCURRENCY" in res.stdout
    assert "['0.0.0.0:9123']  # environment PORT" in res.stdout


def test_toml_config(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.corral]\nworkers = 4\nworker-class = 'sync'\n")
    res = run("-c", "pyproject.toml", "--print-config", "corral.testing.apps:app", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "= 4  # config file pyproject.toml" in res.stdout
    (tmp_path / "bad.toml").write_text("wrokers = 4\n")
    res = run("-c", "bad.toml", "corral.testing.apps:app", cwd=tmp_path)
    assert res.returncode == 2 and "did you mean 'workers'?" in res.stderr


def test_check_config(tmp_path: Path) -> None:
    assert run("--check-config", "corral.testing.apps:app").returncode == 0
    res = run("--check-config", "corral.testing.apps:nope")
    assert res.returncode == 1 and "has no attribute 'nope'" in res.stderr


def test_broken_app_exits_without_respawn_loop(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise ImportError('this app is broken on purpose')\n")
    server = CorralProcess("broken:app", ["--chdir", str(tmp_path)], workdir=tmp_path, workers=2)
    server.start(wait_ready=False)
    try:
        code = server.wait_exit(timeout=20)
    finally:
        server.kill()
    log = server.log()
    assert code == 4
    assert "this app is broken on purpose" in log and "Traceback" in log
    assert "App failed to load" in log
    # Stopped at the first failure, no respawns beyond the first two workers.
    assert log.count("Failed to load the application") <= 2


def test_missing_app_module_is_reported(tmp_path: Path) -> None:
    server = CorralProcess("nosuchmodule:app", [], workdir=tmp_path)
    server.start(wait_ready=False)
    try:
        assert server.wait_exit(timeout=20) == 4
    finally:
        server.kill()
    assert "no module named 'nosuchmodule'" in server.log()


def test_app_factory_with_arguments(tmp_path: Path) -> None:
    (tmp_path / "factory.py").write_text(
        "def create(greeting='hi'):\n"
        "    def app(environ, start_response):\n"
        "        start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "        return [greeting.encode()]\n"
        "    return app\n"
    )
    with CorralProcess("factory:create('hello there')", ["--chdir", str(tmp_path)],
                       workdir=tmp_path) as server:
        assert server.request()[2] == b"hello there"


def test_worker_class_by_dotted_path(tmp_path: Path) -> None:
    with CorralProcess("corral.testing.apps:app", [], workdir=tmp_path,
                       worker_class="corral_sync.worker:SyncWorker") as server:
        assert server.request()[0] == 200


def test_unix_socket_and_ipv6_binds(tmp_path: Path) -> None:
    import socket as _socket

    path = tmp_path / "c.sock"
    binds = [f"unix:{path}", "127.0.0.1:0"]
    if _socket.has_ipv6:
        binds.append("[::1]:0")
    with CorralProcess("corral.testing.apps:app", [], workdir=tmp_path, bind=binds) as server:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        with _socket.socket(_socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200 ")
        for addr in server.addresses[1:]:
            host, _, port = addr.rpartition(":")
            with _socket.create_connection((host.strip("[]"), int(port)), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 200 ")
        server.stop()
    assert not path.exists()
