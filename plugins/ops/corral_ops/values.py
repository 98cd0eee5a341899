"""Validators for the operations plugins' settings (each raises ValueError with what it expects)."""

from __future__ import annotations

import re
from typing import Any

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_UNITS = {"": 1 << 20, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def optional_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def memory_size(value: Any) -> int:
    """Bytes from 512 (MiB, as granian's --workers-max-rss), "512M", "1.5G", "300MiB"; 0 is off."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected a size of 0 or more, got {value}")
        return value << 20
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m is not None:
            unit = (m.group(2) or "").lower()[:1]
            return int(float(m.group(1)) * _UNITS[unit])
    raise ValueError(f"expected a size such as 512 (MiB), 512M or 1.5G, got {value!r}")


def count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"expected a whole number of 1 or more, got {value!r}")


def interval(value: Any) -> float:
    try:
        n = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        n = -1.0
    if n <= 0:
        raise ValueError(f"expected a number of seconds above 0, got {value!r}")
    return n


def memory_kind(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in ("rss", "pss", "uss"):
        return value.strip().lower()
    raise ValueError(f"expected rss, pss or uss, got {value!r}")
