"""structlog, configured once: JSON lines in production, a console renderer in
development. Request-scoped values (request id, principal, upload) are bound with
``structlog.contextvars`` by the request middleware."""

from __future__ import annotations

import logging
import sys
import warnings

import structlog
from aiohttp.multipart import BadContentDispositionHeader

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


def _framework_record(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A stdlib record (aiohttp, asyncio...): its exception by type only. A framework's
    traceback quotes what it was handling — a request line, a header with a key in it."""
    exc_info = event.pop("exc_info", None)
    if isinstance(exc_info, tuple) and exc_info[0] is not None:
        event["exception_type"] = exc_info[0].__name__
    # asyncio writes the failed task's repr, exception text included, into the message.
    event["event"] = str(event.get("event", "")).split("\n", 1)[0][:200]
    return event


def _route_stdlib(renderer: structlog.typing.Processor, level: int) -> None:
    """Everything logged through ``logging`` comes out like fileshare's own lines (one JSON
    object per line in production), never as a bare traceback."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                _framework_record,
                _redact,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries' own debug lines stay off whatever fileshare's level: botocore's, at DEBUG,
    # hold signed requests (security tokens included).
    root.setLevel(max(level, logging.WARNING))
    # aiohttp warns about a part's malformed Content-Disposition by quoting the header (a
    # file name): the refusal (malformed_multipart) is enough.
    warnings.filterwarnings("ignore", category=BadContentDispositionHeader)


def configure_logging(fmt: LogFormat = "json", level: str = "INFO") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _route_stdlib(renderer, numeric)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
