"""Worker classes with request threads give back the heap memory big bodies left, once idle.

Each pool thread allocates from a malloc arena of its own, and glibc keeps
what is freed inside an arena unless it sits at the very top; a gthread
worker that read a burst of 1 MiB uploads in pieces held 20-50 MiB it no
longer used. The workers call malloc_trim once they have been idle for a
second after serving (corral.workers.memory). Real servers, real uploads;
the worker's private memory is read from /proc by the test.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral.testing import CorralProcess
from corral.testing.clients import read_response
from corral.workers.memory import trim_available

Server = Callable[..., CorralProcess]
TRIMMED = r"idle: gave (-?\d+) KiB of free heap back"

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not trim_available() or not Path("/proc/self/smaps_rollup").exists(),
                       reason="needs glibc's malloc_trim and /proc/PID/smaps_rollup"),
]


@pytest.fixture(params=["gthread", "tornado"])
def corral_worker_class(request: pytest.FixtureRequest) -> str:
    pytest.importorskip(f"corral_{request.param}")
    return str(request.param)


def _private_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return sum(int(line.split()[1]) for line in text.splitlines()
               if line.startswith(("Private_Clean:", "Private_Dirty:")))


def test_an_idle_worker_gives_back_the_memory_uploads_left(corral_server: Server) -> None:
    server = corral_server("--threads", "8", "--log-level", "debug")
    (pid,) = server.worker_pids()
    body = os.urandom(1 << 20)

    def upload(_: int) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            for _ in range(4):
                sock.sendall(b"POST /echo-pieces?size=65536 HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                status, _, data = read_response(sock)
                assert status == 200 and data == body

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(upload, range(16)))
    loaded = _private_kib(pid)
    text = server.wait_for_log(TRIMMED, timeout=5)
    match = re.search(TRIMMED, text)
    assert match is not None
    after = _private_kib(pid)
    # At least a MiB of the uploads' memory went back (5-9 MiB here, out of 16-22).
    assert int(match.group(1)) > 1024, text[-2000:]
    assert after < loaded - 1024, (loaded, after)
    # Once per burst: idle for longer, the worker does not trim again.
    time.sleep(1.5)
    assert len(re.findall(TRIMMED, server.log())) == 1


def test_no_trim_while_a_request_runs(corral_server: Server) -> None:
    """A long request keeps the worker busy: the trim waits until it is done."""
    server = corral_server("--threads", "2", "--log-level", "debug")
    status, _, _ = server.request("GET", "/")
    assert status == 200
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(server.request, "GET", "/sleep?t=2.5")
        time.sleep(2.2)  # idle long enough but for the request in a thread
        assert not re.search(TRIMMED, server.log())
        assert slow.result()[0] == 200
    server.wait_for_log(TRIMMED, timeout=5)
