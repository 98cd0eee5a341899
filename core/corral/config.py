"""The configuration: settings from every source, in gunicorn's order.

Later sources win: defaults < config file < ``$CORRAL_CMD_ARGS`` < command line.
``$WEB_CONCURRENCY`` replaces the default worker count and ``$PORT`` the
default bind, as with gunicorn.

A Python config file is executed and its top-level names read: setting names
set settings; functions named after server hooks (``post_fork``...) become a
plugin, so they run alongside every other plugin's hooks. Names starting
with ``_``, modules, classes and other functions are ignored. An unknown
plain name is an error when it looks like a typo of a setting (the message
names the setting), and a logged warning otherwise, so helper variables in
existing gunicorn files keep working.
"""

from __future__ import annotations

import difflib
import os
import runpy
import tomllib
import types
from collections.abc import Callable
from typing import Any

from corral.errors import ConfigError
from corral.parity import GUNICORN_SETTINGS, unsupported
from corral.settings import SettingsRegistry

#: gunicorn's server-hook names and their positional arguments.
SERVER_HOOKS: dict[str, tuple[str, ...]] = {
    "on_starting": ("server",),
    "on_reload": ("server",),
    "when_ready": ("server",),
    "pre_fork": ("server", "worker"),
    "post_fork": ("server", "worker"),
    "post_worker_init": ("worker",),
    "worker_int": ("worker",),
    "worker_abort": ("worker",),
    "pre_exec": ("server",),
    "pre_request": ("worker", "req"),
    "post_request": ("worker", "req", "environ", "resp"),
    "child_exit": ("server", "worker"),
    "worker_exit": ("server", "worker"),
    "nworkers_changed": ("server", "new_value", "old_value"),
    "on_exit": ("server",),
    "worker_timeout": ("server", "worker"),
    "ssl_context": ("config", "default_ssl_context_factory"),
}

_CONFIG_LIKE = (str, int, float, bool, list, tuple, dict, type(None))


class Config:
    """Typed settings with where each value came from."""

    def __init__(self, registry: SettingsRegistry) -> None:
        self.registry = registry
        self.values: dict[str, Any] = {s.name: s.default for s in registry}
        self.sources: dict[str, str] = dict.fromkeys(self.values, "default")
        #: Server-hook functions from the Python config file, by gunicorn name.
        self.hooks: dict[str, Callable[..., Any]] = {}
        self.warnings: list[str] = []
        #: (uid, gid, user name) resolved from --user/--group.
        self.ids: tuple[int | None, int | None, str | None] = (None, None, None)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def set(self, name: str, value: Any, source: str) -> None:
        if name not in self.registry:
            raise ConfigError(f"{source}: unknown setting {name!r}{_suggest(name, self.registry)}")
        setting = self.registry[name]
        try:
            self.values[name] = setting.convert(value)
        except ValueError as exc:
            flag = f" ({setting.flags[-1]})" if setting.flags else ""
            raise ConfigError(f"{source}: setting {name}{flag}: {exc}") from None
        self.sources[name] = source

    def derive(self, overrides: dict[str, Any], source: str) -> Config:
        """A copy with ``overrides`` applied (a pool's own settings)."""
        from corral.pool import POOL_KEYS

        child = Config(self.registry)
        child.values = dict(self.values)
        child.sources = dict(self.sources)
        child.hooks = self.hooks
        child.ids = self.ids
        for name, value in overrides.items():
            key = name.replace("-", "_")
            if key in self.registry and key not in POOL_KEYS and not self.registry[key].per_pool:
                raise ConfigError(f"{source}: setting {key!r} applies to the whole deployment "
                                  "and cannot be set per pool")
            child.set(key, value, source)
        return child

    def pool_configs(self) -> list[tuple[str, Config]]:
        """(name, config) of every pool; one pool "main" when none is declared."""
        if not self.values.get("pools"):
            return [("main", self)]
        return [(name, self.derive(overrides, f"pool {name}"))
                for name, overrides in self.values["pools"].items()]

    # -- config files ----------------------------------------------------------

    def load_file(self, path: str) -> None:
        """Apply a Python or TOML config file; ConfigError says what and where."""
        if not os.path.exists(path):
            raise ConfigError(f"config file {path} does not exist")
        if path.endswith(".toml"):
            self._load_toml(path)
        else:
            self._load_python(path)

    def _load_python(self, path: str) -> None:
        try:
            namespace = runpy.run_path(path, run_name="__config__")
        except SyntaxError as exc:
            raise ConfigError(
                f"config file {path}, line {exc.lineno}: syntax error: {exc.msg}"
            ) from None
        except Exception as exc:
            raise ConfigError(
                f"config file {path} raised {type(exc).__name__}: {exc}"
            ) from None
        source = f"config file {path}"
        for name, value in namespace.items():
            if name.startswith("_") or isinstance(value, types.ModuleType | type):
                continue
            if name in SERVER_HOOKS and callable(value):
                self.hooks[name] = value
                continue
            if name in self.registry:
                self.set(name, value, source)
                continue
            if name in GUNICORN_SETTINGS:  # a dirty_* hook too: named, never passed over
                self._unknown(name, value, source)
                continue
            if callable(value) or not isinstance(value, _CONFIG_LIKE):
                continue
            self._unknown(name, value, source)

    def _load_toml(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        if os.path.basename(path) == "pyproject.toml":
            data = data.get("tool", {}).get("corral", {})
        source = f"config file {path}"
        for name, value in data.items():
            key = name.replace("-", "_")
            if key == "pools" and isinstance(value, dict):
                value = {n: {k.replace("-", "_"): v for k, v in o.items()} if isinstance(o, dict) else o
                         for n, o in value.items()}
            if key in self.registry:
                self.set(key, value, source)
            elif key in GUNICORN_SETTINGS:
                self._unknown(key, value, source)
            else:
                raise ConfigError(
                    f"{source}: unknown setting {name!r}{_suggest(key, self.registry)}"
                )

    def _unknown(self, name: str, value: Any, source: str) -> None:
        """A name that is not a corral setting: gunicorn's (corral.parity decides), or a typo."""
        if name in GUNICORN_SETTINGS:
            target = unsupported(name, value, source, self.warnings)
            if target is not None:
                self.set(target, value, f"{source} (gunicorn's {name})")
            return
        hint = _suggest(name, self.registry)
        if hint:
            raise ConfigError(
                f"{source}: unknown setting {name!r}{hint} "
                "(prefix helper variables with '_' to keep them out of the configuration)"
            )
        self.warnings.append(f"{source}: {name!r} is not a corral setting; ignored")

    # -- reporting -------------------------------------------------------------

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value, source) for every setting, for --print-config."""
        out = []
        for name, value in sorted(self.values.items()):
            text = repr(value)
            if name == "workers" and value == "auto":
                from corral.pool import cpu_count

                text = f"{cpu_count()}  (auto)"  # what the arbiter will start, as gunicorn prints
            out.append((name, text, self.sources[name]))
        return out


def _suggest(name: str, registry: SettingsRegistry) -> str:
    names = [s.name for s in registry]
    match = difflib.get_close_matches(name.replace("-", "_"), names, n=1, cutoff=0.75)
    return f"; did you mean {match[0]!r}?" if match else ""
