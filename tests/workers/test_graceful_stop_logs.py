"""Who cut a request that outlived --graceful-timeout, as each built-in class's log tells it.

The conformance suite checks the behaviour every class shares (the
connection closed unanswered, a bounded stop, exit 0); this checks the
log line an operator reads afterwards. The gthread, gevent and tornado
workers keep the deadline themselves and say how many connections they
cut; the arbiter leaves them a second to exit in order, so it never has
to kill them. A sync worker is inside the request (as gunicorn's would
be), so the arbiter kills it and says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.testing.conformance import stop_outliving_graceful_timeout
from corral.testing.plugin import ServerFactory

ARBITER_KILLED = "did not stop within graceful_timeout; killing"
WORKER_CUT = "1 connection(s) still busy after graceful_timeout"


@pytest.mark.parametrize("corral_worker_class", ["gthread", "gevent", "tornado"])
def test_worker_cuts_the_request_and_exits_by_itself(corral_server: ServerFactory, tmp_path: Path) -> None:
    log = stop_outliving_graceful_timeout(corral_server, tmp_path).log()
    assert WORKER_CUT in log
    assert ARBITER_KILLED not in log and "SIGKILL" not in log


@pytest.mark.parametrize("corral_worker_class", ["sync"])
def test_arbiter_kills_a_sync_worker_inside_the_request(corral_server: ServerFactory, tmp_path: Path) -> None:
    log = stop_outliving_graceful_timeout(corral_server, tmp_path).log()
    assert ARBITER_KILLED in log
    assert "was killed by SIGKILL" in log
