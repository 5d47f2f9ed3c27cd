"""What dispatch reads and writes: the inputs of a readiness decision (found by index, never by loading a whole
plan), the load per agent type and a plan's gate, then the applying of the decision (doom, claim for dispatch,
finish the plan) and the re-sending of dispatches that never started."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Float, String, and_, bindparam, case, exists, func, literal, literal_column, or_, select, update
from sqlalchemy.orm import Session

from orch.budget import Budget
from orch.dag import Dag
from orch.decisions.followups import PLANNER
from orch.decisions.readiness import Reconciliation, TaskView
from orch.records import AgentLoad, Dispatch, PlanGate, ReplanRoute
from orch.states import (
    DISPATCHABLE,
    DOOMING,
    ENDED_WELL,
    HOLDING_FILES,
    IN_FLIGHT,
    PLAN_HELD,
    TERMINAL,
    MergePhase,
    PlanStatus,
    TaskStatus,
)
from orch.store._sql import ANALYZE_FROM_TASKS, PAUSES, PLANS, TASKS, chunks, no_sync
from orch.store.db import refresh_planner_statistics
from orch.store.events import event_row, log_events, log_task_events
from orch.store.models import DependencyRow, MergeRequestRow, PlanRow, TaskRow
from orch.store.plans import plan_dependencies, set_plan_status

# A task waiting (merging) while a resolution task resolves its conflict: the resolution task works on its files
# now, so it holds none (else each would wait for the other).
_RESOLVING = exists().where(
    MergeRequestRow.task_pk == TaskRow.pk,
    MergeRequestRow.attempt == TaskRow.attempt,
    MergeRequestRow.phase == MergePhase.CONFLICTED,
)
_HOLDS_FILES = and_(TaskRow.status.in_(HOLDING_FILES), or_(TaskRow.status != TaskStatus.MERGING, ~_RESOLVING))

# The agent type whose work a task's next (or current) attempt is: a task waiting to be re-planned (on_failure:
# replan) is the planner's, so it takes a planner's slot, a pause of the planner holds it and its own type's does not.
# (A constant, not a bound parameter: the same expression is selected and grouped by.)
EFFECTIVE_AGENT = case((TASKS.c.replanning, literal_column(f"'{PLANNER}'", String)), else_=TASKS.c.agent)


def task_views(session: Session, plan_id: str) -> list[TaskView]:
    dag = Dag.from_edges(plan_dependencies(session, plan_id))
    rows = session.execute(
        select(
            TaskRow.pk,
            TaskRow.status,
            EFFECTIVE_AGENT,
            TaskRow.priority,
            TaskRow.seq,
            TaskRow.not_before,
            TaskRow.files,
            _RESOLVING.label("resolving"),
            TaskRow.hold.is_not(None).label("on_hold"),
        ).where(TaskRow.plan_id == plan_id)
    )
    views = []
    for pk, status, agent, priority, seq, not_before, files, resolving, on_hold in rows:
        leased = () if resolving and status is TaskStatus.MERGING else tuple(files or ())
        deps = tuple(dag.dependencies(pk))
        views.append(TaskView(pk, status, agent, priority, seq, deps, not_before, leased, held=bool(on_hold)))
    return views


_VIEW_COLUMNS = (
    TASKS.c.pk,
    TASKS.c.status,
    EFFECTIVE_AGENT.label("agent"),
    TASKS.c.priority,
    TASKS.c.seq,
    TASKS.c.not_before,
    TASKS.c.files,
)
_BEST_FIRST = (TASKS.c.priority.desc(), TASKS.c.seq)
_OF_PLAN = TASKS.c.plan_id == bindparam("plan_id")
_OF_AGENTS = EFFECTIVE_AGENT.in_(bindparam("agents", expanding=True))
_PENDING_READY = and_(_OF_PLAN, TASKS.c.status == TaskStatus.PENDING, TASKS.c.unmet_deps == 0, TASKS.c.hold.is_(None))
_READY_PENDING = select(*_VIEW_COLUMNS).where(_PENDING_READY).order_by(*_BEST_FIRST).limit(bindparam("limit"))
_READY_PENDING_OF_AGENTS = (
    select(*_VIEW_COLUMNS).where(_PENDING_READY, _OF_AGENTS).order_by(*_BEST_FIRST).limit(bindparam("limit"))
)
_READY_RETRYING_OF_AGENTS = (
    select(*_VIEW_COLUMNS)
    .where(
        _OF_PLAN,
        _OF_AGENTS,
        TASKS.c.status == TaskStatus.RETRY_WAIT,
        or_(TASKS.c.not_before.is_(None), TASKS.c.not_before <= bindparam("now")),
    )
    .order_by(*_BEST_FIRST)
    .limit(bindparam("limit"))
)


def ready_views(session: Session, plan_id: str, agents: Collection[str], now: datetime, limit: int) -> list[TaskView]:
    """The plan's tasks that may start now, best first, found by index (not by loading the plan): pending tasks
    with no unmet dependency, and retry_wait tasks whose backoff has passed — of the agent types in `agents`
    (those with free slots), at most `limit`. Their dependencies are met, so the views carry none."""
    if not agents or limit <= 0:
        return []
    params = {"plan_id": plan_id, "limit": limit, "now": now, "agents": list(agents)}
    rows = [
        *session.execute(_READY_PENDING_OF_AGENTS, params),
        *session.execute(_READY_RETRYING_OF_AGENTS, params),
    ]
    rows.sort(key=lambda row: (-row.priority, row.seq))
    return _views(rows[:limit])


def pending_ready_views(session: Session, plan_id: str, limit: int) -> list[TaskView]:
    """The plan's pending tasks with no unmet dependency, of any agent type, best first, at most `limit`: what a
    completion can have made ready (a task whose backoff passes is the beat's to find)."""
    return _views(session.execute(_READY_PENDING, {"plan_id": plan_id, "limit": limit}))


def due_retry_views(session: Session, task_pk: int, now: datetime) -> list[TaskView]:
    """The task `task_pk` if it waits for a retry whose backoff has passed (an interrupted attempt's, which has
    none): the fast path that recorded its attempt dispatches it at once, not at the next tick."""
    due = or_(TASKS.c.not_before.is_(None), TASKS.c.not_before <= now)
    query = select(*_VIEW_COLUMNS).where(TASKS.c.pk == task_pk, TASKS.c.status == TaskStatus.RETRY_WAIT, due)
    return _views(session.execute(query))


def _views(rows: Iterable[Any]) -> list[TaskView]:
    return [
        TaskView(pk, status, agent, priority, seq, (), not_before, tuple(files or ()))
        for pk, status, agent, priority, seq, not_before, files in rows
    ]


def in_flight_files(session: Session, plan_id: str) -> list[list[str]]:
    """The `files` of the plan's queued and running tasks: the file leases they hold."""
    rows = session.execute(select(TaskRow.files).where(TaskRow.plan_id == plan_id, _HOLDS_FILES))
    return [list(files) for (files,) in rows if files]


def has_doomed_pending(session: Session, plan_id: str) -> bool:
    """A pending task of the plan depends on a failed, upstream_failed or cancelled one (it must be doomed).

    Two index lookups, driven from the (few) failed tasks, so no planner statistics are needed to make it cheap."""
    failed = list(session.scalars(select(TaskRow.pk).where(TaskRow.plan_id == plan_id, TaskRow.status.in_(DOOMING))))
    for chunk in chunks(failed):
        pending_dependant = (
            select(DependencyRow.task_pk)
            .join(TaskRow, TaskRow.pk == DependencyRow.task_pk)
            .where(DependencyRow.depends_on_pk.in_(chunk), TaskRow.status == TaskStatus.PENDING)
            .limit(1)
        )
        if session.execute(pending_dependant).first() is not None:
            return True
    return False


_ANY_UNFINISHED = select(TASKS.c.pk).where(_OF_PLAN, TASKS.c.status.in_(sorted(set(TaskStatus) - TERMINAL))).limit(1)
# A task its list withdrew (removed while pending: cancelled, with its hold saying so) does not fail the plan.
_WITHDRAWN = and_(TASKS.c.status == TaskStatus.CANCELLED, TASKS.c.hold.is_not(None))
_ANY_NOT_SUCCEEDED = (
    select(TASKS.c.pk).where(_OF_PLAN, TASKS.c.status.in_(sorted(TERMINAL - ENDED_WELL)), ~_WITHDRAWN).limit(1)
)


def plan_outcome(session: Session, plan_id: str) -> PlanStatus | None:
    """SUCCEEDED or FAILED once every task of the plan is final, else None (index lookups, no plan scan)."""
    if session.execute(_ANY_UNFINISHED, {"plan_id": plan_id}).first() is not None:
        return None
    failed = session.execute(_ANY_NOT_SUCCEEDED, {"plan_id": plan_id}).first() is not None
    return PlanStatus.FAILED if failed else PlanStatus.SUCCEEDED


def held_files(session: Session, workdir: str, other_than: str) -> list[list[str]]:
    """The `files` of queued and running tasks of other plans in the same workdir (their file leases)."""
    rows = session.execute(
        select(TaskRow.files)
        .join(PlanRow, PlanRow.id == TaskRow.plan_id)
        .where(PlanRow.workdir == workdir, PlanRow.id != other_than, _HOLDS_FILES)
    )
    return [list(files) for (files,) in rows if files]


_IN_FLIGHT_COUNTS = (
    select(EFFECTIVE_AGENT, func.count()).where(TASKS.c.status.in_(sorted(IN_FLIGHT))).group_by(EFFECTIVE_AGENT)
)
_IN_FLIGHT_COUNTS_OF_AGENTS = _IN_FLIGHT_COUNTS.where(_OF_AGENTS)


def _load_statement(counts: Any) -> Any:
    """In-flight counts and held agent types in one round trip: a pause row counts nothing and marks its type."""
    pauses = select(PAUSES.c.agent, literal(0), literal(1)).where(PAUSES.c.until > bindparam("now"))
    return counts.add_columns(literal(0)).union_all(pauses)


_AGENT_LOAD = _load_statement(_IN_FLIGHT_COUNTS)
_AGENT_LOAD_OF_AGENTS = _load_statement(_IN_FLIGHT_COUNTS_OF_AGENTS)


def agent_load(session: Session, now: datetime, agents: Collection[str] | None = None) -> AgentLoad:
    """What bounds dispatch per agent type at `now`: its in-flight tasks (of `agents`, or of every type; a re-plan
    attempt is the planner's) and whether it is paused."""
    if agents is None:
        rows = session.execute(_AGENT_LOAD, {"now": now})
    else:
        rows = session.execute(_AGENT_LOAD_OF_AGENTS, {"now": now, "agents": list(agents)})
    load = AgentLoad({}, set())
    for agent, count, paused in rows:
        if paused:
            load.paused.add(agent)
        else:
            load.in_flight[agent] = count
    return load


# A task waiting to be re-planned (on_failure: replan) is sent to the planner's queue, with the planner's time limit.
_QUEUE = case((TASKS.c.replanning, bindparam("replan_queue", type_=String)), else_=TASKS.c.queue)
_TIMEOUT = case((TASKS.c.replanning, bindparam("replan_timeout", type_=Float)), else_=TASKS.c.timeout)

_CLAIM_FOR_DISPATCH = (
    update(TASKS)
    .where(TASKS.c.pk.in_(bindparam("pks", expanding=True)), TASKS.c.status.in_(sorted(DISPATCHABLE)))
    .values(
        status=TaskStatus.QUEUED,
        attempt=TASKS.c.attempt + 1,
        queued_at=bindparam("now"),
        dispatched_at=bindparam("now"),
        not_before=None,
        lease=None,
    )
    .returning(TASKS.c.pk, TASKS.c.attempt, _QUEUE, _TIMEOUT, TASKS.c.plan_id, TASKS.c.key)
)

_DISPATCH_COLUMNS = (TASKS.c.pk, TASKS.c.attempt, _QUEUE, _TIMEOUT, TASKS.c.plan_id, TASKS.c.key)


DEFAULT_REPLAN_ROUTE = ReplanRoute()  # the planner type's as config/agents.yaml ships it (callers pass their own)


def _route(replan: ReplanRoute) -> dict[str, object]:
    return {"replan_queue": replan.queue, "replan_timeout": replan.timeout}


def apply_reconciliation(
    session: Session, plan_id: str, decision: Reconciliation, now: datetime, replan: ReplanRoute = DEFAULT_REPLAN_ROUTE
) -> list[Dispatch]:
    """Write a readiness decision: doom, claim for dispatch (attempt + 1), finish the plan. CAS throughout. A task
    to be re-planned goes to `replan`'s queue."""
    for chunk in chunks(decision.upstream_failed):
        doomed = session.scalars(
            update(TaskRow)
            .where(TaskRow.pk.in_(chunk), TaskRow.status == TaskStatus.PENDING)
            .values(status=TaskStatus.UPSTREAM_FAILED, finished_at=now, error="a dependency failed")
            .returning(TaskRow.pk)
            .execution_options(**no_sync())
        ).all()
        log_task_events(session, now, plan_id, doomed, TaskStatus.PENDING, TaskStatus.UPSTREAM_FAILED)

    dispatches: list[Dispatch] = []
    old_status: dict[int, TaskStatus] = {}
    for chunk in chunks(decision.ready):
        claimed = session.execute(_CLAIM_FOR_DISPATCH, {"pks": list(chunk), "now": now, **_route(replan)}).all()
        dispatches.extend(Dispatch(*row) for row in claimed)
        # RETURNING gives the new status; the old one is the status readiness saw (pending or retry_wait, which
        # nothing but this dispatcher, holding the dispatch lock, moves out of except to a final status).
        old_status.update((row[0], decision.statuses.get(row[0], TaskStatus.PENDING)) for row in claimed)
    log_events(
        session,
        [
            event_row(
                now,
                plan_id,
                task_pk=d.task_pk,
                attempt=d.attempt,
                old=old_status[d.task_pk],
                new=TaskStatus.QUEUED,
                detail=f"sent to {d.queue}",
            )
            for d in dispatches
        ],
    )
    if decision.plan_outcome is not None:
        finish_plan(session, plan_id, decision.plan_outcome, now)
    if len(dispatches) >= ANALYZE_FROM_TASKS:
        # Statistics from the submit say these tasks are pending; believing no task is queued, the planner
        # would look a claim's task up by status instead of by primary key (a scan of every queued task).
        refresh_planner_statistics(session)
    position = {pk: i for i, pk in enumerate(decision.ready)}
    dispatches.sort(key=lambda d: position[d.task_pk])  # RETURNING has no order; send best first
    return dispatches


def finish_plan(session: Session, plan_id: str, outcome: PlanStatus, now: datetime) -> bool:
    """running (or held: paused, budget_exhausted) → succeeded or failed, once every task of the plan is final."""
    return set_plan_status(
        session, plan_id, {PlanStatus.RUNNING, *PLAN_HELD}, outcome, now, None, finished_at=now, held_reason=None
    )


def stale_dispatches(
    session: Session,
    sent_before: datetime,
    now: datetime,
    plan_ids: Sequence[str] | None = None,
    replan: ReplanRoute = DEFAULT_REPLAN_ROUTE,
) -> list[Dispatch]:
    """Queued tasks whose message has not started by `sent_before`: stamp them and return them to re-send.

    Re-sending is safe: a worker claims a task only while it is queued at that attempt, so the second copy
    of a message that did arrive is dropped."""
    stale = update(TASKS).where(TASKS.c.status == TaskStatus.QUEUED, TASKS.c.dispatched_at < sent_before)
    if plan_ids is not None:
        stale = stale.where(TASKS.c.plan_id.in_(plan_ids))
    rows = session.execute(stale.values(dispatched_at=now).returning(*_DISPATCH_COLUMNS), _route(replan)).all()
    return [Dispatch(*row) for row in rows]


_PLAN_GATE = select(PLANS.c.status, PLANS.c.workdir, PLANS.c.budget_usd, PLANS.c.budget_tokens).where(
    PLANS.c.id == bindparam("of_plan")
)


def plan_gate(session: Session, plan_id: str) -> PlanGate | None:
    row = session.execute(_PLAN_GATE, {"of_plan": plan_id}).first()
    return None if row is None else PlanGate(row.status, row.workdir, Budget(row.budget_usd, row.budget_tokens))


def stalled_on_holds(session: Session, plan_id: str) -> list[tuple[str, str]] | None:
    """The tasks its list holds (deferred), each with why, when they are all that keeps the plan from ending:
    nothing in flight or waiting for a retry, nothing ready, nothing about to be doomed. None otherwise."""
    moving = TASKS.c.status.in_(sorted({*HOLDING_FILES, TaskStatus.RETRY_WAIT}))
    if session.execute(select(TASKS.c.pk).where(_OF_PLAN, moving).limit(1), {"plan_id": plan_id}).first():
        return None
    if session.execute(select(TASKS.c.pk).where(_PENDING_READY).limit(1), {"plan_id": plan_id}).first():
        return None
    if has_doomed_pending(session, plan_id):
        return None
    held = select(TASKS.c.key, TASKS.c.hold).where(
        _OF_PLAN, TASKS.c.status == TaskStatus.PENDING, TASKS.c.hold.is_not(None)
    )
    found = [(key, why) for key, why in session.execute(held.order_by(TASKS.c.seq), {"plan_id": plan_id})]
    return found or None
