"""Applying the circuit breaker's decision (orch.decisions.breaker): pause an agent type whose circuit is open."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from orch.decisions.breaker import CIRCUIT_OPEN, is_open
from orch.failures import PauseCause
from orch.intake.agents import BreakerSpec
from orch.store import pauses


def trip_if_open(session: Session, agent: str, spec: BreakerSpec, now: datetime) -> bool:
    """After a failed attempt of `agent`: pause the type for its cool-down if its circuit is now open."""
    if not is_open(pauses.recent_outcomes(session, agent, spec.failures * 2), spec.failures):
        return False
    until = now + timedelta(seconds=spec.cooldown)
    reason = f"{CIRCUIT_OPEN}: {spec.failures} consecutive failures"
    pauses.pause_agent(session, agent, until, PauseCause.CIRCUIT_BREAKER, reason, now)
    return True
