"""Why an attempt failed, and whether another attempt can help."""

from __future__ import annotations

from enum import StrEnum


class FailureClass(StrEnum):
    # transient: retried with backoff
    EXIT_STATUS = "exit_status"  # the agent or command exited non-zero
    TIMEOUT = "timeout"  # the task's time limit
    IDLE_TIMEOUT = "idle_timeout"  # no output for the agent type's idle_timeout
    RATE_LIMITED = "rate_limited"  # 429: waits at least retry-after
    OVERLOADED = "overloaded"  # 529
    SERVER_ERROR = "server_error"  # 5xx
    CONNECTION_ERROR = "connection_error"
    AGENT_ERROR = "agent_error"  # the agent reported an error result
    VERIFICATION_FAILED = "verification_failed"  # the agent said done; the task's `verify:` command disagreed
    SCOPE_VIOLATION = "scope_violation"  # `scope: strict` and files changed outside the task's `files`
    USAGE_LIMIT = "usage_limit"  # a usage limit with a reset time: the agent type pauses until then
    INTERNAL_ERROR = "internal_error"  # a bug in an executor
    WORKDIR_MISSING = "workdir_missing"
    WORKER_LOST = "worker_lost"  # the lease expired: the worker died, froze or lost the store
    WORKTREE_ERROR = "worktree_error"  # git could not fetch the repository or make the attempt's worktree
    GATE_FAILED = "gate_failed"  # a plan's gate failed on the attempt's work merged into the integration branch
    MERGE_ERROR = "merge_error"  # git could not merge its work (unrelated histories…), or not in the tries allowed
    WORKTREE_QUOTA = "worktree_quota"  # its worker's worktrees reached ORCH_WORKTREE_MAX_GB: held, not counted
    # not the task's doing: re-queued at once, no retries spent
    INTERRUPTED = "interrupted"  # the worker shut down (SIGTERM) or the plan ran out of budget
    # the attempt was stopped because its lease is gone (cancelled, skipped, reaped): its result is not recorded
    LEASE_LOST = "lease_lost"
    # permanent: failed at once, no retries burned
    AUTH_ERROR = "auth_error"  # 401, 403
    BAD_REQUEST = "bad_request"  # 400, 404, 413, 422: the request itself is wrong
    SPEND_LIMIT = "spend_limit"  # a spend or usage limit (a 429 that waiting does not cure)
    MISSING_CREDENTIALS = "missing_credentials"  # e.g. ANTHROPIC_API_KEY not set on the worker
    EXECUTOR_UNAVAILABLE = "executor_unavailable"
    INVALID_TASK = "invalid_task"
    BUDGET_EXCEEDED = "budget_exceeded"  # the task's own budget is spent
    UNSAFE_WORKDIR = "unsafe_workdir"  # the workdir is inside ORCH_HOME or holds the store: agents must not run there
    WORKDIR_NOT_WRITABLE = "workdir_not_writable"  # the agent's user cannot write it (the worker runs as root)
    MERGE_CONFLICT = "merge_conflict"  # its work conflicts with the integration branch (on_conflict: fail)


PERMANENT = frozenset(
    {
        FailureClass.AUTH_ERROR,
        FailureClass.BAD_REQUEST,
        FailureClass.SPEND_LIMIT,
        FailureClass.MISSING_CREDENTIALS,
        FailureClass.EXECUTOR_UNAVAILABLE,
        FailureClass.INVALID_TASK,
        FailureClass.BUDGET_EXCEEDED,
        FailureClass.UNSAFE_WORKDIR,
        FailureClass.WORKDIR_NOT_WRITABLE,
        FailureClass.MERGE_CONFLICT,
    }
)


def is_retryable(failure_class: str | None) -> bool:
    return failure_class not in PERMANENT


# Failures that are no fault of the task: retried without spending its retries.
NOT_COUNTED = frozenset({FailureClass.USAGE_LIMIT, FailureClass.INTERRUPTED, FailureClass.WORKTREE_QUOTA})
# Failures whose next attempt may start at once (no backoff).
REQUEUED_AT_ONCE = frozenset({FailureClass.INTERRUPTED})


class PauseCause(StrEnum):
    """Why an agent type's dispatch is paused (agent_pauses.cause; the `cause` label of the pause metrics)."""

    CIRCUIT_BREAKER = "circuit_breaker"  # consecutive failures of the type opened its circuit (orch.decisions.breaker)
    USAGE_LIMIT = "usage_limit"  # a provider's usage limit, until its reset (an attempt's FailureClass.USAGE_LIMIT)
