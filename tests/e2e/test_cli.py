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
    assert not any(line.startswith("weak:") for line in rest)
    weak = run_orch(["route", "Fix the package layout"], tmp_path, orch_env(tmp_path))
    assert weak.stdout.splitlines()[0] == "frontend-development"
    assert "weak: one keyword ('layout'); pin it with agent:" in weak.stdout
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
    env.pop("COLUMNS", None)  # piped, as a log or `| cat` has it
    result = run_orch(["run", str(plan)], tmp_path, env, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    # its notes on stderr are a line each, however long (issue 14, point 5)
    notes = result.stderr.splitlines()
    assert any(line.startswith("orch run plan fails as ") and "worker log" in line for line in notes), notes
    # the routes of the tasks without `agent:` are shown before it starts (issue 14, point 8)
    routes = route_lines(result.stderr)
    assert set(routes) == {"build", "ship"} and "general-purpose" in routes["build"], result.stderr
    # the final table, piped: a line per task, the error whole on its line (issue 14, point 5)
    final = [line for line in result.stdout.splitlines() if line.startswith(("build", "ship", "think"))]
    assert len(final) == 3 and "exit status 3: compiling" in final[0], result.stdout
    status = run_orch(["status", "fails"], tmp_path, env)
    rows = {line.split()[0]: line for line in status.stdout.splitlines()[3:]}
    assert set(rows) == {"build", "ship", "think"}, status.stdout
    assert "exit status 3: compiling" in rows["build"] and "Claude Code CLI" in rows["think"]
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


# --- issue 14: piped tables, the workdir on this host, routes shown -------------------------------------------


def piped_env(tmp_path: Path) -> dict[str, str]:
    """As a pipe to `cat` or `grep` has it: no COLUMNS, no terminal."""
    env = orch_env(tmp_path)
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return env


def test_piped_agents_is_a_line_per_type_never_folded_and_json_matches(tmp_path: Path) -> None:
    from orch.intake.agents import load_agents

    registry = load_agents(Path(orch_env(tmp_path)["ORCH_CONFIG_DIR"]))
    result = run_orch(["agents"], tmp_path, piped_env(tmp_path))
    assert result.returncode == 0, result.stderr
    title, header, *rows = result.stdout.splitlines()
    assert title.startswith("agent types (") and title.endswith("agents.yaml)")
    assert header.split() == ["type", "queue", "executor", "cap", "timeout", "retries", "keywords"]
    assert len(rows) == len(registry.names), result.stdout
    for agent, row in zip(registry, rows, strict=True):
        assert row.split()[:3] == [agent.name, agent.queue, agent.executor]  # whole names, nothing folded
        assert row.rstrip().endswith(", ".join(agent.keywords) or "(fallback)")
        assert row == row.rstrip() and "│" not in row
    as_json = run_orch(["agents", "--json"], tmp_path, piped_env(tmp_path))
    document = json.loads(as_json.stdout)
    assert [a["type"] for a in document["agent_types"]] == list(registry.names)
    devops = document["agent_types"][0]
    assert devops["queue"] == "agent.devops-engineer" and devops["keywords"][0] == "infrastructure"
    assert devops["timeout_seconds"] == 1800 and document["fallback"] == "general-purpose"


MISSING_WORKDIR = """\
name: nowhere
workdir: missing
tasks:
  - {id: a, title: one, command: "true"}
  - {id: b, title: two, command: "true", after: [a]}
"""


def test_validate_and_run_refuse_a_workdir_missing_on_this_host(tmp_path: Path) -> None:
    plan = write(tmp_path / "nowhere.yaml", MISSING_WORKDIR)
    missing = tmp_path / "missing"
    for command in ("validate", "run"):
        result = run_orch([command, str(plan)], tmp_path, orch_env(tmp_path))
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.splitlines() == [
            f"{plan}: workdir 'missing' is {missing}, which does not exist on this host; its 2 tasks (a, b) would "
            "fail there"
        ], command
    assert not (tmp_path / ".orch").exists()  # nothing written, nothing started
    missing.write_text("a file, not a folder")
    result = run_orch(["validate", str(plan)], tmp_path, orch_env(tmp_path))
    assert result.returncode == 2
    assert f"workdir 'missing' is {missing}, which is not a folder" in result.stderr


ROUTED = """\
name: routes
tasks:
  - {id: layout, title: Fix the package layout}
  - {id: typing, title: Type-check the package}
  - {id: auth, title: Add JWT authentication to the login endpoint}
  - {id: tie, title: Document the api endpoint in the guide}
  - {id: pinned, title: Fix the package layout, agent: devops-engineer}
  - {id: vague, title: make it nice}
"""


def route_lines(output: str) -> dict[str, str]:
    """The route lines of `orch validate`, by task id."""
    return {line.split()[0]: line for line in output.splitlines() if line.startswith("  ")}


def test_validate_shows_each_routed_tasks_route_and_flags_weak_ones(tmp_path: Path) -> None:
    plan = write(tmp_path / "routes.yaml", ROUTED)
    result = run_orch(["validate", str(plan)], tmp_path, piped_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "5 routed tasks (no agent:), 3 weak" in result.stdout
    lines = route_lines(result.stdout)
    assert set(lines) == {"layout", "typing", "auth", "tie", "vague"}  # the pinned task is not routed
    assert "frontend-development" in lines["layout"] and "weak: one keyword ('layout')" in lines["layout"]
    assert "testing-specialist" in lines["typing"] and "weak: one keyword ('check')" in lines["typing"]
    assert "security-specialist" in lines["auth"] and "weak" not in lines["auth"]
    assert "tie with documentation-writer" in lines["tie"] and "weak" in lines["tie"]
    assert "general-purpose" in lines["vague"] and "no keyword matched" in lines["vague"]
    assert "pin it with agent:" in result.stdout


def test_validate_summarises_the_routes_of_a_big_plan(tmp_path: Path) -> None:
    tasks = "".join(f"  - {{id: t{i}, title: Deploy the docker container {i}}}\n" for i in range(200))
    plan = write(tmp_path / "big.yaml", "name: big\ntasks:\n" + tasks + "  - {id: odd, title: Fix the layout}\n")
    result = run_orch(["validate", str(plan)], tmp_path, piped_env(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = route_lines(result.stdout)
    assert "odd" in lines and "weak" in lines["odd"]  # weak routes are shown first
    assert len(result.stdout.splitlines()) < 30
    assert "and 181 more routed tasks" in result.stdout


def test_check_json_says_what_its_lines_say(tmp_path: Path) -> None:
    from tests.e2e.test_check import lines_of
    from tests.helpers import free_port

    env = orch_env(tmp_path, ORCH_BROKER_URL=f"redis://:broker-pass-8c1d@127.0.0.1:{free_port()}/0")
    text = run_orch(["check", "--timeout", "1"], tmp_path, env, timeout=60)
    as_json = run_orch(["check", "--timeout", "1", "--json"], tmp_path, env, timeout=60)
    assert as_json.returncode == text.returncode == 1, as_json.stdout + as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["ok"] is False
    words = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
    assert {c["check"]: words[c["status"]] for c in document["checks"]} == lines_of(text.stdout)
    assert "broker-pass-8c1d" not in as_json.stdout


def test_orch_run_json_ends_with_the_status_document_alone_on_stdout(tmp_path: Path) -> None:
    plan = write(
        tmp_path / "two.yaml",
        """\
        name: two
        tasks:
          - {id: a, title: a, agent: general-purpose, command: "echo one"}
          - {id: b, title: b, agent: general-purpose, command: "echo two", after: [a]}
        """,
    )
    env = orch_env(tmp_path)
    result = run_orch(["run", "--json", str(plan)], tmp_path, env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)  # nothing but the document: progress and notes are on stderr
    assert document["plan"]["status"] == "succeeded"
    assert {t["id"]: t["status"] for t in document["tasks"]} == {"a": "succeeded", "b": "succeeded"}
    status = json.loads(run_orch(["status", "two", "--json"], tmp_path, env).stdout)
    assert {k: v for k, v in status.items() if k != "notes"}["tasks"] == document["tasks"]
