"""The services that serve this store (today the beats): each records its ticks, and commands read them back."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, case, delete, func, literal, select, update
from sqlalchemy.orm import Session

from orch.decisions.serving import BeatSeen
from orch.records import ReplanRoute
from orch.states import TERMINAL, TaskStatus
from orch.store._sql import no_sync, rowcount
from orch.store.models import ServiceRow, TaskRow

BEAT = "beat"
FORGET_AFTER = timedelta(days=7)  # a beat silent this long is forgotten when another starts
PLANNER_QUEUE = ReplanRoute().queue  # the planner type's queue as config/agents.yaml ships it (callers pass theirs)


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


def task_queue(replan_queue: str) -> Any:
    """SQL: the queue a task's message waits on (or will): a task waiting to be re-planned is sent to the planner's
    queue, `replan_queue` (rendered into the statement, not bound: the same expression is selected and grouped by)."""
    return case((TaskRow.replanning, literal(replan_queue, String, literal_execute=True)), else_=TaskRow.queue)


def queued_since(session: Session, plan_id: str, replan_queue: str = PLANNER_QUEUE) -> dict[str, datetime]:
    """The plan's queues holding queued tasks, each with when its oldest one was queued (a re-plan's on the
    planner's queue, `replan_queue`)."""
    queue = task_queue(replan_queue)
    rows = session.execute(
        select(queue, func.min(TaskRow.queued_at))
        .where(TaskRow.plan_id == plan_id, TaskRow.status == TaskStatus.QUEUED)
        .group_by(queue)
    )
    return {str(queue): since for queue, since in rows if since is not None}


def open_tasks_by_queue(session: Session, plan_id: str, replan_queue: str = PLANNER_QUEUE) -> dict[str, int]:
    """The plan's tasks not yet final, per queue: the queues some worker must read for it to finish (a task
    waiting to be re-planned: the planner's, `replan_queue`)."""
    queue = task_queue(replan_queue)
    rows = session.execute(
        select(queue, func.count()).where(TaskRow.plan_id == plan_id, TaskRow.status.not_in(TERMINAL)).group_by(queue)
    )
    return {str(queue): int(count) for queue, count in rows}


def queued_messages(
    session: Session, plan_id: str, key: str | None = None, replan_queue: str = PLANNER_QUEUE
) -> list[tuple[str, str, int]]:
    """The plan's queued tasks (or the one `key`), each as queue, task id and attempt: whose messages wait on the
    broker (a re-plan's on the planner's queue, `replan_queue`)."""
    query = select(task_queue(replan_queue), TaskRow.key, TaskRow.attempt).where(
        TaskRow.plan_id == plan_id, TaskRow.status == TaskStatus.QUEUED
    )
    if key is not None:
        query = query.where(TaskRow.key == key)
    return [(str(queue), str(task), int(attempt)) for queue, task, attempt in session.execute(query)]
