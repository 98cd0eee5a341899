"""The minimal plugin of docs/writing-a-worker.md is real: the doc shows its files and it passes the conformance suite.

The plugin (examples/minimal-worker, distribution corral-minimal) is made
visible as if pip had installed it: a ``.dist-info`` directory with its
METADATA and entry_points.txt (written from its pyproject.toml) and its
source directory go on sys.path and PYTHONPATH for this module. corral then
finds it through importlib.metadata, exactly as an installed distribution,
without installing anything into the test environment.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.testing import run_corral
from corral.testing.conformance import *  # noqa: F403
from corral.testing.conformance import stop_outliving_graceful_timeout
from corral.testing.plugin import ServerFactory

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "minimal-worker"
GUIDE = ROOT / "docs" / "writing-a-worker.md"
#: The guide promises a complete plugin in under this many lines.
MAX_LINES = 100

_FILE_BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\n```\w*\n(?P<body>.*?)```\n", re.S)


def dist_info(project: Path, site: Path) -> None:
    """Write the .dist-info pip would write for ``project`` (less RECORD): name, version, entry points."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    info = site / f"{re.sub(r'[-.]+', '_', meta['name'])}-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    groups = [f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items())
              for group, eps in meta.get("entry-points", {}).items()]
    (info / "entry_points.txt").write_text("\n".join(groups))


@pytest.fixture(scope="module", autouse=True)
def minimal_plugin_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    site = tmp_path_factory.mktemp("site")
    dist_info(PROJECT, site)
    paths = [str(site), str(PROJECT)]
    with pytest.MonkeyPatch.context() as mp:
        for path in reversed(paths):
            mp.syspath_prepend(path)  # for this process: the suite reads the WorkerSpec
        # ...and for every corral the fixtures start.
        mp.setenv("PYTHONPATH", os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])]))
        yield


@pytest.fixture
def corral_worker_class() -> str:
    return "minimal"


def test_guide_shows_the_example_files_verbatim() -> None:
    blocks = {m["path"]: m["body"] for m in _FILE_BLOCK.finditer(GUIDE.read_text())}
    files = {str(p.relative_to(ROOT)) for p in PROJECT.rglob("*")
             if p.is_file() and p.stat().st_size and "__pycache__" not in p.parts}
    assert set(blocks) == files, "the guide and examples/minimal-worker list different files"
    for path, body in blocks.items():
        assert body == (ROOT / path).read_text(), f"{path} differs from its block in {GUIDE.name}"
    lines = sum(body.count("\n") for body in blocks.values())
    assert lines < MAX_LINES, f"the minimal plugin has grown to {lines} lines"


def test_listed_as_installed() -> None:
    res = run_corral("plugins", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    plugin = next(p for p in data["plugins"] if p["name"] == "minimal")
    assert (plugin["distribution"], plugin["version"]) == ("corral-minimal", "0.1.0")
    assert [w["name"] for w in plugin["workers"]] == ["minimal"]
    assert data["problems"] == []


def test_says_what_the_graceful_timeout_cut(corral_server: ServerFactory, tmp_path: Path) -> None:
    # The guide asks a worker to name the requests it cuts at the deadline and
    # to exit by itself. The example runs requests in the loop's thread, so the
    # base's alarm (Worker.requests_in_main_thread) does both for it.
    log = stop_outliving_graceful_timeout(corral_server, tmp_path).log()
    assert re.search(r"1 request\(s\) still running are cut:\n  GET /sleep\?t=30&marker=\S+ \(running \d+\.\d s\)",
                     log), log
    assert "SIGKILL" not in log
