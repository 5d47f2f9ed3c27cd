"""Agent pauses: an agent type's dispatch held until a time (a usage limit, an open circuit breaker), and the
recent outcomes the circuit breaker judges by."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, and_, case, literal_column, or_, select
from sqlalchemy.orm import Session

from orch.decisions.followups import PLANNER
from orch.decisions.replan import REPLAN_DECLINED
from orch.failures import PauseCause
from orch.states import AttemptStatus, TaskStatus
from orch.store.models import AgentPauseRow, AttemptRow, TaskRow

# An attempt that asked the planner for a re-plan: its task's re-plan began after the attempt before it (the
# re-plan sets retry_floor to the attempt whose failure started it) and is under way, or ended it (replaced, or
# failed). Known from the task's row; an `orch retry` of a task whose re-plan failed moves the floor, and its
# earlier re-plan attempts count as the task's own type from then on.
REPLAN_ATTEMPT = and_(
    TaskRow.replans > 0,
    AttemptRow.number > TaskRow.retry_floor,
    or_(TaskRow.replanning, TaskRow.status.in_((TaskStatus.REPLACED, TaskStatus.FAILED))),
)
# The agent type whose work an attempt was (a constant, not a bound parameter: it may be selected and grouped by).
ATTEMPT_AGENT = case((REPLAN_ATTEMPT, literal_column(f"'{PLANNER}'", String)), else_=TaskRow.agent)


def pause_agent(session: Session, agent: str, until: datetime, cause: PauseCause, reason: str, now: datetime) -> None:
    """Hold `agent`'s dispatch until `until`, for `cause` (`reason`: its details, for people). A later pause wins
    over an earlier one, its cause with it."""
    existing = session.get(AgentPauseRow, agent, with_for_update=True)
    if existing is None:
        session.add(AgentPauseRow(agent=agent, until=until, cause=cause, reason=reason, created_at=now))
    elif existing.until < until:
        existing.until, existing.cause, existing.reason, existing.created_at = until, cause, reason, now


def recent_outcomes(session: Session, agent: str, limit: int) -> list[tuple[AttemptStatus, str | None]]:
    """An agent type's latest finished attempts across every plan, newest first: the planner's are the re-plan
    attempts (a decline counts as an answer), and no type's include them."""
    of_type = (TaskRow.replans > 0) if agent == PLANNER else (TaskRow.agent == agent)  # what an index can find
    its_work = ATTEMPT_AGENT == agent  # noqa: SIM300 (an SQL expression, not a constant)
    rows = session.execute(
        select(AttemptRow.status, AttemptRow.failure_class)
        .join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
        .where(of_type, its_work, AttemptRow.finished_at.is_not(None))
        .order_by(AttemptRow.finished_at.desc(), AttemptRow.pk.desc())
        .limit(limit)
    )
    return [_as_outcome(status, failure) for status, failure in rows]


def _as_outcome(status: AttemptStatus, failure: str | None) -> tuple[AttemptStatus, str | None]:
    """A planner that declined to re-plan answered: for the circuit breaker, the type worked."""
    return (AttemptStatus.SUCCEEDED, None) if failure == REPLAN_DECLINED else (status, failure)


def active_pauses(session: Session, now: datetime) -> dict[str, AgentPauseRow]:
    rows = session.scalars(select(AgentPauseRow).where(AgentPauseRow.until > now))
    return {row.agent: row for row in rows}
