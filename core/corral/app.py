"""Loading the WSGI application named by APP_MODULE (``module:callable``)."""

from __future__ import annotations

import ast
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from corral.errors import AppImportError

WSGIApp = Callable[..., Any]


def _parse_call(expr: str) -> tuple[str, list[Any], dict[str, Any]] | None:
    """``create_app('x', debug=True)`` -> name and literal arguments; None if not a call."""
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError as exc:
        raise AppImportError(f"cannot parse {expr!r} as an attribute name or a call") from exc
    if isinstance(node, ast.Name):
        return None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        try:
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        except ValueError as exc:
            raise AppImportError(f"factory arguments in {expr!r} must be literals") from exc
        return node.func.id, args, kwargs
    raise AppImportError(f"{expr!r}: expected a name or a call like create_app()")


def load_app(uri: str, chdir: str | None = None) -> WSGIApp:
    """Import ``module:callable`` or ``module:factory(args)`` and return the WSGI callable.

    Exceptions raised by the app's own module propagate with their traceback;
    the worker reports them and exits with the app-load status, which makes
    the arbiter stop instead of respawning forever.
    """
    if chdir:
        os.chdir(chdir)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module_name, _, expr = uri.partition(":")
    expr = expr or "application"
    if not module_name:
        raise AppImportError(f"APP_MODULE {uri!r}: expected module:callable, e.g. myapp:app")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppImportError(
                f"no module named {exc.name!r} (APP_MODULE {uri!r}, looked in {cwd}; "
                "use --chdir to load it from another directory)"
            ) from None
        raise
    call = _parse_call(expr)
    name = call[0] if call else expr
    try:
        obj = getattr(module, name)
    except AttributeError:
        raise AppImportError(f"module {module_name!r} has no attribute {name!r}") from None
    if call is not None:
        obj = obj(*call[1], **call[2])
    if not callable(obj):
        raise AppImportError(f"{uri!r} is not callable (got {type(obj).__name__})")
    return obj
