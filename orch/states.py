"""The one status Enum of tasks (and of plans), with the named sets the rest of orch reasons with."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"  # waiting for its dependencies
    QUEUED = "queued"  # claimed by a dispatcher, message sent to its agent type's queue
    RUNNING = "running"  # claimed by a worker (holds a lease it renews by heartbeat)
    MERGING = "merging"  # its attempt succeeded; its work waits in the merge queue (it has not succeeded yet)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # retries exhausted or a permanent failure
    RETRY_WAIT = "retry_wait"  # failed an attempt; waits for its backoff to pass
    UPSTREAM_FAILED = "upstream_failed"  # a dependency failed, so it never runs
    CANCELLED = "cancelled"
    REPLACED = "replaced"  # its retries spent, the planner put smaller tasks in its place (on_failure: replan)


# Named sets: the rest of orch says which set it means, never lists statuses inline.
TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED, TaskStatus.REPLACED}
)
# Final and not a failure: a plan whose tasks all ended so succeeds (a replaced task's replacements stand for it).
ENDED_WELL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.REPLACED})
DISPATCHABLE = frozenset({TaskStatus.PENDING, TaskStatus.RETRY_WAIT})
IN_FLIGHT = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})  # counts against an agent type's cap
# Tasks whose declared `files` are leased: in flight, or with work not yet landed (merging).
HOLDING_FILES = frozenset({*IN_FLIGHT, TaskStatus.MERGING})
DOOMING = frozenset({TaskStatus.FAILED, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED})
CANCELLABLE = frozenset(
    {TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RETRY_WAIT, TaskStatus.RUNNING, TaskStatus.MERGING}
)
RETRIABLE = frozenset({TaskStatus.FAILED, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED})  # `orch retry`
SKIPPABLE = frozenset(set(TaskStatus) - ENDED_WELL)  # `orch skip` (a replaced task has nothing left to skip)

_S = TaskStatus
# Every task status change the store may make (the event log's old -> new); the fault suite checks against it.
LEGAL_TRANSITIONS: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset(
    {
        (_S.PENDING, _S.QUEUED),
        (_S.PENDING, _S.UPSTREAM_FAILED),
        (_S.RETRY_WAIT, _S.QUEUED),
        (_S.QUEUED, _S.RUNNING),
        (_S.RUNNING, _S.SUCCEEDED),
        (_S.RUNNING, _S.FAILED),
        (_S.RUNNING, _S.RETRY_WAIT),  # a failed, lost, interrupted or over-budget attempt (or one re-planned)
        (_S.RUNNING, _S.REPLACED),  # its re-plan attempt's replacement was applied
        (_S.RUNNING, _S.MERGING),  # its work is in the merge queue
        (_S.MERGING, _S.SUCCEEDED),  # merged
        (_S.MERGING, _S.RETRY_WAIT),  # a gate failed on the merged result
        (_S.MERGING, _S.FAILED),  # a gate failed with no retry left, or a conflict (on_conflict: fail)
        *((old, _S.CANCELLED) for old in CANCELLABLE),
        *((old, _S.PENDING) for old in RETRIABLE),  # `orch retry`, or an upstream task retried or skipped
        *((old, _S.SUCCEEDED) for old in SKIPPABLE if old is not _S.RUNNING),  # `orch skip`
    }
)


class PlanStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # `orch pause`: nothing new is dispatched; running attempts finish
    BUDGET_EXHAUSTED = "budget_exhausted"  # spent its budget; `orch resume --budget-usd` raises it
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


PLAN_FINAL = frozenset({PlanStatus.SUCCEEDED, PlanStatus.FAILED, PlanStatus.CANCELLED})
PLAN_HELD = frozenset({PlanStatus.PAUSED, PlanStatus.BUDGET_EXHAUSTED})  # resumable; dispatch is held


class AttemptStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # its lease expired: the worker died, froze or lost the store
    INTERRUPTED = "interrupted"  # worker shutdown or budget stop: re-queued at once, not counted


class MergePhase(StrEnum):
    """A merge request's phase in the merge queue."""

    QUEUED = "queued"
    MERGING = "merging"  # claimed under the integration's merge lock
    MERGED = "merged"
    CONFLICTED = "conflicted"  # its work conflicts with the integration branch (resolved by a task, or failed)
    GATE_FAILED = "gate_failed"
    FAILED = "failed"  # git cannot merge it (unrelated histories…), or it could not be merged in MAX_MERGE_TRIES
    CANCELLED = "cancelled"  # its task was cancelled, skipped or retried before it merged


MERGE_OPEN = frozenset({MergePhase.QUEUED, MergePhase.MERGING})
