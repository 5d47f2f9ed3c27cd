"""Plans that grow, end to end on real workers (`orch run`'s embedded worker): a shell task that writes follow-ups to
$ORCH_FOLLOWUPS, and an API agent (the anthropic executor against the loopback Messages API) whose final message
carries an ```orch-followups block, each adding tasks that then run, shown by `orch status` and `orch report`; and a
failing task with `on_failure: replan` that the scripted planner splits in two, after which its dependant runs and
the plan succeeds."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.conftest import orch_env, run_orch
from tests.fakes.messages_api import MessagesAPI, Reply

KEY = "sk-ant-test-grow"


def write_plan(tmp_path: Path, text: str) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent(text))
    return plan


def status_json(plan: str, tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    shown = run_orch(["status", plan, "--json"], tmp_path, env)
    assert shown.returncode == 0, shown.stderr
    found: dict[str, Any] = json.loads(shown.stdout)
    return found


def test_a_shell_tasks_followups_run_and_are_shown(tmp_path: Path, redis_url: str) -> None:
    followups = {
        "tasks": [
            {"id": "notes", "title": "write the notes", "agent": "general-purpose", "command": "echo n > notes.txt",
             "after": ["build"]},
            {"id": "check-notes", "title": "check the notes", "agent": "general-purpose",
             "command": "test -f notes.txt", "after": ["notes"]},
            {"id": "grab", "title": "ask for more", "agent": "planner", "command": "true"},
        ]
    }  # fmt: skip
    build = f"printf '%s' '{json.dumps(followups)}' > \"$ORCH_FOLLOWUPS\""
    tasks = [
        {"id": "build", "title": "build it", "agent": "general-purpose", "command": build},
        {"id": "ship", "title": "ship it", "agent": "general-purpose", "after": ["build"], "command": "true"},
    ]
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"name": "grows", "tasks": tasks}))
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url)
    run = run_orch(["run", str(plan)], tmp_path, env, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "notes.txt").read_text() == "n\n"

    shown = status_json("grows", tmp_path, env)
    shown_tasks = {t["id"]: t for t in shown["tasks"]}
    assert set(shown_tasks) == {"build", "ship", "notes", "check-notes"}
    assert {task["status"] for task in shown_tasks.values()} == {"succeeded"}
    assert (shown_tasks["notes"]["added_by"], shown_tasks["notes"]["added_how"]) == ("build", "followup")
    assert shown["plan"]["refused_followups"] == [
        "build (attempt 1): follow-up 'grab': no task runs as the planner agent type"
    ]
    table = run_orch(["status", "grows"], tmp_path, env)
    assert "follow-up of build" in table.stdout and "refused: build (attempt 1)" in table.stdout
    report = run_orch(["report", "grows"], tmp_path, env)
    assert "### Plan changes" in report.stdout
    assert "`notes`, `check-notes` added as follow-ups by `build` (attempt 1)" in report.stdout
    assert "refused: follow-up 'grab': no task runs as the planner agent type" in report.stdout


def test_an_agents_final_message_block_adds_followups(tmp_path: Path, redis_url: str) -> None:
    block = json.dumps([{"id": "tidy", "title": "tidy up", "command": "echo t > tidy.txt", "agent": "general-purpose"}])
    reply = Reply(text=f"Done. One thing is left:\n```orch-followups\n{block}\n```\n")
    plan = write_plan(
        tmp_path,
        """\
        name: agent-grows
        tasks:
          - id: write
            title: write the code
            agent: general-purpose
            executor: anthropic
            retries: 0
        """,
    )
    with MessagesAPI(default=reply) as api:
        env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=api.url)
        run = run_orch(["run", str(plan)], tmp_path, env, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "tidy.txt").read_text() == "t\n"
    tasks = {t["id"]: t for t in status_json("agent-grows", tmp_path, env)["tasks"]}
    assert tasks["tidy"]["status"] == "succeeded" and tasks["tidy"]["added_by"] == "write"
    report = json.loads(run_orch(["report", "agent-grows", "--format", "json"], tmp_path, env).stdout)
    assert report["growth"] == [
        {"revision": 2, "by": "write", "attempt": 1, "how": "followup", "added": ["tidy"], "refused": []}
    ]


def test_a_failing_task_is_split_by_the_planner_and_the_plan_succeeds(tmp_path: Path) -> None:
    replacement = {
        "decision": "replace",
        "reason": "two smaller steps",
        "tasks": [
            {"id": "part-1", "title": "first half", "agent": "general-purpose", "command": "echo 1 > part1.txt"},
            {"id": "part-2", "title": "second half", "agent": "general-purpose", "command": "echo 2 > part2.txt",
             "after": ["part-1"]},
        ],
    }  # fmt: skip
    planner = Reply(text="", tool_use={"name": "submit_replacement", "input": replacement})
    plan = write_plan(
        tmp_path,
        """\
        name: split
        tasks:
          - id: big
            title: do it all at once
            agent: general-purpose
            command: exit 1
            retries: 0
            on_failure: replan
          - id: after
            title: use both halves
            agent: general-purpose
            after: [big]
            command: test -f part1.txt && test -f part2.txt && echo ok > after.txt
        """,
    )
    with MessagesAPI(default=planner) as api:
        env = orch_env(tmp_path, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=api.url)
        # the embedded default: `orch run`'s own worker reads the planner's queue too
        run = run_orch(["run", str(plan)], tmp_path, env, timeout=180)
        asked = [r for r in api.requests if r.body.get("tool_choice", {}).get("name") == "submit_replacement"]
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "after.txt").read_text() == "ok\n"
    assert len(asked) == 1
    prompt = asked[0].body["messages"][0]["content"]
    assert "The failed task: big" in prompt and "after — use both halves" in prompt and "exit status 1" in prompt

    tasks = {t["id"]: t for t in status_json("split", tmp_path, env)["tasks"]}
    assert tasks["big"]["status"] == "replaced" and tasks["big"]["replaced_by"] == ["part-1", "part-2"]
    assert {tasks[k]["status"] for k in ("part-1", "part-2", "after")} == {"succeeded"}
    assert tasks["after"]["after"] == ["part-2"]
    report = run_orch(["report", "split"], tmp_path, env)
    assert "`big` (attempt 2) replaced by `part-1`, `part-2`; `after` now wait for them" in report.stdout
    assert "replaced by part-1, part-2" in report.stdout
