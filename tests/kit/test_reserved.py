"""The kit's check of a worker class's attribute names (corral.testing.reserved) finds real collisions."""

from __future__ import annotations

import inspect
from typing import Any

from corral.api import HttpConnection, SelectorLoopWorker, Worker
from corral.testing.reserved import OVERRIDABLE, collisions


class OverwritesLimits(Worker):
    """What an outside author's worker did: base attributes reused for its own settings."""

    def run(self) -> None:
        self.limits = {"max": 3}
        self.write_timeout = 5.0


class ReadsThePrivatePipe(Worker):
    def run(self) -> None:
        self._wake_w.bit_length()


class ShadowsAPrivateMethod(SelectorLoopWorker):
    def _graceful_timeout_over(self, signum: int, frame: Any) -> None:
        pass


class Fine(SelectorLoopWorker):
    multithread = True  # a documented extension point

    def run(self) -> None:
        self.my_pool = []  # a name of its own
        super().run()

    def dispatch(self, conn: Any, in_hand: int) -> None:  # overriding a public method is the point
        self.serve_connection(conn)


def test_a_base_attribute_reused_is_named_with_its_class() -> None:
    found = collisions(OverwritesLimits)
    assert len(found) == 2
    assert "sets 'limits', which Worker keeps" in found[0] or "sets 'limits', which Worker keeps" in found[1]
    assert any("'write_timeout'" in line for line in found)


def test_a_private_name_of_the_base_used_or_shadowed_is_refused() -> None:
    line = inspect.getsourcelines(ReadsThePrivatePipe)[1] + 2  # the line that reads it
    assert collisions(ReadsThePrivatePipe) == [
        f"{__file__}: ReadsThePrivatePipe (line {line}) uses '_wake_w', private to Worker: "
        "use the public API (corral.api)"]
    (line,) = collisions(ShadowsAPrivateMethod)
    assert "defines '_graceful_timeout_over', private to Worker" in line


def test_own_names_documented_overrides_and_public_methods_pass() -> None:
    assert collisions(Fine) == []
    assert "multithread" in OVERRIDABLE


def test_the_shipped_bases_are_not_flagged_against_each_other() -> None:
    # HttpConnection is not a worker, but the check works on any class: corral's own are skipped.
    assert collisions(HttpConnection) == []
