"""Which attribute names a worker class may not take: those its corral base classes keep.

A worker class that assigns ``self.limits = ...`` or ``self.write_timeout
= ...`` for its own purposes silently replaces what the base reads (an
outside author's worker did exactly that). The conformance suite reads the
worker class's own source (ast, nothing is run) and fails on any name that
a corral base class in its MRO assigns, except the documented extension
points in :data:`OVERRIDABLE`, and on any private (underscore) name of a
corral base.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Final

#: Attributes a worker class is meant to set (docs/writing-a-worker.md).
OVERRIDABLE: Final = frozenset({
    "multithread",              # wsgi.multithread
    "requests_in_main_thread",  # TERM's alarm cuts a request running there
    "alive",                    # set False to retire (the parent gone, a fatal error)
    "watchdog",                 # the RequestWatchdog a class creates in run()
    "wsgi",                     # the app to call, wrapped by a class that watches it
    "executor",                 # AsyncioWorker: the pool WSGI apps run in
    "accept_batch",             # AsyncioWorker: connections taken per readiness event
    "loop",                     # the loop a class runs (SelectorLoopWorker, AsyncioWorker)
    "serves",                   # the app interface a class given by path declares ("asgi")
})


def _is_core(cls: type) -> bool:
    return cls.__module__ == "corral" or cls.__module__.startswith("corral.")


def _class_source(cls: type) -> ast.ClassDef | None:
    """The class's own definition, its line numbers those of its file."""
    try:
        lines, first = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return None  # built dynamically, or no source shipped: nothing to read
    node = ast.parse(textwrap.dedent("".join(lines))).body[0]
    if not isinstance(node, ast.ClassDef):
        return None
    ast.increment_lineno(node, first - 1)
    return node


def _assigned(node: ast.ClassDef) -> dict[str, int]:
    """Data names the class assigns: ``self.x = ...`` anywhere in it, and class-level names (line)."""
    names: dict[str, int] = {}
    for item in node.body:
        targets = (item.targets if isinstance(item, ast.Assign)
                   else [item.target] if isinstance(item, ast.AnnAssign | ast.AugAssign) else [])
        for target in targets:
            if isinstance(target, ast.Name):
                names.setdefault(target.id, item.lineno)
    for sub in ast.walk(node):
        if (isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store)
                and isinstance(sub.value, ast.Name) and sub.value.id == "self"):
            names.setdefault(sub.attr, sub.lineno)
    return names


def _methods(node: ast.ClassDef) -> dict[str, int]:
    return {item.name: item.lineno for item in node.body
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)}


def _used_privates(node: ast.ClassDef) -> dict[str, int]:
    return {sub.attr: sub.lineno for sub in ast.walk(node)
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
            and sub.value.id == "self" and sub.attr.startswith("_") and not sub.attr.startswith("__")}


def collisions(worker_class: type) -> list[str]:
    """Each name the class's own code takes from a corral base class, as a line for the report."""
    core = [c for c in worker_class.__mro__ if _is_core(c) and c is not object]
    own = [c for c in worker_class.__mro__ if not _is_core(c) and c is not object]
    base_data: dict[str, str] = {}
    base_private: dict[str, str] = {}
    for cls in core:
        node = _class_source(cls)
        if node is None:
            continue
        for name in (*_assigned(node), *_methods(node)):
            if name.startswith("_") and not name.startswith("__"):
                base_private.setdefault(name, cls.__name__)
        for name in _assigned(node):
            if not name.startswith("_") and name not in OVERRIDABLE:
                base_data.setdefault(name, cls.__name__)
    found: list[str] = []
    for cls in own:
        node = _class_source(cls)
        if node is None:
            continue
        where = f"{inspect.getsourcefile(cls)}: {cls.__qualname__}"
        mine = {**_methods(node), **_assigned(node)}
        for name, line in mine.items():
            if name in base_data:
                found.append(f"{where} (line {line}) sets {name!r}, which "
                             f"{base_data[name]} keeps: pick another name")
            elif name in base_private:
                found.append(f"{where} (line {line}) defines {name!r}, private to "
                             f"{base_private[name]}: pick another name")
        for name, line in _used_privates(node).items():
            if name in base_private and name not in mine:
                found.append(f"{where} (line {line}) uses {name!r}, private to "
                             f"{base_private[name]}: use the public API (corral.api)")
    return found
