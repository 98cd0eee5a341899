"""Plugin discovery and the registry of worker classes.

Worker classes are registered lazily: a plugin returns :class:`WorkerSpec`
objects that name the class by import path, so listing or validating worker
classes never imports gevent or tornado. The class itself is imported by
:func:`load_worker_class`, which only the worker's own process calls.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from corral import PLUGIN_API, hookspecs
from corral.errors import ConfigError, PluginError

log = logging.getLogger("corral.plugins")

#: Entry-point group and pluggy project name.
GROUP = "corral"

#: Where the usual worker classes come from, for the "unknown worker" message.
KNOWN_DISTRIBUTIONS = {
    "sync": "corral-sync (installed with corral)",
    "gthread": "corral-gthread (installed with corral)",
    "gevent": "pip install corral[gevent]",
    "tornado": "pip install corral[tornado]",
}


@dataclass(frozen=True)
class WorkerSpec:
    """A worker class as a plugin declares it, without importing it.

    :param name: what ``--worker-class`` takes, e.g. ``"gevent"``.
    :param path: ``"package.module:Class"``, imported only in the worker.
    :param description: one line for ``corral plugins``.
    :param keepalive: serves several requests per connection.
    :param concurrency: ``"process"``, ``"threads"``, ``"greenlets"`` or ``"event-loop"``.
    :param monkey_patches: patches the standard library when it starts.
    :param preload_safe: an app imported in the arbiter before fork still works.
    """

    name: str
    path: str
    description: str = ""
    keepalive: bool = True
    concurrency: str = "process"
    monkey_patches: bool = False
    preload_safe: bool = True
    distribution: str = field(default="", compare=False)


@dataclass
class LoadedPlugin:
    name: str
    distribution: str
    version: str
    module: Any


def make_plugin_manager(
    *,
    disabled: Iterable[str] = (),
    entry_points: bool = True,
    extra: Iterable[Any] = (),
) -> tuple[pluggy.PluginManager, list[LoadedPlugin], list[str]]:
    """Build a fresh plugin manager: one per arbiter, never a module global.

    A plugin that fails to import, or asks for another plugin API, is reported
    (in the returned list of problems) and skipped; corral runs on with the
    others.

    :return: the manager, the plugins loaded from entry points, and the problems.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    disabled_set = {d.strip() for d in disabled if d.strip()}
    loaded: list[LoadedPlugin] = []
    problems: list[str] = []
    if entry_points:
        for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in disabled_set or dist in disabled_set:
                continue
            try:
                module = ep.load()
                check_api(module, ep.name, dist)
                pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not take corral down
                problems.append(
                    f"plugin {ep.name!r} from distribution {dist} {version} "
                    f"failed to load and is skipped: {type(exc).__name__}: {exc}"
                )
                continue
            loaded.append(LoadedPlugin(ep.name, dist, version, module))
    for plugin in extra:
        pm.register(plugin)
    return pm, loaded, problems


def check_api(module: Any, name: str, dist: str) -> None:
    wanted = getattr(module, "CORRAL_PLUGIN_API", PLUGIN_API)
    if wanted != PLUGIN_API:
        raise PluginError(
            f"it needs corral plugin API {wanted}, but this corral offers API {PLUGIN_API}; "
            f"install a version of {dist} made for this corral"
        )


def worker_registry(pm: pluggy.PluginManager) -> dict[str, WorkerSpec]:
    """Every registered worker class by name; the first plugin to claim a name wins."""
    registry: dict[str, WorkerSpec] = {}
    for impl in reversed(pm.hook.corral_register_workers.get_hookimpls()):
        specs = impl.function() or []
        for spec in specs:
            if spec.name not in registry:
                registry[spec.name] = spec
    return registry


def resolve_worker(pm: pluggy.PluginManager, name: str) -> WorkerSpec:
    """Turn ``--worker-class`` into a spec: a registered name or ``pkg.module:Class``.

    :raises ConfigError: for an unknown name, listing what is installed and
        how to get the usual classes.
    """
    registry = worker_registry(pm)
    if name in registry:
        return registry[name]
    if ":" in name or "." in name:
        path = name if ":" in name else "{}:{}".format(*name.rsplit(".", 1))
        return WorkerSpec(name=name, path=path, description="worker class given by path")
    installed = ", ".join(sorted(registry)) or "none"
    hints = "; ".join(
        f"{n}: {how}" for n, how in KNOWN_DISTRIBUTIONS.items() if n not in registry
    )
    msg = f"unknown worker class {name!r}. Installed worker classes: {installed}."
    if hints:
        msg += f" Others: {hints}."
    msg += " A class that is not a plugin can be given as 'package.module:Class'."
    raise ConfigError(msg)


def load_worker_class(spec: WorkerSpec) -> type:
    """Import the worker class; called in the worker process (or to validate a path)."""
    module_name, _, attr = spec.path.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = module
        for part in attr.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"worker class {spec.name!r} ({spec.path}) cannot be imported: {exc}"
        ) from exc
    if not isinstance(cls, type):
        raise ConfigError(f"worker class {spec.name!r} ({spec.path}) is not a class")
    return cls
