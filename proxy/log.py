"""structlog set up for JSON lines on stderr and in a rotating file in the data dir; one
``request_done`` event per request (``kvproxy tail`` follows that file)."""

from __future__ import annotations

import contextlib
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
    """Writes each rendered line to stderr and, when given, to a rotating file. A write
    that fails never fails the caller: a broken stderr (a closed pipe, journald
    restarting) is noticed once and logging goes on to the file only."""

    def __init__(self, handler: logging.Handler | None) -> None:
        self.handler = handler
        self.stderr_broken = False

    def msg(self, message: str) -> None:
        if not self.stderr_broken:
            try:
                print(message, file=sys.stderr, flush=True)
            except (OSError, ValueError):
                self.stderr_broken = True
                self._to_file('{"event": "stderr_broken", "level": "warning", '
                              '"detail": "logging continues to the file only"}')  # fmt: skip
        self._to_file(message)

    def _to_file(self, message: str) -> None:
        if self.handler is None:
            return
        with contextlib.suppress(Exception):  # a full disk must not fail a request either
            self.handler.emit(logging.makeLogRecord({"msg": message, "levelno": logging.INFO}))

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def file_handler(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    # The handler's own error report goes to stderr, which may be the broken thing.
    handler.handleError = lambda record: None  # type: ignore[method-assign]
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
