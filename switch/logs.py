"""Logging: structlog on top of the standard library, one event per admin action and per
state change. JSON lines when stderr is not a terminal (for journald and log shippers),
readable key=value lines on a terminal. Secrets never reach a log: ``redact`` replaces
the value of any key that names a password or secret, at any depth."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import structlog

__all__ = ["configure", "redact"]

_SECRET_WORDS = ("password", "secret")


def redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: "***" if any(w in str(k).lower() for w in _SECRET_WORDS) else redact(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _redact_processor(logger: object, name: str, event: dict[str, Any]) -> dict[str, Any]:
    return redact(event)  # type: ignore[no-any-return]


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    """Route structlog and stdlib logging to stderr, JSON unless on a terminal."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (structlog.processors.JSONRenderer() if json
                     else structlog.dev.ConsoleRenderer(colors=False))
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_processor,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
