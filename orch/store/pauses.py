"""Agent pauses: an agent type's dispatch held until a time (a usage limit, an open circuit breaker), and the
recent outcomes the circuit breaker judges by."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from orch.failures import PauseCause
from orch.states import AttemptStatus
from orch.store.models import AgentPauseRow, AttemptRow, TaskRow


def pause_agent(session: Session, agent: str, until: datetime, cause: PauseCause, reason: str, now: datetime) -> None:
    """Hold `agent`'s dispatch until `until`, for `cause` (`reason`: its details, for people). A later pause wins
    over an earlier one, its cause with it."""
    existing = session.get(AgentPauseRow, agent, with_for_update=True)
    if existing is None:
        session.add(AgentPauseRow(agent=agent, until=until, cause=cause, reason=reason, created_at=now))
    elif existing.until < until:
        existing.until, existing.cause, existing.reason, existing.created_at = until, cause, reason, now


def recent_outcomes(session: Session, agent: str, limit: int) -> list[tuple[AttemptStatus, str | None]]:
    """An agent type's latest finished attempts across every plan, newest first."""
    rows = session.execute(
        select(AttemptRow.status, AttemptRow.failure_class)
        .join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
        .where(TaskRow.agent == agent, AttemptRow.finished_at.is_not(None))
        .order_by(AttemptRow.finished_at.desc(), AttemptRow.pk.desc())
        .limit(limit)
    )
    return [(status, failure) for status, failure in rows]


def active_pauses(session: Session, now: datetime) -> dict[str, AgentPauseRow]:
    rows = session.scalars(select(AgentPauseRow).where(AgentPauseRow.until > now))
    return {row.agent: row for row in rows}
