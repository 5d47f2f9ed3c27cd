"""Scenario 8: a worker running three long agents gets SIGTERM (a warm shutdown, as Kubernetes sends it) while a
second worker reads the same queue. After ORCH_SHUTDOWN_GRACE its agents are killed, their attempts recorded as
`interrupted` (not counted against retries: the tasks have none), re-queued in the same transaction, and finished
by the second worker; the first worker exits within the grace, the kill grace and a few seconds."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

import pytest

from tests.faults.cluster_faults import (
    attempt_records,
    per_attempt_command,
    running_on,
    task_events,
    wait_gone,
    worker_tree,
)
from tests.faults.conftest import MakeCluster, RecordFigures
from tests.faults.harness import (
    FAST_SETTINGS,
    FaultRun,
    LeaseWatch,
    Store,
    submit_plan,
    wait_for_plan,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.redis, pytest.mark.postgres]

AGENT = "backend-development"
TASKS = ["long-1", "long-2", "long-3"]
SHUTDOWN_GRACE = 1.0
KILL_GRACE = float(FAST_SETTINGS["ORCH_KILL_GRACE_SECONDS"])
SLACK = 5.0  # recording the results and Celery's own pool shutdown, on a loaded 2-core machine


@pytest.mark.timeout(90)
def test_sigterm_interrupts_running_attempts_which_finish_on_another_worker_without_spending_retries(
    fault_run: FaultRun,
    pg_redis_cluster: MakeCluster,
    record_figures: RecordFigures,
) -> None:
    cluster = pg_redis_cluster(ORCH_SHUTDOWN_GRACE=str(SHUTDOWN_GRACE))
    queue = fault_run.queue(AGENT)
    (leaving,) = cluster.start(["leaving"], [queue], concurrency=3)
    command = per_attempt_command(fault_run, ["--sleep", "30"], ["--sleep", "0.3"])
    tasks = [{"id": k, "title": k, "agent": AGENT, "retries": 0, "timeout": 120, "command": command} for k in TASKS]
    plan_id = submit_plan(fault_run, cluster.env, {"name": "sigterm", "tasks": tasks})

    with Store(cluster.database_url) as store:
        watch = LeaseWatch(store, plan_id)

        def all_three_run_on_leaving() -> bool:
            cluster.check_alive()
            watch.sample()
            started = {line["task"] for line in fault_run.ledger_lines() if line["event"] == "start"}
            return started == set(TASKS) and len(running_on(store, plan_id, "leaving")) == len(TASKS)

        wait_until(all_three_run_on_leaving, 60, "the three long agents to run on worker `leaving`")
        cluster.worker("staying", [queue], concurrency=3)
        tree = worker_tree(leaving)
        agents = tree.agents
        assert len(tree.agent_roots) == len(TASKS), f"expected {len(TASKS)} agents under the worker, got {tree}"

        signalled = time.monotonic()
        leaving.send_signal(signal.SIGTERM)
        limit = SHUTDOWN_GRACE + KILL_GRACE + SLACK
        with contextlib.suppress(subprocess.TimeoutExpired):
            leaving.wait(timeout=limit + 10)
        exit_seconds = time.monotonic() - signalled
        exit_code = leaving.poll()
        agents_left = wait_gone(agents, 0)
        cluster.forget("leaving")

        status = wait_for_plan(store, plan_id, 60, cluster=cluster, watch=watch)
        records = attempt_records(store, plan_id)
        events = task_events(store, plan_id)

    verdict = cluster.examine(plan_id, watch)
    cluster.stop_all()  # all at once: each idle Celery worker takes seconds to shut down
    interrupted = [
        a
        for a in records
        if a.number == 1
        and a.status == "interrupted"
        and a.failure_class == "interrupted"
        and a.worker.startswith("leaving@")
    ]
    elsewhere = [a for a in records if a.number == 2 and a.status == "succeeded" and a.worker.startswith("staying@")]
    requeue_delay = {}
    for key in TASKS:
        waits = [e.at for e in events if e.key == key and e.attempt == 1 and e.new == "retry_wait"]
        queued = [e.at for e in events if e.key == key and e.attempt == 2 and e.new == "queued"]
        if waits and queued:
            requeue_delay[key] = (queued[0] - waits[0]).total_seconds()
    figures = {
        **verdict.figures,
        "interrupted": (len(interrupted), len(TASKS)),
        "finished elsewhere": (len(elsewhere), len(TASKS)),
        "re-queued in the same transaction": (sum(1 for d in requeue_delay.values() if d == 0), len(TASKS)),
        "worker exit seconds": f"{exit_seconds:.2f}s (limit {limit:g}s)",
        "agents left after exit": len(agents_left),
    }
    record_figures("8 worker SIGTERM", figures, verdict.notes)

    verdict.assert_ok()
    assert exit_code is not None and exit_seconds <= limit, (
        f"worker exited {exit_code} after {exit_seconds:.1f}s:\n{cluster.log_tail('leaving')}"
    )
    assert not agents_left, f"agents of the stopped worker still alive: {agents_left}"
    assert cluster.log_text("leaving").count("shutdown grace over: running attempts interrupted") == 1
    assert status == "succeeded", cluster.logs_tail()
    assert len(interrupted) == len(TASKS), records
    assert len(elsewhere) == len(TASKS), records
    assert len(records) == 2 * len(TASKS), records
    assert all(delay <= 0.5 for delay in requeue_delay.values()) and len(requeue_delay) == len(TASKS), requeue_delay
    ends = [(line["task"], line["attempt"], line.get("ok")) for line in verdict.ledger if line["event"] == "end"]
    assert sorted(ends) == [(key, 2, True) for key in TASKS], f"the killed agents must not have finished: {ends}"
