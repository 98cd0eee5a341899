"""partial_environ(): the few environ keys an access log reads, exactly as build_environ makes them."""

from __future__ import annotations

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from corral.accesslog import DEFAULT_FORMAT, environ_keys
from corral.http import errors as E
from corral.http.parser import RequestHead, RequestParser
from corral.wsgi.environ import (
    PARTIAL_KEYS,
    EnvironContext,
    build_environ,
    builds_alone,
    partial_environ,
)


def _parse(raw: bytes) -> RequestHead:
    parser = RequestParser()
    parser.feed(raw)
    try:
        head = parser.next_event()
    except E.BadRequest:
        assume(False)  # a head the parser refuses (two Content-Type fields) has no environ
    assert isinstance(head, RequestHead), head
    return head


_NAMES = ["Referer", "User-Agent", "Authorization", "Cookie", "X-Thing", "Content-Type", "Accept"]
_VALUES = st.text(alphabet="abcXYZ 09;,=/%\"'\\", min_size=0, max_size=12).map(str.strip)
_PATHS = st.sampled_from(["/", "/a/b", "/app/x", "/app", "/%7Efred/%2F", "/caf%C3%A9", "/q"])


@given(
    fields=st.lists(st.tuples(st.sampled_from(_NAMES), _VALUES), max_size=8),
    path=_PATHS,
    query=st.sampled_from(["", "a=1", "x=%20&y"]),
    script_name=st.sampled_from(["", "/app"]),
    peer=st.sampled_from([("10.0.0.7", 5123), ("::1", 80), "/run/corral.sock", None]),
    client=st.sampled_from([None, ("192.0.2.9", 4444)]),
    keys=st.sets(st.sampled_from([
        *sorted(PARTIAL_KEYS), "HTTP_REFERER", "HTTP_USER_AGENT", "HTTP_AUTHORIZATION", "HTTP_COOKIE",
        "HTTP_X_THING", "HTTP_HOST", "HTTP_ACCEPT", "HTTP_ABSENT"])),
)
# The cases a random draw can miss, always run: SCRIPT_NAME cut off the
# path, a percent-encoded path, two Cookie fields joined with "; " and two
# others with ",", a client named by a PROXY header, a unix-socket peer.
@example(fields=[], path="/app/x", query="", script_name="/app", peer=("10.0.0.7", 5123), client=None,
         keys={"PATH_INFO"})
@example(fields=[("Cookie", "a=1"), ("Cookie", "b=2"), ("Accept", "x"), ("Accept", "y")],
         path="/caf%C3%A9", query="a=1", script_name="", peer=("10.0.0.7", 5123), client=None,
         keys={"PATH_INFO", "HTTP_COOKIE", "HTTP_ACCEPT", "QUERY_STRING", "HTTP_HOST"})
@example(fields=[], path="/", query="", script_name="", peer=("10.0.0.7", 5123),
         client=("192.0.2.9", 4444), keys={"REMOTE_ADDR", "REMOTE_PORT"})
@example(fields=[], path="/", query="", script_name="", peer="/run/corral.sock", client=None,
         keys={"REMOTE_ADDR", "REMOTE_PORT"})
def test_partial_environ_equals_build_environ_on_its_keys(
        fields: list[tuple[str, str]], path: str, query: str, script_name: str,
        peer: tuple[str, int] | str | None, client: tuple[str, int] | None, keys: set[str]) -> None:
    target = path + ("?" + query if query else "")
    raw = f"GET {target} HTTP/1.1\r\nHost: example.org:8080\r\n".encode()
    raw += b"".join(f"{name}: {value}\r\n".encode() for name, value in fields) + b"\r\n"
    head = _parse(raw)
    ctx = EnvironContext("localhost", "8000", script_name=script_name)
    wanted = frozenset(keys)
    assert builds_alone(wanted)
    full = build_environ(head, ctx, None, peer, client=client)
    part = partial_environ(head, ctx, peer, wanted, client=client)
    # Every wanted key there exactly when build_environ sets it, with its
    # value; a neighbour built along (REMOTE_PORT with REMOTE_ADDR) is right too.
    assert {k: part[k] for k in wanted if k in part} == {k: full[k] for k in wanted if k in full}
    assert all(full[k] == v for k, v in part.items())


def test_keys_that_depend_on_the_whole_request_are_not_built_alone() -> None:
    # The scheme can come from trusted proxy headers; SERVER_NAME from the Host.
    for key in ("wsgi.url_scheme", "SERVER_NAME", "SERVER_PORT", "SCRIPT_NAME"):
        assert not builds_alone({key, "REMOTE_ADDR"})
    assert builds_alone(set())


@pytest.mark.parametrize(("fmt", "keys"), [
    (DEFAULT_FORMAT, {"REMOTE_ADDR", "HTTP_AUTHORIZATION", "HTTP_REFERER", "HTTP_USER_AGENT"}),
    ("%(s)s %(b)s %(D)s %(r)s", set()),
    ("%(U)s %({X-Request-Id}i)s %({wsgi.url_scheme}e)s", {"PATH_INFO", "wsgi.url_scheme"}),
    ("json", {"REMOTE_ADDR", "HTTP_AUTHORIZATION", "HTTP_REFERER", "HTTP_USER_AGENT", "PATH_INFO"}),
])
def test_environ_keys_of_a_format(fmt: str, keys: set[str]) -> None:
    assert environ_keys(fmt) == keys
