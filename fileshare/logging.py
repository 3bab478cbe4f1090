"""structlog, configured once: JSON lines in production, a console renderer in
development. Request-scoped values (request id, principal, upload) are bound with
``structlog.contextvars`` by the request middleware."""

from __future__ import annotations

import logging
import sys

import structlog

from fileshare.config import LogFormat

#: Keys whose values never reach a log line, whatever code binds them.
SECRET_KEYS = frozenset({"authorization", "api_key", "token", "password", "secret", "x-api-key"})


def _redact(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    for key in list(event):
        if key.lower() in SECRET_KEYS:
            event[key] = "[redacted]"
    return event


def configure_logging(fmt: LogFormat = "json", level: str = "INFO") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
