"""Logging shared by the CLI, workers, beat and Flower: structlog lines, JSON (default) or console
(ORCH_LOG_FORMAT), secrets redacted.

`configure_logging` routes everything through the stdlib root logger with one structlog `ProcessorFormatter`,
so Celery's, Flower's and the libraries' own lines get the same timestamp, level, context (plan_id, task,
attempt, bound with `bind_attempt`) and redaction as orch's."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, unbind_contextvars
from structlog.stdlib import ProcessorFormatter

# The loggers of orch's own code; their level is ORCH_LOG_LEVEL whatever level the host process (Celery) sets.
ORCH_LOGGERS = ("orch", "workers", "beat", "bench")
# What identifies the attempt a line is about (bound in the worker around an attempt, in the beat per dispatch).
ATTEMPT_KEYS = ("plan_id", "task", "attempt", "task_pk")
HANDLER_NAME = "orch"

_configured = False


def _settings_or_defaults() -> tuple[str, str]:
    from orch.settings import get_settings

    try:
        settings = get_settings()
    except Exception:  # invalid settings are reported by whoever needs them; logging must still work
        return "json", "INFO"
    return settings.log_format, settings.log_level


def level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    return logging.getLevelNamesMapping().get(level.upper(), logging.INFO)


def renderer(fmt: str) -> Any:
    return structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer()


def configure_logging(
    fmt: str | None = None,
    level: str | int | None = None,
    *,
    root_level: str | int = logging.WARNING,
    stream: TextIO | None = None,
    logfile: str | Path | None = None,
) -> None:
    """One handler on the root logger (to `logfile`, else `stream`, else stderr) rendering every line, orch's and
    foreign, as JSON or console text. orch's loggers log at `level` (ORCH_LOG_LEVEL), the rest at `root_level`
    (Celery passes its --loglevel)."""
    global _configured
    default_fmt, default_level = _settings_or_defaults()
    fmt = fmt or default_fmt
    orch_level = level_number(level or default_level)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(orch_level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler: logging.Handler
    if logfile is not None:
        handler = logging.FileHandler(private_log_file(Path(logfile)), encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.name = HANDLER_NAME
    handler.setFormatter(
        ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[ProcessorFormatter.remove_processors_meta, renderer(fmt)],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.name == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_number(root_level))
    for name in ORCH_LOGGERS:
        logging.getLogger(name).setLevel(orch_level)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin at every import
    _configured = True


def private_log_file(path: Path) -> Path:
    """`path` created 0600 (and an existing one made so) whatever the umask: a process that logs to a file before
    it applies orch.hardening (a beat's --logfile) must not leave it readable by others."""
    from orch.hardening import private_file

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    private_file(path)
    return path


def _configure_standalone() -> None:
    """Until a process configures logging, orch's lines go straight to stderr (tests, library use), redacted."""
    global _configured
    fmt, level = _settings_or_defaults()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer(fmt),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: no secret value, URL password or API key is ever rendered into a log line."""
    from orch.redaction import is_sensitive_key, process_redactor, redact_log_text

    redactor = process_redactor()
    for key, value in event.items():
        if key.startswith("_") or value is None or isinstance(value, int | float | bool):
            continue
        if is_sensitive_key(key):
            event[key] = "[redacted]"
            continue
        text = value if isinstance(value, str) else str(value)
        event[key] = redact_log_text(redactor.text(text) if redactor else text)
    return event


def bind_attempt(**ids: Any) -> None:
    """From here on, this thread's lines carry these attempt ids (plan_id, task, attempt, task_pk); ids bound
    for an earlier attempt are dropped first."""
    forget_attempt()
    bind_contextvars(**{key: value for key, value in ids.items() if value is not None})


def forget_attempt() -> None:
    unbind_contextvars(*ATTEMPT_KEYS)


@contextmanager
def attempt_context(plan_id: str, task: str, attempt: int) -> Iterator[None]:
    """The lines logged inside carry these ids; the ids bound before are back afterwards."""
    with bound_contextvars(plan_id=plan_id, task=task, attempt=attempt):
        yield


def get_logger(name: str) -> Any:
    if not _configured:
        _configure_standalone()
    return structlog.get_logger(name)
