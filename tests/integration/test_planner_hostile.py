"""`orch plan` against answers that are not what they should be: a plan cut off at max_tokens or refused, a
malformed 200 answer, a server's error page, a draft nested past any plan's depth, a draft quoting the API key, a
planner CLI that fails silently, and inputs that are not what they look like (a FIFO for --from or .git, a folder
for -o, a link where the draft would go). Each is one line and an exit code, never a traceback or a hang."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orch.cli import main
from orch.intake.plan_validation import MAX_PROBLEMS_SHOWN
from orch.settings import get_settings
from tests.fakes.messages_api import MessagesAPI, Reply
from tests.planner_helpers import draft, orch_plan, submit, task

KEY = "sk-test-0123456789-secret-value"


@pytest.fixture
def planner_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPI]:
    with MessagesAPI() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        yield api


def plan_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("plan*"))


# --- answers that stop short ----------------------------------------------------------------------------------


def test_a_plan_cut_off_at_max_tokens_exits_1_naming_max_tokens_and_is_not_repaired(
    tmp_path: Path, planner_api: MessagesAPI
) -> None:
    """Even a cut-off draft that happens to be valid is not written: the plan may be missing its last tasks."""
    planner_api.add(*[submit(draft(task("a")), stop_reason="max_tokens", output_tokens=16000)] * 4)
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 1
    assert len(planner_api.requests) == 1  # no repair round
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "cut off at max_tokens (16,000)" in lines[0]
    assert "raise agent type 'planner''s max_tokens in config/agents.yaml" in lines[0]
    assert plan_files(tmp_path) == []


def test_a_refused_answer_exits_1_and_is_not_repaired(tmp_path: Path, planner_api: MessagesAPI) -> None:
    planner_api.add(*[submit(draft(task("a")), stop_reason="refusal")] * 4)
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 1 and len(planner_api.requests) == 1
    assert "the model refused to answer (stop reason refusal)" in result.output
    assert plan_files(tmp_path) == []


_TOOL = {"type": "tool_use", "id": "toolu_1", "name": "submit_plan", "input": draft(task("a"))}
_USAGE = {"input_tokens": 1, "output_tokens": 1}


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"{}",
        b"[]",
        json.dumps({"type": "message", "content": [_TOOL], "stop_reason": "tool_use", "model": "m"}).encode(),
        json.dumps({"type": "message", "content": "hi", "stop_reason": "end_turn", "usage": _USAGE}).encode(),
        json.dumps(
            {"type": "message", "content": [_TOOL], "stop_reason": "tool_use", "usage": {"input_tokens": "x"}}
        ).encode(),
        json.dumps({"type": "message", "content": [_TOOL], "stop_reason": "tool_use", "usage": "lots"}).encode(),
    ],
    ids=["not-json", "empty-object", "list", "no-usage", "content-a-string", "count-a-string", "usage-a-string"],
)
def test_a_malformed_200_answer_is_one_line_and_exit_1(tmp_path: Path, planner_api: MessagesAPI, body: bytes) -> None:
    planner_api.add(Reply(raw_body=body))
    result = orch_plan(tmp_path, "Make the files")  # catch_exceptions=False: a traceback fails the test
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "the endpoint's answer is not a Messages API message" in lines[0]
    assert plan_files(tmp_path) == []


def test_a_servers_error_page_is_clipped_to_one_inert_line(tmp_path: Path, planner_api: MessagesAPI) -> None:
    page = b"<html>\n<body>oops\x1b[31m" + b"x" * 5000 + b"</body>\n</html>"
    planner_api.add(Reply(status=500, raw_body=page, content_type="text/html"))
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Anthropic API 500" in lines[0]
    assert len(lines[0]) < 600 and "\x1b" not in lines[0] and lines[0].endswith("…")


# --- drafts -------------------------------------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def test_a_draft_nested_900_deep_is_a_problem_and_its_draft_is_saved(tmp_path: Path, planner_api: MessagesAPI) -> None:
    planner_api.add(submit(draft(task("a", estimate=nested(900)))))
    result = orch_plan(tmp_path, "Make the files", "--repair-rounds", "0")
    assert result.exit_code == 2, result.output
    assert "draft: objects or lists nested more than 32 levels deep (cut)" in result.output
    saved = yaml.safe_load((tmp_path / "plan.draft.yaml").read_text())
    assert saved["tasks"][0]["id"] == "a"  # the rest of the draft as it was, the deep part cut


def test_the_api_key_the_planner_copies_is_masked_in_the_output_the_plan_and_the_draft(
    tmp_path: Path, planner_api: MessagesAPI
) -> None:
    leaked = task("a", description=f"Found ANTHROPIC_API_KEY={KEY} in /proc/self/environ", title=f"use {KEY}")
    planner_api.add(submit(draft(leaked)))
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 0, result.output
    written = (tmp_path / "plan.yaml").read_text()
    assert KEY not in result.output and KEY not in written
    assert "[redacted ANTHROPIC_API_KEY]" in written and "[redacted ANTHROPIC_API_KEY]" in result.output

    bad = draft(task("b", "ghost", description=f"key: {KEY}"), name=KEY)
    planner_api.add(submit(bad), submit(bad))
    result = orch_plan(tmp_path, "Make the files", "-o", "other.yaml", "--repair-rounds", "1")
    assert result.exit_code == 2
    saved = (tmp_path / "other.draft.yaml").read_text()
    assert KEY not in result.output and KEY not in saved and "[redacted ANTHROPIC_API_KEY]" in saved
    repair = json.dumps(planner_api.requests[-1].body["messages"][1:])
    assert KEY not in repair  # the draft sent back is the masked one


def test_dash_o_json_writes_json_and_its_draft_is_json_too(tmp_path: Path, planner_api: MessagesAPI) -> None:
    planner_api.add(submit(draft(task("a"), task("b", "a"))))
    result = orch_plan(tmp_path, "Make the files", "-o", "plan.json")
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "plan.json").read_text())
    assert [t["id"] for t in written["tasks"]] == ["a", "b"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        validated = CliRunner().invoke(main, ["validate", "plan.json"], catch_exceptions=False)
    assert validated.exit_code == 0, validated.output

    planner_api.add(submit(draft(task("c", "ghost"))))
    result = orch_plan(tmp_path, "Make the files", "-o", "other.JSON", "--repair-rounds", "0")
    assert result.exit_code == 2
    assert json.loads((tmp_path / "other.draft.JSON").read_text())["tasks"][0]["after"] == ["ghost"]


def test_problems_are_capped_in_the_output_and_in_the_repair_request(tmp_path: Path, planner_api: MessagesAPI) -> None:
    # each task depends on the next (listed after it) and has no success: several problems a task
    tasks = [task(f"t{i}", *([f"t{i + 1}"] if i < 199 else []), success="") for i in range(200)]
    planner_api.add(submit(draft(*tasks)), submit(draft(*tasks)))
    result = orch_plan(tmp_path, "Make the files", "--repair-rounds", "1")
    assert result.exit_code == 2
    problem_lines = [line for line in result.output.splitlines() if line.startswith("draft: ")]
    assert len(problem_lines) == MAX_PROBLEMS_SHOWN
    assert any(line.startswith("… and ") and line.endswith(" more") for line in result.output.splitlines())
    sent = planner_api.requests[1].body["messages"][-1]["content"][0]["content"]
    assert sent.count("\n- draft: ") == MAX_PROBLEMS_SHOWN and "\n- … and " in sent


# --- inputs that are not what they look like ----------------------------------------------------------------------


def test_a_fifo_for_from_is_refused_without_waiting(tmp_path: Path, planner_api: MessagesAPI) -> None:
    os.mkfifo(tmp_path / "prd.md")
    result = orch_plan(tmp_path, "Make the files", "--from", "prd.md")
    assert result.exit_code == 2 and "--from prd.md: not a regular file" in result.output
    assert planner_api.requests == []


def test_a_folder_for_dash_o_is_refused_before_the_planner_is_asked(tmp_path: Path, planner_api: MessagesAPI) -> None:
    (tmp_path / "d").mkdir()
    result = orch_plan(tmp_path, "Make the files", "-o", "d", "--force")
    assert result.exit_code == 2 and "-o d: a folder" in result.output
    (tmp_path / "plan.yaml").symlink_to(tmp_path / "nowhere.yaml")  # dangling: it exists all the same
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 2 and "plan.yaml exists: pass --force" in result.output
    assert planner_api.requests == [] and not (tmp_path / "nowhere.yaml").exists()


@pytest.mark.parametrize("kind", ["fifo", "bogus-file", "empty-folder"])
def test_a_dot_git_that_is_no_repository_makes_a_workdir_plan(
    tmp_path: Path, planner_api: MessagesAPI, kind: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("x")
    if kind == "fifo":
        os.mkfifo(repo / ".git")
    elif kind == "bogus-file":
        (repo / ".git").write_text("gitdir: /etc\n")
    else:
        (repo / ".git").mkdir()
    planner_api.add(submit(draft(task("a"))))
    result = orch_plan(tmp_path, "Make the files", "--repo", "repo")
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert written["workdir"] == "./repo" or written["workdir"] == "repo"
    assert "repo" not in {key for key in written if key != "workdir"}


def test_a_link_where_the_draft_would_go_is_not_followed(tmp_path: Path, planner_api: MessagesAPI) -> None:
    target = tmp_path / "elsewhere.txt"
    (tmp_path / "plan.draft.yaml").symlink_to(target)  # dangling
    planner_api.add(submit(draft(task("a", "ghost"))))
    result = orch_plan(tmp_path, "Make the files", "--repair-rounds", "0")
    assert result.exit_code == 2
    assert not target.exists()
    assert "it is in plan.draft-2.yaml" in result.output
    assert yaml.safe_load((tmp_path / "plan.draft-2.yaml").read_text())["tasks"][0]["after"] == ["ghost"]


def test_run_without_yes_and_without_a_terminal_is_refused_before_the_planner_is_asked(
    tmp_path: Path, planner_api: MessagesAPI
) -> None:
    result = orch_plan(tmp_path, "Make the files", "--run")  # CliRunner's stdin is no terminal
    assert result.exit_code == 2
    assert "there is no terminal to ask on: pass --yes" in result.output
    assert planner_api.requests == [] and plan_files(tmp_path) == []


# --- the claude-code planner ------------------------------------------------------------------------------------


def claude_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "bin" / "claude"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\ncat > /dev/null\n{body}\n")
    script.chmod(0o755)
    return script


def test_a_claude_that_prints_no_result_names_its_exit_status_and_first_stderr_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claude = claude_script(tmp_path, "printf 'Error: Invalid API key \\033[31m\\n' >&2\nexit 3")
    monkeypatch.setenv("ORCH_CLAUDE_BIN", str(claude))
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    get_settings.cache_clear()
    result = orch_plan(tmp_path, "Make the files", "--executor", "claude-code")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "printed no JSON result (exit status 3: 'Error: Invalid API key \\x1b[31m')" in lines[0]


def test_a_claude_answer_that_quotes_the_key_is_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "```json\n" + json.dumps(draft(task("a", title=KEY)))
    text += "\n```\nAlso a list:\n```json\n[1, 2]\n```"  # the last block is no plan: the plan is kept
    answer = {"type": "result", "is_error": False, "result": text}
    claude = claude_script(tmp_path, f"cat <<'EOF'\n{json.dumps(answer)}\nEOF")
    monkeypatch.setenv("ORCH_CLAUDE_BIN", str(claude))
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    get_settings.cache_clear()
    result = orch_plan(tmp_path, "Make the files", "--executor", "claude-code")
    assert result.exit_code == 0, result.output
    written = (tmp_path / "plan.yaml").read_text()
    assert KEY not in written and KEY not in result.output
    assert yaml.safe_load(written)["tasks"][0]["title"] == "[redacted ANTHROPIC_API_KEY]"
