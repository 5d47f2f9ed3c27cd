"""What the `orch plan` tests script the loopback planner with: a task, a draft of them, the answer submitting it,
and `orch plan` invoked in a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from orch.cli import main
from tests.fakes.messages_api import Reply


def submit(plan: dict[str, Any], **fields: Any) -> Reply:
    """The planner's answer: a submit_plan call carrying `plan` (`fields`: the Reply's others, e.g. stop_reason)."""
    return Reply(tool_use={"name": "submit_plan", "input": plan}, **fields)


def task(key: str, *after: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": key,
        "title": f"do {key}",
        "agent": "general-purpose",
        "success": f"{key}.txt exists",
        "command": f"touch {key}.txt",
        **({"after": list(after)} if after else {}),
        **fields,
    }


def draft(*tasks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "scripted", "description": "a scripted plan", "tasks": list(tasks), **fields}


def orch_plan(cwd: Path, *args: str) -> Result:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        return CliRunner().invoke(main, ["plan", *args], catch_exceptions=False)
