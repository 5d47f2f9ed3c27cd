"""A worker's `-Q` (and `-X`) names are checked against the agent types' queues before Celery selects them: a
typo is one line naming it, the closest queue and the known ones, exit 2. Celery's own error is a traceback
advising task_create_missing_queues, which orch turns off on purpose (a task must never land on a queue no worker
was told to read)."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from celery.signals import celeryd_init

from orch.errors import ConfigInvalid


def check_queue_names(option: str, names: Iterable[str], known: list[str]) -> None:
    """Raise ConfigInvalid for the first name of `option` (-Q or -X) that is not a known queue."""
    for name in names:
        if name and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigInvalid(
                f"celery worker {option} {name}: no such queue ({hint}the agent types' queues: {', '.join(known)})"
            )


def _names(value: object) -> list[str]:
    """Celery's -Q value: a list of names, or one comma-separated string (as `str_to_list` reads it)."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",")]
    return [str(name).strip() for name in value] if isinstance(value, Iterable) else []


def _refuse_unknown_queues(conf: Any = None, options: Mapping[str, object] | None = None, **_kwargs: Any) -> None:
    # Sent before the worker selects its queues (and before it connects): an exception would only be logged by
    # Celery's signal, so the worker exits here.
    options = options or {}
    known = [queue.name for queue in (conf.task_queues if conf is not None else ())]
    try:
        check_queue_names("-Q", _names(options.get("queues")), known)
        check_queue_names("-X", _names(options.get("exclude_queues")), known)
    except ConfigInvalid as exc:
        print(f"orch: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


celeryd_init.connect(_refuse_unknown_queues, weak=False)
