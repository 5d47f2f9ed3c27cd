"""Scenario 3: every task message is published twice more while the plan runs (one copy under the original
message id, one under a fresh id) as soon as the test sees the task queued or running, and every task's message
twice again once it has succeeded. Two workers on the same queues race for the copies, and the beat re-sends
messages that wait too long. Nothing may run twice: each attempt is claimed once, by compare-and-set, and every
copy that loses is dropped."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from orch.records import RUN_TASK
from tests.faults.conftest import MakeCluster, RecordFigures
from tests.faults.harness import (
    FaultRun,
    LeaseWatch,
    Store,
    TaskState,
    publisher_app,
    redis_backlog,
    submit_plan,
    wait_for_plan,
    wait_until,
)
from tests.helpers import layered_dag

pytestmark = [pytest.mark.faults, pytest.mark.redis, pytest.mark.postgres]

AGENTS = ["backend-development", "testing-specialist", "documentation-writer", "devops-engineer"]
COPIES = 2


class Republisher:
    """Sends COPIES more messages for every (task, attempt) the first time it is seen (queued, running or already
    succeeded), and on demand for every succeeded task again."""

    def __init__(self, app: Any, store: Store, plan_id: str) -> None:
        self.app = app
        self.store = store
        self.plan_id = plan_id
        self.done: set[tuple[int, int]] = set()
        self.sent_while: Counter[str] = Counter()

    @property
    def sent(self) -> int:
        return sum(self.sent_while.values())

    def __call__(self) -> None:
        with self.store.engine.connect() as conn:
            rows = self.store.tasks(conn, self.plan_id, ["queued", "running", "succeeded"])
        self.send([t for t in rows if (t.pk, t.attempt) not in self.done])

    def succeeded_again(self) -> None:
        with self.store.engine.connect() as conn:
            self.send(self.store.tasks(conn, self.plan_id, ["succeeded"]))

    def send(self, tasks: list[TaskState]) -> None:
        if not tasks:
            return
        with self.app.producer_or_acquire() as producer:
            for task in tasks:
                for copy in range(COPIES):
                    message_id = f"{self.plan_id}.{task.key}.{task.attempt}" if copy == 0 else f"dup-{uuid.uuid4()}"
                    self.app.send_task(
                        RUN_TASK, args=(task.pk, task.attempt), queue=task.queue, task_id=message_id, producer=producer
                    )
                self.done.add((task.pk, task.attempt))
                self.sent_while[task.status] += COPIES


@pytest.mark.timeout(150)
def test_every_message_published_twice_runs_each_task_once(
    fault_run: FaultRun,
    pg_redis_cluster: MakeCluster,
    record_figures: RecordFigures,
) -> None:
    cluster = pg_redis_cluster()
    cluster.start(["alpha", "beta"], fault_run.queues(AGENTS), concurrency=3)

    tasks = layered_dag(width=20, depth=6, command=fault_run.agent_command("--sleep", "0.15"), agents=AGENTS)
    plan_id = submit_plan(fault_run, cluster.env, {"name": "dupes", "tasks": tasks})
    app = publisher_app(fault_run, cluster.broker_url)

    with Store(cluster.database_url) as store:
        republish = Republisher(app, store, plan_id)
        watch = LeaseWatch(store, plan_id)
        status = wait_for_plan(store, plan_id, 100, cluster=cluster, watch=watch, during=republish, interval=0.1)
        republish.succeeded_again()  # every task, now that it succeeded
        wait_until(lambda: redis_backlog(cluster.broker_url, fault_run) == 0, 30, "every copy to be consumed and acked")
        cluster.check_alive()
    app.close()

    verdict = cluster.examine(plan_id, watch)
    starts = sum(1 for line in verdict.ledger if line["event"] == "start")
    claimed = len(verdict.snapshot.attempts)
    figures = {
        **verdict.figures,
        "duplicates sent": republish.sent,
        "sent while queued/running/succeeded": "/".join(
            str(republish.sent_while[s]) for s in ("queued", "running", "succeeded")
        ),
        "duplicates run": (starts - claimed, republish.sent),
        "dropped (worker logs)": cluster.log_count("dropped duplicate or stale delivery"),
    }
    record_figures("3 duplicate messages", figures, verdict.notes)

    verdict.assert_ok()
    assert status == "succeeded", cluster.logs_tail()
    assert len(republish.done) == len(tasks) and republish.sent == 2 * COPIES * len(tasks), republish.sent_while
    assert republish.sent_while["succeeded"] >= COPIES * len(tasks), "a succeeded task was not re-published"
    assert starts == claimed == len(tasks), f"{starts} agent runs and {claimed} claimed attempts for {len(tasks)} tasks"
    assert all(t.attempt == 1 for t in verdict.snapshot.tasks)
