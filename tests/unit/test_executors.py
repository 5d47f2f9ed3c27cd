"""The executors' names: one vocabulary (orch.executors) for plans, agent types and the worker's executors."""

from __future__ import annotations

import pytest

from orch.errors import ExecutorUnavailable
from orch.executors import IN_PROCESS, KNOWN, NETWORKED, PROMPTED, ExecutorName
from workers.executors import EXECUTORS, get_executor


def test_the_worker_runs_every_named_executor_under_its_own_name() -> None:
    assert list(EXECUTORS) == [executor.name for executor in EXECUTORS.values()]
    assert set(EXECUTORS) == set(ExecutorName) == KNOWN
    assert PROMPTED | NETWORKED | IN_PROCESS <= KNOWN


def test_a_name_is_its_string_in_plans_the_store_and_messages() -> None:
    name: str = ExecutorName.CLAUDE_CODE
    assert name == "claude-code" and f"{ExecutorName.CLAUDE_CODE}" == "claude-code"
    assert "shell" in KNOWN and "telepathy" not in KNOWN
    assert ", ".join(ExecutorName) == "claude-code, anthropic, python, shell, noop"
    assert get_executor("noop", "general-purpose") is EXECUTORS[ExecutorName.NOOP]


def test_an_unknown_executor_is_unavailable_and_the_message_lists_the_workers() -> None:
    with pytest.raises(ExecutorUnavailable, match=r"available: anthropic, claude-code, noop, python, shell\)"):
        get_executor("telepathy", "general-purpose")
