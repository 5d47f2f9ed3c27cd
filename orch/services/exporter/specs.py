"""What the exporter exposes: every metric family's name, type, help and labels, and the histograms' buckets.
Names and labels are a contract with the Grafana dashboard, alerts and the README."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from orch.states import MERGE_OPEN, AttemptStatus, MergePhase

# Agent runs take seconds (shell) to hours (an AI agent); the wait for a worker is milliseconds to minutes.
DURATION_BUCKETS = (
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
)  # fmt: skip
# A merge waits for the merges before it (seconds to many minutes) and runs the plan's gates (seconds to an hour).
MERGE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

TOKEN_KINDS = ("input", "output", "cache_creation", "cache_read")
# How a closed merge request went (orch.store.exporter_reads.MERGE_OUTCOME), and the open phases, in order.
MERGE_OUTCOMES = tuple(phase.value for phase in MergePhase if phase not in MERGE_OPEN)
OPEN_MERGE_PHASES = tuple(phase.value for phase in MergePhase if phase in MERGE_OPEN)
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
    MetricSpec(
        "orch_merges",
        "counter",
        "Merge requests closed, by outcome: merged, conflicted (even if a resolution task later landed the work), "
        "gate_failed, failed (git could not merge it), cancelled",
        ("outcome",),
    ),
    MetricSpec(
        "orch_merge_conflicts_resolved",
        "counter",
        "Merges of conflict-resolution tasks that landed: conflicts resolved (orch_merges_total{outcome=conflicted} "
        "counts the conflicts)",
    ),
    MetricSpec(
        "orch_merge_queue_wait_seconds",
        "histogram",
        "Queue wait of closed merge requests that a merger began: enqueued to the begin of the merge that closed it",
    ),
    MetricSpec(
        "orch_merge_duration_seconds",
        "histogram",
        "Closed merge requests: the begin of the merge (fetch, merge, relock, gates, push) to its recorded end",
        ("outcome",),
    ),
    MetricSpec(
        "orch_merge_requests_open",
        "gauge",
        "Merge requests waiting (queued) or being merged (merging) now, per running or held plan with a repository",
        ("plan", "phase"),
    ),
    MetricSpec(
        "orch_merge_queue_oldest_seconds",
        "gauge",
        "Seconds the oldest queued merge request of a running or held plan has waited (0: none queued)",
        ("plan",),
    ),
    MetricSpec(
        "orch_worktrees_live",
        "gauge",
        "Running attempts that work in a git worktree of their own (the store's record, all hosts), by agent type",
        ("agent_type",),
    ),
    MetricSpec(
        "orch_worktree_disk_bytes",
        "gauge",
        "Bytes on disk under the worktree root (ORCH_WORKTREE_ROOT) of the host the exporter runs on, measured at "
        "most every minute; absent until first measured",
        ("host",),
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
