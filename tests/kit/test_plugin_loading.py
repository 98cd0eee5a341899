"""Plugins that do not fit are reported, named, and skipped; corral runs on with the others.

Each case writes a small distribution the way pip would install it (a
package and a ``.dist-info`` with entry_points.txt) into a directory put on
sys.path and PYTHONPATH, so discovery goes through importlib.metadata's
real entry-point loading. tests/kit/test_third_party.py does the same with
pip-built distributions in a fresh virtual environment; these are the fast,
fine-grained checks.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from corral import PLUGIN_API, __version__
from corral.errors import ConfigError
from corral.plugins import make_plugin_manager, resolve_worker, worker_registry
from corral.testing import run_corral

Install = Callable[..., Path]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Install:
    """``install(dist, version, {entry point: module}, {module: source})``: an installed distribution."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))

    def write(dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(
            "[corral]\n" + "".join(f"{name} = {module}\n" for name, module in entry_points.items()))
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        return site

    return write


FUTURE = f"""\
    from corral import hookimpl
    from corral.plugins import WorkerSpec

    CORRAL_PLUGIN_API = {PLUGIN_API + 1}

    @hookimpl
    def corral_register_workers():
        return [WorkerSpec("tomorrow", "kit_future_worker:Worker", "for a later corral")]
    """


def skipped_by_name() -> dict[str, str]:
    pm, loaded, problems = make_plugin_manager()
    assert [str(s) for s in pm.skipped] == problems
    assert "sync" in {p.name for p in loaded}  # the others still load
    return {s.name: str(s) for s in pm.skipped}


def test_api_mismatch_names_both_versions_and_the_fix(install: Install) -> None:
    install("corral-future", "2.0.0", {"future": "kit_future"}, {"kit_future": FUTURE})
    problem = skipped_by_name()["future"]
    assert problem == (
        f"plugin 'future' from distribution corral-future 2.0.0 is skipped: it needs corral plugin "
        f"API {PLUGIN_API + 1}, but this corral ({__version__}) offers plugin API {PLUGIN_API}; "
        f"install a release of corral-future made for corral plugin API {PLUGIN_API}"
    )
    pm, _, _ = make_plugin_manager()
    assert "tomorrow" not in worker_registry(pm)
    # Asking for its worker (named unlike the plugin) says why it is missing.
    with pytest.raises(ConfigError, match=r"^worker class 'tomorrow' is not available: plugin 'future' "
                                          r"from distribution corral-future 2\.0\.0 is skipped: it needs"):
        resolve_worker(pm, "tomorrow")


def test_api_version_must_be_a_number(install: Install) -> None:
    install("corral-odd", "1.0", {"odd": "kit_odd"}, {"kit_odd": 'CORRAL_PLUGIN_API = "1"\n'})
    assert f"its CORRAL_PLUGIN_API must be an int, such as {PLUGIN_API}; it is '1'" in skipped_by_name()["odd"]


def test_raising_on_import_is_reported_with_where(install: Install) -> None:
    install("corral-boom", "0.3", {"boom": "kit_boom"},
            {"kit_boom": "import os\nraise RuntimeError('no configuration for boom')\n"})
    problem = skipped_by_name()["boom"]
    assert problem.startswith("plugin 'boom' from distribution corral-boom 0.3 is skipped: it failed to "
                              "load: RuntimeError: no configuration for boom (at ")
    assert problem.endswith("kit_boom.py:2)")


def test_raising_or_wrong_registrations_are_found_at_load(install: Install) -> None:
    install("corral-shaky", "1.0", {"shaky": "kit_shaky", "pathless": "kit_pathless", "clash": "kit_clash"}, {
        "kit_shaky": """\
            from corral import hookimpl

            @hookimpl
            def corral_register_workers():
                raise KeyError("shaky")
            """,
        "kit_pathless": """\
            from corral import hookimpl
            from corral.plugins import WorkerSpec

            @hookimpl
            def corral_register_workers():
                return [WorkerSpec("pathless", "kit_pathless.Worker")]
            """,
        "kit_clash": """\
            from corral import hookimpl
            from corral.settings import Setting, uint

            @hookimpl
            def corral_add_settings(settings):
                settings.add(Setting("workers", "x", uint, 1, "redeclares a core setting"))
            """,
    })
    skipped = skipped_by_name()
    assert "is skipped: KeyError: 'shaky' (at " in skipped["shaky"]
    assert "not a WorkerSpec with a 'package.module:Class' path" in skipped["pathless"]
    assert "ValueError: setting 'workers' is declared twice" in skipped["clash"]
    # None of them breaks what uses the hooks afterwards.
    pm, _, _ = make_plugin_manager()
    assert "pathless" not in worker_registry(pm)


def test_unknown_worker_mentions_skipped_plugins(install: Install) -> None:
    install("corral-boom", "0.3", {"boom": "kit_boom"}, {"kit_boom": "raise ImportError('nope')\n"})
    pm, _, _ = make_plugin_manager()
    with pytest.raises(ConfigError, match=r"unknown worker class 'nosuch'.*Plugins skipped because they "
                                          r"are broken: boom \(corral-boom 0\.3\)\."):
        resolve_worker(pm, "nosuch")


def test_startup_and_listing_say_why(install: Install) -> None:
    install("corral-future", "2.0.0", {"future": "kit_future"}, {"kit_future": FUTURE})
    res = run_corral("-k", "tomorrow", "-b", "127.0.0.1:0", "corral.testing.apps:app")
    assert res.returncode == 2
    assert "corral: error: worker class 'tomorrow' is not available: plugin 'future'" in res.stderr
    assert f"needs corral plugin API {PLUGIN_API + 1}, but this corral" in res.stderr
    res = run_corral("plugins")
    # The healthy plugins are listed; the status says one was skipped.
    assert res.returncode == 1 and "sync (corral " in res.stdout
    assert "problem: plugin 'future' from distribution corral-future 2.0.0 is skipped" in res.stderr
    res = run_corral("plugins", "--json")
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert "sync" in [p["name"] for p in report["plugins"]]
    assert [p for p in report["problems"] if "'future'" in p]
