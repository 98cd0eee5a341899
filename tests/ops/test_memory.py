"""Memory-based recycling: a leaking worker is replaced at the limit, under keep-alive load, losing nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from corral.testing import CorralProcess
from corral.testing.load import KeepAliveMix
from corral_ops.ctl import request

LEAKY = '''
from corral.testing.apps import app as base

HOARD = []


def app(environ, start_response):
    # 256 KiB a request, written (so resident), kept forever: a leak.
    HOARD.append(b"x" * 262144)
    return base(environ, start_response)
'''


def status(path: str) -> dict[str, Any]:
    result: dict[str, Any] = request(path, {"command": "status"})["result"]
    return result


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent", "tornado"])
def test_a_leaking_worker_is_replaced_at_the_limit_and_nothing_is_lost(tmp_path: Path, worker_class: str) -> None:
    (tmp_path / "leaky.py").write_text(LEAKY)
    args = ["-k", worker_class, "-w", "2", "--chdir", str(tmp_path), "--max-worker-memory", "64M",
            "--max-worker-memory-interval", "0.2", "--max-worker-memory-samples", "2"]
    with CorralProcess("leaky:app", args, workdir=tmp_path, workers=None) as server:
        first = set(server.wait_for_workers(2))
        with KeepAliveMix("127.0.0.1", server.port, connections=4) as mix:
            line = server.wait_for_log(r"over max_worker_memory \(64.0 MiB\) for 2 samples; replacing it",
                                       timeout=60)
            assert "MiB RSS" in line
            # The replacement boots, then the leaker retires: new pids serve, the load goes on.
            deadline = time.monotonic() + 30
            while first <= set(server.worker_pids()):
                assert time.monotonic() < deadline, "the leaking worker was never replaced"
                time.sleep(0.05)
            mix.wait_for_requests(200, timeout=30)
        result = mix.result
        assert not result.failures, result.failures[:5]
        assert result.ok > 200
        recycled = {p["name"]: p["recycled"] for p in status(server.control_path)["pools"]}
        assert recycled["main"].get("memory", 0) >= 1
        assert server.proc is not None and server.proc.poll() is None


def test_memory_settings_say_what_they_expect(tmp_path: Path) -> None:
    import subprocess
    import sys

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "corral", "--check-config", *args,
                               "corral.testing.apps:app"], capture_output=True, text=True, timeout=30)

    assert check("--max-worker-memory", "1.5G").returncode == 0
    bad = check("--max-worker-memory", "lots")
    assert bad.returncode == 2 and "expected a size such as 512 (MiB), 512M or 1.5G" in bad.stderr
    bad = check("--max-worker-memory-metric", "vsz")
    assert bad.returncode == 2 and "expected rss, pss or uss" in bad.stderr


def test_the_three_measures_of_a_process() -> None:
    import os

    from corral_ops.memory_info import memory

    rss, pss, uss = (memory(os.getpid(), kind) for kind in ("rss", "pss", "uss"))
    assert rss is not None and pss is not None and uss is not None
    assert 0 < uss <= pss <= rss
    assert memory(2**22 + 12345, "rss") is None  # no such process
