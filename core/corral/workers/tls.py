"""TLS termination in the worker, for classes that serve through HttpConnection.

The story of one TLS connection:

1. The arbiter never handshakes. At startup and on every HUP it only checks
   the TLS settings (:func:`check_tls_settings`): it loads the certificate and
   key once, so that a missing file or a key that does not match its
   certificate is a configuration error (exit 2 at startup; on HUP the old
   workers keep serving) rather than workers that cannot boot.
2. Each worker builds its :class:`ssl.SSLContext` once, after fork and after
   its concurrency library is set up (gevent patches ``ssl`` then), through
   the ``corral_ssl_context`` hook (:func:`worker_ssl_context`). Reloading the
   certificate is a HUP: new workers, new contexts.
3. The worker accepts a plain socket; the connection's own thread of control
   (the sync worker's only one, or a gevent greenlet) calls
   :func:`start_tls` before it reads the first request head. The socket is
   wrapped with ``do_handshake_on_connect=False`` so that the accept loop
   never waits on a client, and the handshake (plus a PROXY header before it,
   if one is expected) must finish within ``--ssl-handshake-timeout``.
4. A failed or timed-out handshake is logged at debug level (port scanners
   and plain-HTTP clients make plenty of them) and the connection is closed:
   there is nobody to answer, since the client expects TLS records.

This module imports ``ssl`` only when TLS is on. (A gevent pool's arbiter
imports it anyway, to share it with the workers: the gevent plugin's
``shared_modules``.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, TypeVar

from corral.errors import ConfigError
from corral.heartbeat import WAIT_SLICE
from corral.http import errors as E
from corral.http import proxy
from corral.http.parser import RequestParser
from corral.serve.transport import SocketTransport

if TYPE_CHECKING:
    import ssl

    import pluggy

    from corral.config import Config
    from corral.http.proxy import ProxyInfo
    from corral.plugins import WorkerSpec
    from corral.workers.connection import HttpConnection

T = TypeVar("T")

#: What the TLS layer tells the client it speaks (ALPN); a client that offers
#: only h2 still gets a handshake without ALPN and may fall back.
ALPN_PROTOCOLS: Final = ("http/1.1",)


def tls_enabled(cfg: Config) -> bool:
    """TLS is on when a certificate is configured (gunicorn: certfile and keyfile)."""
    return bool(cfg.certfile)


def default_ssl_context(cfg: Config) -> ssl.SSLContext:
    """The context corral builds from the TLS settings (what the hook gets as its default).

    :raises ConfigError: naming the setting whose file or value OpenSSL refused.
    """
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[
        cfg.ssl_minimum_version
    ]
    what = f"--certfile {cfg.certfile}" + (f" with --keyfile {cfg.keyfile}" if cfg.keyfile else "")
    with _naming(what):
        ctx.load_cert_chain(cfg.certfile, cfg.keyfile)
    if cfg.ca_certs:
        with _naming(f"--ca-certs {cfg.ca_certs}"):
            ctx.load_verify_locations(cafile=cfg.ca_certs)
    ctx.verify_mode = ssl.VerifyMode(cfg.cert_reqs)
    if cfg.ciphers:
        with _naming(f"--ciphers {cfg.ciphers!r}"):
            ctx.set_ciphers(cfg.ciphers)
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return ctx


@contextlib.contextmanager
def _naming(what: str) -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        else:
            reason = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
        raise ConfigError(f"TLS: cannot use {what}: {reason}") from exc


def worker_ssl_context(cfg: Config, pm: pluggy.PluginManager) -> ssl.SSLContext | None:
    """In the worker: the context its connections use, or None when TLS is off.

    The first ``corral_ssl_context`` implementation that returns a context
    wins; with none, the default is used. Errors propagate: a worker that
    cannot set up TLS does not boot.
    """
    if not tls_enabled(cfg):
        return None
    import ssl

    def factory() -> ssl.SSLContext:
        return default_ssl_context(cfg)

    ctx = pm.hook.corral_ssl_context(config=cfg, default_ssl_context_factory=factory)
    if ctx is None:
        ctx = factory()
    # ssl.SSLContext is looked up now, after gevent patched it: a context made
    # with the unpatched class would block every greenlet during handshakes.
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(
            f"the ssl_context hook returned {type(ctx).__name__}, not {ssl.SSLContext.__module__}."
            "SSLContext (build it inside the hook, e.g. by calling default_ssl_context_factory())"
        )
    return ctx


def check_tls_settings(cfg: Config, spec: WorkerSpec) -> list[str]:
    """In the arbiter, before anything starts (and on HUP): refuse TLS settings that cannot work.

    :return: warnings: TLS settings given without --certfile, which gunicorn
        ignores; corral ignores them too, but says so.
    :raises ConfigError: naming the setting and the fix.
    """
    if not tls_enabled(cfg):
        stray = [flag for name, flag in (("keyfile", "--keyfile"), ("ca_certs", "--ca-certs"),
                                         ("ciphers", "--ciphers")) if getattr(cfg, name)]
        if cfg.cert_reqs:
            stray.append("--cert-reqs")
        if stray:
            return [f"{', '.join(stray)} given without --certfile, which turns TLS on: ignored, "
                    "as gunicorn does (add --certfile to serve TLS)"]
        return []
    if not spec.tls:
        raise ConfigError(
            f"--certfile is not supported by worker class {spec.name!r} yet: use -k sync, "
            "-k gevent or -k tornado, or terminate TLS in a proxy in front of corral (see docs/deploy.md)."
        )
    if cfg.cert_reqs and not cfg.ca_certs:
        raise ConfigError("--cert-reqs optional/required needs --ca-certs: the CAs that client "
                          "certificates are verified against.")
    default_ssl_context(cfg)
    return []


def start_tls(conn: HttpConnection, ctx: ssl.SSLContext) -> bool:
    """Turn ``conn``'s plain socket into a TLS one, in the connection's own thread or greenlet.

    Reads a PROXY header first when one is expected (it precedes the TLS
    records on the wire), then handshakes; all of it within
    ``--ssl-handshake-timeout``.

    :return: False when the connection must be closed without an answer (a
        failed or timed-out handshake, a bad or unauthorised PROXY header);
        the reason is logged at debug level.
    """
    try:
        _handshake(conn, ctx)
    except (OSError, ValueError, E.HTTPError) as exc:
        conn.worker.log.debug("TLS handshake with %s failed: %s", conn.peer_label(), exc)
        return False
    return True


def _handshake(conn: HttpConnection, ctx: ssl.SSLContext) -> None:
    worker = conn.worker
    deadline = time.monotonic() + worker.cfg.ssl_handshake_timeout
    limits = worker.limits
    transport = conn.transport
    sock = conn.sock
    if not isinstance(transport, SocketTransport) or sock is None:
        raise TypeError(f"TLS needs a connection over an OS socket, not {type(transport).__name__}")
    if limits.proxy_protocol != "off":
        from corral.workers.connection import proxy_trusted

        if not proxy_trusted(worker, conn.peer):
            raise E.Forbidden("PROXY protocol header from a peer not in proxy_allow_from")
        info = read_proxy_header(sock, limits.proxy_protocol, deadline, worker.notify)
        # The parser sees only decrypted bytes, which hold no PROXY header.
        conn.parser = RequestParser(dataclasses.replace(limits, proxy_protocol="off"))
        conn.parser.proxy = info
    conn.sock = tls_sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    transport.use_tls(tls_sock)
    _beating(tls_sock, deadline, worker.notify, tls_sock.do_handshake)


def read_proxy_header(sock: socket.socket, mode: str, deadline: float,
                      beat: Callable[[], None] = lambda: None) -> ProxyInfo:
    """Read exactly one PROXY header from ``sock``, not a byte of the TLS records after it.

    :class:`corral.http.proxy.ProxyPreamble` decides; this waits (on a
    blocking socket, beating the heartbeat).

    :raises BadRequest: for a malformed header or a close inside it.
    """
    preamble = proxy.ProxyPreamble(mode)
    while True:
        want = preamble.want()
        data = _beating(sock, deadline, beat, lambda: sock.recv(want, socket.MSG_PEEK))  # noqa: B023 (called at once)
        take, info = preamble.peeked(data)
        preamble.consume(sock.recv, take)
        if info is not None:
            return info


def _beating(sock: socket.socket, deadline: float, beat: Callable[[], None], call: Callable[[], T]) -> T:
    """``call()`` on a blocking socket by ``deadline``, beating the heartbeat at least every WAIT_SLICE.

    A worker waiting on a slow handshake is not stuck; without the beats a
    --timeout shorter than --ssl-handshake-timeout would get it killed.
    A timed-out recv or handshake step can be retried: nothing was consumed.
    """
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("TLS handshake not finished in time")
        sock.settimeout(min(remaining, WAIT_SLICE))
        try:
            return call()
        except TimeoutError:
            beat()
