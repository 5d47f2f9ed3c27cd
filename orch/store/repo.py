"""Store operations. Every status change is a compare-and-set: UPDATE … WHERE pk AND status IN (expected)
[AND lease/attempt], then the affected rows are checked; a change that lost the race is a no-op."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, insert, or_, select, update
from sqlalchemy.orm import Session

from orch.errors import PlanNotFound
from orch.failures import NOT_COUNTED
from orch.plan import Plan
from orch.prices import Usage
from orch.prompts import Handoff, PreviousFailure
from orch.readiness import Reconciliation, TaskView
from orch.states import (
    CANCELLABLE,
    DISPATCHABLE,
    IN_FLIGHT,
    PLAN_FINAL,
    AttemptStatus,
    PlanStatus,
    TaskStatus,
)
from orch.store.models import AgentPauseRow, AttemptRow, DependencyRow, EventRow, PlanRow, TaskRow

_CHUNK = 2000  # IN-list size, well under SQLite's bound-parameter limit


def _chunks(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched: how a compare-and-set tells it won."""
    return int(cast(CursorResult[Any], result).rowcount)


def _no_sync() -> dict[str, Any]:
    return {"synchronize_session": False}


def new_plan_id(name: str) -> str:
    return f"{name[:24]}-{secrets.token_hex(4)}"


# --- plans -----------------------------------------------------------------------------------------


def submit_plan(session: Session, plan: Plan, now: datetime) -> str:
    """Insert a validated plan with its tasks and edges; its tasks start pending. Returns the plan id."""
    plan_id = new_plan_id(plan.name)
    session.add(
        PlanRow(
            id=plan_id,
            name=plan.name,
            description=plan.description,
            source=plan.source,
            workdir=str(plan.workdir),
            status=PlanStatus.RUNNING,
            document=dict(plan.document),
            created_at=now,
        )
    )
    session.flush()
    rows = [
        {
            "plan_id": plan_id,
            "key": t.key,
            "seq": t.seq,
            "title": t.title,
            "description": t.description,
            "agent": t.agent,
            "route_reason": t.route_reason,
            "queue": t.queue,
            "executor": t.executor,
            "command": t.command,
            "priority": t.priority,
            "files": list(t.files),
            "success": t.success,
            "timeout": t.timeout,
            "retries": t.retries,
            "status": TaskStatus.PENDING,
            "attempt": 0,
            "verify": t.verify,
            "scope": t.scope,
            "call": t.call,
        }
        for t in plan.tasks
    ]
    returned = session.execute(
        insert(TaskRow).returning(TaskRow.pk, TaskRow.key, sort_by_parameter_order=True), rows
    ).all()
    pk_of = {key: pk for pk, key in returned}
    edges = [{"task_pk": pk_of[t.key], "depends_on_pk": pk_of[dep]} for t in plan.tasks for dep in t.after]
    if edges:
        session.execute(insert(DependencyRow), edges)
    _event(session, now, plan_id, kind="plan", new=PlanStatus.RUNNING, detail=f"submitted from {plan.source}")
    return plan_id


def find_plan(session: Session, ref: str) -> PlanRow:
    """A plan by id, else the latest plan of that name."""
    plan = session.get(PlanRow, ref)
    if plan is None:
        plan = session.scalars(
            select(PlanRow).where(PlanRow.name == ref).order_by(PlanRow.created_at.desc()).limit(1)
        ).first()
    if plan is None:
        raise PlanNotFound(ref)
    return plan


def list_plans(session: Session, limit: int = 50) -> list[PlanRow]:
    return list(session.scalars(select(PlanRow).order_by(PlanRow.created_at.desc()).limit(limit)))


def active_plan_ids(session: Session) -> list[str]:
    return list(
        session.scalars(select(PlanRow.id).where(PlanRow.status == PlanStatus.RUNNING).order_by(PlanRow.created_at))
    )


def plan_tasks(session: Session, plan_id: str) -> list[TaskRow]:
    return list(session.scalars(select(TaskRow).where(TaskRow.plan_id == plan_id).order_by(TaskRow.seq)))


def plan_dependencies(session: Session, plan_id: str) -> list[tuple[int, int]]:
    rows = session.execute(
        select(DependencyRow.task_pk, DependencyRow.depends_on_pk)
        .join(TaskRow, TaskRow.pk == DependencyRow.task_pk)
        .where(TaskRow.plan_id == plan_id)
    )
    return [(a, b) for a, b in rows]


def task_attempts(session: Session, task_pk: int) -> list[AttemptRow]:
    return list(session.scalars(select(AttemptRow).where(AttemptRow.task_pk == task_pk).order_by(AttemptRow.number)))


def plan_events(session: Session, plan_id: str) -> list[EventRow]:
    return list(session.scalars(select(EventRow).where(EventRow.plan_id == plan_id).order_by(EventRow.pk)))


# --- readiness inputs and the applying of a decision ----------------------------------------------------


def task_views(session: Session, plan_id: str) -> list[TaskView]:
    deps: dict[int, list[int]] = {}
    for task_pk, dep_pk in plan_dependencies(session, plan_id):
        deps.setdefault(task_pk, []).append(dep_pk)
    rows = session.execute(
        select(TaskRow.pk, TaskRow.status, TaskRow.agent, TaskRow.priority, TaskRow.seq, TaskRow.not_before).where(
            TaskRow.plan_id == plan_id
        )
    )
    return [
        TaskView(pk, status, agent, priority, seq, tuple(deps.get(pk, ())), not_before)
        for pk, status, agent, priority, seq, not_before in rows
    ]


def in_flight_counts(session: Session) -> dict[str, int]:
    """Queued and running tasks per agent type, across every plan."""
    rows = session.execute(
        select(TaskRow.agent, func.count()).where(TaskRow.status.in_(IN_FLIGHT)).group_by(TaskRow.agent)
    )
    return {agent: count for agent, count in rows}


@dataclass(frozen=True)
class Dispatch:
    """One message to send: the task's id and attempt, to its agent type's queue."""

    task_pk: int
    attempt: int
    queue: str
    timeout: float
    plan_id: str
    key: str

    @property
    def message_id(self) -> str:
        return f"{self.plan_id}.{self.key}.{self.attempt}"


_DISPATCH_COLUMNS = (
    TaskRow.pk,
    TaskRow.attempt,
    TaskRow.queue,
    TaskRow.timeout,
    TaskRow.plan_id,
    TaskRow.key,
)


def apply_reconciliation(session: Session, plan_id: str, decision: Reconciliation, now: datetime) -> list[Dispatch]:
    """Write a readiness decision: doom, claim for dispatch (attempt + 1), finish the plan. CAS throughout."""
    for chunk in _chunks(decision.upstream_failed):
        doomed = session.scalars(
            update(TaskRow)
            .where(TaskRow.pk.in_(chunk), TaskRow.status == TaskStatus.PENDING)
            .values(status=TaskStatus.UPSTREAM_FAILED, finished_at=now, error="a dependency failed")
            .returning(TaskRow.pk)
            .execution_options(**_no_sync())
        ).all()
        _task_events(session, now, plan_id, doomed, TaskStatus.PENDING, TaskStatus.UPSTREAM_FAILED)

    dispatches: list[Dispatch] = []
    for chunk in _chunks(decision.ready):
        claimed = session.execute(
            update(TaskRow)
            .where(TaskRow.pk.in_(chunk), TaskRow.status.in_(DISPATCHABLE))
            .values(
                status=TaskStatus.QUEUED,
                attempt=TaskRow.attempt + 1,
                queued_at=now,
                dispatched_at=now,
                not_before=None,
                lease=None,
            )
            .returning(*_DISPATCH_COLUMNS)
            .execution_options(**_no_sync())
        ).all()
        dispatches.extend(Dispatch(*row) for row in claimed)
    _events(
        session,
        [
            _event_row(
                now, plan_id, task_pk=d.task_pk, attempt=d.attempt, new=TaskStatus.QUEUED, detail=f"sent to {d.queue}"
            )
            for d in dispatches
        ],
    )
    if decision.plan_outcome is not None:
        finish_plan(session, plan_id, decision.plan_outcome, now)
    position = {pk: i for i, pk in enumerate(decision.ready)}
    dispatches.sort(key=lambda d: position[d.task_pk])  # RETURNING has no order; send best first
    return dispatches


def finish_plan(session: Session, plan_id: str, outcome: PlanStatus, now: datetime) -> bool:
    changed = _rowcount(
        session.execute(
            update(PlanRow)
            .where(PlanRow.id == plan_id, PlanRow.status == PlanStatus.RUNNING)
            .values(status=outcome, finished_at=now)
            .execution_options(**_no_sync())
        )
    )
    if changed:
        _event(session, now, plan_id, kind="plan", old=PlanStatus.RUNNING, new=outcome)
    return bool(changed)


def stale_dispatches(
    session: Session, sent_before: datetime, now: datetime, plan_ids: Sequence[str] | None = None
) -> list[Dispatch]:
    """Queued tasks whose message has not started by `sent_before`: stamp them and return them to re-send.

    Re-sending is safe: a worker claims a task only while it is queued at that attempt, so the second copy
    of a message that did arrive is dropped."""
    stale = update(TaskRow).where(TaskRow.status == TaskStatus.QUEUED, TaskRow.dispatched_at < sent_before)
    if plan_ids is not None:
        stale = stale.where(TaskRow.plan_id.in_(plan_ids))
    rows = session.execute(
        stale.values(dispatched_at=now).returning(*_DISPATCH_COLUMNS).execution_options(**_no_sync())
    ).all()
    return [Dispatch(*row) for row in rows]


# --- a worker's attempt -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt: every later write names the lease."""

    task_pk: int
    plan_id: str
    key: str
    attempt: int
    lease: str
    retries: int
    agent: str
    counted_failures: int = 0  # earlier failed attempts that spent the retry budget


def counted_failures(session: Session, task_pk: int) -> int:
    return int(
        session.scalar(
            select(func.count()).where(
                AttemptRow.task_pk == task_pk,
                AttemptRow.status == AttemptStatus.FAILED,
                or_(AttemptRow.failure_class.is_(None), AttemptRow.failure_class.not_in(NOT_COUNTED)),
            )
        )
        or 0
    )


def claim_attempt(
    session: Session, task_pk: int, attempt: int, worker: str, pid: int | None, now: datetime
) -> Claim | None:
    """queued → running for this attempt, with a fresh lease; None when the message is a duplicate or stale."""
    lease = str(uuid.uuid4())
    row = session.execute(
        update(TaskRow)
        .where(TaskRow.pk == task_pk, TaskRow.status == TaskStatus.QUEUED, TaskRow.attempt == attempt)
        .values(status=TaskStatus.RUNNING, lease=lease, started_at=now, finished_at=None)
        .returning(TaskRow.plan_id, TaskRow.key, TaskRow.retries, TaskRow.queued_at, TaskRow.agent)
        .execution_options(**_no_sync())
    ).first()
    if row is None:
        return None
    plan_id, key, retries, queued_at, agent = row
    session.add(
        AttemptRow(
            task_pk=task_pk,
            number=attempt,
            lease=lease,
            status=AttemptStatus.RUNNING,
            worker=worker,
            pid=pid,
            queued_at=queued_at,
            started_at=now,
            output_tail="",
        )
    )
    _event(
        session,
        now,
        plan_id,
        task_pk=task_pk,
        attempt=attempt,
        kind="task",
        old=TaskStatus.QUEUED,
        new=TaskStatus.RUNNING,
        detail=f"on {worker}",
    )
    earlier = counted_failures(session, task_pk) if attempt > 1 else 0  # a first attempt has none
    return Claim(task_pk, plan_id, key, attempt, lease, retries, agent, earlier)


@dataclass(frozen=True)
class AttemptResult:
    succeeded: bool
    exit_code: int | None = None
    failure_class: str | None = None
    error: str | None = None
    output_tail: str = ""
    log_path: str | None = None
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    result: str | None = None  # the agent's final answer / summary
    retry_after: float | None = None  # the provider asked us to wait at least this long (seconds)
    files_changed: tuple[str, ...] | None = None
    duration_s: float | None = None
    verified: bool | None = None


def record_result(
    session: Session,
    claim: Claim,
    result: AttemptResult,
    new_status: TaskStatus,
    now: datetime,
    not_before: datetime | None = None,
    detail: str | None = None,
) -> bool:
    """running → `new_status`, only while this claim's lease still holds. False: the result is stale."""
    changed = _rowcount(
        session.execute(
            update(TaskRow)
            .where(TaskRow.pk == claim.task_pk, TaskRow.status == TaskStatus.RUNNING, TaskRow.lease == claim.lease)
            .values(
                status=new_status,
                lease=None,
                not_before=not_before,
                finished_at=None if new_status is TaskStatus.RETRY_WAIT else now,
                error=None if result.succeeded else result.error,
            )
            .execution_options(**_no_sync())
        )
    )
    if not changed:
        return False
    session.execute(
        update(AttemptRow)
        .where(
            AttemptRow.task_pk == claim.task_pk,
            AttemptRow.number == claim.attempt,
            AttemptRow.lease == claim.lease,
        )
        .values(
            status=AttemptStatus.SUCCEEDED if result.succeeded else AttemptStatus.FAILED,
            finished_at=now,
            exit_code=result.exit_code,
            failure_class=result.failure_class,
            error=result.error,
            output_tail=result.output_tail,
            log_path=result.log_path,
            model=result.model,
            input_tokens=result.usage.input_tokens,
            output_tokens=result.usage.output_tokens,
            cache_creation_tokens=result.usage.cache_creation_tokens,
            cache_read_tokens=result.usage.cache_read_tokens,
            cost_usd=result.cost_usd,
            result=result.result,
            duration_s=result.duration_s,
            files_changed=None if result.files_changed is None else list(result.files_changed),
            verified=result.verified,
        )
        .execution_options(**_no_sync())
    )
    _event(
        session,
        now,
        claim.plan_id,
        task_pk=claim.task_pk,
        attempt=claim.attempt,
        kind="task",
        old=TaskStatus.RUNNING,
        new=new_status,
        detail=detail or result.error,
    )
    return True


def get_task(session: Session, task_pk: int) -> TaskRow | None:
    return session.get(TaskRow, task_pk)


def get_plan(session: Session, plan_id: str) -> PlanRow | None:
    return session.get(PlanRow, plan_id)


# --- operator actions ---------------------------------------------------------------------------------


def cancel_plan(session: Session, plan_id: str, now: datetime, reason: str) -> int:
    """Every not-yet-final task → cancelled (overriding any lease), the plan → cancelled. Returns tasks changed."""
    cancelled = session.scalars(
        update(TaskRow)
        .where(TaskRow.plan_id == plan_id, TaskRow.status.in_(CANCELLABLE))
        .values(status=TaskStatus.CANCELLED, lease=None, finished_at=now, error=reason)
        .returning(TaskRow.pk)
        .execution_options(**_no_sync())
    ).all()
    session.execute(
        update(AttemptRow)
        .where(
            AttemptRow.task_pk.in_(select(TaskRow.pk).where(TaskRow.plan_id == plan_id)),
            AttemptRow.status == AttemptStatus.RUNNING,
        )
        .values(status=AttemptStatus.CANCELLED, finished_at=now, error=reason)
        .execution_options(**_no_sync())
    )
    _task_events(session, now, plan_id, cancelled, None, TaskStatus.CANCELLED, detail=reason)
    changed = _rowcount(
        session.execute(
            update(PlanRow)
            .where(PlanRow.id == plan_id, PlanRow.status.not_in(PLAN_FINAL))
            .values(status=PlanStatus.CANCELLED, finished_at=now)
            .execution_options(**_no_sync())
        )
    )
    if changed:
        _event(
            session,
            now,
            plan_id,
            kind="plan",
            old=PlanStatus.RUNNING,
            new=PlanStatus.CANCELLED,
            detail=reason,
        )
    return len(cancelled)


# --- events -------------------------------------------------------------------------------------------


def _event_row(
    at: datetime,
    plan_id: str,
    *,
    kind: str = "task",
    task_pk: int | None = None,
    attempt: int | None = None,
    old: str | None = None,
    new: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    return {
        "at": at,
        "plan_id": plan_id,
        "task_pk": task_pk,
        "attempt": attempt,
        "kind": kind,
        "old": None if old is None else str(old),
        "new": None if new is None else str(new),
        "detail": detail,
    }


def _events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Append to the event log (never updated, never deleted)."""
    if rows:
        session.execute(insert(EventRow), rows)


def _event(session: Session, at: datetime, plan_id: str, **fields: Any) -> None:
    _events(session, [_event_row(at, plan_id, **fields)])


def _task_events(
    session: Session,
    at: datetime,
    plan_id: str,
    task_pks: Sequence[int],
    old: TaskStatus | None,
    new: TaskStatus,
    detail: str | None = None,
) -> None:
    _events(session, [_event_row(at, plan_id, task_pk=pk, old=old, new=new, detail=detail) for pk in task_pks])


def count_by_status(session: Session, plan_id: str) -> dict[TaskStatus, int]:
    rows = session.execute(
        select(TaskRow.status, func.count()).where(TaskRow.plan_id == plan_id).group_by(TaskRow.status)
    )
    return {status: count for status, count in rows}


@dataclass(frozen=True)
class AttemptStats:
    attempts: int
    usage: Usage
    cost_usd: float | None  # None when no attempt had a known price


def attempt_stats(session: Session, plan_id: str) -> dict[int, AttemptStats]:
    """Per task of a plan: attempts started, tokens and cost summed over them."""
    rows = session.execute(
        select(
            AttemptRow.task_pk,
            func.count(),
            func.sum(AttemptRow.input_tokens),
            func.sum(AttemptRow.output_tokens),
            func.sum(AttemptRow.cache_creation_tokens),
            func.sum(AttemptRow.cache_read_tokens),
            func.sum(AttemptRow.cost_usd),
        )
        .join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
        .where(TaskRow.plan_id == plan_id)
        .group_by(AttemptRow.task_pk)
    )
    return {
        task_pk: AttemptStats(count, Usage(int(i or 0), int(o or 0), int(cw or 0), int(cr or 0)), cost)
        for task_pk, count, i, o, cw, cr, cost in rows
    }


def handoffs(session: Session, task_pk: int) -> list[Handoff]:
    """What each dependency's succeeded attempt reported: the handoff into this task's prompt."""
    dep_pks = list(session.scalars(select(DependencyRow.depends_on_pk).where(DependencyRow.task_pk == task_pk)))
    found: list[Handoff] = []
    for dep in session.scalars(select(TaskRow).where(TaskRow.pk.in_(dep_pks)).order_by(TaskRow.seq)):
        attempt = session.scalars(
            select(AttemptRow)
            .where(AttemptRow.task_pk == dep.pk, AttemptRow.status == AttemptStatus.SUCCEEDED)
            .order_by(AttemptRow.number.desc())
            .limit(1)
        ).first()
        result = (attempt.result or attempt.output_tail) if attempt else ""
        files = tuple(attempt.files_changed or ()) if attempt else ()
        found.append(Handoff(dep.key, dep.title, dep.agent, result or "", files))
    return found


def previous_failure(session: Session, task_pk: int, attempt: int) -> PreviousFailure | None:
    """Why attempt `attempt - 1` of a task failed, for the next attempt's prompt."""
    row = session.scalars(
        select(AttemptRow).where(AttemptRow.task_pk == task_pk, AttemptRow.number == attempt - 1)
    ).first()
    if row is None or row.status is not AttemptStatus.FAILED:
        return None
    return PreviousFailure(row.number, row.error or "failed", row.output_tail or "")


def events_after(session: Session, plan_id: str, after_pk: int) -> list[EventRow]:
    return list(
        session.scalars(
            select(EventRow).where(EventRow.plan_id == plan_id, EventRow.pk > after_pk).order_by(EventRow.pk)
        )
    )


# --- agent pauses ---------------------------------------------------------------------------------------


def pause_agent(session: Session, agent: str, until: datetime, reason: str, now: datetime) -> None:
    """Hold `agent`'s dispatch until `until` (a later pause wins over an earlier one)."""
    existing = session.get(AgentPauseRow, agent, with_for_update=True)
    if existing is None:
        session.add(AgentPauseRow(agent=agent, until=until, reason=reason, created_at=now))
    elif existing.until < until:
        existing.until, existing.reason, existing.created_at = until, reason, now


def active_pauses(session: Session, now: datetime) -> dict[str, AgentPauseRow]:
    rows = session.scalars(select(AgentPauseRow).where(AgentPauseRow.until > now))
    return {row.agent: row for row in rows}
