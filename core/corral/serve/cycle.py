"""The parts of a request's cycle that do not depend on who runs the app: once, for every class.

A request is answered by corral's WSGI path (:meth:`HttpConnection.handle
<corral.workers.connection.HttpConnection.handle>`, on every class, in a
thread or not) or by a framework of a class's own (the tornado class's
native handlers). Both go through the same steps around the app, and those
steps live here so that they cannot differ:

1. the request is registered as in flight (``worker.in_flight``), for the
   graceful-timeout report, and the ``pre_request`` hook runs
   (:func:`before_app`, which hands hooks the environ through the head);
2. whoever runs the app answers it;
3. the request is done (``worker.request_done()``: the count that
   ``--max-requests`` watches), whatever happened;
4. once a response went out, ``post_request`` runs and the access log gets
   its line, both with a WSGI environ (:func:`after_response`);
5. the connection is kept only if the response offered keep-alive and the
   client is not left waiting to send a body it was told to hold
   (:func:`keeps_connection`); the caller then drains the unread body
   (:class:`corral.serve.waits.Drain`).

The in-flight record and step 3 are two dict operations and a method call,
written out where a request is handled (a function call per request would
cost more than they do); the hooks and steps 4 and 5 are the functions
below, called only when a hook or the access log is on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.http.parser import RequestHead
    from corral.workers.base import Worker
    from corral.wsgi.response import Response


def before_app(worker: Worker, head: RequestHead, environ: dict[str, Any]) -> None:
    """Step 2: ``pre_request``, with the environ on the head for hooks that want the peer or scheme.

    A failing hook fails the request (500): it runs where the app would.
    """
    if worker.pre_request is not None:
        head.environ = environ
        worker.pre_request(worker=worker, req=head)


def after_response(worker: Worker, head: RequestHead, environ: dict[str, Any], resp: Response,
                   took: float) -> None:
    """Step 4: ``post_request`` (its failure is logged, never the client's problem) and the access log."""
    if worker.post_request is not None:
        try:
            worker.post_request(worker=worker, req=head, environ=environ, resp=resp)
        except Exception:
            worker.log.exception("post_request hook failed")
    if worker.access_log is not None:
        worker.access_log(head, environ, resp, took)


def keeps_connection(offered_keep_alive: bool, head: RequestHead, continue_sent: bool,
                     body_complete: bool) -> bool:
    """Step 5: whether the connection may serve another request (before the drain).

    A client that sent ``Expect: 100-continue`` and was never told to go on
    may still be holding its body back, or may send it any moment: what
    comes next on the connection cannot be told apart from a new request,
    so the connection closes rather than guess (RFC 9110 section 10.1.1).
    """
    if not offered_keep_alive:
        return False
    return not (head.expect_continue and not continue_sent and not body_complete)
