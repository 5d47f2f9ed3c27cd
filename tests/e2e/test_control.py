"""The operator's commands as a user runs them: each prints what it changed, a wrong target exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.conftest import Processes, orch_env, run_orch
from tests.helpers import wait_for


def status(tmp_path: Path, env: dict[str, str], plan_id: str) -> dict[str, Any]:
    result = run_orch(["status", plan_id, "--json"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def task_states(tmp_path: Path, env: dict[str, str], plan_id: str) -> dict[str, str]:
    return {t["id"]: t["status"] for t in status(tmp_path, env, plan_id)["tasks"]}


def test_pause_resume_cancel_retry_and_skip(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            {
                "name": "ops",
                "budget": {"usd": 5},
                "tasks": [
                    {"id": "a", "title": "a", "command": "true"},
                    {"id": "b", "title": "b", "command": "true", "after": ["a"]},
                    {"id": "c", "title": "c", "command": "true", "after": ["b"]},
                ],
            }
        )
    )
    env = orch_env(tmp_path)
    submitted = run_orch(["submit", str(plan)], tmp_path, env)
    assert submitted.returncode == 0, submitted.stderr
    plan_id = submitted.stdout.strip()

    paused = run_orch(["pause", plan_id], tmp_path, env)
    assert paused.returncode == 0 and f"plan {plan_id}: running -> paused" in paused.stdout
    assert status(tmp_path, env, plan_id)["plan"]["status"] == "paused"
    again = run_orch(["pause", plan_id], tmp_path, env)
    assert again.returncode == 2 and "is paused; only a running plan can be paused" in again.stderr
    resumed = run_orch(["resume", "ops", "--budget-usd", "9"], tmp_path, env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"plan {plan_id}: paused -> running; budget now $0.0000 of $9.00" in resumed.stdout
    assert status(tmp_path, env, plan_id)["plan"]["budget"] == {"usd": 9.0, "tokens": None}

    cancelled = run_orch(["cancel", plan_id, "b"], tmp_path, env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"plan {plan_id}: task b pending -> cancelled" in cancelled.stdout
    skipped = run_orch(["skip", plan_id, "a"], tmp_path, env)
    assert f"plan {plan_id}: task a -> succeeded (skipped)" in skipped.stdout
    retried = run_orch(["retry", plan_id, "b"], tmp_path, env)
    assert retried.returncode == 0 and f"plan {plan_id}: 1 task -> pending: b" in retried.stdout
    assert task_states(tmp_path, env, plan_id) == {"a": "succeeded", "b": "pending", "c": "pending"}

    unknown = run_orch(["retry", plan_id, "nope"], tmp_path, env)
    assert unknown.returncode == 2 and f"orch: plan {plan_id} has no task 'nope'" in unknown.stderr
    not_failed = run_orch(["retry", plan_id, "c"], tmp_path, env)
    assert not_failed.returncode == 2 and "task 'c' of plan" in not_failed.stderr and "is pending" in not_failed.stderr

    whole = run_orch(["cancel", plan_id], tmp_path, env)
    assert whole.returncode == 0, whole.stderr
    assert f"plan {plan_id} cancelled: 2 tasks -> cancelled (2 pending)" in whole.stdout
    assert task_states(tmp_path, env, plan_id) == {"a": "succeeded", "b": "cancelled", "c": "cancelled"}
    after = run_orch(["retry", plan_id, "b"], tmp_path, env)
    assert after.returncode == 2 and "is cancelled; submit it again" in after.stderr


def test_a_second_beat_on_a_sqlite_store_refuses_to_start(tmp_path: Path, processes: Processes, redis_url: str) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url)
    beat = [sys.executable, "-m", "celery", "-A", "orch", "beat"]
    first = processes.start([*beat, "-s", str(tmp_path / "s1")], tmp_path, env, tmp_path / "beat1.log")
    lock = tmp_path / ".orch" / "orch.db.beat.lock"
    wait_for(lambda: lock.exists() and lock.read_text() == str(first.pid), 30, "the first beat to take its lock")
    second = subprocess.run(
        [*beat, "-s", str(tmp_path / "s2")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 2
    assert f"orch: another beat (pid {first.pid}) already runs against sqlite:///" in second.stderr
    assert first.poll() is None  # the first one goes on
