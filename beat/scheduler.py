"""The beat's scheduler: Celery beat's loop, with orch's tick run in-process every ORCH_TICK_SECONDS.

Celery names it by string (`beat_scheduler = "beat.scheduler:OrchScheduler"`), so `celery -A orch beat` and
`celery -A orch worker -B` both run it."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from typing import Any

from celery.beat import Scheduler

from beat.single import hold_single_beat_lock
from beat.tick import BeatProcess, run_tick
from orch.errors import ConfigInvalid, StoreUnusable
from orch.hardening import harden_process
from orch.log import get_logger
from orch.services.liveness import touch
from orch.services.processes import die_with_worker_main, in_embedded_worker, stop_this_worker
from orch.settings import get_settings
from orch.store.db import STORE_UNAVAILABLE, ensure_schema

log = get_logger(__name__)

_MIN_SLEEP = 0.01
_REPEAT_PROBLEM_SECONDS = 60.0  # a store that stays unusable is logged again this often, not at every tick


class OrchScheduler(Scheduler):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        harden_process()
        die_with_worker_main(signal.SIGKILL)  # the `-B` beat of the worker `orch run` embeds only
        settings = get_settings()
        # One beat per store (beat/single.py). A beat limited to its own plans (`orch run`'s) takes no lock, nor
        # does the lazy scheduler `celery beat` builds only to print its banner.
        unguarded = bool(settings.beat_plan_ids) or bool(kwargs.get("lazy"))
        self._exit_code = 0
        try:
            self._single_beat = None if unguarded else hold_single_beat_lock(settings.resolved_database_url)
        except ConfigInvalid as exc:
            print(f"orch: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        self._lock_held = True
        super().__init__(*args, **kwargs)
        self.tick_seconds = settings.tick_seconds
        self.lease_seconds = settings.lease_seconds
        self._next_tick = 0.0
        self._store_since: float | None = None  # since when every tick has reached the store
        self.liveness_file = settings.liveness_file
        self.liveness_seconds = settings.liveness_seconds
        self._next_alive = 0.0
        self._problem_logged: tuple[str, float] | None = None
        # recorded at every tick, so that commands can tell whether a beat serves the store
        self._process = BeatProcess(socket.gethostname(), os.getpid(), datetime.now(UTC))
        try:
            ensure_schema()
        except Exception:  # the store may come up after the beat: the tick keeps trying
            log.exception("store not ready at beat start; the tick will retry")

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = float(super().tick(*args, **kwargs))
        now = time.monotonic()
        if now >= self._next_tick:
            if self._holds_beat_lock():
                self._tick(now)
            else:
                self._store_since = None
            self._next_tick = time.monotonic() + self.tick_seconds
        next_wake = self._next_tick
        if self.liveness_file is not None:
            # touched from the beat's loop, so a beat hung in a tick stops touching it (a probe reads its age)
            if now >= self._next_alive:
                touch(self.liveness_file)
                self._next_alive = now + self.liveness_seconds
            next_wake = min(next_wake, self._next_alive)
        return max(_MIN_SLEEP, min(interval, next_wake - time.monotonic()))

    def _tick(self, now: float) -> None:
        # Reap only once the store has been reachable for a whole lease period: after an outage (or a beat
        # restart) workers get the chance to renew the leases they held, and to record results they kept.
        reap = self._store_since is not None and now - self._store_since >= self.lease_seconds
        try:
            run_tick(reap=reap, beat=self._process)
            if self._store_since is None:
                self._store_since = now
        except StoreUnusable as exc:  # full, read-only, corrupt: one line now and then, not a traceback per tick
            self._store_since = None
            self._store_unusable(exc, now)
        except STORE_UNAVAILABLE:  # the store is away: reap again only a lease period after it returns
            self._store_since = None
            log.exception("tick failed: store unreachable; retrying next tick")
        except Exception:  # e.g. the broker is away: the tick's store transaction (reaping too) committed
            log.exception("tick failed; retrying next tick")

    def _store_unusable(self, problem: StoreUnusable, now: float) -> None:
        message = str(problem)
        last = self._problem_logged
        if last is not None and last[0] == message and now - last[1] < _REPEAT_PROBLEM_SECONDS:
            return
        self._problem_logged = (message, now)
        if in_embedded_worker():
            # `orch run` watches its worker: stopping it ends the run with the store's problem, where a beat that
            # cannot dispatch would leave it waiting in silence.
            log.error(f"tick failed: {message}; stopping the worker")
            stop_this_worker(message)
        else:
            log.error(f"tick failed: {message}; retrying")

    def _holds_beat_lock(self) -> bool:
        """Whether this beat may tick: it holds the store's beat lock (taking it again after losing its
        connection). Stops the beat if another one took it."""
        if self._single_beat is None:
            return True
        try:
            held = self._single_beat.keep()
        except ConfigInvalid as exc:
            print(f"orch: {exc}", file=sys.stderr)
            self._exit_code = exc.exit_code
            raise SystemExit(exc.exit_code) from None  # Celery's loop ends, then calls close()
        except Exception:
            log.exception("the beat lock could not be checked; not ticking until it can")
            held = False
        if held != self._lock_held:
            if not held:
                log.warning("not ticking until the beat lock is held again (the store is unreachable)")
            self._lock_held = held
        return held

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._single_beat is not None:
                self._single_beat.release()
        if self._exit_code:
            # Celery's beat loop swallows SystemExit and returns normally: raised here, after its cleanup,
            # it reaches the command, so a beat that lost its lock to another exits 2.
            raise SystemExit(self._exit_code)
