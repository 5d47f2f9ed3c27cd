"""`orch plan` against the loopback Messages API with a scripted planner: the request it makes (a forced
`submit_plan` call whose input schema is orch's plan schema), the repair rounds (each draft's problems sent back as
the tool's error result), the drafts it refuses for good (exit 2, problems printed, the draft saved beside -o); and
the store's history medians per agent type on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orch.cli import main
from orch.intake.plan_schema import plan_schema
from orch.services.planner import offered_types
from orch.states import AttemptStatus, TaskStatus
from orch.store import plans
from orch.store.db import ensure_schema, read_session, write_session
from orch.store.history import agent_histories
from orch.store.models import AttemptRow, TaskRow
from tests.fakes.messages_api import MessagesAPI, Reply
from tests.helpers import make_plan, registry
from tests.planner_helpers import draft, orch_plan, submit, task


@pytest.fixture
def planner_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPI]:
    with MessagesAPI() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-dummy")
        yield api


def last_tool_result(body: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = body["messages"][-1]["content"][0]
    assert block["type"] == "tool_result"
    return block


def test_a_valid_plan_is_one_forced_tool_call_and_is_written(tmp_path: Path, planner_api: MessagesAPI) -> None:
    first = task("a", description="Line one.\nLine two.", estimate={"minutes": 3, "tokens": 100, "usd": 0.01})
    planner_api.add(submit(draft(first, task("b", "a"))))
    (tmp_path / "prd.md").write_text("# PRD\nThe login page.\n")
    result = orch_plan(tmp_path, "Make the files", "--from", "prd.md")
    assert result.exit_code == 0, result.output
    assert len(planner_api.requests) == 1
    body = planner_api.requests[0].body
    assert body["tool_choice"] == {"type": "tool", "name": "submit_plan"}
    assert [tool["name"] for tool in body["tools"]] == ["submit_plan"]
    agents = [agent.name for agent in offered_types(registry())]
    assert body["tools"][0]["input_schema"] == plan_schema(agents)
    assert body["model"] == "claude-sonnet-4-6" and body["max_tokens"] == 16000
    prompt = body["messages"][0]["content"]
    assert "Goal: Make the files" in prompt and "The login page." in prompt and "prd.md" in prompt
    text = (tmp_path / "plan.yaml").read_text()
    assert text.startswith("# Written by `orch plan` (planner: anthropic, claude-sonnet-4-6; 1 round)")
    assert "  description: |-\n    Line one.\n    Line two.\n" in text  # multi-line text as a block
    written = yaml.safe_load(text)
    assert written["description"] == "Make the files\n\na scripted plan"  # the goal, then the planner's restatement
    assert written["workdir"] == "."
    assert [t["id"] for t in written["tasks"]] == ["a", "b"] and written["tasks"][1]["after"] == ["a"]
    assert "critical path: 2 tasks (by task count: some durations are unknown): a -> b" in result.output
    table = result.output.splitlines()
    assert table[1].split()[:8] == ["id", "title", "agent", "after", "files", "success", "verify", "command"]
    assert any(row.split()[:4] == ["b", "do", "b", "general-purpose"] for row in table)
    assert "tokens: at least 100 (the plan's estimates for 1 task, unknown for 1)" in result.output


def test_an_unknown_dependency_is_sent_back_and_the_second_round_fixes_it(
    tmp_path: Path, planner_api: MessagesAPI
) -> None:
    first = replace(submit(draft(task("a"), task("b", "a", "setup"))), tool_use_id="toolu_first_draft")
    planner_api.add(first, submit(draft(task("a"), task("b", "a"))))
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 0, result.output
    assert len(planner_api.requests) == 2
    second = planner_api.requests[1].body
    sent_back = last_tool_result(second)
    assert sent_back["is_error"] is True
    assert "draft: task 'b': depends on unknown task 'setup'" in sent_back["content"]
    # the conversation goes on: the first draft as the model's call, then its problems
    assert second["messages"][1]["content"][0]["input"]["tasks"][1]["after"] == ["a", "setup"]
    assert second["messages"][1]["content"][0]["id"] == sent_back["tool_use_id"] == "toolu_first_draft"  # the model's
    assert yaml.safe_load((tmp_path / "plan.yaml").read_text())["tasks"][1]["after"] == ["a"]


def test_a_cycle_is_sent_back_with_its_path(tmp_path: Path, planner_api: MessagesAPI) -> None:
    planner_api.add(
        submit(draft(task("a", "c"), task("b", "a"), task("c", "b"))), submit(draft(task("a"), task("b", "a")))
    )
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 0, result.output
    sent = last_tool_result(planner_api.requests[1].body)["content"]
    assert "draft: dependency cycle: " in sent
    cycle = next(line for line in sent.splitlines() if "dependency cycle" in line)
    assert all(key in cycle for key in ("a", "b", "c"))
    assert "task 'a': depends on 'c', listed after it; a task may only depend on tasks listed before it" in sent


def test_a_14_stage_draft_is_refused_asking_to_split_the_goal(tmp_path: Path, planner_api: MessagesAPI) -> None:
    chain = [task("s0")] + [task(f"s{i}", f"s{i - 1}") for i in range(1, 14)]
    planner_api.add(submit(draft(*chain)))
    result = orch_plan(tmp_path, "A long goal", "--repair-rounds", "0")
    assert result.exit_code == 2
    assert "draft: the plan has 14 stages, more than --max-stages 10" in result.output
    assert "split the goal" in result.output
    assert not (tmp_path / "plan.yaml").exists()
    assert len(yaml.safe_load((tmp_path / "plan.draft.yaml").read_text())["tasks"]) == 14


def test_a_planner_that_never_fixes_its_draft_exits_2_and_the_draft_is_saved(
    tmp_path: Path, planner_api: MessagesAPI
) -> None:
    broken = draft(task("a", agent="planner"), task("b", "ghost", success=""))
    planner_api.add(*[submit(broken)] * 4)
    (tmp_path / "out").mkdir()
    result = orch_plan(tmp_path, "Make the files", "-o", "out/plan.yaml", "--repo", "out")
    assert result.exit_code == 2
    assert len(planner_api.requests) == 4  # the first round and 3 repair rounds
    for request in planner_api.requests[1:]:
        assert "draft: task 'b': depends on unknown task 'ghost'" in last_tool_result(request.body)["content"]
    assert "draft: task 'b': depends on unknown task 'ghost'" in result.output
    assert "draft: task 'a': agent type 'planner' is orch's own" in result.output
    assert "draft: task 'b': give it a measurable success" in result.output
    assert "it is in out/plan.draft.yaml" in result.output
    saved = yaml.safe_load((tmp_path / "out" / "plan.draft.yaml").read_text())
    assert saved["tasks"][1]["after"] == ["ghost"]  # never dropped
    assert saved["workdir"] == "."
    assert not (tmp_path / "out" / "plan.yaml").exists()


def test_an_existing_plan_file_is_not_overwritten_and_the_planner_is_not_asked(
    tmp_path: Path, planner_api: MessagesAPI
) -> None:
    (tmp_path / "plan.yaml").write_text("mine\n")
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 2 and "plan.yaml exists: pass --force" in result.output
    assert planner_api.requests == [] and (tmp_path / "plan.yaml").read_text() == "mine\n"
    result = orch_plan(tmp_path, "Make the files", "-o", "missing/plan.yaml")
    assert result.exit_code == 2 and "-o missing/plan.yaml: its folder" in result.output
    (tmp_path / "plans").mkdir()
    result = orch_plan(tmp_path, "Make the files", "-o", "plans/plan.yaml")  # --repo . lies outside plans/
    assert result.exit_code == 2 and "plans/plan.yaml: workdir '..' resolves to" in result.output
    assert planner_api.requests == [] and not (tmp_path / "plans" / "plan.yaml").exists()


def test_a_missing_key_names_the_variable_and_an_unreachable_api_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 2 and "set ANTHROPIC_API_KEY" in result.output
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-dummy")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # discard: nothing listens
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 1
    assert "the planner (anthropic, model claude-sonnet-4-6) could not answer" in result.output
    assert not (tmp_path / "plan.yaml").exists()


def test_a_refusing_api_exits_1_naming_its_error(tmp_path: Path, planner_api: MessagesAPI) -> None:
    planner_api.add(Reply.error(401, "authentication_error", "invalid x-api-key"))
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 1
    assert "Anthropic API 401 authentication_error: invalid x-api-key" in result.output


# --- history ------------------------------------------------------------------------------------------------------

NOW = datetime(2026, 12, 1, tzinfo=UTC)
SHELL = "shell"  # the executor of a task with a command:


def record_attempts(plan_id: str, key: str, attempts: list[tuple[AttemptStatus, int, float | None, float]]) -> None:
    """Attempts of the task `key`: (status, tokens, cost, seconds), finished a minute apart."""
    with write_session() as session:
        task_pk = session.query(TaskRow.pk).filter_by(plan_id=plan_id, key=key).scalar()
        session.query(TaskRow).filter_by(pk=task_pk).update({"status": TaskStatus.SUCCEEDED})
        for number, (status, tokens, cost, seconds) in enumerate(attempts, start=1):
            finished = NOW + timedelta(minutes=number)
            session.add(
                AttemptRow(
                    task_pk=task_pk, number=number, lease=f"lease-{key}-{number}", status=status,
                    started_at=finished - timedelta(seconds=seconds), finished_at=finished,
                    input_tokens=tokens // 2, output_tokens=tokens - tokens // 2, cost_usd=cost, duration_s=seconds,
                )
            )  # fmt: skip


def test_history_is_the_medians_of_each_types_last_succeeded_attempts(store_url: str, tmp_path: Path) -> None:
    ensure_schema()
    plan = make_plan(
        [
            {"id": "api", "title": "t", "agent": "backend-development", "command": "true"},
            {"id": "docs", "title": "t", "agent": "documentation-writer", "command": "true"},
            {"id": "qa", "title": "t", "agent": "testing-specialist", "command": "true"},
        ],
        workdir=tmp_path,
    )
    with write_session() as session:
        plan_id = plans.submit_plan(session, plan, NOW, {})
    record_attempts(
        plan_id,
        "api",
        [
            (AttemptStatus.SUCCEEDED, 1000, 0.10, 60.0),
            (AttemptStatus.FAILED, 99_999, 9.0, 9999.0),  # not finished well: not counted
            (AttemptStatus.SUCCEEDED, 3000, None, 120.0),
            (AttemptStatus.SUCCEEDED, 2000, 0.30, 90.0),
        ],
    )
    record_attempts(
        plan_id, "docs", [(AttemptStatus.SUCCEEDED, 10, 0.01, 5.0), (AttemptStatus.SUCCEEDED, 20, 0.03, 7.0)]
    )
    types = ["backend-development", "documentation-writer", "testing-specialist"]
    with read_session() as session:
        history = agent_histories(session, [(agent, SHELL) for agent in types])
        latest = agent_histories(session, [("backend-development", SHELL)], last=1)
        agentic = agent_histories(session, [(agent, "claude-code") for agent in types])
    assert agentic == {}  # only shell tasks ran: nothing is known of the types' agent tasks
    assert set(history) == {("backend-development", SHELL), ("documentation-writer", SHELL)}  # qa: no attempt
    by_type = {agent: found for (agent, _), found in history.items()}
    api = by_type["backend-development"]
    assert (api.attempts, api.tokens, api.seconds) == (3, 2000, 90.0) and api.usd == pytest.approx(0.2)
    docs = by_type["documentation-writer"]
    assert (docs.attempts, docs.tokens, docs.seconds) == (2, 15, 6.0) and docs.usd == pytest.approx(0.02)
    assert latest[("backend-development", SHELL)].tokens == 2000  # the newest attempt alone


def test_validate_estimate_prefers_the_stores_history(sqlite_url: str, tmp_path: Path) -> None:
    ensure_schema()
    stored = make_plan([{"id": "x", "title": "t", "agent": "backend-development", "command": "true"}], workdir=tmp_path)
    with write_session() as session:
        plan_id = plans.submit_plan(session, stored, NOW, {})
    record_attempts(plan_id, "x", [(AttemptStatus.SUCCEEDED, 5000, 0.5, 600.0)])
    document = {
        "name": "estimated",
        "tasks": [
            {"id": "a", "title": "t", "agent": "backend-development", "command": "true", "estimate": {"minutes": 1}},
            {"id": "b", "title": "t", "agent": "documentation-writer", "after": ["a"], "command": "true",
             "estimate": {"minutes": 2, "tokens": 10}},
        ],
    }  # fmt: skip
    (tmp_path / "p.yaml").write_text(json.dumps(document))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        result = CliRunner().invoke(main, ["validate", "--estimate", "p.yaml"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "  tokens: 5,010 (store history for 1 task, the plan's estimates for 1)" in result.output
    assert "  cost: at least $0.50 (store history for 1 task, unknown for 1)" in result.output
    assert "  duration: 12 min along the critical path (store history for 1 task, the plan's estimates for 1)" in (
        result.output
    )


def test_a_types_shell_runs_do_not_estimate_its_agent_tasks(sqlite_url: str, tmp_path: Path) -> None:
    """After a shell task of general-purpose ran (0 tokens, 2 s), an agent task of that type is still estimated by
    the plan's estimate, and a shell task of it by the store."""
    ensure_schema()
    shell = make_plan([{"id": "s", "title": "t", "agent": "general-purpose", "command": "true"}], workdir=tmp_path)
    with write_session() as session:
        plan_id = plans.submit_plan(session, shell, NOW, {})
    record_attempts(plan_id, "s", [(AttemptStatus.SUCCEEDED, 0, 0.0, 2.0)])
    document = {
        "name": "agentic",
        "tasks": [
            {"id": "a", "title": "implement login", "agent": "general-purpose", "success": "tests pass",
             "estimate": {"tokens": 200000, "usd": 3.0, "minutes": 25}},
            {"id": "b", "title": "t", "agent": "general-purpose", "command": "true", "after": ["a"]},
        ],
    }  # fmt: skip
    (tmp_path / "p.yaml").write_text(json.dumps(document))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        result = CliRunner().invoke(main, ["validate", "--estimate", "p.yaml"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "  tokens: 200,000 (store history for 1 task, the plan's estimates for 1)" in result.output
    assert "  cost: $3.00 (store history for 1 task, the plan's estimates for 1)" in result.output


def test_a_drafts_strings_cannot_drive_the_terminal(tmp_path: Path, planner_api: MessagesAPI) -> None:
    """Titles, commands, criteria and file patterns from the model are shown inert in the table and the warnings."""
    hostile = "\x1b[2J\x1b]8;;https://evil.example\x07click\x1b]8;;\x07\u202e"
    files = [f"src/{n}\x1b[31m.py" for n in range(4)]  # over 3 files: the warning names the task
    planner_api.add(
        submit(
            draft(task("a", title=f"do a {hostile}", success=f"ok {hostile}", verify=f"true {hostile}", files=files))
        )
    )
    result = orch_plan(tmp_path, "Make the files")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\u202e" not in result.output
    assert "\\x1b[2J" in result.output and "\\u202e" in result.output  # shown, as visible escapes
    written = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert written["tasks"][0]["title"] == f"do a {hostile}"  # the file keeps what the planner wrote
