"""The services that serve this store (today the beats): each records its ticks, and commands read them back."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from orch.decisions.serving import BeatSeen
from orch.states import TERMINAL, TaskStatus
from orch.store._sql import no_sync, rowcount
from orch.store.models import ServiceRow, TaskRow

BEAT = "beat"
FORGET_AFTER = timedelta(days=7)  # a beat silent this long is forgotten when another starts


def record_beat_tick(
    session: Session, host: str, pid: int, plans: list[str], started_at: datetime, now: datetime
) -> None:
    """This beat ticked at `now` (the database's clock): one UPDATE a tick, an INSERT the first time."""
    scope = ",".join(plans)
    values = {"plans": scope, "started_at": started_at, "last_tick_at": now}
    mine = (ServiceRow.kind == BEAT, ServiceRow.host == host, ServiceRow.pid == pid)
    if rowcount(session.execute(update(ServiceRow).where(*mine).values(**values).execution_options(**no_sync()))):
        return
    stale = ServiceRow.last_tick_at < now - FORGET_AFTER
    session.execute(delete(ServiceRow).where(ServiceRow.kind == BEAT, stale).execution_options(**no_sync()))
    session.add(ServiceRow(kind=BEAT, host=host, pid=pid, **values))
    session.flush()


def beats(session: Session) -> list[BeatSeen]:
    """Every beat the store knows of, the latest tick first."""
    rows = session.scalars(
        select(ServiceRow).where(ServiceRow.kind == BEAT).order_by(ServiceRow.last_tick_at.desc()).limit(100)
    )
    return [
        BeatSeen(row.host, row.pid, tuple(p for p in row.plans.split(",") if p), row.started_at, row.last_tick_at)
        for row in rows
    ]


def queued_since(session: Session, plan_id: str) -> dict[str, datetime]:
    """The plan's queues holding queued tasks, each with when its oldest one was queued."""
    rows = session.execute(
        select(TaskRow.queue, func.min(TaskRow.queued_at))
        .where(TaskRow.plan_id == plan_id, TaskRow.status == TaskStatus.QUEUED)
        .group_by(TaskRow.queue)
    )
    return {str(queue): since for queue, since in rows if since is not None}


def open_tasks_by_queue(session: Session, plan_id: str) -> dict[str, int]:
    """The plan's tasks not yet final, per queue: the queues some worker must read for it to finish."""
    rows = session.execute(
        select(TaskRow.queue, func.count())
        .where(TaskRow.plan_id == plan_id, TaskRow.status.not_in(TERMINAL))
        .group_by(TaskRow.queue)
    )
    return {str(queue): int(count) for queue, count in rows}


def queued_messages(session: Session, plan_id: str, key: str | None = None) -> list[tuple[str, str, int]]:
    """The plan's queued tasks (or the one `key`), each as queue, task id and attempt: whose messages wait on the
    broker."""
    query = select(TaskRow.queue, TaskRow.key, TaskRow.attempt).where(
        TaskRow.plan_id == plan_id, TaskRow.status == TaskStatus.QUEUED
    )
    if key is not None:
        query = query.where(TaskRow.key == key)
    return [(str(queue), str(task), int(attempt)) for queue, task, attempt in session.execute(query)]
