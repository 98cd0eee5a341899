"""The arbiter: the master process that binds, forks and keeps workers right.

Signal handlers only put the signal on a queue and write a byte to a wake
pipe; the main loop drains the queue, so no handler has to be reentrant and
every action happens at one well-defined point of the loop. Each turn of the
loop: handle queued signals, reap exited children, kill workers whose
heartbeat stopped, then bring every pool to its target size.

Signals (gunicorn's meanings): HUP reloads the configuration and replaces
workers gracefully (a broken config keeps the old one); TERM stops
gracefully; INT and QUIT stop fast; TTIN/TTOU add/remove a worker; USR1
reopens logs everywhere; USR2 execs a new arbiter that inherits the
listeners; WINCH stops the workers but keeps the arbiter.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import importlib
import logging
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Final

import pluggy

from corral.app import load_app
from corral.config import Config
from corral.errors import ConfigError, HaltServer
from corral.heartbeat import Heartbeat
from corral.listener_set import ListenerSet
from corral.logs import apply_log_config, reopen_logs, setup_error_log
from corral.pidfile import Pidfile
from corral.plugins import WorkerSpec, load_worker_class, resolve_worker
from corral.pool import Pool, WorkerHandle
from corral.sockets import Listener, export_fds
from corral.stats import StatsTable
from corral.systemd import sd_notify
from corral.workers.balance import ConnectionShare
from corral.workers.base import APP_LOAD_ERROR, WORKER_BOOT_ERROR, set_process_title

#: Signals the arbiter queues for its main loop.
HANDLED_SIGNALS: Final = (
    signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM, signal.SIGTTIN,
    signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
)
#: Longest sleep of the main loop; heartbeats are checked at least this often.
LOOP_INTERVAL: Final = 1.0
#: After SIGABRT, a worker that has not died after this long gets SIGKILL;
#: after graceful_timeout (a stop, a reload), one that has not exited yet.
ABORT_GRACE: Final = 1.0
#: Environment variable through which a new arbiter learns its parent's pid (USR2).
PARENT_ENV: Final = "CORRAL_PARENT_PID"
_SIGNAMES = {getattr(signal, n): n for n in dir(signal) if n.startswith("SIG") and "_" not in n}


class Arbiter:
    """The master process. :meth:`run` returns the exit status."""

    def __init__(
        self,
        cfg: Config,
        pm: pluggy.PluginManager,
        *,
        reload_config: Callable[[], Config] | None = None,
        plugin_summary: str = "",
        problems: list[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.pm = pm
        self.reload_config = reload_config
        self.plugin_summary = plugin_summary
        #: Plugins that were skipped, repeated in the error log at start
        #: (stderr alone is easy to miss under --daemon or --error-logfile).
        self.problems = problems or []
        self.log = setup_error_log(cfg.errorlog, cfg.loglevel)
        apply_log_config(cfg.logconfig, cfg.logconfig_json, cfg.logconfig_dict)
        self.pid = os.getpid()
        self.sockets = ListenerSet(self.log, self.pid)
        self.pools: list[Pool] = []
        self.workers: dict[int, WorkerHandle] = {}
        #: WorkerSpec.shared_modules already imported (see _import_shared_modules).
        self._shared_modules: set[str] = set()
        self.generation = 0
        self.worker_age = 0
        self.sig_queue: collections.deque[int] = collections.deque()
        self.stopping = False
        self.winched = False
        self.reexec_pid = 0
        self.parent_pid = int(os.environ.pop(PARENT_ENV, "0") or 0)
        self.pidfile = Pidfile(self.pid)
        self.ready_notified = False
        self._wake_r, self._wake_w = os.pipe()
        self._ready_r, self._ready_w = os.pipe()
        for fd in (self._wake_r, self._wake_w, self._ready_r):
            os.set_blocking(fd, False)
        self.start_cwd = os.getcwd()
        #: Each pool's live counters by pool name (corral.stats): kept across
        #: reloads, so a pool's totals run on while its workers are replaced.
        self.stats: dict[str, StatsTable] = {}
        #: Workers replaced for a reason (max_requests, memory, ...), by
        #: (pool name, reason): what the metrics and the control socket report.
        self.recycles: collections.Counter[tuple[str, str]] = collections.Counter()
        #: time.time() when this arbiter started (for uptime in status).
        self.started_at = time.time()
        #: File descriptors plugins watch in the main loop (add_reader).
        self._readers: dict[int, Callable[[], None]] = {}

    @property
    def listeners(self) -> dict[str, Listener]:
        """Bound listeners by configured address (for hooks, like gunicorn's ``LISTENERS``)."""
        return self.sockets.by_address

    # -- start and run -----------------------------------------------------------

    def run(self) -> int:
        try:
            self.start()
            while True:
                self.loop_once()
        except HaltServer as halt:
            return self.halt(halt.reason, halt.exit_status)
        except SystemExit as exc:
            self.stop(graceful=False)
            return int(exc.code or 0)
        except Exception:
            self.log.exception("Unhandled exception in the arbiter")
            self.stop(graceful=False)
            return 1

    def start(self) -> None:
        self.log.info("Starting corral (pid %s)%s", self.pid, self.plugin_summary)
        for problem in self.problems:
            self.log.warning("%s", problem)
        self.install_signals()
        self.pm.hook.corral_on_starting(server=self)
        pools = self.build_pools(self.cfg)
        self.sockets.assign(pools)
        self.pools = pools
        self.pidfile.write(self.cfg.pidfile, upgrading=bool(self.parent_pid))
        for pool in self.pools:
            self.log.info("Pool %s: %s x %s worker(s), app %s, at %s", pool.name, pool.size,
                          pool.spec.name, pool.app_uri, ", ".join(lst.name for lst in pool.listeners))
            # As gunicorn, which calls it when the worker count is first set (old_value None).
            self.pm.hook.corral_nworkers_changed(server=self, new_value=pool.size, old_value=None)
        set_process_title("master", self.cfg)
        self.manage_workers()
        self.pm.hook.corral_when_ready(server=self)

    def build_pools(self, cfg: Config) -> list[Pool]:
        pools = []
        for name, pcfg in cfg.pool_configs():
            spec = resolve_worker(self.pm, pcfg.worker_class)
            size = pcfg.workers if isinstance(pcfg.workers, int) else _auto_workers()
            pool = Pool(name=name, spec=spec, size=size, cfg=pcfg, app_uri=pcfg.wsgi_app,
                        addresses=list(pcfg.bind), share=ConnectionShare(max(8, 2 * size)))
            if pcfg.preload_app:
                try:
                    pool.preloaded_app = load_app(pcfg.wsgi_app, None, interface=spec.app_interface,
                                                  worker_class=spec.name)
                except Exception:
                    self.log.exception("Failed to preload the application %r (pool %s)",
                                       pcfg.wsgi_app, name)
                    raise HaltServer("App failed to load.", APP_LOAD_ERROR) from None
            pools.append(pool)
        return pools

    def loop_once(self) -> None:
        sig = self.sig_queue.popleft() if self.sig_queue else None
        if sig is not None:
            self.handle_signal(sig)
        else:
            self.sleep()
        self.reap_workers()
        self.read_ready()
        self.murder_workers()
        if not self.stopping:
            self.manage_workers()
        self.check_parent()
        self.pm.hook.corral_arbiter_tick(server=self)

    # -- signals -----------------------------------------------------------------

    def install_signals(self) -> None:
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._queue_signal)
        signal.signal(signal.SIGCHLD, self._on_sigchld)

    def _queue_signal(self, signum: int, frame: Any) -> None:
        # Only enqueue and wake: everything else happens in the main loop.
        if len(self.sig_queue) < 16:
            self.sig_queue.append(signum)
        self.wakeup()

    def _on_sigchld(self, signum: int, frame: Any) -> None:
        self.wakeup()

    def wakeup(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b".")

    def sleep(self, timeout: float = LOOP_INTERVAL) -> None:
        try:
            ready, _, _ = select.select([self._wake_r, self._ready_r, *self._readers], [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 64):
                    pass
        for fd in ready:
            callback = self._readers.get(fd)
            if callback is None:
                continue
            try:
                callback()
            except HaltServer:
                raise
            except Exception:
                self.log.exception("A reader callback failed (fd %s)", fd)

    # -- what plugins use (docs/plugins.md) ------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` from the main loop whenever ``fd`` is readable.

        For a plugin's own socket (the control socket, the metrics endpoint):
        the callback runs between signals and reaps, like everything the
        arbiter does, so it must not block. It runs during a graceful stop
        too, until the last worker has gone.
        """
        self._readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self._readers.pop(fd, None)

    def recycle(self, handle: WorkerHandle, reason: str) -> bool:
        """Replace a worker with the graceful policy: its replacement first, then TERM.

        False if it is already on its way out. ``reason`` is counted in
        ``recycles`` (a label of corral_worker_recycles_total).
        """
        if handle.retiring or handle.recycle or handle.pid not in self.workers:
            return False
        handle.recycle = True
        self.recycles[handle.pool.name, reason] += 1
        return True

    @property
    def ready(self) -> bool:
        """Every pool has its workers booted, and the arbiter is not stopping.

        Workers of the previous configuration count while they serve: a
        reload or a recycle replaces workers with no moment short of them,
        and an orchestrator should not take the server out of rotation then.
        """
        if self.stopping or self.winched:
            return False
        for pool in self.pools:
            booted = sum(1 for h in self.workers.values()
                         if h.pool.name == pool.name and h.booted and not h.retiring)
            if booted < pool.size:
                return False
        return bool(self.pools)

    def handle_signal(self, sig: int) -> None:
        name = _SIGNAMES.get(sig, str(sig))
        self.log.info("Handling signal: %s", name.lower().removeprefix("sig"))
        if sig == signal.SIGHUP:
            self.reload()
        elif sig == signal.SIGTERM:
            self.stop(graceful=True)
            raise HaltServer("", 0)
        elif sig in (signal.SIGINT, signal.SIGQUIT):
            self.stop(graceful=False)
            raise HaltServer("", 0)
        elif sig in (signal.SIGTTIN, signal.SIGTTOU):
            pool = self.scale_target()
            if pool is not None:
                self.resize(pool, +1 if sig == signal.SIGTTIN else -1)
        elif sig == signal.SIGUSR1:
            reopen_logs()
            self.kill_workers(signal.SIGUSR1)
        elif sig == signal.SIGUSR2:
            self.reexec()
        elif sig == signal.SIGWINCH:
            if sys.stdin is not None and sys.stdin.isatty():
                # A terminal resize sends WINCH too; gunicorn also ignores it then.
                self.log.info("SIGWINCH ignored: corral runs in a terminal")
                return
            self.log.info("Stopping all workers gracefully (WINCH); HUP brings them back")
            self.winched = True
            for handle in self.workers.values():
                self.retire(handle)

    def scale_target(self) -> Pool | None:
        """The pool TTIN/TTOU act on: the one named in the scale file, else the first.

        ``corral scale PID POOL`` writes the pool's name to scale_file(PID)
        before signalling. The file is trusted only if it belongs to the
        arbiter's own user (anyone may write in the temp dir).
        """
        path = scale_file(self.pid)
        name = None
        try:
            st = os.stat(path)
            if st.st_uid == os.geteuid():
                with open(path) as f:
                    name = f.read().strip()
            os.unlink(path)
        except OSError:
            pass
        if name:
            for pool in self.pools:
                if pool.name == name:
                    return pool
            self.log.warning("TTIN/TTOU: no pool named %r; pools: %s", name,
                             ", ".join(p.name for p in self.pools))
            return None
        return self.pools[0]

    def resize(self, pool: Pool, delta: int) -> None:
        old = pool.size
        pool.size = max(1, pool.size + delta)
        if pool.size != old:
            self.log.info("Pool %s: %s -> %s workers", pool.name, old, pool.size)
            self.pm.hook.corral_nworkers_changed(server=self, new_value=pool.size, old_value=old)

    # -- workers -----------------------------------------------------------------

    def manage_workers(self) -> None:
        """Bring every pool to its size: spawn the missing, retire the extra and the old."""
        for pool in self.pools:
            target = 0 if self.winched else pool.size
            # A worker that asked to be recycled still serves but no longer
            # counts: its replacement starts now.
            current = [h for h in self.workers.values()
                       if h.pool is pool and h.generation == self.generation
                       and not h.retiring and not h.recycle]
            for _ in range(target - len(current)):
                self.spawn_worker(pool)
            if len(current) > target:
                for handle in sorted(current, key=lambda h: h.age)[: len(current) - target]:
                    self.retire(handle)
            # After a reload, old workers go once the new ones are serving;
            # so do recycled ones once their replacements are.
            booted = sum(1 for h in current if h.booted)
            if booted >= target:
                for handle in list(self.workers.values()):
                    if handle.pool.name == pool.name and (handle.generation < self.generation
                                                          or handle.recycle):
                        self.retire(handle)
        names = {p.name for p in self.pools}
        for handle in list(self.workers.values()):
            if handle.pool.name not in names:
                self.retire(handle)  # the pool was removed by a reload

    def spawn_worker(self, pool: Pool) -> None:
        self.worker_age += 1
        heartbeat = Heartbeat(pool.cfg.worker_tmp_dir)
        uid, gid, _ = pool.cfg.ids
        if uid is not None or gid is not None:
            # The worker drops privileges and must still be able to beat.
            os.fchown(heartbeat.fd, -1 if uid is None else uid, -1 if gid is None else gid)
        handle = WorkerHandle(pid=0, age=self.worker_age, pool=pool, heartbeat=heartbeat,
                              generation=self.generation, slot=self._free_slot(pool),
                              stats_slot=self._stats_slot(pool))
        self.pm.hook.corral_pre_fork(server=self, worker=handle)
        self._import_shared_modules(pool.spec)
        # The child's garbage collector must not walk the objects it
        # inherits: setting their GC bits would copy every page they sit on
        # (a gevent worker's first full collection made ~2.5 MiB of shared
        # pages private). Frozen objects are skipped; the parent thaws
        # them at once, so its own collections are unchanged.
        gc.freeze()
        pid = os.fork()
        if pid:
            gc.unfreeze()
            handle.pid = pid
            self.workers[pid] = handle
            # gunicorn's wording: the line operators grep for.
            self.log.info("Booting worker with pid: %s (pool %s, %s)", pid, pool.name, pool.spec.name)
            return
        self._run_worker(handle)

    def _stats_slot(self, pool: Pool) -> int | None:
        """The worker's slot in its pool's StatsTable (made at the pool's first worker)."""
        if not pool.cfg.worker_stats:
            return None
        table = self.stats.get(pool.name)
        if table is None:
            table = self.stats[pool.name] = StatsTable(max(64, 4 * pool.size))
        taken = {h.stats_slot for h in self.workers.values() if h.pool.name == pool.name}
        for slot in range(table.slots):
            if slot not in taken:
                return slot
        self.log.warning("Pool %s: more than %s workers at once; the new one is not counted "
                         "in the stats", pool.name, table.slots)
        return None

    def _free_slot(self, pool: Pool) -> int | None:
        """The worker's slot in its pool's connection table (None past its size: it does not balance)."""
        if pool.share is None:
            return None
        taken = {h.slot for h in self.workers.values() if h.pool is pool and h.slot is not None}
        return pool.share.free_slot(taken)

    def _import_shared_modules(self, spec: WorkerSpec) -> None:
        """Import what the worker class declares safe to share, once, before its first fork.

        Imported here, those modules' objects sit in pages every worker
        shares with the arbiter instead of a private copy per worker.
        """
        for name in spec.shared_modules:
            if name in self._shared_modules:
                continue
            self._shared_modules.add(name)
            try:
                importlib.import_module(name)
            except Exception as exc:
                # The worker imports it again and reports a real failure itself.
                self.log.debug("Could not import %s for worker class %s ahead of fork: %s",
                               name, spec.name, exc)

    def _run_worker(self, handle: WorkerHandle) -> None:
        """In the child: become a worker; never returns."""
        status = 0
        worker = None
        try:
            for sig in HANDLED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(self._wake_r)
            os.close(self._wake_w)
            os.close(self._ready_r)
            for other in self.workers.values():
                other.heartbeat.close()
            pool = handle.pool
            cls = load_worker_class(pool.spec)
            worker = cls(age=handle.age, ppid=self.pid, pool=pool, listeners=pool.listeners,
                         cfg=pool.cfg, log=self.log, heartbeat=handle.heartbeat, pm=self.pm,
                         app=pool.preloaded_app, ready_fd=self._ready_w, server=self)
            if pool.share is not None and handle.slot is not None:
                worker.balance = pool.share.member(handle.slot)
            table = self.stats.get(pool.name)
            if table is not None and handle.stats_slot is not None:
                worker.stats = table.member(handle.stats_slot, os.getpid())
            self.pm.hook.corral_post_fork(server=self, worker=worker)
            worker.init_process()
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 0
        except BaseException:
            self.log.exception("Exception in worker process")
            status = WORKER_BOOT_ERROR if worker is None or not worker.booted else 1
        finally:
            if worker is not None and worker.stats is not None:
                with contextlib.suppress(Exception):
                    worker.stats.publish(0)  # the last numbers, for the pool's totals
            with contextlib.suppress(Exception):
                for h in logging.getLogger("corral").handlers:
                    h.flush()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)

    def retire(self, handle: WorkerHandle) -> None:
        if handle.retiring:
            return
        handle.retiring = True
        handle.retired_at = time.monotonic()
        self.kill_worker(handle.pid, signal.SIGTERM)

    def kill_worker(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def kill_workers(self, sig: int) -> None:
        for pid in list(self.workers):
            self.kill_worker(pid, sig)

    def read_ready(self) -> None:
        try:
            data = os.read(self._ready_r, 4096)
        except BlockingIOError:
            return
        # A worker writes its pid when it is ready, and minus its pid when it
        # asks to be replaced (Worker.request_recycle).
        for (pid,) in struct.iter_unpack("=i", data[: len(data) - len(data) % 4]):
            handle = self.workers.get(abs(pid))
            if handle is None:
                continue
            if pid > 0:
                handle.booted = True
                self.log.debug("Worker %s (pool %s) is ready", pid, handle.pool.name)
            elif self.recycle(handle, "max_requests"):
                self.log.info("Worker %s (pool %s) asked to be recycled; starting its replacement",
                              -pid, handle.pool.name)
        if not self.ready_notified and self.workers and all(h.booted for h in self.workers.values()):
            self.ready_notified = True
            self.log.info("Ready: %s worker(s) serving", len(self.workers))
            sd_notify(f"READY=1\nSTATUS=serving\nMAINPID={self.pid}")

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.reexec_pid:
                self.reexec_pid = 0
                self.log.error("The new arbiter (pid %s) exited with status %s; carrying on",
                               pid, os.waitstatus_to_exitcode(status))
                self.pidfile.restore()
                continue
            handle = self.workers.pop(pid, None)
            if handle is None:
                continue
            handle.heartbeat.close()
            if handle.slot is not None and handle.pool.share is not None:
                handle.pool.share.clear(handle.slot)  # the worker may have died without leaving
            table = self.stats.get(handle.pool.name)
            if table is not None and handle.stats_slot is not None:
                table.retire(handle.stats_slot)
            code = os.waitstatus_to_exitcode(status)
            if code == WORKER_BOOT_ERROR:
                raise HaltServer("Worker failed to boot.", WORKER_BOOT_ERROR)
            if code == APP_LOAD_ERROR:
                raise HaltServer("App failed to load.", APP_LOAD_ERROR)
            if handle.aborted_at is not None:
                self.log.error("Worker %s (pool %s) was stopped after a timeout (status %s)", pid,
                               handle.pool.name, code)
            elif code < 0:
                signame = _SIGNAMES.get(-code, str(-code))
                if handle.retiring and -code == signal.SIGTERM:
                    pass
                else:
                    self.log.error("Worker %s (pool %s) was killed by %s", pid,
                                   handle.pool.name, signame)
            elif code != 0:
                self.log.error("Worker %s (pool %s) exited with status %s", pid, handle.pool.name,
                               code)
            elif not handle.retiring:
                self.log.info("Worker %s (pool %s) exited", pid, handle.pool.name)
            with contextlib.suppress(Exception):
                self.pm.hook.corral_child_exit(server=self, worker=handle)

    def murder_workers(self) -> None:
        """Kill workers whose heartbeat stopped: SIGABRT first, SIGKILL if that fails."""
        now = time.monotonic()
        wall = time.time()
        for handle in list(self.workers.values()):
            if handle.aborted_at is not None:
                if now - handle.aborted_at > ABORT_GRACE:
                    self.kill_worker(handle.pid, signal.SIGKILL)
                continue
            if handle.retiring:
                grace = handle.pool.cfg.graceful_timeout
                if handle.retired_at is not None and now - handle.retired_at > grace + ABORT_GRACE:
                    self.log.warning("Worker %s did not stop within graceful_timeout; killing", handle.pid)
                    self.kill_worker(handle.pid, signal.SIGKILL)
                continue
            timeout = handle.pool.cfg.timeout
            if not timeout:
                continue
            try:
                silent = wall - handle.heartbeat.last_beat()
            except OSError:
                continue
            if silent <= timeout:
                continue
            phase = "serving" if handle.booted else "booting"
            self.log.critical("WORKER TIMEOUT (pid:%s, pool %s, while %s, silent for %.1f s)",
                              handle.pid, handle.pool.name, phase, silent)
            with contextlib.suppress(Exception):
                self.pm.hook.corral_worker_timeout(server=self, worker=handle)
            handle.aborted_at = now
            self.kill_worker(handle.pid, signal.SIGABRT)

    # -- reload, upgrade, stop ------------------------------------------------------

    def reload(self) -> None:
        if self.reload_config is None:
            return
        sd_notify("RELOADING=1")
        try:
            cfg = self.reload_config()
            pools = self.build_pools(cfg)
            self.sockets.assign(pools)
        except (ConfigError, HaltServer) as exc:
            msg = exc.reason if isinstance(exc, HaltServer) else str(exc)
            self.log.error("Reload failed, still running on the previous configuration: %s", msg)
            sd_notify("READY=1")
            return
        self.cfg = cfg
        setup_error_log(cfg.errorlog, cfg.loglevel)
        apply_log_config(cfg.logconfig, cfg.logconfig_json, cfg.logconfig_dict)
        self.log.info("Reloading: replacing workers gracefully")
        self.pm.hook.corral_on_reload(server=self)
        old_sizes = {p.name: p.size for p in self.pools}
        self.generation += 1
        self.winched = False
        self.pools = pools
        for pool in pools:
            if old_sizes.get(pool.name) != pool.size:
                self.pm.hook.corral_nworkers_changed(server=self, new_value=pool.size,
                                                     old_value=old_sizes.get(pool.name))
        self.manage_workers()
        sd_notify("READY=1")

    def reexec(self) -> None:
        """USR2: fork and exec a new arbiter that inherits the listeners."""
        if self.reexec_pid:
            self.log.warning("USR2 ignored: an upgrade (pid %s) is already running", self.reexec_pid)
            return
        if self.parent_pid:
            self.log.warning("USR2 ignored: this arbiter is itself an upgrade whose parent is alive")
            return
        pid = os.fork()
        if pid:
            self.reexec_pid = pid
            self.log.info("Upgrade: started a new arbiter, pid %s", pid)
            return
        try:
            export_fds(list(self.listeners.values()))
            os.environ[PARENT_ENV] = str(self.pid)
            os.chdir(self.start_cwd)
            self.pm.hook.corral_pre_exec(server=self)
            argv = [sys.executable, "-m", "corral", *sys.argv[1:]]
            # After the hook, so that what it puts in os.environ reaches the new arbiter.
            os.execve(sys.executable, argv, dict(os.environ))
        except BaseException:
            self.log.exception("exec of the new arbiter failed")
        finally:
            os._exit(1)

    def check_parent(self) -> None:
        """In an upgraded arbiter: once the old one is gone, take over its pidfile."""
        if self.parent_pid and os.getppid() != self.parent_pid:
            self.log.info("The old arbiter (pid %s) has exited; taking over", self.parent_pid)
            self.parent_pid = 0
            self.pidfile.take_over(self.cfg.pidfile)
            sd_notify(f"MAINPID={self.pid}")

    def stop(self, graceful: bool = True) -> None:
        """Stop accepting at once, then stop the workers (gracefully or not)."""
        if self.stopping:
            return
        self.stopping = True
        if not self.reexec_pid:
            # After a USR2 the new arbiter is the service (it sent MAINPID=);
            # systemd would take our STOPPING=1 as the whole service stopping.
            sd_notify("STOPPING=1")
        # An upgraded arbiter that inherited the sockets still uses them; only
        # unlink unix sockets when nobody else will.
        unlink = self.reexec_pid == 0 and self.parent_pid == 0
        self.sockets.close_all(unlink=unlink, for_good=unlink)
        for handle in self.workers.values():
            handle.retiring = True
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        # Workers keep graceful_timeout themselves where they can (the
        # gthread, gevent and asyncio classes cut what is still running at
        # its end and log how many connections they cut); ABORT_GRACE more
        # lets them exit in order before the SIGKILL, as on a reload
        # (murder_workers). The SIGKILL is for those that cannot: a sync
        # worker inside a long request, an app that ignores the stop.
        limit = time.monotonic() + (self.cfg.graceful_timeout + ABORT_GRACE if graceful else 2.0)
        self.kill_workers(sig)
        while self.workers and time.monotonic() < limit:
            with contextlib.suppress(HaltServer):
                self.reap_workers()
            # Not time.sleep: plugins' sockets are still answered (a health
            # endpoint says "not ready" until the last worker is gone).
            with contextlib.suppress(HaltServer):
                self.sleep(0.05)
                self.read_ready()  # else a readable ready pipe would make select spin
                self.pm.hook.corral_arbiter_tick(server=self)
        if graceful:
            for pid in self.workers:
                self.log.warning("Worker %s did not stop within graceful_timeout; killing", pid)
        self.kill_workers(signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while self.workers and time.monotonic() < deadline:
            with contextlib.suppress(HaltServer):
                self.reap_workers()
            time.sleep(0.02)

    def halt(self, reason: str, status: int) -> int:
        self.stop(graceful=status == 0)
        if reason:
            self.log.error("Shutting down: %s", reason)
        else:
            self.log.info("Shutting down: master")
        with contextlib.suppress(Exception):
            self.pm.hook.corral_on_exit(server=self)
        self.pidfile.remove()
        return status


def scale_file(pid: int) -> str:
    """Where ``corral scale`` names the pool for the next TTIN/TTOU of arbiter ``pid``."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"corral-{pid}.scale")


def _auto_workers() -> int:
    from corral.pool import cpu_count

    return cpu_count()

