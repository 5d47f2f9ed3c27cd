"""The one status Enum of tasks (and of plans), with the named sets the rest of orch reasons with."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"  # waiting for its dependencies
    QUEUED = "queued"  # claimed by a dispatcher, message sent to its agent type's queue
    RUNNING = "running"  # claimed by a worker (holds a lease)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # retries exhausted or a permanent failure
    RETRY_WAIT = "retry_wait"  # failed an attempt; waits for its backoff to pass
    UPSTREAM_FAILED = "upstream_failed"  # a dependency failed, so it never runs
    CANCELLED = "cancelled"


# Named sets: the rest of orch says which set it means, never lists statuses inline.
TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED})
DISPATCHABLE = frozenset({TaskStatus.PENDING, TaskStatus.RETRY_WAIT})
IN_FLIGHT = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})  # counts against an agent type's cap
DOOMING = frozenset({TaskStatus.FAILED, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED})
CANCELLABLE = frozenset({TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RETRY_WAIT, TaskStatus.RUNNING})


class PlanStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


PLAN_FINAL = frozenset({PlanStatus.SUCCEEDED, PlanStatus.FAILED, PlanStatus.CANCELLED})


class AttemptStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
