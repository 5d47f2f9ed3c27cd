"""A plan's shape, and seed 002's rules on a planner's draft. Pure: tasks in, numbers and one-line problems out.

The shape: its stages (each task's longest chain of dependencies: a task runs in the stage after its deepest
dependency; tasks of one stage can run side by side), its critical path (the longest chain, by estimated minutes
when every task on the plan has them, else by task count), its width (the widest stage) and its agent types.

The rules (`draft_findings`): each task has one agent type (not the planner's own) and a non-empty, measurable
`success`; a task may only depend on tasks listed before it; more than `max_stages` stages is an error asking to
split the goal. Warnings: a task with more than MAX_FILES_PER_TASK files, a plan with more than `max_tasks` tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from orch.dag import Dag

DEFAULT_MAX_STAGES = 10
DEFAULT_MAX_TASKS = 20
MAX_FILES_PER_TASK = 3  # more, and a task is likely more than one agent's work: warned
MAX_PATH_SHOWN = 12  # ids of a critical path a line names


@dataclass(frozen=True)
class ShapedTask:
    """What the shape and the rules read of a task, from a draft or a validated plan."""

    key: str
    after: tuple[str, ...] = ()
    agent: str | None = None
    files: tuple[str, ...] = ()
    success: str = ""


@dataclass(frozen=True)
class CriticalPath:
    """The longest chain of dependent tasks, first to last; `minutes` its estimated length when it is measured by
    minutes (every task's known), else None (measured by task count)."""

    keys: tuple[str, ...]
    minutes: float | None = None

    @property
    def by_minutes(self) -> bool:
        return self.minutes is not None


@dataclass(frozen=True)
class PlanShape:
    tasks: int
    stages: tuple[tuple[str, ...], ...]  # each stage's task ids, in the order listed
    critical_path: CriticalPath
    agent_types: tuple[str, ...]  # sorted
    unstaged: tuple[str, ...] = ()  # tasks on or after a dependency cycle: no stage

    @property
    def width(self) -> int:
        return max((len(stage) for stage in self.stages), default=0)


def _known_graph(tasks: Sequence[ShapedTask]) -> dict[str, list[str]]:
    """Each task's dependencies that are tasks of the plan (an unknown one is the validator's to report)."""
    keys = {task.key for task in tasks}
    return {task.key: [dep for dep in dict.fromkeys(task.after) if dep in keys] for task in tasks}


def task_stages(tasks: Sequence[ShapedTask]) -> dict[str, int]:
    """Each task's stage, 0 for one without dependencies; a task on or after a cycle has none."""
    return Dag(_known_graph(tasks)).depths()


def critical_path(tasks: Sequence[ShapedTask], minutes: Mapping[str, float | None] | None = None) -> CriticalPath:
    """The longest chain: by `minutes` when every task has a known figure there, else by task count. Ties go to the
    chain ending in the task listed first."""
    graph = _known_graph(tasks)
    depth = Dag(graph).depths()
    weights = {key: (minutes or {}).get(key) for key in graph}
    by_minutes = bool(graph) and all(weight is not None for weight in weights.values())
    length: dict[str, float] = {}
    previous: dict[str, str | None] = {}
    for key in sorted(depth, key=depth.__getitem__):  # dependencies first
        own = float(weights[key] or 0.0) if by_minutes else 1.0
        best: str | None = None
        for dep in graph[key]:
            if dep in length and (best is None or length[dep] > length[best]):
                best = dep
        length[key] = own + (length[best] if best is not None else 0.0)
        previous[key] = best
    if not length:
        return CriticalPath(())
    order = {task.key: index for index, task in enumerate(tasks)}
    end = max(length, key=lambda key: (length[key], -order[key]))
    chain: list[str] = []
    node: str | None = end
    while node is not None:
        chain.append(node)
        node = previous[node]
    return CriticalPath(tuple(reversed(chain)), length[end] if by_minutes else None)


def plan_shape(tasks: Sequence[ShapedTask], minutes: Mapping[str, float | None] | None = None) -> PlanShape:
    """The shape of a plan; `minutes`: each task's expected duration where known (for the critical path)."""
    depth = task_stages(tasks)
    count = max(depth.values(), default=-1) + 1
    stages: list[list[str]] = [[] for _ in range(count)]
    for task in tasks:
        if task.key in depth:
            stages[depth[task.key]].append(task.key)
    unstaged = tuple(task.key for task in tasks if task.key not in depth)
    agents = tuple(sorted({task.agent for task in tasks if task.agent}))
    return PlanShape(
        len(tasks), tuple(tuple(stage) for stage in stages), critical_path(tasks, minutes), agents, unstaged
    )


@dataclass(frozen=True)
class DraftLimits:
    max_tasks: int = DEFAULT_MAX_TASKS
    max_stages: int = DEFAULT_MAX_STAGES
    reserved_agents: frozenset[str] = frozenset({"planner"})  # types a planned task may not have


@dataclass
class Findings:
    """A draft's problems (it must be fixed) and warnings (it may run as it is), one line each."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _task_findings(task: ShapedTask, listed_before: set[str], keys: set[str], limits: DraftLimits) -> Findings:
    found = Findings()
    label = f"task {task.key!r}"
    if not task.agent:
        found.problems.append(f"{label}: give it one agent type (agent:)")
    elif task.agent in limits.reserved_agents:
        found.problems.append(f"{label}: agent type {task.agent!r} is orch's own; give it a type that does the work")
    if not task.success.strip():
        found.problems.append(f"{label}: give it a measurable success (success:): what is true when it is done")
    for dep in dict.fromkeys(task.after):
        if dep in keys and dep not in listed_before and dep != task.key:
            found.problems.append(
                f"{label}: depends on {dep!r}, listed after it; a task may only depend on tasks listed before it"
            )
    if len(task.files) > MAX_FILES_PER_TASK:
        found.warnings.append(
            f"{label}: {len(task.files)} files, more than {MAX_FILES_PER_TASK}; it may be more than one agent's "
            "work (split it?)"
        )
    return found


def draft_findings(tasks: Sequence[ShapedTask], limits: DraftLimits) -> Findings:
    """Seed 002's rules on a draft (the validator's checks are apart: ids, unknown dependencies, cycles, fields)."""
    findings = Findings()
    keys = {task.key for task in tasks}
    listed_before: set[str] = set()
    for task in tasks:
        found = _task_findings(task, listed_before, keys, limits)
        findings.problems += found.problems
        findings.warnings += found.warnings
        listed_before.add(task.key)
    if len(tasks) > limits.max_tasks:
        findings.warnings.append(
            f"the plan has {len(tasks)} tasks, more than --max-tasks {limits.max_tasks}: is every task needed, or "
            "is the goal several goals?"
        )
    stages = max(task_stages(tasks).values(), default=-1) + 1
    if stages > limits.max_stages:
        deepest = critical_path(tasks).keys
        findings.problems.append(
            f"the plan has {stages} stages, more than --max-stages {limits.max_stages} (the chain "
            f"{shown_path(deepest)}): split the goal into smaller goals, each planned on its own, or run more tasks "
            "side by side"
        )
    return findings


def shown_path(keys: Sequence[str]) -> str:
    """A chain of ids as `a -> b -> c`, a long one cut in the middle."""
    shown = list(keys)
    if len(shown) > MAX_PATH_SHOWN:
        shown = [*shown[: MAX_PATH_SHOWN - 2], f"… ({len(keys) - MAX_PATH_SHOWN + 1} more)", shown[-1]]
    return " -> ".join(shown)
