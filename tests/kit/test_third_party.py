"""An outsider can publish a worker plugin: the path from wheel to `corral -k`, tested for real.

The example plugin project (examples/third-party-worker, distribution
corral-asyncio-threads) is built into a wheel and installed, with corral
and pytest, into a fresh virtual environment, as a user would install it
from PyPI. From there: ``corral plugins`` lists it with its version,
``corral -k asyncio-threads`` serves, and the project's own test suite
(the shared conformance suite included) passes using only corral.testing.

Then the failure paths, with throwaway plugin distributions built from
pyproject.toml files in tmp_path and pip-installed (into a ``--target``
directory put on PYTHONPATH, so each test sees only the plugins it
installed): a plugin that needs another plugin API is refused at startup
with both versions named, and a plugin that raises while loading is
reported with its name and distribution while corral runs on with the others.

Everything runs real processes; every wait has a deadline. The virtual
environment is built once for the module (about 20 s, most of it pip).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral import PLUGIN_API
from corral.testing import CorralProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "third-party-worker"
WORKER = "asyncio-threads"
APP = "corral.testing.apps:app"
#: pip and pytest runs get this long; the module as a whole stays well under it.
COMMAND_TIMEOUT = 240.0

# The module takes 40-60 s; each test's own deadline is generous because pip is slow on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(COMMAND_TIMEOUT + 60)]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def corral_projects() -> list[Path]:
    """The repository root and any local plugin project the root depends on (none today: sync and gthread are built in).

    Read from the root pyproject.toml, so that a default plugin added there
    is installed here too without touching this test.
    """
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    local = {_canonical(tomllib.loads(p.read_text())["project"]["name"]): p.parent
             for p in sorted(ROOT.glob("plugins/*/pyproject.toml"))}
    wanted = [_canonical(re.match(r"[A-Za-z0-9._-]+", dep).group(0)) for dep in deps]  # type: ignore[union-attr]
    return [ROOT, *(local[name] for name in wanted if name in local)]


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env, stdin=subprocess.DEVNULL)


def check(res: subprocess.CompletedProcess[str], status: int = 0) -> subprocess.CompletedProcess[str]:
    assert res.returncode == status, f"{res.args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


def pip_cmd(*args: str | Path, python: Path | None = None) -> list[str]:
    """This process's pip, installing into ``python``'s environment when given."""
    target = ["--python", str(python)] if python else []
    return [sys.executable, "-m", "pip", *target, *(str(a) for a in args), "--quiet",
            "--disable-pip-version-check"]


class Background:
    """A command running while the test does other things; ``wait`` has a deadline."""

    def __init__(self, cmd: Sequence[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = COMMAND_TIMEOUT) -> None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        assert code == 0, f"{self.proc.args} exited {code}:\n{self.log.read_text(errors='replace')}"


@dataclass
class Venv:
    root: Path
    #: Where throwaway plugins are pip-installed (--target), for PYTHONPATH.
    scratch: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def corral(self) -> Path:
        return self.root / "bin" / "corral"

    def env(self, *plugin_dirs: Path) -> dict[str, str]:
        """This process's environment without its Python settings, plus ``plugin_dirs`` on PYTHONPATH."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS")}
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if plugin_dirs:
            env["PYTHONPATH"] = os.pathsep.join(str(d) for d in plugin_dirs)
        return env

    def corral_cmd(self, *args: str, plugin_dirs: Sequence[Path] = ()) -> subprocess.CompletedProcess[str]:
        return run([self.corral, *args], env=self.env(*plugin_dirs), timeout=30)


@dataclass
class Builds:
    """Wheel builds started at once, to run while the virtual environment is being set up."""

    dir: Path
    example: Background
    misfits: Background


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    base = tmp_path_factory.mktemp("builds")
    misfits = write_misfit_projects(base / "src")
    return Builds(
        dir=base,
        example=Background(pip_cmd("wheel", "--no-deps", "-w", base / "wheels", EXAMPLE), base / "example.log"),
        misfits=Background(pip_cmd("wheel", "--no-deps", "-w", base / "misfit-wheels", *misfits),
                           base / "misfits.log"),
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, builds: Builds) -> Venv:
    base = tmp_path_factory.mktemp("third-party")
    root = base / "venv"
    # No pip inside: this process's pip installs into it (pip --python), which
    # saves the seconds ensurepip would take.
    check(run([sys.executable, "-m", "venv", "--without-pip", root], timeout=60))
    venv = Venv(root=root, scratch=base / "scratch")
    # corral-testing (ROOT/testing): the kit's pytest plugin, as `corral[testing]` would bring it.
    check(run(pip_cmd("install", *corral_projects(), ROOT / "testing", python=venv.python)))
    builds.example.wait()
    (wheel,) = (builds.dir / "wheels").glob("corral_asyncio_threads-*.whl")
    # --no-deps: its one dependency, corral, is the one installed above.
    check(run(pip_cmd("install", "--no-deps", wheel, python=venv.python)))
    return venv


def example_version() -> str:
    return str(tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["version"])


# -- the example plugin, installed from its wheel -------------------------------------------


def test_corral_plugins_lists_it_with_its_version(venv: Venv) -> None:
    res = check(venv.corral_cmd("plugins"))
    assert f"asyncio-threads (corral-asyncio-threads {example_version()})" in res.stdout
    assert f"  worker {WORKER}: asyncio event loop" in res.stdout
    assert res.stderr.count("problem:") == 0, res.stderr
    data = json.loads(check(venv.corral_cmd("plugins", "--json")).stdout)
    plugin = next(p for p in data["plugins"] if p["name"] == WORKER)
    assert (plugin["distribution"], plugin["version"]) == ("corral-asyncio-threads", example_version())
    assert plugin["settings"] == ["asyncio_queue_timeout"]
    assert data["problems"] == []


def test_corral_k_serves_with_it(venv: Venv, tmp_path: Path) -> None:
    server = CorralProcess(APP, ["--asyncio-queue-timeout", "5"], workdir=tmp_path, worker_class=WORKER,
                           command=[str(venv.corral)], env=venv.env())
    with server:
        status, _, body = server.request("GET", "/")
        assert (status, body) == (200, b"Hello, World!")
        env = json.loads(server.request("GET", "/environ")[2])
        assert env["corral.worker_class"] == WORKER and env["wsgi.multithread"] is True
        log = server.log()
        assert f"plugins: {WORKER} (corral-asyncio-threads {example_version()})" in log
        assert server.stop(signal.SIGTERM) == 0


def test_its_own_suite_passes_with_only_corral_testing(venv: Venv, tmp_path: Path) -> None:
    # The tests import corral.testing and nothing else of corral (nor the
    # plugin itself: they drive it as users do, through `corral -k`).
    for path in (EXAMPLE / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("corral_"), f"{path.name} imports {name}"
                if name == "corral" or name.startswith("corral."):
                    assert name.startswith("corral.testing"), f"{path.name} imports {name}"
    # A copy of the tests and the pytest settings, without the sources: the
    # suite runs against the installed wheel, as it would for a user.
    suite = tmp_path / "suite"
    shutil.copytree(EXAMPLE / "tests", suite / "tests")
    shutil.copy(EXAMPLE / "pyproject.toml", suite)
    res = run([venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=suite,
              env=venv.env())
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 50, summary  # the conformance suite ran
    assert "failed" not in summary and "error" not in summary


# -- plugins that must not take corral down -------------------------------------------------


def write_project(where: Path, name: str, version: str, package: str,
                  entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """A minimal plugin project: pyproject.toml and the package's modules."""
    project = where / name
    (project / package).mkdir(parents=True)
    eps = "\n".join(f'{ep} = "{target}"' for ep, target in entry_points.items())
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["hatchling>=1.21"]
        build-backend = "hatchling.build"

        [project]
        name = "{name}"
        version = "{version}"

        [project.entry-points.corral]
        """) + eps + f'\n\n[tool.hatch.build.targets.wheel]\npackages = ["{package}"]\n')
    (project / package / "__init__.py").write_text("")
    for module, source in modules.items():
        (project / package / f"{module}.py").write_text(textwrap.dedent(source))
    return project


def write_misfit_projects(where: Path) -> list[Path]:
    """corral-future (needs the next plugin API) and corral-broken (raises on import, on registration)."""
    future = write_project(where, "corral-future", "2.0.0", "corral_future", {"future": "corral_future.plugin"}, {
        "plugin": """\
            from corral import PLUGIN_API, hookimpl
            from corral.plugins import WorkerSpec

            CORRAL_PLUGIN_API = PLUGIN_API + 1

            @hookimpl
            def corral_register_workers():
                return [WorkerSpec("future", "corral_future.worker:FutureWorker", "made for a later corral")]
            """,
    })
    broken = write_project(
        where, "corral-broken", "0.0.1", "corral_broken",
        {"broken": "corral_broken.at_import", "broken-register": "corral_broken.at_register"},
        {
            "at_import": """\
                raise RuntimeError("corral-broken cannot start: its configuration is missing")
                """,
            "at_register": """\
                from corral import hookimpl

                @hookimpl
                def corral_register_workers():
                    raise ValueError("registration failed on purpose")
                """,
        },
    )
    return [future, broken]


@pytest.fixture(scope="module")
def misfit_plugins(venv: Venv, builds: Builds) -> Path:
    """corral-future and corral-broken, pip-installed into a directory of their own."""
    builds.misfits.wait()
    check(run(pip_cmd("install", "--no-deps", "--target", venv.scratch,
                      *(builds.dir / "misfit-wheels").glob("*.whl"))))
    return venv.scratch


def test_plugin_for_another_api_is_refused_at_startup(venv: Venv, misfit_plugins: Path) -> None:
    res = venv.corral_cmd("-k", "future", "-b", "127.0.0.1:0", APP, plugin_dirs=[misfit_plugins])
    assert res.returncode == 2, res.stderr
    mismatch = (f"needs corral plugin API {PLUGIN_API + 1}, but this corral (0.1.0) offers "
                f"plugin API {PLUGIN_API}")
    error = next(line for line in res.stderr.splitlines() if line.startswith("corral: error:"))
    # Why -k future fails, not just "unknown worker class".
    assert "worker class 'future' is not available" in error
    assert "plugin 'future' from distribution corral-future 2.0.0 is skipped" in error
    assert mismatch in error
    assert "unknown worker class" not in res.stderr
    # `corral plugins` lists the problem and still lists the rest.
    # (exiting 1, since a plugin was skipped)
    res = check(venv.corral_cmd("plugins", plugin_dirs=[misfit_plugins]), status=1)
    assert any(line.startswith("problem: plugin 'future' from distribution corral-future 2.0.0")
               and mismatch in line for line in res.stderr.splitlines()), res.stderr
    assert f"{WORKER} (corral-asyncio-threads" in res.stdout and "future (" not in res.stdout


def test_plugin_that_raises_is_reported_and_corral_runs_on(venv: Venv, misfit_plugins: Path,
                                                          tmp_path: Path) -> None:
    data = json.loads(check(venv.corral_cmd("plugins", "--json", plugin_dirs=[misfit_plugins]), status=1).stdout)
    problems = "\n".join(data["problems"])
    assert ("plugin 'broken' from distribution corral-broken 0.0.1 is skipped: it failed to load: "
            "RuntimeError: corral-broken cannot start: its configuration is missing") in problems
    assert re.search(r"at_import\.py:1\)", problems), problems  # where it raised
    assert ("plugin 'broken-register' from distribution corral-broken 0.0.1 is skipped: "
            "ValueError: registration failed on purpose") in problems
    assert {"sync", WORKER} <= {p["name"] for p in data["plugins"]}
    assert not {"broken", "broken-register"} & {p["name"] for p in data["plugins"]}
    # And corral serves with the plugins that did load, saying what it skipped.
    server = CorralProcess(APP, workdir=tmp_path, worker_class=WORKER, command=[str(venv.corral)],
                           env=venv.env(misfit_plugins))
    with server:
        status, _, body = server.request("GET", "/")
        assert (status, body) == (200, b"Hello, World!")
        assert "corral: plugin 'broken' from distribution corral-broken 0.0.1 is skipped" in server.log()
        assert server.stop(signal.SIGTERM) == 0

