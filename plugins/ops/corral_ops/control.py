"""The control socket: steer a running corral without signals (``corral ctl``).

A unix socket, owner-only by default (``control_socket_mode``), that the
arbiter answers from its main loop (corral_ops.endpoint). The protocol is
one JSON object per line each way::

    -> {"command": "workers.add", "pool": "api", "count": 2}
    <- {"ok": true, "result": {"pool": "api", "size": 4, "was": 2}}
    <- {"ok": false, "error": "no pool named 'apj'; pools: main, api"}

A command that cannot be carried out changes nothing and says why. What a
command does is what the signal of the same meaning does (reload is HUP,
reopen USR1, shutdown TERM or QUIT, upgrade USR2): it is queued for the
main loop as the signal would be, after the answer went out.

The socket follows the arbiter through a USR2 upgrade: the new arbiter
binds the path afresh (its parent still holds the old socket, unlinked),
and the old one, when it exits, removes the file only if it is still its
own. A second corral given the same path while the first is running keeps
its hands off: it warns and runs without a control socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, Final

from corral.api import Config, ConfigError, Setting, SettingsRegistry, boolean, hookimpl, octal_mode
from corral_ops import status as st
from corral_ops.endpoint import RequestServer, bind_unix, file_id, in_use, owns
from corral_ops.values import optional_text

CORRAL_PLUGIN_API = 2

DEFAULT_NAME: Final = "corral.ctl"


def default_path() -> str:
    """gunicorn's place for it: $XDG_RUNTIME_DIR, else ~/.corral/ (made owner-only)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, DEFAULT_NAME)
    return os.path.join(os.path.expanduser("~"), ".corral", DEFAULT_NAME)


def socket_path(cfg: Any) -> str:
    path = cfg.control_socket or default_path()
    return os.path.abspath(path)


@hookimpl
def corral_add_settings(settings: SettingsRegistry) -> None:
    section = "Control socket"
    settings.add(Setting(
        name="control_socket", section=section, validator=optional_text, default=None,
        help="Unix socket for `corral ctl` (unset: $XDG_RUNTIME_DIR/corral.ctl, else "
             "~/.corral/corral.ctl).", flags=("--control-socket",), metavar="PATH", owner="control",
    ))
    settings.add(Setting(
        name="control_socket_mode", section=section, validator=octal_mode, default=0o600,
        help="Permissions of the control socket (0o600: its owner only; 0o660 adds the group).",
        flags=("--control-socket-mode",), metavar="MODE", owner="control",
    ))
    settings.add(Setting(
        name="control_socket_disable", section=section, validator=boolean, default=False,
        help="Run without a control socket.", flags=("--no-control-socket",), action="store_true",
        owner="control",
    ))


class ControlServer:
    def __init__(self, server: Any, path: str, mode: int) -> None:
        self.server = server
        self.path = path
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        sock = bind_unix(path, mode)
        self.ident = file_id(path)
        self.endpoint = RequestServer(server, sock, lambda buf: b"\n" in buf, self.answer,
                                      _reply(False, error="request too large"))
        self.commands: dict[str, Callable[[dict[str, Any]], Any]] = {
            "status": lambda req: st.status(self.server),
            "config": self.config,
            "listeners": lambda req: st.listeners(self.server),
            "workers.add": lambda req: self.resize(req, +1),
            "workers.remove": lambda req: self.resize(req, -1),
            "worker.kill": self.kill,
            "reload": lambda req: self.queue(signal.SIGHUP, "reloading"),
            "reopen": lambda req: self.queue(signal.SIGUSR1, "reopening the log files"),
            "upgrade": lambda req: self.queue(signal.SIGUSR2, "starting a new arbiter"),
            "shutdown": self.shutdown,
            "help": lambda req: sorted(self.commands),
        }

    def answer(self, data: bytes, conn: socket.socket) -> bytes:
        line = data.split(b"\n", 1)[0]
        try:
            req = json.loads(line)
        except ValueError:
            return _reply(False, error="not a JSON object: send one line like "
                                       '{"command": "status"}')
        if not isinstance(req, dict) or not isinstance(req.get("command"), str):
            return _reply(False, error='expected a JSON object with a "command"; '
                                       'try {"command": "help"}')
        command = self.commands.get(req["command"])
        if command is None:
            return _reply(False, error=f"unknown command {req['command']!r}; commands: "
                                       + ", ".join(sorted(self.commands)))
        try:
            return _reply(True, result=command(req))
        except CommandError as exc:
            return _reply(False, error=str(exc))

    # -- commands ------------------------------------------------------------------

    def _pool(self, req: dict[str, Any]) -> Any:
        pools = self.server.pools
        name = req.get("pool")
        if name is None and len(pools) == 1:
            return pools[0]
        for pool in pools:
            if pool.name == name:
                return pool
        names = ", ".join(p.name for p in pools)
        if name is None:
            raise CommandError(f"name a pool: {names}")
        raise CommandError(f"no pool named {name!r}; pools: {names}")

    def _not_stopping(self) -> None:
        if self.server.stopping:
            raise CommandError("the server is shutting down")

    def config(self, req: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pool in self.server.pools:
            out[pool.name] = _config_values(pool.cfg)
        return out

    def resize(self, req: dict[str, Any], sign: int) -> dict[str, Any]:
        self._not_stopping()
        pool = self._pool(req)
        n = req.get("count", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise CommandError(f"count must be a whole number of 1 or more, got {n!r}")
        if sign < 0 and pool.size - n < 1:
            raise CommandError(f"pool {pool.name} has {pool.size} worker(s); a pool keeps at "
                               f"least 1, so remove at most {pool.size - 1}")
        was = pool.size
        self.server.resize(pool, sign * n)
        self.server.wakeup()
        return {"pool": pool.name, "size": pool.size, "was": was}

    def kill(self, req: dict[str, Any]) -> dict[str, Any]:
        self._not_stopping()
        pid = req.get("pid")
        handle = self.server.workers.get(pid) if isinstance(pid, int) else None
        if handle is None:
            pids = ", ".join(str(p) for p in sorted(self.server.workers))
            raise CommandError(f"no worker with pid {pid!r}; workers: {pids or 'none'}")
        # As TERM to a worker: it retires gracefully, and its pool replaces it.
        self.server.retire(handle)
        return {"pid": pid, "pool": handle.pool.name, "state": "retiring"}

    def queue(self, sig: int, what: str) -> dict[str, Any]:
        self._not_stopping()
        self.server.sig_queue.append(sig)
        self.server.wakeup()
        return {"queued": signal.Signals(sig).name, "action": what}

    def shutdown(self, req: dict[str, Any]) -> dict[str, Any]:
        graceful = req.get("graceful", True)
        if not isinstance(graceful, bool):
            raise CommandError(f"graceful must be true or false, got {graceful!r}")
        self._not_stopping()
        return self.queue(signal.SIGTERM if graceful else signal.SIGQUIT,
                          "stopping gracefully" if graceful else "stopping now")

    def close(self) -> None:
        self.endpoint.close()
        # After a USR2 the path belongs to the new arbiter: leave it alone.
        if owns(self.path, self.ident):
            os.unlink(self.path)


class CommandError(Exception):
    pass


def _reply(ok: bool, **fields: Any) -> bytes:
    return json.dumps({"ok": ok, **fields}, default=str).encode() + b"\n"


def _config_values(cfg: Config) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in sorted(cfg.registry.settings):
        value = getattr(cfg, name, None)
        if callable(value):
            value = getattr(value, "__qualname__", repr(value))
        values[name] = value
    return values


_SERVERS: dict[int, ControlServer] = {}


@hookimpl
def corral_on_starting(server: Any) -> None:
    cfg = server.cfg
    if cfg.control_socket_disable:
        return
    path = socket_path(cfg)
    if os.path.exists(path) and not server.parent_pid and in_use(path):
        server.log.warning("Control socket %s is in use by another server; running without one "
                           "(give this one its own with --control-socket PATH)", path)
        return
    try:
        control = ControlServer(server, path, cfg.control_socket_mode)
    except OSError as exc:
        server.log.warning("No control socket: %s (%s)", exc, path)
        return
    _SERVERS[id(server)] = control
    server.log.info("Control socket at %s", path)


@hookimpl
def corral_arbiter_tick(server: Any) -> None:
    control = _SERVERS.get(id(server))
    if control is not None:
        control.endpoint.expire()


@hookimpl
def corral_on_exit(server: Any) -> None:
    control = _SERVERS.pop(id(server), None)
    if control is not None:
        control.close()


@hookimpl
def corral_configure(config: Config) -> None:
    if config.control_socket_disable:
        return
    if not config.control_socket:
        return  # the default place: a path too long there is a warning at start
    path = socket_path(config)
    # A unix socket's path is at most 107 bytes (sun_path); say so before starting.
    if len(os.fsencode(path)) > 107:
        raise ConfigError(f"control_socket: {path!r} is {len(os.fsencode(path))} bytes long; unix "
                          "socket paths are limited to 107: choose a shorter --control-socket")


@hookimpl
def corral_register_commands() -> dict[str, Callable[[list[str]], int]]:
    def ctl(argv: list[str]) -> int:
        from corral_ops.ctl import main

        return main(argv)

    return {"ctl": ctl}
