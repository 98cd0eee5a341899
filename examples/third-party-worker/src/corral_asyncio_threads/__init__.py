"""corral-asyncio-threads: a corral worker on asyncio's event loop with WSGI apps in threads."""

__version__ = "0.1.0"
