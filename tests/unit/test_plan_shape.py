"""A plan's shape (stages, critical path, width, agent types) and seed 002's rules on a planner's draft."""

from __future__ import annotations

from orch.decisions.plan_shape import (
    DraftLimits,
    ShapedTask,
    critical_path,
    draft_findings,
    plan_shape,
    task_stages,
)


def task(
    key: str, *after: str, agent: str | None = "general-purpose", files: int = 0, success: str = "ok"
) -> ShapedTask:
    return ShapedTask(key, tuple(after), agent, tuple(f"f{i}.py" for i in range(files)), success)


# a → (b, c) → d, and e on its own
DIAMOND = [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"), task("e", agent="testing-specialist")]


def test_stages_are_longest_path_levels_and_width_is_the_widest() -> None:
    shape = plan_shape(DIAMOND)
    assert shape.stages == (("a", "e"), ("b", "c"), ("d",))
    assert shape.width == 2
    assert shape.tasks == 5
    assert shape.agent_types == ("general-purpose", "testing-specialist")
    assert task_stages([task("x"), task("y", "x"), task("z", "x", "y")]) == {"x": 0, "y": 1, "z": 2}


def test_the_critical_path_is_by_minutes_when_every_task_has_them_else_by_task_count() -> None:
    by_count = critical_path(DIAMOND)
    assert by_count.keys == ("a", "b", "d") and by_count.minutes is None and not by_count.by_minutes
    minutes = {"a": 1.0, "b": 2.0, "c": 30.0, "d": 1.0, "e": 5.0}
    by_minutes = critical_path(DIAMOND, minutes)
    assert by_minutes.keys == ("a", "c", "d") and by_minutes.minutes == 32.0
    # one task without minutes: the path is by count again
    assert critical_path(DIAMOND, {**minutes, "e": None}).keys == ("a", "b", "d")
    # a long task alone beats a short chain
    assert critical_path(DIAMOND, {**minutes, "e": 100.0}).keys == ("e",)


def test_a_cycle_leaves_its_tasks_without_a_stage() -> None:
    shape = plan_shape([task("a", "b"), task("b", "a"), task("c")])
    assert shape.stages == (("c",),)
    assert shape.unstaged == ("a", "b")


def test_a_good_draft_has_no_problems() -> None:
    findings = draft_findings(DIAMOND, DraftLimits())
    assert findings.problems == [] and findings.warnings == []


def test_each_task_needs_one_agent_type_not_the_planners_and_a_success() -> None:
    findings = draft_findings(
        [task("a", agent=None), task("b", agent="planner"), task("c", success="  ")], DraftLimits()
    )
    assert findings.problems == [
        "task 'a': give it one agent type (agent:)",
        "task 'b': agent type 'planner' is orch's own; give it a type that does the work",
        "task 'c': give it a measurable success (success:): what is true when it is done",
    ]


def test_a_dependency_on_a_task_listed_later_is_a_problem() -> None:
    findings = draft_findings([task("b", "a"), task("a")], DraftLimits())
    assert findings.problems == [
        "task 'b': depends on 'a', listed after it; a task may only depend on tasks listed before it"
    ]


def test_warnings_for_a_task_over_3_files_and_a_plan_over_max_tasks() -> None:
    findings = draft_findings([task("a", files=4), task("b", files=3), task("c")], DraftLimits(max_tasks=2))
    assert findings.problems == []
    assert findings.warnings == [
        "task 'a': 4 files, more than 3; it may be more than one agent's work (split it?)",
        "the plan has 3 tasks, more than --max-tasks 2: is every task needed, or is the goal several goals?",
    ]


def test_more_stages_than_max_stages_is_an_error_asking_to_split_the_goal() -> None:
    chain = [task("s0")] + [task(f"s{i}", f"s{i - 1}") for i in range(1, 14)]
    findings = draft_findings(chain, DraftLimits())
    assert len(findings.problems) == 1
    problem = findings.problems[0]
    assert problem.startswith("the plan has 14 stages, more than --max-stages 10 (the chain s0 -> s1 -> ")
    assert "split the goal" in problem and "s13" in problem
    assert draft_findings(chain, DraftLimits(max_stages=14)).problems == []
