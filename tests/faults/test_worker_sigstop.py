"""Scenario 2: a worker frozen (SIGSTOP to its main process, its pool process and its agent) while it runs a long
task, past its lease. The beat's reaper records the attempt `lost`; the task is retried on a second worker and
succeeds there. Then the frozen worker is thawed (SIGCONT): its next heartbeat finds the lease gone, its agent is
killed, and its late result is rejected. Only the second attempt's success is committed."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.cluster_faults import (
    attempt_records,
    kill_tree,
    per_attempt_command,
    running_on,
    signal_pids,
    wait_gone,
    worker_tree,
)
from tests.faults.conftest import MakeCluster, RecordFigures
from tests.faults.harness import FaultRun, LeaseWatch, Store, submit_plan, wait_for_plan, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.redis, pytest.mark.postgres]

AGENT = "testing-specialist"
HEARTBEAT, LEASE, TICK = 0.5, 2.0, 0.2
CLOCKS = {"ORCH_HEARTBEAT_SECONDS": str(HEARTBEAT), "ORCH_LEASE_SECONDS": str(LEASE), "ORCH_TICK_SECONDS": str(TICK)}
REJECTED = "result rejected"


@pytest.mark.timeout(90)
def test_a_frozen_worker_loses_its_attempt_and_its_late_result_is_rejected_when_it_thaws(
    fault_run: FaultRun,
    pg_redis_cluster: MakeCluster,
    record_figures: RecordFigures,
) -> None:
    cluster = pg_redis_cluster(**CLOCKS)
    queue = fault_run.queue(AGENT)
    (frozen,) = cluster.start(["frozen"], [queue], concurrency=1)
    command = per_attempt_command(fault_run, ["--sleep", "40"], ["--sleep", "0.3"])
    task = {"id": "long", "title": "long", "agent": AGENT, "retries": 2, "timeout": 120, "command": command}
    plan_id = submit_plan(fault_run, cluster.env, {"name": "sigstop", "tasks": [task]})

    tree = None
    try:
        with Store(cluster.database_url) as store:
            # The frozen attempt stays running on an expired lease until the beat's next tick reaps it.
            watch = LeaseWatch(store, plan_id, grace=TICK + 2.0)

            def running_on_frozen() -> bool:
                cluster.check_alive()
                watch.sample()
                started = any(line["event"] == "start" for line in fault_run.ledger_lines())
                return started and len(running_on(store, plan_id, "frozen")) == 1

            wait_until(running_on_frozen, 60, "the long agent to run on worker `frozen`")
            cluster.worker("thawed", [queue], concurrency=1)
            tree = worker_tree(frozen)
            assert len(tree.agent_roots) == 1, f"expected one agent under the worker: {tree}"

            # Freeze the pool process (its heartbeat thread) first, then the main process, then the agent.
            signal_pids([*tree.pool, tree.main, *tree.agents], signal.SIGSTOP)
            stopped_at = time.monotonic()

            def attempt_lost() -> bool:
                watch.sample()
                return any(a.number == 1 and a.status == "lost" for a in attempt_records(store, plan_id))

            wait_until(attempt_lost, LEASE + 20, "the reaper to record the frozen attempt lost", interval=0.05)
            reaped_after = time.monotonic() - stopped_at
            status = wait_for_plan(store, plan_id, 60, cluster=cluster, watch=watch)  # a frozen process is alive
            assert status == "succeeded", cluster.logs_tail()
            frozen_seconds = time.monotonic() - stopped_at

            signal_pids([tree.main, *tree.pool, *tree.agents], signal.SIGCONT)
            wait_until(lambda: REJECTED in cluster.log_text("frozen"), 20, "the thawed worker's result to be rejected")
            agents_left = wait_gone(tree.agents, 10)
            records = attempt_records(store, plan_id)
            wait_until(lambda: frozen.poll() is None and not running_on(store, plan_id, "frozen"), 5, "worker idle")
            cluster.check_alive()
    finally:
        if tree is not None and frozen.poll() is None:
            signal_pids(tree.all_pids, signal.SIGCONT)  # a stopped process ignores SIGTERM until continued
        if tree is not None and wait_gone(tree.agents, 0):
            kill_tree(tree.agents)

    verdict = cluster.examine(plan_id, watch)
    cluster.stop_all()  # all at once: each idle Celery worker takes seconds to shut down
    frozen_log = cluster.log_text("frozen")
    first, second = records
    ends = [(line["attempt"], line.get("ok")) for line in verdict.ledger if line["event"] == "end"]
    figures = {
        **verdict.figures,
        "reaped after": f"{reaped_after:.2f}s (lease {LEASE:g}s)",
        "frozen for": f"{frozen_seconds:.1f}s",
        "late results rejected": (frozen_log.count(REJECTED), 1),
        "lease-gone heartbeats": frozen_log.count("heartbeat: lease gone"),
        "agents left": len(agents_left),
        "worst unreaped expiry": f"{watch.longest_expired:.2f}s",
    }
    record_figures("2 worker SIGSTOP", figures, verdict.notes)

    verdict.assert_ok()
    assert not agents_left, f"the thawed worker's agent was not killed: {agents_left}"
    assert (first.number, first.status, first.failure_class) == (1, "lost", "worker_lost"), first
    assert first.worker.startswith("frozen@"), first
    assert (second.number, second.status) == (2, "succeeded") and second.worker.startswith("thawed@"), second
    assert frozen_log.count(REJECTED) == 1, frozen_log[-3000:]
    assert "heartbeat: lease gone" in frozen_log, frozen_log[-3000:]
    assert ends == [(2, True)], f"only the second attempt may have finished: {ends}"
    assert frozen_seconds > LEASE, f"frozen {frozen_seconds:.1f}s, not past its {LEASE:g}s lease"
    assert reaped_after <= LEASE + 5, f"reaped {reaped_after:.1f}s after the freeze (lease {LEASE:g}s)"
