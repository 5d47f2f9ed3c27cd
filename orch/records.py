"""The values the store hands out and takes in: plain frozen dataclasses, with no SQL and no SQLAlchemy, so a
worker's executors, the dispatcher and the views can use them without importing the store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orch.budget import Budget
from orch.intake.prices import Usage
from orch.states import PlanStatus, TaskStatus

# --- dispatch --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentLoad:
    in_flight: dict[str, int]  # queued and running tasks per agent type, across every plan
    paused: set[str]  # agent types whose dispatch is held (a usage limit, an open circuit breaker)


@dataclass(frozen=True)
class PlanGate:
    """What dispatch asks of a plan before claiming its tasks: may it run, and within what budget."""

    status: PlanStatus
    workdir: str
    budget: Budget


RUN_TASK = "orch.run_task"  # the Celery task a Dispatch's message names (workers.tasks registers it)


def message_id(plan_id: str, key: str, attempt: int) -> str:
    """The broker message id of a task's attempt: a re-sent message keeps it, so a cancel can find every copy."""
    return f"{plan_id}.{key}.{attempt}"


@dataclass(frozen=True)
class ReplanRoute:
    """Where a re-plan attempt's message goes (the planner agent type's queue) and its time limit."""

    queue: str = "agent.planner"
    timeout: float = 600.0


@dataclass(frozen=True)
class Dispatch:
    """One message to send: the task's id and attempt, to its agent type's queue."""

    task_pk: int
    attempt: int
    queue: str
    timeout: float
    plan_id: str
    key: str

    @property
    def message_id(self) -> str:
        return message_id(self.plan_id, self.key, self.attempt)


# --- a worker's attempt ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt: every later write names the lease."""

    task_pk: int
    plan_id: str
    key: str
    attempt: int
    lease: str
    retries: int
    agent: str
    counted_failures: int = 0  # earlier failed attempts that spent the retry budget
    dependants: int | None = None  # tasks that depend on this one (None: not known, so look)
    replanning: bool = False  # a re-plan attempt: it asks the planner for tasks to put in the task's place


@dataclass(frozen=True)
class ClaimedTask:
    """What a worker needs of a claimed task to run it (one indexed read, no ORM objects)."""

    key: str
    title: str
    description: str
    success: str
    command: str | None
    files: list[str]
    timeout: float
    agent: str
    executor: str
    verify: str | None
    scope: str
    call: str | None
    workdir: str
    repository: str | None = None  # the plan's repository it works in (a worktree per attempt); None: workdir
    merge: bool = True  # its work lands through the merge queue
    resolves: int | None = None  # the merge request whose conflict it resolves
    replanning: bool = False  # this attempt asks the planner for smaller tasks in its place (on_failure: replan)
    depth: int = 0  # how deep a follow-up it is (0: its plan's own task; a follow-up is its author's plus one)


@dataclass(frozen=True)
class AttemptResult:
    succeeded: bool
    exit_code: int | None = None
    failure_class: str | None = None
    error: str | None = None
    output_tail: str = ""
    log_path: str | None = None
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    result: str | None = None  # the agent's final answer / summary
    retry_after: float | None = None  # the provider asked us to wait at least this long (seconds)
    files_changed: tuple[str, ...] | None = None
    duration_s: float | None = None
    verified: bool | None = None
    head_commit: str | None = None  # a worktree attempt's branch head once orch committed its work
    lands: bool = False  # succeeded with work for the merge queue: its task waits there (merging)
    # Tasks the attempt asks to add to its plan (the JSON it wrote to $ORCH_FOLLOWUPS, or its final message's
    # block), as written: validated against the plan when the result is recorded. None: it asked for none.
    followups: str | None = None
    # A re-planning attempt's answer: the planner's tasks to put in the task's place (as written, validated when
    # recorded). None: not a re-plan, or the planner declined (then `succeeded` is False and `error` says why).
    replacement: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class FailedAttempt:
    """One failed attempt of a task, as a re-plan's prompt shows it (its texts clipped)."""

    number: int
    error: str
    failure_class: str | None
    output_tail: str


@dataclass(frozen=True)
class PlannedAround:
    """A task near the one re-planned: by id and title (and its status)."""

    key: str
    title: str
    status: str


@dataclass(frozen=True)
class ReplanInputs:
    """What the planner is told of a task whose retries are spent: the task, its failures and the plan around it."""

    plan_name: str
    plan_description: str
    key: str
    title: str
    description: str
    success: str
    agent: str
    command: str | None
    verify: str | None
    files: tuple[str, ...]
    failures: tuple[FailedAttempt, ...]
    dependencies: tuple[PlannedAround, ...]
    dependants: tuple[PlannedAround, ...]
    siblings: tuple[PlannedAround, ...]  # tasks waiting for the same tasks it waits for (or, for a root, roots)


# --- worktrees and the merge queue -----------------------------------------------------------------------


@dataclass(frozen=True)
class Integration:
    """A plan's integration branch in one repository, as a worker or merger needs it."""

    pk: int
    plan_id: str
    repository: str
    url: str
    base: str
    base_commit: str
    branch: str
    head: str
    land: str
    gates: tuple[str, ...]
    gate_timeout: float
    on_conflict: str
    relock: tuple[tuple[str, str], ...]
    context: str = ""


MERGE_TASK = "orch.merge"  # the Celery task that works an integration's merge queue (workers.tasks registers it)


@dataclass(frozen=True)
class MergeRequest:
    """One queued attempt's work, as the merge queue's decision and its merger need it."""

    pk: int
    task_pk: int
    key: str
    attempt: int
    phase: str
    base_commit: str
    head_commit: str
    enqueued_at: datetime
    priority: int = 0
    after: tuple[int, ...] = ()  # task pks it depends on (directly)
    tries: int = 0  # merges begun before this one
    resolves: int | None = None  # the merge request whose conflict this one's task resolved


@dataclass(frozen=True)
class Recorded:
    """A result the store accepted; `newly_ready` dependants (or tasks it added) have no unmet dependency left because
    of it, at most. `status`: the task's status when the store decided other than the outcome it was given (a
    re-plan begun, a replacement applied or refused)."""

    newly_ready: int = 0
    status: TaskStatus | None = None


# --- budgets and stats -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptStats:
    attempts: int
    usage: Usage
    cost_usd: float | None  # None when no attempt had a known price


# --- the `orch run` behind a plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as a later command can recognise it: its host, its pid and its start time (in clock ticks since
    boot, /proc/PID/stat), so that a pid the kernel has given to another process since is not mistaken for it.
    orch.services.processes gives this process's (`this_process`) and tells whether one still runs (`process_alive`)."""

    host: str
    pid: int
    start_ticks: int

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


@dataclass(frozen=True)
class RunnerPlan:
    """An unfinished plan and the `orch run` process that runs it."""

    plan_id: str
    runner: ProcessIdentity
