"""The error log: gunicorn's line format, a file or stderr, reopenable on USR1."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from typing import Any

#: gunicorn's error-log line, so existing log parsers keep working.
ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def setup_error_log(errorlog: str, level: str) -> logging.Logger:
    """Configure ``corral.error`` (and its children) once per process; idempotent."""
    logger = logging.getLogger("corral")
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler
    if errorlog == "-":
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(errorlog, delay=False)
    handler.setFormatter(logging.Formatter(ERROR_FORMAT, DATE_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logging.getLogger("corral.error")


def apply_log_config(ini: str | None, json_path: str | None, config: dict[str, Any] | None) -> None:
    """Let the operator's logging configuration take over (after the defaults are set)."""
    if config:
        logging.config.dictConfig(config)
    if json_path:
        with open(json_path) as f:
            logging.config.dictConfig(json.load(f))
    if ini:
        logging.config.fileConfig(ini, disable_existing_loggers=False)


def reopen_logs() -> None:
    """Reopen every file handler of corral's loggers (after logrotate moved the file)."""
    handlers = logging.getLogger("corral").handlers + logging.getLogger("corral.access").handlers
    for handler in handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream:
                    handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()
