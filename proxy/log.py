"""structlog set up for JSON lines on stderr and in a rotating file in the data dir; one
``request_done`` event per request (``kvproxy tail`` follows that file)."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Any

import structlog

LOG_FILE = "kvproxy.log"
LOG_MAX_BYTES = 20 * 1024 * 1024
LOG_BACKUPS = 3


class TeeLogger:
    """Writes each rendered line to stderr and, when given, to a rotating file."""

    def __init__(self, handler: logging.Handler | None) -> None:
        self.handler = handler

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        if self.handler is not None:
            self.handler.emit(logging.makeLogRecord({"msg": message, "levelno": logging.INFO}))

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def file_handler(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def configure(level: str = "info", log_file: Path | None = None) -> None:
    tee = TeeLogger(file_handler(log_file) if log_file is not None else None)

    def factory(*_args: Any) -> TeeLogger:
        return tee

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
