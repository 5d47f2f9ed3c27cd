"""The production shape on one machine: two `celery -A orch worker`s on different queues, one `celery -A orch
beat`, Flower, the machine's Redis (or RabbitMQ) and PostgreSQL; a 210-task plan submitted with `orch submit`."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from orch.celery import app, use_broker
from orch.dispatch.reconcile import publish
from orch.records import Dispatch
from orch.settings import get_settings
from orch.store import plans
from orch.store.db import read_session
from tests.e2e.conftest import Processes, orch_env, run_orch
from tests.helpers import check_ledger_order, free_port, layered_dag, wait_for

CELERY = [sys.executable, "-m", "celery", "-A", "orch"]
QUEUES_A = ["agent.backend-development", "agent.testing-specialist"]
QUEUES_B = ["agent.documentation-writer", "agent.devops-engineer"]
AGENTS = ["backend-development", "testing-specialist", "documentation-writer", "devops-engineer"]


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def http_ok(url: str) -> bool:
    try:
        http_get(url)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("broker_fixture", ["redis_url", "rabbitmq_url"])
def test_two_workers_and_a_beat_run_a_210_task_plan(
    broker_fixture: str, request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path, processes: Processes
) -> None:
    broker_url = str(request.getfixturevalue(broker_fixture))
    env = orch_env(
        tmp_path, ORCH_DATABASE_URL=postgres_url, ORCH_BROKER_URL=broker_url, ORCH_FLOWER_AUTH="ops:e2e-flower-pass"
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    flower_port = free_port()
    processes.start(
        [*CELERY, "worker", "-Q", ",".join(QUEUES_A), "-n", "alpha@%h", "-c", "3"], tmp_path, env, logs / "alpha.log"
    )
    processes.start(
        [*CELERY, "worker", "-Q", ",".join(QUEUES_B), "-n", "beta@%h", "-c", "3"], tmp_path, env, logs / "beta.log"
    )
    processes.start([*CELERY, "beat"], tmp_path, env, logs / "beat.log")
    processes.start(
        [*CELERY, "flower", f"--port={flower_port}", "--address=127.0.0.1"], tmp_path, env, logs / "flower.log"
    )
    wait_for(lambda: http_ok(f"http://127.0.0.1:{flower_port}/healthcheck"), 60, "Flower to answer")

    ledger = tmp_path / "ledger"
    tasks = layered_dag(width=30, depth=7, command=f"echo $ORCH_TASK_ID >> {ledger}", agents=AGENTS)
    plan_file = tmp_path / "wide.yaml"
    plan_file.write_text(yaml.safe_dump({"name": "wide", "tasks": tasks}))
    submitted = run_orch(["submit", str(plan_file)], tmp_path, env)
    assert submitted.returncode == 0, submitted.stderr
    plan_id = submitted.stdout.strip()

    def final_status() -> str | None:
        result = run_orch(["status", plan_id, "--json"], tmp_path, env)
        status = json.loads(result.stdout)["plan"]["status"]
        return None if status == "running" else str(status)

    def logs_tail() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.iterdir()))

    try:
        status = wait_for(final_status, 180, f"plan {plan_id} to finish", interval=0.5)
    except AssertionError:
        pytest.fail(f"plan did not finish; process logs:\n{logs_tail()}")
    assert status == "succeeded", logs_tail()

    check_ledger_order(ledger, tasks)
    with read_session() as session:
        rows = plans.plan_tasks(session, plan_id)
        for task in rows:
            (attempt,) = plans.task_attempts(session, task.pk)
            expected = "alpha@" if task.queue in QUEUES_A else "beta@"
            assert attempt.worker.startswith(expected), (task.key, task.queue, attempt.worker)

    # A duplicate delivery of every (already succeeded) task message is dropped: nothing runs again.
    use_broker(broker_url)
    dispatches = [Dispatch(t.pk, t.attempt, t.queue, t.timeout, plan_id, t.key) for t in rows]
    publish(app, dispatches, get_settings().kill_grace_seconds)
    wait_for(
        lambda: (
            (logs / "alpha.log").read_text().count("dropped duplicate or stale delivery")
            + (logs / "beta.log").read_text().count("dropped duplicate or stale delivery")
            >= len(rows)
        ),
        60,
        "every duplicate to be dropped",
    )
    assert len(ledger.read_text().split()) == len(tasks)
    with read_session() as session:
        assert all(len(plans.task_attempts(session, t.pk)) == 1 for t in rows)

    # Flower saw the task events of both workers.
    metrics = http_get(f"http://127.0.0.1:{flower_port}/metrics")
    assert 'type="task-succeeded"' in metrics and "alpha@" in metrics and "beta@" in metrics
