"""The part of the plan model an agent may write: a planner's draft plan, a task's follow-ups, a re-plan's
replacement tasks. Generated from the plan model (TaskSpec), so a field's limits are the plan file's own; strict:
no unknown field. `submit_plan_tool` is the Messages API tool a planner is forced to call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from orch.intake.plan import ID_PATTERN, TaskSpec, Text

# The task fields an agent may write. Not: executor, call, target, budget, timeout, retries, isolation, scope,
# merge, priority, source, done, hold — what runs where and with which limits stays the plan author's.
AGENT_WRITABLE_FIELDS = (
    "id",
    "title",
    "description",
    "agent",
    "after",
    "files",
    "success",
    "verify",
    "command",
    "estimate",
)

_FIELD_HINTS = {
    "id": "Unique id: letters, digits, '.', '_' or '-' (e.g. 'add-login-api').",
    "title": "What the task does, in a few imperative words.",
    "description": "Everything the agent needs to do it: the goal, the approach, what to leave alone.",
    "agent": "The agent type that does it (one of the listed types).",
    "after": "Ids of the tasks it needs done first; only tasks listed before it.",
    "files": "Files or glob patterns it may change, relative to the repository (e.g. 'src/auth/*.py').",
    "success": "Measurable success criteria: what is true when it is done.",
    "verify": "A shell command that exits 0 when the task is done (e.g. 'pytest tests/test_auth.py').",
    "command": "Only for a step that needs no agent: the shell command that does it.",
    "estimate": "Expected tokens, cost in USD and minutes of this task.",
}


def _planned_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in AGENT_WRITABLE_FIELDS:
        info = TaskSpec.model_fields[name]
        # the model's own field, its limits kept, described for the agent
        fields[name] = (info.annotation, FieldInfo.merge_field_infos(info, description=_FIELD_HINTS[name]))
    return fields


PlannedTask: type[BaseModel] = create_model("PlannedTask", __config__=ConfigDict(extra="forbid"), **_planned_fields())


class PlannedPlan(BaseModel):
    """A planner's draft: a plan's header and its tasks, in order."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=ID_PATTERN, description="Short plan name: letters, digits, '.', '_', '-'.")]
    description: Annotated[Text, Field(description="The goal, restated: what the plan delivers and why.")] = ""
    tasks: Annotated[list[PlannedTask], Field(min_length=1, description="The tasks, each after those it needs.")]


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$ref`s replaced by their `$defs` and pydantic's titles dropped: the plain, self-contained
    form tool definitions are given in."""
    definitions = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {
                key: resolve(value)
                for key, value in node.items()
                if key != "$defs" and not (key == "title" and isinstance(value, str))  # a field named title stays
            }
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def task_schema(agent_types: Sequence[str]) -> dict[str, Any]:
    """One agent-written task's JSON schema; its `agent` restricted to `agent_types`."""
    schema = inlined(PlannedTask.model_json_schema())
    schema["properties"]["agent"] = {"type": "string", "enum": list(agent_types), "description": _FIELD_HINTS["agent"]}
    return schema


def plan_schema(agent_types: Sequence[str]) -> dict[str, Any]:
    """A draft plan's JSON schema (strict: no unknown fields); each task's `agent` one of `agent_types`."""
    schema = inlined(PlannedPlan.model_json_schema())
    schema["properties"]["tasks"]["items"] = task_schema(agent_types)
    return schema


SUBMIT_PLAN = "submit_plan"


def submit_plan_tool(agent_types: Sequence[str]) -> dict[str, Any]:
    """The tool a planner is forced to call (`tool_choice: {"type": "tool", "name": "submit_plan"}`)."""
    return {
        "name": SUBMIT_PLAN,
        "description": "Submit the plan: its name, the goal restated, and its tasks in an order where each task "
        "comes after every task it depends on.",
        "input_schema": plan_schema(agent_types),
    }
