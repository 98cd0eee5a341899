"""The base class of every worker: what happens in a worker process after fork.

Lifecycle, in the worker process:

1. The arbiter forks, imports the worker class named by the pool's spec (so
   gevent or tornado are imported here, never in the arbiter), builds the
   worker and calls the ``corral_post_fork`` hook.
2. :meth:`Worker.init_process` installs the worker's signal handlers, beats
   the heartbeat, calls :meth:`Worker.init_concurrency` (where a gevent
   worker monkey-patches), builds its TLS context if TLS is on (the
   ``corral_ssl_context`` hook), loads the application, calls
   ``corral_post_worker_init``, tells the arbiter it is ready, then calls
   :meth:`Worker.run`.
3. ``run`` accepts on the inherited listeners and serves until ``alive``
   goes false (TERM, parent gone), then retires as
   :mod:`corral.serve.retirement` says: stops accepting, serves every
   request already received, closes connections without racing a request
   on its way, and returns when none is left or at the graceful timeout.
   The ``corral_worker_exit`` hook runs and the process exits 0.

``--max-requests`` does not stop a worker by itself: the worker asks the
arbiter for a replacement (:meth:`Worker.request_recycle`) and serves on
until the arbiter, once the replacement is ready, sends TERM. So a pool
never has a worker fewer while one is recycled, even with ``-w 1``.

Signals: TERM is a graceful stop; INT and QUIT stop at once (the
``corral_worker_int`` and ``corral_worker_exit`` hooks still run); ABRT (sent by
the arbiter when the heartbeat stopped) writes every thread's stack to the
error log and exits; USR1 reopens log files. HUP and WINCH are the
arbiter's business and are ignored here.

Exit statuses the arbiter understands: 3 (the worker could not boot) and 4
(the app could not be loaded) make it stop instead of respawning forever.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final

from corral.accesslog import AccessLog
from corral.app import load_app
from corral.heartbeat import CHECK_INTERVAL
from corral.http.parser import ParserLimits
from corral.logs import reopen_logs
from corral.process import drop_privileges
from corral.serve.retirement import InFlight
from corral.stats import FOLD_EVERY
from corral.workers.reloader import failed_files, load_error_app, start_reloader
from corral.workers.tls import worker_ssl_context
from corral.wsgi.environ import EnvironContext, TrustedPeers

if TYPE_CHECKING:
    import ssl

    import pluggy

    from corral.config import Config
    from corral.heartbeat import Heartbeat
    from corral.pool import Pool
    from corral.sockets import Listener
    from corral.stats import WorkerStats
    from corral.workers.balance import AcceptBalance
    from corral.workers.watchdog import RequestWatchdog

#: Exit status: the worker failed before it could serve (gunicorn's value).
WORKER_BOOT_ERROR: Final = 3
#: Exit status: the application could not be imported (gunicorn's value).
APP_LOAD_ERROR: Final = 4
#: A worker that asked for its replacement (max-requests) and has had no
#: TERM from the arbiter this long after retires by itself: an app that
#: boots slowly gets a minute, an arbiter that never answers (a bug, or one
#: stuck in a hook) cannot keep a recycled worker forever.
RECYCLE_WAIT: Final = 60.0


#: What a 0 means for the head limits, as in gunicorn, so that a deployment's
#: values mean there what they meant before: no limit on the request line
#: (up to 1 MiB), gunicorn's most header fields, its default field size.
UNLIMITED_REQUEST_LINE: Final = 1 << 20
MAX_HEADER_FIELDS: Final = 32768
DEFAULT_FIELD_SIZE: Final = 8190


def parser_limits(line: int, fields: int, field_size: int) -> dict[str, int]:
    """The parser's limits for the limit_request_* settings, in gunicorn's terms.

    gunicorn counts a header field line with its CRLF (a 97-byte line is over
    a limit of 98); corral's parser counts the line alone, so it is given two
    bytes less.
    """
    return {
        "limit_request_line": line or UNLIMITED_REQUEST_LINE,
        "limit_request_fields": fields or MAX_HEADER_FIELDS,
        "limit_request_field_size": max((field_size or DEFAULT_FIELD_SIZE) - 2, 1),
    }


class Worker:
    """Subclass and implement :meth:`run`; see the module docstring for the lifecycle."""

    #: Whether several requests run at once in one process (wsgi.multithread).
    multithread: ClassVar[bool] = False
    #: Watches requests that run in threads (set by such workers before they
    #: accept); connections stop a request's clock while it waits on its client.
    watchdog: RequestWatchdog | None = None
    #: Requests run in the main thread, where signals are handled (sync, the
    #: selector loop serving inline): TERM then arms an alarm for the graceful
    #: timeout that cuts a request still running (see :meth:`handle_exit`).
    requests_in_main_thread: ClassVar[bool] = False
    #: The kind of app this class serves ("wsgi" or "asgi"), when the class
    #: says so itself; else its WorkerSpec's ``app_interface`` decides (a
    #: class given by path has no plugin to declare it).
    serves: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        age: int,
        ppid: int,
        pool: Pool,
        listeners: list[Listener],
        cfg: Config,
        log: logging.Logger,
        heartbeat: Heartbeat,
        pm: pluggy.PluginManager,
        app: Callable[..., Any] | None,
        ready_fd: int,
        server: Any = None,
    ) -> None:
        self.age = age
        self.ppid = ppid
        self.pid = os.getpid()
        self.pool = pool
        self.listeners = listeners
        self.cfg = cfg
        self.log = log
        self.heartbeat = heartbeat
        self.pm = pm
        self.server = server
        #: The app (named so for history: an ASGI class keeps its ASGI app here too).
        self.wsgi: Callable[..., Any] = app  # type: ignore[assignment]
        self._ready_fd = ready_fd
        self.alive = True
        self.booted = False
        #: When this worker began to retire (time.monotonic()); None while it serves.
        #: Set by :meth:`retirement_started`, which each worker loop calls
        #: when it sees ``alive`` go false.
        self.retiring_since: float | None = None
        #: When this worker asked the arbiter for its replacement (max-requests).
        self.recycle_asked_at: float | None = None
        self._recycle_lock = threading.Lock()
        #: The requests being served, for the graceful-timeout report.
        self.in_flight = InFlight()
        #: This worker's slot in its pool's connection table, set by the arbiter
        #: after construction; workers that hold connections use it to step
        #: aside for a less loaded peer (corral.workers.balance).
        self.balance: AcceptBalance | None = None
        #: This worker's slot in its pool's live counters (corral.stats), set by
        #: the arbiter after construction; None with --no-worker-stats.
        self.stats: WorkerStats | None = None
        self.nr = 0
        self.max_requests = 0
        if cfg.max_requests:
            self.max_requests = cfg.max_requests + random.randint(0, cfg.max_requests_jitter)
        # Read per connection or per write: plain attributes, not Config lookups.
        self.header_timeout: float = cfg.header_timeout
        self.write_timeout: float = cfg.timeout
        #: --no-sendfile: files are read and sent (HttpConnection._send_file).
        self.sendfile: bool = cfg.sendfile
        self.limits = ParserLimits(
            **parser_limits(cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size),
            limit_request_body=cfg.limit_request_body,
            permit_obsolete_folding=cfg.permit_obsolete_folding,
            header_map=cfg.header_map,
            permit_unconventional_http_method=cfg.permit_unconventional_http_method,
            casefold_http_method=cfg.casefold_http_method,
            permit_missing_host=cfg.permit_missing_host,
            proxy_protocol=cfg.proxy_protocol,
        )
        self.proxy_peers = TrustedPeers(cfg.proxy_allow_ips)
        # Request hooks cost nothing when no plugin implements them.
        self.pre_request = self._hook_or_none("corral_pre_request")
        self.post_request = self._hook_or_none("corral_post_request")
        #: Called after each response when the access log is on: (head, environ, resp, took).
        self.access_log: Callable[..., None] | None = None
        self.access_logger: AccessLog | None = None
        #: Built in init_process (after fork and init_concurrency) when TLS is on.
        self.ssl_context: ssl.SSLContext | None = None
        if cfg.accesslog:
            custom_logging = bool(cfg.logconfig or cfg.logconfig_json or cfg.logconfig_dict)
            access_log = AccessLog(cfg.accesslog, cfg.access_log_format, via_logging=custom_logging)
            self.access_logger = access_log
            self.access_log = access_log.log
        heartbeat.on_beat = self.on_beat
        #: The read end of the wake pipe (non-blocking): readable when TERM,
        #: a stop or a recycle wants the worker's loop to look at
        #: ``self.alive``. Put it in the loop's select/poll and read it
        #: empty (:meth:`clear_wake`) when it fires.
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} pool={self.pool.name}>"

    @property
    def app_interface(self) -> str:
        """"wsgi" or "asgi": what APP_MODULE must be for this worker (see corral.app)."""
        return self.serves or self.pool.spec.app_interface

    def on_beat(self) -> None:
        """Periodic work at each heartbeat (at most every 0.5 s): flush the access
        log's buffer, publish the counters to the arbiter's table."""
        if self.access_logger is not None:
            self.access_logger.flush()
        if self.stats is not None:
            self.stats.publish(len(self.in_flight))

    def _hook_or_none(self, name: str) -> Callable[..., Any] | None:
        hook = getattr(self.pm.hook, name)
        return hook if hook.get_hookimpls() else None

    # -- lifecycle -----------------------------------------------------------------

    def init_process(self) -> None:
        """Everything between fork and serving; returns when the worker should exit."""
        self.pid = os.getpid()
        set_process_title(f"worker [{self.pool.name}: {self.pool.spec.name}]", self.cfg)
        self.install_signals()
        uid, gid, name = self.cfg.ids
        drop_privileges(uid, gid, name, self.cfg.initgroups)
        self.heartbeat.beat()
        self.init_concurrency()
        self.ssl_context = worker_ssl_context(self.cfg, self.pm)
        watch_too: list[str] = []
        if self.wsgi is None:
            try:
                self.wsgi = load_app(self.pool.app_uri, None, interface=self.app_interface,
                                     worker_class=self.pool.spec.name)
            except Exception as exc:
                self.log.exception("Failed to load the application %r", self.pool.app_uri)
                if not self.cfg.reload:
                    sys.stderr.flush()
                    os._exit(APP_LOAD_ERROR)
                # A development server (--reload) keeps serving, as gunicorn's
                # does: every request gets the error until a saved file fixes it
                # (the file that failed is watched too: it was never imported).
                self.wsgi = load_error_app(exc, self.app_interface)
                watch_too = failed_files(exc)
        self.envs = {id(lst): self.environ_context(lst) for lst in self.listeners}
        self.start_app()
        if self.cfg.reload:
            start_reloader(self, [*watch_too, *self.cfg.reload_extra_files])
        self.pm.hook.corral_post_worker_init(worker=self)
        self.booted = True
        self.signal_ready()
        self.heartbeat.beat()
        try:
            self.run()
        finally:
            # Also after a fast stop (INT, QUIT: SystemExit from the signal
            # handler), as gunicorn runs worker_exit for every stop.
            self.close_listeners()
            if self.access_logger is not None:
                self.access_logger.flush()
            self.pm.hook.corral_worker_exit(server=self.server, worker=self)
            self.log.info("Worker exiting (pid: %s)", self.pid)

    def init_concurrency(self) -> None:
        """Set up the concurrency library before the app is imported (gevent patches here)."""

    def start_app(self) -> None:
        """Start the loaded app before the worker reports ready (nothing for WSGI apps).

        An ASGI class runs the app's lifespan startup here, so that the
        arbiter counts the worker as booted only once the app is ready. A
        class whose app cannot start logs why and leaves with
        ``os._exit(APP_LOAD_ERROR)``: the arbiter then stops, as for an app
        that does not import, instead of respawning it forever.
        """

    def run(self) -> None:
        raise NotImplementedError

    def environ_context(self, listener: Listener) -> EnvironContext:
        cfg = self.cfg
        name = listener.name
        if name.startswith("unix:"):
            server_name, port = "localhost", "80"
        else:
            host, _, port = name.rpartition(":")
            server_name = host.strip("[]")
        return EnvironContext(
            server_name=server_name,
            server_port=port,
            url_scheme="http" if self.ssl_context is None else "https",
            script_name=cfg.script_name,
            multithread=self.multithread,
            multiprocess=True,
            errors=sys.stderr,
            trusted=TrustedPeers(cfg.forwarded_allow_ips),
            secure_scheme_headers=dict(cfg.secure_scheme_headers),
            extra={"corral.pool": self.pool.name, "corral.worker_class": self.pool.spec.name},
        )

    def signal_ready(self) -> None:
        """Tell the arbiter this worker has loaded the app and will accept now."""
        try:
            os.write(self._ready_fd, struct.pack("=i", self.pid))
        except OSError:
            pass

    def notify(self) -> None:
        """Beat the heartbeat (cheap: throttled); call it often."""
        self.heartbeat.notify()

    @property
    def check_interval(self) -> float:
        """The longest an idle loop may sleep: it then beats, asks keep_serving(), runs its watchdog.

        Every class uses this one cadence (corral.heartbeat.CHECK_INTERVAL,
        or a quarter of --timeout when that is shorter).
        """
        timeout = self.cfg.timeout
        return min(CHECK_INTERVAL, timeout / 4) if timeout else CHECK_INTERVAL

    def request_done(self) -> None:
        self.nr = nr = self.nr + 1
        if self.max_requests and nr >= self.max_requests and self.recycle_asked_at is None:
            self.request_recycle(f"reached max_requests ({self.max_requests})")
        if not nr & FOLD_EVERY and self.stats is not None:
            # Between heartbeats too: keeps the records a fast worker holds short.
            self.stats.fold()

    def request_recycle(self, reason: str) -> None:
        """Ask the arbiter to replace this worker; it keeps serving until the TERM comes.

        The arbiter starts a replacement and sends TERM once it is ready,
        so the pool serves at full strength throughout; the TERM then
        retires this worker with the graceful policy. Safe from any thread,
        and asking twice asks once. Should the TERM not come within
        :data:`RECYCLE_WAIT` seconds, :meth:`keep_serving` retires the
        worker anyway.
        """
        with self._recycle_lock:
            if self.recycle_asked_at is not None:
                return
            self.recycle_asked_at = time.monotonic()
        self.log.info("Worker %s %s; the arbiter starts its replacement", self.pid, reason)
        try:
            os.write(self._ready_fd, struct.pack("=i", -self.pid))
        except OSError:
            self.alive = False  # no arbiter to ask: retire now, as before
            self.wake()

    def retirement_started(self) -> float:
        """When retiring began (now, the first time a loop asks): see corral.serve.retirement."""
        since = self.retiring_since
        if since is None:
            since = self.retiring_since = time.monotonic()
            self.log.info("Worker %s retiring: accepts no more, serves what it has (graceful_timeout %s s)",
                          self.pid, self.cfg.graceful_timeout)
        return since

    def is_alive(self) -> bool:
        """Still serving (not stopping); used when a response head is made."""
        return self.alive

    def keep_serving(self) -> bool:
        """Checked by every worker loop about once a second: False when the worker must retire.

        The parent is gone (the arbiter died: nobody would replace or stop
        this worker), or a replacement was asked for :data:`RECYCLE_WAIT`
        seconds ago and no TERM came.
        """
        if not self.parent_alive():
            return False
        asked = self.recycle_asked_at
        if asked is not None and time.monotonic() - asked > RECYCLE_WAIT:
            self.log.warning("Worker %s: no replacement after %s s; retiring anyway", self.pid, RECYCLE_WAIT)
            return False
        return True

    def parent_alive(self) -> bool:
        if os.getppid() != self.ppid:
            self.log.info("Parent changed; worker %s shutting down", self.pid)
            return False
        return True

    def close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close(unlink=False)

    # -- signals ---------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.handle_exit)
        signal.signal(signal.SIGINT, self.handle_quit)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGABRT, self.handle_abort)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        signal.signal(signal.SIGTTIN, signal.SIG_IGN)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def clear_wake(self) -> None:
        """Read the wake pipe empty (after :attr:`wake_fd` was readable)."""
        try:
            while os.read(self.wake_fd, 512):
                pass
        except OSError:
            pass  # empty (BlockingIOError), or closed at exit: nothing left to read either way

    def wake(self) -> None:
        """End the worker's current wait: Python retries interrupted waits (PEP 475)."""
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    def handle_exit(self, signum: int, frame: Any) -> None:
        """TERM: retire (the loop sees ``alive`` false and the wake pipe)."""
        self.alive = False
        self.wake()
        if self.requests_in_main_thread and self.cfg.graceful_timeout > 0:
            # A request running in the main thread keeps the loop from ever
            # looking at the clock: an alarm cuts it at the graceful timeout,
            # so the worker reports it and exits in order (worker_exit runs)
            # before the arbiter's SIGKILL would come.
            signal.signal(signal.SIGALRM, self._graceful_timeout_over)
            signal.setitimer(signal.ITIMER_REAL, self.cfg.graceful_timeout)

    def _graceful_timeout_over(self, signum: int, frame: Any) -> None:
        if self.in_flight:  # else the loop is between requests and ends by itself
            self.in_flight.report(self.log, self.pid)
            raise SystemExit(0)

    def handle_quit(self, signum: int, frame: Any) -> None:
        self.alive = False
        self.pm.hook.corral_worker_int(worker=self)
        sys.exit(0)

    def handle_usr1(self, signum: int, frame: Any) -> None:
        reopen_logs()
        if self.access_logger is not None:
            self.access_logger.reopen()

    def handle_abort(self, signum: int, frame: Any) -> None:
        self.alive = False
        self.log.critical(
            "Worker %s (pool %s) timed out; stacks of its threads:\n%s",
            self.pid, self.pool.name, format_stacks(),
        )
        try:
            self.pm.hook.corral_worker_abort(worker=self)
        finally:
            for handler in logging.getLogger("corral").handlers:
                handler.flush()
            if self.access_logger is not None:
                self.access_logger.flush()
            os._exit(1)


def format_stacks() -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"Thread {names.get(ident, ident)}:\n{stack}")
    return "\n".join(parts)


def set_process_title(role: str, cfg: Config) -> None:
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    name = cfg.proc_name or (cfg.wsgi_app or "corral")
    setproctitle(f"corral: {role} [{name}]")
