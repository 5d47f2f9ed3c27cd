"""Read-only queries behind `orch status`, `orch watch`, `orch report` and `orch graph`: a plan's progress by
aggregate (cheap on a 100,000-task plan, polled every second), and the whole plan with its attempts as plain rows
(read once, for a report or a chart: Core selects of the columns shown, no ORM objects)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, literal, select
from sqlalchemy.orm import Session

from orch.intake.prices import Usage
from orch.states import AttemptStatus, TaskStatus
from orch.store.models import AttemptRow, Base, PlanRevisionRow, TaskRow, UTCDateTime


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


# A task skipped by `orch skip`: succeeded without any succeeded attempt.
_SKIPPED = and_(
    TaskRow.status == TaskStatus.SUCCEEDED,
    ~exists().where(AttemptRow.task_pk == TaskRow.pk, AttemptRow.status == AttemptStatus.SUCCEEDED),
)


def _columns(entity: type[Base], summary: type[Any], **computed: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    """The select list that fills the dataclass `summary` in order: for each field it is given, the `entity`
    column of its name, or the `computed` expression given for it."""
    return [computed[f.name] if f.name in computed else getattr(entity, f.name) for f in fields(summary) if f.init]


@dataclass(frozen=True, slots=True)
class TaskSummary:
    pk: int
    key: str
    title: str
    agent: str
    status: TaskStatus
    finished_at: datetime | None
    verify: str | None
    error: str | None  # why its latest attempt failed
    skipped: bool  # by `orch skip`: see _SKIPPED
    source: dict[str, Any] | None = None  # where its task list wrote it
    hold: str | None = None  # why its task list holds it
    added_by: int | None = None  # the task whose attempt added it (a follow-up) or that it replaces (a re-plan)
    added_how: str | None = None  # followup | replan; None: in the plan as submitted


def task_summaries(session: Session, plan_id: str) -> list[TaskSummary]:
    """The plan's tasks in plan order, with whether each was skipped."""
    rows = session.execute(
        select(*_columns(TaskRow, TaskSummary, skipped=_SKIPPED))
        .where(TaskRow.plan_id == plan_id)
        .order_by(TaskRow.seq)
    )
    return [TaskSummary(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class AttemptSummary:
    task_pk: int
    number: int
    status: AttemptStatus
    worker: str
    queued_at: datetime | None
    started_at: datetime
    finished_at: datetime | None
    ended_at: datetime  # finished_at, or while it runs the `now` it was read at
    exit_code: int | None
    failure_class: str | None
    error: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_tokens: int
    cache_read_tokens: int
    cost_usd: float | None
    verified: bool | None
    files_changed: list[str] | None
    result: str | None
    usage: Usage = field(init=False)
    seconds: float = field(init=False)  # its run time (so far, while it runs)

    def __post_init__(self) -> None:
        usage = Usage(self.input_tokens, self.output_tokens, self.cache_creation_tokens, self.cache_read_tokens)
        object.__setattr__(self, "usage", usage)
        object.__setattr__(self, "seconds", max(0.0, (self.ended_at - self.started_at).total_seconds()))


def attempt_summaries(session: Session, plan_id: str, now: datetime) -> list[AttemptSummary]:
    """Every attempt of the plan's tasks, in task order then attempt number, read at `now` (the database's
    clock)."""
    ended_at = func.coalesce(AttemptRow.finished_at, literal(now, UTCDateTime()))
    rows = session.execute(
        select(*_columns(AttemptRow, AttemptSummary, ended_at=ended_at))
        .join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
        .where(TaskRow.plan_id == plan_id)
        .order_by(TaskRow.seq, AttemptRow.number)
    )
    return [AttemptSummary(*row) for row in rows]


@dataclass(frozen=True)
class Growth:
    """One change a task's attempt made to its plan: follow-ups added (and refused), or a replacement."""

    number: int  # the plan's revision
    by: str  # the task whose attempt made it
    attempt: int
    how: str  # followup | replan
    added: tuple[str, ...]
    refused: tuple[str, ...]  # one line per task refused
    rewired: tuple[str, ...] = ()  # a replacement: the dependants that now wait for it


def plan_growth(session: Session, plan_id: str) -> list[Growth]:
    """The plan's follow-ups and replacements, in revision order (task-list revisions are not among them)."""
    rows = session.scalars(
        select(PlanRevisionRow).where(PlanRevisionRow.plan_id == plan_id).order_by(PlanRevisionRow.number)
    )
    found = []
    for row in rows:
        changes = row.changes or {}
        if changes.get("how") not in ("followup", "replan"):
            continue
        found.append(
            Growth(
                row.number,
                str(changes.get("by", "")),
                int(changes.get("attempt") or 0),
                str(changes["how"]),
                tuple(changes.get("added") or ()),
                tuple(changes.get("refused") or ()),
                tuple(changes.get("rewired") or ()),
            )
        )
    return found
