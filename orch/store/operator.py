"""What an operator does to a plan outside its normal course: cancel a plan or a task, retry or skip a task
(reopening what it had doomed), hold a plan and resume it.

Each change of tasks locks the plan's row first (orch.store.plans.lock_plan), then the task rows: the order a result
that grows the plan and a list's revision take too, so none of them deadlocks another. A task cancelled or reopened
stops waiting for a re-plan (`replanning` cleared): `orch retry` runs the task itself, not the planner."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orch.budget import Budget
from orch.dag import Dag
from orch.decisions.budget import resume_refusal
from orch.errors import PlanNotFound, TaskStateConflict
from orch.states import (
    CANCELLABLE,
    PLAN_FINAL,
    PLAN_HELD,
    RETRIABLE,
    SKIPPABLE,
    AttemptStatus,
    PlanStatus,
    TaskStatus,
)
from orch.store._sql import chunks, no_sync, rowcount
from orch.store.attempts import dependency_met
from orch.store.events import log_task_events
from orch.store.models import AttemptRow, PlanRow, TaskRow
from orch.store.plans import lock_plan, plan_dependencies, set_plan_status, task_by_key
from orch.store.spend import plan_budget, plan_spend

_UNFINISHED = frozenset(PlanStatus) - PLAN_FINAL  # a plan cancel_plan still cancels
# A task cancelled: its running attempt loses its lease, and it no longer waits for a re-plan.
_CANCELLED: dict[str, object] = {
    "status": TaskStatus.CANCELLED,
    "lease": None,
    "lease_expires_at": None,
    "replanning": False,
}


def cancel_plan(session: Session, plan_id: str, now: datetime, reason: str) -> dict[TaskStatus, int]:
    """Every not-yet-final task → cancelled (running attempts lose their lease, so their heartbeats stop the
    agents), the plan → cancelled. Returns how many tasks were cancelled from each status."""
    lock_plan(session, plan_id)
    counts: dict[TaskStatus, int] = {}
    for old in sorted(CANCELLABLE):
        cancelled = session.scalars(
            update(TaskRow)
            .where(TaskRow.plan_id == plan_id, TaskRow.status == old)
            .values(**_CANCELLED, finished_at=now, error=reason)
            .returning(TaskRow.pk)
            .execution_options(**no_sync())
        ).all()
        log_task_events(session, now, plan_id, cancelled, old, TaskStatus.CANCELLED, detail=reason)
        if cancelled:
            counts[old] = len(cancelled)
    session.execute(
        update(AttemptRow)
        .where(
            AttemptRow.task_pk.in_(select(TaskRow.pk).where(TaskRow.plan_id == plan_id)),
            AttemptRow.status == AttemptStatus.RUNNING,
        )
        .values(status=AttemptStatus.CANCELLED, finished_at=now, error=reason)
        .execution_options(**no_sync())
    )
    set_plan_status(session, plan_id, _UNFINISHED, PlanStatus.CANCELLED, now, reason, finished_at=now, held_reason=None)
    return counts


def cancel_task(session: Session, plan_id: str, key: str, now: datetime, reason: str) -> TaskRow:
    """One task → cancelled (a running attempt loses its lease, so its heartbeat stops the agent); its
    dependants then become upstream_failed."""
    lock_plan(session, plan_id)
    task = task_by_key(session, plan_id, key)
    cancelled = session.scalars(
        update(TaskRow)
        .where(TaskRow.pk == task.pk, TaskRow.status.in_(CANCELLABLE))
        .values(**_CANCELLED, finished_at=now, error=reason)
        .returning(TaskRow.pk)
        .execution_options(**no_sync())
    ).all()
    if not cancelled:
        raise TaskStateConflict(f"task {key!r} of plan {plan_id} is {task.status}: nothing to cancel")
    _end_running_attempt(session, task.pk, AttemptStatus.CANCELLED, now, reason)
    log_task_events(session, now, plan_id, cancelled, task.status, TaskStatus.CANCELLED, detail=reason)
    return task


def _end_running_attempt(session: Session, task_pk: int, status: AttemptStatus, now: datetime, reason: str) -> None:
    session.execute(
        update(AttemptRow)
        .where(AttemptRow.task_pk == task_pk, AttemptRow.status == AttemptStatus.RUNNING)
        .values(status=status, finished_at=now, error=reason)
        .execution_options(**no_sync())
    )


def descendants(session: Session, plan_id: str, task_pk: int) -> list[int]:
    """Every task that depends on `task_pk`, directly or not."""
    return Dag.from_edges(plan_dependencies(session, plan_id)).descendants(task_pk)


def _reopen(session: Session, plan_id: str, task_pks: Sequence[int], now: datetime, detail: str) -> list[int]:
    """Failed, upstream_failed or cancelled tasks → pending again; their earlier failures stop counting."""
    reopened: list[int] = []
    for old in RETRIABLE:
        for chunk in chunks(list(task_pks)):
            pks = session.scalars(
                update(TaskRow)
                .where(TaskRow.pk.in_(chunk), TaskRow.status == old)
                .values(
                    status=TaskStatus.PENDING,
                    retry_floor=TaskRow.attempt,
                    finished_at=None,
                    not_before=None,
                    error=None,
                    replanning=False,
                )
                .returning(TaskRow.pk)
                .execution_options(**no_sync())
            ).all()
            log_task_events(session, now, plan_id, pks, old, TaskStatus.PENDING, detail=detail)
            reopened.extend(pks)
    return reopened


def _reopen_plan(session: Session, plan_id: str, now: datetime, detail: str) -> None:
    """A failed plan whose tasks were reopened runs again (a cancelled one stays cancelled)."""
    set_plan_status(session, plan_id, {PlanStatus.FAILED}, PlanStatus.RUNNING, now, detail, finished_at=None)


def retry_task(session: Session, plan_id: str, key: str, now: datetime) -> list[str]:
    """A failed, upstream_failed or cancelled task and its unfinished descendants → pending, with a fresh retry
    budget. Returns the keys reopened."""
    lock_plan(session, plan_id)
    task = task_by_key(session, plan_id, key)
    if task.status not in RETRIABLE:
        raise TaskStateConflict(
            f"task {key!r} of plan {plan_id} is {task.status}; only a failed, upstream_failed or cancelled task "
            f"can be retried"
        )
    _ensure_not_cancelled(session, plan_id)
    reopened = _reopen(session, plan_id, [task.pk, *descendants(session, plan_id, task.pk)], now, "orch retry")
    _reopen_plan(session, plan_id, now, f"orch retry {key}")
    return _keys(session, reopened)


def skip_task(
    session: Session, plan_id: str, key: str, now: datetime, reason: str = "skipped by the operator (orch skip)"
) -> list[str]:
    """Mark a task succeeded without running it (a running attempt loses its lease and is stopped), so its
    dependants may run: those it had doomed are reopened. Returns the keys changed. A task that succeeded, or was
    replaced by a re-plan (its replacement stands for it), has nothing to skip."""
    lock_plan(session, plan_id)
    task = task_by_key(session, plan_id, key)
    if task.status is TaskStatus.SUCCEEDED:
        raise TaskStateConflict(f"task {key!r} of plan {plan_id} already succeeded")
    if task.status not in SKIPPABLE:
        raise TaskStateConflict(f"task {key!r} of plan {plan_id} is {task.status}: nothing to skip")
    _ensure_not_cancelled(session, plan_id)
    changed = rowcount(
        session.execute(
            update(TaskRow)
            .where(TaskRow.pk == task.pk, TaskRow.status == task.status)
            .values(
                status=TaskStatus.SUCCEEDED,
                lease=None,
                lease_expires_at=None,
                finished_at=now,
                error=reason,
                replanning=False,
            )
            .execution_options(**no_sync())
        )
    )
    if not changed:
        raise TaskStateConflict(f"task {key!r} of plan {plan_id} changed meanwhile; try again")
    dependency_met(session, task.pk)
    _end_running_attempt(session, task.pk, AttemptStatus.CANCELLED, now, reason)
    log_task_events(session, now, plan_id, [task.pk], task.status, TaskStatus.SUCCEEDED, detail=reason)
    # Only the dependants it doomed run again; a dependant that failed on its own stays failed.
    found = descendants(session, plan_id, task.pk)
    status = _statuses(session, found)
    doomed = [pk for pk in found if status.get(pk) is TaskStatus.UPSTREAM_FAILED]
    reopened = _reopen(session, plan_id, doomed, now, f"upstream {key} skipped")
    _reopen_plan(session, plan_id, now, f"{key} skipped")
    return [key, *_keys(session, reopened)]


def _statuses(session: Session, task_pks: Sequence[int]) -> dict[int, TaskStatus]:
    """The tasks' statuses, in one query per chunk of primary keys (not one per task)."""
    status: dict[int, TaskStatus] = {}
    for chunk in chunks(task_pks):
        status.update(
            (pk, value)
            for pk, value in session.execute(select(TaskRow.pk, TaskRow.status).where(TaskRow.pk.in_(chunk)))
        )
    return status


def _ensure_not_cancelled(session: Session, plan_id: str) -> None:
    plan = session.get(PlanRow, plan_id)
    if plan is not None and plan.status is PlanStatus.CANCELLED:
        raise TaskStateConflict(f"plan {plan_id} is cancelled; submit it again to rerun it")


def _keys(session: Session, task_pks: Sequence[int]) -> list[str]:
    if not task_pks:
        return []
    rows = session.execute(select(TaskRow.key).where(TaskRow.pk.in_(task_pks)).order_by(TaskRow.seq))
    return [key for (key,) in rows]


def hold_plan(session: Session, plan_id: str, status: PlanStatus, reason: str, now: datetime) -> bool:
    """running → paused or budget_exhausted: nothing new is dispatched until `resume_plan`."""
    return set_plan_status(session, plan_id, {PlanStatus.RUNNING}, status, now, reason, held_reason=reason)


def resume_plan(session: Session, plan_id: str, now: datetime, budget: Budget | None = None) -> PlanStatus:
    """paused or budget_exhausted → running, with a new budget if given. Returns the status it had."""
    plan = session.get(PlanRow, plan_id)
    if plan is None:
        raise PlanNotFound(plan_id)
    if budget is not None:
        if budget.usd is not None:
            plan.budget_usd = budget.usd
        if budget.tokens is not None:
            plan.budget_tokens = budget.tokens
    old = plan.status
    if old not in PLAN_HELD:
        if budget is not None and old is PlanStatus.RUNNING:
            return old
        raise TaskStateConflict(f"plan {plan_id} is {old}; only a paused or budget_exhausted plan can be resumed")
    refusal = resume_refusal(old, plan_spend(session, plan_id), plan_budget(plan))
    if refusal is not None:
        raise TaskStateConflict(f"plan {plan_id} {refusal}")
    if not set_plan_status(session, plan_id, {old}, PlanStatus.RUNNING, now, "orch resume", held_reason=None):
        raise TaskStateConflict(f"plan {plan_id} changed meanwhile; try again")
    return old
