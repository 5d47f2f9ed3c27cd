"""Issue 14, points 2 and 6, as a newcomer meets them: a plan submitted where no beat ticks, or whose queue no
worker reads, waits for ever; `orch submit`, `status` and `watch` say so, naming the store, the beat's last tick and
the queue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from orch.celery import make_app
from orch.dispatch.reconcile import publish, reconcile_plans
from orch.settings import get_settings
from orch.store import plans
from orch.store.db import db_now, write_session
from tests.e2e.conftest import ORCH, Processes, orch_env, run_orch
from tests.helpers import make_plan, registry, wait_for

BEAT = [sys.executable, "-m", "celery", "-A", "orch", "beat"]


def write_plan(tmp_path: Path) -> Path:
    plan = tmp_path / "plan.yaml"
    task = {"id": "deploy", "title": "ship it", "agent": "devops-engineer", "command": "true"}
    plan.write_text(yaml.safe_dump({"name": "unserved", "tasks": [task]}))
    return plan


def test_submit_status_and_watch_name_the_missing_beat_and_the_queue_nobody_reads(
    redis_url: str, tmp_path: Path, processes: Processes
) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url)
    submitted = run_orch(["submit", str(write_plan(tmp_path))], tmp_path, env, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    plan_id = submitted.stdout.strip()  # stdout is the id alone, for scripts
    store = tmp_path / ".orch" / "orch.db"
    assert f"orch submit: stored in the store at {store}; no beat has ever ticked this store" in submitted.stderr
    assert "no worker reads agent.devops-engineer (1 task of this plan)" in submitted.stderr, submitted.stderr

    waiting = run_orch(["status", plan_id], tmp_path, env, timeout=60)
    assert waiting.returncode == 0, waiting.stderr
    assert "— no beat has ever ticked this store; start one: see docs/troubleshooting.md" in waiting.stdout
    assert "pending " in waiting.stdout

    # A beat dispatches the task to its queue, which no worker reads.
    processes.start([*BEAT, "-s", str(tmp_path / "beat-schedule")], tmp_path, env, tmp_path / "beat.log")

    def queued() -> bool:
        result = run_orch(["status", plan_id, "--json"], tmp_path, env, timeout=60)
        return bool(json.loads(result.stdout)["tasks"][0]["status"] == "queued")

    wait_for(queued, 60, "the beat to queue the task")
    stuck = run_orch(["status", plan_id, "--json"], tmp_path, env, timeout=60)
    notes = json.loads(stuck.stdout)["notes"]
    assert len(notes) == 1 and notes[0].startswith("queued "), notes
    assert notes[0].endswith("— no worker reads agent.devops-engineer; start one: see docs/troubleshooting.md")

    resubmitted = run_orch(["submit", str(write_plan(tmp_path))], tmp_path, env, timeout=60)
    assert "no beat" not in resubmitted.stderr and "; beat pid " in resubmitted.stderr, resubmitted.stderr

    log = tmp_path / "watch.log"
    with log.open("wb") as out:  # piped: a summary line, and the note when it changes
        watch = subprocess.Popen(
            [ORCH, "watch", plan_id, "--interval", "0.2"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: "no worker reads agent.devops-engineer" in log.read_text(), 60, "watch to name the queue")
    finally:
        watch.kill()
        watch.wait()


def test_cancel_takes_a_queued_tasks_message_off_the_broker(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14, point 6: a cancelled task's message stayed behind in Redis (on a queue nobody reads, for ever)."""
    monkeypatch.setenv("ORCH_BROKER_URL", redis_url)
    get_settings.cache_clear()
    tasks = [
        {"id": "a", "title": "ship it", "agent": "devops-engineer", "command": "true"},
        {"id": "b", "title": "ship that", "agent": "devops-engineer", "command": "true"},
        {"id": "c", "title": "tidy", "agent": "general-purpose", "command": "true"},
    ]
    with write_session() as session:
        plan_id = plans.submit_plan(session, make_plan(tasks, name="withdrawn"), db_now(session))
        dispatches = reconcile_plans(session, [plan_id], registry(), db_now(session))
    app = make_app()
    try:
        publish(app, dispatches, 5.0)
        publish(app, [d for d in dispatches if d.key == "a"], 5.0)  # a re-sent copy, as the beat sends one
    finally:
        app.close()
    broker = redis.Redis.from_url(redis_url)
    assert broker.llen("agent.devops-engineer") == 3 and broker.llen("agent.general-purpose") == 1
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url)

    one = run_orch(["cancel", plan_id, "a"], tmp_path, env, timeout=60)
    assert one.returncode == 0, one.stderr
    assert "2 queued messages taken off the broker" in one.stdout, one.stdout
    assert broker.llen("agent.devops-engineer") == 1  # b's is still there

    rest = run_orch(["cancel", plan_id], tmp_path, env, timeout=60)
    assert rest.returncode == 0, rest.stderr
    assert "2 queued messages taken off the broker" in rest.stdout, rest.stdout
    assert broker.llen("agent.devops-engineer") == 0 and broker.llen("agent.general-purpose") == 0
