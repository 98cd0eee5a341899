"""pytest plugin of corral.testing (entry point ``pytest11``, named ``corral``, of ``corral-testing``).

Installing corral makes these fixtures available to every pytest run; a
plugin's test suite needs no conftest import. With plugin autoloading off
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``) load it with ``-p corral.testing.plugin``;
do not name it (in ``-p`` or ``pytest_plugins``) while autoloading is on:
pytest refuses the same plugin registered twice.

Fixtures:

- ``corral_worker_class``: the worker class under test. Defaults to the
  ``--corral-worker-class`` option, else "sync"; a plugin's own test suite
  overrides this fixture (in its conftest.py) to return its class name.
- ``corral_server_args``: extra command-line arguments for every server the
  fixtures start, e.g. ``("--threads", "4")``; empty by default. Override
  or parametrize it to run the conformance suite under several settings.
- ``corral_server``: a factory that starts a real corral with that worker
  class on an ephemeral port and kills it (and its workers) after the test
  (the app is corral.testing.apps:app, or its ASGI twin
  corral.testing.asgi_apps:app for a class that serves ASGI apps):
  ``server = corral_server("--threads", "4", app="myapp:app", workers=2)``.
- ``corral_shared_server``: ``corral_shared_server(worker_class)`` gives one
  long-lived server (two workers) per module, worker class and
  ``corral_server_args``, for the many read-only conformance checks, so
  the suite stays fast. It is started again if it died.

Every server waits for readiness through its log, never by sleeping, and
every wait has a deadline (see :class:`corral.testing.CorralProcess`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from corral.testing.process import CorralProcess

DEFAULT_APP = "corral.testing.apps:app"
#: What a class that serves ASGI apps gets instead: the same routes (corral.testing.asgi_apps).
DEFAULT_ASGI_APP = "corral.testing.asgi_apps:app"


@functools.cache
def default_app(worker_class: str) -> str:
    """The test app for ``worker_class``: the WSGI one, or its ASGI twin for an ASGI class."""
    from corral.plugins import make_plugin_manager, worker_registry

    pm, _, _ = make_plugin_manager()
    spec = worker_registry(pm).get(worker_class)
    return DEFAULT_ASGI_APP if spec is not None and spec.app_interface == "asgi" else DEFAULT_APP


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("corral")
    group.addoption("--corral-worker-class", default=None,
                    help="worker class the corral.testing fixtures run (default: sync)")


@pytest.fixture
def corral_worker_class(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--corral-worker-class") or "sync"


@pytest.fixture
def corral_server_args() -> Sequence[str]:
    return ()


ServerFactory = Callable[..., CorralProcess]


def _factory(workdir: Path, worker_class: str, base_args: Sequence[str],
             procs: list[CorralProcess]) -> ServerFactory:
    def start(*args: str, app: str | None = None, workers: int = 1, wait_ready: bool = True,
              **kwargs: Any) -> CorralProcess:
        if app is None:
            app = default_app(worker_class)
        proc = CorralProcess(app, (*base_args, *args), workdir=workdir, worker_class=worker_class,
                             workers=workers, **kwargs)
        procs.append(proc)
        return proc.start(wait_ready)

    return start


@pytest.fixture
def corral_server(tmp_path: Path, corral_worker_class: str,
                  corral_server_args: Sequence[str]) -> Iterator[ServerFactory]:
    procs: list[CorralProcess] = []
    yield _factory(tmp_path, corral_worker_class, corral_server_args, procs)
    for proc in procs:
        proc.kill()


class _SharedServers:
    """The long-lived servers of one test module, by worker class and arguments."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: dict[tuple[str, ...], CorralProcess] = {}

    def get(self, worker_class: str, args: Sequence[str]) -> CorralProcess:
        key = (worker_class, *args)
        server = self.servers.get(key)
        if server is None or (server.proc is not None and server.proc.poll() is not None):
            if server is not None:
                server.kill()
            server = CorralProcess(default_app(worker_class), ("--timeout", "30", *args),
                                   workdir=self.workdir, worker_class=worker_class, workers=2)
            self.servers[key] = server.start()
        return server

    def kill_all(self) -> None:
        for server in self.servers.values():
            server.kill()


@pytest.fixture(scope="module")
def _corral_shared_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_SharedServers]:
    shared = _SharedServers(tmp_path_factory.mktemp("shared-corral"))
    yield shared
    shared.kill_all()


@pytest.fixture
def corral_shared_server(_corral_shared_servers: _SharedServers,
                         corral_server_args: Sequence[str]) -> Callable[[str], CorralProcess]:
    """``corral_shared_server(worker_class)``: one long-lived server per class, arguments and module."""

    def get(worker_class: str) -> CorralProcess:
        return _corral_shared_servers.get(worker_class, corral_server_args)

    return get
