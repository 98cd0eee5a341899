"""gunicorn-style server hooks from a Python config file, as a corral plugin.

``def post_fork(server, worker): ...`` in the config file becomes an
implementation of ``corral_post_fork``. Registering the file as a plugin
(rather than storing single callables) means a hook defined there runs
alongside the same hook from every installed plugin.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from corral import hookimpl
from corral.config import SERVER_HOOKS


def _wrap(func: Callable[..., Any], argnames: tuple[str, ...]) -> Callable[..., Any]:
    def impl(**kwargs: Any) -> Any:
        # gunicorn calls these positionally, in its documented order.
        return func(*(kwargs[name] for name in argnames))

    # pluggy reads the parameter names to know what to pass.
    impl.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in argnames]
    )
    impl.__name__ = f"corral_{func.__name__}"
    return hookimpl(impl)


class ConfigFileHooks:
    """A plugin object whose hook methods call the config file's functions."""

    def __init__(self, hooks: dict[str, Callable[..., Any]], path: str) -> None:
        self.path = path
        for name, func in hooks.items():
            setattr(self, f"corral_{name}", _wrap(func, SERVER_HOOKS[name]))

    def __repr__(self) -> str:
        return f"<server hooks from {self.path}>"
