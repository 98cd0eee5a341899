"""The ``corral`` command: ``corral [OPTIONS] APP_MODULE`` and ``corral plugins``.

Exit statuses: 0 after a clean stop; 1 when the server could not start or
stopped on an error; 2 for a usage or configuration error (the message names
the problem and the fix); 3 when a worker could not boot; 4 when the app
could not be loaded.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pluggy

from corral import __version__
from corral.config import Config
from corral.confighooks import ConfigFileHooks
from corral.errors import AppImportError, ConfigError
from corral.parity import GUNICORN_SETTINGS, TREATMENT, unsupported
from corral.plugins import (
    GUNICORN_CLASSES,
    LoadedPlugin,
    make_plugin_manager,
    resolve_worker,
    worker_registry,
)
from corral.process import apply_env, daemonize, resolve_ids
from corral.reference import collect_settings
from corral.settings import Setting, SettingsRegistry, default_registry
from corral.workers.tls import check_tls_settings

#: Read when present and no -c is given, as gunicorn reads ./gunicorn.conf.py.
DEFAULT_CONFIG_FILE = "corral.conf.py"
#: Extra command-line arguments from the environment (gunicorn: GUNICORN_CMD_ARGS).
CMD_ARGS_ENV = "CORRAL_CMD_ARGS"
#: A deployment moved from gunicorn keeps these: read when corral's own are
#: absent (and said so), never silently left out. A container whose command
#: was `gunicorn app.wsgi` came up on loopback with one sync worker.
GUNICORN_CONFIG_FILE = "gunicorn.conf.py"
GUNICORN_CMD_ARGS_ENV = "GUNICORN_CMD_ARGS"
DISABLE_ENV = "CORRAL_DISABLE_PLUGINS"
_FLAG_ONLY = ("check_config", "print_config", "disable_plugin")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{self._suggest_flag(message)}\n"
                     f"(see '{self.prog} --help')\n")

    def _suggest_flag(self, message: str) -> str:
        """"; did you mean --x?" for a misspelled long option, as a config file's typo gets."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [o for o in self._option_string_actions if o.startswith("--")]
        for word in message.split(":", 1)[1].split():
            if word.startswith("--"):
                match = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.75)
                if match:
                    return f"; did you mean {match[0]}?"
        return ""


def build_argparser(registry: SettingsRegistry) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="corral",
        usage="corral [OPTIONS] APP_MODULE\n       corral plugins [--json]",
        description="A pre-fork WSGI HTTP/1.1 server. APP_MODULE is module:callable "
        "or module:factory().",
        argument_default=argparse.SUPPRESS,
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=36),
    )
    parser.add_argument("app_module", nargs="?", metavar="APP_MODULE",
                        help="the WSGI application, e.g. myproject.wsgi:application")
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    parser.add_argument("--check-config", dest="check_config", action="store_true",
                        help="load the configuration and the app, then exit 0 (or 1 on error)")
    parser.add_argument("--print-config", dest="print_config", action="store_true",
                        help="print every setting with its value and source, then exit")
    parser.add_argument("--disable-plugin", dest="disable_plugin", action="append", metavar="NAME",
                        help=f"do not load this plugin (also ${DISABLE_ENV}, comma separated)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in registry:
        if not setting.flags:
            continue
        title = setting.section if setting.owner == "corral" else f"{setting.owner} plugin"
        group = groups.get(title)
        if group is None:
            group = groups[title] = parser.add_argument_group(title)
        # argparse %-formats help strings: keep literal percent signs literal.
        help_text = f"{setting.help} (default: {setting.default_text})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": setting.name, "help": help_text}
        if setting.action in ("store_true", "store_false"):
            kwargs["action"] = setting.action
        elif setting.const is not None:
            # A bare flag (gunicorn's form) plus FLAG-version VALUE. An optional
            # value on one flag would swallow a following APP_MODULE.
            group.add_argument(*setting.flags, dest=setting.name, action="store_const",
                               const=setting.const, help=help_text)
            group.add_argument(f"{setting.flags[-1]}-version", dest=setting.name,
                               metavar=setting.metavar or "VALUE",
                               help=f"Set {setting.name} to a given value.")
            continue
        else:
            kwargs["action"] = setting.action
            kwargs["metavar"] = setting.metavar or "VALUE"
        group.add_argument(*setting.flags, **kwargs)
    _add_gunicorn_flags(parser)
    return parser


#: Where a gunicorn flag corral does not have lands in the parsed arguments.
_GUNICORN_DEST = "gunicorn_setting:"


def _add_gunicorn_flags(parser: argparse.ArgumentParser) -> None:
    """gunicorn's flags for settings corral lacks, hidden from --help, judged by corral.parity.

    Without them argparse took ``--statsd-host`` for an unknown option and its
    value for APP_MODULE ("unrecognized arguments: --statsd-host hello:app").
    """
    taken = set(parser._option_string_actions)
    for name, (kind, text) in TREATMENT.items():
        flags = [f for f in GUNICORN_SETTINGS[name].flags if f not in taken]
        if not flags:
            continue
        dest = text if kind == "renamed" else _GUNICORN_DEST + name
        if GUNICORN_SETTINGS[name].takes_value:
            parser.add_argument(*flags, dest=dest, help=argparse.SUPPRESS, metavar="VALUE")
        else:
            parser.add_argument(*flags, dest=dest, action="store_true", help=argparse.SUPPRESS)


def optional_values(argv: Sequence[str], registry: SettingsRegistry) -> list[str]:
    """gunicorn's optional-value form of a bare flag (``--proxy-protocol v2``, ``--proxy-protocol=v2``).

    argparse cannot take a value only when one follows (it would swallow an
    APP_MODULE after a bare ``--proxy-protocol``), so the forms are rewritten
    to ``FLAG-version VALUE`` when the word after the flag is one of the
    setting's own choices; anything else leaves the flag bare.
    """
    bare = {flag: setting for setting in registry if setting.const is not None for flag in setting.flags}
    out: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        flag, eq, value = word.partition("=")
        setting = bare.get(flag)
        if setting is not None and eq:
            out += [f"{setting.flags[-1]}-version", value]
        elif setting is not None and i + 1 < len(words) and _is_value(setting, words[i + 1]):
            out += [f"{setting.flags[-1]}-version", words[i + 1]]
            i += 1
        else:
            out.append(word)
        i += 1
    return out


def _is_value(setting: Setting, word: str) -> bool:
    try:
        setting.convert(word)
    except (ValueError, TypeError):
        return False
    return True


def build_config(
    argv: Sequence[str],
    registry: SettingsRegistry,
    parser: argparse.ArgumentParser | None = None,
) -> tuple[Config, argparse.Namespace]:
    """Every source, later wins: defaults < config file < $CORRAL_CMD_ARGS < command line."""
    parser = parser or build_argparser(registry)
    args = parser.parse_args(optional_values(argv, registry))
    cfg = Config(registry)
    env_name = CMD_ARGS_ENV
    if CMD_ARGS_ENV not in os.environ and os.environ.get(GUNICORN_CMD_ARGS_ENV):
        env_name = GUNICORN_CMD_ARGS_ENV
        cfg.warnings.append(f"reading ${GUNICORN_CMD_ARGS_ENV} (no ${CMD_ARGS_ENV} is set): "
                            f"{os.environ[GUNICORN_CMD_ARGS_ENV]}")
    env_args = parser.parse_args(optional_values(shlex.split(os.environ.get(env_name, "")), registry))

    if os.environ.get("SCRIPT_NAME"):
        cfg.set("script_name", os.environ["SCRIPT_NAME"], "environment SCRIPT_NAME")
    concurrency = os.environ.get("WEB_CONCURRENCY")
    if concurrency:
        cfg.set("workers", concurrency, "environment WEB_CONCURRENCY")

    config_path = getattr(args, "config", None) or getattr(env_args, "config", None)
    if config_path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        config_path = DEFAULT_CONFIG_FILE
    elif config_path is None and os.path.exists(GUNICORN_CONFIG_FILE):
        config_path = GUNICORN_CONFIG_FILE
        cfg.warnings.append(f"reading ./{GUNICORN_CONFIG_FILE}, as gunicorn would (no -c and no "
                            f"./{DEFAULT_CONFIG_FILE} here); rename it to {DEFAULT_CONFIG_FILE} "
                            "to make this explicit")
    if config_path:
        cfg.load_file(config_path)
        cfg.set("config", config_path, "command line")

    for source, ns in ((f"${env_name}", env_args), ("command line", args)):
        for name, value in vars(ns).items():
            if name in _FLAG_ONLY or name == "app_module":
                continue
            if name.startswith(_GUNICORN_DEST):
                unsupported(name[len(_GUNICORN_DEST):], value, source, cfg.warnings)
                continue
            cfg.set(name, value, source)
        if getattr(ns, "app_module", None):
            cfg.set("wsgi_app", ns.app_module, source)

    port = os.environ.get("PORT")
    if cfg.sources["bind"] == "default" and port:
        cfg.set("bind", [f"0.0.0.0:{port}"], "environment PORT")
    pools = cfg.pools or {}
    if not cfg.wsgi_app and (not pools or not all(p.get("wsgi_app") for p in pools.values())):
        raise ConfigError("no APP_MODULE given: run 'corral [OPTIONS] module:callable', "
                          "e.g. 'corral myproject.wsgi:application'")
    return cfg, args


def _plugin_manager(argv: Sequence[str]) -> tuple[pluggy.PluginManager, list[LoadedPlugin], list[str]]:
    disabled = [d for d in os.environ.get(DISABLE_ENV, "").split(",") if d]
    for i, arg in enumerate(argv):
        if arg == "--disable-plugin" and i + 1 < len(argv):
            disabled.append(argv[i + 1])
        elif arg.startswith("--disable-plugin="):
            disabled.append(arg.split("=", 1)[1])
    return make_plugin_manager(disabled=disabled)


def plugins_command(argv: Sequence[str]) -> int:
    parser = _Parser(prog="corral plugins",
                     description="List installed corral plugins. Exits 1 when a plugin was skipped "
                                 "(each problem is printed), else 0.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(list(argv))
    pm, loaded, problems = _plugin_manager([])
    registry = worker_registry(pm)
    settings = collect_settings(pm, default_registry())
    out: list[dict[str, Any]] = []
    for plugin in loaded:
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin.module) or [])
        added = sorted(s.name for s in settings if s.owner == plugin.name)
        workers = [
            {"name": s.name, "description": s.description, "path": s.path, "keepalive": s.keepalive,
             "concurrency": s.concurrency, "multithread": s.runs_requests_at_once,
             "monkey_patches": s.monkey_patches, "preload_safe": s.preload_safe, "tls": s.tls,
             "shared_modules": list(s.shared_modules), "traits": s.traits()}
            for s in registry.values() if _provided_by(pm, plugin.module, s.name)
        ]
        out.append({"name": plugin.name, "distribution": plugin.distribution,
                    "version": plugin.version, "workers": workers, "hooks": hooks,
                    "settings": added})
    # Status 1 when a plugin was skipped, the listing printed all the same:
    # a deployment script (or a CI job checking an image) should not need
    # to read stderr to learn that a worker class it expects is missing.
    status = 1 if problems else 0
    if args.json:
        print(json.dumps({"plugins": out, "problems": problems}, indent=2))
        return status
    for item in out:
        print(f"{item['name']} ({item['distribution']} {item['version']})")
        for w in item["workers"]:
            print(f"  worker {w['name']}: {w['description']}")
            print(f"    {', '.join(w['traits'])}")
        print(f"  hooks: {', '.join(item['hooks']) or '-'}")
        if item["settings"]:
            print(f"  settings: {', '.join(item['settings'])}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return status


def scale_command(argv: Sequence[str]) -> int:
    """``corral scale PID|PIDFILE POOL [+N|-N]``: TTIN/TTOU aimed at one pool."""
    import signal
    import time

    from corral.arbiter import scale_file

    parser = _Parser(prog="corral scale", description="Add or remove workers of one pool.")
    parser.add_argument("arbiter", help="the arbiter's pid, or its pid file")
    parser.add_argument("pool", help="the pool's name")
    parser.add_argument("delta", nargs="?", default="+1", help="+N or -N workers (default +1)")
    args = parser.parse_args(list(argv))
    try:
        text = args.arbiter if args.arbiter.isdigit() else Path(args.arbiter).read_text()
        pid = int(text.strip())
        delta = int(args.delta)
    except (OSError, ValueError) as exc:
        print(f"corral scale: {exc}", file=sys.stderr)
        return 2
    sig = signal.SIGTTIN if delta > 0 else signal.SIGTTOU
    path = scale_file(pid)
    for _ in range(abs(delta)):
        with open(path, "w") as f:
            f.write(args.pool)
        os.kill(pid, sig)
        # The arbiter removes the file when it has read it; one signal at a
        # time, since Unix merges a signal sent while the same one is pending.
        deadline = time.monotonic() + 5
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.path.exists(path):
            os.unlink(path)
            print("corral scale: the arbiter did not answer", file=sys.stderr)
            return 1
    return 0


def _provided_by(pm: pluggy.PluginManager, module: Any, name: str) -> bool:
    fn = getattr(module, "corral_register_workers", None)
    return fn is not None and any(s.name == name for s in (fn() or []))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plugins"]:
        sys.exit(plugins_command(argv[1:]))
    if argv[:1] == ["scale"]:
        sys.exit(scale_command(argv[1:]))
    if argv and not argv[0].startswith("-") and ":" not in argv[0]:
        # A plugin's subcommand (corral ctl), when the word is one.
        command = plugin_commands(argv).get(argv[0])
        if command is not None:
            sys.exit(command(argv[1:]))
    sys.exit(serve(argv))


def plugin_commands(argv: Sequence[str]) -> dict[str, Callable[[list[str]], int]]:
    """``corral NAME ...`` commands that plugins register (corral_register_commands)."""
    pm, _, _ = _plugin_manager(argv)
    commands: dict[str, Callable[[list[str]], int]] = {}
    for found in pm.hook.corral_register_commands():
        for name, fn in (found or {}).items():
            commands.setdefault(name, fn)
    return commands


def serve(argv: list[str]) -> int:
    pm, loaded, problems = _plugin_manager(argv)
    for problem in problems:
        print(f"corral: {problem}", file=sys.stderr)
    registry = collect_settings(pm, default_registry())
    parser = build_argparser(registry)
    hooks_plugin: list[ConfigFileHooks] = []
    start_cwd = os.getcwd()

    def load() -> Config:
        # On HUP the arbiter may sit in --chdir; relative paths in argv are
        # relative to where corral was started.
        os.chdir(start_cwd)
        cfg, _ = build_config(argv, registry, parser)
        for old in hooks_plugin:
            pm.unregister(old)
        hooks_plugin.clear()
        if cfg.hooks:
            plugin = ConfigFileHooks(cfg.hooks, cfg.config or "config file")
            pm.register(plugin, name="corral.config-file-hooks")
            hooks_plugin.append(plugin)
        pm.hook.corral_configure(config=cfg)
        for name, pcfg in cfg.pool_configs():
            spec = resolve_worker(pm, pcfg.worker_class)
            if pcfg.worker_class.replace(":", ".") in GUNICORN_CLASSES:
                where = "" if name == "main" else f"pool {name}: "
                cfg.warnings.append(f"{where}worker class {pcfg.worker_class!r} is gunicorn's; "
                                    f"running corral's {spec.name!r}")
            if pcfg.preload_app and not spec.preload_safe:
                where = "" if name == "main" else f" (pool {name})"
                raise ConfigError(
                    f"--preload cannot be used with worker class {spec.name!r}{where}: it sets up "
                    "its concurrency library after fork, and an app imported before that would "
                    "not cooperate with it. Drop preload_app for it; other pools may keep it."
                )
            if not pcfg.wsgi_app:
                raise ConfigError(f"pool {name} has no app: give APP_MODULE or its wsgi_app")
            cfg.warnings += [w if name == "main" else f"pool {name}: {w}"
                             for w in check_tls_settings(pcfg, spec)]
        if cfg.chdir:
            try:
                os.chdir(cfg.chdir)
            except OSError as exc:
                raise ConfigError(f"--chdir {cfg.chdir}: {exc.strerror}") from None
        if cfg.pythonpath:
            # As gunicorn: each directory first on sys.path, in the order given;
            # relative ones from the directory the app loads in (after --chdir).
            for entry in reversed([p.strip() for p in cfg.pythonpath.split(",") if p.strip()]):
                path = os.path.abspath(entry)
                if path not in sys.path:
                    sys.path.insert(0, path)
        cfg.ids = resolve_ids(cfg.user, cfg.group)
        apply_env(cfg.raw_env)
        return cfg

    try:
        cfg = load()
        args = parser.parse_args(optional_values(argv, registry))
    except ConfigError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return 2
    for warning in cfg.warnings:
        print(f"corral: warning: {warning}", file=sys.stderr)

    if getattr(args, "print_config", False):
        for name, value, source in cfg.describe():
            print(f"{name:28} = {value}  # {source}")
        return 0
    if getattr(args, "check_config", False):
        return _check_config(cfg, pm)

    from corral.arbiter import Arbiter

    if cfg.umask is not None:
        os.umask(cfg.umask)
    if cfg.daemon:
        daemonize()
    if cfg.capture_output and cfg.errorlog != "-":
        # The app's print() and stray tracebacks land in the error log.
        fd = os.open(cfg.errorlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if cfg.trace_plugins:
        import logging

        trace_log = logging.getLogger("corral.error")
        pm.trace.root.setwriter(lambda message: trace_log.info("plugin trace: %s", message.rstrip()))
        pm.enable_tracing()

    summary = ""
    if loaded:
        summary = "; plugins: " + ", ".join(f"{p.name} ({p.distribution} {p.version})" for p in loaded)
    return Arbiter(cfg, pm, reload_config=load, plugin_summary=summary, problems=problems).run()


def _check_config(cfg: Config, pm: pluggy.PluginManager) -> int:
    """--check-config: every pool's worker class imports and its app loads, of the kind the class serves."""
    from corral.app import load_app
    from corral.plugins import load_worker_class

    checked: list[str] = []
    try:
        for name, pcfg in cfg.pool_configs():
            spec = resolve_worker(pm, pcfg.worker_class)
            cls = load_worker_class(spec)
            interface = getattr(cls, "serves", None) or spec.app_interface
            try:
                load_app(pcfg.wsgi_app, interface=interface, worker_class=spec.name)
            except AppImportError as exc:
                raise AppImportError(f"pool {name}: {exc}" if name != "main" else str(exc)) from None
            checked.append(f"app {pcfg.wsgi_app}, worker class {pcfg.worker_class}"
                           + (f" (pool {name})" if name != "main" else ""))
    except (ConfigError, AppImportError) as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return 1
    except Exception:
        import traceback

        traceback.print_exc()
        return 1
    print(f"corral: configuration OK ({'; '.join(checked)})")
    return 0
