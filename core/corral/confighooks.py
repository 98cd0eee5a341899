"""gunicorn-style server hooks from a Python config file, as a corral plugin.

``def post_fork(server, worker): ...`` in the config file becomes an
implementation of ``corral_post_fork``. Registering the file as a plugin
(rather than storing single callables) means a hook defined there runs
alongside the same hook from every installed plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral import hookimpl
from corral.config import SERVER_HOOKS
from corral.gunicorn_views import VIEWS


def _wrap(func: Callable[..., Any], argnames: tuple[str, ...]) -> Callable[..., Any]:
    # pluggy learns which arguments to pass from the implementation's code
    # object, so the wrapper needs real parameters with the hook's names.
    # They come from the SERVER_HOOKS constant, never from user input.
    # Each argument reaches the function as gunicorn's hooks see it
    # (corral.gunicorn_views): req.uri, resp.sent, server.num_workers, ...
    params = ", ".join(argnames)
    args = ", ".join(f"_views[{n!r}]({n})" if n in VIEWS else n for n in argnames)
    namespace: dict[str, Any] = {"func": func, "_views": VIEWS}
    exec(f"def corral_{func.__name__}({params}):\n    return func({args})\n", namespace)
    return hookimpl(namespace[f"corral_{func.__name__}"])


class ConfigFileHooks:
    """A plugin object whose hook methods call the config file's functions."""

    def __init__(self, hooks: dict[str, Callable[..., Any]], path: str) -> None:
        self.path = path
        for name, func in hooks.items():
            setattr(self, f"corral_{name}", _wrap(func, SERVER_HOOKS[name]))

    def __repr__(self) -> str:
        return f"<server hooks from {self.path}>"
