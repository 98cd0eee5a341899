"""Fixtures of the asgi worker tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from asgi_helpers import Serve, app_process

from corral.testing import CorralProcess

pytest.importorskip("corral_asgi", reason="corral-asgi is not installed (pip install ./plugins/asgi)")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``serve(source, *args, wait_ready=True, **kw)``: serve an app module written into tmp_path.

    Every server it starts is killed (with its workers) when the test ends.
    """
    servers: list[CorralProcess] = []

    def start(source: str, *args: str, wait_ready: bool = True, **kw: object) -> CorralProcess:
        server = app_process(tmp_path, source, *args, **kw)  # type: ignore[arg-type]
        servers.append(server)
        return server.start(wait_ready)

    yield start
    for server in servers:
        server.kill()
