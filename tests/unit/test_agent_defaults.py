"""An agent type's defaults have one definition (config/agents.yaml's `defaults:` over orch's own), and a type no
longer declared — agents.yaml changed since its tasks were submitted — runs with them, resolved in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from orch.errors import ConfigInvalid
from orch.executors import ExecutorName
from orch.intake.agents import parse_agents
from orch.intake.prompts import PlanContext
from orch.records import Claim, ClaimedTask
from orch.settings import get_settings
from orch.store import attempts as store_attempts
from orch.store import plan_context
from workers import runner

DECLARED = {"agent_types": [{"name": "general-purpose", "model": "claude-opus-4-1", "max_tokens": 500}]}


def test_a_type_no_longer_declared_gets_orchs_defaults() -> None:
    gone = parse_agents(DECLARED).get_or_default("retired-type")
    assert (gone.name, gone.queue, gone.description, gone.keywords, gone.system) == (
        "retired-type", "agent.retired-type", "", (), ""
    )  # fmt: skip
    assert gone.executor is ExecutorName.CLAUDE_CODE
    assert (gone.model, gone.max_tokens, gone.idle_timeout, gone.timeout) == ("claude-sonnet-4-6", 8000, 300.0, 1800.0)
    assert (gone.max_turns, gone.permission_mode, gone.network) == (30, "acceptEdits", "auto")
    assert (gone.secrets, gone.env, gone.allowed_tools, gone.disallowed_tools) == ((), (), (), ())
    assert (gone.breaker.failures, gone.breaker.cooldown) == (5, 300.0)


def test_a_type_no_longer_declared_gets_the_files_defaults_and_a_declared_one_is_itself() -> None:
    registry = parse_agents({**DECLARED, "defaults": {"model": "claude-haiku-4-5", "max_turns": 3, "secrets": ["K"]}})
    gone = registry.get_or_default("retired-type")
    assert (gone.model, gone.max_turns, gone.secrets, gone.max_tokens) == ("claude-haiku-4-5", 3, ("K",), 8000)
    assert registry.get_or_default("general-purpose") is registry.get("general-purpose")
    assert registry.get("general-purpose").model == "claude-opus-4-1"


def test_an_unknown_default_executor_is_refused_even_when_every_type_names_its_own() -> None:
    with pytest.raises(ConfigInvalid, match=r"defaults: unknown executor 'telepathy' \(known: claude-code, anthropic"):
        parse_agents(
            {"defaults": {"executor": "telepathy"}, "agent_types": [{"name": "general-purpose", "executor": "noop"}]}
        )


def test_an_attempt_of_a_type_no_longer_declared_asks_for_the_default_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Before, the runner gave it model "" where the defaults say claude-sonnet-4-6 (and spelled out the other
    defaults a second time)."""
    monkeypatch.setattr(store_attempts, "handoffs", lambda session, task_pk: [])  # the module the runner calls
    monkeypatch.setattr(store_attempts, "previous_failure", lambda session, task_pk, attempt: None)
    monkeypatch.setattr(plan_context, "for_task", lambda session, plan_id, task_pk, repository: PlanContext())
    claim = Claim(task_pk=1, plan_id="p-1", key="design", attempt=1, lease="l", retries=0, agent="retired-type")
    task = ClaimedTask(
        key="design", title="Design it", description="", success="", command=None, files=[], timeout=60.0,
        agent="retired-type", executor="anthropic", verify=None, scope="loose", call=None, workdir=str(tmp_path),
    )  # fmt: skip
    ctx = runner._context(None, claim, task, get_settings())  # type: ignore[arg-type]
    assert ctx.agent.model == "claude-sonnet-4-6"
    assert (ctx.agent.max_tokens, ctx.agent.idle_timeout, ctx.agent.max_turns, ctx.agent.permission_mode) == (
        8000, 300.0, 30, "acceptEdits"
    )  # fmt: skip
    assert ctx.network == "host" and "Design it" in ctx.prompt
