"""Circuit breaker per agent type: after N consecutive failed attempts, the type's dispatch pauses for a
cool-down (an agent pause, shown by `orch status`); other types keep running. When the cool-down ends, the next
attempt is the probe: one more failure opens the circuit again at once.

The decision (`is_open`) is here; orch.dispatch.breaker applies it (`trip_if_open`)."""

from __future__ import annotations

from collections.abc import Sequence

from orch.failures import FailureClass
from orch.states import AttemptStatus

CIRCUIT_OPEN = "circuit open"  # how a pause the breaker set begins its reason

# Outcomes that say nothing about the agent type's health: the worker's or the operator's doing.
NEUTRAL = frozenset(
    {FailureClass.WORKER_LOST, FailureClass.INTERRUPTED, FailureClass.LEASE_LOST, FailureClass.USAGE_LIMIT}
)


def is_open(recent: Sequence[tuple[AttemptStatus, str | None]], threshold: int) -> bool:
    """`recent`: the type's latest finished attempts, newest first (status, failure class). Open when the
    newest `threshold` that tell anything about the type all failed."""
    telling = [status for status, failure in recent if failure not in NEUTRAL][:threshold]
    return len(telling) == threshold and all(s in (AttemptStatus.FAILED, AttemptStatus.LOST) for s in telling)
