"""ruff must be clean over the whole tree, and mypy over the shipped code (the style DESIGN.md promises)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_is_clean() -> None:
    res = subprocess.run(["ruff", "check", "--no-cache", "core", "plugins", "tests", "bench", "examples"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_is_clean() -> None:
    # The shipped code: corral and the four plugin packages (config in pyproject.toml).
    packages = ["core/corral", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("plugins/*/corral_*"))]
    res = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *packages],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_the_public_api_is_mypy_strict() -> None:
    # corral.api is what plugins type-check against: strict, and so is all it imports.
    res = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--strict", "core/corral/api.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
