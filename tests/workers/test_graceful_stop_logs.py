"""Who cut a request that outlived --graceful-timeout, as each built-in class's log tells it.

The conformance suite checks the behaviour every class shares (the
connection closed unanswered, a bounded stop, exit 0); this checks the
log lines an operator reads afterwards. The gthread, gevent and tornado
workers keep the deadline themselves and say how many connections they
cut; every class, sync included (a timer interrupts the request), names
each request it cut with its age (corral.serve.retirement, rule 5). The
arbiter leaves them a second to exit in order, so it never has to kill
them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.testing.conformance import stop_outliving_graceful_timeout
from corral.testing.plugin import ServerFactory

ARBITER_KILLED = "did not stop within graceful_timeout; killing"
WORKER_CUT = "1 connection(s) still busy after graceful_timeout"
REQUEST_NAMED = r"1 request\(s\) still running are cut:\n  GET /sleep\?t=30&marker=\S+ \(running \d+\.\d s\)"


@pytest.mark.parametrize("corral_worker_class", ["gthread", "gevent", "tornado"])
def test_worker_cuts_the_request_and_exits_by_itself(corral_server: ServerFactory, tmp_path: Path) -> None:
    log = stop_outliving_graceful_timeout(corral_server, tmp_path).log()
    assert WORKER_CUT in log
    assert re.search(REQUEST_NAMED, log), log
    assert ARBITER_KILLED not in log and "SIGKILL" not in log


@pytest.mark.parametrize("corral_worker_class", ["sync"])
def test_sync_worker_cuts_the_request_itself(corral_server: ServerFactory, tmp_path: Path) -> None:
    log = stop_outliving_graceful_timeout(corral_server, tmp_path).log()
    assert re.search(REQUEST_NAMED, log), log
    assert ARBITER_KILLED not in log and "SIGKILL" not in log
