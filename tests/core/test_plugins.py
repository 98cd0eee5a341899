"""Plugin discovery and tooling: listing, disabling, tracing, API checks, hook docs."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from corral import PLUGIN_API, hookimpl, hookspecs
from corral.errors import PluginError
from corral.plugins import WorkerSpec, check_api, make_plugin_manager, resolve_worker, worker_registry
from corral.reference import collect_settings, render
from corral.settings import Setting, default_registry, positive_int
from corral.testing import CorralProcess

ROOT = Path(__file__).resolve().parents[2]


def corral(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def test_every_hook_is_documented() -> None:
    specs = [(n, f) for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("corral_")]
    from corral.config import SERVER_HOOKS

    names = {n for n, _ in specs}
    # Plugin-only hooks, besides the server hooks a config file may set too.
    assert {f"corral_{h}" for h in SERVER_HOOKS} | {"corral_register_workers", "corral_add_settings",
                                                   "corral_configure", "corral_arbiter_tick",
                                                   "corral_register_commands"} == names
    for name, func in specs:
        doc = inspect.getdoc(func) or ""
        assert len(doc) > 40, f"hook {name} has no real documentation"
        assert ("arbiter" in doc or "worker" in doc or "any process" in doc), \
            f"hook {name} does not say in which process it runs"


def test_plugins_shows_what_each_worker_spec_declares() -> None:
    data = json.loads(corral("plugins", "--json").stdout)
    workers = {w["name"]: w for p in data["plugins"] for w in p["workers"]}
    sync, gthread = workers["sync"], workers["gthread"]
    assert (sync["keepalive"], sync["multithread"], sync["tls"]) == (False, False, True)
    assert (gthread["keepalive"], gthread["concurrency"], gthread["multithread"]) == (True, "threads", True)
    assert sync["shared_modules"] == ["corral_sync.worker"]
    text = corral("plugins").stdout
    assert "    closes each connection, process, one request at a time, TLS" in text
    assert "    keep-alive, threads, requests at once (wsgi.multithread)" in text


def test_plugins_json_lists_sync_without_importing_workers() -> None:
    res = corral("plugins", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    sync = next(p for p in data["plugins"] if p["name"] == "sync")
    assert sync["distribution"] == "corral" and sync["version"]  # built in (pyproject.toml)
    assert sync["workers"][0]["name"] == "sync" and sync["workers"][0]["description"]
    assert "corral_register_workers" in sync["hooks"]
    # Listing imports no worker module, hence no concurrency library.
    code = ("import sys, runpy; sys.argv=['corral','plugins']\n"
            "from corral.cli import plugins_command; plugins_command([])\n"
            "bad=[m for m in sys.modules if m.split('.')[0] in ('gevent','tornado') or m.endswith('.worker')]\n"
            "print('IMPORTED', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
    assert "IMPORTED []" in out


def test_disable_plugin_by_flag_and_environment() -> None:
    res = corral("-k", "sync", "--disable-plugin", "sync", "--check-config", "corral.testing.apps:app")
    assert res.returncode == 2 and "unknown worker class 'sync'" in res.stderr
    res = corral("-k", "sync", "--check-config", "corral.testing.apps:app",
                 env={"CORRAL_DISABLE_PLUGINS": "gevent,sync"})
    assert res.returncode == 2 and "unknown worker class 'sync'" in res.stderr


def test_trace_plugins_logs_hook_calls(tmp_path: Path) -> None:
    with CorralProcess("corral.testing.apps:app", ["--trace-plugins"], workdir=tmp_path) as server:
        log = server.wait_for_log("plugin trace: .*corral_when_ready")
        assert "corral_on_starting" in log


def test_plugin_api_mismatch_is_named() -> None:
    module = types.ModuleType("fake_plugin")
    module.CORRAL_PLUGIN_API = PLUGIN_API + 1  # type: ignore[attr-defined]
    with pytest.raises(PluginError, match=rf"needs corral plugin API {PLUGIN_API + 1}, but this "
                                          rf"corral \(.*\) offers plugin API {PLUGIN_API};"):
        check_api(module, "fake", "corral-fake")


def test_plugin_settings_and_workers_through_hooks() -> None:
    class Extra:
        @hookimpl
        def corral_add_settings(self, settings):  # type: ignore[no-untyped-def]
            settings.add(Setting("fancy_level", "Fancy", positive_int, 3, "How fancy.",
                                 ("--fancy-level",), "INT"))

        @hookimpl
        def corral_register_workers(self):  # type: ignore[no-untyped-def]
            return [WorkerSpec("fancy", "fancy.worker:Worker", "a fancy worker")]

    pm, _, _ = make_plugin_manager(entry_points=False)
    pm.register(Extra(), name="fancy")
    registry = collect_settings(pm, default_registry())
    assert registry["fancy_level"].owner == "fancy"
    assert "## Plugin fancy" in render(registry) and "`--fancy-level`" in render(registry)
    assert resolve_worker(pm, "fancy").path == "fancy.worker:Worker"
    assert list(worker_registry(pm)) == ["fancy"]


def test_settings_reference_is_current() -> None:
    res = subprocess.run([sys.executable, "-m", "corral.reference"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert res.stdout == committed, "docs/settings.md is stale: run python -m corral.reference > docs/settings.md"


def test_help_shows_plugin_settings_under_plugin_name(tmp_path: Path) -> None:
    res = corral("--help")
    registry = collect_settings(make_plugin_manager()[0], default_registry())
    for setting in registry:
        if setting.owner != "corral" and setting.flags:
            assert f"{setting.owner} plugin:" in res.stdout
            assert setting.flags[-1] in res.stdout
