"""Every setting, declared once.

One :class:`Setting` drives the command-line flag, the config-file name, the
environment configuration and the generated reference (docs/settings.md).
Names and flags are gunicorn's wherever the concept is the same, so an
existing gunicorn deployment moves with few edits. Plugins add their own
settings through the ``corral_add_settings`` hook.

Validators take either the string from the command line or environment, or
a Python value from a config file, and return the typed value or raise
ValueError with a sentence that says what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from corral.addresses import parse_address

_UINT = re.compile(r"[0-9]+")


def _uint(value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and _UINT.fullmatch(value.strip()):
        n = int(value.strip())
    else:
        raise ValueError(f"expected a whole number, got {value!r}")
    if n < minimum:
        raise ValueError(f"expected a whole number of at least {minimum}, got {n}")
    return n


def uint(value: Any) -> int:
    return _uint(value)


def positive_int(value: Any) -> int:
    return _uint(value, minimum=1)


def workers_count(value: Any) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return _uint(value, minimum=1)


def seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    if isinstance(value, int | float):
        n = float(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?", value.strip()):
        n = float(value.strip())
    else:
        raise ValueError(f"expected a number of seconds, got {value!r}")
    if n < 0:
        raise ValueError(f"expected a non-negative number of seconds, got {n}")
    return n


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off"):
            return False
    raise ValueError(f"expected true or false, got {value!r}")


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def optional_string(value: Any) -> str | None:
    if value is None:
        return None
    return string(value)


def sendfile_flag(value: Any) -> bool:
    """gunicorn's ``sendfile = None`` (its default) means "use it"."""
    return True if value is None else boolean(value)


def string_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return [string(v) for v in value]
    raise ValueError(f"expected a list of strings, got {value!r}")


def bind_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError("expected one or more addresses like 127.0.0.1:8000, [::1]:8000 or unix:PATH")
    out = []
    for item in items:
        parse_address(string(item))  # raises ValueError naming the problem
        out.append(item)
    return out


def octal_mode(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", value.strip()):
        n = int(value.strip().removeprefix("0o") or "0", 8)
    else:
        raise ValueError(f"expected an octal mode like 0o600, got {value!r}")
    if not 0 <= n <= 0o7777:
        raise ValueError(f"expected a mode between 0 and 0o7777, got {oct(n)}")
    return n


def access_log_format(value: Any) -> str:
    from corral.accesslog import compile_format

    fmt = string(value)
    compile_format(fmt)  # raises ValueError naming an unknown atom
    return fmt


def dict_or_none(value: Any) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise ValueError("expected a dict for logging.config.dictConfig")


def optional_octal_mode(value: Any) -> int | None:
    return None if value is None else octal_mode(value)


def umask_mode(value: Any) -> int | None:
    """A umask as gunicorn reads it, and as corral always did where gunicorn refuses.

    gunicorn reads a string with int(value, 0): "18" is decimal 18 (0o22),
    "0o22" and "0x12" too, and "022" is an error there. So a string with a
    leading 0 is octal (corral's reading, which gunicorn never accepts), and
    a bare number is decimal, as in gunicorn.
    """
    if isinstance(value, str) and re.fullmatch(r"[1-9][0-9]*|0[xX][0-9a-fA-F]+", value.strip()):
        value = int(value.strip(), 0)
    return optional_octal_mode(value)


def choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in options:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")

    check.__name__ = "choice"
    return check


#: --cert-reqs by name; the numbers are ssl.CERT_NONE/OPTIONAL/REQUIRED, as gunicorn takes them.
CERT_REQS = {"none": 0, "optional": 1, "required": 2}


def cert_reqs(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
        return int(value)  # also ssl.CERT_REQUIRED and friends from a config file
    if isinstance(value, str):
        v = value.strip().lower()
        if v in CERT_REQS:
            return CERT_REQS[v]
        if v in ("0", "1", "2"):
            return int(v)
    raise ValueError(f"expected none, optional or required (or 0, 1, 2), got {value!r}")


def tls_version(value: Any) -> str:
    v = value.strip().lower().removeprefix("tlsv") if isinstance(value, str) else None
    if v in ("1.2", "1.3"):
        return v
    raise ValueError(f"expected 1.2 or 1.3 (TLSv1.2, TLSv1.3), got {value!r}")


def header_dict(value: Any) -> dict[str, str]:
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return {k.upper(): v for k, v in value.items()}
    raise ValueError("expected a dict of header name to value, e.g. {'X-FORWARDED-PROTO': 'https'}")


@dataclass
class Setting:
    """One setting: its name everywhere, its flags, its type and its story."""

    name: str
    section: str
    validator: Callable[[Any], Any]
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    #: "store", "append" (repeatable flag), "store_true" or "store_false" (a --no-X flag).
    action: str = "store"
    #: For a flag whose value is optional: what the bare flag means.
    const: Any = None
    #: Which plugin declared it; "corral" for the core.
    owner: str = "corral"
    #: Extra documentation for the reference, beyond the one-line help.
    doc: str = ""
    #: A pool may set it for its own workers (a worker class's setting, say);
    #: core's own per-pool settings are corral.pool.POOL_KEYS.
    per_pool: bool = False

    def convert(self, value: Any) -> Any:
        return self.validator(value)

    @property
    def default_text(self) -> str:
        d = self.default
        if d is None:
            return "None"
        if d == "":
            return '""'
        if isinstance(d, list):
            return ", ".join(d) if d else "[]"
        if isinstance(d, bool):
            return "on" if d else "off"
        if self.validator is octal_mode:
            return oct(d)
        return str(d)


@dataclass
class SettingsRegistry:
    """All known settings by name; the core's plus the plugins'."""

    settings: dict[str, Setting] = field(default_factory=dict)

    def add(self, setting: Setting) -> None:
        if setting.name in self.settings:
            raise ValueError(f"setting {setting.name!r} is declared twice")
        self.settings[setting.name] = setting

    def __contains__(self, name: str) -> bool:
        return name in self.settings

    def __getitem__(self, name: str) -> Setting:
        return self.settings[name]

    def __iter__(self) -> Iterator[Setting]:
        return iter(self.settings.values())


def _pools(value: Any) -> dict[str, dict[str, Any]]:
    from corral.pool import pools_setting

    return pools_setting(value)


def env_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected KEY=VALUE strings")
    for item in items:
        if not isinstance(item, str) or "=" not in item or item.startswith("="):
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
    return list(items)


def user_or_id(value: Any) -> int | str | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    if isinstance(value, str) and value:
        return int(value) if value.isdigit() and value.isascii() else value
    raise ValueError(f"expected a name or a numeric id, got {value!r}")


def default_tmp_dir() -> str | None:
    # /dev/shm keeps heartbeat writes off disks (and off overlayfs in containers).
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def core_settings() -> list[Setting]:
    S = Setting
    return [
        # -- server socket
        S("bind", "Server socket", bind_list, ["127.0.0.1:8000"],
          "Address to listen on: HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N. Repeatable.",
          ("-b", "--bind"), "ADDRESS", "append",
          doc="With no bind given anywhere and PORT set in the environment, "
              "corral binds 0.0.0.0:$PORT, as gunicorn does."),
        S("backlog", "Server socket", positive_int, 2048,
          "Listen queue length of each listening socket.", ("--backlog",), "INT"),
        S("reuse_port", "Server socket", boolean, False,
          "Set SO_REUSEPORT on listening sockets.", ("--reuse-port",), action="store_true"),
        S("unix_socket_mode", "Server socket", octal_mode, 0o600,
          "Permissions of unix sockets corral creates.", ("--unix-socket-mode",), "MODE"),
        # -- worker processes
        S("workers", "Worker processes", workers_count, 1,
          "Number of worker processes ('auto': one per CPU available, within the cgroup CPU quota).",
          ("-w", "--workers"), "INT",
          doc="Defaults to $WEB_CONCURRENCY when that is set, as with gunicorn."),
        S("worker_class", "Worker processes", string, "sync",
          "Worker class: a registered name (see 'corral plugins') or package.module:Class.",
          ("-k", "--worker-class"), "NAME"),
        S("pools", "Worker processes", _pools, {},
          "Add a pool: NAME:CLASS:COUNT[@BIND,...]. Repeatable; see docs/pools.md.",
          ("--pool",), "POOL", "append",
          doc="In a config file: pools = {'web': {'worker_class': 'gthread', 'workers': 4, "
              "'bind': ['127.0.0.1:8001'], 'threads': 8}, ...}. A pool may override the "
              "per-worker settings (worker class and count, threads, connections, timeouts, "
              "keep-alive, max requests, limits, binds, app, preloading). No pools: one pool "
              "'main' from the top-level settings."),
        S("threads", "Worker processes", positive_int, 1,
          "Threads per worker for threaded worker classes.", ("--threads",), "INT"),
        S("worker_connections", "Worker processes", positive_int, 1000,
          "Most simultaneous connections per worker (async and threaded classes).",
          ("--worker-connections",), "INT"),
        S("timeout", "Worker processes", seconds, 30.0,
          "Workers silent for longer than this are killed and replaced (0 disables); a worker "
          "waiting on a slow client is not silent. Also the longest wait for a client to take "
          "more of a response.",
          ("-t", "--timeout"), "SECONDS"),
        S("graceful_timeout", "Worker processes", seconds, 30.0,
          "Seconds workers get to finish requests in flight after a graceful stop signal (TERM, "
          "or a reload replacing them); one still running a second later is killed.",
          ("--graceful-timeout",), "SECONDS"),
        S("keepalive", "Worker processes", seconds, 2.0,
          "Seconds to wait for the next request on a keep-alive connection.",
          ("--keep-alive",), "SECONDS"),
        S("max_requests", "Worker processes", uint, 0,
          "Restart a worker after this many requests (0 disables).", ("--max-requests",), "INT"),
        S("worker_stats", "Worker processes", boolean, True,
          "Keep live per-worker counters (requests, in flight, status classes, latency) in memory "
          "shared with the arbiter, for `corral ctl status` and the metrics endpoint; "
          "--no-worker-stats turns them off.", ("--no-worker-stats",), action="store_false"),
        S("max_requests_jitter", "Worker processes", uint, 0,
          "Add up to this many requests, at random, to max_requests per worker.",
          ("--max-requests-jitter",), "INT"),
        S("worker_tmp_dir", "Worker processes", optional_string, None,
          "Directory for the workers' heartbeat files (unset: /dev/shm if writable, else the "
          "system temp dir).", ("--worker-tmp-dir",), "DIR"),
        # -- application
        S("wsgi_app", "Application", optional_string, None,
          "The WSGI app as module:callable or module:factory(); same as APP_MODULE."),
        S("chdir", "Application", optional_string, None,
          "Change to this directory before loading the app.", ("--chdir",), "DIR"),
        S("pythonpath", "Application", optional_string, None,
          "Comma-separated directories put first on the Python path before the app loads.",
          ("--pythonpath",), "DIRS"),
        S("preload_app", "Application", boolean, False,
          "Load the app in the arbiter before forking workers.", ("--preload",), action="store_true"),
        S("script_name", "Application", string, "",
          "SCRIPT_NAME the app is mounted at; $SCRIPT_NAME sets the default.", ("--script-name",), "PATH"),
        # -- HTTP
        S("limit_request_line", "HTTP", uint, 4094,
          "Longest request line in bytes (414 beyond; 0: no limit up to 1 MiB, as gunicorn).",
          ("--limit-request-line",), "INT"),
        S("limit_request_fields", "HTTP", uint, 100,
          "Most header fields in a request (431 beyond; 0: 32768, as gunicorn).",
          ("--limit-request-fields",), "INT"),
        S("limit_request_field_size", "HTTP", uint, 8190,
          "Longest header field line in bytes, its CRLF counted as gunicorn does (431 beyond; "
          "0: 8190).",
          ("--limit-request-field-size", "--limit-request-field_size"), "INT"),
        S("permit_unconventional_http_method", "HTTP", boolean, False,
          "Serve any RFC 9110 token as a method; by default, as gunicorn, a method with a lowercase "
          "letter or outside 3-20 bytes is answered 400.",
          ("--permit-unconventional-http-method",), action="store_true"),
        S("casefold_http_method", "HTTP", boolean, False,
          "Upper-case methods (they are case-sensitive, RFC 9110 9.1; with "
          "permit_unconventional_http_method, 'get' becomes GET).",
          ("--casefold-http-method",), action="store_true"),
        S("permit_missing_host", "HTTP", boolean, False,
          "Serve HTTP/1.1 requests without a Host field (RFC 9112 requires 400, corral's default; "
          "gunicorn serves them): for old clients, SERVER_NAME then comes from the listener.",
          ("--permit-missing-host",), action="store_true"),
        S("sendfile", "HTTP", sendfile_flag, True,
          "Send wsgi.file_wrapper files with os.sendfile; --no-sendfile reads and sends them "
          "instead (a filesystem where sendfile misbehaves, such as some network mounts).",
          ("--no-sendfile",), action="store_false"),
        S("limit_request_body", "HTTP", uint, 0,
          "Largest request body in bytes (413 beyond; 0 means no limit).",
          ("--limit-request-body",), "INT"),
        S("header_timeout", "HTTP", seconds, 30.0,
          "The whole request head must arrive within this many seconds (408 otherwise).",
          ("--header-timeout",), "SECONDS"),
        S("permit_obsolete_folding", "HTTP", boolean, False,
          "Accept obs-fold (continuation lines) in headers instead of answering 400.",
          ("--permit-obsolete-folding",), action="store_true"),
        S("header_map", "HTTP", choice("drop", "refuse", "dangerous"), "drop",
          "Header names with '_': drop them, refuse the request (400) or pass them on.",
          ("--header-map",), "POLICY"),
        S("forwarded_allow_ips", "HTTP", string_list, ["127.0.0.1", "::1"],
          "Peers trusted to set the scheme through secure_scheme_headers ('*' for any).",
          ("--forwarded-allow-ips",), "ADDRESSES"),
        S("proxy_protocol", "HTTP", choice("off", "v1", "v2", "auto"), "off",
          "Expect a PROXY protocol header before the first request: --proxy-protocol accepts "
          "v1 or v2 (auto); --proxy-protocol v1|v2|auto (gunicorn's form) or "
          "--proxy-protocol-version picks one.",
          ("--proxy-protocol",), "VERSION", const="auto",
          doc="The value itself is given with --proxy-protocol-version v1|v2|auto, or "
              "proxy_protocol = 'v1' in a config file."),
        S("proxy_allow_ips", "HTTP", string_list, ["127.0.0.1", "::1"],
          "Peers allowed to send a PROXY header ('*' for any); others get 403.",
          ("--proxy-allow-from",), "ADDRESSES"),
        S("secure_scheme_headers", "HTTP", header_dict, {
            "X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https", "X-FORWARDED-SSL": "on"},
          "Headers (from trusted peers) that say the request came over https. Config file only."),
        # -- TLS
        S("certfile", "TLS", optional_string, None,
          "Serve HTTPS with this PEM certificate (chain); TLS is on when it is set.",
          ("--certfile",), "FILE",
          doc="TLS applies to every listener. It is terminated in the worker: the handshake "
              "runs in the connection's own greenlet (gevent) or, for sync, under "
              "--ssl-handshake-timeout. Supported by the sync and gevent worker classes; "
              "others refuse to start. See docs/deploy.md."),
        S("keyfile", "TLS", optional_string, None,
          "PEM private key of --certfile (unset: the key is in the certfile).",
          ("--keyfile",), "FILE"),
        S("ca_certs", "TLS", optional_string, None,
          "PEM bundle of CAs that client certificates are verified against.",
          ("--ca-certs",), "FILE"),
        S("cert_reqs", "TLS", cert_reqs, 0,
          "Client certificates: none (0), optional (1) or required (2); 1 and 2 need --ca-certs.",
          ("--cert-reqs",), "POLICY"),
        S("ciphers", "TLS", optional_string, None,
          "OpenSSL cipher list for TLS 1.2 (unset: Python's secure defaults).",
          ("--ciphers",), "CIPHERS"),
        S("ssl_minimum_version", "TLS", tls_version, "1.2",
          "Oldest TLS version accepted: 1.2 or 1.3.", ("--ssl-minimum-version",), "VERSION"),
        S("ssl_handshake_timeout", "TLS", seconds, 10.0,
          "A TLS handshake not finished within this many seconds closes the connection.",
          ("--ssl-handshake-timeout",), "SECONDS",
          doc="A sync worker serves one connection at a time, so a client that connects and "
              "sends nothing holds it this long (as a silent plain-HTTP client holds it for "
              "--header-timeout); async classes are not held at all."),
        # -- process
        S("pidfile", "Process", optional_string, None, "Write the arbiter's pid to this file.",
          ("-p", "--pid"), "FILE"),
        S("proc_name", "Process", optional_string, None,
          "Name in process titles (needs setproctitle).", ("-n", "--name"), "NAME"),
        S("daemon", "Process", boolean, False,
          "Detach from the terminal and run in the background.", ("-D", "--daemon"),
          action="store_true"),
        S("raw_env", "Process", env_list, [],
          "Set an environment variable (KEY=VALUE) for the app. Repeatable.", ("-e", "--env"),
          "KEY=VALUE", "append"),
        S("user", "Process", user_or_id, None,
          "Run workers as this user (name or uid); the arbiter keeps its own.", ("-u", "--user"), "USER"),
        S("group", "Process", user_or_id, None,
          "Run workers as this group (name or gid).", ("-g", "--group"), "GROUP"),
        S("umask", "Process", umask_mode, None,
          "umask of the arbiter and the workers (027 and 0o27 octal, 18 decimal, as gunicorn); "
          "unset keeps the inherited one.",
          ("-m", "--umask"), "MODE"),
        S("initgroups", "Process", boolean, False,
          "Also give workers the supplementary groups of --user.", ("--initgroups",),
          action="store_true"),
        S("reload", "Process", boolean, False,
          "Restart workers when a loaded Python source file changes (development only); an app "
          "that fails to import is answered 500 with its error until a saved file fixes it.",
          ("--reload",), action="store_true"),
        S("reload_extra_files", "Process", string_list, [],
          "Under --reload, also restart workers when this file changes (a template, a data file); "
          "repeatable.", ("--reload-extra-file",), "FILE", "append"),
        S("config", "Process", optional_string, None,
          "Config file: Python (*.py) or TOML (*.toml). ./corral.conf.py is read when present, "
          "else ./gunicorn.conf.py.",
          ("-c", "--config"), "FILE"),
        # -- logging
        S("loglevel", "Logging", choice("debug", "info", "warning", "error", "critical"), "info",
          "Error log level.", ("--log-level",), "LEVEL"),
        S("errorlog", "Logging", string, "-", "Error log file ('-' is stderr).",
          ("--error-logfile", "--log-file"), "FILE"),
        S("accesslog", "Logging", optional_string, None,
          "Access log file ('-' is stdout); off when unset, and then it costs nothing.",
          ("--access-logfile",), "FILE"),
        S("access_log_format", "Logging", access_log_format,
          '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
          "Access log line: gunicorn's %(atom)s format, or 'json' for one JSON object per line.",
          ("--access-logformat",), "FORMAT",
          doc="Atoms: h remote address, l '-', u user (Basic auth), t time, r request line, "
              "m method, U path, q query, H protocol, s status, B bytes, b bytes or '-', "
              "f referer, a user agent, T/M/D/L request time in s/ms/us/decimal s, p pid, "
              "%({Name}i)s request header, %({Name}o)s response header, %({VAR}e)s environ."),
        S("logconfig", "Logging", optional_string, None,
          "A logging config file in the ini format of logging.config.fileConfig.",
          ("--log-config",), "FILE"),
        S("logconfig_json", "Logging", optional_string, None,
          "A JSON file for logging.config.dictConfig.", ("--log-config-json",), "FILE"),
        S("logconfig_dict", "Logging", dict_or_none, None,
          "A dict for logging.config.dictConfig. Config file only."),
        S("capture_output", "Logging", boolean, False,
          "Send the app's stdout and stderr to the error log file.", ("--capture-output",),
          action="store_true"),
        S("trace_plugins", "Logging", boolean, False,
          "Log every plugin hook call with its arguments and results (for debugging plugins).",
          ("--trace-plugins",), action="store_true"),
    ]


def default_registry() -> SettingsRegistry:
    registry = SettingsRegistry()
    for setting in core_settings():
        registry.add(setting)
    return registry
