"""The event log: every status change appends a row (never updated, never deleted). Rows are buffered in the
session and written when the transaction commits, in one statement, by the listeners below."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, event, insert, select
from sqlalchemy.orm import Session

from orch.states import TaskStatus
from orch.store.models import EventRow

_INSERT_EVENTS = insert(cast(Table, EventRow.__table__))


def event_row(
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


_PENDING_EVENTS = "orch.pending_events"


def log_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Append to the event log (never updated, never deleted). The rows are written when the transaction
    commits, in one statement: a worker's result and the dispatches it makes log in one round trip."""
    if rows:
        session.info.setdefault(_PENDING_EVENTS, []).extend(rows)


@event.listens_for(Session, "before_commit")
def write_pending_events(session: Session) -> None:
    """Write the events this transaction logged (readers of the log call it first, to see their own). A
    savepoint's commit leaves them to the outer transaction's."""
    if session.in_nested_transaction():
        return
    rows = session.info.pop(_PENDING_EVENTS, None)
    if rows:
        session.execute(_INSERT_EVENTS, rows)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending_events(session: Session, previous_transaction: Any) -> None:
    """The outer transaction's rollback drops them, even when the database's own rollback failed."""
    if previous_transaction.parent is None:
        session.info.pop(_PENDING_EVENTS, None)


def log_event(session: Session, at: datetime, plan_id: str, **fields: Any) -> None:
    log_events(session, [event_row(at, plan_id, **fields)])


def log_task_events(
    session: Session,
    at: datetime,
    plan_id: str,
    task_pks: Sequence[int],
    old: TaskStatus | None,
    new: TaskStatus,
    detail: str | None = None,
) -> None:
    log_events(session, [event_row(at, plan_id, task_pk=pk, old=old, new=new, detail=detail) for pk in task_pks])


def plan_events(session: Session, plan_id: str) -> list[EventRow]:
    write_pending_events(session)
    return list(session.scalars(select(EventRow).where(EventRow.plan_id == plan_id).order_by(EventRow.pk)))


def events_after(session: Session, plan_id: str, after_pk: int) -> list[EventRow]:
    write_pending_events(session)
    return list(
        session.scalars(
            select(EventRow).where(EventRow.plan_id == plan_id, EventRow.pk > after_pk).order_by(EventRow.pk)
        )
    )
