"""The `python` executor: calls a task's `call: package.module:function` with the task context (a dict) and
records its return value (as JSON). It runs in a child process with the shell executor's supervision — own
process group, time limit, bounded output — so a user's function can neither hang nor crash the worker."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from orch.failures import FailureClass
from orch.store.repo import AttemptResult
from workers.executors.base import AttemptContext
from workers.executors.shell import ShellExecutor


def task_context(ctx: AttemptContext) -> dict[str, object]:
    return {
        "plan_id": ctx.plan_id,
        "task_id": ctx.task_key,
        "attempt": ctx.attempt,
        "title": ctx.title,
        "description": ctx.description,
        "success": ctx.success,
        "files": list(ctx.files),
        "workdir": str(ctx.workdir),
        "agent": ctx.agent,
        "prompt": ctx.prompt,
    }


class PythonExecutor:
    name = "python"

    def run(self, ctx: AttemptContext) -> AttemptResult:
        if not ctx.call:
            return AttemptResult(False, failure_class=FailureClass.INVALID_TASK, error="python executor: no `call:`")
        with tempfile.TemporaryDirectory(prefix="orch-call-") as folder:
            context_file, result_file = Path(folder) / "context.json", Path(folder) / "result.json"
            context_file.write_text(json.dumps(task_context(ctx)), encoding="utf-8")
            command = f"{shlex.quote(sys.executable)} -m workers.python_entry {shlex.quote(ctx.call)}"
            child = replace(
                ctx,
                command=command,
                env={**ctx.env, "ORCH_CONTEXT_FILE": str(context_file), "ORCH_RESULT_FILE": str(result_file)},
            )
            outcome = ShellExecutor().run(child)
            if not outcome.succeeded:
                return outcome
            value = result_file.read_text(encoding="utf-8") if result_file.exists() else "null"
        return replace(outcome, result=value)
