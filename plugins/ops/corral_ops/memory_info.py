"""A process's memory as the kernel reports it: RSS, PSS or USS, in bytes.

RSS (resident set) counts every page a worker maps, shared ones included,
so N workers forked from one arbiter add up to more than the machine holds.
PSS splits each shared page among its sharers; USS counts what the worker
holds alone (what it would give back on exit). RSS is one small read of
/proc/PID/statm; PSS and USS need /proc/PID/smaps_rollup, which the kernel
computes by walking the process's page tables (a few ms for a large worker).
"""

from __future__ import annotations

import os
from typing import Final

KINDS: Final = ("rss", "pss", "uss")
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


def memory(pid: int, kind: str = "rss") -> int | None:
    """Bytes of ``kind`` for ``pid``; None if the process is gone or /proc cannot say."""
    try:
        if kind == "rss":
            with open(f"/proc/{pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE
        fields: dict[bytes, int] = {}
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                name, _, rest = line.partition(b":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[name] = int(parts[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    if kind == "pss":
        return fields.get(b"Pss")
    return fields.get(b"Private_Clean", 0) + fields.get(b"Private_Dirty", 0)
