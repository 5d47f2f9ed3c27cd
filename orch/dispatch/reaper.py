"""The reaper: a running attempt whose lease expired (its worker was killed, froze, or lost the store) is
recorded as lost, and its task retried or failed by the retry policy, like any other failed attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from orch.decisions.retry import Backoff, decide_outcome
from orch.durations import format_duration
from orch.failures import FailureClass
from orch.intake.prices import Usage
from orch.records import AttemptResult
from orch.store import attempts


@dataclass(frozen=True)
class Reaped:
    plan_id: str
    key: str
    attempt: int
    worker: str
    retried: bool


def reap_expired(session: Session, now: datetime, backoff: Backoff, plan_ids: list[str] | None = None) -> list[Reaped]:
    """Settle every attempt whose lease expired before `now` (the database's clock), in the caller's transaction.

    Each is a compare-and-set on the expired lease: a worker that renews it first keeps its attempt."""
    reaped: list[Reaped] = []
    for claim in attempts.expired_claims(session, now, plan_ids):
        attempt = attempts.get_attempt(session, claim)
        worker = attempt.worker if attempt else "?"
        pid = attempt.pid if attempt else None
        silent = ""
        if attempt is not None and attempt.heartbeat_at is not None:
            silent = f"for {format_duration((now - attempt.heartbeat_at).total_seconds())} "
        error = f"worker lost: {worker} (pid {pid}) sent no heartbeat {silent}and its lease expired"
        result = AttemptResult(
            False,
            failure_class=FailureClass.WORKER_LOST,
            error=error,
            # what the agent spent, as its heartbeats reported it, stays on the record
            usage=attempts.reported_usage(attempt) if attempt else Usage(),
            cost_usd=attempt.cost_usd if attempt else None,
            model=attempt.model if attempt else None,
        )
        outcome = decide_outcome(
            False, FailureClass.WORKER_LOST, error, claim.counted_failures, claim.retries, now, random.random(), backoff
        )
        if attempts.record_result(session, claim, result, outcome, now):
            reaped.append(Reaped(claim.plan_id, claim.key, claim.attempt, worker, outcome.not_before is not None))
    return reaped
