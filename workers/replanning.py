"""A re-plan attempt (`on_failure: replan`): the task's retries are spent, so instead of running it again the worker
asks the planner agent type for smaller tasks to put in its place. One Messages API call forced to answer with the
`submit_replacement` tool; its answer is carried as written (AttemptResult.replacement) and checked against the plan
when the result is recorded (orch.store.growth). A decline fails the task; a planner that cannot be reached fails
the attempt, which orch's retry policy retries."""

from __future__ import annotations

import json
import os
from typing import Any

from orch.decisions.followups import PLANNER
from orch.decisions.replan import REPLAN_DECLINED
from orch.failures import FailureClass
from orch.intake.agents import AgentRegistry, AgentType, load_agents
from orch.intake.plan_schema import task_schema
from orch.intake.prices import Usage, cost_usd, load_prices, price_for
from orch.records import AttemptResult, Claim, ReplanInputs
from orch.services.model_call import ModelAccess, ModelCallFailed, forced_tool_call
from orch.settings import Settings
from orch.store.db import read_session
from orch.store.growth import replan_inputs
from workers.executors.anthropic_api import API_KEY
from workers.executors.base import AttemptContext

SUBMIT_REPLACEMENT = "submit_replacement"

SYSTEM = (
    "You are orch's planner. A task of a running plan failed every attempt it was allowed. Decide whether smaller "
    "or different tasks can do its work, and answer only by calling submit_replacement: `replace` with the tasks to "
    "run in its place (each small, with one agent type, a measurable `success` and, where it can, a `verify` "
    "command), or `decline` when no replacement can succeed (the task then fails). Replacement tasks run where the "
    "failed task ran and with no more access than its agent type has: a task with `command` runs that shell "
    "command. A replacement task with no dependency among the replacement's tasks starts once the failed task's "
    "dependencies are done; the tasks that waited for the failed task wait for the replacement's last tasks. Use "
    "new ids, never the failed task's."
)


def replacement_tool(agent_types: list[str]) -> dict[str, Any]:
    """The tool the planner is forced to call: {decision: replace|decline, reason, tasks: [task]}."""
    return {
        "name": SUBMIT_REPLACEMENT,
        "description": "Replace the failed task with smaller tasks, or decline (the task then fails).",
        "input_schema": {
            "type": "object",
            "properties": {
                "decision": {"type": "string", "enum": ["replace", "decline"]},
                "reason": {"type": "string", "description": "Why, in a sentence or two."},
                "tasks": {
                    "type": "array",
                    "items": task_schema(agent_types),
                    "description": "The tasks to run in its place (replace only), each after those it needs.",
                },
            },
            "required": ["decision", "reason"],
            "additionalProperties": False,
        },
    }


def replan(ctx: AttemptContext, claim: Claim) -> AttemptResult:
    """Ask the planner for tasks to replace `claim`'s task; the answer as written, or why there is none."""
    registry = load_agents(ctx.settings.config_dir)
    planner = registry.by_name.get(PLANNER)
    if planner is None:
        error = f"no {PLANNER!r} agent type in config/agents.yaml: task {claim.key} cannot be re-planned"
        return AttemptResult(False, failure_class=FailureClass.EXECUTOR_UNAVAILABLE, error=error)
    key = os.environ.get(API_KEY) if API_KEY in planner.secrets else None
    if not key:
        error = (
            f"{API_KEY} is not set for the {PLANNER} agent type on this worker (its environment, and its `secrets:` "
            f"in config/agents.yaml): task {claim.key} cannot be re-planned"
        )
        return AttemptResult(False, failure_class=FailureClass.MISSING_CREDENTIALS, error=error)
    with read_session(ctx.settings.resolved_database_url) as session:
        inputs = replan_inputs(session, claim.task_pk)
    types = [t.name for t in registry if t.name != PLANNER]
    access = ModelAccess(api_key=key, model=planner.model, max_tokens=planner.max_tokens, timeout=planner.timeout)
    try:
        messages = [{"role": "user", "content": prompt(inputs, registry)}]
        answer = forced_tool_call(access, SYSTEM, messages, replacement_tool(types))
    except ModelCallFailed as exc:
        return AttemptResult(False, failure_class=_failure_class(exc), error=f"asking the planner: {exc}")
    cost = _cost(answer.usage, answer.model, ctx.settings)
    common: dict[str, Any] = {"model": answer.model, "usage": answer.usage, "cost_usd": cost}
    reason = str(answer.input.get("reason") or "")[:2000]
    if answer.input.get("decision") != "replace":
        why = reason or "no reason given"
        error = f"the planner declined to re-plan task {claim.key}: {why}"
        return AttemptResult(False, failure_class=REPLAN_DECLINED, error=error, output_tail=why, **common)
    return AttemptResult(
        True, exit_code=0, result=f"re-planned: {reason}", output_tail=reason, replacement=answer.input, **common
    )


def prompt(inputs: ReplanInputs, registry: AgentRegistry) -> str:
    """The planner's message: the task, its failures, the plan around it and the agent types it may use."""
    lines = [
        f"Plan: {inputs.plan_name}" + (f" — {inputs.plan_description}" if inputs.plan_description else ""),
        "",
        f"The failed task: {inputs.key} — {inputs.title}",
        f"Agent type: {inputs.agent}",
    ]
    for label, value in (
        ("Description", inputs.description),
        ("Success criteria", inputs.success),
        ("Command", inputs.command),
        ("Verify command", inputs.verify),
        ("Files", ", ".join(inputs.files)),
    ):
        if value:
            lines.append(f"{label}: {value}")
    lines += ["", "Its failed attempts:"]
    for failure in inputs.failures:
        kind = f" ({failure.failure_class})" if failure.failure_class else ""
        lines.append(f"- attempt {failure.number}{kind}: {failure.error}")
        if failure.output_tail:
            lines.append(f"  output (its end): {json.dumps(failure.output_tail)}")
    for label, around in (
        ("It waits for (done)", inputs.dependencies),
        ("Waiting for it", inputs.dependants),
        ("Beside it", inputs.siblings),
    ):
        if around:
            lines += ["", f"{label}:", *(f"- {t.key} — {t.title} ({t.status})" for t in around)]
    lines += ["", "Agent types you may use:", *(_described(t) for t in registry if t.name != PLANNER)]
    return "\n".join(lines)


def _described(agent: AgentType) -> str:
    return f"- {agent.name}: {agent.description}" if agent.description else f"- {agent.name}"


def _failure_class(exc: ModelCallFailed) -> str:
    if exc.status in (401, 403):
        return FailureClass.AUTH_ERROR
    if exc.status == 429:
        return FailureClass.RATE_LIMITED
    if exc.status == 529:
        return FailureClass.OVERLOADED
    if exc.status is not None and exc.status >= 500:
        return FailureClass.SERVER_ERROR
    if exc.retryable:
        return FailureClass.CONNECTION_ERROR
    return FailureClass.BAD_REQUEST


def _cost(usage: Usage, model: str, settings: Settings) -> float | None:
    price = price_for(model, load_prices(settings.config_dir))
    return None if price is None or not usage.total else round(cost_usd(usage, price), 6)
