"""Scenario 1: a 300-task plan on two workers; three times while it runs, one worker is SIGKILLed (its main process
and its pool processes, as a host that dies) and a replacement started on the same queues. The agents it ran are
in process groups of their own and survive it, orphaned, like the agents of a host whose worker alone crashed;
they finish their short runs, but their results have no worker left to record them. The beat's reaper records the
killed worker's attempts `lost` once their leases expire and the tasks run again elsewhere; the messages the
killed worker had taken but not started are re-sent by the beat. Nothing is lost, nothing committed twice."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import pytest

from tests.faults.cluster_faults import (
    alive,
    attempt_records,
    drop_unacked,
    kill_tree,
    running_on,
    wait_gone,
    worker_tree,
)
from tests.faults.conftest import MakeCluster, RecordFigures
from tests.faults.harness import (
    Cluster,
    FaultRun,
    LeaseWatch,
    Store,
    sleeping_dag,
    submit_plan,
    wait_for_plan,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.redis, pytest.mark.postgres]

AGENTS = ["backend-development", "testing-specialist", "documentation-writer", "devops-engineer"]
HEARTBEAT, LEASE, TICK, REDELIVER = 0.5, 2.0, 0.2, 3.0
CLOCKS = {
    "ORCH_HEARTBEAT_SECONDS": str(HEARTBEAT),
    "ORCH_LEASE_SECONDS": str(LEASE),
    "ORCH_TICK_SECONDS": str(TICK),
    "ORCH_REDELIVER_SECONDS": str(REDELIVER),
}
WIDTH, DEPTH = 50, 6
KILLS = 3
SLEEPS = ["0.2", "0.3", "0.4", "0.5"]


def sigkill_plan(run: FaultRun) -> list[dict[str, Any]]:
    return sleeping_dag(run, WIDTH, DEPTH, AGENTS, lambda i: SLEEPS[i % len(SLEEPS)], retries=5, timeout=60)


@pytest.mark.timeout(150)
def test_sigkilled_workers_lose_no_task_and_commit_none_twice(
    fault_run: FaultRun,
    pg_redis_cluster: MakeCluster,
    record_figures: RecordFigures,
) -> None:
    cluster = pg_redis_cluster(**CLOCKS)
    queues = fault_run.queues(AGENTS)
    victim_name = "victim-0"
    _, victim = cluster.start(["steady", victim_name], queues, concurrency=3)
    tasks = sigkill_plan(fault_run)
    plan_id = submit_plan(fault_run, cluster.env, {"name": "sigkill", "tasks": tasks})

    killed: list[str] = []
    orphans: list[int] = []  # agents alive just after their worker was killed
    orphans_left: list[int] = []
    stranded = 0
    started = time.monotonic()
    try:
        with Store(cluster.database_url) as store:
            # A killed worker's attempt stays running on an expired lease until the beat's next tick reaps it.
            watch = LeaseWatch(store, plan_id, grace=TICK + 2.0)

            def succeeded() -> int:
                with store.engine.connect() as conn:
                    return len(store.tasks(conn, plan_id, ["succeeded"]))

            def busy(name: str, process: subprocess.Popen[bytes], floor: int) -> bool:
                cluster.check_alive()
                watch.sample()
                if succeeded() < floor or len(running_on(store, plan_id, name)) < 2:
                    return False
                return len(worker_tree(process).agents) >= 2

            for kill in range(1, KILLS + 1):
                # Spread the kills over the run, each while the victim runs at least two agents.
                floor = kill * len(tasks) // (KILLS + 2)
                what = f"{victim_name} to run two agents once {floor} tasks are done"
                wait_until(functools.partial(busy, victim_name, victim, floor), 60, what)
                tree = worker_tree(victim)
                os.killpg(victim.pid, signal.SIGKILL)  # its main and pool processes: one process group
                assert not wait_gone(tree.worker_pids, 10), "the killed worker's processes are still alive"
                orphans += [pid for pid in tree.agents if alive(pid)]
                cluster.forget(victim_name)
                killed.append(victim_name)
                victim_name = f"victim-{kill}"
                victim = cluster.worker(victim_name, queues, concurrency=3)

            status = wait_for_plan(store, plan_id, 100, cluster=cluster, watch=watch)
            elapsed = time.monotonic() - started
            records = attempt_records(store, plan_id)
        orphans_left = wait_gone(orphans, 5)
    finally:
        kill_tree(orphans_left)  # reported below; the oracle then sees none
        stranded = drop_unacked(cluster.broker_url, fault_run)

    verdict = cluster.examine(plan_id, watch)
    cluster.stop_all()  # all at once: each idle Celery worker takes seconds to shut down
    status_of = {(a.key, a.number): a.status for a in records}
    lost = [a for a in records if a.status == "lost"]
    lost_on = Counter(a.worker.split("@")[0] for a in lost)
    orphan_runs = [line for line in verdict.ledger if line["pid"] in set(orphans)]
    orphan_starts = {(line["task"], line["attempt"]) for line in orphan_runs if line["event"] == "start"}
    orphan_finished = sum(1 for line in orphan_runs if line["event"] == "end")
    orphans_committed = [k for k in orphan_starts if status_of.get(k) != "lost"]
    figures = {
        **verdict.figures,
        "kills": len(killed),
        "attempts lost (reaped)": len(lost),
        "orphaned agents": len(orphans),
        "orphans that finished their run": orphan_finished,
        "orphan results committed": len(orphans_committed),
        "orphans left at the end": len(orphans_left),
        "re-sent messages": sum_resent(cluster),
        "messages stranded unacked in Redis": stranded,
        "dropped duplicates": cluster.log_count("dropped duplicate or stale delivery"),
        "most attempts of a task": max(a.number for a in records),
        "worst unreaped expiry": f"{watch.longest_expired:.2f}s",
        "plan seconds": f"{elapsed:.1f}s",
    }
    record_figures("1 worker SIGKILL", figures, verdict.notes)

    verdict.assert_ok()
    assert status == "succeeded", cluster.logs_tail()
    assert len(killed) == KILLS
    assert set(lost_on) <= set(killed), f"attempts lost on workers never killed: {lost_on}"
    assert all(lost_on[name] >= 1 for name in killed), f"each killed worker was running attempts: {lost_on}"
    assert all(a.failure_class == "worker_lost" for a in lost), lost
    assert not orphans_committed, f"an orphaned agent's attempt was committed: {orphans_committed}"
    assert not orphans_left, f"{len(orphans_left)} orphaned agents still ran 5s after the plan ended"


def sum_resent(cluster: Cluster) -> int:
    """Messages the beat re-sent (its `tick ... resent=N` lines)."""
    return sum(int(n) for n in re.findall(r"resent=(\d+)", cluster.log_text("beat")))
