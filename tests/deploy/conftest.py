"""Fixtures of the deployment tests."""

from __future__ import annotations

import pytest
from deploy_helpers import Certs, make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))
