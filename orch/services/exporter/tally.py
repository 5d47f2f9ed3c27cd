"""Sums the exporter keeps between scrapes: attempt totals (settled attempts folded in once, the rest read at
each scrape), task counts of the plans in scope, and histogram buckets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from orch.budget import Spend
from orch.services.exporter.specs import DURATION_BUCKETS, LATENCY_BUCKETS, MERGE_BUCKETS, TOKEN_KINDS
from orch.states import AttemptStatus
from orch.store import exporter_reads
from orch.store.exporter_reads import AttemptSet, BucketCount, MergeSet, PlanRef, TaskCounts

# An attempt finished this long ago is final: folded into the totals and never read again. It also bounds how
# long a claim's transaction may stay uncommitted while attempts after it are already visible.
SETTLE_SECONDS = 60.0


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


# --- merge requests: folded totals plus the live window ----------------------------------------------------


@dataclass
class MergeTally:
    """Sums over closed merge requests: by outcome, the resolutions among them, their queue waits and merge
    times. A closed request's outcome, wait and time never change (orch.store.exporter_reads.MERGE_OUTCOME)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    resolutions: int = 0
    waits: Buckets = field(default_factory=lambda: Buckets.empty(MERGE_BUCKETS))
    durations: dict[str, Buckets] = field(default_factory=dict)  # outcome -> merge times

    def add(self, other: MergeTally) -> None:
        self.outcomes.update(other.outcomes)
        self.resolutions += other.resolutions
        self.waits.add(other.waits)
        _add_buckets(self.durations, other.durations, MERGE_BUCKETS)

    def plus(self, other: MergeTally) -> MergeTally:
        total = MergeTally()
        total.add(self)
        total.add(other)
        return total


def tally_merges(session: Session, requests: MergeSet) -> MergeTally:
    tally = MergeTally()
    for row in exporter_reads.merge_outcomes(session, requests):
        tally.outcomes[row.outcome] += row.count
        tally.resolutions += row.resolutions
    for seen in exporter_reads.merge_wait_buckets(session, requests, MERGE_BUCKETS):
        tally.waits.counts[seen.index] += seen.count
        tally.waits.total += seen.total
    for seen in exporter_reads.merge_duration_buckets(session, requests, MERGE_BUCKETS):
        _observe(tally.durations, seen.status, MERGE_BUCKETS, seen)
    return tally


@dataclass
class MergeLedger:
    """Running totals of every closed merge request, kept as AttemptLedger keeps attempts': requests closed more
    than the settle period ago are folded in once, by primary-key range; the rest are read at each scrape."""

    settle: timedelta = timedelta(seconds=SETTLE_SECONDS)
    folded_upto: int = 0
    held: frozenset[int] = frozenset()
    folded: MergeTally = field(default_factory=MergeTally)

    def totals(self, session: Session, now: datetime) -> MergeTally:
        """Run in one snapshot (a repeatable-read transaction), so no request is counted twice or missed."""
        cutoff = now - self.settle
        fold_end = exporter_reads.last_enqueued_before(session, self.folded_upto, cutoff) or self.folded_upto
        reviewed = MergeSet(after=self.folded_upto, upto=fold_end, also=self.held)
        newly_folded = tally_merges(session, replace(reviewed, finished_before=cutoff))
        still_held = exporter_reads.merges_unfinished_before(session, reviewed, cutoff)
        live = tally_merges(session, MergeSet(after=fold_end, also=still_held))
        self.folded.add(newly_folded)
        self.folded_upto, self.held = fold_end, still_held
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
