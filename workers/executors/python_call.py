"""The `python` executor: calls a task's `call: package.module:function` with the task context (a dict) and
records its return value (as JSON). It runs in a child process with the shell executor's supervision and
isolation — own process group, time limit, bounded output, the agent's sandbox — so a user's function can neither
hang nor crash the worker. The context and result files live in the attempt's own folder, which the agent sees."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from orch.executors import ExecutorName
from orch.failures import FailureClass
from orch.records import AttemptResult
from workers.executors.base import AttemptContext, with_scratch
from workers.executors.shell import ShellExecutor
from workers.sandbox.grant import give_to_agent


def task_context(ctx: AttemptContext) -> dict[str, object]:
    return {
        "plan_id": ctx.plan_id,
        "task_id": ctx.task.key,
        "attempt": ctx.attempt,
        "title": ctx.task.title,
        "description": ctx.task.description,
        "success": ctx.task.success,
        "files": list(ctx.task.files),
        "workdir": str(ctx.workdir),
        "agent": ctx.agent.name,
        "prompt": ctx.prompt,
    }


class PythonExecutor:
    name = ExecutorName.PYTHON

    def run(self, ctx: AttemptContext) -> AttemptResult:
        call = ctx.task.call
        if not call:
            return AttemptResult(False, failure_class=FailureClass.INVALID_TASK, error="python executor: no `call:`")
        with with_scratch(ctx) as ctx, tempfile.TemporaryDirectory(prefix="call-", dir=ctx.scratch) as folder:
            # Written in the worker's own folder, then handed over: no agent can put a link in its place meanwhile.
            context_file, result_file = Path(folder) / "context.json", Path(folder) / "result.json"
            context_file.write_text(json.dumps(task_context(ctx)), encoding="utf-8")
            give_to_agent(context_file, ctx.settings)
            give_to_agent(Path(folder), ctx.settings)
            command = f"{shlex.quote(sys.executable)} -m workers.python_entry {shlex.quote(call)}"
            child = replace(
                ctx,
                task=replace(ctx.task, command=command),
                env={**ctx.env, "ORCH_CONTEXT_FILE": str(context_file), "ORCH_RESULT_FILE": str(result_file)},
            )
            outcome = ShellExecutor().run(child)
            if not outcome.succeeded:
                return outcome
            value = read_result(Path(folder), result_file.name)
        return replace(outcome, result=value)


MAX_RESULT_BYTES = 1024 * 1024


def read_result(folder: Path, name: str) -> str:
    """The function's JSON result, as the agent left it: a regular file in its folder, both opened without
    following a link (the agent could have put one to a file only the worker may read in either's place), at most
    MAX_RESULT_BYTES."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
    except FileNotFoundError:
        return "null"
    except OSError as exc:
        return json.dumps(f"[orch: the result file could not be read: {exc.strerror}]")
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return json.dumps("[orch: the result file is not a regular file]")
        data = handle.read(MAX_RESULT_BYTES + 1)
    if len(data) > MAX_RESULT_BYTES:
        return json.dumps(f"[orch: the result is over {MAX_RESULT_BYTES} bytes]")
    return data.decode("utf-8", errors="replace")
