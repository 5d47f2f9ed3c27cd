"""A running attempt's heartbeat: renews its lease in the store (by the database's clock) and records the
usage so far; when the lease is gone, or the budget spent, it tells the executor to stop the agent."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

from orch.failures import FailureClass
from orch.log import get_logger
from orch.prices import Usage
from orch.store import repo
from orch.store.db import STORE_UNAVAILABLE, write_session
from orch.store.repo import Claim
from workers.control import AttemptControl

log = get_logger(__name__)

LEASE_GONE = (
    "the attempt's lease is gone (the task was cancelled or skipped, or its lease expired and another attempt "
    "took over)"
)


class Heartbeat:
    """Renews `claim`'s lease every `interval` seconds in a thread, for as long as the `with` block runs."""

    def __init__(
        self,
        claim: Claim,
        control: AttemptControl,
        interval: float,
        lease_seconds: float,
        price: Callable[[Usage, str | None], float | None],
    ) -> None:
        self.claim = claim
        self.control = control
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.price = price
        self.beats = 0
        self.recording = False  # the agent is done and its result being written: a lost lease stops nothing
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{claim.key}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self.beat()

    def beat(self) -> bool | None:
        """One renewal; True: renewed, False: the lease is gone (the agent is told to stop), None: no store."""
        usage, model, cost = self.control.usage()
        if cost is None and usage.total:
            cost = self.price(usage, model)
        try:
            with write_session() as session:
                now = repo.db_now(session)
                renewed = repo.renew_lease(session, self.claim, now, self.lease_seconds, usage, cost)
                over_budget = repo.over_budget(session, self.claim) if renewed else None
        except STORE_UNAVAILABLE as exc:  # the agent goes on; the lease holds until it expires
            log.warning("heartbeat: store unreachable", task=self.claim.key, error=str(exc).splitlines()[0])
            return None
        self.beats += 1
        if not renewed and self.recording:
            return False
        if not renewed:
            log.warning("heartbeat: lease gone; stopping the agent", plan=self.claim.plan_id, task=self.claim.key)
            self.control.request_stop(FailureClass.LEASE_LOST, LEASE_GONE)
            return False
        if over_budget is not None:
            self.control.request_stop(over_budget.failure_class, over_budget.message)
        return True
