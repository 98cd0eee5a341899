"""corral's gthread worker: an I/O loop per process and a pool of threads that run requests."""

__version__ = "0.1.0"
