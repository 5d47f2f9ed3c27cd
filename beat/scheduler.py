"""The beat's scheduler: Celery beat's loop, with orch's tick run in-process every ORCH_TICK_SECONDS.

Celery names it by string (`beat_scheduler = "beat.scheduler:OrchScheduler"`), so `celery -A orch beat` and
`celery -A orch worker -B` both run it."""

from __future__ import annotations

import sys
import time
from typing import Any

from celery.beat import Scheduler

from beat.single import hold_single_beat_lock
from beat.tick import run_tick
from orch.errors import ConfigInvalid
from orch.liveness import touch
from orch.log import get_logger
from orch.settings import get_settings
from orch.store.db import STORE_UNAVAILABLE, ensure_schema

log = get_logger(__name__)

_MIN_SLEEP = 0.01


class OrchScheduler(Scheduler):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = get_settings()
        # SQLite: refuse a second beat. A beat limited to its own plans (`orch run`'s) dispatches nothing else.
        scoped = bool(settings.beat_plan_ids)
        try:
            self._single_beat = None if scoped else hold_single_beat_lock(settings.resolved_database_url)
        except ConfigInvalid as exc:
            print(f"orch: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        super().__init__(*args, **kwargs)
        self.tick_seconds = settings.tick_seconds
        self.lease_seconds = settings.lease_seconds
        self._next_tick = 0.0
        self._store_since: float | None = None  # since when every tick has reached the store
        self.liveness_file = settings.liveness_file
        self.liveness_seconds = settings.liveness_seconds
        self._next_alive = 0.0
        try:
            ensure_schema()
        except Exception:  # the store may come up after the beat: the tick keeps trying
            log.exception("store not ready at beat start; the tick will retry")

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = float(super().tick(*args, **kwargs))
        now = time.monotonic()
        if now >= self._next_tick:
            # Reap only once the store has been reachable for a whole lease period: after an outage (or a beat
            # restart) workers get the chance to renew the leases they held, and to record results they kept.
            reap = self._store_since is not None and now - self._store_since >= self.lease_seconds
            try:
                run_tick(reap=reap)
                if self._store_since is None:
                    self._store_since = now
            except STORE_UNAVAILABLE:  # the store is away: reap again only a lease period after it returns
                self._store_since = None
                log.exception("tick failed: store unreachable; retrying next tick")
            except Exception:  # e.g. the broker is away: the tick's store transaction (reaping too) committed
                log.exception("tick failed; retrying next tick")
            self._next_tick = time.monotonic() + self.tick_seconds
        next_wake = self._next_tick
        if self.liveness_file is not None:
            # touched from the beat's loop, so a beat hung in a tick stops touching it (a probe reads its age)
            if now >= self._next_alive:
                touch(self.liveness_file)
                self._next_alive = now + self.liveness_seconds
            next_wake = min(next_wake, self._next_alive)
        return max(_MIN_SLEEP, min(interval, next_wake - time.monotonic()))
