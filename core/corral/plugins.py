"""Plugin discovery and the registry of worker classes.

Worker classes are registered lazily: a plugin returns :class:`WorkerSpec`
objects that name the class by import path, so listing or validating worker
classes never imports gevent or tornado. The class itself is imported by
:func:`load_worker_class`, which only the worker's own process calls.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import importlib.util
import logging
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import pluggy

from corral import PLUGIN_API, __version__, hookspecs
from corral.errors import ConfigError, PluginError
from corral.settings import SettingsRegistry, default_registry

log = logging.getLogger("corral.plugins")

#: Entry-point group and pluggy project name.
GROUP = "corral"

#: Where the usual worker classes come from, for the "unknown worker" message.
KNOWN_DISTRIBUTIONS = {
    "sync": "built into corral (reinstall corral: pip install --force-reinstall corral)",
    "gthread": "built into corral (reinstall corral: pip install --force-reinstall corral)",
    "gevent": "pip install corral[gevent]",
    "tornado": "pip install corral[tornado]",
    "asgi": "pip install corral[asgi]",
}


@dataclass(frozen=True)
class WorkerSpec:
    """A worker class as a plugin declares it, without importing it.

    :param name: what ``--worker-class`` takes, e.g. ``"gevent"``.
    :param path: ``"package.module:Class"``, imported only in the worker.
    :param description: one line for ``corral plugins``.
    :param keepalive: serves several requests per connection.
    :param concurrency: ``"process"``, ``"threads"``, ``"greenlets"`` or ``"event-loop"``:
        how requests of one process run (for ``corral plugins`` and the docs).
    :param multithread: whether requests of one process may run at once, which
        is what an app must know (``wsgi.multithread``); None: derived from
        ``concurrency`` (anything but ``"process"``). Separate because the two
        differ: an event loop that runs one request at a time is not
        multithreaded.
    :param monkey_patches: patches the standard library when it starts.
    :param preload_safe: an app imported in the arbiter before fork still works.
    :param tls: terminates TLS itself (--certfile): it serves connections through
        :meth:`corral.workers.connection.HttpConnection.serve`, which handshakes
        in the connection's own thread of control. False refuses TLS settings at startup.
    :param app_interface: the kind of app the class serves, ``"wsgi"`` or
        ``"asgi"``: APP_MODULE is loaded and checked as one (an app of the
        other kind stops the start with an error that names both).
    :param shared_modules: modules the arbiter imports before it forks a worker
        of this class, so that every worker shares them (copy-on-write) instead
        of holding its own copy. Only modules whose import has no effect beyond
        defining things: no monkey-patching, no thread, no event loop (never
        gevent itself, say). Failures are ignored; the worker imports them anyway.
    """

    name: str
    path: str
    description: str = ""
    keepalive: bool = True
    concurrency: str = "process"
    multithread: bool | None = None
    monkey_patches: bool = False
    preload_safe: bool = True
    tls: bool = False
    app_interface: str = "wsgi"
    shared_modules: tuple[str, ...] = ()
    distribution: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.app_interface not in ("wsgi", "asgi"):
            raise ValueError(f"worker class {self.name!r}: app_interface must be 'wsgi' or 'asgi', "
                             f"not {self.app_interface!r}")

    @property
    def runs_requests_at_once(self) -> bool:
        """``wsgi.multithread`` for apps served by this class (``multithread``, or derived)."""
        if self.multithread is not None:
            return self.multithread
        return self.concurrency != "process"

    def traits(self) -> list[str]:
        """What ``corral plugins`` prints about the class, in words."""
        out = ["keep-alive" if self.keepalive else "closes each connection", self.concurrency]
        if self.app_interface != "wsgi":
            out.append(f"{self.app_interface.upper()} apps")
        wsgi = " (wsgi.multithread)" if self.app_interface == "wsgi" else ""
        out.append(f"requests at once{wsgi}" if self.runs_requests_at_once else "one request at a time")
        if self.monkey_patches:
            out.append("patches the standard library")
        if self.tls:
            out.append("TLS")
        if not self.preload_safe:
            out.append("not with --preload")
        return out


@dataclass
class LoadedPlugin:
    name: str
    distribution: str
    version: str
    module: Any


@dataclass(frozen=True)
class SkippedPlugin:
    """A plugin found through its entry point but not loaded, and why.

    :param workers: the worker classes it would have provided, where that
        could be learnt (a plugin for another API still imports), so that
        ``-k`` names the real reason instead of "unknown worker class".
    """

    name: str
    distribution: str
    version: str
    reason: str
    workers: tuple[str, ...] = ()

    def __str__(self) -> str:
        return (f"plugin {self.name!r} from distribution {self.distribution} {self.version} "
                f"is skipped: {self.reason}")


class CorralPluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering the plugins that were found but skipped."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.skipped: list[SkippedPlugin] = []


def make_plugin_manager(
    *,
    disabled: Iterable[str] = (),
    entry_points: bool = True,
    extra: Iterable[Any] = (),
) -> tuple[CorralPluginManager, list[LoadedPlugin], list[str]]:
    """Build a fresh plugin manager: one per arbiter, never a module global.

    A plugin that fails to import, asks for another plugin API, or raises
    when asked for its worker classes or settings, is reported (in the
    returned list of problems, and in ``pm.skipped``) and skipped; corral
    runs on with the others. Asking at load time costs little (those hooks
    must not import anything heavy) and keeps one broken plugin from
    failing every later command.

    :return: the manager, the plugins loaded from entry points, and the problems.
    """
    pm = CorralPluginManager()
    pm.add_hookspecs(hookspecs)
    disabled_set = {d.strip() for d in disabled if d.strip()}
    loaded: list[LoadedPlugin] = []
    # Settings declared so far, to catch a plugin that redeclares one.
    settings = default_registry()
    if entry_points:
        for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in disabled_set or dist in disabled_set:
                continue
            module: Any = None
            try:
                module = ep.load()
                check_api(module, ep.name, dist)
                pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not take corral down
                if module is not None and pm.is_registered(module):
                    pm.unregister(module)
                if isinstance(exc, PluginError):
                    reason, workers = str(exc), _worker_names_of(module)
                else:
                    reason, workers = f"it failed to load: {_describe(exc)}", ()
                pm.skipped.append(SkippedPlugin(ep.name, dist, version, reason, workers))
                continue
            try:
                _check_registrations(pm, module, settings)
            except Exception as exc:
                pm.unregister(module)
                pm.skipped.append(SkippedPlugin(ep.name, dist, version, _describe(exc)))
                continue
            loaded.append(LoadedPlugin(ep.name, dist, version, module))
    for plugin in extra:
        pm.register(plugin)
    return pm, loaded, [str(s) for s in pm.skipped]


def check_api(module: Any, name: str, dist: str) -> None:
    """Refuse a plugin whose ``CORRAL_PLUGIN_API`` is not the API this corral offers.

    A plugin that does not say is taken to need the current API.

    :raises PluginError: naming both versions and what to install.
    """
    wanted = getattr(module, "CORRAL_PLUGIN_API", PLUGIN_API)
    if type(wanted) is not int:
        raise PluginError(f"its CORRAL_PLUGIN_API must be an int, such as {PLUGIN_API}; it is {wanted!r}")
    if wanted != PLUGIN_API:
        raise PluginError(
            f"it needs corral plugin API {wanted}, but this corral ({__version__}) offers plugin "
            f"API {PLUGIN_API}; install a release of {dist} made for corral plugin API {PLUGIN_API}"
        )


def _describe(exc: BaseException) -> str:
    """``RuntimeError: boom (at plugin.py:12)``: the error and where the plugin raised it."""
    text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {last.filename}:{last.lineno})"
    return text


def _check_registrations(pm: pluggy.PluginManager, plugin: Any, settings: SettingsRegistry) -> None:
    """Call the plugin's registration hooks once, so a broken one is found at load time."""
    for impl in pm.hook.corral_register_workers.get_hookimpls():
        if impl.plugin is plugin:
            specs: Any = impl.function()
            for spec in specs or []:
                if not isinstance(spec, WorkerSpec) or ":" not in spec.path:
                    raise PluginError(f"corral_register_workers returned {spec!r}, not a "
                                      "WorkerSpec with a 'package.module:Class' path")
    for impl in pm.hook.corral_add_settings.get_hookimpls():
        if impl.plugin is plugin:
            impl.function(settings=settings)


def _worker_names_of(module: Any) -> tuple[str, ...]:
    """The worker names a skipped plugin module declares, if it can say without failing."""
    register = getattr(module, "corral_register_workers", None)
    try:
        return tuple(spec.name for spec in register() or []) if callable(register) else ()
    except Exception:
        return ()


def worker_registry(pm: pluggy.PluginManager) -> dict[str, WorkerSpec]:
    """Every registered worker class by name.

    Plugins load in the order of their entry-point names, and the first to
    claim a worker name keeps it; a later claim is logged as a warning, so
    a clash between two distributions is never silent.
    """
    registry: dict[str, WorkerSpec] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.corral_register_workers.get_hookimpls():
        specs: Any = impl.function() or []
        for spec in specs:
            if spec.name not in registry:
                registry[spec.name] = spec
                owners[spec.name] = impl.plugin_name
            elif owners[spec.name] != impl.plugin_name:
                logging.getLogger("corral.error").warning(
                    "worker class %r is registered by plugin %r and again by %r; using %r's",
                    spec.name, owners[spec.name], impl.plugin_name, owners[spec.name])
    return registry


#: gunicorn's own worker classes by their paths: a config moved over may name
#: them so. They run as corral's class of the same concept.
GUNICORN_CLASSES: Final = {
    "gunicorn.workers.sync.SyncWorker": "sync",
    "gunicorn.workers.gthread.ThreadWorker": "gthread",
    "gunicorn.workers.ggevent.GeventWorker": "gevent",
    "gunicorn.workers.gtornado.TornadoWorker": "tornado",
    "gunicorn.workers.gasgi.ASGIWorker": "asgi",
    "uvicorn.workers.UvicornWorker": "asgi",
    "uvicorn_worker.UvicornWorker": "asgi",
}


def check_class_path(name: str, path: str) -> None:
    """A worker class given by path exists: its module is found and defines the name.

    Checked in the arbiter before anything is bound, without running the
    module (it may import gevent, which the arbiter never does): the module
    is looked up with find_spec and its source read for a top-level
    definition of the class. A module without Python source is left to
    the worker's import.
    """
    module_name, _, attr = path.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"worker class {name!r}: cannot find module {module_name!r} ({exc})") from None
    if spec is None:
        raise ConfigError(f"worker class {name!r}: no module named {module_name!r} "
                          "(give a registered name, see 'corral plugins', or package.module:Class)")
    top = attr.split(".")[0]
    origin = spec.origin
    if not top or not origin or not origin.endswith(".py"):
        return
    try:
        with open(origin, "rb") as f:
            tree = ast.parse(f.read(), origin)
    except (OSError, SyntaxError, ValueError):
        return  # the worker's import reports it with its traceback
    defined = _top_level_names(tree.body)
    # A star import or a module __getattr__ may define anything: left to the import.
    if top not in defined and not defined & {"*", "__getattr__"}:
        raise ConfigError(f"worker class {name!r}: module {module_name!r} ({origin}) defines no {top!r}")


def _top_level_names(body: list[ast.stmt]) -> set[str]:
    """Names a module body binds, through if/try/with blocks (either branch counts)."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        for block in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, block, None)
            if isinstance(inner, list) and not isinstance(node, ast.ClassDef | ast.FunctionDef
                                                           | ast.AsyncFunctionDef):
                stmts = [s for h in inner for s in h.body] if block == "handlers" else inner
                names |= _top_level_names(stmts)
    return names


def resolve_worker(pm: pluggy.PluginManager, name: str) -> WorkerSpec:
    """Turn ``--worker-class`` into a spec: a registered name or ``pkg.module:Class``.

    :raises ConfigError: for an unknown name, listing what is installed and
        how to get the usual classes.
    """
    registry = worker_registry(pm)
    if name in registry:
        return registry[name]
    if name.replace(":", ".") in GUNICORN_CLASSES:
        ours = GUNICORN_CLASSES[name.replace(":", ".")]
        if ours in registry:
            return registry[ours]
        raise ConfigError(f"worker class {name!r} is gunicorn's {ours} worker: corral's is {ours!r}, "
                          f"which is not installed ({KNOWN_DISTRIBUTIONS.get(ours, '')})")
    if ":" in name or "." in name:
        path = name if ":" in name else "{}:{}".format(*name.rsplit(".", 1))
        check_class_path(name, path)
        return WorkerSpec(name=name, path=path, description="worker class given by path")
    skipped: list[SkippedPlugin] = getattr(pm, "skipped", [])
    for plugin in skipped:
        if name in plugin.workers or name in (plugin.name, plugin.distribution):
            raise ConfigError(f"worker class {name!r} is not available: {plugin}")
    installed = ", ".join(sorted(registry)) or "none"
    hints = "; ".join(
        f"{n}: {how}" for n, how in KNOWN_DISTRIBUTIONS.items() if n not in registry
    )
    msg = f"unknown worker class {name!r}. Installed worker classes: {installed}."
    if hints:
        msg += f" Others: {hints}."
    msg += " A class that is not a plugin can be given as 'package.module:Class'."
    if skipped:
        msg += " Plugins skipped because they are broken: " + ", ".join(
            f"{p.name} ({p.distribution} {p.version})" for p in skipped) + "."
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
