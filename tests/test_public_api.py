"""Plugins and examples use corral's public API only (corral.api, corral.hookspecs; the kit in tests).

A plugin that imports a core module directly, or reads or shadows a
private attribute of a core class it builds on, breaks when core changes
inside one PLUGIN_API: these tests make that a failure here, not in a
third party's deployment. They read the sources (ast), so they also cover
the code blocks of the author's guide.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import corral.api as api

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "corral"
#: What plugin code may import from corral; test code may also use the kit.
ALLOWED = ("corral.api", "corral.hookspecs")
ALLOWED_IN_TESTS = (*ALLOWED, "corral.testing")
#: Underscore attributes that plugins read which are not core's: the name
#: is core's too, but the object read is another library's.
NOT_CORE: dict[str, str] = {
    "_accept": "socket.socket._accept: the gevent worker accepts without making socket objects",
}


def plugin_sources() -> Iterator[tuple[str, str]]:
    """(label, source) of every Python file under plugins/ and examples/, and the guide's code blocks."""
    for top in ("plugins", "examples"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield str(path.relative_to(ROOT)), path.read_text()
    guide = (ROOT / "docs" / "writing-a-worker.md").read_text()
    for n, block in enumerate(re.findall(r"```python\n(.*?)```", guide, re.S)):
        yield f"docs/writing-a-worker.md block {n + 1}", block


def is_test(label: str, source: str) -> bool:
    """A test module: under a tests/ folder, or a guide block that starts ``# tests/...``."""
    return ("/tests/" in label or Path(label.split(" ")[0]).name.startswith(("test_", "conftest"))
            or source.startswith("# tests/"))


def corral_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "corral" or node.module.startswith("corral."):
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "corral" or alias.name.startswith("corral."):
                    yield node.lineno, alias.name


def test_plugins_and_examples_import_only_the_public_api() -> None:
    wrong = []
    for label, source in plugin_sources():
        allowed = ALLOWED_IN_TESTS if is_test(label, source) else ALLOWED
        for line, module in corral_imports(ast.parse(source)):
            if not (module in allowed or module.startswith(tuple(f"{a}." for a in allowed))):
                wrong.append(f"{label}:{line}: {module}")
    assert not wrong, "import these from corral.api instead:\n" + "\n".join(wrong)


def test_the_import_check_catches_a_core_import() -> None:
    # The check above must be able to fail.
    bad = ast.parse("from corral.workers.base import Worker\nimport corral.sockets\n")
    assert [m for _, m in corral_imports(bad)] == ["corral.workers.base", "corral.sockets"]


# -- private attributes of core classes ---------------------------------------------


def _core_classes() -> dict[str, list[ast.ClassDef]]:
    classes: dict[str, list[ast.ClassDef]] = {}
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append(node)
    return classes


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_names(cls: ast.ClassDef) -> set[str]:
    """Underscore methods, class attributes and ``self._x`` attributes a class defines."""
    names: set[str] = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _private(node.name):
            names.add(node.name)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "self" and _private(node.attr)):
            names.add(node.attr)
    for item in cls.body:
        targets = item.targets if isinstance(item, ast.Assign) else [item.target] if isinstance(
            item, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name) and _private(t.id)}
    return names


def core_private_names() -> dict[str, set[str]]:
    """Exported class name -> the private names it and its core base classes define."""
    classes = _core_classes()
    out: dict[str, set[str]] = {}
    for exported in (name for name in api.__all__ if name in classes):
        names: set[str] = set()
        todo, seen = [exported], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for node in classes.get(name, []):
                names |= _private_names(node)
                todo += [b.id for b in node.bases if isinstance(b, ast.Name) and b.id in classes]
        out[exported] = names
    return out


def private_uses(source: str, core: dict[str, set[str]]) -> list[tuple[int, str]]:
    """Where plugin code reads, calls or defines a private name of a core class it builds on.

    A class of the plugin that derives (directly or through the plugin's
    own classes) from an exported core class may neither use nor define
    that class's private names: using one reaches into core, defining one
    silently replaces it. Elsewhere, ``obj._name`` is flagged when
    ``_name`` is private to any exported core class.
    """
    tree = ast.parse(source)
    local = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}

    def inherited(cls: ast.ClassDef, seen: frozenset[str] = frozenset()) -> set[str]:
        names: set[str] = set()
        for base in cls.bases:
            base_name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(
                base, ast.Attribute) else ""
            if base_name in core:
                names |= core[base_name]
            elif base_name in local and base_name not in seen:
                names |= inherited(local[base_name], seen | {base_name})
        return names

    every = set().union(*core.values())
    found: list[tuple[int, str]] = []
    in_classes: set[int] = set()
    for cls in local.values():
        reserved = inherited(cls)
        for node in ast.walk(cls):
            in_classes.add(id(node))
            name = (node.name if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                    else node.attr if isinstance(node, ast.Attribute) else None)
            if name is None or name in NOT_CORE:
                continue
            from_outside = isinstance(node, ast.Attribute) and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            if name in reserved or (from_outside and name in every):
                found.append((node.lineno, name))
    for node in ast.walk(tree):
        if (id(node) not in in_classes and isinstance(node, ast.Attribute)
                and node.attr in every and node.attr not in NOT_CORE):
            found.append((node.lineno, node.attr))
    return sorted(set(found))


def test_plugins_and_examples_use_no_private_attribute_of_core() -> None:
    core = core_private_names()
    wrong = [f"{label}:{line}: {name}" for label, source in plugin_sources()
             for line, name in private_uses(source, core)]
    assert not wrong, "private names of core used or shadowed by plugin code:\n" + "\n".join(wrong)


def test_the_private_check_catches_reads_and_shadowing() -> None:
    core = core_private_names()
    assert "_wake_w" in core["Worker"]  # the check sees what Worker keeps private
    source = (
        "from corral.api import Worker, HttpConnection\n"
        "class Mine(Worker):\n"
        "    def run(self):\n"
        "        self._wake_w\n"        # reads the base's private pipe end
        "class Conn(HttpConnection):\n"
        "    def _drain(self):\n"       # silently replaces the base's drain
        "        pass\n"
        "def f(conn):\n"
        "    return conn._drain()\n"    # reaches in from outside
    )
    assert [name for _, name in private_uses(source, core)] == ["_wake_w", "_drain", "_drain"]


# -- the facade itself --------------------------------------------------------------


def test_every_exported_name_resolves() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert sorted(dir(api)) == sorted(api.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        api.nope  # noqa: B018


def test_lazy_table_and_static_imports_agree() -> None:
    # The names type checkers see (the TYPE_CHECKING block) and the names
    # resolved at run time (_EXPORTS) must be the same, from the same modules.
    tree = ast.parse((CORE / "api.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    static = {alias.asname or alias.name: node.module for node in block.body
              if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert static == api._EXPORTS
    assert set(api.__all__) == {*api._EXPORTS, "PLUGIN_API", "hookimpl", "ParserEvent"}


def test_a_plugin_module_loaded_in_the_arbiter_imports_no_serving_code() -> None:
    # What a plugin's registration module imports (WorkerSpec, hookimpl)
    # must not pull the worker machinery, asyncio with it, into the arbiter.
    code = ("import sys\nfrom corral.api import WorkerSpec, hookimpl\n"
            "print(sorted(m for m in sys.modules if m == 'asyncio' or m.startswith('corral.workers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_package_is_typed() -> None:
    assert (CORE / "py.typed").is_file()
