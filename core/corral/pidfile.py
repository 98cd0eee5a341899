"""The arbiter's pidfile, across upgrades.

During a USR2 upgrade two arbiters run at once. The new one writes
``PIDFILE.2`` (the old one still owns the real name) and renames it over
the real name once the old arbiter is gone; if the new one dies first, the
old one writes its own pid back. Writes go through a temporary file and a
rename, so a reader never sees a half-written pid. An arbiter removes the
file on exit only if it still holds its own pid.
"""

from __future__ import annotations

import contextlib
import os


class Pidfile:
    """The file (if any) this arbiter's pid was written to."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        #: Where the pid was written; None until then, or without --pidfile.
        self.path: str | None = None

    def write(self, configured: str | None, *, upgrading: bool) -> None:
        """Write the pid to ``configured`` (``configured.2`` while an old arbiter still runs)."""
        if not configured:
            return
        path = configured + ".2" if upgrading else configured
        self._rewrite(path)
        self.path = path

    def restore(self) -> None:
        """Write the pid again if the file now holds another (a failed upgrade wrote its own)."""
        if self.path and self._holds_this_pid() is False:
            self._rewrite(self.path)

    def take_over(self, configured: str | None) -> None:
        """An upgraded arbiter whose parent is gone: move ``PIDFILE.2`` to the real name."""
        if self.path and configured:
            with contextlib.suppress(OSError):
                os.rename(self.path, configured)
            self.path = configured

    def remove(self) -> None:
        """Remove the file if it still holds this arbiter's pid."""
        if self.path and self._holds_this_pid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _holds_this_pid(self) -> bool | None:
        """Whether the file holds this arbiter's pid; None when it cannot be read."""
        assert self.path
        try:
            with open(self.path) as f:
                return f.read().strip() == str(self.pid)
        except OSError:
            return None

    def _rewrite(self, path: str) -> None:
        tmp = f"{path}.{self.pid}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{self.pid}\n")
        os.rename(tmp, path)
