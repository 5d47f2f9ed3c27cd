"""The `python` executor: a user's `module:function` called with the task context in a supervised child."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from orch.failures import FailureClass
from tests.helpers import attempt_context, make_plan
from workers.executors.base import AttemptContext
from workers.executors.python_call import PythonExecutor

AGENT = textwrap.dedent(
    """\
    import time

    def summarise(ctx):
        return {"task": ctx["task_id"], "title": ctx["title"], "files": ctx["files"]}

    def explode(ctx):
        raise ValueError("boom from the user's agent")

    def dawdle(ctx):
        time.sleep(30)
    """
)


def context(tmp_path: Path, call: str, task: dict[str, Any] | None = None) -> AttemptContext:
    (tmp_path / "myagents.py").write_text(AGENT)
    return attempt_context(
        tmp_path,
        task={"key": "sum", "title": "Summarise", "files": ["a.py"], "timeout": 30.0, "agent": "general-purpose",
              "executor": "python", "call": call, **(task or {})},
        settings={"output_tail_bytes": 4096, "log_max_bytes": 1 << 20, "kill_grace_seconds": 0.5},
        plan_id="p", network="host",
    )  # fmt: skip


def test_the_return_value_is_recorded_as_json(tmp_path: Path) -> None:
    result = PythonExecutor().run(context(tmp_path, "myagents:summarise"))
    assert result.succeeded, result.error
    assert json.loads(result.result or "") == {"task": "sum", "title": "Summarise", "files": ["a.py"]}


def test_an_exception_is_a_failure_naming_it(tmp_path: Path) -> None:
    result = PythonExecutor().run(context(tmp_path, "myagents:explode"))
    assert result.failure_class == FailureClass.EXIT_STATUS
    assert "ValueError: boom from the user's agent" in (result.error or "")


def test_a_function_that_overruns_is_killed_at_the_time_limit(tmp_path: Path) -> None:
    result = PythonExecutor().run(context(tmp_path, "myagents:dawdle", task={"timeout": 1.0}))
    assert result.failure_class == FailureClass.TIMEOUT


def test_a_plan_task_with_call_runs_the_python_executor(tmp_path: Path) -> None:
    plan = make_plan([{"id": "sum", "title": "Summarise", "call": "myagents:summarise"}], workdir=tmp_path)
    assert plan.tasks[0].executor == "python" and plan.tasks[0].call == "myagents:summarise"


def test_the_result_is_never_read_through_a_link(tmp_path: Path) -> None:
    """The agent could put a link to a file only the worker may read in place of its result, or of its folder."""
    from workers.executors.python_call import read_result

    secret = tmp_path / "root-only.json"
    secret.write_text('"only the worker may read this"')
    (tmp_path / "call").mkdir()
    (tmp_path / "call" / "result.json").symlink_to(secret)
    (tmp_path / "linked-call").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "result.json").symlink_to(secret)
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "result.json").write_text('{"answer": 42}')
    assert "only the worker" not in read_result(tmp_path / "call", "result.json")
    assert "only the worker" not in read_result(tmp_path / "linked-call", "result.json")
    assert read_result(tmp_path / "ok", "result.json") == '{"answer": 42}'
    assert read_result(tmp_path / "ok", "missing.json") == "null"
