"""The worker class every corral.testing fixture runs in this suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def corral_worker_class() -> str:
    return "asyncio-threads"
