"""The objects a gunicorn-style hook receives, with gunicorn's attribute names.

A config file's ``pre_request(worker, req)`` was written against gunicorn's
objects: ``req.uri``, ``resp.sent``, ``server.num_workers``, ``worker.tmp``.
corral's own objects have other names for the same things, so each hook
from a config file (corral.confighooks) gets a thin view: gunicorn's names
where gunicorn has them, and everything corral's object has besides. Plugin
hooks get corral's objects unwrapped; the views cost only the hooks that
use them.
"""

from __future__ import annotations

from typing import Any

from corral.addresses import parse_address


class _View:
    """Delegates every other attribute to the wrapped object (reads and writes)."""

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __repr__(self) -> str:
        return f"<gunicorn view of {self._target!r}>"


class RequestView(_View):
    """``req``: corral's RequestHead (method, path, query, headers, target, ...)."""

    __slots__ = ()

    @property
    def _environ(self) -> dict[str, Any]:
        return getattr(self._target, "environ", None) or {}

    @property
    def uri(self) -> str:
        return str(self._target.target)

    @property
    def fragment(self) -> str:
        return ""  # a request target never carries one on the wire

    @property
    def remote_addr(self) -> Any:
        env = self._environ
        port = env.get("REMOTE_PORT")
        host = env.get("REMOTE_ADDR")
        return (host, int(port)) if host and port and str(port).isdigit() else host

    peer_addr = remote_addr

    @property
    def scheme(self) -> str:
        return str(self._environ.get("wsgi.url_scheme", "http"))

    @property
    def body(self) -> Any:
        return self._environ.get("wsgi.input")


class ResponseView(_View):
    """``resp``: corral's Response (status, status_code, headers, bytes_sent, ...)."""

    __slots__ = ()

    @property
    def sent(self) -> int:
        return int(self._target.bytes_sent)

    @property
    def response_length(self) -> int | None:
        length: int | None = self._target.content_length
        return length


class ConfigView(_View):
    """``cfg``: corral's Config (every setting by name)."""

    __slots__ = ()

    @property
    def worker_class_str(self) -> str:
        return str(self._target.worker_class)

    @property
    def address(self) -> list[Any]:
        return [parse_address(b) for b in self._target.bind]


class _App:
    """``server.app`` / ``worker.app``: gunicorn's Application, as far as hooks use it."""

    def __init__(self, cfg: Any, wsgi: Any = None) -> None:
        self.cfg = cfg
        self.callable = wsgi

    def wsgi(self) -> Any:
        return self.callable


class _WithConfig(_View):
    __slots__ = ()

    @property
    def cfg(self) -> ConfigView:
        return ConfigView(self._target.cfg)


class ArbiterView(_WithConfig):
    """``server``: corral's Arbiter (cfg, pools, workers, pid, log, ...)."""

    __slots__ = ()

    @property
    def num_workers(self) -> int:
        return sum(pool.size for pool in self._target.pools)

    @property
    def WORKERS(self) -> dict[int, Any]:
        return dict(self._target.workers)

    @property
    def LISTENERS(self) -> list[Any]:
        return [lst.sock for pool in self._target.pools for lst in pool.listeners]

    @property
    def app(self) -> _App:
        return _App(self.cfg)

    @property
    def proc_name(self) -> str | None:
        name: str | None = self._target.cfg.proc_name
        return name


class WorkerView(_WithConfig):
    """``worker``: corral's Worker in a worker process, or its WorkerHandle in the arbiter."""

    __slots__ = ()

    @property
    def sockets(self) -> list[Any]:
        return [lst.sock for lst in getattr(self._target, "listeners", [])]

    @property
    def app(self) -> _App:
        return _App(self.cfg, getattr(self._target, "wsgi", None))

    @property
    def timeout(self) -> float:
        return float(self._target.cfg.timeout)

    @property
    def tmp(self) -> Any:
        return self._target.heartbeat  # gunicorn's WorkerTmp: notify(), as corral's Heartbeat


#: Which view each hook argument gets.
VIEWS: dict[str, type[_View]] = {
    "server": ArbiterView, "worker": WorkerView, "req": RequestView, "resp": ResponseView,
    "config": ConfigView,
}
