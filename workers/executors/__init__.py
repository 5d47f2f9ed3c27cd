"""The executors this worker can run, by name."""

from __future__ import annotations

from orch.errors import ExecutorUnavailable
from orch.executors import ExecutorName
from workers.executors.anthropic_api import AnthropicExecutor
from workers.executors.base import AttemptContext, Executor
from workers.executors.claude_code import ClaudeCodeExecutor
from workers.executors.noop import NoopExecutor
from workers.executors.python_call import PythonExecutor
from workers.executors.shell import ShellExecutor

EXECUTORS: dict[ExecutorName, Executor] = {
    executor.name: executor
    for executor in (ShellExecutor(), NoopExecutor(), AnthropicExecutor(), ClaudeCodeExecutor(), PythonExecutor())
}


def get_executor(name: str, agent: str) -> Executor:
    try:
        return EXECUTORS[ExecutorName(name)]
    except (ValueError, KeyError):  # not a name orch knows, or not an executor this worker has
        raise ExecutorUnavailable(
            f"executor {name!r} (default of agent type {agent!r}) is not available on this worker "
            f"(available: {', '.join(sorted(EXECUTORS))}); give the task a `command:` to run it with the "
            f"shell executor, or set `executor:` on the task"
        ) from None


__all__ = ["EXECUTORS", "AttemptContext", "Executor", "get_executor"]
