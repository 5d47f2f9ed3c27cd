"""structlog set-up shared by the CLI, workers and beat: console or JSON lines (ORCH_LOG_FORMAT)."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_configured = False


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    global _configured
    from orch.settings import get_settings

    settings = get_settings()
    fmt = fmt or settings.log_format
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get((level or settings.log_level).upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: no secret value is ever rendered into a log line."""
    from orch.redaction import process_redactor

    redactor = process_redactor()
    if redactor:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = redactor.text(value)
            elif value is not None and not isinstance(value, int | float | bool):
                event[key] = redactor.text(str(value))
    return event


def get_logger(name: str) -> Any:
    if not _configured:
        configure_logging()
    return structlog.get_logger(name)
