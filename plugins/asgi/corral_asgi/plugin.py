"""Registers the asgi worker class and its settings; imports neither asyncio nor the worker.

The settings keep gunicorn's names (its ``-k asgi`` worker has the same
three), so a gunicorn config moved over means the same here.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from corral.api import Setting, SettingsRegistry, WorkerSpec, choice, hookimpl, seconds, uint

CORRAL_PLUGIN_API = 2

SECTION = "ASGI worker"


@hookimpl
def corral_register_workers() -> list[WorkerSpec]:
    return [
        WorkerSpec(
            name="asgi",
            path="corral_asgi.worker:AsgiWorker",
            description="ASGI 3 apps on one asyncio loop (uvloop when installed): HTTP/1.1, "
                        "lifespan, WebSockets",
            keepalive=True,
            concurrency="event-loop",
            monkey_patches=False,
            preload_safe=True,
            tls=True,
            app_interface="asgi",
            # Imported by the arbiter before fork and shared by every worker
            # (asyncio and corral's asyncio layer; wsproto's pure-Python
            # modules). uvloop stays out: it may start nothing at import, but
            # the arbiter has no use for it.
            shared_modules=(
                "corral.workers.asyncio_connection", "corral.workers.asyncio_worker",
                "corral.workers.watchdog", "corral_asgi.output", "corral_asgi.http", "corral_asgi.websocket",
                "corral_asgi.lifespan",
            ),
        )
    ]


_loop_choice = choice("auto", "asyncio", "uvloop")


def loop_choice(value: Any) -> str:
    """asgi_loop, checked where the configuration is read: "uvloop" needs uvloop installed."""
    loop = _loop_choice(value)
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError("uvloop is not installed (pip install uvloop, or corral-asgi[uvloop]); "
                         "'auto' uses it when it is and asyncio's loop otherwise")
    return loop


@hookimpl
def corral_add_settings(settings: SettingsRegistry) -> None:
    settings.add(Setting(
        name="asgi_loop", section=SECTION, validator=loop_choice,
        default="auto", flags=("--asgi-loop",), metavar="LOOP", owner="asgi", per_pool=True,
        help="Event loop of the asgi worker: auto (uvloop when installed, else asyncio), "
             "asyncio, or uvloop (an error when it is not installed).",
    ))
    settings.add(Setting(
        name="asgi_lifespan", section=SECTION, validator=choice("auto", "on", "off"),
        default="auto", flags=("--asgi-lifespan",), metavar="MODE", owner="asgi", per_pool=True,
        help="ASGI lifespan: auto (run it; an app that does not support it is served without), "
             "on (the app must support it: a failure stops the start), off (never sent).",
    ))
    settings.add(Setting(
        name="asgi_disconnect_grace_period", section=SECTION, validator=seconds, default=3.0,
        flags=("--asgi-disconnect-grace-period",), metavar="SECONDS", owner="asgi", per_pool=True,
        help="After the client of an HTTP request disconnects, the app has this long to finish "
             "(it gets http.disconnect) before its task is cancelled; 0 cancels at once.",
    ))
    settings.add(Setting(
        name="websocket_max_message_size", section=SECTION, validator=uint, default=16 * 1024 * 1024,
        flags=("--websocket-max-message-size",), metavar="BYTES", owner="asgi", per_pool=True,
        help="Largest WebSocket message (all its fragments) the asgi worker accepts; a larger one "
             "closes the connection with 1009. 0: no limit.",
    ))
    settings.add(Setting(
        name="websocket_ping_interval", section=SECTION, validator=seconds, default=20.0,
        flags=("--websocket-ping-interval",), metavar="SECONDS", owner="asgi", per_pool=True,
        help="Ping an idle WebSocket this often, and close it (1011) when no pong comes within "
             "--websocket-ping-timeout; 0: no pings.",
    ))
    settings.add(Setting(
        name="websocket_ping_timeout", section=SECTION, validator=seconds, default=20.0,
        flags=("--websocket-ping-timeout",), metavar="SECONDS", owner="asgi", per_pool=True,
        help="How long a ping may wait for its pong before the WebSocket is closed.",
    ))
