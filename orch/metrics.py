"""Prometheus metrics computed from the SQL store when Prometheus scrapes (`orch exporter`).

Every figure is read from the store (queue depth from the broker) at scrape time, so it is right across any
number of worker processes and hosts and survives their restarts: no in-process counters, no prefork
multiprocess mode. What keeps a scrape's cost independent of how much history the store holds:

- attempts: an attempt that finished more than `SETTLE_SECONDS` ago never changes again, so it is folded into
  running totals once, by primary-key range. A scrape reads only the attempts started since the last fold plus
  those still unsettled (running ones), by primary key. The first scrape after the exporter starts reads the
  history once; `serve` does it before it listens.
- tasks per plan: only plans that are running or held, plus the `ORCH_EXPORTER_RECENT_PLANS` most recently
  finished, whose counts are read once and kept while they stay among them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Float, Table, and_, case, false, func, not_, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from orch.agents import load_agents
from orch.breaker import CIRCUIT_OPEN
from orch.budget import Budget, Spend
from orch.celery import RUN_TASK
from orch.errors import ConfigInvalid, ServiceUnavailable
from orch.log import get_logger
from orch.settings import Settings
from orch.states import PLAN_FINAL, AttemptStatus, PlanStatus, TaskStatus
from orch.store import repo
from orch.store.db import read_session
from orch.store.models import AttemptRow, PlanRow, TaskRow

log = get_logger("orch.metrics")

_TASKS = cast(Table, TaskRow.__table__)
_ATTEMPTS = cast(Table, AttemptRow.__table__)
_PLANS = cast(Table, PlanRow.__table__)

# An attempt finished this long ago is final: folded into the totals and never read again. It also bounds how
# long a claim's transaction may stay uncommitted while attempts after it are already visible.
SETTLE_SECONDS = 60.0
BROKER_TIMEOUT_SECONDS = 5.0

# Agent runs take seconds (shell) to hours (an AI agent); the wait for a worker is milliseconds to minutes.
DURATION_BUCKETS = (
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
)  # fmt: skip
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

TOKEN_KINDS = ("input", "output", "cache_creation", "cache_read")
PAUSE_CAUSES = ("circuit_breaker", "usage_limit")
FAILED_ATTEMPTS = frozenset({AttemptStatus.FAILED, AttemptStatus.LOST})  # celery_task_failed


# --- what is exposed ------------------------------------------------------------------------------------

Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    def family(self) -> Metric:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        if self.kind == "histogram":
            return HistogramMetricFamily(self.name, self.help, labels=self.labels)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)

    @property
    def sample_names(self) -> tuple[str, ...]:
        """The names the exposition carries (what a PromQL expression may use)."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        return (self.name,)


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("orch_store_up", "gauge", "1 if the store answered this scrape, else 0 (its figures are then absent)"),
    MetricSpec("orch_broker_up", "gauge", "1 if the broker answered this scrape, else 0 (queue lengths are absent)"),
    MetricSpec(
        "orch_plan_info",
        "gauge",
        "1 per plan in scope: running or held, and the ORCH_EXPORTER_RECENT_PLANS most recently finished",
        ("plan", "name", "status"),
    ),
    MetricSpec(
        "orch_tasks", "gauge", "Tasks by state, per agent type and plan in scope", ("plan", "agent_type", "state")
    ),
    MetricSpec("orch_attempts_started", "counter", "Attempts claimed by a worker", ("agent_type",)),
    MetricSpec(
        "orch_attempts_finished",
        "counter",
        "Attempts finished, by how they ended: succeeded, failed, lost, interrupted, cancelled",
        ("agent_type", "status"),
    ),
    MetricSpec(
        "orch_attempt_failures",
        "counter",
        "Finished attempts with a failure class (orch/failures.py)",
        ("agent_type", "failure_class"),
    ),
    MetricSpec(
        "orch_tokens",
        "counter",
        "Tokens used by attempts (running ones as far as their heartbeats reported), by kind",
        ("agent_type", "kind"),
    ),
    MetricSpec(
        "orch_cost_usd",
        "counter",
        "Cost in USD of attempts: the agent's own report, else tokens priced by config/prices.yaml (unpriced: 0)",
        ("agent_type",),
    ),
    MetricSpec(
        "orch_attempt_start_latency_seconds",
        "histogram",
        "Ready to started: from dispatch queueing the ready task to a worker claiming the attempt",
        ("agent_type",),
    ),
    MetricSpec(
        "orch_attempt_duration_seconds",
        "histogram",
        "Run time of finished attempts, from the claim to the recorded end",
        ("agent_type", "status"),
    ),
    MetricSpec(
        "orch_plan_budget_remaining_usd",
        "gauge",
        "USD left of the budget of a running or held plan (negative: running attempts overspent it)",
        ("plan",),
    ),
    MetricSpec(
        "orch_plan_budget_remaining_tokens",
        "gauge",
        "Tokens left of the budget of a running or held plan (negative: running attempts overspent it)",
        ("plan",),
    ),
    MetricSpec(
        "orch_agent_paused",
        "gauge",
        "1 while an agent type's dispatch is paused, by cause (circuit_breaker, usage_limit), else 0",
        ("agent_type", "cause"),
    ),
    MetricSpec(
        "orch_agent_pause_remaining_seconds",
        "gauge",
        "Seconds until a paused agent type dispatches again (0 when not paused)",
        ("agent_type", "cause"),
    ),
    MetricSpec(
        "orch_queue_length",
        "gauge",
        "Messages waiting in an agent type's broker queue (Redis: every priority sub-list), not yet taken by a worker",
        ("queue", "agent_type"),
    ),
    # danihodovic/celery-exporter's names, where their meaning holds (labels: no `hostname` on the counters:
    # worker names change with every pod, and the counters here live as long as the store's history)
    MetricSpec("celery_queue_length", "gauge", "Messages waiting in a broker queue", ("queue_name",)),
    MetricSpec(
        "celery_active_consumer_count",
        "gauge",
        "Consumers of a broker queue (RabbitMQ only: Redis cannot tell)",
        ("queue_name",),
    ),
    MetricSpec("celery_task_started", "counter", "Task executions started (orch attempts)", ("name", "queue_name")),
    MetricSpec("celery_task_succeeded", "counter", "Attempts that succeeded", ("name", "queue_name")),
    MetricSpec(
        "celery_task_failed",
        "counter",
        "Attempts that failed or were lost; exception: the failure class",
        ("name", "queue_name", "exception"),
    ),
    MetricSpec("celery_task_retried", "counter", "Retries: attempts after a task's first", ("name", "queue_name")),
    MetricSpec("celery_task_revoked", "counter", "Attempts cancelled by an operator", ("name", "queue_name")),
    MetricSpec("celery_task_runtime", "histogram", "Run time of succeeded attempts", ("name", "queue_name")),
    MetricSpec(
        "celery_worker_tasks_active",
        "gauge",
        "Attempts running on each worker (Celery node name), by the store's leases; an idle worker is absent",
        ("hostname",),
    ),
)
SPEC = {spec.name: spec for spec in SPECS}


def exposed_sample_names() -> frozenset[str]:
    return frozenset(name for spec in SPECS for name in spec.sample_names)


# --- histograms -------------------------------------------------------------------------------------------


@dataclass
class Buckets:
    """Observations per bucket (not cumulative; index len(bounds) is +Inf) and their sum."""

    counts: list[int]
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> Buckets:
        return cls([0] * (len(bounds) + 1))

    def add(self, other: Buckets) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total


def cumulative_buckets(counts: Sequence[int], bounds: Sequence[float]) -> list[tuple[str, float]]:
    """Prometheus' cumulative `le` buckets from per-bucket counts (the last count is above every bound)."""
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(counts)} counts for {len(bounds)} bounds; expected one more count than bounds")
    running = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip([*map(float, bounds), float("inf")], counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return buckets


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


# --- attempts: folded totals plus the live window ----------------------------------------------------------

AgentQueue = tuple[str, str]


@dataclass
class AttemptTally:
    """Sums over a set of attempts, keyed by their task's agent type and queue (spend: by plan)."""

    outcomes: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)  # agent, queue, status, class
    retries: Counter[AgentQueue] = field(default_factory=Counter)
    tokens: Counter[tuple[str, str]] = field(default_factory=Counter)  # agent, kind
    cost: dict[str, float] = field(default_factory=dict)
    durations: dict[tuple[str, str, str], Buckets] = field(default_factory=dict)  # agent, queue, status
    latencies: dict[AgentQueue, Buckets] = field(default_factory=dict)
    spend: dict[str, Spend] = field(default_factory=dict)  # plan -> what its attempts spent (repo.plan_spend)

    def add(self, other: AttemptTally) -> None:
        self.outcomes.update(other.outcomes)
        self.retries.update(other.retries)
        self.tokens.update(other.tokens)
        for agent, usd in other.cost.items():
            self.cost[agent] = self.cost.get(agent, 0.0) + usd
        _add_buckets(self.durations, other.durations, DURATION_BUCKETS)
        _add_buckets(self.latencies, other.latencies, LATENCY_BUCKETS)
        for plan_id, spent in other.spend.items():
            self.spend[plan_id] = _plus(self.spend.get(plan_id, Spend()), spent)

    def plus(self, other: AttemptTally) -> AttemptTally:
        total = AttemptTally()
        total.add(self)
        total.add(other)
        return total


def _plus(a: Spend, b: Spend) -> Spend:
    return Spend(a.usd + b.usd, a.tokens + b.tokens)


def _add_buckets(into: dict[Any, Buckets], other: Mapping[Any, Buckets], bounds: Sequence[float]) -> None:
    for key, buckets in other.items():
        into.setdefault(key, Buckets.empty(bounds)).add(buckets)


_A, _T = _ATTEMPTS.c, _TASKS.c
_OF_TASK = _T.pk == _A.task_pk
_TOKENS = _A.input_tokens + _A.output_tokens + _A.cache_creation_tokens + _A.cache_read_tokens


def tally_attempts(session: Session, which: ColumnElement[bool]) -> AttemptTally:
    """Aggregate the attempts `which` selects: grouped queries, each joined to the task by primary key."""
    tally = AttemptTally()
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
            func.sum(_A.cost_usd),
        )
        .join_from(_ATTEMPTS, _TASKS, _OF_TASK)
        .where(which)
        .group_by(_T.agent, _T.queue, _A.status, failure)
    )
    for agent, queue, status, failure_class, count, retries, *usage, cost in rows:
        tally.outcomes[(agent, queue, str(status), failure_class)] += int(count)
        tally.retries[(agent, queue)] += int(retries or 0)
        for kind, tokens in zip(TOKEN_KINDS, usage, strict=True):
            tally.tokens[(agent, kind)] += int(tokens or 0)
        tally.cost[agent] = tally.cost.get(agent, 0.0) + float(cost or 0.0)

    ran = _Seconds(_A.started_at, _A.finished_at)
    ran_bucket = bucket_index(ran, DURATION_BUCKETS)
    for agent, queue, status, index, count, total in session.execute(
        select(_T.agent, _T.queue, _A.status, ran_bucket, func.count(), func.sum(ran))
        .join_from(_ATTEMPTS, _TASKS, _OF_TASK)
        .where(which, _A.finished_at.is_not(None))
        .group_by(_T.agent, _T.queue, _A.status, ran_bucket)
    ):
        _observe(tally.durations, (agent, queue, str(status)), DURATION_BUCKETS, index, count, total)

    waited = _Seconds(_A.queued_at, _A.started_at)
    waited_bucket = bucket_index(waited, LATENCY_BUCKETS)
    for agent, queue, index, count, total in session.execute(
        select(_T.agent, _T.queue, waited_bucket, func.count(), func.sum(waited))
        .join_from(_ATTEMPTS, _TASKS, _OF_TASK)
        .where(which, _A.queued_at.is_not(None))
        .group_by(_T.agent, _T.queue, waited_bucket)
    ):
        _observe(tally.latencies, (agent, queue), LATENCY_BUCKETS, index, count, total)

    tally.spend = spend_by_plan(session, which)
    return tally


def spend_by_plan(session: Session, which: ColumnElement[bool]) -> dict[str, Spend]:
    rows = session.execute(
        select(_T.plan_id, func.sum(_A.cost_usd), func.sum(_TOKENS))
        .join_from(_ATTEMPTS, _TASKS, _OF_TASK)
        .where(which)
        .group_by(_T.plan_id)
    )
    return {plan_id: Spend(float(usd or 0.0), int(tokens or 0)) for plan_id, usd, tokens in rows}


def _observe(
    into: dict[Any, Buckets], key: Any, bounds: Sequence[float], index: int, count: int, total: float | None
) -> None:
    buckets = into.setdefault(key, Buckets.empty(bounds))
    buckets.counts[int(index)] += int(count)
    buckets.total += float(total or 0.0)


@dataclass
class AttemptLedger:
    """Running totals of every attempt: settled ones folded in once, the rest read at each scrape.

    Folded: every attempt with primary key <= `folded_upto`, except those in `held` (they had not settled when
    their range was folded; each is folded once it has). Only a range whose last attempt started more than the
    settle period ago is folded, so an attempt still uncommitted below it (a claim's transaction takes
    milliseconds) is not skipped. Spend by plan is kept only for the plans the caller tracks (those not
    finished), so the ledger's size does not grow with history either."""

    settle: timedelta = timedelta(seconds=SETTLE_SECONDS)
    folded_upto: int = 0
    held: frozenset[int] = frozenset()
    folded: AttemptTally = field(default_factory=AttemptTally)
    tracked: frozenset[str] = frozenset()
    last_scrape: datetime | None = None

    def totals(self, session: Session, now: datetime, plans: Mapping[str, datetime]) -> AttemptTally:
        """Run in one snapshot (a repeatable-read transaction), so no attempt is counted twice or missed.
        `plans`: the plans whose spend to keep, with when each was created."""
        cutoff = now - self.settle
        already_folded = and_(_A.pk <= self.folded_upto, not_(_pk_in(self.held)))
        # A plan new to the ledger but older than its last scrape (a failed plan reopened): what was folded of it,
        # read once. A plan created since has nothing folded yet (the settle period covers the submitter's clock).
        recovered = {
            plan_id: spend_by_plan(session, and_(already_folded, _T.plan_id == plan_id)).get(plan_id, Spend())
            for plan_id, created in plans.items()
            if plan_id not in self.tracked and self.last_scrape is not None and created <= self.last_scrape
        }
        fold_end = session.scalar(
            select(func.max(_A.pk)).where(_A.pk > self.folded_upto, _A.started_at < cutoff)
        ) or int(self.folded_upto)
        reviewed = or_(and_(_A.pk > self.folded_upto, _A.pk <= fold_end), _pk_in(self.held))
        settled = and_(_A.finished_at.is_not(None), _A.finished_at < cutoff)
        newly_folded = tally_attempts(session, and_(reviewed, settled))
        still_held = frozenset(session.scalars(select(_A.pk).where(reviewed, not_(settled))))
        live = tally_attempts(session, or_(_A.pk > fold_end, _pk_in(still_held)))
        # Every query succeeded: only now does the ledger move on.
        self.folded.spend.update(recovered)
        self.folded.add(newly_folded)
        self.folded.spend = {plan_id: self.folded.spend.get(plan_id, Spend()) for plan_id in plans}
        self.folded_upto, self.held, self.tracked, self.last_scrape = fold_end, still_held, frozenset(plans), now
        return self.folded.plus(live)


def _pk_in(pks: frozenset[int]) -> ColumnElement[bool]:
    return _A.pk.in_(sorted(pks)) if pks else false()


# --- tasks per plan, for a bounded set of plans ------------------------------------------------------------


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
_PLAN_COLUMNS = (
    _PLANS.c.id, _PLANS.c.name, _PLANS.c.status, _PLANS.c.created_at, _PLANS.c.finished_at,
    _PLANS.c.budget_usd, _PLANS.c.budget_tokens,
)  # fmt: skip


def plans_in_scope(session: Session, recent: int) -> list[PlanRef]:
    """The plans whose tasks get a `plan` label: every running or held plan (by the status index), and the
    `recent` most recently finished. Nothing else, however many plans the store holds."""
    rows = list(session.execute(select(*_PLAN_COLUMNS).where(_PLANS.c.status.not_in(PLAN_FINAL))))
    if recent > 0:
        rows += session.execute(
            select(*_PLAN_COLUMNS)
            .where(_PLANS.c.status.in_(PLAN_FINAL))
            .order_by(_PLANS.c.finished_at.desc(), _PLANS.c.id)
            .limit(recent)
        )
    return [
        PlanRef(plan_id, name, PlanStatus(status), created, finished, Budget(usd, tokens))
        for plan_id, name, status, created, finished, usd, tokens in rows
    ]


def load_task_counts(session: Session, plan_ids: Sequence[str]) -> dict[str, TaskCounts]:
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


@dataclass
class PlanCounts:
    """Task counts of the plans in scope. A finished plan's counts no longer change, so they are read once and
    kept while the plan stays in scope (a plan reopened by `orch retry` is live again and re-read)."""

    finished: dict[str, tuple[PlanRef, TaskCounts]] = field(default_factory=dict)

    def refresh(
        self, plans: Sequence[PlanRef], load: Callable[[Sequence[str]], dict[str, TaskCounts]]
    ) -> dict[str, TaskCounts]:
        known = {
            plan.id: self.finished[plan.id][1]
            for plan in plans
            if plan.final and plan.id in self.finished and self.finished[plan.id][0] == plan
        }
        missing = [plan.id for plan in plans if plan.id not in known]
        loaded = load(missing) if missing else {}
        counts = {**known, **loaded}
        self.finished = {plan.id: (plan, counts[plan.id]) for plan in plans if plan.final}
        return counts


# --- agent pauses -------------------------------------------------------------------------------------------


def pause_cause(reason: str) -> str:
    """circuit_breaker for a pause the breaker set (orch/breaker.py), else usage_limit (a provider's quota)."""
    return "circuit_breaker" if reason.startswith(CIRCUIT_OPEN) else "usage_limit"


# --- the broker -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    messages: int
    consumers: int | None  # None: the broker cannot tell (Redis)


def queue_depths(broker_url: str, queues: Iterable[str], timeout: float = BROKER_TIMEOUT_SECONDS) -> list[QueueDepth]:
    """Each queue's waiting messages by a passive declare: kombu sums Celery's priority sub-lists on Redis, and
    RabbitMQ returns its ready count and consumers. A queue the broker does not hold has none waiting."""
    with _connection(broker_url) as probe:
        is_amqp = probe.transport.driver_type == "amqp"
    options = {} if is_amqp else {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    with _connection(broker_url, connect_timeout=timeout, transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, interval_max=0)
        depths = []
        channel = None
        try:
            for queue in queues:
                channel = channel or conn.channel()
                try:
                    declared = channel.queue_declare(queue=queue, passive=True)
                    messages, consumers = int(declared.message_count), int(declared.consumer_count)
                except conn.channel_errors as exc:
                    if not _not_found(exc):
                        raise
                    messages, consumers = 0, 0
                    if is_amqp:  # RabbitMQ closes a channel on a failed declare
                        _close(conn, channel)
                        channel = None
                depths.append(QueueDepth(queue, messages, consumers if is_amqp else None))
        finally:
            if channel is not None:
                _close(conn, channel)
        return depths


def _close(conn: Any, channel: Any) -> None:
    with contextlib.suppress(*conn.channel_errors, *conn.connection_errors):
        channel.close()


def _not_found(exc: BaseException) -> bool:
    return getattr(exc, "code", None) == 404 or "NOT_FOUND" in str(exc)


def _connection(url: str, **options: Any) -> Any:
    from kombu import Connection  # type: ignore[attr-defined]

    return Connection(url, **options)  # type: ignore[no-untyped-call]


def safe_broker_url(url: str) -> str:
    return str(_connection(url).as_uri())  # password masked


# --- the collector ----------------------------------------------------------------------------------------


@dataclass
class StoreSnapshot:
    """What one scrape read from the store."""

    plans: list[PlanRef]
    task_counts: dict[str, TaskCounts]
    attempts: AttemptTally
    budgets: dict[str, tuple[Budget, Spend]]
    pauses: dict[str, tuple[str, float]]  # agent -> (cause, seconds left)
    active: Counter[str]  # worker -> running attempts


class StoreCollector(Collector):
    """A prometheus_client collector: every scrape reads the store and the broker and yields metric families."""

    def __init__(self, settings: Settings, settle_seconds: float = SETTLE_SECONDS) -> None:
        self.settings = settings
        self.registry = load_agents(settings.config_dir)
        self.ledger = AttemptLedger(settle=timedelta(seconds=settle_seconds))
        self.plan_counts = PlanCounts()
        self._lock = threading.Lock()  # one scrape at a time: the ledger and caches move on with each

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = self._read_store()
            depths = self._read_broker()
        families = {spec.name: spec.family() for spec in SPECS}
        self._add_up(families, snapshot is not None, depths is not None)
        if snapshot is not None:
            self._add_store(families, snapshot)
        if depths is not None:
            self._add_queues(families, depths)
        yield from families.values()

    def _read_store(self) -> StoreSnapshot | None:
        try:
            with read_session() as session:
                if session.get_bind().dialect.name == "postgresql":
                    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                return self._snapshot(session)
        except (SQLAlchemyError, ServiceUnavailable) as exc:
            log.warning("metrics: the store did not answer", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            return None

    def _snapshot(self, session: Session) -> StoreSnapshot:
        now = repo.db_now(session)
        plans = plans_in_scope(session, self.settings.exporter_recent_plans)
        counts = self.plan_counts.refresh(plans, lambda ids: load_task_counts(session, ids))
        pauses = {
            agent: (pause_cause(row.reason), (row.until - now).total_seconds())
            for agent, row in repo.active_pauses(session, now).items()
        }
        running_attempts = session.execute(
            select(_A.worker, func.count())
            .join_from(_TASKS, _ATTEMPTS, and_(_OF_TASK, _A.number == _T.attempt))
            .where(_T.status == TaskStatus.RUNNING)
            .group_by(_A.worker)
        )
        active: Counter[str] = Counter({worker: int(count) for worker, count in running_attempts})
        attempts = self.ledger.totals(session, now, {plan.id: plan.created_at for plan in plans if not plan.final})
        budgets = {
            plan.id: (plan.budget, attempts.spend.get(plan.id, Spend()))
            for plan in plans
            if plan.budget and not plan.final
        }
        return StoreSnapshot(plans, counts, attempts, budgets, pauses, active)

    def _read_broker(self) -> list[QueueDepth] | None:
        url = self.settings.resolved_broker_url
        try:
            return queue_depths(url, self.registry.queues)
        except Exception as exc:  # any broker failure: the store's figures must still be served
            log.warning(
                "metrics: the broker did not answer", broker=safe_broker_url(url), error=f"{type(exc).__name__}: {exc}"
            )
            return None

    @staticmethod
    def _add_up(families: dict[str, Metric], store_up: bool, broker_up: bool) -> None:
        _gauge(families["orch_store_up"]).add_metric([], 1.0 if store_up else 0.0)
        _gauge(families["orch_broker_up"]).add_metric([], 1.0 if broker_up else 0.0)

    def _add_store(self, families: dict[str, Metric], snapshot: StoreSnapshot) -> None:
        for plan in snapshot.plans:
            _gauge(families["orch_plan_info"]).add_metric([plan.id, plan.name, plan.status.value], 1.0)
            counts = snapshot.task_counts.get(plan.id, {})
            for agent in sorted({agent for agent, _ in counts}):
                for state in TaskStatus:
                    value = counts.get((agent, state.value), 0)
                    _gauge(families["orch_tasks"]).add_metric([plan.id, agent, state.value], float(value))
        for plan_id, (budget, spend) in snapshot.budgets.items():
            if budget.usd is not None:
                _gauge(families["orch_plan_budget_remaining_usd"]).add_metric([plan_id], budget.usd - spend.usd)
            if budget.tokens is not None:
                _gauge(families["orch_plan_budget_remaining_tokens"]).add_metric(
                    [plan_id], float(budget.tokens - spend.tokens)
                )
        for agent in sorted({*self.registry.names, *snapshot.pauses}):
            cause_now, left = snapshot.pauses.get(agent, ("", 0.0))
            for cause in PAUSE_CAUSES:
                paused = cause == cause_now
                _gauge(families["orch_agent_paused"]).add_metric([agent, cause], 1.0 if paused else 0.0)
                _gauge(families["orch_agent_pause_remaining_seconds"]).add_metric(
                    [agent, cause], max(left, 0.0) if paused else 0.0
                )
        for worker, running in sorted(snapshot.active.items()):
            _gauge(families["celery_worker_tasks_active"]).add_metric([worker], float(running))
        self._add_attempts(families, snapshot.attempts)

    @staticmethod
    def _add_attempts(families: dict[str, Metric], tally: AttemptTally) -> None:
        started: Counter[str] = Counter()
        finished: Counter[tuple[str, str]] = Counter()
        failures: Counter[tuple[str, str]] = Counter()
        celery: Counter[tuple[str, str, str]] = Counter()  # queue, counter, failure class
        for (agent, queue, status, failure_class), count in tally.outcomes.items():
            started[agent] += count
            celery[(queue, "started", "")] += count
            if status != AttemptStatus.RUNNING:
                finished[(agent, status)] += count
            if failure_class and status != AttemptStatus.RUNNING:
                failures[(agent, failure_class)] += count
            if status == AttemptStatus.SUCCEEDED:
                celery[(queue, "succeeded", "")] += count
            elif status in FAILED_ATTEMPTS:
                celery[(queue, "failed", failure_class)] += count
            elif status == AttemptStatus.CANCELLED:
                celery[(queue, "revoked", "")] += count
        for (_agent, queue), retries in tally.retries.items():
            celery[(queue, "retried", "")] += retries

        for agent, count in sorted(started.items()):
            _counter(families["orch_attempts_started"]).add_metric([agent], float(count))
        for (agent, status), count in sorted(finished.items()):
            _counter(families["orch_attempts_finished"]).add_metric([agent, status], float(count))
        for (agent, failure_class), count in sorted(failures.items()):
            _counter(families["orch_attempt_failures"]).add_metric([agent, failure_class], float(count))
        for (agent, kind), tokens in sorted(tally.tokens.items()):
            _counter(families["orch_tokens"]).add_metric([agent, kind], float(tokens))
        for agent, usd in sorted(tally.cost.items()):
            _counter(families["orch_cost_usd"]).add_metric([agent], usd)
        for (queue, what, failure_class), count in sorted(celery.items()):
            labels = [RUN_TASK, queue, failure_class] if what == "failed" else [RUN_TASK, queue]
            _counter(families[f"celery_task_{what}"]).add_metric(labels, float(count))

        latency = _merge(((agent,), b) for (agent, _queue), b in tally.latencies.items())
        duration = _merge(((agent, status), b) for (agent, _queue, status), b in tally.durations.items())
        runtime = _merge(
            ((RUN_TASK, queue), b)
            for (_agent, queue, status), b in tally.durations.items()
            if status == AttemptStatus.SUCCEEDED
        )
        for name, merged, bounds in (
            ("orch_attempt_start_latency_seconds", latency, LATENCY_BUCKETS),
            ("orch_attempt_duration_seconds", duration, DURATION_BUCKETS),
            ("celery_task_runtime", runtime, DURATION_BUCKETS),
        ):
            for key, buckets in sorted(merged.items()):
                _histogram(families[name]).add_metric(
                    list(key), cumulative_buckets(buckets.counts, bounds), buckets.total
                )

    def _add_queues(self, families: dict[str, Metric], depths: Sequence[QueueDepth]) -> None:
        agent_of = {agent.queue: agent.name for agent in self.registry}
        for depth in depths:
            _gauge(families["orch_queue_length"]).add_metric([depth.queue, agent_of[depth.queue]], depth.messages)
            _gauge(families["celery_queue_length"]).add_metric([depth.queue], depth.messages)
            if depth.consumers is not None:
                _gauge(families["celery_active_consumer_count"]).add_metric([depth.queue], depth.consumers)


def _merge(items: Iterable[tuple[tuple[str, ...], Buckets]]) -> dict[tuple[str, ...], Buckets]:
    """Sum histograms that end up with the same labels (e.g. the queues of one agent type)."""
    merged: dict[tuple[str, ...], Buckets] = {}
    for key, buckets in items:
        if key in merged:
            merged[key].add(buckets)
        else:
            merged[key] = Buckets(list(buckets.counts), buckets.total)
    return merged


def _gauge(family: Metric) -> GaugeMetricFamily:
    return cast(GaugeMetricFamily, family)


def _counter(family: Metric) -> CounterMetricFamily:
    return cast(CounterMetricFamily, family)


def _histogram(family: Metric) -> HistogramMetricFamily:
    return cast(HistogramMetricFamily, family)


# --- the server -------------------------------------------------------------------------------------------


def serve(host: str, port: int, settings: Settings, on_listening: Callable[[str], None]) -> None:
    """Serve /metrics on host:port until SIGTERM or SIGINT. The first pass over the store's history runs
    before the port opens, so Prometheus' first scrape is as cheap as the rest."""
    collector = StoreCollector(settings)
    for _ in collector.collect():
        pass
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigInvalid(
            f"cannot listen on {host}:{port} (--host/--port, ORCH_EXPORTER_HOST/ORCH_EXPORTER_PORT): "
            f"{exc.strerror or exc}"
        ) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    on_listening(f"http://{host}:{server.server_port}/metrics")
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
