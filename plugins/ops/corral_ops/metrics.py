"""Metrics and health: a Prometheus endpoint on a bind of its own, and statsd push.

``--metrics-bind 127.0.0.1:9101`` (or ``unix:PATH``) serves, from the
arbiter's main loop, never on the app's port:

- ``GET /metrics``: the Prometheus text format (0.0.4), per pool and per
  worker (docs/operations.md lists every metric);
- ``GET /readyz``: 200 when every pool has all its workers booted, 503
  while booting, after a WINCH and during a shutdown;
- ``GET /healthz``: 200 while the arbiter runs its loop (liveness).

``--statsd-host HOST:PORT`` (gunicorn's setting, with ``statsd_prefix`` and
``dogstatsd_tags``) pushes the same counters over UDP once a second
(``statsd_interval``): counters as deltas since the last push, gauges as
they stand. Numbers are read from the pools' shared tables at push or
scrape time; no worker does anything per request beyond its own counters.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any, Final

from corral.api import LATENCY_BUCKETS, Setting, SettingsRegistry, Snapshot, hookimpl, parse_address
from corral_ops import status as st
from corral_ops.endpoint import RequestServer, bind_unix, file_id, owns
from corral_ops.memory_info import memory
from corral_ops.values import interval, optional_text

CORRAL_PLUGIN_API = 2

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


@hookimpl
def corral_add_settings(settings: SettingsRegistry) -> None:
    section = "Metrics"
    settings.add(Setting(
        name="metrics_bind", section=section, validator=optional_text, default=None,
        help="Serve /metrics (Prometheus), /readyz and /healthz here: HOST:PORT or unix:PATH, "
             "never one of the app's addresses (unset: off).", flags=("--metrics-bind",),
        metavar="ADDRESS", owner="metrics",
    ))
    settings.add(Setting(
        name="statsd_host", section=section, validator=optional_text, default=None,
        help="Push metrics to this statsd (HOST:PORT over UDP, or unix:PATH) (unset: off).",
        flags=("--statsd-host",), metavar="STATSD_ADDR", owner="metrics",
    ))
    settings.add(Setting(
        name="statsd_prefix", section=section, validator=lambda v: "" if v is None else str(v),
        default="", help="Prefix for every statsd metric name (a dot is added if missing).",
        flags=("--statsd-prefix",), metavar="STATSD_PREFIX", owner="metrics",
    ))
    settings.add(Setting(
        name="dogstatsd_tags", section=section, validator=lambda v: "" if v is None else str(v),
        default="", help="DogStatsD tags for every metric, comma separated (env:prod,app:shop).",
        flags=("--dogstatsd-tags",), metavar="DOGSTATSD_TAGS", owner="metrics",
    ))
    settings.add(Setting(
        name="statsd_interval", section=section, validator=interval, default=1.0,
        help="Seconds between statsd pushes.", flags=("--statsd-interval",), metavar="SECONDS",
        owner="metrics",
    ))


# -- the Prometheus text ----------------------------------------------------------------


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: dict[str, object], value: float) -> None:
        inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        number = repr(float(value)) if isinstance(value, float) else str(value)
        self.lines.append(f"{name}{{{inner}}} {number}" if inner else f"{name} {number}")


def _histogram(out: _Text, name: str, labels: dict[str, object], snap: Snapshot) -> None:
    running = 0
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), snap.histogram, strict=True):
        running += n
        out.sample(f"{name}_bucket", {**labels, "le": "+Inf" if bound == float("inf") else repr(bound)},
                   running)
    out.sample(f"{name}_sum", labels, snap.latency_sum)
    out.sample(f"{name}_count", labels, running)


def prometheus(server: Any) -> str:
    out = _Text()
    now = time.time()
    pools = st.pools_in_view(server)
    handles = sorted(server.workers.values(), key=lambda h: h.age)
    live = {h.pid: st.worker_snapshot(server, h) for h in handles}

    out.family("corral_ready", "gauge",
               "1 when every pool has all its workers booted and the server is not stopping.")
    out.sample("corral_ready", {}, int(server.ready))
    out.family("corral_arbiter_start_time_seconds", "gauge", "When this arbiter started (Unix time).")
    out.sample("corral_arbiter_start_time_seconds", {}, float(server.started_at))
    out.family("corral_config_generation", "gauge", "How many reloads (HUP) this arbiter has done.")
    out.sample("corral_config_generation", {}, server.generation)

    out.family("corral_pool_workers_desired", "gauge", "Workers a pool is configured to run.")
    for pool in server.pools:
        out.sample("corral_pool_workers_desired", {"pool": pool.name}, pool.size)
    out.family("corral_pool_workers", "gauge", "Worker processes by pool and state.")
    for pool in pools:
        counts = {"booting": 0, "serving": 0, "recycling": 0, "retiring": 0}
        for h in handles:
            if h.pool.name == pool.name:
                state = ("retiring" if h.retiring else "recycling" if h.recycle
                         else "serving" if h.booted else "booting")
                counts[state] += 1
        for state, n in counts.items():
            out.sample("corral_pool_workers", {"pool": pool.name, "state": state}, n)
    out.family("corral_worker_recycles_total", "counter",
               "Workers replaced with the graceful policy, by reason (max_requests, memory).")
    for (name, reason), n in sorted(server.recycles.items()):
        out.sample("corral_worker_recycles_total", {"pool": name, "reason": reason}, n)

    counted = [p for p in pools if p.name in server.stats]
    totals = {p.name: st.pool_totals(server, p.name) for p in counted}
    out.family("corral_requests_total", "counter",
               "Requests that reached the app, by pool (exited workers included).")
    for name, snap in totals.items():
        out.sample("corral_requests_total", {"pool": name}, snap.requests)
    out.family("corral_responses_total", "counter",
               "Responses sent by status class, corral's own 4xx included.")
    for name, snap in totals.items():
        for cls, n in zip(st.STATUS_CLASSES, snap.status, strict=True):
            out.sample("corral_responses_total", {"pool": name, "status": cls}, n)
    out.family("corral_response_body_bytes_total", "counter", "Response body bytes sent.")
    for name, snap in totals.items():
        out.sample("corral_response_body_bytes_total", {"pool": name}, snap.bytes)
    out.family("corral_requests_in_flight", "gauge", "Requests being served now.")
    for name, snap in totals.items():
        out.sample("corral_requests_in_flight", {"pool": name}, snap.in_flight)
    out.family("corral_request_duration_seconds", "histogram",
               "Time from a request's head to its last byte, for requests that reached the app.")
    for name, snap in totals.items():
        _histogram(out, "corral_request_duration_seconds", {"pool": name}, snap)

    # Per worker: one series per live process (labels pool, pid).
    metered = [(h, ws) for h in handles if (ws := live[h.pid]) is not None]
    out.family("corral_worker_requests_total", "counter", "Requests a worker served.")
    for h, ws in metered:
        out.sample("corral_worker_requests_total", {"pool": h.pool.name, "pid": h.pid}, ws.requests)
    out.family("corral_worker_responses_total", "counter", "Responses a worker sent, by status class.")
    for h, ws in metered:
        for cls, n in zip(st.STATUS_CLASSES, ws.status, strict=True):
            out.sample("corral_worker_responses_total", {"pool": h.pool.name, "pid": h.pid, "status": cls}, n)
    out.family("corral_worker_requests_in_flight", "gauge", "Requests a worker is serving now.")
    for h, ws in metered:
        out.sample("corral_worker_requests_in_flight", {"pool": h.pool.name, "pid": h.pid}, ws.in_flight)
    out.family("corral_worker_start_time_seconds", "gauge", "When a worker started (Unix time).")
    for h, ws in metered:
        out.sample("corral_worker_start_time_seconds", {"pool": h.pool.name, "pid": h.pid}, ws.started)
    out.family("corral_worker_heartbeat_age_seconds", "gauge", "Seconds since a worker's last heartbeat.")
    for h in handles:
        with contextlib.suppress(OSError):
            out.sample("corral_worker_heartbeat_age_seconds", {"pool": h.pool.name, "pid": h.pid},
                       round(max(0.0, now - h.heartbeat.last_beat()), 3))
    out.family("corral_worker_resident_memory_bytes", "gauge", "A worker's resident set size (RSS).")
    for h in handles:
        rss = memory(h.pid, "rss")
        if rss is not None:
            out.sample("corral_worker_resident_memory_bytes", {"pool": h.pool.name, "pid": h.pid}, rss)
    return "\n".join(out.lines) + "\n"


# -- the HTTP endpoint ------------------------------------------------------------------


def _http(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", *,
          head: bool = False, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode() + (b"" if head else body)


class MetricsEndpoint:
    def __init__(self, server: Any, address: str) -> None:
        self.server = server
        addr = parse_address(address)
        self.path: str | None = None
        self.ident: tuple[int, int] | None = None
        if addr.kind == "unix":
            sock = bind_unix(addr.path, 0o660)
            self.path = addr.path
            self.ident = file_id(addr.path)
        elif addr.kind == "tcp":
            family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # During a USR2 upgrade the old and the new arbiter both answer on
            # the port (each about its own workers) until the old one exits.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((addr.host, addr.port))
            except OSError:
                sock.close()
                raise
            sock.listen(64)
        else:
            raise OSError(f"metrics_bind {address!r}: use HOST:PORT or unix:PATH")
        self.sock = sock
        name = sock.getsockname()
        self.name = f"unix:{name}" if isinstance(name, str) else f"{name[0]}:{name[1]}"
        too_large = _http("431 Request Header Fields Too Large", b"too large\n")
        self.endpoint = RequestServer(server, sock, lambda buf: b"\r\n\r\n" in buf or b"\n\n" in buf,
                                      self.answer, too_large)

    def answer(self, data: bytes, conn: socket.socket) -> bytes:
        line = data.split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _http("400 Bad Request", b"bad request line\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _http("405 Method Not Allowed", b"GET or HEAD\n", extra="Allow: GET, HEAD\r\n")
        head = method == b"HEAD"
        if target == b"/metrics":
            return _http("200 OK", prometheus(self.server).encode(), CONTENT_TYPE, head=head)
        if target in (b"/readyz", b"/ready"):
            if self.server.ready:
                return _http("200 OK", b"ready\n", head=head)
            why = b"stopping\n" if self.server.stopping else b"not ready\n"
            return _http("503 Service Unavailable", why, head=head)
        if target in (b"/healthz", b"/health"):
            return _http("200 OK", b"ok\n", head=head)
        return _http("404 Not Found", b"try /metrics, /readyz or /healthz\n", head=head)

    def close(self) -> None:
        self.endpoint.close()
        if self.path is not None and owns(self.path, self.ident):
            os.unlink(self.path)


# -- statsd -----------------------------------------------------------------------------


class StatsdPusher:
    """Counters as deltas since the last push, gauges as they are; one datagram per metric."""

    def __init__(self, server: Any, address: str, prefix: str, tags: str, every: float) -> None:
        self.server = server
        self.every = every
        self.prefix = prefix if not prefix or prefix.endswith(".") else prefix + "."
        self.tags = f"|#{tags}" if tags else ""
        if address.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.target: Any = address[5:].removeprefix("//")
        else:
            addr = parse_address(address)
            if addr.kind != "tcp":
                raise OSError(f"statsd_host {address!r}: use HOST:PORT or unix:PATH")
            info = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_DGRAM)[0]
            self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
            self.target = info[4]
        self.sock.setblocking(False)
        self.last: dict[str, float] = {}
        self.due = time.monotonic() + every

    def tick(self, now: float) -> None:
        if now < self.due:
            return
        self.due = now + self.every
        self.push()

    def _send(self, line: str) -> None:
        with contextlib.suppress(OSError):  # nobody listening, a full buffer: statsd is lossy
            self.sock.sendto(line.encode(), self.target)

    def _count(self, name: str, total: float, tags: str = "") -> None:
        delta = total - self.last.get(name + tags, 0)
        self.last[name + tags] = total
        if delta > 0:
            self._send(f"{self.prefix}{name}:{delta:g}|c{self._tags(tags)}")

    def _gauge(self, name: str, value: float, tags: str = "") -> None:
        self._send(f"{self.prefix}{name}:{value:g}|g{self._tags(tags)}")

    def _tags(self, extra: str) -> str:
        if not extra:
            return self.tags
        return f"{self.tags},{extra}" if self.tags else f"|#{extra}"

    def push(self) -> None:
        server = self.server
        pools = [p for p in st.pools_in_view(server) if p.name in server.stats]
        many = len(server.pools) > 1
        self._gauge("corral.workers", len(server.workers))
        for pool in pools:
            snap = st.pool_totals(server, pool.name)
            # With several pools the pool is a tag (DogStatsD) and a name part (plain statsd).
            base = f"corral.{pool.name}." if many else "corral."
            self._count(f"{base}requests", snap.requests)
            for cls, n in zip(st.STATUS_CLASSES, snap.status, strict=True):
                self._count(f"{base}request.status.{cls}", n)
            self._count(f"{base}response.bytes", snap.bytes)
            self._gauge(f"{base}requests.in_flight", snap.in_flight)
            key = f"{base}request.duration"
            done, took = snap.observed, snap.latency_sum
            prev_done, prev_took = self.last.get(key + "#n", 0), self.last.get(key + "#s", 0.0)
            self.last[key + "#n"], self.last[key + "#s"] = done, took
            if done > prev_done:
                # The mean over the interval, in ms as gunicorn's timer; percentiles
                # are the Prometheus histogram's job.
                self._gauge(f"{base}request.duration.mean_ms", 1000 * (took - prev_took) / (done - prev_done))
        for (name, reason), n in server.recycles.items():
            self._count(f"corral.worker.recycles.{reason}", n, f"pool:{name}" if self.tags else "")

    def close(self) -> None:
        self.sock.close()


_ENDPOINTS: dict[int, MetricsEndpoint] = {}
_PUSHERS: dict[int, StatsdPusher] = {}


@hookimpl
def corral_on_starting(server: Any) -> None:
    cfg = server.cfg
    if cfg.metrics_bind:
        try:
            endpoint = MetricsEndpoint(server, cfg.metrics_bind)
        except (OSError, ValueError) as exc:
            # Bound by the old arbiter during a USR2 upgrade, or taken: the
            # server still serves; the metrics say why they are missing.
            server.log.warning("No metrics endpoint at %s: %s", cfg.metrics_bind, exc)
        else:
            _ENDPOINTS[id(server)] = endpoint
            server.log.info("Metrics at http://%s/metrics (readiness /readyz)", endpoint.name)
    if cfg.statsd_host:
        try:
            _PUSHERS[id(server)] = StatsdPusher(server, cfg.statsd_host, cfg.statsd_prefix,
                                                cfg.dogstatsd_tags, cfg.statsd_interval)
        except (OSError, ValueError) as exc:
            server.log.warning("No statsd push to %s: %s", cfg.statsd_host, exc)


@hookimpl
def corral_arbiter_tick(server: Any) -> None:
    endpoint = _ENDPOINTS.get(id(server))
    if endpoint is not None:
        endpoint.endpoint.expire()
    pusher = _PUSHERS.get(id(server))
    if pusher is not None:
        pusher.tick(time.monotonic())


@hookimpl
def corral_on_exit(server: Any) -> None:
    endpoint = _ENDPOINTS.pop(id(server), None)
    if endpoint is not None:
        endpoint.close()
    pusher = _PUSHERS.pop(id(server), None)
    if pusher is not None:
        pusher.push()  # the last numbers
        pusher.close()
