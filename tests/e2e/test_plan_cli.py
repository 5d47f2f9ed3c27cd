"""`orch plan` as a user meets it, through the real CLI process: the scripted planner (the loopback Messages API, or
the fake `claude` CLI) writes a plan of shell tasks; `--run --yes` runs it on real workers (the embedded default);
a plan over ORCH_CONFIRM_ABOVE tasks asks first, and a "no" runs nothing."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import ORCH, orch_env, run_orch
from tests.fakes.messages_api import MessagesAPI, Reply
from tests.helpers import fake_claude_wrapper, wait_for


def shell_task(key: str, *after: str) -> dict[str, Any]:
    return {
        "id": key,
        "title": f"write {key}",
        "agent": "general-purpose",
        "success": f"{key}.txt holds {key}",
        "verify": f"grep -q {key} {key}.txt",
        "command": f"echo {key} > {key}.txt",
        "files": [f"{key}.txt"],
        **({"after": list(after)} if after else {}),
    }


PLAN = {
    "name": "scripted",
    "description": "three files",
    "tasks": [shell_task("one"), shell_task("two", "one"), shell_task("three", "one")],
}


@pytest.fixture
def planner_api() -> Iterator[MessagesAPI]:
    with MessagesAPI(default=Reply(tool_use={"name": "submit_plan", "input": PLAN})) as api:
        yield api


def planner_env(tmp_path: Path, api: MessagesAPI, **extra: str) -> dict[str, str]:
    return orch_env(tmp_path, ANTHROPIC_BASE_URL=api.url, ANTHROPIC_API_KEY="sk-test-dummy", **extra)


def test_plan_run_yes_writes_the_plan_and_runs_it_on_real_workers(tmp_path: Path, planner_api: MessagesAPI) -> None:
    env = planner_env(tmp_path, planner_api)
    done = run_orch(["plan", "Write three files", "--run", "--yes"], tmp_path, env, timeout=240)
    assert done.returncode == 0, done.stderr
    assert planner_api.requests[0].body["tool_choice"] == {"type": "tool", "name": "submit_plan"}
    written = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert [task["id"] for task in written["tasks"]] == ["one", "two", "three"]
    assert "stages: 2" in done.stdout and "width: 2 (the most tasks that can run at once)" in done.stdout
    assert [(tmp_path / f"{key}.txt").read_text() for key in ("one", "two", "three")] == ["one\n", "two\n", "three\n"]
    status = run_orch(["status", "scripted", "--json"], tmp_path, env)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["plan"]["status"] == "succeeded"
    assert {task["id"]: task["status"] for task in document["tasks"]} == dict.fromkeys(
        ("one", "two", "three"), "succeeded"
    )
    again = run_orch(["validate", "--estimate", "plan.yaml"], tmp_path, env)
    assert again.returncode == 0, again.stderr
    # shell tasks spend no tokens, as the store now knows of the type's shell tasks (only of those: history is per
    # agent type and executor)
    assert "tokens: 0 (store history)" in again.stdout


def test_a_plan_over_confirm_above_asks_and_no_runs_nothing(tmp_path: Path, planner_api: MessagesAPI) -> None:
    env = planner_env(tmp_path, planner_api, ORCH_CONFIRM_ABOVE="2")
    master, slave = pty.openpty()
    try:
        os.write(master, b"n\n")
        answered = subprocess.run(
            [ORCH, "plan", "Write three files", "--run"],
            cwd=tmp_path,
            env=env,
            stdin=slave,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.close(slave)
        os.close(master)
    assert answered.returncode == 0, answered.stderr
    assert "Run its 3 tasks now? [y/N]" in answered.stderr
    assert "orch plan: not run; `orch run plan.yaml` runs it" in answered.stderr
    assert (tmp_path / "plan.yaml").exists()
    assert not any((tmp_path / f"{key}.txt").exists() for key in ("one", "two", "three"))
    assert not (tmp_path / ".orch" / "orch.db").exists()  # nothing submitted: no store

    (tmp_path / "plan.yaml").unlink()
    asked = len(planner_api.requests)
    refused = run_orch(["plan", "Write three files", "--run"], tmp_path, env)  # stdin: no terminal, no --yes
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "orch: --run asks before it runs a plan of more than ORCH_CONFIRM_ABOVE (2) tasks, and there is no terminal "
        "to ask on: pass --yes, or run from a terminal"
    )
    assert len(planner_api.requests) == asked  # refused before the planner is asked: nothing paid for
    assert not (tmp_path / "plan.yaml").exists()
    assert not any((tmp_path / f"{key}.txt").exists() for key in ("one", "two", "three"))


def test_the_claude_code_planner_reads_with_read_only_tools_and_its_json_block_is_the_plan(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "app.py").write_text("print('hello')\n")
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(["I looked around but forgot the plan.", PLAN]))
    record = tmp_path / "record.jsonl"
    claude = fake_claude_wrapper(
        tmp_path / "bin" / "claude", FAKE_CLAUDE_PLANS=str(answers), FAKE_CLAUDE_RECORD=str(record)
    )
    env = orch_env(tmp_path, ORCH_CLAUDE_BIN=str(claude), ANTHROPIC_API_KEY="sk-test-secret")
    done = run_orch(
        ["plan", "FAKE:plan Write three files", "--executor", "claude-code", "--repo", "repo", "-o", "repo/plan.yaml"],
        tmp_path,
        env,
    )
    assert done.returncode == 0, done.stderr
    assert [task["id"] for task in yaml.safe_load((repo / "plan.yaml").read_text())["tasks"]] == ["one", "two", "three"]
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(calls) == 2  # the answer without a plan went back once
    for call in calls:
        args = call["args"]
        assert args[args.index("--allowedTools") + 1] == "Read,Glob,Grep"
        forbidden = set(args[args.index("--disallowedTools") + 1].split(","))
        assert {"Bash", "Write", "Edit", "WebFetch", "WebSearch"} <= forbidden
        assert args[args.index("--permission-mode") + 1] == "default"
        assert args[args.index("--output-format") + 1] == "json"
        assert not any("sk-test-secret" in arg for arg in args)
        assert "ANTHROPIC_API_KEY" in call["env"] and not any(name.startswith("ORCH_") for name in call["env"])
        assert Path(call["cwd"]).resolve() == repo.resolve()
        assert "Goal: FAKE:plan Write three files" in call["prompt"] and "app.py" in call["prompt"]
    assert "draft: the answer ends with no ```json block holding the plan" in calls[1]["prompt"]


def test_ctrl_c_while_the_claude_code_planner_thinks_ends_it_and_exits_130(tmp_path: Path) -> None:
    """The CLI runs in a session of its own (no terminal's Ctrl-C reaches it): orch plan kills it on the way out."""
    pids = tmp_path / "claude.pids"
    claude = fake_claude_wrapper(tmp_path / "bin" / "claude", FAKE_CLAUDE_PIDS=str(pids))
    env = orch_env(tmp_path, ORCH_CLAUDE_BIN=str(claude), ANTHROPIC_API_KEY="sk-test-secret")
    plan = subprocess.Popen(
        [ORCH, "plan", "FAKE:hang Write three files", "--executor", "claude-code"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        child = int(wait_for(lambda: pids.read_text().strip() if pids.exists() else "", 60, "the fake claude to start"))
        plan.send_signal(signal.SIGINT)
        _, stderr = plan.communicate(timeout=60)
    finally:
        if plan.poll() is None:
            plan.kill()
            plan.communicate()
    assert plan.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["orch plan: interrupted; nothing written"]
    wait_for(lambda: not _alive(child), 15, "the fake claude to be gone")
    assert not (tmp_path / "plan.yaml").exists()


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie is not running: its parent, orch plan, is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
