"""Re-planning on failure (`on_failure: replan`), decided. Pure: an attempt's outcome and its task's re-plan state in,
the task's next state out; a replacement's tasks and the failed task's edges in, the plan's new edges out.

- a task whose retries are spent (its outcome would be failed) and that may still be re-planned waits (retry_wait)
  with `replanning` set: its next attempt asks the planner, on the planner's queue, instead of running it again;
- a re-plan attempt the planner could not answer is retried like any attempt (at least REPLAN_RETRIES times);
  one it declined, or whose retries are spent, fails the task as before;
- a replacement applied leaves the task `replaced`: its replacement tasks without a dependency among themselves
  take its dependencies, and its dependants wait for the replacement's sinks (those no other replacement task needs);
  they inherit its `on_failure` with the re-plans it has left (`inherited`): `max_replans` bounds the whole chain.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from orch.decisions.followups import quoted
from orch.decisions.retry import Outcome
from orch.states import AttemptStatus, TaskStatus

REPLAN_RETRIES = 2  # a re-plan attempt's retries (the planner unreachable), whatever the task's own
REPLAN_DECLINED = "replan_declined"  # the failure class of a re-plan the planner declined: the task fails


@dataclass(frozen=True)
class ReplanState:
    """A task's re-plan fields as stored."""

    on_failure: str = "fail"
    replans: int = 0
    max_replans: int = 1


@dataclass(frozen=True)
class Settled:
    """An attempt's outcome once re-planning is considered, and the task's re-plan fields after it."""

    outcome: Outcome
    replanning: bool = False  # its next attempt asks the planner
    replans: int = 0
    starts_replan: bool = False  # this outcome begins a re-plan: its retry count starts afresh


def settle(outcome: Outcome, state: ReplanState, replanning: bool, failure_class: str | None) -> Settled:
    """What a finished (or lost) attempt makes of its task, re-planning considered. `replanning`: the attempt was
    a re-plan attempt. A re-plan attempt's success is not decided here: its replacement is checked first
    (`replaced` or `replacement_refused`)."""
    if replanning:
        if failure_class == REPLAN_DECLINED and outcome.task_status is not TaskStatus.FAILED:
            return Settled(
                Outcome(TaskStatus.FAILED, outcome.attempt_status, None, outcome.detail), False, state.replans
            )
        keeps = outcome.task_status is TaskStatus.RETRY_WAIT
        return Settled(outcome, keeps, state.replans)
    if outcome.task_status is not TaskStatus.FAILED or state.on_failure != "replan":
        return Settled(outcome, False, state.replans)
    if state.replans >= state.max_replans:
        detail = f"{outcome.detail}; re-planned {state.replans} of {state.max_replans} times already"
        return Settled(replace(outcome, detail=detail), False, state.replans)
    number = state.replans + 1
    detail = f"{outcome.detail}; asking the planner to re-plan it ({number} of {state.max_replans})"
    waiting = Outcome(TaskStatus.RETRY_WAIT, outcome.attempt_status, None, detail)
    return Settled(waiting, True, number, starts_replan=True)


def inherited(state: ReplanState) -> ReplanState:
    """The re-plan policy a replacement's tasks take from the task they replace (`state`: its fields once this re-plan
    is counted): its `on_failure` with the re-plans it has left, so `max_replans` bounds a chain of re-plans, not
    each link; none left, they fail as any task."""
    left = max(0, state.max_replans - state.replans)
    return ReplanState("replan" if state.on_failure == "replan" and left else "fail", 0, left)


def replaced(keys: Sequence[str]) -> Outcome:
    return Outcome(TaskStatus.REPLACED, AttemptStatus.SUCCEEDED, None, f"replaced by {', '.join(keys)}")


def replacement_refused(problems: Sequence[str]) -> Outcome:
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return Outcome(TaskStatus.FAILED, AttemptStatus.FAILED, None, f"the planner's replacement is refused: {shown}")


@dataclass(frozen=True)
class Rewiring:
    """The plan's new edges once a replacement is applied."""

    after: Mapping[str, tuple[str, ...]]  # each replacement task's dependencies
    sinks: tuple[str, ...]  # the replacement tasks the failed task's dependants now wait for
    dependants: tuple[str, ...]  # the failed task's dependants, rewired


def rewire(
    failed: str,
    failed_after: Sequence[str],
    dependants: Sequence[str],
    descendants: Collection[str],
    tasks: Mapping[str, tuple[str, ...]],
) -> tuple[Rewiring | None, list[str]]:
    """The edges a replacement of `failed` makes, or the problems that refuse it: a replacement task that waits for
    a task that (directly or not) waits for `failed` would make a cycle once the dependants wait for it. `tasks`: each
    replacement task's dependencies as written, in the order written."""
    problems = [
        f"replacement task {quoted(key)}: depends on {quoted(dep)}, which waits for {quoted(failed)}: a cycle"
        for key, after in tasks.items()
        for dep in after
        if dep in descendants
    ]
    if problems:
        return None, problems
    inside = {key: any(dep in tasks for dep in after) for key, after in tasks.items()}
    wired = {
        key: after if inside[key] else tuple(dict.fromkeys([*failed_after, *after])) for key, after in tasks.items()
    }
    needed = {dep for after in tasks.values() for dep in after if dep in tasks}
    sinks = tuple(key for key in tasks if key not in needed)
    return Rewiring(wired, sinks, tuple(dependants)), []
