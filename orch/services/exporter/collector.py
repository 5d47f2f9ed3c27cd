"""The exporter's collector: each scrape reads the store (in a thread of its own, shared by the scrapes that
arrive meanwhile, waited for at most `STORE_WAIT_SECONDS`) and the broker, and turns what they hold into the
metric families of orch.services.exporter.specs."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from orch.budget import Budget, Spend
from orch.failures import PauseCause
from orch.intake.agents import load_agents
from orch.log import get_logger
from orch.records import RUN_TASK
from orch.redaction import error_line, safe_url
from orch.services.broker_probe import QueueDepth, queue_depths
from orch.services.exporter.disk import DISK_MEASURE_SECONDS, DiskMeter
from orch.services.exporter.specs import (
    DURATION_BUCKETS,
    FAILED_ATTEMPTS,
    LATENCY_BUCKETS,
    MERGE_BUCKETS,
    MERGE_OUTCOMES,
    OPEN_MERGE_PHASES,
    SPECS,
    TOKEN_KINDS,
)
from orch.services.exporter.tally import (
    SETTLE_SECONDS,
    AttemptLedger,
    AttemptTally,
    Buckets,
    MergeLedger,
    MergeTally,
    PlanCounts,
    cumulative_buckets,
)
from orch.settings import Settings
from orch.states import AttemptStatus, MergePhase, TaskStatus
from orch.store import exporter_reads
from orch.store.db import db_now
from orch.store.exporter_reads import OpenMerges, PlanRef, TaskCounts
from orch.store.pauses import active_pauses

log = get_logger(__name__)

# Prometheus' default scrape timeout is 10 s: a scrape answers well within it whatever the servers do.
BROKER_TIMEOUT_SECONDS = 2.0
STORE_CONNECT_TIMEOUT_SECONDS = 2.0
STORE_WAIT_SECONDS = 4.0
# Each statement of a read after the first (PostgreSQL); the first read of the history has no limit.
STATEMENT_TIMEOUT_SECONDS = 60.0


# --- the collector ----------------------------------------------------------------------------------------


@dataclass
class StoreSnapshot:
    """What one read of the store found."""

    plans: list[PlanRef]
    task_counts: dict[str, TaskCounts]
    attempts: AttemptTally
    budgets: dict[str, tuple[Budget, Spend]]
    pauses: dict[str, tuple[PauseCause, float]]  # agent -> (cause, seconds left)
    active: Counter[str]  # worker -> running attempts
    merges: MergeTally
    queue: MergeQueueNow


@dataclass
class MergeQueueNow:
    """The merge queues of the running and held plans with a repository, and the worktrees in use, now."""

    now: datetime
    plans: frozenset[str]  # running or held plans with an integration branch
    open: list[OpenMerges]
    worktrees: Counter[str]  # agent type -> running attempts in a worktree


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
        disk_every: float = DISK_MEASURE_SECONDS,
    ) -> None:
        self.settings = settings
        self.registry = load_agents(settings.config_dir)
        self.ledger = AttemptLedger(settle=timedelta(seconds=settle_seconds))
        self.merge_ledger = MergeLedger(settle=timedelta(seconds=settle_seconds))
        self.disk = DiskMeter(settings.resolved_worktree_root, every=disk_every)
        self.host = socket.gethostname()
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
        self._add_disk(families)
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
            agent: (row.cause, (row.until - now).total_seconds()) for agent, row in active_pauses(session, now).items()
        }
        active = exporter_reads.running_attempts_by_worker(session)
        attempts = self.ledger.totals(session, now, {plan.id: plan.created_at for plan in plans if not plan.final})
        budgets = {
            plan.id: (plan.budget, attempts.spend.get(plan.id, Spend()))
            for plan in plans
            if plan.budget and not plan.final
        }
        merges = self.merge_ledger.totals(session, now)
        open_plans = [plan.id for plan in plans if not plan.final]
        queue = MergeQueueNow(
            now,
            exporter_reads.plans_with_integrations(session, open_plans),
            exporter_reads.open_merges(session, open_plans),
            exporter_reads.live_worktrees(session),
        )
        return StoreSnapshot(plans, counts, attempts, budgets, pauses, active, merges, queue)

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
            cause_now, left = snapshot.pauses.get(agent, (None, 0.0))
            for cause in PauseCause:
                paused = cause is cause_now
                _gauge(families["orch_agent_paused"]).add_metric([agent, cause], 1.0 if paused else 0.0)
                _gauge(families["orch_agent_pause_remaining_seconds"]).add_metric(
                    [agent, cause], max(left, 0.0) if paused else 0.0
                )
        for worker, running in sorted(snapshot.active.items()):
            _gauge(families["celery_worker_tasks_active"]).add_metric([worker], float(running))
        self._add_attempts(families, snapshot.attempts)
        self._add_in_flight(families, snapshot.attempts)
        self._add_merges(families, snapshot.merges)
        self._add_merge_queue(families, snapshot.queue)

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

    @staticmethod
    def _add_merges(families: dict[str, Metric], tally: MergeTally) -> None:
        """Every outcome, 0 when none happened, so a rate() sees the first one."""
        for outcome in MERGE_OUTCOMES:
            _counter(families["orch_merges"]).add_metric([outcome], float(tally.outcomes[outcome]))
        _counter(families["orch_merge_conflicts_resolved"]).add_metric([], float(tally.resolutions))
        waits = cumulative_buckets(tally.waits.counts, MERGE_BUCKETS)
        _histogram(families["orch_merge_queue_wait_seconds"]).add_metric([], waits, tally.waits.total)
        for outcome, buckets in sorted(tally.durations.items()):
            _histogram(families["orch_merge_duration_seconds"]).add_metric(
                [outcome], cumulative_buckets(buckets.counts, MERGE_BUCKETS), buckets.total
            )

    def _add_merge_queue(self, families: dict[str, Metric], queue: MergeQueueNow) -> None:
        """Every plan with a repository and every phase, 0 when empty, so a panel shows the drop to 0."""
        found = {(row.plan_id, row.phase.value): row for row in queue.open}
        for plan_id in sorted(queue.plans | {row.plan_id for row in queue.open}):
            for phase in OPEN_MERGE_PHASES:
                row = found.get((plan_id, phase))
                count = 0.0 if row is None else float(row.count)
                _gauge(families["orch_merge_requests_open"]).add_metric([plan_id, phase], count)
            queued = found.get((plan_id, MergePhase.QUEUED.value))
            waited = 0.0 if queued is None else max((queue.now - queued.oldest).total_seconds(), 0.0)
            _gauge(families["orch_merge_queue_oldest_seconds"]).add_metric([plan_id], waited)
        for agent in sorted({*self.registry.names, *queue.worktrees}):
            _gauge(families["orch_worktrees_live"]).add_metric([agent], float(queue.worktrees[agent]))

    def _add_disk(self, families: dict[str, Metric]) -> None:
        figure = self.disk.latest()
        if figure is not None:
            _gauge(families["orch_worktree_disk_bytes"]).add_metric([self.host], float(figure.bytes))

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
