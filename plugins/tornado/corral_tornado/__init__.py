"""corral's tornado worker: WSGI apps in a thread pool and native tornado apps on one IOLoop."""

__version__ = "0.1.0"
