"""What corral does with each of gunicorn's settings: one table, one rule for every source.

A deployment moving from gunicorn brings its config file, its command line
and its ``GUNICORN_CMD_ARGS``. Every gunicorn setting is one of:

- ``same``: a corral setting of the same name and meaning (flags included);
- ``hook``: a server hook, taken as a plain callable from a Python config file;
- ``renamed``: corral has it under another name; the value goes there;
- ``ignored``: accepted with a one-line warning that says what corral does instead;
- ``refused``: an error that says why and what to use (the app would not work as
  configured without it);
- ``plugin``: a setting of one of corral's own plugin distributions (the asgi
  worker's ``asgi_loop``): the same meaning once it is installed, a warning
  that says what to install while it is not.

:data:`GUNICORN_SETTINGS` holds gunicorn's side (its flags, whether a flag
takes a value, its default), so that corral recognises gunicorn's flags
without gunicorn installed; tests/core/test_parity.py checks it against the
installed gunicorn, and docs/gunicorn-settings.md is generated from it
(``python -m corral.parity > docs/gunicorn-settings.md``; a test says when
it is stale). A value equal to gunicorn's default changes nothing, so a
config file that spells out defaults (``protocol = "http"``) loads quietly.
"""

from __future__ import annotations

from typing import Any, Final, Literal, NamedTuple

from corral.errors import ConfigError

#: The gunicorn release the table describes.
GUNICORN_VERSION: Final = "27.0.1"

Kind = Literal["same", "hook", "renamed", "ignored", "refused", "plugin"]


class Gunicorn(NamedTuple):
    """A gunicorn setting as gunicorn declares it."""

    flags: tuple[str, ...]
    #: False for gunicorn's on/off flags (``--spew``), True when the flag takes a value.
    takes_value: bool
    #: gunicorn's default, where it is a plain value (None for callables and "no default").
    default: Any


#: Every gunicorn 27 setting, in gunicorn's order (facts about gunicorn's interface).
GUNICORN_SETTINGS: Final[dict[str, Gunicorn]] = {
    "config": Gunicorn(("-c", "--config"), True, "./gunicorn.conf.py"),
    "wsgi_app": Gunicorn((), True, None),
    "bind": Gunicorn(("-b", "--bind"), True, ["127.0.0.1:8000"]),
    "backlog": Gunicorn(("--backlog",), True, 2048),
    "workers": Gunicorn(("-w", "--workers"), True, 1),
    "worker_class": Gunicorn(("-k", "--worker-class"), True, "sync"),
    "threads": Gunicorn(("--threads",), True, 1),
    "worker_connections": Gunicorn(("--worker-connections",), True, 1000),
    "max_requests": Gunicorn(("--max-requests",), True, 0),
    "max_requests_jitter": Gunicorn(("--max-requests-jitter",), True, 0),
    "timeout": Gunicorn(("-t", "--timeout"), True, 30),
    "graceful_timeout": Gunicorn(("--graceful-timeout",), True, 30),
    "keepalive": Gunicorn(("--keep-alive",), True, 2),
    "limit_request_line": Gunicorn(("--limit-request-line",), True, 4094),
    "limit_request_fields": Gunicorn(("--limit-request-fields",), True, 100),
    "limit_request_field_size": Gunicorn(("--limit-request-field_size",), True, 8190),
    "reload": Gunicorn(("--reload",), False, False),
    "reload_engine": Gunicorn(("--reload-engine",), True, "auto"),
    "reload_extra_files": Gunicorn(("--reload-extra-file",), True, []),
    "spew": Gunicorn(("--spew",), False, False),
    "check_config": Gunicorn(("--check-config",), False, False),
    "print_config": Gunicorn(("--print-config",), False, False),
    "preload_app": Gunicorn(("--preload",), False, False),
    "sendfile": Gunicorn(("--no-sendfile",), False, None),
    "reuse_port": Gunicorn(("--reuse-port",), False, False),
    "chdir": Gunicorn(("--chdir",), True, None),
    "daemon": Gunicorn(("-D", "--daemon"), False, False),
    "raw_env": Gunicorn(("-e", "--env"), True, []),
    "pidfile": Gunicorn(("-p", "--pid"), True, None),
    "worker_tmp_dir": Gunicorn(("--worker-tmp-dir",), True, None),
    "user": Gunicorn(("-u", "--user"), True, None),
    "group": Gunicorn(("-g", "--group"), True, None),
    "umask": Gunicorn(("-m", "--umask"), True, 0),
    "initgroups": Gunicorn(("--initgroups",), False, False),
    "tmp_upload_dir": Gunicorn((), True, None),
    "secure_scheme_headers": Gunicorn((), True, None),
    "forwarded_allow_ips": Gunicorn(("--forwarded-allow-ips",), True, "127.0.0.1,::1"),
    "accesslog": Gunicorn(("--access-logfile",), True, None),
    "disable_redirect_access_to_syslog": Gunicorn(("--disable-redirect-access-to-syslog",), False, False),
    "access_log_format": Gunicorn(("--access-logformat",), True, None),
    "errorlog": Gunicorn(("--error-logfile", "--log-file"), True, "-"),
    "loglevel": Gunicorn(("--log-level",), True, "info"),
    "capture_output": Gunicorn(("--capture-output",), False, False),
    "logger_class": Gunicorn(("--logger-class",), True, "gunicorn.glogging.Logger"),
    "logconfig": Gunicorn(("--log-config",), True, None),
    "logconfig_dict": Gunicorn((), True, {}),
    "logconfig_json": Gunicorn(("--log-config-json",), True, None),
    "syslog_addr": Gunicorn(("--log-syslog-to",), True, "udp://localhost:514"),
    "syslog": Gunicorn(("--log-syslog",), False, False),
    "syslog_prefix": Gunicorn(("--log-syslog-prefix",), True, None),
    "syslog_facility": Gunicorn(("--log-syslog-facility",), True, "user"),
    "enable_stdio_inheritance": Gunicorn(("-R", "--enable-stdio-inheritance"), False, False),
    "statsd_host": Gunicorn(("--statsd-host",), True, None),
    "dogstatsd_tags": Gunicorn(("--dogstatsd-tags",), True, ""),
    "statsd_prefix": Gunicorn(("--statsd-prefix",), True, ""),
    "enable_backlog_metric": Gunicorn(("--enable-backlog-metric",), False, False),
    "proc_name": Gunicorn(("-n", "--name"), True, None),
    "default_proc_name": Gunicorn((), True, "gunicorn"),
    "pythonpath": Gunicorn(("--pythonpath",), True, None),
    "paste": Gunicorn(("--paste", "--paster"), True, None),
    "on_starting": Gunicorn((), True, None),
    "on_reload": Gunicorn((), True, None),
    "when_ready": Gunicorn((), True, None),
    "pre_fork": Gunicorn((), True, None),
    "post_fork": Gunicorn((), True, None),
    "post_worker_init": Gunicorn((), True, None),
    "worker_int": Gunicorn((), True, None),
    "worker_abort": Gunicorn((), True, None),
    "pre_exec": Gunicorn((), True, None),
    "pre_request": Gunicorn((), True, None),
    "post_request": Gunicorn((), True, None),
    "child_exit": Gunicorn((), True, None),
    "worker_exit": Gunicorn((), True, None),
    "nworkers_changed": Gunicorn((), True, None),
    "on_exit": Gunicorn((), True, None),
    "ssl_context": Gunicorn((), True, None),
    "proxy_protocol": Gunicorn(("--proxy-protocol",), True, "off"),
    "proxy_allow_ips": Gunicorn(("--proxy-allow-from",), True, "127.0.0.1,::1"),
    "protocol": Gunicorn(("--protocol",), True, "http"),
    "uwsgi_allow_ips": Gunicorn(("--uwsgi-allow-from",), True, "127.0.0.1,::1"),
    "keyfile": Gunicorn(("--keyfile",), True, None),
    "certfile": Gunicorn(("--certfile",), True, None),
    "ssl_version": Gunicorn(("--ssl-version",), True, None),
    "cert_reqs": Gunicorn(("--cert-reqs",), True, 0),
    "ca_certs": Gunicorn(("--ca-certs",), True, None),
    "suppress_ragged_eofs": Gunicorn(("--suppress-ragged-eofs",), False, True),
    "do_handshake_on_connect": Gunicorn(("--do-handshake-on-connect",), False, False),
    "ciphers": Gunicorn(("--ciphers",), True, None),
    "http_protocols": Gunicorn(("--http-protocols",), True, "h1"),
    "http2_cleartext": Gunicorn(("--http2-cleartext",), True, "off"),
    "http2_max_concurrent_streams": Gunicorn(("--http2-max-concurrent-streams",), True, 100),
    "http2_initial_window_size": Gunicorn(("--http2-initial-window-size",), True, 65535),
    "http2_max_frame_size": Gunicorn(("--http2-max-frame-size",), True, 16384),
    "http2_max_header_list_size": Gunicorn(("--http2-max-header-list-size",), True, 65536),
    "raw_paste_global_conf": Gunicorn(("--paste-global",), True, []),
    "permit_obsolete_folding": Gunicorn(("--permit-obsolete-folding",), False, False),
    "strip_header_spaces": Gunicorn(("--strip-header-spaces",), False, False),
    "permit_unconventional_http_method": Gunicorn(("--permit-unconventional-http-method",), False, False),
    "permit_unconventional_http_version": Gunicorn(("--permit-unconventional-http-version",), False, False),
    "casefold_http_method": Gunicorn(("--casefold-http-method",), False, False),
    "forwarder_headers": Gunicorn(("--forwarder-headers",), True, "SCRIPT_NAME,PATH_INFO"),
    "header_map": Gunicorn(("--header-map",), True, "drop"),
    "asgi_loop": Gunicorn(("--asgi-loop",), True, "auto"),
    "asgi_lifespan": Gunicorn(("--asgi-lifespan",), True, "auto"),
    "asgi_disconnect_grace_period": Gunicorn(("--asgi-disconnect-grace-period",), True, 3),
    "websocket_max_message_size": Gunicorn(("--websocket-max-message-size",), True, 16777216),
    "http_parser": Gunicorn(("--http-parser",), True, "auto"),
    "root_path": Gunicorn(("--root-path",), True, ""),
    "dirty_apps": Gunicorn(("--dirty-app",), True, []),
    "dirty_workers": Gunicorn(("--dirty-workers",), True, 0),
    "dirty_timeout": Gunicorn(("--dirty-timeout",), True, 300),
    "dirty_threads": Gunicorn(("--dirty-threads",), True, 1),
    "dirty_graceful_timeout": Gunicorn(("--dirty-graceful-timeout",), True, 30),
    "on_dirty_starting": Gunicorn((), True, None),
    "dirty_post_fork": Gunicorn((), True, None),
    "dirty_worker_init": Gunicorn((), True, None),
    "dirty_worker_exit": Gunicorn((), True, None),
    "control_socket": Gunicorn(("--control-socket",), True, None),
    "control_socket_mode": Gunicorn(("--control-socket-mode",), True, 0o600),
    "control_socket_disable": Gunicorn(("--no-control-socket",), False, False),
}

_SYSLOG = ("corral does not write to syslog: it logs to stderr (the default) or --error-logfile, "
           "for journald, the container runtime or a log shipper to collect")
_STATSD = ("corral does not measure the listen backlog; its metrics (statsd_host, metrics_bind: "
           "docs/operations.md) count requests in flight per pool and per worker instead")
_HTTP2 = "corral serves HTTP/1.1; terminate HTTP/2 in the proxy or load balancer in front"
#: A setting of the asgi worker (plugins/asgi, the corral-asgi distribution).
_ASGI = "corral[asgi]"
_DIRTY = ("gunicorn's dirty arbiters are not in corral: run that work as a pool of its own "
          "(--pool, docs/pools.md) or as its own service")
#: Every gunicorn setting corral does not have under the same name: (kind, what corral does).
#: For ``renamed`` the text is the corral setting's name.
TREATMENT: Final[dict[str, tuple[Kind, str]]] = {
    "reload_engine": ("ignored", "corral's --reload polls the loaded files' mtimes once a second; "
                                 "there is no engine to choose"),
    "spew": ("ignored", "corral has no line tracer: use a debugger or py-spy"),
    "check_config": ("ignored", "a command-line flag in corral (--check-config), not read from a "
                                "config file"),
    "print_config": ("ignored", "a command-line flag in corral (--print-config), not read from a "
                                "config file"),
    "tmp_upload_dir": ("ignored", "unused by gunicorn too: request bodies stay in the socket until "
                                  "the app reads them"),
    "disable_redirect_access_to_syslog": ("ignored", _SYSLOG),
    "logger_class": ("ignored", "corral logs through the logging module: shape it with logconfig, "
                                "logconfig_dict or access_log_format = 'json'"),
    "syslog_addr": ("ignored", _SYSLOG),
    "syslog": ("ignored", _SYSLOG),
    "syslog_prefix": ("ignored", _SYSLOG),
    "syslog_facility": ("ignored", _SYSLOG),
    "enable_stdio_inheritance": ("ignored", "corral's workers keep the arbiter's stdout and stderr "
                                            "unless --daemon"),
    "enable_backlog_metric": ("ignored", _STATSD),
    "default_proc_name": ("ignored", "set proc_name (-n); the default title is corral's"),
    "paste": ("refused", "PasteDeploy apps are not supported: build the app in a Python module "
                         "(app = paste.deploy.loadapp('config:/path/app.ini')) and name it module:app"),
    "raw_paste_global_conf": ("refused", "PasteDeploy is not supported (see paste)"),
    "protocol": ("refused", "corral speaks HTTP/1.1 only: point nginx at it with proxy_pass, "
                            "not uwsgi_pass"),
    "uwsgi_allow_ips": ("ignored", "only for the uwsgi protocol, which corral does not speak"),
    "ssl_version": ("ignored", "deprecated in gunicorn too: corral negotiates TLS 1.2 or newer; "
                               "ciphers and the ssl_context hook shape it"),
    "suppress_ragged_eofs": ("ignored", "corral treats a TLS close without close_notify as a "
                                        "closed connection"),
    "do_handshake_on_connect": ("ignored", "corral handshakes each connection in its worker, within "
                                           "ssl_handshake_timeout"),
    "http_protocols": ("ignored", _HTTP2),
    "http2_cleartext": ("ignored", _HTTP2),
    "http2_max_concurrent_streams": ("ignored", _HTTP2),
    "http2_initial_window_size": ("ignored", _HTTP2),
    "http2_max_frame_size": ("ignored", _HTTP2),
    "http2_max_header_list_size": ("ignored", _HTTP2),
    "strip_header_spaces": ("ignored", "corral answers whitespace before a field's colon with 400, "
                                       "as RFC 9112 section 5.1 requires: accepting it is a known "
                                       "request-smuggling vector, so there is no lenient mode"),
    "permit_unconventional_http_version": ("ignored", "corral serves HTTP/1.0 and HTTP/1.1 and "
                                                      "answers other versions with 505"),
    "forwarder_headers": ("ignored", "corral takes SCRIPT_NAME from script_name, never from a "
                                     "request header"),
    "asgi_loop": ("plugin", _ASGI),
    "asgi_lifespan": ("plugin", _ASGI),
    "asgi_disconnect_grace_period": ("plugin", _ASGI),
    "websocket_max_message_size": ("plugin", _ASGI),
    "http_parser": ("ignored", "corral always parses with its own strict parser on llhttp"),
    "root_path": ("renamed", "script_name"),
    "dirty_apps": ("refused", _DIRTY),
    "dirty_workers": ("ignored", _DIRTY),
    "dirty_timeout": ("ignored", _DIRTY),
    "dirty_threads": ("ignored", _DIRTY),
    "dirty_graceful_timeout": ("ignored", _DIRTY),
    "on_dirty_starting": ("ignored", _DIRTY),
    "dirty_post_fork": ("ignored", _DIRTY),
    "dirty_worker_init": ("ignored", _DIRTY),
    "dirty_worker_exit": ("ignored", _DIRTY),
}

#: gunicorn's server hooks, which a Python config file may define as plain callables.
HOOKS: Final = frozenset({
    "on_starting", "on_reload", "when_ready", "pre_fork", "post_fork", "post_worker_init",
    "worker_int", "worker_abort", "pre_exec", "pre_request", "post_request", "child_exit",
    "worker_exit", "nworkers_changed", "on_exit", "ssl_context",
})


def kind_of(name: str) -> tuple[Kind, str]:
    """What corral does with gunicorn setting ``name`` (KeyError for a name gunicorn lacks)."""
    if name not in GUNICORN_SETTINGS:
        raise KeyError(name)
    if name in TREATMENT:
        return TREATMENT[name]
    if name in HOOKS:
        return ("hook", "a plain callable in a Python config file, called as gunicorn calls it")
    return ("same", "")


def unsupported(name: str, value: Any, source: str, warnings: list[str]) -> str | None:
    """Apply the rule to a gunicorn setting that corral does not have under that name.

    Appends a warning for an ``ignored`` one (nothing for gunicorn's default
    value), raises ConfigError for a ``refused`` one, and returns the corral
    setting a ``renamed`` one goes to (else None). For a name gunicorn lacks
    too, returns None and does nothing: the caller reports an unknown name.
    """
    if name not in TREATMENT:
        return None
    kind, text = TREATMENT[name]
    if kind == "renamed":
        return text
    if kind == "same":
        return None
    if kind == "plugin":
        flags = GUNICORN_SETTINGS[name].flags
        named = f"{name!r} ({flags[-1]})" if flags else repr(name)
        warnings.append(f"{source}: {named} is a setting of corral's {text[len('corral['):-1]} worker, "
                        f"which is not installed (pip install '{text}'); ignored")
        return None
    default = GUNICORN_SETTINGS[name].default
    if value == default and value is not None:
        return None  # spelled-out default: nothing for corral to do differently
    flags = GUNICORN_SETTINGS[name].flags
    named = f"{name!r} ({flags[-1]})" if flags else repr(name)
    what = f"{source}: {named} is a gunicorn setting corral does not support: {text}"
    if kind == "refused":
        raise ConfigError(what)
    warnings.append(f"{what}; ignored")
    return None


def reference() -> str:
    """docs/gunicorn-settings.md: every gunicorn setting and what corral does with it."""
    from corral.plugins import make_plugin_manager
    from corral.reference import collect_settings
    from corral.settings import default_registry

    # corral's own settings and its built-in plugins' (statsd_host is the metrics plugin's).
    pm, _, _ = make_plugin_manager(disabled=[])
    registry = collect_settings(pm, default_registry())
    label = {"same": "supported", "hook": "supported (hook)", "renamed": "supported as",
             "ignored": "warns, ignored", "refused": "refused", "plugin": "supported by"}
    lines = [
        f"# gunicorn {GUNICORN_VERSION}'s settings in corral",
        "",
        "Generated by `python -m corral.parity > docs/gunicorn-settings.md` from",
        "`corral/parity.py` (tests/core/test_parity.py fails when it is stale, and when",
        "gunicorn's own list, where gunicorn is installed, has a setting this table lacks).",
        "",
        "The same rule applies in a config file (Python or TOML), in `$GUNICORN_CMD_ARGS`",
        "and `$CORRAL_CMD_ARGS`, and on the command line: *supported* settings mean what",
        "they mean in gunicorn; *warns, ignored* ones load with a one-line warning that says",
        "what corral does instead; *refused* ones stop the start with a message that says",
        "why and what to use. A value equal to gunicorn's default loads quietly. Names that",
        "neither gunicorn nor corral has are errors when they look like a typo of a corral",
        "setting, else warnings.",
        "",
        "| gunicorn setting | flags | corral | what corral does |",
        "|---|---|---|---|",
    ]
    for name, gunicorn in GUNICORN_SETTINGS.items():
        kind, text = kind_of(name)
        flags = ", ".join(f"`{f}`" for f in gunicorn.flags)
        if kind == "same":
            text = registry[name].help if name in registry else text
        elif kind == "renamed":
            text = f"`{text}`: the same meaning under corral's name"
        elif kind == "plugin":
            help_text = registry[name].help if name in registry else ""
            text = f"`{text}` (warns, ignored without it): {help_text}"
        lines.append(f"| `{name}` | {flags} | {label[kind]} | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
