"""Readiness as a pure function of a plan's task states, its edges, the free capacity per agent type, the file
patterns held by tasks in flight, and `now`.

`reconcile` returns a decision; one writer (orch.store) applies it with compare-and-set updates.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from orch.dag import Dag
from orch.decisions.file_leases import MAX_DECISION_STEPS, StepBudget, files_conflict
from orch.states import DISPATCHABLE, DOOMING, ENDED_WELL, HOLDING_FILES, TERMINAL, PlanStatus, TaskStatus


@dataclass(frozen=True)
class TaskView:
    """What readiness needs to know of one task."""

    pk: int
    status: TaskStatus
    agent: str
    priority: int
    seq: int
    deps: tuple[int, ...] = ()
    not_before: datetime | None = None  # retry_wait: the earliest time the next attempt may start
    files: tuple[str, ...] = ()  # its `files` patterns: no two tasks whose patterns overlap run at once
    held: bool = False  # its task list holds it (deferred): never ready, so its dependants wait too


@dataclass(frozen=True)
class Reconciliation:
    upstream_failed: tuple[int, ...] = ()  # pending tasks that can never run: a dependency failed
    ready: tuple[int, ...] = ()  # to dispatch now, best first, within the agent types' free slots
    waiting_for_capacity: int = 0  # ready but over an agent type's cap
    plan_outcome: PlanStatus | None = None  # set when every task is final
    statuses: Mapping[int, TaskStatus] = field(default_factory=dict)  # states after the decision
    waiting_for_files: int = 0  # ready but its files overlap a task's in flight or picked before it


def dispatch_order(task: TaskView) -> tuple[int, int]:
    """Higher priority first, then the order the plan declares tasks in."""
    return (-task.priority, task.seq)


def reconcile(
    tasks: Sequence[TaskView],
    free_slots: Mapping[str, int],
    now: datetime,
    held_files: Sequence[Sequence[str]] = (),
) -> Reconciliation:
    """Decide which tasks are doomed, which are ready (capped per agent type), and whether the plan is over.

    A task whose files overlap those of a task in flight (this plan's queued or running tasks, or any list in
    `held_files`: the caller's in-flight tasks sharing the workdir) or of a task picked before it this round waits,
    without taking its agent type's slot.
    """
    status = {t.pk: t.status for t in tasks}
    withdrawable = {t.pk for t in tasks if t.held}
    doomed = _doom(Dag({t.pk: t.deps for t in tasks}), status)
    runnable = (t for t in tasks if status[t.pk] in DISPATCHABLE and _runnable(t, status, now))
    held = [files for files in held_files if files]
    held += [t.files for t in tasks if t.files and status[t.pk] in HOLDING_FILES]
    ready, over_cap, on_files = _pick(sorted(runnable, key=dispatch_order), free_slots, held)
    # a task its list withdrew (held, and cancelled) does not count for the plan's outcome
    counted = {pk: s for pk, s in status.items() if not (s is TaskStatus.CANCELLED and pk in withdrawable)}
    outcome = _outcome(counted)
    return Reconciliation(tuple(doomed), tuple(ready), over_cap, outcome, status, waiting_for_files=on_files)


def _doom(dag: Dag[int], status: dict[int, TaskStatus]) -> list[int]:
    """The pending tasks after a failed, cancelled or doomed one: upstream_failed now, in `status` too."""
    failed = [pk for pk, s in status.items() if s in DOOMING]
    doomed = dag.descendants(*failed, through=lambda pk: status[pk] is TaskStatus.PENDING)
    for pk in doomed:
        status[pk] = TaskStatus.UPSTREAM_FAILED
    return doomed


def _pick(
    candidates: Sequence[TaskView], free_slots: Mapping[str, int], held_files: Sequence[Sequence[str]]
) -> tuple[list[int], int, int]:
    """The candidates (best first) to dispatch within their agent types' free slots, none whose files overlap
    `held_files` or a pick's before it; then how many wait for a slot, and how many for files."""
    slots = dict(free_slots)
    held = list(held_files)
    ready: list[int] = []
    over_cap = on_files = 0
    file_checks = StepBudget(MAX_DECISION_STEPS)  # spent, the rest wait for the next round: this runs under the lock
    for task in candidates:
        if task.files and any(files_conflict(task.files, files, file_checks) for files in held):
            on_files += 1
        elif slots.get(task.agent, 0) > 0:
            slots[task.agent] -= 1
            ready.append(task.pk)
            if task.files:
                held.append(task.files)
        else:
            over_cap += 1
    return ready, over_cap, on_files


def _outcome(status: Mapping[int, TaskStatus]) -> PlanStatus | None:
    """The plan's end state once every task is final: succeeded if every task did (or was replaced)."""
    if not all(s in TERMINAL for s in status.values()):
        return None
    every_succeeded = all(s in ENDED_WELL for s in status.values())
    return PlanStatus.SUCCEEDED if every_succeeded else PlanStatus.FAILED


def _runnable(task: TaskView, status: Mapping[int, TaskStatus], now: datetime) -> bool:
    if task.held:
        return False
    if task.status is TaskStatus.RETRY_WAIT:
        return task.not_before is None or task.not_before <= now
    return all(status.get(dep) is TaskStatus.SUCCEEDED for dep in task.deps)


def free_slots(caps: Mapping[str, int], in_flight: Mapping[str, int], paused: Collection[str] = ()) -> dict[str, int]:
    """Per agent type: its concurrency cap less its queued and running tasks (never below zero); a paused type
    (e.g. until a usage limit resets) has none."""
    return {agent: 0 if agent in paused else max(0, cap - in_flight.get(agent, 0)) for agent, cap in caps.items()}
