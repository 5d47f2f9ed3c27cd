"""The `orch` CLI as a user runs it: validate, route, agents, and `orch run` on the embedded default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

from tests.e2e.conftest import ORCH, orch_env, run_orch
from tests.helpers import wait_for

BAD_PLAN = """\
name: broken
tasks:
  - id: a
    title: first
    after: [c]
  - id: b
    title: second
    after: [a, ghost]
    dependz: [a]
  - id: c
    title: third
    after: [b]
  - id: a
    title: duplicate
  - id: d
    title: touches outside
    files: [/etc/passwd, ../secrets.txt]
    agent: wizard
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_validate_accepts_the_demo(tmp_path: Path, demo_copy: Path) -> None:
    result = run_orch(["validate", str(demo_copy)], tmp_path, orch_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "10 tasks" in result.stdout


def test_bad_plans_get_one_line_per_problem_exit_2_and_nothing_written(tmp_path: Path) -> None:
    plan = write(tmp_path / "broken.yaml", BAD_PLAN)
    for command in (["validate"], ["submit"], ["run"]):
        result = run_orch([*command, str(plan)], tmp_path, orch_env(tmp_path))
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert all(line.startswith(f"{plan}: ") for line in lines), lines
        text = result.stderr
        assert "unknown field 'dependz'" in text
        assert "duplicate task id 'a' (first at tasks[0])" in text
        assert "depends on unknown task 'ghost'" in text
        assert "unknown agent type 'wizard'" in text
        assert "'/etc/passwd' is absolute" in text
        assert "'../secrets.txt' contains '..'" in text
    assert not (tmp_path / ".orch").exists()  # nothing written, nothing started


def test_a_cycle_is_printed_as_its_path(tmp_path: Path) -> None:
    plan = write(
        tmp_path / "cycle.yaml",
        """\
        name: loop
        tasks:
          - {id: a, title: one, after: [c]}
          - {id: b, title: two, after: [a]}
          - {id: c, title: three, after: [b]}
        """,
    )
    result = run_orch(["validate", str(plan)], tmp_path, orch_env(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"{plan}: dependency cycle: a -> b -> c -> a"


def test_route_prints_the_type_then_why(tmp_path: Path) -> None:
    result = run_orch(["route", "Add JWT authentication to the login endpoint"], tmp_path, orch_env(tmp_path))
    assert result.returncode == 0
    first, *rest = result.stdout.splitlines()
    assert first == "security-specialist"
    assert "jwt" in rest[0] and "authentication" in rest[0]
    fallback = run_orch(["route", "make", "it", "nice"], tmp_path, orch_env(tmp_path))
    assert fallback.stdout.splitlines()[0] == "general-purpose"


def test_agents_lists_every_type_with_its_queue(tmp_path: Path) -> None:
    result = run_orch(["agents"], tmp_path, {**orch_env(tmp_path), "COLUMNS": "250"})
    assert result.returncode == 0
    for name in ("devops-engineer", "security-specialist", "observability", "general-purpose"):
        assert f"agent.{name}" in result.stdout


def test_orch_run_completes_the_demo_and_status_reports_it(tmp_path: Path, demo_copy: Path) -> None:
    env = orch_env(tmp_path)
    result = run_orch(["run", str(demo_copy)], tmp_path, env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo-accounts succeeded" in result.stdout
    assert (tmp_path / "scratch" / "dist" / "accounts.tar.gz").exists()  # the agents did real work
    status = run_orch(["status", "demo-accounts", "--json"], tmp_path, env)
    report = json.loads(status.stdout)
    assert report["plan"]["status"] == "succeeded"
    tasks = {t["id"]: t for t in report["tasks"]}
    assert len(tasks) == 10 and {t["status"] for t in tasks.values()} == {"succeeded"}
    assert tasks["health"]["attempts"] == 2  # failed once, succeeded on retry
    assert len({t["agent"] for t in tasks.values()}) >= 4
    for task in tasks.values():
        assert set(task) >= {"id", "status", "agent", "queue", "attempts", "started_at", "finished_at"}
        assert task["queue"] == f"agent.{task['agent']}"
        assert task["started_at"].endswith("Z") and task["finished_at"] >= task["started_at"]
    assert not list_processes(str(tmp_path))  # the embedded Redis and worker are gone
    first = run_orch(["logs", "demo-accounts", "health", "--attempt", "1"], tmp_path, env)
    assert first.returncode == 0 and "service not ready yet (attempt 1)" in first.stdout
    latest = run_orch(["logs", "demo-accounts", "health"], tmp_path, env)
    assert "health check: ok on attempt 2" in latest.stdout
    missing = run_orch(["logs", "demo-accounts", "nope"], tmp_path, env)
    assert missing.returncode == 2 and "has no task 'nope'" in missing.stderr


def test_orch_run_exits_1_when_the_plan_fails(tmp_path: Path) -> None:
    plan = write(
        tmp_path / "fails.yaml",
        """\
        name: fails
        tasks:
          - {id: build, title: build it, command: "echo compiling; exit 3", retries: 0}
          - {id: ship, title: ship it, command: "true", after: [build]}
          - {id: think, title: think about it, agent: general-purpose}
        """,
    )
    env = orch_env(tmp_path, ORCH_CLAUDE_BIN=str(tmp_path / "no-claude-here"))
    result = run_orch(["run", str(plan)], tmp_path, env, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    tasks = {t["id"]: t for t in json.loads(run_orch(["status", "fails", "--json"], tmp_path, env).stdout)["tasks"]}
    assert tasks["build"]["status"] == "failed"
    assert "exit status 3: compiling" in tasks["build"]["error"]
    assert tasks["ship"]["status"] == "upstream_failed"
    # No `claude` CLI on this worker (ORCH_CLAUDE_BIN points nowhere): a clear per-task failure naming how to
    # supply it, not a traceback, and no retries burned.
    assert tasks["think"]["status"] == "failed" and tasks["think"]["attempts"] == 1
    assert (
        "Claude Code CLI" in tasks["think"]["error"]
        and "npm install -g @anthropic-ai/claude-code" in tasks["think"]["error"]
    )


def list_processes(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline or marker in environ:
            found.append(f"{pid}: {cmdline}")
    return found


def test_ctrl_c_cancels_the_plan_and_leaves_no_process(tmp_path: Path) -> None:
    plan = write(
        tmp_path / "slow.yaml",
        """\
        name: slow
        tasks:
          - {id: nap, title: take a long nap, command: "sleep 300"}
          - {id: after-nap, title: wake up, command: "true", after: [nap]}
        """,
    )
    env = orch_env(tmp_path)
    run = subprocess.Popen(
        [ORCH, "run", str(plan)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:

        def nap_running() -> bool:
            status = run_orch(["status", "slow", "--json"], tmp_path, env)
            return status.returncode == 0 and '"status": "running"' in status.stdout.split('"tasks"')[1]

        wait_for(nap_running, 60, "the nap task to start")
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=60)  # communicate, not wait: it reads and closes the pipes
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130
    report = json.loads(run_orch(["status", "slow", "--json"], tmp_path, env).stdout)
    assert report["plan"]["status"] == "cancelled"
    assert {t["status"] for t in report["tasks"]} == {"cancelled"}
    wait_for(lambda: not list_processes(str(tmp_path)), 15, "every process orch run started to exit")


def test_orch_run_uses_the_servers_named_in_the_environment(
    tmp_path: Path, demo_copy: Path, redis_url: str, postgres_url: str
) -> None:
    # PostgreSQL trusts local connections, so a password here is accepted and ignored: it must never be printed.
    with_password = postgres_url.replace("postgres@", "postgres:hunter2-canary@")
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url, ORCH_DATABASE_URL=with_password)
    result = run_orch(["run", str(demo_copy)], tmp_path, env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hunter2-canary" not in result.stdout + result.stderr
    assert "redis+socket" not in result.stderr and "postgresql" in result.stderr  # no embedded Redis, PG store
    assert not (tmp_path / ".orch" / "orch.db").exists()
    report = json.loads(run_orch(["status", "demo-accounts", "--json"], tmp_path, env).stdout)
    assert report["plan"]["status"] == "succeeded"
