"""Retry policy: exponential backoff with equal jitter, and the retry-or-fail decision."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from orch.decisions.retry import Backoff, decide_retry

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_backoff_doubles_per_attempt() -> None:
    backoff = Backoff(base=2.0, cap=600.0)
    assert [backoff.delay(attempt, draw=0.0) for attempt in range(1, 7)] == [1, 2, 4, 8, 16, 32]
    assert [backoff.delay(attempt, draw=0.999999) for attempt in range(1, 4)] == pytest.approx([2, 4, 8], rel=1e-5)


def test_backoff_is_capped() -> None:
    backoff = Backoff(base=2.0, cap=600.0)
    # 2 * 2**9 = 1024 is over the cap: the ceiling is the cap from there on
    for attempt in (10, 11, 50, 101):
        assert backoff.delay(attempt, draw=0.0) == 300.0
        assert backoff.delay(attempt, draw=0.999999) == pytest.approx(600.0, rel=1e-5)
        assert backoff.delay(attempt, draw=0.999999) <= 600.0


def test_jitter_stays_within_half_ceiling_and_ceiling() -> None:
    backoff = Backoff(base=3.0, cap=100.0)
    rng = random.Random(1234)
    draws = [0.0, 0.5, 0.999999, *(rng.random() for _ in range(200))]
    for attempt in range(1, 12):
        ceiling = min(100.0, 3.0 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt, draw) for draw in draws]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, ceiling)
        assert len(set(delays)) > 1  # the draw actually spreads the waits


def test_decide_retry_retries_until_attempts_exceed_retries() -> None:
    backoff = Backoff()
    decisions = [decide_retry(attempt, 2, NOW, 0.5, backoff) for attempt in (1, 2, 3, 4)]
    assert [d.retry for d in decisions] == [True, True, False, False]
    assert decisions[0].reason.startswith("retry 1 of 2 in ")
    assert decisions[2].reason == "retries exhausted (3 attempts)"
    assert decide_retry(1, 0, NOW, 0.5, backoff).reason == "retries exhausted (1 attempt)"  # not "1 attempts"
    assert decisions[2].not_before is None
    assert decisions[2].delay == 0.0


def test_zero_retries_fail_after_the_first_attempt() -> None:
    decision = decide_retry(1, 0, NOW, 0.5, Backoff())
    assert not decision.retry
    assert decision.not_before is None


def test_non_retryable_fails_at_once() -> None:
    decision = decide_retry(1, 5, NOW, 0.5, Backoff(), retryable=False)
    assert not decision.retry
    assert decision.not_before is None
    assert decision.delay == 0.0
    assert "permanent" in decision.reason


@pytest.mark.parametrize(("attempt", "draw"), [(1, 0.0), (2, 0.3), (5, 0.999)])
def test_not_before_is_now_plus_the_backoff_delay(attempt: int, draw: float) -> None:
    backoff = Backoff(base=5.0, cap=60.0)
    decision = decide_retry(attempt, 10, NOW, draw, backoff)
    assert decision.retry
    assert decision.delay == backoff.delay(attempt, draw)
    assert decision.not_before == NOW + timedelta(seconds=decision.delay)
    assert decision.not_before > NOW
