"""What `orch exporter` and `orch check` read from the store: typed reads, each a grouped query over an index or a
primary-key range, so what one costs does not grow with the store's history (orch.services.exporter combines
them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Float,
    Table,
    and_,
    case,
    create_engine,
    false,
    func,
    not_,
    or_,
    select,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from orch.budget import Budget, Spend
from orch.errors import ServiceUnavailable
from orch.redaction import safe_url
from orch.states import MERGE_OPEN, PLAN_FINAL, AttemptStatus, MergePhase, PlanStatus, TaskStatus
from orch.store.db import get_engine
from orch.store.models import AttemptRow, IntegrationRow, MergeRequestRow, PlanRow, TaskRow
from orch.store.spend import SPENT

_TASKS = cast(Table, TaskRow.__table__)
_ATTEMPTS = cast(Table, AttemptRow.__table__)
_PLANS = cast(Table, PlanRow.__table__)
_MERGES = cast(Table, MergeRequestRow.__table__)
_INTEGRATIONS = cast(Table, IntegrationRow.__table__)
_A, _T, _P, _M, _I = _ATTEMPTS.c, _TASKS.c, _PLANS.c, _MERGES.c, _INTEGRATIONS.c
_OF_TASK = _T.pk == _A.task_pk

PLAN_OPEN = frozenset(PlanStatus) - PLAN_FINAL  # running or held
# Costs are summed as whole nano-dollars: integer sums are the same whichever attempts they group, so a counter
# built from them by parts (folded + live) cannot drop by a float rounding as attempts move between the parts.
NANO_USD_PER_USD = 1_000_000_000


# --- connecting -------------------------------------------------------------------------------------------


def missing_sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (any driver: sqlite://, sqlite+pysqlite://) when it does not exist; connecting
    would create it."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.query.get("uri") or parsed.database.startswith("file:"):
        return None
    path = Path(parsed.database)
    return None if path.is_file() else path


def reader_engine(url: str, connect_timeout: float) -> Engine:
    """An engine to read the store with, never creating or migrating it. PostgreSQL: no pool (a fresh connection
    per use, so a server that hangs costs `connect_timeout`, libpq's whole seconds, at least 2); SQLite: the
    process's engine, once its file exists."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if missing_sqlite_file(url) is not None:
            raise ServiceUnavailable(f"{safe_url(url)}: no such database file (`orch db upgrade` creates it)")
        return get_engine(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = max(2, round(connect_timeout))
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


@contextmanager
def snapshot_session(engine: Engine, statement_timeout: float | None) -> Iterator[Session]:
    """A read-only transaction in which every query sees the same snapshot: REPEATABLE READ on PostgreSQL, with
    each statement cancelled after `statement_timeout` seconds (None: no limit); on SQLite a read transaction
    (WAL) does that by itself."""
    with Session(engine) as session:
        if engine.dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            limit = "0" if statement_timeout is None else f"{max(1, round(statement_timeout * 1000))}ms"
            session.execute(select(func.set_config("statement_timeout", limit, True)))
        yield session


# --- SQL helpers --------------------------------------------------------------------------------------------


def bucket_index(value: ColumnElement[float], bounds: Sequence[float]) -> ColumnElement[int]:
    """SQL: the index of the first bucket whose bound is >= value (len(bounds) above them all)."""
    return case(*((value <= bound, index) for index, bound in enumerate(bounds)), else_=len(bounds))


class _Seconds(FunctionElement[float]):
    """Seconds from the first timestamp to the second, in SQL."""

    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(_Seconds, "postgresql")
def _postgres_seconds(element: _Seconds, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


@compiles(_Seconds, "sqlite")
def _sqlite_seconds(element: _Seconds, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


# --- attempts -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSet:
    """Rows by primary key: those in (after, upto] (upto None: every one after), plus `also`, except `but_not`;
    with `finished_before`, only those that finished before that moment. Every read below is a scan of the
    primary key (attempts: joined to their task by primary key)."""

    after: int = 0
    upto: int | None = None
    also: frozenset[int] = frozenset()
    but_not: frozenset[int] = frozenset()
    finished_before: datetime | None = None

    def where_on(self, pk: ColumnElement[int], finished_at: ColumnElement[datetime]) -> ColumnElement[bool]:
        in_range = pk > self.after if self.upto is None else and_(pk > self.after, pk <= self.upto)
        conditions = [or_(in_range, _pk_in(pk, self.also))]
        if self.but_not:
            conditions.append(not_(_pk_in(pk, self.but_not)))
        if self.finished_before is not None:
            conditions.append(finished_at < self.finished_before)
        return and_(*conditions)


class AttemptSet(RowSet):
    """Attempts (see RowSet)."""

    def where(self) -> ColumnElement[bool]:
        return self.where_on(_A.pk, _A.finished_at)


class MergeSet(RowSet):
    """Merge requests (see RowSet); `finished_at` is when a merger closed the request."""

    def where(self) -> ColumnElement[bool]:
        return self.where_on(_M.pk, _M.finished_at)


def _pk_in(pk: ColumnElement[int], pks: frozenset[int]) -> ColumnElement[bool]:
    return pk.in_(sorted(pks)) if pks else false()


@dataclass(frozen=True)
class AttemptOutcomes:
    """Attempts of one agent type and queue that are in one status with one failure class ("" for none)."""

    agent: str
    queue: str
    status: AttemptStatus
    failure_class: str
    count: int
    retries: int  # of them, attempts after their task's first
    tokens: tuple[int, int, int, int]  # input, output, cache creation, cache read
    cost_nano_usd: int


def attempt_outcomes(session: Session, attempts: AttemptSet) -> list[AttemptOutcomes]:
    failure = func.coalesce(_A.failure_class, "")
    rows = session.execute(
        select(
            _T.agent,
            _T.queue,
            _A.status,
            failure,
            func.count(),
            func.sum(case((_A.number > 1, 1), else_=0)),
            func.sum(_A.input_tokens),
            func.sum(_A.output_tokens),
            func.sum(_A.cache_creation_tokens),
            func.sum(_A.cache_read_tokens),
            func.sum(sql_cast(func.round(_A.cost_usd * NANO_USD_PER_USD), BigInteger)),
        )
        .join_from(_ATTEMPTS, _TASKS, _OF_TASK)
        .where(attempts.where())
        .group_by(_T.agent, _T.queue, _A.status, failure)
    )
    return [
        AttemptOutcomes(
            agent,
            queue,
            AttemptStatus(status),
            failure_class,
            int(count),
            int(retries or 0),
            (int(inputs or 0), int(outputs or 0), int(created or 0), int(read or 0)),
            int(cost or 0),
        )
        for agent, queue, status, failure_class, count, retries, inputs, outputs, created, read, cost in rows
    ]


@dataclass(frozen=True)
class BucketCount:
    """Observations of one agent type, queue and (for run times) status that fell into histogram bucket
    `index`, and their sum."""

    agent: str
    queue: str
    status: str  # "" for start latencies
    index: int
    count: int
    total: float


def run_time_buckets(session: Session, attempts: AttemptSet, bounds: Sequence[float]) -> list[BucketCount]:
    """Finished attempts' run time, claim to recorded end."""
    ran = _Seconds(_A.started_at, _A.finished_at)
    index = bucket_index(ran, bounds)
    rows = session.execute(
        select(_T.agent, _T.queue, _A.status, index, func.count(), func.sum(ran))
        .join_from(_ATTEMPTS, _TASKS, _OF_TASK)
        .where(attempts.where(), _A.finished_at.is_not(None))
        .group_by(_T.agent, _T.queue, _A.status, index)
    )
    return [BucketCount(a, q, str(s), int(i), int(c), float(t or 0.0)) for a, q, s, i, c, t in rows]


def start_latency_buckets(session: Session, attempts: AttemptSet, bounds: Sequence[float]) -> list[BucketCount]:
    """Ready to started: from dispatch queueing the task to a worker's claim."""
    waited = _Seconds(_A.queued_at, _A.started_at)
    index = bucket_index(waited, bounds)
    rows = session.execute(
        select(_T.agent, _T.queue, index, func.count(), func.sum(waited))
        .join_from(_ATTEMPTS, _TASKS, _OF_TASK)
        .where(attempts.where(), _A.queued_at.is_not(None))
        .group_by(_T.agent, _T.queue, index)
    )
    return [BucketCount(a, q, "", int(i), int(c), float(t or 0.0)) for a, q, i, c, t in rows]


def spend_by_plan(session: Session, attempts: AttemptSet, plan_ids: Collection[str] | None = None) -> dict[str, Spend]:
    """What the attempts spent, per plan (running ones as far as their heartbeats reported), as
    `spend.plan_spend` counts it; only the plans `plan_ids` when given."""
    query = select(_T.plan_id, *SPENT).join_from(_ATTEMPTS, _TASKS, _OF_TASK).where(attempts.where())
    if plan_ids is not None:
        query = query.where(_T.plan_id.in_(sorted(plan_ids)))
    rows = session.execute(query.group_by(_T.plan_id))
    return {plan_id: Spend(float(usd or 0.0), int(tokens or 0)) for plan_id, usd, tokens in rows}


def last_started_before(session: Session, after: int, moment: datetime) -> int | None:
    """The highest primary key above `after` of an attempt claimed before `moment`."""
    found = session.scalar(select(func.max(_A.pk)).where(_A.pk > after, _A.started_at < moment))
    return None if found is None else int(found)


def unfinished_before(session: Session, attempts: AttemptSet, moment: datetime) -> frozenset[int]:
    """The attempts among `attempts` that had not finished before `moment` (running, or finished since)."""
    late = or_(_A.finished_at.is_(None), _A.finished_at >= moment)
    return frozenset(int(pk) for pk in session.scalars(select(_A.pk).where(attempts.where(), late)))


# --- plans, tasks and workers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRef:
    id: str
    name: str
    status: PlanStatus
    created_at: datetime
    finished_at: datetime | None
    budget: Budget

    @property
    def final(self) -> bool:
        return self.status in PLAN_FINAL


TaskCounts = dict[tuple[str, str], int]  # (agent type, task state) -> tasks
_PLAN_COLUMNS = (_P.id, _P.name, _P.status, _P.created_at, _P.finished_at, _P.budget_usd, _P.budget_tokens)


def plans_in_scope(session: Session, recent: int) -> list[PlanRef]:
    """Every plan that is running or held (`status IN` those statuses: the status index), and the `recent` most
    recently finished. Nothing else, however many plans the store holds."""
    rows = list(session.execute(select(*_PLAN_COLUMNS).where(_P.status.in_(sorted(PLAN_OPEN)))))
    if recent > 0:
        rows += session.execute(
            select(*_PLAN_COLUMNS)
            .where(_P.status.in_(sorted(PLAN_FINAL)))
            .order_by(_P.finished_at.desc(), _P.id)
            .limit(recent)
        )
    return [
        PlanRef(plan_id, name, PlanStatus(status), created, finished, Budget(usd, tokens))
        for plan_id, name, status, created, finished, usd, tokens in rows
    ]


def task_counts(session: Session, plan_ids: Sequence[str]) -> dict[str, TaskCounts]:
    """Tasks per plan, agent type and state: one grouped query over the plans' rows (the plan_id index)."""
    counts: dict[str, TaskCounts] = {plan_id: {} for plan_id in plan_ids}
    if plan_ids:
        for plan_id, agent, status, count in session.execute(
            select(_T.plan_id, _T.agent, _T.status, func.count())
            .where(_T.plan_id.in_(plan_ids))
            .group_by(_T.plan_id, _T.agent, _T.status)
        ):
            counts[plan_id][(agent, str(status))] = int(count)
    return counts


def running_attempts_by_worker(session: Session) -> Counter[str]:
    """Attempts running on each worker (its Celery node name), by the running tasks' current attempts."""
    rows = session.execute(
        select(_A.worker, func.count())
        .join_from(_TASKS, _ATTEMPTS, and_(_OF_TASK, _A.number == _T.attempt))
        .where(_T.status == TaskStatus.RUNNING)
        .group_by(_A.worker)
    )
    return Counter({str(worker): int(count) for worker, count in rows})


def queued_tasks_by_queue(session: Session) -> dict[str, int]:
    """Tasks in state `queued`, per broker queue (the status index)."""
    rows = session.execute(
        select(_T.queue, func.count()).where(_T.status == TaskStatus.QUEUED).group_by(_T.queue)
    ).all()
    return {str(queue): int(count) for queue, count in rows}


# --- the merge queue and worktrees ------------------------------------------------------------------------

# How a closed merge request went, once and for all: a request that conflicted stays `conflicted` when a
# resolution task later lands its work (its phase then reads `merged`), so a counter by outcome never drops.
MERGE_OUTCOME: ColumnElement[str] = case(
    (or_(_M.phase == MergePhase.CONFLICTED, _M.resolved_by.is_not(None)), MergePhase.CONFLICTED.value),
    else_=_M.phase,
)


@dataclass(frozen=True)
class MergeOutcomes:
    """Closed merge requests with one outcome; `resolutions`: of them, those of conflict-resolution tasks."""

    outcome: str
    count: int
    resolutions: int


def merge_outcomes(session: Session, requests: MergeSet) -> list[MergeOutcomes]:
    rows = session.execute(
        select(MERGE_OUTCOME, func.count(), func.sum(case((_T.resolves.is_not(None), 1), else_=0)))
        .join_from(_MERGES, _TASKS, _T.pk == _M.task_pk)
        .where(requests.where(), _M.finished_at.is_not(None))
        .group_by(MERGE_OUTCOME)
    )
    return [MergeOutcomes(str(outcome), int(count), int(resolutions or 0)) for outcome, count, resolutions in rows]


def merge_wait_buckets(session: Session, requests: MergeSet, bounds: Sequence[float]) -> list[BucketCount]:
    """Closed requests that a merger began: queued (enqueued_at) to the begin of the merge that closed them."""
    waited = _Seconds(_M.enqueued_at, _M.started_at)
    index = bucket_index(waited, bounds)
    rows = session.execute(
        select(index, func.count(), func.sum(waited))
        .where(requests.where(), _M.finished_at.is_not(None), _M.started_at.is_not(None))
        .group_by(index)
    )
    return [BucketCount("", "", "", int(i), int(c), float(t or 0.0)) for i, c, t in rows]


def merge_duration_buckets(session: Session, requests: MergeSet, bounds: Sequence[float]) -> list[BucketCount]:
    """Closed requests that a merger began: the begin of the merge (gates included) to its recorded end, by
    outcome (in `status`)."""
    took = _Seconds(_M.started_at, _M.finished_at)
    index = bucket_index(took, bounds)
    rows = session.execute(
        select(MERGE_OUTCOME, index, func.count(), func.sum(took))
        .where(requests.where(), _M.finished_at.is_not(None), _M.started_at.is_not(None))
        .group_by(MERGE_OUTCOME, index)
    )
    return [BucketCount("", "", str(o), int(i), int(c), float(t or 0.0)) for o, i, c, t in rows]


def last_enqueued_before(session: Session, after: int, moment: datetime) -> int | None:
    """The highest primary key above `after` of a merge request enqueued before `moment`."""
    found = session.scalar(select(func.max(_M.pk)).where(_M.pk > after, _M.enqueued_at < moment))
    return None if found is None else int(found)


def merges_unfinished_before(session: Session, requests: MergeSet, moment: datetime) -> frozenset[int]:
    """The requests among `requests` that had not closed before `moment` (open, or closed since)."""
    late = or_(_M.finished_at.is_(None), _M.finished_at >= moment)
    return frozenset(int(pk) for pk in session.scalars(select(_M.pk).where(requests.where(), late)))


@dataclass(frozen=True)
class OpenMerges:
    """A plan's merge requests in one open phase (queued, merging) and when the oldest of them was enqueued."""

    plan_id: str
    phase: MergePhase
    count: int
    oldest: datetime


def open_merges(session: Session, plan_ids: Sequence[str]) -> list[OpenMerges]:
    """Open merge requests of the plans `plan_ids`, through their integrations (the merge queue's index on
    integration and phase), so the read does not grow with the requests already closed."""
    if not plan_ids:
        return []
    rows = session.execute(
        select(_I.plan_id, _M.phase, func.count(), func.min(_M.enqueued_at))
        .join_from(_INTEGRATIONS, _MERGES, _M.integration_pk == _I.pk)
        .where(_I.plan_id.in_(sorted(plan_ids)), _M.phase.in_(sorted(MERGE_OPEN)))
        .group_by(_I.plan_id, _M.phase)
    )
    return [OpenMerges(str(plan_id), MergePhase(phase), int(count), oldest) for plan_id, phase, count, oldest in rows]


def plans_with_integrations(session: Session, plan_ids: Sequence[str]) -> frozenset[str]:
    """Those of `plan_ids` that have a repository (an integration branch): the plans the queue gauges cover."""
    if not plan_ids:
        return frozenset()
    found = session.scalars(select(_I.plan_id).where(_I.plan_id.in_(sorted(plan_ids))).distinct())
    return frozenset(str(plan_id) for plan_id in found)


def live_worktrees(session: Session) -> Counter[str]:
    """Running attempts that work in a worktree, per agent type: the running tasks' current attempts (the tasks'
    status index), those with a worktree recorded."""
    rows = session.execute(
        select(_T.agent, func.count())
        .join_from(_TASKS, _ATTEMPTS, and_(_OF_TASK, _A.number == _T.attempt))
        .where(_T.status == TaskStatus.RUNNING, _A.status == AttemptStatus.RUNNING, _A.worktree.is_not(None))
        .group_by(_T.agent)
    )
    return Counter({str(agent): int(count) for agent, count in rows})
