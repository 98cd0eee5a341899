"""Building the PEP 3333 environ for one request from a validated head."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from corral import __version__
from corral.http import errors as E
from corral.http.parser import RequestHead
from corral.wsgi.filewrapper import FileWrapper

#: Header-name -> environ-key translations are cached; the cache is bounded
#: so that a client sending endless novel names cannot grow it without end.
_KEY_CACHE_MAX = 1024
_key_cache: dict[str, str] = {}
#: Host field -> (SERVER_NAME, SERVER_PORT); the same few hosts come again and again.
_host_cache: dict[str, tuple[str, str]] = {}

#: gunicorn's default secure_scheme_headers.
DEFAULT_SECURE_SCHEME_HEADERS = {
    "X-FORWARDED-PROTOCOL": "ssl",
    "X-FORWARDED-PROTO": "https",
    "X-FORWARDED-SSL": "on",
}


def environ_key(name: str) -> str:
    key = _key_cache.get(name)
    if key is None:
        key = "HTTP_" + name.upper().replace("-", "_")
        if key == "HTTP_CONTENT_TYPE":
            key = "CONTENT_TYPE"
        elif key == "HTTP_CONTENT_LENGTH":
            key = "CONTENT_LENGTH"
        if len(_key_cache) < _KEY_CACHE_MAX:
            _key_cache[name] = key
    return key


class TrustedPeers:
    """Which peers may set the scheme through proxy headers (forwarded_allow_ips)."""

    def __init__(self, spec: Iterable[str]) -> None:
        items = [s.strip() for s in spec if s.strip()]
        self.any = "*" in items
        self.networks = [ipaddress.ip_network(s, strict=False) for s in items if s != "*"]
        self._cache: dict[str, bool] = {}

    def __contains__(self, addr: str) -> bool:
        if self.any:
            return True
        hit = self._cache.get(addr)
        if hit is None:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                hit = False
            else:
                hit = any(ip in net for net in self.networks)
            if len(self._cache) < _KEY_CACHE_MAX:
                self._cache[addr] = hit
        return hit


@dataclass
class EnvironContext:
    """What a worker knows once about every request on one listener."""

    server_name: str
    server_port: str
    url_scheme: str = "http"
    script_name: str = ""
    multithread: bool = False
    multiprocess: bool = True
    errors: Any = None
    trusted: TrustedPeers = field(default_factory=lambda: TrustedPeers(["127.0.0.1", "::1"]))
    secure_scheme_headers: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_SECURE_SCHEME_HEADERS)
    )
    #: Extra keys every environ of this worker carries (corral.pool, corral.worker_class).
    extra: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(init=False)
    _scheme_keys: list[tuple[str, str]] = field(init=False)
    _scheme_key_set: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        # The prepared base dict: one copy per request instead of a dozen stores.
        self.base = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": self.url_scheme,
            "wsgi.errors": self.errors if self.errors is not None else sys.stderr,
            "wsgi.multithread": self.multithread,
            "wsgi.multiprocess": self.multiprocess,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": f"corral/{__version__}",
            "SCRIPT_NAME": self.script_name,
            "SERVER_NAME": self.server_name,
            "SERVER_PORT": self.server_port,
            **self.extra,
        }
        self._scheme_keys = [
            (environ_key(name), value.lower()) for name, value in self.secure_scheme_headers.items()
        ]
        self._scheme_key_set = frozenset(key for key, _ in self._scheme_keys)


def _split_host(host: str, scheme: str) -> tuple[str, str]:
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, port or ("443" if scheme == "https" else "80")


def _joined(key: str, old: str, value: str) -> str:
    """A repeated field's values in one environ key (RFC 9110 5.3; Cookie's own separator)."""
    return f"{old}; {value}" if key == "HTTP_COOKIE" else f"{old},{value}"


def build_environ(
    head: RequestHead,
    ctx: EnvironContext,
    body: Any,
    peer: tuple[str, int] | str | None,
    client: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """The environ for ``head``. Raises BadRequest for conflicting scheme headers.

    :param peer: the socket's peer; it decides whether proxy headers are trusted.
    :param client: the client named by a PROXY protocol header, for REMOTE_ADDR.
    """
    environ = ctx.base.copy()
    environ["REQUEST_METHOD"] = head.method
    environ["RAW_URI"] = head.target
    environ["QUERY_STRING"] = head.query
    environ["SERVER_PROTOCOL"] = head.version
    environ["wsgi.input"] = body

    path = head.path
    if "%" in path:
        path = unquote_to_bytes(path).decode("latin-1")
    script_name = ctx.script_name
    if script_name and path.startswith(script_name):
        path = path[len(script_name) :]
    environ["PATH_INFO"] = path

    keys = _key_cache
    for name, value in head.headers:
        key = keys.get(name) or environ_key(name)
        if key in environ and key[:5] == "HTTP_":
            value = _joined(key, environ[key], value)
        environ[key] = value
    host = head.host
    if host is not None:
        environ["HTTP_HOST"] = host
        if host:
            split = _host_cache.get(host)
            if split is None:
                split = _split_host(host, ctx.url_scheme)
                if len(_host_cache) < _KEY_CACHE_MAX:
                    _host_cache[host] = split
            environ["SERVER_NAME"], environ["SERVER_PORT"] = split

    if isinstance(peer, tuple):
        remote = client or peer
        environ["REMOTE_ADDR"] = remote[0]
        environ["REMOTE_PORT"] = str(remote[1])
    else:
        environ["REMOTE_ADDR"] = client[0] if client else ""
        environ["REMOTE_PORT"] = str(client[1]) if client else ""
    # Most requests carry none of the scheme headers: one set operation in
    # C says so before the peer's trust is looked up.
    if not ctx._scheme_key_set.isdisjoint(environ) and (
            # A unix-socket peer is a local process allowed by the socket's mode.
            not isinstance(peer, tuple) or peer[0] in ctx.trusted):
        secure = forwarded_secure(ctx._scheme_keys, environ.get)
        if secure is not None:
            environ["wsgi.url_scheme"] = "https" if secure else "http"
    return environ


#: Keys partial_environ() builds on their own; any other key (wsgi.url_scheme,
#: SERVER_NAME, ...) depends on more of the request, so asking for it builds
#: the whole environ.
PARTIAL_KEYS: Final = frozenset({"REMOTE_ADDR", "REMOTE_PORT", "PATH_INFO", "REQUEST_METHOD", "QUERY_STRING",
                          "RAW_URI", "SERVER_PROTOCOL", "CONTENT_TYPE", "CONTENT_LENGTH"})


def builds_alone(keys: Iterable[str]) -> bool:
    """Whether partial_environ() can build these keys (HTTP_* fields and PARTIAL_KEYS)."""
    return all(k[:5] == "HTTP_" or k in PARTIAL_KEYS for k in keys)


def partial_environ(
    head: RequestHead,
    ctx: EnvironContext,
    peer: tuple[str, int] | str | None,
    keys: frozenset[str],
    client: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """Those of ``keys`` that build_environ() would set, with the same values
    (and perhaps a neighbour: REMOTE_PORT comes with REMOTE_ADDR).

    For a class that serves no WSGI app (asgi) but has an access log to
    write: the log's format reads a few keys (gunicorn's default: four), and
    building the whole environ for them cost 0.9 us a request. The caller
    checks once that builds_alone(keys); the other keys depend on more of
    the request (the scheme headers, the Host), so asking for one of them
    means building the whole environ.
    """
    # The REMOTE_* and PATH_INFO steps mirror build_environ's, written out
    # there so the WSGI hot path makes no call for them; the property test
    # (tests/http/test_partial_environ.py) keeps the two in step.
    plan = _plans.get(keys) or _plan(keys)
    remote, path_info, simple = plan
    environ: dict[str, Any] = {}
    if remote:
        if isinstance(peer, tuple):
            addr = client or peer
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
        else:
            environ["REMOTE_ADDR"] = client[0] if client else ""
            environ["REMOTE_PORT"] = str(client[1]) if client else ""
    if path_info:
        path = head.path
        if "%" in path:
            path = unquote_to_bytes(path).decode("latin-1")
        if ctx.script_name and path.startswith(ctx.script_name):
            path = path[len(ctx.script_name) :]
        environ["PATH_INFO"] = path
    for key, attr in simple:
        environ[key] = getattr(head, attr)
    cache = _key_cache
    for name, value in head.headers:
        key = cache.get(name) or environ_key(name)
        if key in keys:
            if key in environ and key[:5] == "HTTP_":
                value = _joined(key, environ[key], value)
            environ[key] = value
    if "HTTP_HOST" in keys and head.host is not None:
        environ["HTTP_HOST"] = head.host
    return environ


#: The head attribute behind each of the keys that is one.
_HEAD_KEYS: Final = {"REQUEST_METHOD": "method", "QUERY_STRING": "query", "RAW_URI": "target",
                     "SERVER_PROTOCOL": "version"}
#: keys -> (REMOTE_* wanted, PATH_INFO wanted, [(key, head attribute)]): decided once per key set.
_plans: dict[frozenset[str], tuple[bool, bool, list[tuple[str, str]]]] = {}


def _plan(keys: frozenset[str]) -> tuple[bool, bool, list[tuple[str, str]]]:
    plan = (bool(keys & {"REMOTE_ADDR", "REMOTE_PORT"}), "PATH_INFO" in keys,
            [(k, a) for k, a in _HEAD_KEYS.items() if k in keys])
    if len(_plans) < 64:  # a worker has one access log format, so one key set
        _plans[keys] = plan
    return plan


def forwarded_secure(
    pairs: Iterable[tuple[str, str]], lookup: Callable[[str], str | None]
) -> bool | None:
    """What trusted secure_scheme_headers say: True (https), False (http), None (silent).

    :param pairs: (field or environ key, lowercased value meaning https).
    :param lookup: finds a field's value by the first element of a pair.
    :raises BadRequest: when two of the headers disagree.
    """
    secure: bool | None = None
    for key, wanted in pairs:
        got = lookup(key)
        if got is None:
            continue
        this = got.lower() == wanted
        if secure is not None and secure != this:
            raise E.BadRequest("conflicting secure scheme headers")
        secure = this
    return secure
