"""The tornado worker: one asyncio/tornado IOLoop per process, many connections on it.

What APP_MODULE points at decides how requests run:

- a tornado ``HTTPServerConnectionDelegate`` (a ``tornado.web.Application``
  is one) runs natively on the loop, through
  :class:`corral_tornado.native.TornadoResponder`;
- anything else is a WSGI app, run in a bounded thread pool
  (:class:`corral.workers.asyncio_connection.WsgiThreadResponder`) so that a
  slow request never stalls the loop. The pool has ``--threads`` threads
  when that is above 1, else ten
  (:data:`corral.workers.asyncio_worker.DEFAULT_WSGI_THREADS`).

Either way corral's parser reads every request and corral answers protocol
errors, so the wire behaviour is that of every other worker class.

The loop, accepting, TLS, the heartbeat and the graceful stop are those of
:class:`corral.workers.asyncio_worker.AsyncioWorker`, which this class
extends only with the choice above. For a native app the heartbeat is the
loop's own timer: a handler that blocks the loop stops it, and the arbiter
replaces the worker after ``--timeout``.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TypeGuard

from corral.api import AsyncioWorker, Responder

if TYPE_CHECKING:  # the worker imports tornado only for a tornado app (see _is_tornado_app)
    from tornado.httputil import HTTPServerConnectionDelegate


class TornadoWorker(AsyncioWorker):
    def make_responder(self) -> Responder:
        app = self.wsgi
        if _is_tornado_app(app):
            self.log.info("Serving %r as a native tornado app", self.pool.app_uri)
            _route_tornado_logs()
            from corral_tornado.native import TornadoResponder

            return TornadoResponder(self, app)
        return super().make_responder()


def _is_tornado_app(app: object) -> TypeGuard[HTTPServerConnectionDelegate]:
    """Whether APP_MODULE is a tornado ``HTTPServerConnectionDelegate`` (an Application is one).

    An app of that kind was built from tornado's modules, so they are loaded
    by now; when they are not, the app is a WSGI app and tornado stays out of
    the worker: a WSGI app runs on asyncio and corral's thread pool alone, and
    importing tornado only to answer "no" cost each worker about 1 MiB.
    """
    httputil = sys.modules.get("tornado.httputil")
    return httputil is not None and isinstance(app, httputil.HTTPServerConnectionDelegate)


def _route_tornado_logs() -> None:
    """Send tornado's error logs to corral's error log unless the app set up logging.

    tornado logs handler exceptions on ``tornado.application`` and connection
    trouble on ``tornado.general``. Its per-request ``tornado.access`` lines
    are left alone: corral has its own access log (--access-logfile).
    """
    if logging.getLogger().handlers or logging.getLogger("tornado").handlers:
        return
    corral_handlers = logging.getLogger("corral").handlers
    for name in ("tornado.application", "tornado.general"):
        logger = logging.getLogger(name)
        for handler in corral_handlers:
            logger.addHandler(handler)
        logger.propagate = False
    # Without a handler anywhere, Python's last-resort handler would print
    # tornado's 4xx/5xx access warnings to stderr.
    access = logging.getLogger("tornado.access")
    access.addHandler(logging.NullHandler())
    access.propagate = False
