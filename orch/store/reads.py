"""Read-only queries behind `orch watch`, `orch report` and `orch graph`: a plan's progress by aggregate (cheap on
a 100,000-task plan, polled every second), and the whole plan with its attempts (read once, for a report)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from orch.states import AttemptStatus, TaskStatus
from orch.store.models import AttemptRow, TaskRow


@dataclass(frozen=True)
class RunningTask:
    key: str
    agent: str
    attempt: int
    started_at: datetime | None


def counts_by_agent(session: Session, plan_id: str) -> dict[str, Counter[TaskStatus]]:
    """The plan's tasks counted per agent type and status: one GROUP BY."""
    rows = session.execute(
        select(TaskRow.agent, TaskRow.status, func.count())
        .where(TaskRow.plan_id == plan_id)
        .group_by(TaskRow.agent, TaskRow.status)
    )
    by_agent: dict[str, Counter[TaskStatus]] = {}
    for agent, status, count in rows:
        by_agent.setdefault(agent, Counter())[status] = count
    return by_agent


def status_totals(counts: Iterable[Counter[TaskStatus]]) -> Counter[TaskStatus]:
    """Counts per status added up (over agent types)."""
    total: Counter[TaskStatus] = Counter()
    for each in counts:
        total.update(each)
    return total


def count_by_status(session: Session, plan_id: str) -> Counter[TaskStatus]:
    """The plan's tasks counted per status."""
    return status_totals(counts_by_agent(session, plan_id).values())


def running_tasks(session: Session, plan_id: str, limit: int) -> list[RunningTask]:
    """The plan's longest-running tasks, at most `limit` (an index lookup on plan and status)."""
    rows = session.execute(
        select(TaskRow.key, TaskRow.agent, TaskRow.attempt, TaskRow.started_at)
        .where(TaskRow.plan_id == plan_id, TaskRow.status == TaskStatus.RUNNING)
        .order_by(TaskRow.started_at, TaskRow.seq)
        .limit(limit)
    )
    return [RunningTask(key, agent, attempt, started_at) for key, agent, attempt, started_at in rows]


def plan_attempts(session: Session, plan_id: str) -> list[AttemptRow]:
    """Every attempt of the plan's tasks, in task order then attempt number."""
    return list(
        session.scalars(
            select(AttemptRow)
            .join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
            .where(TaskRow.plan_id == plan_id)
            .order_by(TaskRow.seq, AttemptRow.number)
        )
    )


@dataclass(frozen=True)
class GraphTask:
    pk: int
    key: str
    title: str
    status: TaskStatus
    skipped: bool  # succeeded without a succeeded attempt: `orch skip`


def graph_tasks(session: Session, plan_id: str) -> list[GraphTask]:
    """The columns a drawing needs, in plan order, with whether each succeeded task was skipped."""
    ran = exists().where(AttemptRow.task_pk == TaskRow.pk, AttemptRow.status == AttemptStatus.SUCCEEDED)
    skipped = and_(TaskRow.status == TaskStatus.SUCCEEDED, ~ran)
    rows = session.execute(
        select(TaskRow.pk, TaskRow.key, TaskRow.title, TaskRow.status, skipped)
        .where(TaskRow.plan_id == plan_id)
        .order_by(TaskRow.seq)
    )
    return [GraphTask(pk, key, title, status, bool(was_skipped)) for pk, key, title, status, was_skipped in rows]
