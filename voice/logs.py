"""Structured logging with structlog.

JSON lines in production, a readable console format in a terminal. Every connection or call binds its own
logger (``get_logger(call_id=...)``) so each line carries the id. Never log secrets or whole audio payloads:
:func:`redact` is a processor that masks known secret keys and shortens long strings.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "console", "json"]

_SECRET_KEYS = frozenset({"api_key", "authorization", "token", "password", "secret", "auth_token"})
_MAX_VALUE_CHARS = 512


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask secret-looking keys and cut long string values (base64 audio must never reach a log)."""
    for key, value in list(event_dict.items()):
        if key.lower() in _SECRET_KEYS and value:
            event_dict[key] = "***"
        elif isinstance(value, str | bytes) and len(value) > _MAX_VALUE_CHARS:
            event_dict[key] = f"{value[:64]!r}...<{len(value)} chars>"
    return event_dict


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Configure structlog and the standard library root logger once, for the whole process."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    """A logger with the given context bound (e.g. ``call_id``, ``session_id``, ``peer``).

    The logger is a lazy proxy: it is assembled from the configuration in force when it first logs, so
    module-level loggers created before :func:`configure_logging` still honour the configured level.
    """
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(**bound)
    return logger
