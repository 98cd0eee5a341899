"""Pools: sets of workers of one class with their own settings.

A deployment with no pools declared has exactly one pool, "main", built from
the top-level settings. The arbiter manages a list of pools and assumes
nothing about how many there are or which classes they run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.config import Config
    from corral.heartbeat import Heartbeat
    from corral.plugins import WorkerSpec
    from corral.sockets import Listener


@dataclass
class Pool:
    name: str
    spec: WorkerSpec
    size: int
    cfg: Config
    app_uri: str
    listeners: list[Listener] = field(default_factory=list)
    #: The addresses this pool accepts on (its own binds or the deployment's).
    addresses: list[str] = field(default_factory=list)
    #: The app imported in the arbiter when this pool preloads.
    preloaded_app: Any = None


@dataclass
class WorkerHandle:
    """The arbiter's record of one worker process (also what arbiter hooks get)."""

    pid: int
    age: int
    pool: Pool
    heartbeat: Heartbeat
    generation: int
    booted: bool = False
    retiring: bool = False
    #: time.monotonic() when SIGABRT was sent for a missed heartbeat.
    aborted_at: float | None = None
    #: time.monotonic() when SIGTERM was sent for a graceful retirement.
    retired_at: float | None = None

    @property
    def worker_class(self) -> str:
        return self.pool.spec.name


def cpu_count() -> int:
    """CPUs this process may use (affinity-aware); the container quota comes later."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: Settings a pool may override. Everything else applies to the whole deployment.
POOL_KEYS = frozenset({
    "worker_class", "workers", "threads", "worker_connections", "timeout", "graceful_timeout",
    "keepalive", "max_requests", "max_requests_jitter", "bind", "wsgi_app", "preload_app",
    "limit_request_line", "limit_request_fields", "limit_request_field_size", "limit_request_body",
    "header_timeout", "permit_obsolete_folding", "header_map", "forwarded_allow_ips",
    "secure_scheme_headers", "proxy_protocol", "proxy_allow_ips", "script_name",
    "worker_tmp_dir", "accesslog", "access_log_format", "reload",
})
_POOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


def parse_pool_flag(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:CLASS:COUNT[@BIND[,BIND...]]`` -> (name, overrides); ValueError explains the form."""
    form = "use NAME:CLASS:COUNT[@BIND,...], e.g. web:gthread:4@127.0.0.1:8001"
    spec, _, binds = text.partition("@")
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"{text!r}: {form}")
    name, worker_class, count = parts
    if not _POOL_NAME.fullmatch(name):
        raise ValueError(f"{text!r}: pool names are letters, digits, '-' and '_', starting with a letter")
    if not worker_class:
        raise ValueError(f"{text!r}: no worker class; {form}")
    overrides: dict[str, Any] = {"worker_class": worker_class, "workers": count}
    if binds:
        overrides["bind"] = [b for b in binds.split(",") if b]
    return name, overrides


def pools_setting(value: Any) -> dict[str, dict[str, Any]]:
    """Validator of the ``pools`` setting: a dict of name -> overrides, a list of
    dicts with a "name", or (command line) a list of ``--pool`` strings."""
    if value is None:
        return {}
    items = [value] if isinstance(value, str) else value
    pools: dict[str, dict[str, Any]] = {}
    if isinstance(items, dict):
        for name, overrides in items.items():
            if not isinstance(name, str) or not _POOL_NAME.fullmatch(name):
                raise ValueError(f"invalid pool name {name!r}")
            if not isinstance(overrides, dict):
                raise ValueError(f"pool {name!r}: expected a dict of settings")
            pools[name] = dict(overrides)
        return pools
    if not isinstance(items, list | tuple):
        raise ValueError("expected a dict of pool name to settings")
    for item in items:
        if isinstance(item, str):
            name, overrides = parse_pool_flag(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            overrides = dict(item)
            name = overrides.pop("name")
        else:
            raise ValueError(f"pool {item!r}: expected NAME:CLASS:COUNT[@BIND,...] or a dict with a name")
        if name in pools:
            raise ValueError(f"pool {name!r} is declared twice")
        pools[name] = overrides
    return pools
