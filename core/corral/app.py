"""Loading the application named by APP_MODULE (``module:callable``), WSGI or ASGI.

Which interface an app must have is the worker class's to say
(:attr:`corral.plugins.WorkerSpec.app_interface`): a WSGI class loads a
WSGI callable, an ASGI class an ASGI 3 one, and an app of the other kind is
an error that names both, at load time, instead of a TypeError (or a
coroutine never awaited) on the first request.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, Final

from corral.errors import AppImportError

WSGIApp = Callable[..., Any]
#: The interfaces a worker class may serve (WorkerSpec.app_interface).
APP_INTERFACES: Final = ("wsgi", "asgi")


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


def is_asgi_app(obj: object) -> bool:
    """Whether ``obj`` is an ASGI 3 app: a coroutine function, or an object whose ``__call__`` is one.

    That is how every ASGI framework's app looks (Starlette, FastAPI,
    Django's ASGIHandler, Quart, Litestar), and middleware that wraps one
    keeps the shape. A plain callable is taken for WSGI; an ASGI app
    hidden behind one (a ``def`` that returns the coroutine) is not
    recognised: wrap it in an ``async def`` (docs/asgi.md).
    """
    if inspect.isclass(obj):
        return False  # ASGI 2's two-step classes are not supported; a WSGI app class is WSGI
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.iscoroutinefunction(obj):
        return True
    return callable(obj) and inspect.iscoroutinefunction(type(obj).__call__)


def check_interface(obj: object, interface: str, uri: str, worker_class: str) -> None:
    """Refuse an app of the wrong kind for the worker class, naming both and the way out."""
    asgi = is_asgi_app(obj)
    if interface == "asgi" and not asgi:
        raise AppImportError(
            f"APP_MODULE {uri!r} is not an ASGI application (it is a plain callable, as WSGI apps "
            f"are), but worker class {worker_class!r} serves ASGI apps (an async callable taking "
            "scope, receive, send). Serve a WSGI app with a WSGI class (--worker-class gthread), or "
            "point APP_MODULE at the ASGI app (Django: myproject.asgi:application)")
    if interface == "wsgi" and asgi:
        raise AppImportError(
            f"APP_MODULE {uri!r} is an ASGI application (an async callable), but worker class "
            f"{worker_class!r} serves WSGI apps. Serve it with --worker-class asgi (pip install "
            "'corral[asgi]'), or point APP_MODULE at the WSGI app (Django: myproject.wsgi:application)")


def load_app(uri: str, chdir: str | None = None, *, interface: str = "wsgi",
             worker_class: str = "sync") -> WSGIApp:
    """Import ``module:callable`` or ``module:factory(args)`` and return the app.

    ``interface`` is what ``worker_class`` serves ("wsgi" or "asgi"): an app
    of the other kind raises AppImportError (:func:`check_interface`).

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
    check_interface(obj, interface, uri, worker_class)
    return obj
