"""One Django project, two pools: its WSGI views on gthread, its async views and WebSockets on asgi.

    cd examples/django-pools && corral -c corral.conf.py

nginx sends /feed and /ws/ to the asgi pool's port and everything else to
the gthread pool's (docs/pools.md). The ports start at $EXAMPLE_BASE_PORT
(default 8001) so the test suite can run this very file on free ports.
"""

import os

_base = int(os.environ.get("EXAMPLE_BASE_PORT", "8001"))

chdir = os.path.dirname(os.path.abspath(__file__))
raw_env = ["DJANGO_SETTINGS_MODULE=mysite.settings"]
timeout = 30

pools = {
    # The classic Django: WSGI, a thread pool per process, keep-alive.
    "web": {"worker_class": "gthread", "workers": 2, "threads": 4, "bind": [f"127.0.0.1:{_base}"],
            "wsgi_app": "mysite.wsgi:application"},
    # Async views and WebSockets: many waiting connections on one loop per process.
    "live": {"worker_class": "asgi", "workers": 1, "keepalive": 75, "bind": [f"127.0.0.1:{_base + 1}"],
             "wsgi_app": "mysite.asgi:application", "asgi_lifespan": "off"},
}
