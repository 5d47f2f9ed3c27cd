"""An attempt's control channel between the runner (and its heartbeat) and the executor running the agent.

The executor polls `stop_request` while its agent runs and reports usage as the agent spends it; the heartbeat
reads that usage into the store and asks for a stop when the lease is gone or the budget is spent; a worker's
shutdown asks every running attempt of its process to stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from orch.failures import FailureClass
from orch.intake.prices import Usage


@dataclass(frozen=True)
class StopRequest:
    failure_class: FailureClass
    message: str


class AttemptControl:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._request: StopRequest | None = None
        self._usage = Usage()
        self._model: str | None = None
        self._cost: float | None = None

    def request_stop(self, failure_class: FailureClass, message: str) -> None:
        """Ask the executor to end its agent; the first request's reason is the one recorded."""
        with self._lock:
            if self._request is None:
                self._request = StopRequest(failure_class, message)
        self._stopped.set()

    @property
    def stop_request(self) -> StopRequest | None:
        return self._request

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early on a stop request; True if one came."""
        return self._stopped.wait(seconds)

    def report_usage(self, usage: Usage, model: str | None = None, cost_usd: float | None = None) -> None:
        """The agent's usage so far (cumulative), as the executor learns it."""
        with self._lock:
            self._usage = usage
            self._model = model or self._model
            self._cost = cost_usd if cost_usd is not None else self._cost

    def usage(self) -> tuple[Usage, str | None, float | None]:
        with self._lock:
            return self._usage, self._model, self._cost


_active: set[AttemptControl] = set()
_active_lock = threading.Lock()


@contextmanager
def active(control: AttemptControl) -> Iterator[AttemptControl]:
    """Register a running attempt of this process, so a shutdown can reach it."""
    with _active_lock:
        _active.add(control)
    try:
        yield control
    finally:
        with _active_lock:
            _active.discard(control)


def stop_all(failure_class: FailureClass, message: str) -> int:
    """Ask every running attempt of this process to stop; returns how many there were."""
    with _active_lock:
        controls = list(_active)
    for control in controls:
        control.request_stop(failure_class, message)
    return len(controls)
