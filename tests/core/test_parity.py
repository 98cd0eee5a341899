"""Every gunicorn setting is supported, warned about or refused, by one rule, from every source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.cli import build_argparser
from corral.parity import GUNICORN_SETTINGS, HOOKS, TREATMENT, kind_of, reference
from corral.plugins import make_plugin_manager
from corral.reference import collect_settings
from corral.settings import default_registry
from corral.testing import CorralProcess

ROOT = Path(__file__).resolve().parents[2]
APP = "corral.testing.apps:app"


def corral(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CORRAL_CMD_ARGS", "GUNICORN_CMD_ARGS")}
    return subprocess.run([sys.executable, "-m", "corral", *args], capture_output=True, text=True,
                          timeout=30, cwd=cwd, env={**clean, **(env or {})})


def test_the_table_is_gunicorns_own_list() -> None:
    gconfig = pytest.importorskip("gunicorn.config")
    theirs = {s.name: s for s in gconfig.KNOWN_SETTINGS}
    assert list(theirs) == list(GUNICORN_SETTINGS), "gunicorn's settings changed: update corral/parity.py"
    for name, setting in theirs.items():
        ours = GUNICORN_SETTINGS[name]
        assert ours.flags == tuple(setting.cli or ()), name
        assert ours.takes_value == (setting.action not in ("store_true", "store_const")), name


def test_every_setting_has_a_treatment_that_holds() -> None:
    # corral's settings and its built-in plugins' (statsd_host, control_socket).
    pm, _, _ = make_plugin_manager(disabled=[])
    registry = collect_settings(pm, default_registry())
    flags = set(build_argparser(registry)._option_string_actions)
    for name, gunicorn in GUNICORN_SETTINGS.items():
        kind, text = kind_of(name)
        if kind == "same":
            assert name in registry, f"{name} is said to be supported but corral has no such setting"
        elif kind == "renamed":
            assert text in registry, name
        elif kind == "hook":
            assert name in HOOKS
        elif kind == "plugin":
            # A plugin distribution's setting (corral[asgi]): there once it is installed.
            assert text.startswith("corral[") and name in registry, name
        else:
            assert text, f"{name}: an {kind} setting must say what corral does instead"
            assert name not in registry, f"{name} is a corral setting now: drop it from TREATMENT"
        # Every gunicorn flag parses: as corral's own, or as gunicorn's, judged by the table.
        assert set(gunicorn.flags) <= flags, name
    assert set(TREATMENT) <= set(GUNICORN_SETTINGS)


def test_the_reference_page_is_current() -> None:
    committed = (ROOT / "docs" / "gunicorn-settings.md").read_text()
    assert reference() == committed, "docs/gunicorn-settings.md is stale: run python -m corral.parity"
    assert committed.count("\n| `") == len(GUNICORN_SETTINGS)


def test_an_unsupported_flag_warns_and_leaves_the_app_module_alone() -> None:
    # It used to read "unrecognized arguments: --statsd-host corral.testing.apps:app".
    res = corral("--log-syslog-to", "udp://logs.example:514", "--spew", "--check-config", APP)
    assert res.returncode == 0, res.stderr
    assert "'syslog_addr' (--log-syslog-to) is a gunicorn setting corral does not support" in res.stderr
    assert "'spew' (--spew) is a gunicorn setting" in res.stderr and "ignored" in res.stderr


@pytest.mark.parametrize("args, says", [
    (["--paste", "app.ini"], "PasteDeploy apps are not supported"),
    (["--dirty-app", "tasks:app"], "dirty arbiters are not in corral"),
    (["--protocol", "uwsgi"], "corral speaks HTTP/1.1 only"),
])
def test_a_setting_the_app_depends_on_is_refused_with_what_to_do(args: list[str], says: str) -> None:
    res = corral(*args, "--check-config", APP)
    assert res.returncode == 2 and says in res.stderr, res.stderr
    assert "is a gunicorn setting corral does not support" in res.stderr


def test_one_rule_for_a_config_file_toml_included(tmp_path: Path) -> None:
    py = tmp_path / "g.py"
    py.write_text("syslog_addr = 'udp://logs.example:514'\nprotocol = 'http'\nroot_path = '/api'\n"
                  "dirty_workers = 2\ndef on_dirty_starting(arbiter):\n    pass\n")
    res = corral("-c", str(py), "--print-config", APP)
    assert res.returncode == 0, res.stderr
    assert "'syslog_addr' (--log-syslog-to) is a gunicorn setting" in res.stderr
    assert "'dirty_workers'" in res.stderr and "'on_dirty_starting'" in res.stderr  # a hook too
    assert "protocol" not in res.stderr  # gunicorn's default: nothing to say
    assert "script_name" in res.stdout and "'/api'" in res.stdout  # root_path, renamed
    toml = tmp_path / "g.toml"
    toml.write_text('paste = "app.ini"\n')
    res = corral("-c", str(toml), "--check-config", APP)
    assert res.returncode == 2 and "PasteDeploy apps are not supported" in res.stderr


def test_pythonpath_puts_directories_first(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "elsewhere.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'from lib']\n")
    with CorralProcess("elsewhere:app", ["--pythonpath", str(lib)], workdir=tmp_path) as server:
        assert server.request()[2] == b"from lib"


def test_gunicorn_cmd_args_are_read_when_corral_has_none(tmp_path: Path) -> None:
    res = corral("--print-config", APP, env={"GUNICORN_CMD_ARGS": "--workers 3 --log-syslog-to udp://x:1"})
    assert res.returncode == 0, res.stderr
    assert "reading $GUNICORN_CMD_ARGS" in res.stderr
    assert "workers" in res.stdout and "3  # $GUNICORN_CMD_ARGS" in res.stdout
    assert "$GUNICORN_CMD_ARGS: 'syslog_addr'" in res.stderr
    res = corral("--print-config", APP, env={"GUNICORN_CMD_ARGS": "--workers 3", "CORRAL_CMD_ARGS": ""})
    assert "3  # $GUNICORN_CMD_ARGS" not in res.stdout  # corral's own variable wins, even empty


def test_a_gunicorn_deployment_moves_over_unchanged(tmp_path: Path) -> None:
    """A real gunicorn.conf.py, found as gunicorn finds it, with its hooks as plain callables."""
    log = tmp_path / "hooks.log"
    (tmp_path / "gunicorn.conf.py").write_text(f'''
import multiprocessing

_LOG = {str(log)!r}

def _note(*words):
    with open(_LOG, "a") as f:
        f.write(" ".join(str(w) for w in words) + "\\n")

workers = 2
worker_class = "gthread"
threads = 4
timeout = 30
graceful_timeout = 20
keepalive = 5
max_requests = 1000
max_requests_jitter = 50
backlog = 512
limit_request_line = 4094
forwarded_allow_ips = "127.0.0.1"
secure_scheme_headers = {{"X-FORWARDED-PROTO": "https"}}
accesslog = "-"
errorlog = "-"
loglevel = "info"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s'
proc_name = "shop"
raw_env = ["SHOP_MODE=prod"]
syslog_addr = "udp://logs.example:514"   # gunicorn-only: warned, never silently dropped
statsd_host = "localhost:8125"   # pushed by corral's metrics plugin

def on_starting(server):
    _note("on_starting")

def when_ready(server):
    _note("when_ready", server.num_workers, len(server.LISTENERS), server.proc_name,
          server.cfg.worker_class_str, len(server.cfg.address), server.app.cfg.workers)

def post_fork(server, worker):
    _note("post_fork", worker.pid)

def post_worker_init(worker):
    worker.tmp.notify()
    _note("post_worker_init", worker.timeout, len(worker.sockets), callable(worker.app.wsgi()))

def pre_request(worker, req):
    _note("pre_request", req.method, req.path, req.uri, req.scheme, req.remote_addr[0])

def post_request(worker, req, environ, resp):
    _note("post_request", req.path, resp.status_code, resp.sent, resp.response_length)

def worker_exit(server, worker):
    _note("worker_exit", worker.pid)
''')
    (tmp_path / "shop.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [os.environ['SHOP_MODE'].encode(), b' ', environ['wsgi.url_scheme'].encode()]\n")
    with CorralProcess("shop:app", workdir=tmp_path, workers=None) as server:
        server.wait_for_workers(2)
        status, _, body = server.request("GET", "/cart?x=1", headers={"X-Forwarded-Proto": "https"})
        assert (status, body) == (200, b"prod https")
        assert server.stop() == 0  # a graceful stop: every hook has run when it returns
        text = server.log()
        assert "reading ./gunicorn.conf.py, as gunicorn would" in text
        assert "'syslog_addr' (--log-syslog-to) is a gunicorn setting corral does not support" in text
    notes = log.read_text().splitlines()
    # gunicorn's attribute names on every object a hook gets (req.uri, resp.sent, ...).
    assert notes[0] == "on_starting" and "when_ready 2 1 shop gthread 1 2" in notes
    assert sum(n.startswith("post_fork ") for n in notes) == 2
    assert notes.count("post_worker_init 30.0 1 True") == 2
    assert "pre_request GET /cart /cart?x=1 https 127.0.0.1" in notes
    assert "post_request /cart 200 10 None" in notes
    assert sum(n.startswith("worker_exit ") for n in notes) == 2


def _field_line(length: int) -> bytes:
    return b"X-Pad: " + b"a" * (length - len(b"X-Pad: "))


def test_limits_mean_what_they_mean_in_gunicorn(tmp_path: Path) -> None:
    # gunicorn counts a field line with its CRLF: at a limit of 98, 96 bytes
    # pass and 97 do not; at the default 8190, an 8192-byte line is refused.
    with CorralProcess(APP, ["--limit-request-field-size", "98"], workdir=tmp_path) as server:
        for length, status in ((96, b" 200 "), (97, b" 431 ")):
            reply = server.raw(b"GET / HTTP/1.1\r\nHost: x\r\n" + _field_line(length)
                               + b"\r\nConnection: close\r\n\r\n")
            assert status in reply[:20], (length, reply[:40])
    with CorralProcess(APP, workdir=tmp_path) as server:
        reply = server.raw(b"GET / HTTP/1.1\r\nHost: x\r\n" + _field_line(8192) + b"\r\nConnection: close\r\n\r\n")
        assert b" 431 " in reply[:20]
        reply = server.raw(b"GET / HTTP/1.1\r\nHost: x\r\n" + _field_line(8188) + b"\r\nConnection: close\r\n\r\n")
        assert b" 200 " in reply[:20]
    # 0: no limit on the request line (up to 1 MiB), 32768 fields, an 8190-byte field line.
    args = ["--limit-request-line", "0", "--limit-request-fields", "0", "--limit-request-field-size", "0"]
    with CorralProcess(APP, args, workdir=tmp_path) as server:
        long_target = b"/?q=" + b"a" * 20000
        reply = server.raw(b"GET " + long_target + b" HTTP/1.1\r\nHost: x\r\n"
                           + b"".join(b"X-F%d: 1\r\n" % i for i in range(500)) + b"Connection: close\r\n\r\n")
        assert b" 200 " in reply[:20]


@pytest.mark.parametrize("args, value", [
    (["--proxy-protocol", "v2", APP], "'v2'"),      # gunicorn's optional-value form
    (["--proxy-protocol=v1", APP], "'v1'"),
    (["--proxy-protocol", APP], "'auto'"),           # bare: the APP_MODULE is not taken for a value
    ([APP, "--proxy-protocol"], "'auto'"),
    (["--proxy-protocol-version", "v1", APP], "'v1'"),
])
def test_proxy_protocol_takes_gunicorns_forms(args: list[str], value: str) -> None:
    res = corral("--print-config", *args)
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("proxy_protocol "))
    assert f"= {value}" in line


@pytest.mark.parametrize("worker_class, says", [
    ("corral.testing.apps:Missing", "module 'corral.testing.apps' "),
    ("no_such_package.workers:Worker", "cannot find module 'no_such_package.workers'"),
])
def test_a_worker_class_path_that_cannot_work_is_refused_before_anything_binds(
        worker_class: str, says: str) -> None:
    res = corral("-k", worker_class, "-b", "127.0.0.1:0", APP)  # serving, not only --check-config
    assert res.returncode == 2, res.stderr
    assert says in res.stderr and "Traceback" not in res.stderr and "Listening" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_gunicorns_own_class_paths_run_corrals_classes(tmp_path: Path) -> None:
    res = corral("-k", "gunicorn.workers.gthread.ThreadWorker", "--check-config", APP)
    assert res.returncode == 0, res.stderr
    assert "is gunicorn's; running corral's 'gthread'" in res.stderr
    with CorralProcess(APP, ["-k", "gunicorn.workers.sync.SyncWorker"], workdir=tmp_path) as server:
        assert server.request()[0] == 200


def test_gunicorn_value_forms_umask_and_auto_workers() -> None:
    res = corral("--print-config", "-m", "18", "-w", "auto", APP)
    assert res.returncode == 0, res.stderr
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.strip()}
    assert "= 18 " in lines["umask"]  # decimal 18 (0o22), as gunicorn reads it
    assert "(auto)" in lines["workers"] and "'auto'" not in lines["workers"]
    res = corral("--print-config", "-m", "027", APP)
    assert "= 23 " in next(ln for ln in res.stdout.splitlines() if ln.startswith("umask"))  # octal


def test_the_log_lines_and_hooks_operators_rely_on(tmp_path: Path) -> None:
    log = tmp_path / "n.log"
    conf = tmp_path / "c.py"
    conf.write_text(f"def nworkers_changed(server, new_value, old_value):\n"
                    f"    open({str(log)!r}, 'a').write(f'{{new_value}} {{old_value}}\\n')\n"
                    "accesslog = '-'\n")
    with CorralProcess(APP, ["-c", str(conf), "-w", "2"], workdir=tmp_path, workers=None) as server:
        pids = server.wait_for_workers(2)
        assert server.request("HEAD", "/")[0] == 200
        server.wait_for_log(r'"HEAD / HTTP/1.1" 200 0 ')  # %(b)s: 0, as gunicorn logs a HEAD
        assert server.stop() == 0
        text = server.log()
    for pid in pids:
        assert f"Booting worker with pid: {pid}" in text and f"Worker exiting (pid: {pid})" in text
    assert log.read_text().splitlines()[0] == "2 None"  # at start, as gunicorn calls it


def test_a_request_without_host_is_served_only_when_permitted(tmp_path: Path) -> None:
    request = b"GET /environ HTTP/1.1\r\nConnection: close\r\n\r\n"
    with CorralProcess(APP, workdir=tmp_path) as server:
        assert b" 400 " in server.raw(request)[:20]  # RFC 9112 section 3.2
    with CorralProcess(APP, ["--permit-missing-host"], workdir=tmp_path) as server:
        head, _, body = server.raw(request).partition(b"\r\n\r\n")
        assert b" 200 " in head[:20]
        assert json.loads(body)["SERVER_NAME"] == "127.0.0.1"  # from the listener


_READ_APP = '''
import os, tempfile

class Shouting:
    """A real file whose read() is not its bytes: which one went out says which path sent it."""
    def __init__(self, data):
        self.f = tempfile.TemporaryFile()
        self.f.write(data)
        self.f.seek(0)
    def fileno(self):
        return self.f.fileno()
    def read(self, size=-1):
        return self.f.read(size).upper()
    def close(self):
        self.f.close()

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](Shouting(b"quiet " * 20000), 8192)
'''


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent", "tornado"])
def test_no_sendfile_reads_and_sends_the_file(tmp_path: Path, worker_class: str) -> None:
    (tmp_path / "readapp.py").write_text(_READ_APP)
    args = ["-k", worker_class, "--chdir", str(tmp_path)]
    for extra, want in (([], b"quiet " * 20000), (["--no-sendfile"], b"QUIET " * 20000)):
        with CorralProcess("readapp:app", [*args, *extra], workdir=tmp_path) as server:
            status, _, body = server.request()
            assert status == 200
            assert body == want, (extra, body[:30])
