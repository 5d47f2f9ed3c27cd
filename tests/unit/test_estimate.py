"""A plan's estimate: each figure from the store's history of the task's agent type, else the plan's estimate of the
task, else unknown; the duration along the critical path (stages run side by side) and the agent time in all."""

from __future__ import annotations

from orch.decisions.estimate import (
    HISTORY,
    PLANNER,
    AgentHistory,
    EstimatedTask,
    estimate_lines,
    estimate_plan,
)
from orch.decisions.plan_shape import ShapedTask

AGENT = "claude-code"  # the executor of the agent tasks here


def task(key: str, agent: str, *after: str, executor: str = AGENT, **written: float) -> EstimatedTask:
    return EstimatedTask(ShapedTask(key, tuple(after), agent), agent, written or None, executor)


def test_the_plans_estimates_add_up_and_the_duration_follows_the_critical_path() -> None:
    # a (10 min) → b (20) and c (5) side by side → d (1)
    tasks = [
        task("a", "backend-development", minutes=10, tokens=1000, usd=0.5),
        task("b", "backend-development", "a", minutes=20, tokens=2000, usd=1.0),
        task("c", "testing-specialist", "a", minutes=5, tokens=500, usd=0.25),
        task("d", "documentation-writer", "b", "c", minutes=1, tokens=100, usd=0.05),
    ]
    estimate = estimate_plan(tasks, {})
    assert estimate.tokens.value == 3600 and estimate.tokens.sources == {PLANNER: 4} and estimate.tokens.unknown == 0
    assert estimate.usd.value == 1.8
    assert estimate.shape.critical_path.keys == ("a", "b", "d")
    assert estimate.critical_minutes.value == 31  # not 36: c runs beside b
    assert estimate.agent_minutes.value == 36
    assert estimate.shape.width == 2 and len(estimate.shape.stages) == 3


def test_history_wins_over_the_plans_estimate_per_agent_type_and_figure() -> None:
    tasks = [task("a", "backend-development", minutes=10, tokens=1000, usd=0.5), task("b", "docs", tokens=7)]
    history = {("backend-development", AGENT): AgentHistory(attempts=5, tokens=40_000, usd=None, seconds=120)}
    estimate = estimate_plan(tasks, history)
    assert estimate.tokens.value == 40_007 and estimate.tokens.sources == {HISTORY: 1, PLANNER: 1}
    assert estimate.usd.value == 0.5 and estimate.usd.sources == {PLANNER: 1} and estimate.usd.unknown == 1
    assert estimate.agent_minutes.value == 2 and estimate.agent_minutes.unknown == 1  # b: no minutes anywhere
    assert estimate.history_agents == ("backend-development",)


def test_the_lines_say_each_figure_and_where_it_came_from() -> None:
    tasks = [task("a", "backend-development", minutes=10, usd=0.5), task("b", "docs", "a")]
    history = {("docs", AGENT): AgentHistory(attempts=3, tokens=900, usd=0.02, seconds=30)}
    lines = estimate_lines(estimate_plan(tasks, history))
    assert lines == [
        "tasks: 2",
        "stages: 2",
        "critical path: 2 tasks (by estimated minutes): a -> b",
        "width: 1 (the most tasks that can run at once)",
        "agent types: backend-development, docs",
        "tokens: at least 900 (store history for 1 task, unknown for 1)",
        "cost: $0.52 (store history for 1 task, the plan's estimates for 1)",
        "duration: 10 min along the critical path (store history for 1 task, the plan's estimates for 1)",
        "agent time: 10 min in all tasks (store history for 1 task, the plan's estimates for 1)",
    ]


def test_a_plan_nothing_is_known_of_says_so() -> None:
    lines = estimate_lines(estimate_plan([task("a", "x"), task("b", "x")], {}))
    assert "critical path: 1 task (by task count: some durations are unknown): a" in lines
    assert "tokens: unknown (no history of its agent types in the store, no estimate in the plan)" in lines
    assert any(line.startswith("duration: unknown") for line in lines)


def test_the_history_of_a_types_shell_tasks_is_not_its_agent_tasks() -> None:
    """A shell task of a type took 0 tokens and 2 s: that says nothing of an agent task of the same type."""
    shell_history = {("general-purpose", "shell"): AgentHistory(attempts=1, tokens=0, usd=0.0, seconds=2)}
    agentic = task("a", "general-purpose", tokens=200_000, usd=3.0, minutes=25)
    estimate = estimate_plan([agentic], shell_history)
    assert estimate.tokens.value == 200_000 and estimate.tokens.sources == {PLANNER: 1}
    assert estimate.critical_minutes.value == 25 and estimate.history_agents == ()
    shell = task("s", "general-purpose", executor="shell", tokens=500)
    assert estimate_plan([shell], shell_history).tokens.sources == {HISTORY: 1}  # a shell task: its type's shell runs


def test_the_duration_is_the_longest_chain_by_minutes_when_some_are_unknown() -> None:
    """big (120 min) alone; u1 (unknown) → u2 (1 min): by task count u1 → u2 is the critical path, but the plan
    takes at least big's 2 hours."""
    tasks = [task("big", "x", minutes=120), task("u1", "x"), task("u2", "x", "u1", minutes=1)]
    estimate = estimate_plan(tasks, {})
    assert estimate.shape.critical_path.keys == ("u1", "u2")  # by task count
    assert estimate.critical_minutes.value == 120 and estimate.critical_minutes.unknown == 1
    lines = estimate_lines(estimate)
    assert (
        "duration: at least 2.0 h along the longest chain by known minutes (the plan's estimates for 1 task, "
        "unknown for 1)"
    ) in lines
    # every duration known (one of them 0): the critical path's
    known = estimate_plan([task("a", "x", minutes=1), task("b", "x", "a", minutes=1), task("c", "x", minutes=0)], {})
    assert known.critical_minutes.value == 2 and known.critical_minutes.unknown == 0
    assert "duration: 2.0 min along the critical path (the plan's estimates)" in estimate_lines(known)
