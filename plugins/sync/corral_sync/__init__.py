"""corral's sync worker: one request at a time per process."""

__version__ = "0.1.0"
