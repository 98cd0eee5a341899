"""bench/body.py still runs, and reads every byte of its upload (its figures go into docs/performance.md)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# bench/ is not a package: load the script as a module, without touching sys.path.
_spec = importlib.util.spec_from_file_location("bench_body", ROOT / "bench" / "body.py")
assert _spec is not None and _spec.loader is not None
body = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(body)


def test_body_benchmark_runs_and_reports_each_read_size() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "body.py"), "--repeat", "1", "--number", "2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    sizes = re.findall(r"^read\((-?\d+)\): \d+ us per 1 MiB body$", res.stdout, re.M)
    assert sizes == ["65536", "8192", "-1"], res.stdout


def test_the_timed_path_reads_the_whole_body() -> None:
    chunks = body.pieces()
    assert len(chunks) == 17 and len(chunks[0]) == body.PIECE  # the head shares the first recv
    for size in (65536, 8192, 1000, -1):
        assert body.read_upload(chunks, size) == body.SIZE
