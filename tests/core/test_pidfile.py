"""corral.pidfile: the pidfile across an upgrade (the end-to-end USR2 tests run real arbiters)."""

from __future__ import annotations

from pathlib import Path

from corral.pidfile import Pidfile


def test_no_configured_path_writes_nothing(tmp_path: Path) -> None:
    pf = Pidfile(123)
    pf.write(None, upgrading=False)
    pf.remove()
    pf.restore()
    assert pf.path is None and list(tmp_path.iterdir()) == []


def test_an_upgrade_writes_dot_2_then_takes_the_real_name(tmp_path: Path) -> None:
    real = str(tmp_path / "corral.pid")
    old, new = Pidfile(100), Pidfile(200)
    old.write(real, upgrading=False)
    new.write(real, upgrading=True)
    assert Path(real).read_text() == "100\n" and Path(real + ".2").read_text() == "200\n"
    # The old arbiter exits: it removes the real file only while it holds its pid.
    old.remove()
    assert not Path(real).exists()
    new.take_over(real)
    assert Path(real).read_text() == "200\n" and not Path(real + ".2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corral.pid"]  # no temporary left


def test_remove_leaves_a_file_that_holds_another_pid(tmp_path: Path) -> None:
    real = tmp_path / "corral.pid"
    mine = Pidfile(100)
    mine.write(str(real), upgrading=False)
    real.write_text("200\n")
    mine.remove()
    assert real.read_text() == "200\n"
    # ...and restore() puts its own pid back (a failed upgrade overwrote it).
    mine.restore()
    assert real.read_text() == "100\n"
