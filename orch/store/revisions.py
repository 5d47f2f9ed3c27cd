"""Plan revisions: a followed task list's changes to its running plan, decided by orch.decisions.revision and
applied here in one transaction — tasks added (with their edges), pending tasks changed, removed pending tasks
withdrawn (cancelled, held as removed), tasks ticked by hand skipped — each task change a compare-and-set on its
status, the plan's revision number a compare-and-set too, so two syncs never apply the same edit twice.

Dependency counts stay exact while workers finish tasks: every task a revised task waited for or now waits for is
locked (shared) before any task row is touched, so a dependency that succeeds meanwhile is either seen succeeded or
decrements the count after this commits (a success looks its dependants up when it is recorded).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from orch.decisions.followups import REPLAN
from orch.decisions.revision import (
    EDITABLE,
    WITHDRAWABLE,
    ListedTask,
    Revision,
    StoredTask,
    decide_revision,
    resolve_replaced,
)
from orch.errors import TaskStateConflict
from orch.intake.plan import Plan, ResolvedTask
from orch.states import PLAN_FINAL, PlanStatus, TaskStatus
from orch.store._sql import DEPENDENCIES, TASKS, chunks, no_sync, rowcount
from orch.store.bulk import insert_rows, reserve_primary_keys
from orch.store.events import log_event, log_task_events
from orch.store.models import DependencyRow, PlanRevisionRow, PlanRow, TaskRow
from orch.store.operator import skip_task
from orch.store.plans import SUBMITTED_COLUMNS, set_plan_status, task_values

# The fields an edit of a list can change, as stored and as resolved (a change of any is a changed task).
_SIGNATURE_COLUMNS = (
    TaskRow.title, TaskRow.description, TaskRow.agent, TaskRow.queue, TaskRow.executor, TaskRow.command,
    TaskRow.files, TaskRow.success, TaskRow.priority, TaskRow.timeout, TaskRow.retries, TaskRow.verify, TaskRow.scope,
    TaskRow.call, TaskRow.budget_usd, TaskRow.budget_tokens, TaskRow.repository, TaskRow.merge, TaskRow.hold,
)  # fmt: skip


def resolved_signature(task: ResolvedTask) -> Hashable:
    return (
        task.title, task.description, task.agent, task.queue, str(task.executor), task.command, tuple(task.files),
        task.success, task.priority, float(task.timeout), task.retries, task.verify, task.scope, task.call,
        task.budget.usd, task.budget.tokens, task.repository, task.merge, task.hold,
    )  # fmt: skip


def _stored_signature(row: Sequence[Any]) -> Hashable:
    values = list(row)
    values[4] = str(values[4])  # executor
    values[6] = tuple(values[6] or ())  # files
    values[9] = float(values[9])  # timeout
    return tuple(values)


@dataclass(frozen=True)
class Applied:
    """A revision decided, and (unless refused or empty) applied as the plan's revision `number`."""

    revision: Revision
    number: int | None  # None: nothing applied
    lost: tuple[tuple[str, str], ...] = ()  # changes a worker's progress beat (the task started meanwhile)

    def summary(self) -> str:
        text = self.revision.summary()
        if self.lost:
            text += "; not applied: " + "; ".join(f"{key} ({why})" for key, why in self.lost)
        return text


LIST_CHANGED = "the list changed meanwhile"


def revise_plan(
    session: Session,
    plan_id: str,
    plan: Plan,
    now: datetime,
    origin: str,
    still_current: Callable[[], bool] | None = None,
) -> Applied:
    """Decide and apply what `plan` (its list read again) changes in the stored plan `plan_id`. A plan that was
    cancelled takes no revision (TaskStateConflict); one that ended runs again when tasks are added or reopened.
    `still_current`, asked once this revision's number is claimed: whether the list still says what `plan` was
    read from (else TaskStateConflict(LIST_CHANGED), nothing applied: a follower that read an older text never
    applies it after a newer one)."""
    row = session.get(PlanRow, plan_id)
    if row is None:
        raise TaskStateConflict(f"plan {plan_id} is not in the store")
    if row.status is PlanStatus.CANCELLED:
        raise TaskStateConflict(f"plan {plan_id} was cancelled; submit the list again to run it")
    stored, pks, sources = _stored(session, plan_id)
    listed = [ListedTask(t.key, t.after, resolved_signature(t), t.done) for t in plan.tasks]
    revision = decide_revision(stored, listed)
    if not revision.applies:
        _update_sources(session, plan, pks, sources)
        return Applied(revision, None)
    number = row.revision + 1
    claimed = session.execute(
        update(PlanRow)
        .where(PlanRow.id == plan_id, PlanRow.revision == row.revision)
        .values(revision=number)
        .execution_options(**no_sync())
    )
    if not rowcount(claimed):
        raise TaskStateConflict(f"plan {plan_id} was revised meanwhile; read the list again")
    if still_current is not None and not still_current():
        raise TaskStateConflict(LIST_CHANGED)
    # a dependency on a replaced task is one on the tasks that stand for it (never an edge onto it)
    by_key = {t.key: replace(t, after=resolve_replaced(t.after, stored)) for t in plan.tasks}
    _lock_dependencies(session, revision, stored, by_key, pks)
    lost: list[tuple[str, str]] = []
    _add(session, plan_id, [by_key[k] for k in revision.added], pks, now)
    lost += _change(session, plan_id, [by_key[k] for k in revision.changed], pks, now, reopen=False)
    lost += _change(session, plan_id, [by_key[k] for k in revision.reopened], pks, now, reopen=True)
    lost += _withdraw(session, plan_id, revision.withdrawn, pks, now, number)
    for key in revision.skipped:
        try:
            skip_task(session, plan_id, key, now, reason="ticked done in its task list")
        except TaskStateConflict:
            lost.append((key, "it changed meanwhile"))
    _update_sources(session, plan, pks, sources)
    applied = Applied(revision, number, tuple(lost))
    if row.status in PLAN_FINAL and (revision.added or revision.reopened or revision.changed):
        set_plan_status(session, plan_id, {row.status}, PlanStatus.RUNNING, now, f"revision {number}", finished_at=None)
    session.add(
        PlanRevisionRow(
            plan_id=plan_id,
            number=number,
            at=now,
            origin=origin[:255],
            summary=applied.summary(),
            changes=_changes(revision, lost),
        )
    )
    log_event(session, now, plan_id, kind="revision", detail=f"revision {number} ({origin}): {applied.summary()}")
    return applied


def _lock_dependencies(
    session: Session,
    revision: Revision,
    stored: Mapping[str, StoredTask],
    by_key: Mapping[str, ResolvedTask],
    pks: Mapping[str, int],
) -> None:
    """Lock (shared, in primary-key order) every stored task a revised task waits for, before and after, before any
    task row is touched: a worker recording one's success updates its row first, so it either committed before
    (its decrement is seen, and the counts are made afresh) or waits until this commits (its decrement then sees
    the new edges). Locked in the worker's order — the dependency, then its dependants — so neither deadlocks."""
    touched = [*revision.changed, *revision.reopened]
    old = {dep for key in touched for dep in stored[key].after}
    new = {dep for key in (*touched, *revision.added) for dep in by_key[key].after}
    locked = sorted({pks[key] for key in old | new if key in pks})
    for chunk in chunks(locked):
        session.execute(
            select(TaskRow.pk).where(TaskRow.pk.in_(chunk)).order_by(TaskRow.pk).with_for_update(read=True)
        ).all()


def _changes(revision: Revision, lost: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "added": list(revision.added),
        "changed": list(revision.changed),
        "reopened": list(revision.reopened),
        "cancelled": list(revision.withdrawn),
        "skipped": list(revision.skipped),
        "not_applied": [[key, why] for key, why in [*revision.not_applied, *lost]],
    }


def _stored(session: Session, plan_id: str) -> tuple[dict[str, StoredTask], dict[str, int], dict[str, Any]]:
    """The plan's tasks as the decision sees them (by key), their primary keys and their sources."""
    after: dict[int, list[int]] = {}
    for task_pk, depends_on in session.execute(
        select(DependencyRow.task_pk, DependencyRow.depends_on_pk)
        .join(TaskRow, TaskRow.pk == DependencyRow.task_pk)
        .where(TaskRow.plan_id == plan_id)
    ):
        after.setdefault(task_pk, []).append(depends_on)
    rows = session.execute(
        select(
            TaskRow.pk, TaskRow.key, TaskRow.status, TaskRow.source, TaskRow.added_by, TaskRow.added_how,
            *_SIGNATURE_COLUMNS,
        ).where(TaskRow.plan_id == plan_id)
    ).all()  # fmt: skip
    key_of = {row[0]: row[1] for row in rows}
    replacements: dict[int, list[int]] = {}
    for pk, _key, _status, _source, added_by, added_how, *_signature in rows:
        if added_how == REPLAN and added_by is not None:
            replacements.setdefault(added_by, []).append(pk)
    stored: dict[str, StoredTask] = {}
    sources: dict[str, Any] = {}
    for pk, key, status, source, _by, added_how, *signature in rows:
        sources[key] = source
        withdrawn = status is TaskStatus.CANCELLED and signature[-1] is not None
        deps = tuple(key_of[d] for d in after.get(pk, ()))
        sinks = tuple(key_of[s] for s in _sinks(replacements.get(pk, []), after))
        grown = added_how is not None
        stored[key] = StoredTask(key, status, deps, _stored_signature(signature), withdrawn, grown, sinks)
    return stored, {key: pk for pk, key in key_of.items()}, sources


def _sinks(replacement: Sequence[int], after: Mapping[int, Sequence[int]]) -> list[int]:
    """The tasks of a replacement no other of its tasks waits for: those its replaced task's dependants wait for."""
    members = set(replacement)
    needed = {dep for pk in replacement for dep in after.get(pk, ()) if dep in members}
    return sorted(members - needed)


def _add(
    session: Session,
    plan_id: str,
    tasks: Sequence[ResolvedTask],
    pks: dict[str, int],
    now: datetime,
    detail: str = "added",
) -> None:
    """Insert `tasks` at the plan's end (their pks into `pks`), with their edges and counts, each with its event."""
    if not tasks:
        return
    seq = (session.scalar(select(func.max(TaskRow.seq)).where(TaskRow.plan_id == plan_id)) or 0) + 1
    new_pks = reserve_primary_keys(session, TASKS, len(tasks))
    pks.update({t.key: pk for t, pk in zip(tasks, new_pks, strict=True)})
    pending, succeeded = TaskStatus.PENDING.value, TaskStatus.SUCCEEDED.value
    rows = [
        task_values(plan_id, t, pks[t.key], seq + i, succeeded if t.done else pending, 0) for i, t in enumerate(tasks)
    ]
    insert_rows(session, TASKS, SUBMITTED_COLUMNS, rows)
    _set_dependencies(session, tasks, pks)
    log_task_events(session, now, plan_id, [pks[t.key] for t in tasks if not t.done], None, TaskStatus.PENDING, detail)
    log_task_events(
        session, now, plan_id, [pks[t.key] for t in tasks if t.done], None, TaskStatus.SUCCEEDED, "added done"
    )


def _change(
    session: Session, plan_id: str, tasks: Sequence[ResolvedTask], pks: dict[str, int], now: datetime, reopen: bool
) -> list[tuple[str, str]]:
    """Changed tasks (or withdrawn ones back in the list, `reopen`) take the list's fields and edges, each only while
    it has not started (compare-and-set on its status); returns those that started meanwhile."""
    lost: list[tuple[str, str]] = []
    kept: list[ResolvedTask] = []
    allowed = [TaskStatus.CANCELLED] if reopen else sorted(EDITABLE)
    for task in tasks:
        values: dict[str, Any] = _field_values(task)
        where = [TaskRow.pk == pks[task.key], TaskRow.status.in_(allowed)]
        if reopen:
            where.append(TaskRow.hold.is_not(None))
            # back in its list: it runs itself again (a re-plan it was waiting for when withdrawn is dropped)
            values.update(
                status=TaskStatus.PENDING, finished_at=None, error=None, retry_floor=TaskRow.attempt, replanning=False
            )
        if rowcount(session.execute(update(TaskRow).where(*where).values(**values).execution_options(**no_sync()))):
            kept.append(task)
        else:
            lost.append((task.key, "it started meanwhile"))
    if kept:
        session.execute(delete(DependencyRow).where(DependencyRow.task_pk.in_([pks[t.key] for t in kept])))
        _set_dependencies(session, kept, pks)
        if reopen:
            pending = [pks[t.key] for t in kept]
            log_task_events(
                session, now, plan_id, pending, TaskStatus.CANCELLED, TaskStatus.PENDING, "back in its list"
            )
    return lost


def _field_values(task: ResolvedTask) -> dict[str, Any]:
    return {
        "title": task.title,
        "description": task.description,
        "agent": task.agent,
        "route_reason": task.route_reason,
        "queue": task.queue,
        "executor": str(task.executor),
        "command": task.command,
        "files": list(task.files),
        "success": task.success,
        "priority": task.priority,
        "timeout": task.timeout,
        "retries": task.retries,
        "verify": task.verify,
        "scope": task.scope,
        "call": task.call,
        "budget_usd": task.budget.usd,
        "budget_tokens": task.budget.tokens,
        "repository": task.repository,
        "merge": task.merge,
        "hold": task.hold,
    }


class WithEdges(Protocol):
    """A task as its edges are set: its id and what it waits for."""

    @property
    def key(self) -> str: ...

    @property
    def after(self) -> tuple[str, ...]: ...


def _set_dependencies(session: Session, tasks: Sequence[WithEdges], pks: Mapping[str, int]) -> None:
    """Insert the tasks' edges, then count each one's unmet dependencies afresh."""
    insert_rows(
        session, DEPENDENCIES, ("task_pk", "depends_on_pk"), [(pks[t.key], pks[d]) for t in tasks for d in t.after]
    )
    targets = [pks[t.key] for t in tasks]  # what they wait for is locked already (_lock_dependencies)
    done = TASKS.alias("done")
    unmet = (
        select(func.count())
        .select_from(DEPENDENCIES.join(done, done.c.pk == DEPENDENCIES.c.depends_on_pk))
        .where(DEPENDENCIES.c.task_pk == TASKS.c.pk, done.c.status != TaskStatus.SUCCEEDED)
        .scalar_subquery()
    )
    for chunk in chunks(targets):
        session.execute(
            update(TASKS).where(TASKS.c.pk.in_(chunk)).values(unmet_deps=unmet).execution_options(**no_sync())
        )


def _withdraw(
    session: Session, plan_id: str, keys: Iterable[str], pks: Mapping[str, int], now: datetime, number: int
) -> list[tuple[str, str]]:
    lost: list[tuple[str, str]] = []
    reason = f"removed from its task list (revision {number})"
    for key in keys:
        old = session.scalar(select(TaskRow.status).where(TaskRow.pk == pks[key]))
        changed = session.execute(
            update(TaskRow)
            .where(and_(TaskRow.pk == pks[key], TaskRow.status.in_(sorted(WITHDRAWABLE))))
            .values(
                status=TaskStatus.CANCELLED,
                finished_at=now,
                error=reason,
                hold=reason,
                not_before=None,
                replanning=False,
            )
            .execution_options(**no_sync())
        )
        if rowcount(changed) and old is not None:
            log_task_events(session, now, plan_id, [pks[key]], old, TaskStatus.CANCELLED, reason)
        else:
            lost.append((key, "it started meanwhile"))
    return lost


def _update_sources(session: Session, plan: Plan, pks: Mapping[str, int], sources: Mapping[str, Any]) -> None:
    """Each task's source as the list says it now, where it moved (a line moves when lines are added above it)."""
    moved = [
        {"b_pk": pks[t.key], "b_source": dict(t.source)}
        for t in plan.tasks
        if t.source is not None and t.key in pks and sources.get(t.key) != dict(t.source)
    ]
    if moved:
        statement = update(TASKS).where(TASKS.c.pk == bindparam("b_pk")).values(source=bindparam("b_source"))
        session.execute(statement.execution_options(**no_sync()), moved)


def plan_revisions(session: Session, plan_id: str) -> list[PlanRevisionRow]:
    return list(
        session.scalars(
            select(PlanRevisionRow).where(PlanRevisionRow.plan_id == plan_id).order_by(PlanRevisionRow.number)
        )
    )
