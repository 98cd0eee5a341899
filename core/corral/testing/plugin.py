"""pytest plugin of corral.testing (entry point ``pytest11``).

Fixtures:

- ``corral_worker_class``: the worker class under test. Defaults to the
  ``--corral-worker-class`` option, else "sync"; a plugin's own test suite
  overrides this fixture to return its class name.
- ``corral_server``: a factory that starts a real corral with that worker
  class on an ephemeral port and kills it (and its workers) after the test:
  ``server = corral_server("--threads", "4", app="myapp:app", workers=2)``.
- ``corral_shared_server``: one server per module and worker class, for the
  many read-only conformance checks, so the suite stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.testing.process import CorralProcess

DEFAULT_APP = "corral.testing.apps:app"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("corral")
    group.addoption("--corral-worker-class", default=None,
                    help="worker class the corral.testing fixtures run (default: sync)")


@pytest.fixture
def corral_worker_class(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--corral-worker-class") or "sync"


ServerFactory = Callable[..., CorralProcess]


def _factory(workdir: Path, worker_class: str, procs: list[CorralProcess]) -> ServerFactory:
    def start(*args: str, app: str = DEFAULT_APP, workers: int = 1, wait_ready: bool = True,
              **kwargs: Any) -> CorralProcess:
        proc = CorralProcess(app, args, workdir=workdir, worker_class=worker_class,
                             workers=workers, **kwargs)
        procs.append(proc)
        return proc.start(wait_ready)

    return start


@pytest.fixture
def corral_server(tmp_path: Path, corral_worker_class: str) -> Iterator[ServerFactory]:
    procs: list[CorralProcess] = []
    yield _factory(tmp_path, corral_worker_class, procs)
    for proc in procs:
        proc.kill()


@pytest.fixture(scope="module")
def corral_shared_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], CorralProcess]]:
    """``corral_shared_server(worker_class)``: one long-lived server per class and module."""
    servers: dict[str, CorralProcess] = {}
    workdir = tmp_path_factory.mktemp("shared-corral")

    def get(worker_class: str) -> CorralProcess:
        server = servers.get(worker_class)
        if server is None or (server.proc is not None and server.proc.poll() is not None):
            server = CorralProcess(DEFAULT_APP, ("--timeout", "30"), workdir=workdir,
                                   worker_class=worker_class, workers=2)
            servers[worker_class] = server.start()
        return server

    yield get
    for server in servers.values():
        server.kill()
