"""Prometheus metrics computed from the SQL store when Prometheus scrapes (`orch exporter`).

Every figure is read from the store (queue depth from the broker) at scrape time, so it is right across any
number of worker processes and hosts and survives their restarts: no in-process counters, no prefork
multiprocess mode. What keeps a scrape's cost independent of how much history the store holds:

- attempts: an attempt that finished more than `SETTLE_SECONDS` ago never changes again, so it is folded into
  running totals once, by primary-key range. A scrape reads only the attempts started since the last fold plus
  those still unsettled (running ones), by primary key. The first read after the exporter starts reads the
  history once: `serve` opens its port first and starts that read in the background; until it is done a scrape
  shows `orch_exporter_ready 0`, `orch_store_up 0` and the broker's figures.
- tasks per plan: only plans that are running or held, plus the `ORCH_EXPORTER_RECENT_PLANS` most recently
  finished, whose counts are read once and kept while they stay among them.

A scrape never waits long: the store is read in a thread of its own (one read at a time, shared by the scrapes
that arrive meanwhile) while the scrape reads the broker, and the scrape waits for the store at most
`STORE_WAIT_SECONDS`; a store or broker that does not answer in time is reported by its `_up` gauge as 0.
The store queries live in orch/store/exporter_reads.py; this module turns them into metric families.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from orch.budget import Budget, Spend
from orch.celery import RUN_TASK
from orch.decisions.breaker import CIRCUIT_OPEN
from orch.errors import ConfigInvalid
from orch.intake.agents import load_agents
from orch.log import get_logger
from orch.redaction import error_line, safe_url
from orch.services.broker_probe import QueueDepth, queue_depths
from orch.settings import Settings
from orch.states import AttemptStatus, TaskStatus
from orch.store import exporter_reads
from orch.store.db import db_now
from orch.store.exporter_reads import AttemptSet, BucketCount, PlanRef, TaskCounts
from orch.store.pauses import active_pauses

log = get_logger(__name__)

# An attempt finished this long ago is final: folded into the totals and never read again. It also bounds how
# long a claim's transaction may stay uncommitted while attempts after it are already visible.
SETTLE_SECONDS = 60.0
# Prometheus' default scrape timeout is 10 s: a scrape answers well within it whatever the servers do.
BROKER_TIMEOUT_SECONDS = 2.0
STORE_CONNECT_TIMEOUT_SECONDS = 2.0
STORE_WAIT_SECONDS = 4.0
# Each statement of a read after the first (PostgreSQL); the first read of the history has no limit.
STATEMENT_TIMEOUT_SECONDS = 60.0

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
    MetricSpec(
        "orch_exporter_ready",
        "gauge",
        "1 once the exporter has read the store's history since it started; until then 0, with orch_store_up 0",
    ),
    MetricSpec(
        "orch_store_up",
        "gauge",
        "1 if the store answered this scrape in time, else 0 (its figures are then absent)",
    ),
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
    MetricSpec("orch_tokens", "counter", "Tokens used by finished attempts, by kind", ("agent_type", "kind")),
    MetricSpec(
        "orch_cost_usd",
        "counter",
        "USD of finished attempts: the agent's own report, else tokens priced by config/prices.yaml (unpriced: 0)",
        ("agent_type",),
    ),
    MetricSpec(
        "orch_tokens_in_flight",
        "gauge",
        "Tokens used so far by running attempts, as their heartbeats reported, by kind",
        ("agent_type", "kind"),
    ),
    MetricSpec(
        "orch_cost_usd_in_flight",
        "gauge",
        "USD spent so far by running attempts, as their heartbeats reported (the final figure may differ)",
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


# --- attempts: folded totals plus the live window ----------------------------------------------------------

AgentQueue = tuple[str, str]


@dataclass
class AttemptTally:
    """Sums over a set of attempts, keyed by their task's agent type and queue (spend: by plan). Tokens and cost
    of finished attempts only (they never change again); running attempts' heartbeat figures apart."""

    outcomes: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)  # agent, queue, status, class
    retries: Counter[AgentQueue] = field(default_factory=Counter)
    tokens: Counter[tuple[str, str]] = field(default_factory=Counter)  # agent, kind
    cost: Counter[str] = field(default_factory=Counter)  # agent -> nano-USD
    tokens_in_flight: Counter[tuple[str, str]] = field(default_factory=Counter)
    cost_in_flight: Counter[str] = field(default_factory=Counter)
    durations: dict[tuple[str, str, str], Buckets] = field(default_factory=dict)  # agent, queue, status
    latencies: dict[AgentQueue, Buckets] = field(default_factory=dict)
    spend: dict[str, Spend] = field(default_factory=dict)  # plan -> what its attempts spent (spend.plan_spend)

    def add(self, other: AttemptTally) -> None:
        self.outcomes.update(other.outcomes)
        self.retries.update(other.retries)
        self.tokens.update(other.tokens)
        self.cost.update(other.cost)
        self.tokens_in_flight.update(other.tokens_in_flight)
        self.cost_in_flight.update(other.cost_in_flight)
        _add_buckets(self.durations, other.durations, DURATION_BUCKETS)
        _add_buckets(self.latencies, other.latencies, LATENCY_BUCKETS)
        for plan_id, spent in other.spend.items():
            self.spend[plan_id] = self.spend.get(plan_id, Spend()) + spent

    def plus(self, other: AttemptTally) -> AttemptTally:
        total = AttemptTally()
        total.add(self)
        total.add(other)
        return total


def _add_buckets(into: dict[Any, Buckets], other: Mapping[Any, Buckets], bounds: Sequence[float]) -> None:
    for key, buckets in other.items():
        into.setdefault(key, Buckets.empty(bounds)).add(buckets)


def tally_attempts(session: Session, attempts: AttemptSet) -> AttemptTally:
    """Aggregate the attempts of `attempts`: grouped queries, each joined to the task by primary key."""
    tally = AttemptTally()
    for row in exporter_reads.attempt_outcomes(session, attempts):
        tally.outcomes[(row.agent, row.queue, row.status.value, row.failure_class)] += row.count
        tally.retries[(row.agent, row.queue)] += row.retries
        running = row.status is AttemptStatus.RUNNING
        tokens, cost = (tally.tokens_in_flight, tally.cost_in_flight) if running else (tally.tokens, tally.cost)
        for kind, used in zip(TOKEN_KINDS, row.tokens, strict=True):
            tokens[(row.agent, kind)] += used
        cost[row.agent] += row.cost_nano_usd
    for seen in exporter_reads.run_time_buckets(session, attempts, DURATION_BUCKETS):
        _observe(tally.durations, (seen.agent, seen.queue, seen.status), DURATION_BUCKETS, seen)
    for seen in exporter_reads.start_latency_buckets(session, attempts, LATENCY_BUCKETS):
        _observe(tally.latencies, (seen.agent, seen.queue), LATENCY_BUCKETS, seen)
    tally.spend = exporter_reads.spend_by_plan(session, attempts)
    return tally


def _observe(into: dict[Any, Buckets], key: Any, bounds: Sequence[float], seen: BucketCount) -> None:
    buckets = into.setdefault(key, Buckets.empty(bounds))
    buckets.counts[seen.index] += seen.count
    buckets.total += seen.total


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
        # A plan new to the ledger but older than its last scrape (a failed plan reopened): what was folded of it,
        # read once. A plan created since has nothing folded yet (the settle period covers the submitter's clock).
        reopened = [
            plan_id
            for plan_id, created in plans.items()
            if plan_id not in self.tracked and self.last_scrape is not None and created <= self.last_scrape
        ]
        already_folded = AttemptSet(upto=self.folded_upto, but_not=self.held)
        recovered = exporter_reads.spend_by_plan(session, already_folded, reopened) if reopened else {}
        fold_end = exporter_reads.last_started_before(session, self.folded_upto, cutoff) or self.folded_upto
        reviewed = AttemptSet(after=self.folded_upto, upto=fold_end, also=self.held)
        newly_folded = tally_attempts(session, replace(reviewed, finished_before=cutoff))
        still_held = exporter_reads.unfinished_before(session, reviewed, cutoff)
        live = tally_attempts(session, AttemptSet(after=fold_end, also=still_held))
        # Every query succeeded: only now does the ledger move on.
        self.folded.spend.update(recovered)
        self.folded.add(newly_folded)
        self.folded.spend = {plan_id: self.folded.spend.get(plan_id, Spend()) for plan_id in plans}
        self.folded_upto, self.held, self.tracked, self.last_scrape = fold_end, still_held, frozenset(plans), now
        return self.folded.plus(live)


# --- tasks per plan, for a bounded set of plans ------------------------------------------------------------


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
    """circuit_breaker for a pause the breaker set (orch.decisions.breaker), else usage_limit (a provider's quota)."""
    return "circuit_breaker" if reason.startswith(CIRCUIT_OPEN) else "usage_limit"


# --- the collector ----------------------------------------------------------------------------------------


@dataclass
class StoreSnapshot:
    """What one read of the store found."""

    plans: list[PlanRef]
    task_counts: dict[str, TaskCounts]
    attempts: AttemptTally
    budgets: dict[str, tuple[Budget, Spend]]
    pauses: dict[str, tuple[str, float]]  # agent -> (cause, seconds left)
    active: Counter[str]  # worker -> running attempts


class StoreRead:
    """One read of the store, in a thread of its own; the scrapes that arrive while it runs share it."""

    def __init__(self, read: Callable[[], StoreSnapshot | None]) -> None:
        self.done = threading.Event()
        self.snapshot: StoreSnapshot | None = None
        threading.Thread(target=self._run, args=(read,), name="orch-exporter-store-read", daemon=True).start()

    def _run(self, read: Callable[[], StoreSnapshot | None]) -> None:
        try:
            self.snapshot = read()
        finally:
            self.done.set()

    def result(self, timeout: float) -> StoreSnapshot | None:
        """The snapshot, once the read is done within `timeout` seconds; None if it failed or takes longer."""
        return self.snapshot if self.done.wait(timeout) else None


class StoreCollector(Collector):
    """A prometheus_client collector: every scrape reads the store and the broker and yields metric families."""

    def __init__(
        self,
        settings: Settings,
        settle_seconds: float = SETTLE_SECONDS,
        store_wait: float = STORE_WAIT_SECONDS,
        broker_timeout: float = BROKER_TIMEOUT_SECONDS,
    ) -> None:
        self.settings = settings
        self.registry = load_agents(settings.config_dir)
        self.ledger = AttemptLedger(settle=timedelta(seconds=settle_seconds))
        self.plan_counts = PlanCounts()
        self.store_wait = store_wait
        self.broker_timeout = broker_timeout
        self.ready = threading.Event()  # the history has been read: the counters are complete
        self._engine: Engine | None = None
        self._guard = threading.Lock()
        self._read: StoreRead | None = None

    def start_read(self) -> tuple[StoreRead, bool]:
        """The store read in progress, or a new one (True). Reads never overlap: the ledger and the caches
        move on with each."""
        with self._guard:
            if self._read is not None and not self._read.done.is_set():
                return self._read, False
            self._read = StoreRead(self._read_store)
            return self._read, True

    def collect(self) -> Iterator[Metric]:
        deadline = time.monotonic() + self.store_wait
        read, started = self.start_read()
        depths = self._read_broker()
        # A scrape that finds the first read of the history under way does not wait for it.
        waits = started or self.ready.is_set()
        snapshot = read.result(max(0.0, deadline - time.monotonic()) if waits else 0.0)
        if snapshot is None and self.ready.is_set() and not read.done.is_set():
            log.warning("metrics: the store did not answer in time", seconds=self.store_wait)
        families = {spec.name: spec.family() for spec in SPECS}
        self._add_up(families, self.ready.is_set(), snapshot is not None, depths is not None)
        if snapshot is not None:
            self._add_store(families, snapshot)
        if depths is not None:
            self._add_queues(families, depths)
        yield from families.values()

    def _read_store(self) -> StoreSnapshot | None:
        url = self.settings.resolved_database_url
        first = not self.ready.is_set()
        began = time.monotonic()
        try:
            if self._engine is None:
                self._engine = exporter_reads.reader_engine(url, STORE_CONNECT_TIMEOUT_SECONDS)
            with exporter_reads.snapshot_session(self._engine, None if first else STATEMENT_TIMEOUT_SECONDS) as session:
                snapshot = self._snapshot(session)
        except Exception as exc:  # any failure of the store part: the broker's figures must still be served
            log.warning("metrics: the store did not answer", store=safe_url(url), error=error_line(exc))
            return None
        if first:
            log.info("metrics: read the store's history", seconds=round(time.monotonic() - began, 3))
            self.ready.set()
        return snapshot

    def _snapshot(self, session: Session) -> StoreSnapshot:
        now = db_now(session)
        plans = exporter_reads.plans_in_scope(session, self.settings.exporter_recent_plans)
        counts = self.plan_counts.refresh(plans, lambda ids: exporter_reads.task_counts(session, ids))
        pauses = {
            agent: (pause_cause(row.reason), (row.until - now).total_seconds())
            for agent, row in active_pauses(session, now).items()
        }
        active = exporter_reads.running_attempts_by_worker(session)
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
            return queue_depths(url, self.registry.queues, self.broker_timeout)
        except Exception as exc:  # any broker failure: the store's figures must still be served
            log.warning("metrics: the broker did not answer", broker=safe_url(url), error=error_line(exc))
            return None

    @staticmethod
    def _add_up(families: dict[str, Metric], ready: bool, store_up: bool, broker_up: bool) -> None:
        _gauge(families["orch_exporter_ready"]).add_metric([], 1.0 if ready else 0.0)
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
        self._add_in_flight(families, snapshot.attempts)

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
        for agent, nano_usd in sorted(tally.cost.items()):
            _counter(families["orch_cost_usd"]).add_metric([agent], _usd(nano_usd))
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

    def _add_in_flight(self, families: dict[str, Metric], tally: AttemptTally) -> None:
        """Every agent type, 0 when none of its attempts runs, so a panel shows the drop to 0."""
        for agent in sorted({*self.registry.names, *tally.cost_in_flight}):
            _gauge(families["orch_cost_usd_in_flight"]).add_metric([agent], _usd(tally.cost_in_flight[agent]))
            for kind in TOKEN_KINDS:
                tokens = float(tally.tokens_in_flight[(agent, kind)])
                _gauge(families["orch_tokens_in_flight"]).add_metric([agent, kind], tokens)

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


def _usd(nano_usd: int) -> float:
    return nano_usd / exporter_reads.NANO_USD_PER_USD


def _gauge(family: Metric) -> GaugeMetricFamily:
    return cast(GaugeMetricFamily, family)


def _counter(family: Metric) -> CounterMetricFamily:
    return cast(CounterMetricFamily, family)


def _histogram(family: Metric) -> HistogramMetricFamily:
    return cast(HistogramMetricFamily, family)


# --- the server -------------------------------------------------------------------------------------------


def serve(host: str, port: int, settings: Settings, on_listening: Callable[[str], None]) -> None:
    """Serve /metrics on host:port until SIGTERM or SIGINT. The port opens at once; the first read of the
    store's history starts right after, in the background (`orch_exporter_ready` is 0 until it is done)."""
    collector = StoreCollector(settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigInvalid(
            f"cannot listen on {host}:{port} (--host/--port, ORCH_EXPORTER_HOST/ORCH_EXPORTER_PORT): "
            f"{exc.strerror or exc}"
        ) from None
    collector.start_read()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    on_listening(f"http://{host}:{server.server_port}/metrics")
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
