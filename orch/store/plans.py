"""Plans and their tasks: submitting a plan, and finding a plan, its tasks, dependencies and attempts."""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orch.errors import PlanNotFound, TaskNotFound
from orch.intake.gc_pause import collector_paused
from orch.intake.plan import Plan, ResolvedTask
from orch.states import PLAN_HELD, PlanStatus, TaskStatus
from orch.store._sql import ANALYZE_FROM_TASKS, DEPENDENCIES, TASKS, chunks, no_sync, rowcount
from orch.store.bulk import insert_rows, reserve_primary_keys
from orch.store.db import refresh_planner_statistics, session_store_name
from orch.store.events import log_event, log_task_events
from orch.store.models import AttemptRow, DependencyRow, PlanRow, TaskRow

# The columns a submitted task sets, in the order `submit_plan` gives them (the rest take their defaults).
SUBMITTED_COLUMNS = (
    "pk", "plan_id", "key", "seq", "title", "description", "agent", "route_reason", "queue", "executor", "command",
    "priority", "files", "success", "timeout", "retries", "status", "unmet_deps", "attempt", "verify", "scope",
    "call", "budget_usd", "budget_tokens", "retry_floor", "repository", "merge", "source", "hold",
    "estimate", "on_failure", "max_replans",
)  # fmt: skip


def new_plan_id(name: str) -> str:
    return f"{name[:24]}-{secrets.token_hex(4)}"


def submit_plan(session: Session, plan: Plan, now: datetime, base_commits: Mapping[str, str] | None = None) -> str:
    """Insert a validated plan with its tasks and edges; its tasks start pending. Returns the plan id. A plan with
    repositories needs each one's base commit (`base_commits`, by repository name, read from its remote)."""
    with collector_paused():
        plan_id = _insert_plan(session, plan, now)
    if plan.repositories:
        from orch.store.merges import create_integrations  # lazy: only plans with a repository need it

        missing = [r.name for r in plan.repositories if r.name not in (base_commits or {})]
        if missing:
            raise ValueError(f"no base commit given for repository {', '.join(missing)}")
        create_integrations(session, plan_id, plan.repositories, base_commits or {})
    return plan_id


def _insert_plan(session: Session, plan: Plan, now: datetime) -> str:
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
            budget_usd=plan.budget.usd,
            budget_tokens=plan.budget.tokens,
            list_file=None if plan.origin is None else plan.origin.file,
            list_format=None if plan.origin is None else plan.origin.format,
            list_options=None if plan.origin is None else dict(plan.origin.options),
        )
    )
    session.flush()
    pks = reserve_primary_keys(session, TASKS, len(plan.tasks))
    pk_of = {task.key: pk for task, pk in zip(plan.tasks, pks, strict=True)}
    pending, succeeded = TaskStatus.PENDING.value, TaskStatus.SUCCEEDED.value
    done = {t.key for t in plan.tasks if t.done}  # done in its list: succeeded already, satisfies its dependants
    insert_rows(
        session,
        TASKS,
        SUBMITTED_COLUMNS,
        (
            task_values(plan_id, t, pk_of[t.key], t.seq, succeeded if t.done else pending, _unmet(t.after, done))
            for t in plan.tasks
        ),
    )
    insert_rows(
        session,
        DEPENDENCIES,
        ("task_pk", "depends_on_pk"),
        ((pk_of[t.key], pk_of[dep]) for t in plan.tasks for dep in t.after),
    )
    log_event(session, now, plan_id, kind="plan", new=PlanStatus.RUNNING, detail=f"submitted from {plan.source}")
    if done:
        _record_done_in_list(session, plan_id, [pk_of[key] for key in done], now)
    if len(plan.tasks) >= ANALYZE_FROM_TASKS:
        refresh_planner_statistics(session)  # PostgreSQL counts this transaction's own rows in the sample
    return plan_id


_NO_FILES = json.dumps([])


def task_values(plan_id: str, t: ResolvedTask, pk: int, seq: int, status: str, unmet: int) -> tuple[Any, ...]:
    """A new task's row, in SUBMITTED_COLUMNS' order, in the database's form (JSON as text)."""
    return (
        pk, plan_id, t.key, seq, t.title, t.description, t.agent, t.route_reason, t.queue, t.executor, t.command,
        t.priority, json.dumps(list(t.files)) if t.files else _NO_FILES, t.success, t.timeout, t.retries, status,
        unmet, 0, t.verify, t.scope, t.call, t.budget.usd, t.budget.tokens, 0, t.repository, t.merge,
        None if t.source is None else json.dumps(dict(t.source)), t.hold,
        None if t.estimate is None else json.dumps(dict(t.estimate)), t.on_failure, t.max_replans,
    )  # fmt: skip


def _unmet(after: Collection[str], done: Collection[str]) -> int:
    """How many of a task's dependencies have not succeeded: those not already done in its list."""
    return sum(1 for dep in after if dep not in done) if done else len(after)


def _record_done_in_list(session: Session, plan_id: str, task_pks: list[int], now: datetime) -> None:
    """Tasks done in their list when the plan was submitted: finished now, each with its event."""
    for chunk in chunks(task_pks):
        session.execute(
            update(TaskRow).where(TaskRow.pk.in_(chunk)).values(finished_at=now).execution_options(**no_sync())
        )
    log_task_events(session, now, plan_id, task_pks, None, TaskStatus.SUCCEEDED, "done in its task list")


def set_plan_status(
    session: Session,
    plan_id: str,
    allowed: Collection[PlanStatus],
    new: PlanStatus,
    now: datetime,
    detail: str | None,
    **values: Any,
) -> bool:
    """The plan → `new` (with the other columns in `values`) if its status is one of `allowed`: a compare-and-set
    that logs the plan event only when it won. Returns whether it did. The event's old status is the allowed one;
    of several, the one read just before (the compare-and-set, not that read, decides the change)."""
    if len(allowed) == 1:
        old: PlanStatus | None = next(iter(allowed))
    else:
        old = session.scalar(select(PlanRow.status).where(PlanRow.id == plan_id))
    changed = rowcount(
        session.execute(
            update(PlanRow)
            .where(PlanRow.id == plan_id, PlanRow.status.in_(sorted(allowed)))
            .values(status=new, **values)
            .execution_options(**no_sync())
        )
    )
    if changed:
        log_event(session, now, plan_id, kind="plan", old=old, new=new, detail=detail)
    return bool(changed)


def lock_plan(session: Session, plan_id: str) -> int | None:
    """Lock the plan's row and return its revision number (None: no such plan). Whatever changes several of a plan's
    tasks outside a worker's own result — a result that grows the plan, a list's revision, `orch cancel`, `retry`,
    `skip` — takes this first, then the task rows: one order, so none of them deadlocks another. FOR NO KEY UPDATE
    (on PostgreSQL): the key-share lock every insert of a row naming the plan takes (an event, a task) does not wait
    for it, so a worker recording a plain success never waits for it either."""
    statement = select(PlanRow.revision).where(PlanRow.id == plan_id).with_for_update(key_share=True)
    revision = session.execute(statement).scalar_one_or_none()
    return None if revision is None else int(revision)


def find_plan(session: Session, ref: str) -> PlanRow:
    """A plan by id, else the latest plan of that name."""
    plan = session.get(PlanRow, ref)
    if plan is None:
        plan = session.scalars(
            select(PlanRow).where(PlanRow.name == ref).order_by(PlanRow.created_at.desc()).limit(1)
        ).first()
    if plan is None:
        raise PlanNotFound(ref, session_store_name(session))
    return plan


def list_plans(session: Session, limit: int = 50) -> list[PlanRow]:
    return list(session.scalars(select(PlanRow).order_by(PlanRow.created_at.desc()).limit(limit)))


def active_plan_ids(session: Session) -> list[str]:
    """Plans not over: running, and held (paused, budget_exhausted), which dispatch nothing but end once every
    task is final."""
    active = sorted({PlanStatus.RUNNING, *PLAN_HELD})
    return list(session.scalars(select(PlanRow.id).where(PlanRow.status.in_(active)).order_by(PlanRow.created_at)))


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


def get_task(session: Session, task_pk: int) -> TaskRow | None:
    return session.get(TaskRow, task_pk)


def get_plan(session: Session, plan_id: str) -> PlanRow | None:
    return session.get(PlanRow, plan_id)


def task_by_key(session: Session, plan_id: str, key: str) -> TaskRow:
    task = session.scalars(select(TaskRow).where(TaskRow.plan_id == plan_id, TaskRow.key == key)).first()
    if task is None:
        raise TaskNotFound(f"plan {plan_id} has no task {key!r} in {session_store_name(session)}")
    return task
