"""Whether a beat serves a store or a plan (orch.decisions.serving), and what status, watch and submit say when
nothing serves a plan (orch.views.serving)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orch.decisions.serving import BeatSeen, serving, silence_bound
from orch.states import PlanStatus
from orch.views.serving import serving_notes, unread_queues

NOW = datetime(2026, 12, 3, 22, 40, tzinfo=UTC)


def beat(ago: float, plans: tuple[str, ...] = (), host: str = "h1") -> BeatSeen:
    return BeatSeen(host, 7, plans, NOW - timedelta(hours=1), NOW - timedelta(seconds=ago))


def test_the_bound_grows_with_the_tick_interval_from_a_floor() -> None:
    assert silence_bound(1.0) == 30.0
    assert silence_bound(10.0) == 100.0


def test_a_beat_that_ticked_recently_serves_the_store_and_one_long_silent_does_not() -> None:
    alive = serving([beat(2.0)], None, NOW, 30.0)
    assert alive.alive and alive.describe() == "beat pid 7 on h1 ticked 2s ago"
    silent = serving([beat(600.0)], None, NOW, 30.0)
    assert not silent.alive
    assert silent.describe() == "no beat has ticked this store since 2026-12-03 22:30:00 UTC (10m ago)"
    assert serving([], None, NOW, 30.0).describe() == "no beat has ever ticked this store"


def test_an_orch_run_beat_serves_only_its_own_plans() -> None:
    limited = [beat(1.0, plans=("p1",))]
    assert serving(limited, "p1", NOW, 30.0).alive
    assert not serving(limited, "p2", NOW, 30.0).alive
    assert not serving(limited, None, NOW, 30.0).alive  # the store as a whole: no beat serves it
    both = [beat(1.0, plans=("p1",)), beat(900.0, host="h2")]
    assert serving(both, "p2", NOW, 30.0).beat == both[1]


def test_status_names_the_missing_beat_and_the_queue_nobody_reads() -> None:
    created = NOW - timedelta(minutes=3)
    queued = {"agent.devops-engineer": NOW - timedelta(minutes=2), "agent.testing-specialist": NOW}
    readers = {"agent.testing-specialist": ["w1@h"]}
    notes = serving_notes(PlanStatus.RUNNING, created, 3, serving([beat(1800.0)], "p", NOW, 30.0), queued, readers, NOW)
    assert notes == [
        "pending 3m — no beat has ticked this store since 2026-12-03 22:10:00 UTC (30m ago); start one: see "
        "docs/troubleshooting.md",
        "queued 2m — no worker reads agent.devops-engineer; start one: see docs/troubleshooting.md",
    ]
    served = serving([beat(1.0)], "p", NOW, 30.0)
    assert serving_notes(PlanStatus.RUNNING, created, 3, served, queued, readers, NOW) == notes[1:]
    assert serving_notes(PlanStatus.SUCCEEDED, created, 3, None, queued, {}, NOW) == []
    unknown = serving_notes(PlanStatus.RUNNING, created, 0, served, queued, None, NOW)
    assert unknown == [
        "queued on agent.devops-engineer, agent.testing-specialist: the broker did not answer, so whether a worker "
        "reads it is unknown"
    ]


def test_submit_names_the_plans_queues_nobody_reads() -> None:
    readers = {"agent.a": ["w@h"]}
    assert unread_queues({"agent.a": 2, "agent.b": 1}, readers) == [
        "no worker reads agent.b (1 task of this plan); start one: see docs/troubleshooting.md"
    ]
    assert unread_queues({"agent.a": 2}, None) == [
        "the broker did not answer: whether workers read this plan's queues is unknown"
    ]


def test_an_orch_run_beat_is_described_with_its_scope() -> None:
    assert beat(1.0, plans=("p1",)).describe() == "pid 7 on h1, limited to the 1 plan of its orch run"
    assert beat(1.0, plans=("p1", "p2")).describe().endswith("the 2 plans of its orch run")
