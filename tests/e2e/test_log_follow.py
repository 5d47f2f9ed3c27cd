"""`orch logs -f` of a running task: it follows the growing log file on the host that has it (from any folder,
whatever that folder's ORCH_HOME), then says how the attempt ended; on a host without the file it names the
worker that has it and exits non-zero."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import threading
from pathlib import Path

from orch.dispatch.reconcile import reconcile_plans
from orch.store import plans
from orch.store.db import db_now, read_session, write_session
from tests.e2e.conftest import ORCH, Processes, orch_env, run_orch
from tests.helpers import make_plan, registry, wait_for
from workers.runner import run_attempt

WAITS_FOR_GO = "echo first line; while [ ! -e go ]; do sleep 0.1; done; echo second line"


def task_status(plan: str, task: str, folder: Path, env: dict[str, str]) -> str | None:
    status = run_orch(["status", plan, "--json"], folder, env)
    if status.returncode != 0:
        return None
    return next((t["status"] for t in json.loads(status.stdout)["tasks"] if t["id"] == task), None)


def test_logs_follow_prints_a_running_tasks_growing_log_from_another_folder_and_how_it_ended(
    tmp_path: Path, processes: Processes
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    plan = project / "grows.json"
    plan.write_text(json.dumps({"name": "grows", "tasks": [{"id": "slow", "title": "waits", "command": WAITS_FOR_GO}]}))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    run_env = orch_env(project, ORCH_DATABASE_URL=store)
    # The same store, read from another folder: its own ORCH_HOME has no logs.
    env = orch_env(elsewhere, ORCH_DATABASE_URL=store)
    run = processes.start([ORCH, "run", str(plan)], project, run_env, tmp_path / "run.log")
    try:
        wait_for(lambda: task_status("grows", "slow", elsewhere, env) == "running", 120, "the task to run")
        wait_for(lambda: list((project / ".orch" / "logs").glob("*/slow.1.log")), 30, "its log file")
        follow = subprocess.Popen(
            [ORCH, "logs", "grows", "slow", "--follow"],
            cwd=elsewhere,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            bufsize=0,
        )
        try:
            assert follow.stdout is not None
            assert select.select([follow.stdout], [], [], 60)[0], "orch logs -f printed nothing in 60 s"
            first = follow.stdout.readline()
            assert first == b"first line\n", first + (follow.stderr.read() if follow.stderr else b"")
            assert follow.poll() is None  # still following
            (project / "go").touch()
            rest, errors = follow.communicate(timeout=60)
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.communicate(timeout=10)
        assert run.wait(120) == 0
    finally:
        if run.poll() is None:
            (project / "go").touch()
            run.send_signal(signal.SIGINT)
            run.wait(60)
    assert follow.returncode == 0, errors
    assert rest == b"second line\n"
    assert errors.decode().strip().splitlines()[-1] == "orch logs: attempt 1 of task slow ended: succeeded"


def test_logs_of_a_task_running_on_another_host_name_its_worker_and_exit_non_zero(
    tmp_path: Path, sqlite_url: str
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    with write_session() as session:
        plan_id = plans.submit_plan(
            session,
            make_plan([{"id": "slow", "title": "waits", "command": WAITS_FOR_GO}], name="away", workdir=workdir),
            db_now(session),
        )
    with write_session() as session:
        (dispatch,) = reconcile_plans(session, [plan_id], registry(), db_now(session))
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run_attempt(dispatch.task_pk, 1, "w1@far-away-host")))
    worker.start()
    here, away = tmp_path / ".orch" / "logs" / plan_id, tmp_path / "moved"
    try:
        wait_for(lambda: (here / "slow.1.log").is_file() and (here / "slow.1.log").read_bytes(), 30, "its log")
        here.rename(away)  # as seen from a host without that file (the worker writes on, to the moved file)
        env = orch_env(tmp_path, ORCH_DATABASE_URL=sqlite_url)
        followed = run_orch(["logs", "away", "slow", "-f"], tmp_path, env, timeout=60)
        shown = run_orch(["logs", "away", "slow"], tmp_path, env, timeout=60)
    finally:
        (workdir / "go").touch()
        worker.join(60)
    assert outcome == ["succeeded"]
    for result in (followed, shown):
        assert result.returncode == 2, result.stderr
        (message,) = result.stderr.splitlines()
        assert message.startswith("orch: attempt 1 of task 'slow' is running on worker w1@far-away-host"), message
        assert str(here / "slow.1.log") in message and "not on this host" in message
    # Once it ended, the output it left in the store is shown, saying where the whole log is.
    with read_session() as session:
        (attempt,) = plans.task_attempts(session, dispatch.task_pk)
    assert attempt.log_path == str(here / "slow.1.log")
    after = run_orch(["logs", "away", "slow"], tmp_path, env, timeout=60)
    assert after.returncode == 0 and after.stdout == "first line\nsecond line\n"
    assert "w1@far-away-host" in after.stderr
