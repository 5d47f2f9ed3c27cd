"""Helpers shared by the test tiers: building plans in memory, waiting on conditions with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from orch.decisions.retry import Outcome
from orch.intake.agents import AgentRegistry, load_agents_file
from orch.intake.plan import Plan
from orch.intake.plan_validation import validate_plan
from orch.states import AttemptStatus, TaskStatus

if TYPE_CHECKING:
    from workers.executors.base import AttemptContext

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# a → (b, c) → d; c has the higher priority
DIAMOND: list[dict[str, Any]] = [
    {"id": "a", "title": "design the api", "command": "true"},
    {"id": "b", "title": "write the docs", "after": ["a"], "command": "true"},
    {"id": "c", "title": "write the tests", "after": ["a"], "command": "true", "priority": 3},
    {"id": "d", "title": "deploy it", "after": ["b", "c"], "command": "true"},
]
SUCCESS = Outcome(TaskStatus.SUCCEEDED, AttemptStatus.SUCCEEDED)


def registry() -> AgentRegistry:
    return load_agents_file(REPO / "config" / "agents.yaml")


def make_plan(tasks: list[dict[str, Any]], name: str = "t", workdir: Path | None = None, **extra: Any) -> Plan:
    document: dict[str, Any] = {"name": name, "tasks": tasks, **extra}
    base = workdir or Path.cwd()
    return validate_plan(document, registry(), source=f"{name}.yaml", base_dir=base)


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def attempt_context(
    tmp_path: Path,
    task: dict[str, Any],
    agent: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    **attempt: Any,
) -> AttemptContext:
    """An AttemptContext as the runner builds one, for an executor run on its own: the claimed task (`task` over a
    shell task in tmp_path), its agent type (`agent` over the defaults, under the task's agent name), this test's
    Settings (`settings` over them) and the attempt's own fields (`attempt`: secrets=, prompt=, network=…)."""
    from orch.intake.agents import agent_network, parse_agents
    from orch.records import ClaimedTask
    from orch.settings import get_settings
    from workers.executors.base import AttemptContext

    claimed = ClaimedTask(**{
        "key": "t", "title": "t", "description": "", "success": "", "command": None, "files": [], "timeout": 30.0,
        "agent": "general-purpose", "executor": "shell", "verify": None, "scope": "loose", "call": None,
        "workdir": str(tmp_path), **task,
    })  # fmt: skip
    declared = parse_agents({"agent_types": [{"name": "general-purpose"}]})
    agent_type = replace(declared.get_or_default(claimed.agent), **(agent or {}))
    values: dict[str, Any] = {
        "plan_id": "p-1", "attempt": 1, "log_path": tmp_path / "logs" / f"{claimed.key}.1.log",
        "network": agent_network(agent_type.network, claimed.executor), **attempt,
    }  # fmt: skip
    worker_settings = get_settings().model_copy(update=settings or {})
    return AttemptContext(task=claimed, agent=agent_type, settings=worker_settings, **values)


FAKE_CLAUDE = REPO / "tests" / "fakes" / "fake_claude.py"


def fake_claude_wrapper(path: Path, **env: str) -> Path:
    """An executable `claude` at `path` that runs tests/fakes/fake_claude.py with `env` set. The variables are
    written into the wrapper: orch gives an agent only the variables it grants, not the test's environment."""
    import shlex
    import sys

    assignments = " ".join(shlex.quote(f"{name}={value}") for name, value in env.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'#!/bin/sh\nexec env {assignments} {shlex.quote(sys.executable)} {shlex.quote(str(FAKE_CLAUDE))} "$@"\n'
    )
    path.chmod(0o755)
    return path


def marked_processes(marker: str) -> list[int]:
    """Live processes (not zombies) whose environment or command line carries `marker`. An agent in a sandbox has
    pids of its own namespace: this reads the host's /proc."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes() if cmdline else b""
        except OSError:
            continue
        if cmdline and (marker.encode() in cmdline or marker.encode() in environ):
            found.append(int(entry))
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def layered_dag(
    width: int, depth: int, command: str | None = None, agents: list[str] | None = None
) -> list[dict[str, Any]]:
    """`depth` layers of `width` tasks; each task depends on two tasks of the layer before."""
    tasks: list[dict[str, Any]] = []
    for layer in range(depth):
        for i in range(width):
            task: dict[str, Any] = {"id": f"t{layer}-{i}", "title": f"step {layer} part {i}"}
            if layer:
                task["after"] = sorted({f"t{layer - 1}-{i}", f"t{layer - 1}-{(i + 1) % width}"})
            if command:
                task["command"] = command
            if agents:
                task["agent"] = agents[(layer * width + i) % len(agents)]
            tasks.append(task)
    return tasks


def check_ledger_order(ledger: Path, tasks: list[dict[str, Any]]) -> list[str]:
    """Every task's line appears exactly once and after each of its dependencies' lines."""
    lines = ledger.read_text().split()
    assert len(lines) == len(set(lines)), "a task ran to completion twice"
    position = {key: i for i, key in enumerate(lines)}
    assert set(position) == {t["id"] for t in tasks}, "some task did not run"
    for task in tasks:
        for dep in task.get("after", []):
            assert position[dep] < position[task["id"]], f"{task['id']} finished before its dependency {dep}"
    return lines


def drive_until_final(plan_id: str, timeout: float) -> None:
    """Run the beat tick in this process until the plan is final (a worker must be consuming)."""
    from beat.tick import run_tick
    from orch.states import PlanStatus
    from orch.store import plans
    from orch.store.db import read_session

    def final() -> bool:
        run_tick()
        with read_session() as session:
            plan = plans.get_plan(session, plan_id)
            return plan is not None and plan.status is not PlanStatus.RUNNING

    wait_for(final, timeout, f"plan {plan_id} to finish", interval=0.1)
