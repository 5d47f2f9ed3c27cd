"""The exporter's merge-queue and worktree metrics against real stores (SQLite and PostgreSQL): merge requests in
every phase, stored through the ORM as the merge queue leaves them, counted by outcome (a conflict stays a
conflict when a resolution task lands its work, so no counter drops), their queue waits and merge times, the open
queue per plan, the attempts running in a worktree, and this host's worktree disk, measured at most every N s."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select, update

from orch.dispatch.reconcile import reconcile_plans
from orch.records import Claim
from orch.services.exporter.collector import StoreCollector
from orch.services.exporter.disk import DiskMeter
from orch.services.git.worktrees import disk_usage
from orch.settings import Settings
from orch.states import MergePhase, PlanStatus
from orch.store import attempts, merges, operator, plans
from orch.store.db import read_session, write_session
from orch.store.models import IntegrationRow, MergeRequestRow, TaskRow
from tests.helpers import make_plan, registry, wait_for
from tests.metrics_scrape import Samples, by, parse, value

BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)  # settled, by the database's clock
NO_BROKER = "redis://127.0.0.1:1/0"
AGENT = "general-purpose"
COMMIT = "a" * 40


def collector(tmp_path: Path, settle: float = 0.0, disk_every: float = 60.0) -> StoreCollector:
    settings = Settings(broker_url=NO_BROKER, worktree_root=tmp_path / "worktrees")
    return StoreCollector(settings, settle_seconds=settle, store_wait=60.0, disk_every=disk_every)


def scrape(source: StoreCollector) -> Samples:
    registry_ = CollectorRegistry(auto_describe=False)
    registry_.register(source)
    return parse(generate_latest(registry_).decode())


AGES = ("orch_worktree_disk_bytes", "orch_merge_queue_oldest_seconds")  # this host's disk, or read against `now`


def store_figures(samples: Samples) -> Samples:
    """What the exporter read from the store, but for what moves with the clock."""
    return {key: v for key, v in samples.items() if key[0] not in AGES}


def submit(keys: list[str]) -> tuple[str, dict[str, int]]:
    tasks: list[dict[str, Any]] = [{"id": key, "title": key, "agent": AGENT, "command": "true"} for key in keys]
    with write_session() as session:
        plan_id = plans.submit_plan(session, make_plan(tasks, name="mq"), BASE)
    with read_session() as session:
        pks = {row.key: row.pk for row in session.scalars(select(TaskRow).where(TaskRow.plan_id == plan_id))}
    return plan_id, pks


def integration(plan_id: str) -> int:
    """The plan's integration branch, as create_integrations stores it (no remote is reached here)."""
    with write_session() as session:
        row = IntegrationRow(
            plan_id=plan_id, repository="repo", url="/nowhere", base="main", base_commit=COMMIT,
            branch=merges.integration_branch(plan_id), head=COMMIT, land="branch", gates=[], gate_timeout=60.0,
            on_conflict="resolve", relock=[],
        )  # fmt: skip
        session.add(row)
        session.flush()
        return row.pk


def at(seconds: float | None) -> datetime | None:
    return None if seconds is None else BASE + timedelta(seconds=seconds)


def request(
    plan_id: str, integration_pk: int, task_pk: int, phase: MergePhase, times: tuple[float, float | None, float | None]
) -> int:
    """A merge request as the queue leaves it in `phase`: enqueued, begun and closed at BASE + `times` seconds."""
    enqueued, started, finished = times
    with write_session() as session:
        row = MergeRequestRow(
            plan_id=plan_id, integration_pk=integration_pk, task_pk=task_pk, attempt=1, phase=phase,
            base_commit=COMMIT, head_commit=COMMIT, enqueued_at=at(enqueued), started_at=at(started),
            finished_at=at(finished), tries=0 if started is None else 1,
            conflicts=["app.py"] if phase is MergePhase.CONFLICTED else None,
        )  # fmt: skip
        session.add(row)
        session.flush()
        return row.pk


def change(request_pk: int, **values: Any) -> None:
    with write_session() as session:
        session.execute(update(MergeRequestRow).where(MergeRequestRow.pk == request_pk).values(**values))


def test_merges_by_outcome_waits_and_the_open_queue(store_url: str, tmp_path: Path) -> None:
    keys = ["a", "b", "c", "d", "e", "e.resolve-1", "f", "g"]
    plan_id, task = submit(keys)
    queue = integration(plan_id)
    request(plan_id, queue, task["a"], MergePhase.MERGED, (0, 2, 5))  # waited 2 s, merged in 3 s
    request(plan_id, queue, task["b"], MergePhase.CONFLICTED, (1, 10, 12))  # on_conflict: fail
    request(plan_id, queue, task["c"], MergePhase.GATE_FAILED, (2, 30, 90))
    request(plan_id, queue, task["d"], MergePhase.CANCELLED, (3, None, 4))  # its task cancelled while it waited
    conflicted = request(plan_id, queue, task["e"], MergePhase.CONFLICTED, (4, 4.5, 6))  # on_conflict: resolve
    with write_session() as session:
        session.execute(update(TaskRow).where(TaskRow.pk == task["e.resolve-1"]).values(resolves=conflicted))
    change(conflicted, resolved_by=task["e.resolve-1"])
    resolution = request(plan_id, queue, task["e.resolve-1"], MergePhase.QUEUED, (7, None, None))
    request(plan_id, queue, task["f"], MergePhase.MERGING, (20, 21, None))
    request(plan_id, queue, task["g"], MergePhase.QUEUED, (22, None, None))

    exporter = collector(tmp_path)
    first = scrape(exporter)
    assert store_figures(first) == store_figures(
        scrape(collector(tmp_path))
    )  # folded + live == everything read at once
    assert exporter.merge_ledger.held == {resolution, resolution + 1, resolution + 2}  # the open ones
    outcomes = by(first, "orch_merges_total", "outcome")
    assert outcomes == {
        ("merged",): 1.0,
        ("conflicted",): 2.0,
        ("gate_failed",): 1.0,
        ("failed",): 0.0,
        ("cancelled",): 1.0,
    }
    assert value(first, "orch_merge_conflicts_resolved_total") == 0.0
    # queue waits: of the closed requests a merger began (a, b, c, e): 2 + 9 + 28 + 0.5 s (e's well inside its
    # bucket: a wait of exactly 1 s computed by the database may come out a hair over)
    assert value(first, "orch_merge_queue_wait_seconds_count") == 4.0
    assert value(first, "orch_merge_queue_wait_seconds_sum") == pytest.approx(39.5, abs=0.01)
    assert value(first, "orch_merge_queue_wait_seconds_bucket", le="1.0") == 1.0  # e
    assert value(first, "orch_merge_queue_wait_seconds_bucket", le="10.0") == 3.0  # e, a, b
    assert value(first, "orch_merge_duration_seconds_sum", outcome="gate_failed") == pytest.approx(60.0, abs=0.01)
    assert value(first, "orch_merge_duration_seconds_count", outcome="conflicted") == 2.0
    assert value(first, "orch_merge_requests_open", plan=plan_id, phase="queued") == 2.0
    assert value(first, "orch_merge_requests_open", plan=plan_id, phase="merging") == 1.0
    oldest = value(first, "orch_merge_queue_oldest_seconds", plan=plan_id)
    expected = (datetime.now(UTC) - BASE).total_seconds() - 7  # the resolution's, enqueued at BASE+7; BASE is
    assert oldest is not None and expected - 60 < oldest < expected + 5  # the module's import, not this test's start

    # The resolution task's merge lands: its request merges, and the conflicted one reads `merged` now
    # (_resolution_merged). The conflict stays counted as one; the resolution counts as a merge.
    change(resolution, phase=MergePhase.MERGED, started_at=at(3000), finished_at=at(3001))
    change(conflicted, phase=MergePhase.MERGED, detail="resolved by e.resolve-1")
    second = store_figures(scrape(exporter))
    assert second == store_figures(scrape(collector(tmp_path)))
    outcomes = by(second, "orch_merges_total", "outcome")
    assert outcomes == {
        ("merged",): 2.0,
        ("conflicted",): 2.0,
        ("gate_failed",): 1.0,
        ("failed",): 0.0,
        ("cancelled",): 1.0,
    }
    assert value(second, "orch_merge_conflicts_resolved_total") == 1.0
    assert value(second, "orch_merge_queue_wait_seconds_count") == 5.0
    assert value(second, "orch_merge_requests_open", plan=plan_id, phase="queued") == 1.0
    for (name, labels), count in first.items():
        if name.endswith(("_total", "_count", "_bucket")) and not name.startswith("orch_merge_requests_open"):
            assert second.get((name, labels), 0.0) >= count, f"{name}{dict(labels)} dropped"

    # A finished plan leaves the queue gauges: its labels are bounded to running and held plans.
    with write_session() as session:
        operator.cancel_plan(session, plan_id, BASE + timedelta(minutes=50), "test")
        row = plans.get_plan(session, plan_id)
        assert row is not None and row.status == PlanStatus.CANCELLED
    third = store_figures(scrape(exporter))
    assert value(third, "orch_merge_requests_open", plan=plan_id, phase="queued") is None
    assert value(third, "orch_merge_queue_oldest_seconds", plan=plan_id) is None
    assert by(third, "orch_merges_total", "outcome")[("merged",)] >= 2.0


def claim_all(plan_id: str, task: dict[str, int]) -> dict[str, Claim]:
    """Every ready task of the plan dispatched and claimed, each by a worker of its own."""
    with write_session() as session:
        dispatches = reconcile_plans(session, [plan_id], registry(), BASE)
    key_of = {pk: key for key, pk in task.items()}
    claims = {}
    for dispatch in dispatches:
        key = key_of[dispatch.task_pk]
        with write_session() as session:
            found = attempts.claim(session, dispatch.task_pk, dispatch.attempt, f"{key}@host", 1, 3600.0, now=BASE)
        assert found is not None
        claims[key] = found[0]
    return claims


def test_live_worktrees_are_running_attempts_with_a_worktree(store_url: str, tmp_path: Path) -> None:
    plan_id, task = submit(["in-tree", "shared"])
    in_tree = claim_all(plan_id, task)["in-tree"]  # `shared` runs in the plan's shared folder: no worktree
    with write_session() as session:
        path = str(tmp_path / "worktrees" / plan_id / "in-tree" / "1")
        branch = merges.attempt_branch(plan_id, "in-tree", 1)
        assert merges.record_worktree(session, in_tree, branch, COMMIT, path)
    samples = scrape(collector(tmp_path))
    assert value(samples, "orch_worktrees_live", agent_type=AGENT) == 1.0
    assert value(samples, "orch_worktrees_live", agent_type="backend-development") == 0.0  # every type, 0 if none
    with write_session() as session:
        operator.cancel_plan(session, plan_id, BASE + timedelta(seconds=5), "test")
    assert value(scrape(collector(tmp_path)), "orch_worktrees_live", agent_type=AGENT) == 0.0


def test_worktree_disk_is_this_hosts_root_measured_in_the_background(store_url: str, tmp_path: Path) -> None:
    root = tmp_path / "worktrees" / "plan" / "task" / "1"
    root.mkdir(parents=True)
    (root / "module.py").write_bytes(os.urandom(64 * 1024))
    exporter = collector(tmp_path, disk_every=0.0)

    def measured() -> float | None:
        return value(scrape(exporter), "orch_worktree_disk_bytes", host=exporter.host)

    found = wait_for(measured, 30, "the worktree root's first measurement")
    assert found == disk_usage(tmp_path / "worktrees") >= 64 * 1024
    (root / "data.bin").write_bytes(os.urandom(256 * 1024))
    wait_for(lambda: (measured() or 0) >= found + 256 * 1024, 30, "the new file to be measured")


def test_the_disk_is_walked_at_most_once_per_period_and_never_by_the_scrape(tmp_path: Path) -> None:
    walks: list[Path] = []
    release = threading.Event()

    def slow_walk(path: Path) -> int:
        walks.append(path)
        release.wait(30)
        return 4096

    meter = DiskMeter(tmp_path, every=3600.0, measure=slow_walk)
    assert meter.latest() is None  # the walk runs in the background: the scrape does not wait for it
    assert meter.latest() is None and len(walks) <= 1  # one walk at a time
    release.set()
    figure = wait_for(meter.latest, 30, "the walk to end")
    assert figure.bytes == 4096
    for _scrape in range(5):
        assert meter.latest() == figure
    assert walks == [tmp_path]  # within the period, never walked again
    absent = DiskMeter(tmp_path / "absent", every=0.0)
    assert wait_for(absent.latest, 30, "the absent root's measurement").bytes == 0  # no worktree yet: 0 bytes
