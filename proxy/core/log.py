"""structlog set up for a rotating file of JSON lines in the data dir (one ``request_done``
event per request; ``kvproxy tail`` follows that file) and, on stderr, the same events as
JSON or, on a terminal, as readable console lines (``--log-format``)."""

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
LOG_FORMATS = ("auto", "json", "console")


def console_wanted(log_format: str, stderr_is_tty: bool) -> bool:
    """``auto``: readable lines on a terminal, JSON for journald, pipes and files."""
    return log_format == "console" or (log_format == "auto" and stderr_is_tty)


class TeeLogger:
    """Writes each rendered line to stderr and, when given, to a rotating file. A write
    that fails never fails the caller: a broken stderr (a closed pipe, journald
    restarting) is noticed once and logging goes on to the file only."""

    def __init__(self, handler: logging.Handler | None) -> None:
        self.handler = handler
        self.stderr_broken = False

    def msg(self, message: str = "", *, json: str | None = None,
            console: str | None = None) -> None:  # fmt: skip
        """One event: ``json`` for the file, ``console`` (else the JSON) for stderr."""
        message = json if json is not None else message
        if not self.stderr_broken:
            try:
                print(console if console is not None else message, file=sys.stderr, flush=True)
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


class BothRenderer:
    """The last processor: the event as JSON (the file) and, for a terminal, as a console
    line (stderr)."""

    def __init__(self, console: bool) -> None:
        self.json = structlog.processors.JSONRenderer()
        self.console = (
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()) if console else None
        )

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> dict[str, str]:
        out = {"json": self.json(logger, name, dict(event))}
        if self.console is not None:
            out["console"] = self.console(logger, name, dict(event))
        return out


def configure(level: str = "info", log_file: Path | None = None,
              log_format: str = "json") -> None:  # fmt: skip
    tee = TeeLogger(file_handler(log_file) if log_file is not None else None)
    console = console_wanted(log_format, _stderr_is_tty())

    def factory(*_args: Any) -> TeeLogger:
        return tee

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            BothRenderer(console),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
