"""The public API for worker plugins: the one corral module a plugin imports.

A worker plugin (ours under plugins/, or a third party's) imports from here
and from :mod:`corral.hookspecs`, nothing else of corral's; tests may also use
the kit, :mod:`corral.testing`. Everything named in ``__all__`` is kept
stable within a major :data:`PLUGIN_API`; everything else in corral may
change in any release. ``tests/test_public_api.py`` fails when a plugin or
an example reaches past this module, or names a private attribute of core.

What is here, by what a worker does:

- declare itself: :data:`hookimpl`, :class:`WorkerSpec`, settings
  (:class:`Setting`, :class:`SettingsRegistry`, :func:`seconds`), :class:`Config`;
- be a worker process: :class:`Worker` (signals, heartbeat, the wake pipe
  :attr:`Worker.wake_fd`, retirement, ``in_flight``), :class:`AsyncioWorker`,
  :class:`RequestWatchdog`, :class:`IdleTrim`;
- run a loop: :class:`SelectorLoopWorker` (a complete worker: a selector
  loop that accepts, waits for heads, times out and retires, and runs
  requests where :meth:`~SelectorLoopWorker.dispatch` says), its
  :class:`SelectorLoop` and :class:`LoopConnection`, and
  :class:`RequestThreads`, the request thread pool;
- accept: :func:`acceptor` (an accept that returns None when another
  worker took the connection), :data:`ACCEPT_RESOURCE_ERRNOS`;
- serve a connection: :class:`HttpConnection`, the request cycle, over a
  :class:`Transport` (:class:`SocketTransport` for an OS socket, whose
  ``wait`` a cooperative framework replaces; :class:`ThreadBridge` for a
  request in a pool thread of an event loop), :class:`AsyncHttpConnection`
  with a :class:`Responder`, and :class:`WsgiThreadResponder`;
  :class:`ClientTimeout`, ``RECV_SIZE``;
- run the steps around the app that every request goes through:
  :mod:`corral.serve.cycle` (:func:`before_app`, :func:`after_response`,
  :func:`keeps_connection`);
- wait and retire by the one policy: :mod:`corral.serve.waits`
  (:func:`first_byte_deadline`, :func:`head_wait_timed_out`,
  :func:`body_wait_timed_out`, :class:`HeadWait`, :class:`Drain`) and
  :mod:`corral.serve.retirement` (:func:`next_request_deadline`,
  :func:`closing_for_good` and :func:`queued_connections` for a shutdown's
  listen queue, its constants);
- balance accepts across a pool's workers: :class:`AcceptBalance` (as
  ``Worker.balance``);
- speak HTTP with core's parser and response writer (for a worker with
  an I/O model of its own, or one that answers in its own framework, as
  the tornado plugin does): :class:`RequestParser`, :class:`ParserLimits`,
  :class:`RequestHead`, :class:`EndOfMessage`, the parser signals,
  :mod:`errors`, :func:`build_environ`, :class:`EnvironContext`,
  :func:`partial_environ` and :func:`builds_alone` (only the keys an
  access log format reads, for a class with no WSGI environ of its own),
  :class:`Body`, :class:`Response`, :func:`error_response`;
- operate the server from the arbiter (the operations plugins): the live
  counters, :class:`StatsTable` (``server.stats[pool]``), :class:`Snapshot`,
  :class:`WorkerStats` (``Worker.stats``), :data:`LATENCY_BUCKETS`, and for
  settings of a plugin's own the validators :func:`parse_address`,
  :func:`boolean`, :func:`octal_mode`, :func:`seconds`, :func:`uint` and
  :func:`choice`;
- serve another kind of app (the asgi plugin): :func:`is_asgi_app`, and
  :data:`APP_LOAD_ERROR`, the exit status that makes the arbiter stop
  instead of respawning a worker whose app cannot start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from corral import PLUGIN_API, hookimpl

#: Where each name lives. Imported on first use (PEP 562), so a plugin
#: module loaded in the arbiter (``from corral.api import WorkerSpec,
#: hookimpl``) does not import the serving machinery, asyncio included,
#: into a process that never serves. The static imports below say the same
#: to type checkers; tests/test_public_api.py checks the two agree.
_EXPORTS: dict[str, str] = {
    "Config": "corral.config",
    "ConfigError": "corral.errors",
    "errors": "corral.http",
    "HTTPError": "corral.http.errors",
    "CONNECTION_CLOSED": "corral.http.parser",
    "NEED_DATA": "corral.http.parser",
    "ClientDisconnected": "corral.http.parser",
    "EndOfMessage": "corral.http.parser",
    "ParserSignal": "corral.http.parser",
    "RequestHead": "corral.http.parser",
    "WorkerSpec": "corral.plugins",
    "CLOSE_LINGER": "corral.serve.retirement",
    "CLOSE_LINGER_BYTES": "corral.serve.retirement",
    "FIRST_REQUEST_GRACE": "corral.serve.retirement",
    "InFlight": "corral.serve.retirement",
    "closing_for_good": "corral.serve.retirement",
    "next_request_deadline": "corral.serve.retirement",
    "queued_connections": "corral.serve.retirement",
    "RequestThreads": "corral.serve.threads",
    "Setting": "corral.settings",
    "SettingsRegistry": "corral.settings",
    "seconds": "corral.settings",
    "ACCEPT_RESOURCE_ERRNOS": "corral.sockets",
    "Acceptor": "corral.sockets",
    "acceptor": "corral.sockets",
    "AsyncHttpConnection": "corral.workers.asyncio_connection",
    "Responder": "corral.workers.asyncio_connection",
    "WsgiThreadResponder": "corral.workers.asyncio_connection",
    "AsyncioWorker": "corral.workers.asyncio_worker",
    "Worker": "corral.workers.base",
    "RECV_SIZE": "corral.serve.transport",
    "ClientTimeout": "corral.serve.transport",
    "SocketTransport": "corral.serve.transport",
    "Transport": "corral.serve.transport",
    "ThreadBridge": "corral.workers.asyncio_connection",
    "HttpConnection": "corral.workers.connection",
    "LoopConnection": "corral.workers.loop_connection",
    "IdleTrim": "corral.workers.memory",
    "SelectorLoop": "corral.workers.selector_loop",
    "SelectorLoopWorker": "corral.workers.selector_loop",
    "RequestWatchdog": "corral.workers.watchdog",
    "EnvironContext": "corral.wsgi.environ",
    "forwarded_secure": "corral.wsgi.environ",
    "CONTINUE_100": "corral.wsgi.response",
    "Response": "corral.wsgi.response",
    "ResponseError": "corral.wsgi.response",
    "internal_error_response": "corral.wsgi.response",
    "RequestParser": "corral.http.parser",
    "ParserLimits": "corral.http.parser",
    "Body": "corral.wsgi.body",
    "EMPTY_BODY": "corral.wsgi.body",
    "build_environ": "corral.wsgi.environ",
    "partial_environ": "corral.wsgi.environ",
    "builds_alone": "corral.wsgi.environ",
    "error_response": "corral.wsgi.response",
    "AcceptBalance": "corral.workers.balance",
    "Drain": "corral.serve.waits",
    "HeadWait": "corral.serve.waits",
    "first_byte_deadline": "corral.serve.waits",
    "head_wait_timed_out": "corral.serve.waits",
    "body_wait_timed_out": "corral.serve.waits",
    "after_response": "corral.serve.cycle",
    "before_app": "corral.serve.cycle",
    "keeps_connection": "corral.serve.cycle",
    "Listener": "corral.sockets",
    "boolean": "corral.settings",
    "octal_mode": "corral.settings",
    "uint": "corral.settings",
    "choice": "corral.settings",
    "is_asgi_app": "corral.app",
    "APP_LOAD_ERROR": "corral.workers.base",
    "format_stacks": "corral.workers.base",
    "LATENCY_BUCKETS": "corral.stats",
    "Snapshot": "corral.stats",
    "StatsTable": "corral.stats",
    "WorkerStats": "corral.stats",
    "parse_address": "corral.addresses",
}

if TYPE_CHECKING:
    from corral.addresses import parse_address
    from corral.app import is_asgi_app
    from corral.config import Config
    from corral.errors import ConfigError
    from corral.http import errors
    from corral.http.errors import HTTPError
    from corral.http.parser import (
        CONNECTION_CLOSED,
        NEED_DATA,
        ClientDisconnected,
        EndOfMessage,
        ParserLimits,
        ParserSignal,
        RequestHead,
        RequestParser,
    )
    from corral.plugins import WorkerSpec
    from corral.serve.cycle import after_response, before_app, keeps_connection
    from corral.serve.retirement import (
        CLOSE_LINGER,
        CLOSE_LINGER_BYTES,
        FIRST_REQUEST_GRACE,
        InFlight,
        closing_for_good,
        next_request_deadline,
        queued_connections,
    )
    from corral.serve.threads import RequestThreads
    from corral.serve.transport import RECV_SIZE, ClientTimeout, SocketTransport, Transport
    from corral.serve.waits import (
        Drain,
        HeadWait,
        body_wait_timed_out,
        first_byte_deadline,
        head_wait_timed_out,
    )
    from corral.settings import Setting, SettingsRegistry, boolean, choice, octal_mode, seconds, uint
    from corral.sockets import ACCEPT_RESOURCE_ERRNOS, Acceptor, Listener, acceptor
    from corral.stats import LATENCY_BUCKETS, Snapshot, StatsTable, WorkerStats
    from corral.workers.asyncio_connection import (
        AsyncHttpConnection,
        Responder,
        ThreadBridge,
        WsgiThreadResponder,
    )
    from corral.workers.asyncio_worker import AsyncioWorker
    from corral.workers.balance import AcceptBalance
    from corral.workers.base import APP_LOAD_ERROR, Worker, format_stacks
    from corral.workers.connection import HttpConnection
    from corral.workers.loop_connection import LoopConnection
    from corral.workers.memory import IdleTrim
    from corral.workers.selector_loop import SelectorLoop, SelectorLoopWorker
    from corral.workers.watchdog import RequestWatchdog
    from corral.wsgi.body import EMPTY_BODY, Body
    from corral.wsgi.environ import (
        EnvironContext,
        build_environ,
        builds_alone,
        forwarded_secure,
        partial_environ,
    )
    from corral.wsgi.response import (
        CONTINUE_100,
        Response,
        ResponseError,
        error_response,
        internal_error_response,
    )

    #: One event of the request parser: a head, body bytes, the end of a message, or a signal.
    ParserEvent = RequestHead | bytes | EndOfMessage | ParserSignal


def __getattr__(name: str) -> Any:
    if name == "ParserEvent":
        from corral.http.parser import EndOfMessage, ParserSignal, RequestHead

        value: Any = RequestHead | bytes | EndOfMessage | ParserSignal
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'corral.api' has no attribute {name!r}")
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ACCEPT_RESOURCE_ERRNOS",
    "APP_LOAD_ERROR",
    "CLOSE_LINGER",
    "CLOSE_LINGER_BYTES",
    "CONNECTION_CLOSED",
    "CONTINUE_100",
    "EMPTY_BODY",
    "FIRST_REQUEST_GRACE",
    "LATENCY_BUCKETS",
    "NEED_DATA",
    "PLUGIN_API",
    "RECV_SIZE",
    "AcceptBalance",
    "Acceptor",
    "AsyncHttpConnection",
    "AsyncioWorker",
    "Body",
    "ClientDisconnected",
    "ClientTimeout",
    "Config",
    "ConfigError",
    "Drain",
    "EndOfMessage",
    "EnvironContext",
    "HTTPError",
    "HeadWait",
    "HttpConnection",
    "IdleTrim",
    "InFlight",
    "Listener",
    "LoopConnection",
    "ParserEvent",
    "ParserLimits",
    "ParserSignal",
    "RequestHead",
    "RequestParser",
    "RequestThreads",
    "RequestWatchdog",
    "Responder",
    "Response",
    "ResponseError",
    "SelectorLoop",
    "SelectorLoopWorker",
    "Setting",
    "SettingsRegistry",
    "Snapshot",
    "SocketTransport",
    "StatsTable",
    "ThreadBridge",
    "Transport",
    "Worker",
    "WorkerSpec",
    "WorkerStats",
    "WsgiThreadResponder",
    "acceptor",
    "after_response",
    "before_app",
    "body_wait_timed_out",
    "boolean",
    "build_environ",
    "builds_alone",
    "choice",
    "closing_for_good",
    "error_response",
    "errors",
    "first_byte_deadline",
    "format_stacks",
    "forwarded_secure",
    "head_wait_timed_out",
    "hookimpl",
    "internal_error_response",
    "is_asgi_app",
    "keeps_connection",
    "next_request_deadline",
    "octal_mode",
    "parse_address",
    "partial_environ",
    "queued_connections",
    "seconds",
    "uint",
]
