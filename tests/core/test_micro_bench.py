"""bench/micro.py still runs and times what it says (its figures go into docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_micro_benchmark_runs_and_reports_every_piece(tmp_path: Path) -> None:
    out = tmp_path / "micro.json"
    # --repeat 1 --number 200: this checks that the script works (its own
    # sanity checks of the wire bytes and the environ run first), not how
    # fast anything is.
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "micro.py"), "--repeat", "1", "--number", "200",
                          "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    figures = json.loads(out.read_text())["us"]["corral"]
    assert set(figures) == {"parse", "parse (reused parser)", "environ", "response", "total",
                            "access log line, text", "access log line, json"}
    assert all(us > 0 for us in figures.values()), figures
    assert "access log line, text" in res.stdout
