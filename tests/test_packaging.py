"""What each distribution declares: a production install of corral pulls no test code into pytest."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project(path: Path) -> dict:  # type: ignore[type-arg]
    return tomllib.loads(path.read_text())["project"]


def test_corral_registers_no_pytest_plugin_and_needs_no_test_library() -> None:
    core = project(ROOT / "pyproject.toml")
    assert "pytest11" not in core.get("entry-points", {})
    assert not [dep for dep in core["dependencies"] if dep.lower().startswith(("pytest", "flask"))]
    assert core["optional-dependencies"]["testing"] == ["corral-testing"]


def test_corral_testing_registers_the_kit_with_what_it_needs() -> None:
    testing = project(ROOT / "testing" / "pyproject.toml")
    assert testing["entry-points"]["pytest11"] == {"corral": "corral.testing.plugin"}
    needs = {dep.split(">")[0].split("=")[0] for dep in testing["dependencies"]}
    assert needs == {"corral", "pytest", "pytest-timeout", "flask"}
