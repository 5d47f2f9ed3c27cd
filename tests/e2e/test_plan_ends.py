"""How a plan's end reads through the CLI: a paused plan whose tasks all finish takes its final status (and
`orch watch` returns), `orch logs` of a task that never ran says why, and `orch status` states its times' zone."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from beat.tick import run_tick
from orch.decisions.retry import Outcome
from orch.dispatch.reconcile import reconcile_plans
from orch.records import AttemptResult, Claim, Dispatch
from orch.settings import get_settings
from orch.states import AttemptStatus, TaskStatus
from orch.store import attempts, plans
from orch.store.db import write_session
from tests.e2e.conftest import orch_env, run_orch, start_watch
from tests.helpers import make_plan, registry
from workers.runner import finish

FAILURE = Outcome(TaskStatus.FAILED, AttemptStatus.FAILED)


def now() -> datetime:
    return datetime.now(UTC)


def submit(tasks: list[dict[str, object]], name: str) -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(tasks, name=name), now())


def dispatch(plan_id: str) -> dict[str, Dispatch]:
    with write_session() as session:
        return {d.key: d for d in reconcile_plans(session, [plan_id], registry(), now())}


def start(task: Dispatch) -> Claim:
    with write_session() as session:
        claimed = attempts.claim(session, task.task_pk, task.attempt, "worker-1", 1, 60, now=now())
    assert claimed is not None
    return claimed[0]


def finished(process: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def test_a_paused_plan_whose_last_task_finishes_succeeds_and_watch_returns(tmp_path: Path, sqlite_url: str) -> None:
    plan_id = submit([{"id": "build", "title": "build it", "command": "true"}], "paused-done")
    claim = start(dispatch(plan_id)["build"])
    env = orch_env(tmp_path, ORCH_DATABASE_URL=sqlite_url, COLUMNS="120")
    paused = run_orch(["pause", "paused-done"], tmp_path, env)
    assert paused.returncode == 0, paused.stderr
    watching = start_watch("paused-done", tmp_path, env)
    # The running attempt finishes through the worker's own path (its fast path, not the beat).
    assert finish(claim, AttemptResult(True, exit_code=0), get_settings()) == "succeeded"
    stdout, stderr = finished(watching)
    assert watching.returncode == 0, stdout + stderr
    assert "paused-done succeeded  1/1 done" in stdout
    status = run_orch(["status", plan_id, "--json"], tmp_path, env)
    assert '"status": "succeeded"' in status.stdout


def test_a_paused_plan_whose_tasks_end_otherwise_fails_at_the_next_tick(tmp_path: Path, sqlite_url: str) -> None:
    plan_id = submit(
        [
            {"id": "build", "title": "build it", "command": "true"},
            {"id": "ship", "title": "ship it", "command": "true", "after": ["build"]},
        ],
        "paused-cancelled",
    )
    start(dispatch(plan_id)["build"])
    env = orch_env(tmp_path, ORCH_DATABASE_URL=sqlite_url, COLUMNS="120")
    assert run_orch(["pause", plan_id], tmp_path, env).returncode == 0
    cancelled = run_orch(["cancel", plan_id, "build"], tmp_path, env)
    assert cancelled.returncode == 0, cancelled.stderr
    watching = start_watch(plan_id, tmp_path, env)
    run_tick()  # the beat: `ship` can never run, so every task is final
    stdout, stderr = finished(watching)
    assert watching.returncode == 1, stdout + stderr
    assert "paused-cancelled failed  2/2 done  upstream_failed: 1  cancelled: 1" in stdout


def test_logs_of_a_task_that_never_ran_say_which_upstream_task_failed(tmp_path: Path, sqlite_url: str) -> None:
    plan_id = submit(
        [
            {"id": "build", "title": "build it", "command": "false", "retries": 0},
            {"id": "test", "title": "test it", "command": "true", "after": ["build"]},
            {"id": "ship", "title": "ship it", "command": "true", "after": ["test"]},
        ],
        "never-ran",
    )
    claim = start(dispatch(plan_id)["build"])
    with write_session() as session:
        result = AttemptResult(False, exit_code=1, error="command failed: exit 1")
        assert attempts.record_result(session, claim, result, FAILURE, now()) is not None
    assert dispatch(plan_id) == {}  # test and ship doomed
    env = orch_env(tmp_path, ORCH_DATABASE_URL=sqlite_url)
    for task in ("test", "ship"):
        logs = run_orch(["logs", "never-ran", task], tmp_path, env)
        assert logs.returncode == 2 and not logs.stdout
        assert logs.stderr == (
            f"orch: task {task!r} of plan {plan_id} never ran and will not: upstream task 'build' failed "
            "(command failed: exit 1)\n"
        )


def test_status_states_the_time_zone_of_its_times(tmp_path: Path, sqlite_url: str) -> None:
    submit([{"id": "build", "title": "build it", "command": "true"}], "zoned")
    env = orch_env(tmp_path, ORCH_DATABASE_URL=sqlite_url, COLUMNS="120")
    listed = run_orch(["status"], tmp_path, env)
    assert listed.returncode == 0, listed.stderr
    assert "created (UTC)" in listed.stdout
