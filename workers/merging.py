"""A worker's side of the merge queue: the `orch.merge` Celery task's work (orch.dispatch.merge_queue), with the
plan's gates and relock commands run as agents' commands are — sandboxed, as the agent's user, with no secret —
since they run code agents wrote."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orch.dispatch.merge_queue import GateUnavailable
from orch.executors import ExecutorName
from orch.failures import FailureClass
from orch.intake.agents import agent_network, load_agents
from orch.records import ClaimedTask
from orch.settings import Settings
from workers.executors.base import AttemptContext
from workers.executors.shell import ShellExecutor
from workers.worktree import give_to_agent_user

GATE_AGENT = "gate"
# A gate that ends so did not run: no verdict on the work (it waits for another merger)
NOT_RUN = frozenset(
    {
        FailureClass.EXECUTOR_UNAVAILABLE,
        FailureClass.UNSAFE_WORKDIR,
        FailureClass.WORKDIR_NOT_WRITABLE,
        FailureClass.WORKDIR_MISSING,
        FailureClass.INTERNAL_ERROR,
        FailureClass.INVALID_TASK,
    }
)  # the agent type a gate runs as: the file's defaults, unless agents.yaml declares one


def run_gate(settings: Settings, command: str, folder: Path, timeout: float, log_path: Path) -> tuple[bool, str]:
    """Run a gate (or a relock command) in `folder`; whether it passed and its output's tail."""
    agent = load_agents(settings.config_dir).get_or_default(GATE_AGENT)
    task = ClaimedTask(
        key=GATE_AGENT,
        title=command,
        description="",
        success="",
        command=command,
        files=[],
        timeout=timeout,
        agent=agent.name,
        executor=ExecutorName.SHELL,
        verify=None,
        scope="loose",
        call=None,
        workdir=str(folder),
    )
    give_to_agent_user(settings, folder)
    ctx = AttemptContext(
        task=task,
        agent=agent,
        settings=settings,
        plan_id="",
        attempt=0,
        log_path=log_path,
        network=agent_network(agent.network, ExecutorName.SHELL),
    )
    outcome = ShellExecutor().run(dataclasses.replace(ctx))
    if outcome.failure_class in NOT_RUN:
        raise GateUnavailable(f"gate `{command}` could not run here: {outcome.error}")
    said = outcome.output_tail or outcome.error or ""
    return outcome.succeeded, said
