"""The beat's scheduler: Celery beat's loop, with orch's tick run in-process every ORCH_TICK_SECONDS.

Celery names it by string (`beat_scheduler = "beat.scheduler:OrchScheduler"`), so `celery -A orch beat` and
`celery -A orch worker -B` both run it."""

from __future__ import annotations

import time
from typing import Any

from celery.beat import Scheduler

from beat.tick import run_tick
from orch.log import get_logger
from orch.settings import get_settings
from orch.store.db import ensure_schema

log = get_logger(__name__)

_MIN_SLEEP = 0.01


class OrchScheduler(Scheduler):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tick_seconds = get_settings().tick_seconds
        self._next_tick = 0.0
        try:
            ensure_schema()
        except Exception:  # the store may come up after the beat: the tick keeps trying
            log.exception("store not ready at beat start; the tick will retry")

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = float(super().tick(*args, **kwargs))
        if time.monotonic() >= self._next_tick:
            try:
                run_tick()
            except Exception:  # the store or broker may be away for a while: log, and tick again
                log.exception("tick failed; retrying next tick")
            self._next_tick = time.monotonic() + self.tick_seconds
        return max(_MIN_SLEEP, min(interval, self._next_tick - time.monotonic()))
