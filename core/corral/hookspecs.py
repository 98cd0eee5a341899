"""Every hook corral calls, with what it is for, where it runs and when.

Plugins implement these with ``@corral.hookimpl``. pluggy passes arguments by
keyword and an implementation may accept only the ones it needs, so adding a
parameter to a hook never breaks an existing plugin.

"arbiter" hooks run in the master process; "worker" hooks run in a worker
process after fork. An exception raised by an arbiter hook is logged and does
not stop the server, except in ``corral_configure`` where it is a config error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from corral.arbiter import Arbiter
    from corral.config import Config
    from corral.http.parser import RequestHead
    from corral.plugins import WorkerSpec
    from corral.pool import WorkerHandle
    from corral.settings import SettingsRegistry
    from corral.workers.base import Worker
    from corral.wsgi.response import Response

hookspec = pluggy.HookspecMarker("corral")


@hookspec
def corral_register_workers() -> list[WorkerSpec]:
    """Return the worker classes this plugin provides.

    Runs in any process, whenever corral needs the registry: to validate
    ``--worker-class``, to list plugins, and in the arbiter before forking.
    It must not import the worker's concurrency library (gevent, tornado):
    a :class:`corral.plugins.WorkerSpec` names the class by import path, and
    the class is imported only in the worker process that runs it.

    corral also calls it once when it loads the plugin: if it raises, or
    returns something other than WorkerSpecs with ``"package.module:Class"``
    paths, the plugin is reported and skipped, and corral runs on without it.

    :return: a list of WorkerSpec; an empty list is fine.
    """
    raise NotImplementedError  # a specification: pluggy never runs its body


@hookspec(historic=True)
def corral_add_settings(settings: SettingsRegistry) -> None:
    """Declare this plugin's own settings by calling ``settings.add(Setting(...))``.

    Historic: a plugin registered late still gets the call. Runs in any process
    before command-line and config-file parsing, so the settings appear in
    ``--help``, in config files and in environment configuration. Name
    settings with the plugin's prefix: one that redeclares an existing
    setting (or raises here) gets the plugin reported and skipped when it loads.

    :param settings: the registry of every known setting.
    """


@hookspec
def corral_configure(config: Config) -> None:
    """Validate or derive settings after all sources are parsed, before anything starts.

    Runs in the arbiter (and in ``--check-config``). Raise
    :class:`corral.errors.ConfigError` with a message that names the setting
    and the fix; corral prints it and exits with status 2 (at startup) or keeps
    the old configuration (on HUP).

    :param config: the parsed configuration; may be changed in place.
    """


@hookspec
def corral_on_starting(server: Arbiter) -> None:
    """Called in the arbiter just before the listeners are bound and the master loop starts."""


@hookspec
def corral_when_ready(server: Arbiter) -> None:
    """Called in the arbiter once the listeners are bound and the first workers are forked."""


@hookspec
def corral_on_reload(server: Arbiter) -> None:
    """Called in the arbiter on HUP, after the new configuration is loaded, before workers are replaced."""


@hookspec
def corral_pre_fork(server: Arbiter, worker: WorkerHandle) -> None:
    """Called in the arbiter just before a worker is forked.

    :param worker: the arbiter's record of the worker to be (``pool``,
        ``age``, ``generation``, ``worker_class``); its ``pid`` is not set yet.
        (The worker object itself exists only in the child: ``corral_post_fork``.)
    """


@hookspec
def corral_post_fork(server: Arbiter, worker: Worker) -> None:
    """Called in the worker right after fork, before signals and the app are set up."""


@hookspec
def corral_post_worker_init(worker: Worker) -> None:
    """Called in the worker after the application is loaded, before it serves."""


@hookspec
def corral_worker_int(worker: Worker) -> None:
    """Called in the worker when it receives SIGINT or SIGQUIT (fast shutdown)."""


@hookspec
def corral_worker_abort(worker: Worker) -> None:
    """Called in the worker on SIGABRT, which the arbiter sends when the worker timed out.

    The worker's stacks have already been written to the error log.
    """


@hookspec
def corral_pre_exec(server: Arbiter) -> None:
    """Called on USR2 in a child forked from the arbiter, just before it execs the new arbiter.

    The listeners' fds are already marked inheritable and named in CORRAL_FD.
    """


@hookspec(firstresult=True)
def corral_ssl_context(
    config: Config, default_ssl_context_factory: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext | None:
    """Return the :class:`ssl.SSLContext` a worker's TLS connections use, for full control of TLS.

    Called once in each worker process, after fork and after the worker set
    up its concurrency library (gevent has patched ``ssl`` by then), before
    the app is loaded; only when TLS is on (``--certfile`` is set). gunicorn's
    ``ssl_context(config, default_ssl_context_factory)`` server hook in a
    config file becomes an implementation of this hook.

    firstresult: the first implementation that returns a context wins; when
    every one returns None, corral uses the default context. An exception (or
    a value that is not an ``ssl.SSLContext``) stops the worker from booting.
    The context is built again in every new worker, so a HUP picks up
    renewed certificates.

    :param config: the worker's configuration (its pool's settings).
    :param default_ssl_context_factory: call it for the context corral would
        use (certificate, key, CAs, ``--cert-reqs``, ``--ciphers``, TLS 1.2
        minimum, ALPN http/1.1), then adjust it, e.g. ``ctx.set_ecdh_curve()``
        or ``ctx.sni_callback``.
    :return: the context, or None to leave the choice to other plugins or the default.
    """


@hookspec
def corral_pre_request(worker: Worker, req: RequestHead) -> None:
    """Called in the worker before the app handles a request.

    Skipped entirely (no call, no argument building) when no plugin implements it.

    :param req: the :class:`corral.http.parser.RequestHead` of the request.
    """


@hookspec
def corral_post_request(worker: Worker, req: RequestHead, environ: dict[str, Any], resp: Response) -> None:
    """Called in the worker after the response was written, on every class.

    Skipped entirely when no plugin implements it.

    :param req: the request's head (``method``, ``target``, ``path``, ``headers``...).
    :param environ: the request's WSGI environ (built for it on classes that
        answer in a framework of their own, such as tornado's native handlers).
    :param resp: the :class:`corral.wsgi.response.Response`, with ``status_code``,
        ``headers`` and ``bytes_sent``.
    """


@hookspec
def corral_child_exit(server: Arbiter, worker: WorkerHandle) -> None:
    """Called in the arbiter after a worker process has been reaped.

    :param worker: the arbiter's record of it (``pid``, ``pool``, ``age``, ``worker_class``).
    """


@hookspec
def corral_worker_exit(server: Arbiter, worker: Worker) -> None:
    """Called in the worker just before it exits, after it stopped serving."""


@hookspec
def corral_nworkers_changed(server: Arbiter, new_value: int, old_value: int | None) -> None:
    """Called in the arbiter when a pool's target worker count is set.

    At start with ``old_value`` None (as gunicorn does), then on TTIN, TTOU and reload.
    """


@hookspec
def corral_worker_timeout(server: Arbiter, worker: WorkerHandle) -> None:
    """Called in the arbiter when a worker missed its heartbeat, before it is sent SIGABRT.

    :param worker: the arbiter's record of it (``pid``, ``pool``, ``age``, ``worker_class``).
    """


@hookspec
def corral_register_commands() -> dict[str, Callable[[list[str]], int]]:
    """Subcommands of the ``corral`` command: ``{"ctl": main}`` makes ``corral ctl ARGS``
    call ``main(ARGS)`` and exit with what it returns.

    Runs in any process that runs ``corral``, never in the arbiter or a worker.

    Called only when the first word of the command line is not an option or an
    APP_MODULE (``module:callable``); corral's own ``plugins`` and ``scale`` win
    over a plugin's, and the first plugin to claim a name keeps it. Import the
    command's code inside the function it returns, not at module level: every
    ``corral`` invocation calls this hook.
    """
    raise NotImplementedError  # a specification: pluggy never runs its body


@hookspec
def corral_arbiter_tick(server: Arbiter) -> None:
    """Called by the arbiter at each turn of its main loop: at least once a second, and
    more often when signals, exits or readers (``server.add_reader``) wake it; also
    every 50 ms while a stop waits for workers.

    For periodic work in the master: sampling worker memory, pushing metrics,
    expiring a plugin's idle connections. It runs in the main loop, so it must
    not block; keep your own clock for anything slower than the call rate.
    """


@hookspec
def corral_on_exit(server: Arbiter) -> None:
    """Called in the arbiter just before it exits."""
