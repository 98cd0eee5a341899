"""Run the shared conformance suite against every installed worker class."""

from __future__ import annotations

import pytest

from corral.plugins import make_plugin_manager, worker_registry


def installed_worker_classes() -> list[str]:
    pm, _, _ = make_plugin_manager()
    return sorted(worker_registry(pm))


@pytest.fixture(params=installed_worker_classes())
def corral_worker_class(request: pytest.FixtureRequest) -> str:
    return str(request.param)
