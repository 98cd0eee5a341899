"""The steps around the app that every class shares (corral.serve.cycle), without sockets."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from corral.http.parser import RequestHead, RequestParser
from corral.serve.cycle import after_response, keeps_connection


def head(raw: bytes) -> RequestHead:
    parser = RequestParser()
    parser.feed(raw)
    event = parser.next_event()
    assert type(event) is RequestHead
    return event


PLAIN = head(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
EXPECTING = head(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")


@pytest.mark.parametrize(("offered", "req", "continue_sent", "body_complete", "kept"), [
    (False, PLAIN, False, True, False),       # the response said close
    (True, PLAIN, False, False, True),        # an unread body: the caller drains it
    (True, EXPECTING, False, False, False),   # told to hold its body, never told to go on: may still send it
    (True, EXPECTING, True, False, True),     # told to go on: the rest is a body, drained
    (True, EXPECTING, False, True, True),     # sent the body anyway, all of it read
])
def test_keeps_connection(offered: bool, req: RequestHead, continue_sent: bool, body_complete: bool,
                          kept: bool) -> None:
    assert keeps_connection(offered, req, continue_sent, body_complete) is kept


def test_a_failing_post_request_hook_is_logged_and_the_access_log_still_written(
        caplog: pytest.LogCaptureFixture) -> None:
    lines: list[tuple[Any, ...]] = []

    def hook(**kw: Any) -> None:
        raise RuntimeError("hook broke")

    worker = SimpleNamespace(post_request=hook, access_log=lambda *a: lines.append(a),
                             log=logging.getLogger("test.cycle"))
    environ = {"REQUEST_METHOD": "POST"}
    with caplog.at_level(logging.ERROR, "test.cycle"):
        after_response(worker, PLAIN, environ, "resp", 0.25)  # type: ignore[arg-type]
    assert "post_request hook failed" in caplog.text
    assert lines == [(PLAIN, environ, "resp", 0.25)]
