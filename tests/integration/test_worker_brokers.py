"""Dispatch and a real Celery consumer on each broker: the embedded Redis, the machine's Redis, RabbitMQ.

The worker runs in-process (celery.contrib.testing, threads pool); the beat tick is called from the test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun

import workers.tasks  # noqa: F401  (registers orch.run_task on the app)
from beat.tick import run_tick
from orch.celery import app, use_broker
from orch.dispatch.reconcile import publish
from orch.records import Dispatch
from orch.settings import get_settings
from orch.states import PlanStatus, TaskStatus
from orch.store import plans
from orch.store.db import read_session, write_session
from tests.helpers import check_ledger_order, drive_until_final, layered_dag, make_plan, wait_for

AGENTS = ["backend-development", "testing-specialist", "documentation-writer"]


@pytest.fixture(params=["embedded_redis_url", "redis_url", "rabbitmq_url"])
def broker(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[str]:
    url = str(request.getfixturevalue(request.param))
    use_broker(url)
    # Task events are not under test here, and one process switching brokers would mix their event exchanges.
    saved = app.conf.worker_send_task_events, app.conf.task_send_sent_event
    app.conf.worker_send_task_events = app.conf.task_send_sent_event = False
    yield url
    app.conf.worker_send_task_events, app.conf.task_send_sent_event = saved


@pytest.fixture
def outcomes() -> Iterator[list[str]]:
    """What each orch.run_task delivery returned: a status, or "dropped" for a duplicate (whose result says
    "duplicate delivery: …; nothing done", or "stale delivery: …")."""
    seen: list[str] = []

    def record(sender: Any = None, retval: Any = None, **_: Any) -> None:
        if sender is not None and sender.name == "orch.run_task":
            seen.append("dropped" if str(retval).endswith("; nothing done") else str(retval))

    task_postrun.connect(record, weak=False)
    yield seen
    task_postrun.disconnect(record)


def run_plan(tasks: list[dict[str, Any]], workdir: Path, timeout: float = 60) -> str:
    with write_session() as session:
        plan_id = plans.submit_plan(session, make_plan(tasks, workdir=workdir), datetime.now(UTC))
    drive_until_final(plan_id, timeout)
    return plan_id


def worker_on(queues: list[str]) -> Any:
    return start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, queues=queues, shutdown_timeout=20
    )


def test_a_dag_runs_in_dependency_order_on_each_broker(broker: str, tmp_path: Path, outcomes: list[str]) -> None:
    ledger = tmp_path / "ledger"
    tasks = layered_dag(width=4, depth=5, command=f"echo $ORCH_TASK_ID >> {ledger}", agents=AGENTS)
    with worker_on([f"agent.{a}" for a in AGENTS]):
        plan_id = run_plan(tasks, tmp_path)
    with read_session() as session:
        plan = plans.get_plan(session, plan_id)
        assert plan is not None and plan.status is PlanStatus.SUCCEEDED
        assert {t.status for t in plans.plan_tasks(session, plan_id)} == {TaskStatus.SUCCEEDED}
    check_ledger_order(ledger, tasks)
    assert outcomes.count("succeeded") == len(tasks)


def test_duplicate_deliveries_are_dropped(broker: str, tmp_path: Path, outcomes: list[str]) -> None:
    ledger = tmp_path / "ledger"
    tasks = [
        {"id": f"t{i}", "title": "api work", "agent": "backend-development", "command": f"echo t{i} >> {ledger}"}
        for i in range(6)
    ]
    with write_session() as session:
        plan_id = plans.submit_plan(session, make_plan(tasks, workdir=tmp_path), datetime.now(UTC))
    with write_session() as session:
        from orch.dispatch.reconcile import reconcile_plans
        from tests.helpers import registry

        dispatches = reconcile_plans(session, [plan_id], registry(), datetime.now(UTC))
    assert len(dispatches) == 4  # the agent type's cap
    grace = get_settings().kill_grace_seconds
    publish(app, dispatches, grace)
    publish(app, dispatches, grace)  # every message delivered twice
    with worker_on(["agent.backend-development"]):
        wait_for(
            lambda: outcomes.count("dropped") >= 4 and run_tick() is not None and _final(plan_id),
            60,
            "the plan to finish and the duplicates to be dropped",
        )
        done: list[Dispatch] = []
        with read_session() as session:
            for task in plans.plan_tasks(session, plan_id):
                done.append(Dispatch(task.pk, task.attempt, task.queue, task.timeout, plan_id, task.key))
        publish(app, done, grace)  # already-succeeded tasks published again
        wait_for(lambda: outcomes.count("dropped") >= 4 + len(done), 30, "re-published messages to be dropped")
    lines = ledger.read_text().split()
    assert sorted(lines) == sorted(t["id"] for t in tasks)  # each ran exactly once
    with read_session() as session:
        for task in plans.plan_tasks(session, plan_id):
            assert len(plans.task_attempts(session, task.pk)) == 1


def _final(plan_id: str) -> bool:
    with read_session() as session:
        plan = plans.get_plan(session, plan_id)
        return plan is not None and plan.status is PlanStatus.SUCCEEDED
