"""corral's gevent worker: many concurrent connections per process, in greenlets.

Importing this package imports nothing from gevent; the worker class lives in
:mod:`corral_gevent.worker` and is imported only in gevent worker processes.
"""

__version__ = "0.1.0"
