"""A running attempt's heartbeat: renews its lease in the store (by the database's clock) and records the
usage so far; when the lease is gone, or the budget spent, it tells the executor to stop the agent."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from types import TracebackType

from orch.dispatch import budget
from orch.errors import StoreUnusable
from orch.failures import FailureClass
from orch.intake.prices import Usage
from orch.log import attempt_context, get_logger
from orch.records import Claim
from orch.store import attempts
from orch.store.db import STORE_UNAVAILABLE, db_now, write_session
from workers.control import AttemptControl

log = get_logger(__name__)

LEASE_GONE = (
    "the attempt's lease is gone (the task was cancelled or skipped, or its lease expired and another attempt "
    "took over)"
)


class Heartbeat:
    """Renews `claim`'s lease every `interval` seconds, for as long as the `with` block runs.

    The beats run on one thread per process (`_Ticker`), not a thread per attempt: starting and joining a thread
    would cost a short task more than its own store writes."""

    def __init__(
        self,
        claim: Claim,
        control: AttemptControl,
        interval: float,
        lease_seconds: float,
        price: Callable[[Usage, str | None], float | None],
        store_url: str,
    ) -> None:
        self.claim = claim
        self.control = control
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.price = price
        self.store_url = store_url  # the worker's store, from the settings its attempt was run with
        self.beats = 0
        self.recording = False  # the agent is done and its result being written: a lost lease stops nothing

    def __enter__(self) -> Heartbeat:
        _ticker.add(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        _ticker.remove(self)  # returns once no beat of this heartbeat is running

    def beat(self) -> bool | None:
        """One renewal; True: renewed, False: the lease is gone (the agent is told to stop), None: no store."""
        with attempt_context(self.claim.plan_id, self.claim.key, self.claim.attempt):
            return self._renew()

    def _renew(self) -> bool | None:
        usage, model, cost = self.control.usage()
        if cost is None and usage.total:
            cost = self.price(usage, model)
        try:
            with write_session(self.store_url) as session:
                now = db_now(session)
                renewed = attempts.renew_lease(session, self.claim, now, self.lease_seconds, usage, cost)
            budget_stop = None
            if renewed:  # apart: holding the plan locks its row, which is never taken after one of its task rows
                with write_session(self.store_url) as session:
                    budget_stop = budget.stop_if_spent(session, self.claim, db_now(session))
        except STORE_UNAVAILABLE as exc:  # the agent goes on; the lease holds until it expires
            log.warning("heartbeat: store unreachable", error=str(exc).splitlines()[0])
            return None
        except StoreUnusable as exc:  # full, read-only, corrupt: the worker is stopping; one line, no traceback
            log.warning("heartbeat: store unusable", error=str(exc))
            return None
        self.beats += 1
        if not renewed and self.recording:
            return False
        if not renewed:
            log.warning("heartbeat: lease gone; stopping the agent")
            self.control.request_stop(FailureClass.LEASE_LOST, LEASE_GONE)
            return False
        if budget_stop is not None:
            self.control.request_stop(budget_stop.failure_class, budget_stop.message)
        return True


class _Ticker:
    """The process's heartbeat thread: runs each registered heartbeat's `beat` when it is due. Started on first
    use in each process (a pool process is forked without the parent's threads)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: dict[Heartbeat, float] = {}
        self._beating: Heartbeat | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, heartbeat: Heartbeat) -> None:
        with self._changed:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="orch-heartbeat", daemon=True)
                self._thread.start()
            self._due[heartbeat] = time.monotonic() + heartbeat.interval
            self._changed.notify_all()

    def remove(self, heartbeat: Heartbeat) -> None:
        with self._changed:
            self._due.pop(heartbeat, None)
            while self._beating is heartbeat:
                self._changed.wait()

    def _run(self) -> None:
        while True:
            with self._changed:
                heartbeat = self._next_due()
                self._due[heartbeat] = time.monotonic() + heartbeat.interval
                self._beating = heartbeat
            claim = heartbeat.claim
            try:
                heartbeat.beat()
            except Exception:  # a bug in one beat must not stop the beats of the process
                log.exception("heartbeat failed", plan_id=claim.plan_id, task=claim.key, attempt=claim.attempt)
            finally:
                with self._changed:
                    self._beating = None
                    self._changed.notify_all()

    def _next_due(self) -> Heartbeat:
        """Waits (holding the condition) until some registered heartbeat is due, and returns it."""
        while True:
            now = time.monotonic()
            if self._due:
                heartbeat, due = min(self._due.items(), key=lambda item: item[1])
                if due <= now:
                    return heartbeat
                self._changed.wait(due - now)
            else:
                self._changed.wait()


_ticker = _Ticker()
