"""The executors' names: how a task runs (a plan task's or an agent type's `executor:`), with the named sets the
rest of orch reasons with. The executors themselves are the worker's (workers/executors/)."""

from __future__ import annotations

from enum import StrEnum


class ExecutorName(StrEnum):
    CLAUDE_CODE = "claude-code"  # the Claude Code CLI, in the task's workspace
    ANTHROPIC = "anthropic"  # one Messages API call, from the worker itself
    PYTHON = "python"  # a task's `call: package.module:function`, in a supervised child
    SHELL = "shell"  # a task's `command:`
    NOOP = "noop"  # succeeds at once: dry runs and benchmarks of orch's own overhead


# Named sets: the rest of orch says which set it means, never lists executors inline.
# Every name, for a membership test of any string (`"x" in ExecutorName` raises TypeError before Python 3.12).
KNOWN = frozenset(ExecutorName)
# Executors that give the agent a prompt (handoff and retry reason included); shell and noop do not read one.
PROMPTED = frozenset({ExecutorName.CLAUDE_CODE, ExecutorName.ANTHROPIC, ExecutorName.PYTHON})
# Executors that call a model's API: an agent type's `network: auto` is the host's for them, none for the rest.
NETWORKED = frozenset({ExecutorName.CLAUDE_CODE, ExecutorName.ANTHROPIC})
# Executors that write the attempt's output to its log file (the worker's ORCH_HOME/logs/PLAN/TASK.N.log).
LOGGED = frozenset({ExecutorName.CLAUDE_CODE, ExecutorName.ANTHROPIC, ExecutorName.SHELL})
# Executors that start no agent process (a model's API is called from the worker itself).
IN_PROCESS = frozenset({ExecutorName.NOOP, ExecutorName.ANTHROPIC})
