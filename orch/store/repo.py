"""Store operations. Every status change is a compare-and-set: UPDATE … WHERE pk AND status IN (expected)
[AND lease/attempt], then the affected rows are checked; a change that lost the race is a no-op."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Float,
    Table,
    and_,
    bindparam,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from orch.budget import Budget, Spend, describe, exhausted
from orch.decisions.readiness import Reconciliation, TaskView
from orch.decisions.retry import Outcome
from orch.errors import PlanNotFound, TaskNotFound, TaskStateConflict
from orch.failures import NOT_COUNTED, FailureClass
from orch.intake.gc_pause import collector_paused
from orch.intake.plan import Plan
from orch.intake.prices import Usage
from orch.intake.prompts import Handoff, PreviousFailure
from orch.services.embedded import ProcessIdentity
from orch.states import (
    CANCELLABLE,
    DISPATCHABLE,
    DOOMING,
    IN_FLIGHT,
    PLAN_FINAL,
    PLAN_HELD,
    RETRIABLE,
    TERMINAL,
    AttemptStatus,
    PlanStatus,
    TaskStatus,
)
from orch.store.bulk import insert_rows, reserve_primary_keys
from orch.store.db import refresh_planner_statistics
from orch.store.models import AgentPauseRow, AttemptRow, DependencyRow, EventRow, PlanRow, TaskRow, UTCDateTime

# Core tables for the per-attempt statements: built once below with bind parameters, so a worker's hot path
# neither constructs statements nor goes through the ORM's unit of work (each would cost more than the query).
_TASKS = cast(Table, TaskRow.__table__)
_ATTEMPTS = cast(Table, AttemptRow.__table__)
_PLANS = cast(Table, PlanRow.__table__)
_DEPENDENCIES = cast(Table, DependencyRow.__table__)
_PAUSES = cast(Table, AgentPauseRow.__table__)
_INSERT_EVENTS = insert(cast(Table, EventRow.__table__))


class _DbClock(FunctionElement[datetime]):
    """The database's clock in UTC, `seconds` ahead: a worker's claim stamps its start and lease expiry with it in
    the same statement, instead of asking for the time first."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_clock"


@compiles(_DbClock, "postgresql")
def _postgres_clock(element: _DbClock, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(clock_timestamp() AT TIME ZONE 'UTC') + make_interval(secs => {compiler.process(element.clauses, **kw)})"


@compiles(_DbClock, "sqlite")
def _sqlite_clock(element: _DbClock, compiler: SQLCompiler, **kw: Any) -> str:
    ahead = compiler.process(element.clauses, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', ({ahead}) || ' seconds')"


# The columns a submitted task sets, in the order `submit_plan` gives them (the rest take their defaults).
_SUBMITTED_COLUMNS = (
    "pk", "plan_id", "key", "seq", "title", "description", "agent", "route_reason", "queue", "executor", "command",
    "priority", "files", "success", "timeout", "retries", "status", "unmet_deps", "attempt", "verify", "scope",
    "call", "budget_usd", "budget_tokens", "retry_floor",
)  # fmt: skip
_ANALYZE_FROM_TASKS = 500  # a plan this large refreshes the planner's statistics when stored
_CHUNK = 2000  # IN-list size, well under SQLite's bound-parameter limit


def _chunks(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched: how a compare-and-set tells it won."""
    return int(cast(CursorResult[Any], result).rowcount)


def _no_sync() -> dict[str, Any]:
    return {"synchronize_session": False}


_PG_NOW = text("SELECT clock_timestamp()")


def db_now(session: Session) -> datetime:
    """The database's clock: leases are judged by it, never by a worker's own clock. A SQLite store lives on
    this host, and its clock ('now') is this host's: it is read here without a statement."""
    if session.get_bind().dialect.name == "postgresql":
        value = session.scalar(_PG_NOW)
        assert isinstance(value, datetime)
        return value.astimezone(UTC)
    return datetime.now(UTC)


def new_plan_id(name: str) -> str:
    return f"{name[:24]}-{secrets.token_hex(4)}"


# --- plans -----------------------------------------------------------------------------------------


def submit_plan(session: Session, plan: Plan, now: datetime) -> str:
    """Insert a validated plan with its tasks and edges; its tasks start pending. Returns the plan id."""
    with collector_paused():
        return _insert_plan(session, plan, now)


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
        )
    )
    session.flush()
    pks = reserve_primary_keys(session, _TASKS, len(plan.tasks))
    pk_of = {task.key: pk for task, pk in zip(plan.tasks, pks, strict=True)}
    pending = TaskStatus.PENDING.value
    no_files = json.dumps([])
    insert_rows(
        session,
        _TASKS,
        _SUBMITTED_COLUMNS,
        (
            (
                pk_of[t.key], plan_id, t.key, t.seq, t.title, t.description, t.agent, t.route_reason, t.queue,
                t.executor, t.command, t.priority, json.dumps(list(t.files)) if t.files else no_files, t.success,
                t.timeout, t.retries, pending, len(t.after), 0, t.verify, t.scope, t.call, t.budget.usd,
                t.budget.tokens, 0,
            )
            for t in plan.tasks
        ),
    )  # fmt: skip
    insert_rows(
        session,
        _DEPENDENCIES,
        ("task_pk", "depends_on_pk"),
        ((pk_of[t.key], pk_of[dep]) for t in plan.tasks for dep in t.after),
    )
    _event(session, now, plan_id, kind="plan", new=PlanStatus.RUNNING, detail=f"submitted from {plan.source}")
    if len(plan.tasks) >= _ANALYZE_FROM_TASKS:
        refresh_planner_statistics(session)  # PostgreSQL counts this transaction's own rows in the sample
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
    write_pending_events(session)
    return list(session.scalars(select(EventRow).where(EventRow.plan_id == plan_id).order_by(EventRow.pk)))


# --- readiness inputs and the applying of a decision ----------------------------------------------------


def task_views(session: Session, plan_id: str) -> list[TaskView]:
    deps: dict[int, list[int]] = {}
    for task_pk, dep_pk in plan_dependencies(session, plan_id):
        deps.setdefault(task_pk, []).append(dep_pk)
    rows = session.execute(
        select(
            TaskRow.pk, TaskRow.status, TaskRow.agent, TaskRow.priority, TaskRow.seq, TaskRow.not_before, TaskRow.files
        ).where(TaskRow.plan_id == plan_id)
    )
    return [
        TaskView(pk, status, agent, priority, seq, tuple(deps.get(pk, ())), not_before, tuple(files or ()))
        for pk, status, agent, priority, seq, not_before, files in rows
    ]


_VIEW_COLUMNS = (
    _TASKS.c.pk,
    _TASKS.c.status,
    _TASKS.c.agent,
    _TASKS.c.priority,
    _TASKS.c.seq,
    _TASKS.c.not_before,
    _TASKS.c.files,
)
_BEST_FIRST = (_TASKS.c.priority.desc(), _TASKS.c.seq)
_OF_PLAN = _TASKS.c.plan_id == bindparam("plan_id")
_OF_AGENTS = _TASKS.c.agent.in_(bindparam("agents", expanding=True))
_PENDING_READY = and_(_OF_PLAN, _TASKS.c.status == TaskStatus.PENDING, _TASKS.c.unmet_deps == 0)
_READY_PENDING = select(*_VIEW_COLUMNS).where(_PENDING_READY).order_by(*_BEST_FIRST).limit(bindparam("limit"))
_READY_PENDING_OF_AGENTS = (
    select(*_VIEW_COLUMNS).where(_PENDING_READY, _OF_AGENTS).order_by(*_BEST_FIRST).limit(bindparam("limit"))
)
_READY_RETRYING_OF_AGENTS = (
    select(*_VIEW_COLUMNS)
    .where(
        _OF_PLAN,
        _OF_AGENTS,
        _TASKS.c.status == TaskStatus.RETRY_WAIT,
        or_(_TASKS.c.not_before.is_(None), _TASKS.c.not_before <= bindparam("now")),
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


def _views(rows: Iterable[Any]) -> list[TaskView]:
    return [
        TaskView(pk, status, agent, priority, seq, (), not_before, tuple(files or ()))
        for pk, status, agent, priority, seq, not_before, files in rows
    ]


def in_flight_files(session: Session, plan_id: str) -> list[list[str]]:
    """The `files` of the plan's queued and running tasks: the file leases they hold."""
    rows = session.execute(select(TaskRow.files).where(TaskRow.plan_id == plan_id, TaskRow.status.in_(IN_FLIGHT)))
    return [list(files) for (files,) in rows if files]


def has_doomed_pending(session: Session, plan_id: str) -> bool:
    """A pending task of the plan depends on a failed, upstream_failed or cancelled one (it must be doomed).

    Two index lookups, driven from the (few) failed tasks, so no planner statistics are needed to make it cheap."""
    failed = list(session.scalars(select(TaskRow.pk).where(TaskRow.plan_id == plan_id, TaskRow.status.in_(DOOMING))))
    for chunk in _chunks(failed):
        pending_dependant = (
            select(DependencyRow.task_pk)
            .join(TaskRow, TaskRow.pk == DependencyRow.task_pk)
            .where(DependencyRow.depends_on_pk.in_(chunk), TaskRow.status == TaskStatus.PENDING)
            .limit(1)
        )
        if session.execute(pending_dependant).first() is not None:
            return True
    return False


_ANY_UNFINISHED = select(_TASKS.c.pk).where(_OF_PLAN, _TASKS.c.status.in_(sorted(set(TaskStatus) - TERMINAL))).limit(1)
_ANY_NOT_SUCCEEDED = (
    select(_TASKS.c.pk).where(_OF_PLAN, _TASKS.c.status.in_(sorted(TERMINAL - {TaskStatus.SUCCEEDED}))).limit(1)
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
        .where(PlanRow.workdir == workdir, PlanRow.id != other_than, TaskRow.status.in_(IN_FLIGHT))
    )
    return [list(files) for (files,) in rows if files]


_IN_FLIGHT_COUNTS = (
    select(_TASKS.c.agent, func.count()).where(_TASKS.c.status.in_(sorted(IN_FLIGHT))).group_by(_TASKS.c.agent)
)
_IN_FLIGHT_COUNTS_OF_AGENTS = _IN_FLIGHT_COUNTS.where(_OF_AGENTS)


@dataclass(frozen=True)
class AgentLoad:
    in_flight: dict[str, int]  # queued and running tasks per agent type, across every plan
    paused: set[str]  # agent types whose dispatch is held (a usage limit, an open circuit breaker)


def _load_statement(counts: Any) -> Any:
    """In-flight counts and held agent types in one round trip: a pause row counts nothing and marks its type."""
    pauses = select(_PAUSES.c.agent, literal(0), literal(1)).where(_PAUSES.c.until > bindparam("now"))
    return counts.add_columns(literal(0)).union_all(pauses)


_AGENT_LOAD = _load_statement(_IN_FLIGHT_COUNTS)
_AGENT_LOAD_OF_AGENTS = _load_statement(_IN_FLIGHT_COUNTS_OF_AGENTS)


def agent_load(session: Session, now: datetime, agents: Collection[str] | None = None) -> AgentLoad:
    """What bounds dispatch per agent type at `now`: its in-flight tasks (of `agents`, or of every type) and
    whether it is paused."""
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


_CLAIM_FOR_DISPATCH = (
    update(_TASKS)
    .where(_TASKS.c.pk.in_(bindparam("pks", expanding=True)), _TASKS.c.status.in_(sorted(DISPATCHABLE)))
    .values(
        status=TaskStatus.QUEUED,
        attempt=_TASKS.c.attempt + 1,
        queued_at=bindparam("now"),
        dispatched_at=bindparam("now"),
        not_before=None,
        lease=None,
    )
    .returning(_TASKS.c.pk, _TASKS.c.attempt, _TASKS.c.queue, _TASKS.c.timeout, _TASKS.c.plan_id, _TASKS.c.key)
)

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
    old_status: dict[int, TaskStatus] = {}
    for chunk in _chunks(decision.ready):
        claimed = session.execute(_CLAIM_FOR_DISPATCH, {"pks": list(chunk), "now": now}).all()
        dispatches.extend(Dispatch(*row) for row in claimed)
        # RETURNING gives the new status; the old one is the status readiness saw (pending or retry_wait, which
        # nothing but this dispatcher, holding the dispatch lock, moves out of except to a final status).
        old_status.update((row[0], decision.statuses.get(row[0], TaskStatus.PENDING)) for row in claimed)
    _events(
        session,
        [
            _event_row(
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
    if len(dispatches) >= _ANALYZE_FROM_TASKS:
        # Statistics from the submit say these tasks are pending; believing no task is queued, the planner
        # would look a claim's task up by status instead of by primary key (a scan of every queued task).
        refresh_planner_statistics(session)
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
    dependants: int | None = None  # tasks that depend on this one (None: not known, so look)


# Attempts that spend a task's retry budget: failed for a reason of the task's own, or lost with their worker.
_SPENDS_RETRIES = and_(
    AttemptRow.status.in_((AttemptStatus.FAILED, AttemptStatus.LOST)),
    or_(AttemptRow.failure_class.is_(None), AttemptRow.failure_class.not_in(NOT_COUNTED)),
)


def counted_failures(session: Session, task_pk: int) -> int:
    """Attempts of a task that spent its retry budget (since the operator last ran `orch retry` on it)."""
    floor = select(TaskRow.retry_floor).where(TaskRow.pk == task_pk).scalar_subquery()
    return int(
        session.scalar(
            select(func.count()).where(AttemptRow.task_pk == task_pk, AttemptRow.number > floor, _SPENDS_RETRIES)
        )
        or 0
    )


_OF_TASK = _TASKS.c.pk == bindparam("of_task")
_SPEC_COLUMNS = (
    *(_TASKS.c[name] for name in ("key", "title", "description", "success", "command", "files", "timeout")),
    *(_TASKS.c[name] for name in ("agent", "executor", "verify", "scope", "call")),
)
_WORKDIR = select(_PLANS.c.workdir).where(_PLANS.c.id == _TASKS.c.plan_id).scalar_subquery()
_DEPENDANTS = select(func.count()).where(_DEPENDENCIES.c.depends_on_pk == _TASKS.c.pk).scalar_subquery()


def _claim_statement(started: Any, expires: Any) -> Any:
    return (
        update(_TASKS)
        .where(_OF_TASK, _TASKS.c.status == TaskStatus.QUEUED, _TASKS.c.attempt == bindparam("of_number"))
        .values(
            status=TaskStatus.RUNNING,
            lease=bindparam("new_lease"),
            lease_expires_at=expires,
            started_at=started,
            finished_at=None,
        )
        .returning(
            _TASKS.c.plan_id,
            _TASKS.c.retries,
            _TASKS.c.queued_at,
            _TASKS.c.started_at,
            _DEPENDANTS,
            *_SPEC_COLUMNS,
            _WORKDIR.label("workdir"),
        )
    )


_LEASE_SECONDS = bindparam("lease_s", type_=Float)
# At a time the caller gives (tests, replays), or at the database's clock read by the claim itself (a worker).
_CLAIM_AT = _claim_statement(bindparam("now"), bindparam("expires"))
_CLAIM_NOW = _claim_statement(_DbClock(literal(0.0, Float)), _DbClock(_LEASE_SECONDS))
_INSERT_ATTEMPT = insert(_ATTEMPTS)


def claim_attempt(
    session: Session, task_pk: int, attempt: int, worker: str, pid: int | None, now: datetime, lease_seconds: float
) -> Claim | None:
    """queued → running for this attempt, with a fresh lease that expires unless renewed (by `now`, the
    database's clock); None when the message is a duplicate or stale."""
    claimed = claim_and_load(session, task_pk, attempt, worker, pid, lease_seconds, now)
    return None if claimed is None else claimed[0]


def claim_and_load(
    session: Session,
    task_pk: int,
    attempt: int,
    worker: str,
    pid: int | None,
    lease_seconds: float,
    now: datetime | None = None,
) -> tuple[Claim, TaskSpec] | None:
    """`claim_attempt`, also returning what the worker needs to run the task; without `now`, the claim reads the
    database's clock itself (one round trip fewer)."""
    lease = str(uuid.uuid4())
    params: dict[str, Any] = {"of_task": task_pk, "of_number": attempt, "new_lease": lease, "lease_s": lease_seconds}
    if now is not None:
        params.update(now=now, expires=now + timedelta(seconds=lease_seconds))
    row = session.execute(_CLAIM_NOW if now is None else _CLAIM_AT, params).first()
    if row is None:
        return None
    plan_id, retries, queued_at, started, dependants, *spec = row
    now = started
    assert now is not None
    task = TaskSpec(*spec)
    key, agent = task.key, task.agent
    session.execute(
        _INSERT_ATTEMPT,
        {
            "task_pk": task_pk,
            "number": attempt,
            "lease": lease,
            "status": AttemptStatus.RUNNING,
            "worker": worker,
            "pid": pid,
            "queued_at": queued_at,
            "started_at": now,
            "heartbeat_at": now,
            "output_tail": "",
        },
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
    return Claim(task_pk, plan_id, key, attempt, lease, retries, agent, earlier, dependants), task


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


@dataclass(frozen=True)
class Recorded:
    """A result the store accepted; `newly_ready` dependants have no unmet dependency left because of it."""

    newly_ready: int = 0


_OF_LEASE = and_(_OF_TASK, _TASKS.c.status == TaskStatus.RUNNING, _TASKS.c.lease == bindparam("held_lease"))
_END_RUNNING = (
    update(_TASKS)
    .where(_OF_LEASE)
    .values(
        status=bindparam("new_status"),
        lease=None,
        lease_expires_at=None,
        not_before=bindparam("retry_at"),
        finished_at=bindparam("ended_at"),
        error=bindparam("task_error"),
    )
)
_FINISH_ATTEMPT = (
    update(_ATTEMPTS)
    .where(
        _ATTEMPTS.c.task_pk == bindparam("of_task"),
        _ATTEMPTS.c.number == bindparam("of_number"),
        _ATTEMPTS.c.lease == bindparam("held_lease"),
    )
    .values(
        {
            column: bindparam(f"v_{column}")
            for column in (
                "status",
                "finished_at",
                "exit_code",
                "failure_class",
                "error",
                "output_tail",
                "log_path",
                "model",
                "input_tokens",
                "output_tokens",
                "cache_creation_tokens",
                "cache_read_tokens",
                "cost_usd",
                "result",
                "duration_s",
                "files_changed",
                "verified",
            )
        }
    )
)
# A success decrements its dependants' unmet count; those that reach zero while pending are ready.
_DEPENDENCY_MET = (
    update(_TASKS)
    .where(
        _TASKS.c.pk.in_(select(_DEPENDENCIES.c.task_pk).where(_DEPENDENCIES.c.depends_on_pk == bindparam("of_task")))
    )
    .values(unmet_deps=_TASKS.c.unmet_deps - 1)
    .returning(_TASKS.c.unmet_deps, _TASKS.c.status)
)


def record_result(
    session: Session, claim: Claim, result: AttemptResult, outcome: Outcome, now: datetime
) -> Recorded | None:
    """running → the outcome's status, only while this claim's lease still holds. None: the result is stale."""
    new_status = outcome.task_status
    of_claim = {"of_task": claim.task_pk, "of_number": claim.attempt, "held_lease": claim.lease}
    ended = {
        "new_status": new_status,
        "retry_at": outcome.not_before,
        "ended_at": None if new_status is TaskStatus.RETRY_WAIT else now,
        "task_error": None if result.succeeded else result.error,
    }
    if not _rowcount(session.execute(_END_RUNNING, {**of_claim, **ended})):
        return None
    newly_ready = 0
    if new_status is TaskStatus.SUCCEEDED and claim.dependants != 0:
        newly_ready = _dependency_met(session, claim.task_pk)
    usage = result.usage
    values = {
        "status": outcome.attempt_status,
        "finished_at": now,
        "exit_code": result.exit_code,
        "failure_class": result.failure_class,
        "error": result.error,
        "output_tail": result.output_tail,
        "log_path": result.log_path,
        "model": result.model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_tokens": usage.cache_creation_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cost_usd": result.cost_usd,
        "result": result.result,
        "duration_s": result.duration_s,
        "files_changed": None if result.files_changed is None else list(result.files_changed),
        "verified": result.verified,
    }
    session.execute(_FINISH_ATTEMPT, {**of_claim, **{f"v_{name}": value for name, value in values.items()}})
    _event(
        session,
        now,
        claim.plan_id,
        task_pk=claim.task_pk,
        attempt=claim.attempt,
        kind="task",
        old=TaskStatus.RUNNING,
        new=new_status,
        detail=outcome.detail or result.error,
    )
    return Recorded(newly_ready)


def _dependency_met(session: Session, task_pk: int) -> int:
    """`task_pk` succeeded (it never un-succeeds): each of its dependants has one unmet dependency fewer.
    Returns how many are now ready."""
    rows = session.execute(_DEPENDENCY_MET, {"of_task": task_pk})
    return sum(1 for unmet, status in rows if unmet == 0 and status == TaskStatus.PENDING)


_RENEW = update(_TASKS).where(_OF_LEASE).values(lease_expires_at=bindparam("expires"))


def renew_lease(
    session: Session, claim: Claim, now: datetime, lease_seconds: float, usage: Usage, cost: float | None
) -> bool:
    """A heartbeat: push the lease's expiry out and record the attempt's usage so far. False: the lease is gone
    (the attempt was cancelled, skipped or reaped) and the agent must stop."""
    of_claim = {"of_task": claim.task_pk, "held_lease": claim.lease}
    renewed = _rowcount(session.execute(_RENEW, {**of_claim, "expires": now + timedelta(seconds=lease_seconds)}))
    if renewed:
        session.execute(
            update(AttemptRow)
            .where(AttemptRow.task_pk == claim.task_pk, AttemptRow.lease == claim.lease)
            .values(
                heartbeat_at=now,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_creation_tokens=usage.cache_creation_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cost_usd=cost,
            )
            .execution_options(**_no_sync())
        )
    return bool(renewed)


def expired_claims(session: Session, now: datetime, plan_ids: Sequence[str] | None = None) -> list[Claim]:
    """Running attempts whose lease expired by `now` (the database's clock): their workers are gone."""
    query = select(
        TaskRow.pk, TaskRow.plan_id, TaskRow.key, TaskRow.attempt, TaskRow.lease, TaskRow.retries, TaskRow.agent
    ).where(TaskRow.status == TaskStatus.RUNNING, TaskRow.lease_expires_at < now)
    if plan_ids is not None:
        query = query.where(TaskRow.plan_id.in_(plan_ids))
    claims = []
    for pk, plan_id, key, attempt, lease, retries, agent in session.execute(query).all():
        claims.append(Claim(pk, plan_id, key, attempt, lease or "", retries, agent, counted_failures(session, pk)))
    return claims


def get_attempt(session: Session, claim: Claim) -> AttemptRow | None:
    return session.scalars(
        select(AttemptRow).where(AttemptRow.task_pk == claim.task_pk, AttemptRow.number == claim.attempt)
    ).first()


def reported_usage(attempt: AttemptRow) -> Usage:
    return Usage(attempt.input_tokens, attempt.output_tokens, attempt.cache_creation_tokens, attempt.cache_read_tokens)


@dataclass(frozen=True)
class TaskSpec:
    """What a worker needs of a claimed task to run it (one indexed read, no ORM objects)."""

    key: str
    title: str
    description: str
    success: str
    command: str | None
    files: list[str]
    timeout: float
    agent: str
    executor: str
    verify: str | None
    scope: str
    call: str | None
    workdir: str


@dataclass(frozen=True)
class PlanGate:
    """What dispatch asks of a plan before claiming its tasks: may it run, and within what budget."""

    status: PlanStatus
    workdir: str
    budget: Budget


_PLAN_GATE = select(_PLANS.c.status, _PLANS.c.workdir, _PLANS.c.budget_usd, _PLANS.c.budget_tokens).where(
    _PLANS.c.id == bindparam("of_plan")
)


def plan_gate(session: Session, plan_id: str) -> PlanGate | None:
    row = session.execute(_PLAN_GATE, {"of_plan": plan_id}).first()
    return None if row is None else PlanGate(row.status, row.workdir, Budget(row.budget_usd, row.budget_tokens))


def get_task(session: Session, task_pk: int) -> TaskRow | None:
    return session.get(TaskRow, task_pk)


def get_plan(session: Session, plan_id: str) -> PlanRow | None:
    return session.get(PlanRow, plan_id)


# --- operator actions ---------------------------------------------------------------------------------


def cancel_plan(session: Session, plan_id: str, now: datetime, reason: str) -> dict[TaskStatus, int]:
    """Every not-yet-final task → cancelled (running attempts lose their lease, so their heartbeats stop the
    agents), the plan → cancelled. Returns how many tasks were cancelled from each status."""
    counts: dict[TaskStatus, int] = {}
    for old in sorted(CANCELLABLE):
        cancelled = session.scalars(
            update(TaskRow)
            .where(TaskRow.plan_id == plan_id, TaskRow.status == old)
            .values(status=TaskStatus.CANCELLED, lease=None, lease_expires_at=None, finished_at=now, error=reason)
            .returning(TaskRow.pk)
            .execution_options(**_no_sync())
        ).all()
        _task_events(session, now, plan_id, cancelled, old, TaskStatus.CANCELLED, detail=reason)
        if cancelled:
            counts[old] = len(cancelled)
    session.execute(
        update(AttemptRow)
        .where(
            AttemptRow.task_pk.in_(select(TaskRow.pk).where(TaskRow.plan_id == plan_id)),
            AttemptRow.status == AttemptStatus.RUNNING,
        )
        .values(status=AttemptStatus.CANCELLED, finished_at=now, error=reason)
        .execution_options(**_no_sync())
    )
    plan = session.get(PlanRow, plan_id)
    old_status = plan.status if plan else PlanStatus.RUNNING
    changed = _rowcount(
        session.execute(
            update(PlanRow)
            .where(PlanRow.id == plan_id, PlanRow.status.not_in(PLAN_FINAL))
            .values(status=PlanStatus.CANCELLED, finished_at=now, held_reason=None)
            .execution_options(**_no_sync())
        )
    )
    if changed:
        _event(session, now, plan_id, kind="plan", old=old_status, new=PlanStatus.CANCELLED, detail=reason)
    return counts


def cancel_task(session: Session, plan_id: str, key: str, now: datetime, reason: str) -> TaskRow:
    """One task → cancelled (a running attempt loses its lease, so its heartbeat stops the agent); its
    dependants then become upstream_failed."""
    task = task_by_key(session, plan_id, key)
    cancelled = session.scalars(
        update(TaskRow)
        .where(TaskRow.pk == task.pk, TaskRow.status.in_(CANCELLABLE))
        .values(status=TaskStatus.CANCELLED, lease=None, lease_expires_at=None, finished_at=now, error=reason)
        .returning(TaskRow.pk)
        .execution_options(**_no_sync())
    ).all()
    if not cancelled:
        raise TaskStateConflict(f"task {key!r} of plan {plan_id} is {task.status}: nothing to cancel")
    _end_running_attempt(session, task.pk, AttemptStatus.CANCELLED, now, reason)
    _task_events(session, now, plan_id, cancelled, task.status, TaskStatus.CANCELLED, detail=reason)
    return task


def _end_running_attempt(session: Session, task_pk: int, status: AttemptStatus, now: datetime, reason: str) -> None:
    session.execute(
        update(AttemptRow)
        .where(AttemptRow.task_pk == task_pk, AttemptRow.status == AttemptStatus.RUNNING)
        .values(status=status, finished_at=now, error=reason)
        .execution_options(**_no_sync())
    )


def task_by_key(session: Session, plan_id: str, key: str) -> TaskRow:
    task = session.scalars(select(TaskRow).where(TaskRow.plan_id == plan_id, TaskRow.key == key)).first()
    if task is None:
        raise TaskNotFound(f"plan {plan_id} has no task {key!r}")
    return task


def descendants(session: Session, plan_id: str, task_pk: int) -> list[int]:
    """Every task that depends on `task_pk`, directly or not."""
    dependants: dict[int, list[int]] = {}
    for child, parent in plan_dependencies(session, plan_id):
        dependants.setdefault(parent, []).append(child)
    found: list[int] = []
    seen = {task_pk}
    frontier = [task_pk]
    while frontier:
        for child in dependants.get(frontier.pop(), ()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                frontier.append(child)
    return found


def _reopen(session: Session, plan_id: str, task_pks: Sequence[int], now: datetime, detail: str) -> list[int]:
    """Failed, upstream_failed or cancelled tasks → pending again; their earlier failures stop counting."""
    reopened: list[int] = []
    for old in RETRIABLE:
        for chunk in _chunks(list(task_pks)):
            pks = session.scalars(
                update(TaskRow)
                .where(TaskRow.pk.in_(chunk), TaskRow.status == old)
                .values(
                    status=TaskStatus.PENDING,
                    retry_floor=TaskRow.attempt,
                    finished_at=None,
                    not_before=None,
                    error=None,
                )
                .returning(TaskRow.pk)
                .execution_options(**_no_sync())
            ).all()
            _task_events(session, now, plan_id, pks, old, TaskStatus.PENDING, detail=detail)
            reopened.extend(pks)
    return reopened


def _reopen_plan(session: Session, plan_id: str, now: datetime, detail: str) -> None:
    """A failed plan whose tasks were reopened runs again (a cancelled one stays cancelled)."""
    changed = _rowcount(
        session.execute(
            update(PlanRow)
            .where(PlanRow.id == plan_id, PlanRow.status == PlanStatus.FAILED)
            .values(status=PlanStatus.RUNNING, finished_at=None)
            .execution_options(**_no_sync())
        )
    )
    if changed:
        _event(session, now, plan_id, kind="plan", old=PlanStatus.FAILED, new=PlanStatus.RUNNING, detail=detail)


def retry_task(session: Session, plan_id: str, key: str, now: datetime) -> list[str]:
    """A failed, upstream_failed or cancelled task and its unfinished descendants → pending, with a fresh retry
    budget. Returns the keys reopened."""
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


def skip_task(session: Session, plan_id: str, key: str, now: datetime) -> list[str]:
    """Mark a task succeeded without running it (a running attempt loses its lease and is stopped), so its
    dependants may run: those it had doomed are reopened. Returns the keys changed."""
    task = task_by_key(session, plan_id, key)
    if task.status is TaskStatus.SUCCEEDED:
        raise TaskStateConflict(f"task {key!r} of plan {plan_id} already succeeded")
    _ensure_not_cancelled(session, plan_id)
    reason = "skipped by the operator (orch skip)"
    changed = _rowcount(
        session.execute(
            update(TaskRow)
            .where(TaskRow.pk == task.pk, TaskRow.status == task.status)
            .values(status=TaskStatus.SUCCEEDED, lease=None, lease_expires_at=None, finished_at=now, error=reason)
            .execution_options(**_no_sync())
        )
    )
    if not changed:
        raise TaskStateConflict(f"task {key!r} of plan {plan_id} changed meanwhile; try again")
    _dependency_met(session, task.pk)
    _end_running_attempt(session, task.pk, AttemptStatus.CANCELLED, now, reason)
    _task_events(session, now, plan_id, [task.pk], task.status, TaskStatus.SUCCEEDED, detail=reason)
    # Only the dependants it doomed run again; a dependant that failed on its own stays failed.
    doomed = [pk for pk in descendants(session, plan_id, task.pk) if _status(session, pk) is TaskStatus.UPSTREAM_FAILED]
    reopened = _reopen(session, plan_id, doomed, now, f"upstream {key} skipped")
    _reopen_plan(session, plan_id, now, f"orch skip {key}")
    return [key, *_keys(session, reopened)]


def _status(session: Session, task_pk: int) -> TaskStatus | None:
    return session.scalar(select(TaskRow.status).where(TaskRow.pk == task_pk))


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
    changed = _rowcount(
        session.execute(
            update(PlanRow)
            .where(PlanRow.id == plan_id, PlanRow.status == PlanStatus.RUNNING)
            .values(status=status, held_reason=reason)
            .execution_options(**_no_sync())
        )
    )
    if changed:
        _event(session, now, plan_id, kind="plan", old=PlanStatus.RUNNING, new=status, detail=reason)
    return bool(changed)


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
    if old is PlanStatus.BUDGET_EXHAUSTED and exhausted(plan_spend(session, plan_id), plan_budget(plan)):
        raise TaskStateConflict(
            f"plan {plan_id} has spent {describe(plan_spend(session, plan_id), plan_budget(plan))}: "
            f"raise it with --budget-usd / --budget-tokens"
        )
    changed = _rowcount(
        session.execute(
            update(PlanRow)
            .where(PlanRow.id == plan_id, PlanRow.status == old)
            .values(status=PlanStatus.RUNNING, held_reason=None)
            .execution_options(**_no_sync())
        )
    )
    if not changed:
        raise TaskStateConflict(f"plan {plan_id} changed meanwhile; try again")
    _event(session, now, plan_id, kind="plan", old=old, new=PlanStatus.RUNNING, detail="orch resume")
    return old


# --- the `orch run` behind a plan -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerPlan:
    """An unfinished plan and the `orch run` process that runs it."""

    plan_id: str
    runner: ProcessIdentity


def record_runner(session: Session, plan_id: str, runner: ProcessIdentity) -> None:
    """The plan is run by `runner` (an `orch run`): once that process is gone, `unfinished_runner_plans` names it."""
    session.execute(
        update(PlanRow)
        .where(PlanRow.id == plan_id)
        .values(runner_host=runner.host, runner_pid=runner.pid, runner_start_ticks=runner.start_ticks)
        .execution_options(**_no_sync())
    )


def unfinished_runner_plans(session: Session, host: str) -> list[RunnerPlan]:
    """The plans not yet final that an `orch run` on `host` runs (or ran), oldest first."""
    rows = session.execute(
        select(PlanRow.id, PlanRow.runner_pid, PlanRow.runner_start_ticks)
        .where(PlanRow.runner_host == host, PlanRow.status.not_in(PLAN_FINAL))
        .order_by(PlanRow.created_at)
    )
    return [
        RunnerPlan(plan_id, ProcessIdentity(host, pid, ticks))
        for plan_id, pid, ticks in rows
        if pid is not None and ticks is not None
    ]


def dead_runner_reason(runner: ProcessIdentity) -> str:
    return f"its orch run ({runner.describe()}) died"


# --- budgets --------------------------------------------------------------------------------------------


def plan_budget(plan: PlanRow) -> Budget:
    return Budget(plan.budget_usd, plan.budget_tokens)


_TOKENS = (
    AttemptRow.input_tokens + AttemptRow.output_tokens + AttemptRow.cache_creation_tokens + AttemptRow.cache_read_tokens
)
# What attempts spent, dollars and tokens, as SQL sums; the exporter's per-plan budget figures use them too.
SPENT = (func.coalesce(func.sum(AttemptRow.cost_usd), 0.0), func.coalesce(func.sum(_TOKENS), 0))


def _spend(*where: Any) -> Any:
    return select(*SPENT).where(*where)


def plan_spend(session: Session, plan_id: str) -> Spend:
    """Dollars and tokens spent by a plan's attempts, finished or still running (as their heartbeats report)."""
    query = _spend(TaskRow.plan_id == plan_id).join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
    usd, tokens = session.execute(query).one()
    return Spend(float(usd or 0.0), int(tokens or 0))


def task_spend(session: Session, task_pk: int) -> Spend:
    usd, tokens = session.execute(_spend(AttemptRow.task_pk == task_pk)).one()
    return Spend(float(usd or 0.0), int(tokens or 0))


@dataclass(frozen=True)
class BudgetStop:
    failure_class: FailureClass
    message: str


def over_budget(session: Session, claim: Claim) -> BudgetStop | None:
    """Whether a running attempt must stop: its task's budget is spent (the task fails), or its plan's (the
    plan is held as budget_exhausted and the attempt re-queued for when the budget is raised)."""
    task = session.get(TaskRow, claim.task_pk)
    plan = session.get(PlanRow, claim.plan_id)
    if task is None or plan is None:
        return None
    task_cap = Budget(task.budget_usd, task.budget_tokens)
    if task_cap and exhausted(spent := task_spend(session, task.pk), task_cap):
        return BudgetStop(FailureClass.BUDGET_EXCEEDED, f"task budget spent: {describe(spent, task_cap)}")
    plan_cap = plan_budget(plan)
    if plan_cap and exhausted(spent := plan_spend(session, plan.id), plan_cap):
        reason = f"plan budget spent: {describe(spent, plan_cap)}"
        hold_plan(session, plan.id, PlanStatus.BUDGET_EXHAUSTED, reason, db_now(session))
        return BudgetStop(FailureClass.INTERRUPTED, reason)
    return None


def check_plan_budget(session: Session, plan_id: str, cap: Budget, now: datetime) -> bool:
    """Before dispatch: True if the plan may dispatch; else it is held as budget_exhausted (with the figures)."""
    if not cap:
        return True
    spent = plan_spend(session, plan_id)
    if not exhausted(spent, cap):
        return True
    hold_plan(session, plan_id, PlanStatus.BUDGET_EXHAUSTED, f"plan budget spent: {describe(spent, cap)}", now)
    return False


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


_PENDING_EVENTS = "orch.pending_events"


def _events(session: Session, rows: list[dict[str, Any]]) -> None:
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
    write_pending_events(session)
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


def recent_outcomes(session: Session, agent: str, limit: int) -> list[tuple[AttemptStatus, str | None]]:
    """An agent type's latest finished attempts across every plan, newest first."""
    rows = session.execute(
        select(AttemptRow.status, AttemptRow.failure_class)
        .join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
        .where(TaskRow.agent == agent, AttemptRow.finished_at.is_not(None))
        .order_by(AttemptRow.finished_at.desc(), AttemptRow.pk.desc())
        .limit(limit)
    )
    return [(status, failure) for status, failure in rows]


def active_pauses(session: Session, now: datetime) -> dict[str, AgentPauseRow]:
    rows = session.scalars(select(AgentPauseRow).where(AgentPauseRow.until > now))
    return {row.agent: row for row in rows}
