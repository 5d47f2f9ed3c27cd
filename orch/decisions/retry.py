"""Retry policy: a pure decision from the attempt count, the task's retry budget, a random draw and `now`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from orch.failures import NOT_COUNTED, REQUEUED_AT_ONCE, FailureClass, is_retryable
from orch.states import AttemptStatus, TaskStatus


@dataclass(frozen=True)
class Backoff:
    base: float = 2.0  # seconds before the first retry (before jitter)
    cap: float = 600.0  # no wait is longer than this

    def delay(self, attempt: int, draw: float) -> float:
        """Exponential backoff with "equal jitter": half fixed, half drawn, so retries spread but never bunch.

        `attempt` is the number of the attempt that just failed (1 = the first); `draw` is in [0, 1).
        """
        ceiling = min(self.cap, self.base * 2.0 ** (attempt - 1))
        return float(ceiling / 2 + ceiling / 2 * draw)


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    not_before: datetime | None
    delay: float
    reason: str


def decide_retry(
    attempt: int,
    retries: int,
    now: datetime,
    draw: float,
    backoff: Backoff,
    retryable: bool = True,
    min_delay: float = 0.0,
    counted: bool = True,
) -> RetryDecision:
    """After attempt number `attempt` failed: retry (and when), or fail for good.

    `min_delay` is a wait the provider asked for (retry-after); the backoff never undercuts it. An attempt that
    is not `counted` (a usage limit: no fault of the task) does not spend the retry budget."""
    if not retryable:
        return RetryDecision(False, None, 0.0, "permanent failure: not retried")
    if counted and attempt > retries:
        return RetryDecision(False, None, 0.0, f"retries exhausted ({attempt} attempt{'' if attempt == 1 else 's'})")
    delay = max(backoff.delay(attempt, draw), min_delay)
    return RetryDecision(True, now + timedelta(seconds=delay), delay, f"retry {attempt} of {retries} in {delay:.1f}s")


@dataclass(frozen=True)
class Outcome:
    """What one finished (or lost) attempt makes of its task."""

    task_status: TaskStatus
    attempt_status: AttemptStatus
    not_before: datetime | None = None
    detail: str | None = None


def decide_outcome(
    succeeded: bool,
    failure_class: str | None,
    error: str | None,
    earlier_failures: int,
    retries: int,
    now: datetime,
    draw: float,
    backoff: Backoff,
    retry_after: float | None = None,
) -> Outcome:
    """The task's next status after an attempt: succeeded, re-queued at once (interrupted), retried after a
    backoff, or failed. `earlier_failures` counts the attempts before this one that spent the retry budget."""
    if succeeded:
        return Outcome(TaskStatus.SUCCEEDED, AttemptStatus.SUCCEEDED)
    if failure_class in REQUEUED_AT_ONCE:
        return Outcome(TaskStatus.RETRY_WAIT, AttemptStatus.INTERRUPTED, None, f"{error} (re-queued, not counted)")
    counted = failure_class not in NOT_COUNTED
    decision = decide_retry(
        earlier_failures + (1 if counted else 0),
        retries,
        now,
        draw,
        backoff,
        retryable=is_retryable(failure_class),
        min_delay=retry_after or 0.0,
        counted=counted,
    )
    attempt_status = AttemptStatus.LOST if failure_class == FailureClass.WORKER_LOST else AttemptStatus.FAILED
    task_status = TaskStatus.RETRY_WAIT if decision.retry else TaskStatus.FAILED
    return Outcome(task_status, attempt_status, decision.not_before, f"{error} ({decision.reason})")
