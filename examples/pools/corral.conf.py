"""A mixed deployment: a sync pool for CPU-bound views, a gthread pool for the
API, a gevent pool for streaming and long polling, one arbiter.

    corral -c examples/pools/corral.conf.py

nginx routes /stream/ to the gevent pool's port (see docs/pools.md). The
ports start at $EXAMPLE_BASE_PORT (default 8001) so the test suite can run
this very file on free ports.
"""

import os

_base = int(os.environ.get("EXAMPLE_BASE_PORT", "8001"))

wsgi_app = "corral.testing.apps:app"  # the app every pool serves unless it names its own
timeout = 30

pools = {
    # Views that burn CPU: one request per process, behind nginx's buffering.
    "views": {"worker_class": "sync", "workers": 2, "bind": [f"127.0.0.1:{_base}"]},
    # The JSON API: keep-alive and a thread pool per process.
    "api": {"worker_class": "gthread", "workers": 1, "threads": 8, "bind": [f"127.0.0.1:{_base + 1}"]},
    # Server-sent events and long polls: thousands of mostly idle connections.
    "stream": {
        "worker_class": "gevent",
        "workers": 1,
        "worker_connections": 2000,
        "keepalive": 75,
        "timeout": 120,
        "bind": [f"127.0.0.1:{_base + 2}"],
    },
}
