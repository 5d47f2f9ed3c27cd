"""Retry policy: a pure decision from the attempt count, the task's retry budget, a random draw and `now`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


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
        return RetryDecision(False, None, 0.0, f"retries exhausted ({attempt} attempts)")
    delay = max(backoff.delay(attempt, draw), min_delay)
    return RetryDecision(True, now + timedelta(seconds=delay), delay, f"retry {attempt} of {retries} in {delay:.1f}s")
