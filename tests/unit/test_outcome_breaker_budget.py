"""Pure decisions about an attempt's end and its cost: what the end makes of its task (retry, requeue or fail), the
circuit breaker, budgets; and the checks a worker makes of its settings at start (visibility timeout, lease)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orch.budget import Budget, Spend, describe, exhausted
from orch.celery import check_visibility_timeout
from orch.decisions.breaker import is_open
from orch.decisions.retry import Backoff, Outcome, decide_outcome
from orch.errors import ConfigInvalid
from orch.failures import FailureClass
from orch.settings import Settings
from orch.states import LEGAL_TRANSITIONS, AttemptStatus, TaskStatus

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
BACKOFF = Backoff(base=2.0, cap=600.0)
CONFIG = Path(__file__).resolve().parents[2] / "config"


def outcome(failure: FailureClass | None, earlier: int = 0, retries: int = 2, ok: bool = False) -> Outcome:
    return decide_outcome(ok, failure, "why", earlier, retries, NOW, 0.5, BACKOFF)


def test_success_and_a_counted_failure() -> None:
    assert outcome(None, ok=True).task_status is TaskStatus.SUCCEEDED
    failed = outcome(FailureClass.EXIT_STATUS)
    assert (failed.task_status, failed.attempt_status) == (TaskStatus.RETRY_WAIT, AttemptStatus.FAILED)
    assert failed.not_before == NOW + timedelta(seconds=1.5)
    assert outcome(FailureClass.EXIT_STATUS, earlier=2).task_status is TaskStatus.FAILED


def test_a_lost_worker_spends_a_retry_so_a_poison_task_cannot_loop() -> None:
    lost = outcome(FailureClass.WORKER_LOST)
    assert (lost.task_status, lost.attempt_status) == (TaskStatus.RETRY_WAIT, AttemptStatus.LOST)
    final = outcome(FailureClass.WORKER_LOST, earlier=2)
    assert (final.task_status, final.attempt_status) == (TaskStatus.FAILED, AttemptStatus.LOST)
    assert "retries exhausted (3 attempts)" in (final.detail or "")


def test_an_interrupted_attempt_is_requeued_at_once_and_not_counted() -> None:
    interrupted = outcome(FailureClass.INTERRUPTED, earlier=2, retries=2)
    assert interrupted.task_status is TaskStatus.RETRY_WAIT
    assert interrupted.attempt_status is AttemptStatus.INTERRUPTED
    assert interrupted.not_before is None


def test_an_exceeded_task_budget_is_permanent() -> None:
    assert outcome(FailureClass.BUDGET_EXCEEDED).task_status is TaskStatus.FAILED


F, OK, LOST = AttemptStatus.FAILED, AttemptStatus.SUCCEEDED, AttemptStatus.LOST


@pytest.mark.parametrize(
    ("recent", "expected"),
    [
        ([(F, "exit_status")] * 3, True),
        ([(F, "exit_status")] * 2, False),  # not enough history yet
        ([(F, "exit_status"), (F, "timeout"), (OK, None), (F, "exit_status")], False),
        ([(F, "exit_status"), (LOST, "worker_lost"), (F, "timeout"), (F, "agent_error")], True),  # lost: neutral
        ([(F, "interrupted"), (F, "exit_status"), (F, "usage_limit"), (F, "x"), (F, "y")], True),
        ([(F, "exit_status"), (F, "x"), (AttemptStatus.CANCELLED, "lease_lost")], False),
    ],
)
def test_the_circuit_opens_after_n_consecutive_telling_failures(
    recent: list[tuple[AttemptStatus, str | None]], expected: bool
) -> None:
    assert is_open(recent, 3) is expected


def test_budgets() -> None:
    budget = Budget(usd=25, tokens=5_000_000)
    assert not exhausted(Spend(24.99, 4_999_999), budget)
    assert exhausted(Spend(25.0, 0), budget) and exhausted(Spend(0, 5_000_000), budget)
    assert not exhausted(Spend(10**6, 10**12), Budget())
    assert describe(Spend(25.1234, 4_100_000), budget) == "$25.1234 of $25.00, 4,100,000 of 5,000,000 tokens"


def test_a_worker_refuses_a_visibility_timeout_shorter_than_the_longest_time_limit() -> None:
    settings = Settings(config_dir=CONFIG, visibility_timeout=3600)
    with pytest.raises(ConfigInvalid, match=r"ORCH_VISIBILITY_TIMEOUT=3600 is too short.*above 86465"):
        check_visibility_timeout(settings, "redis://localhost:6379/0")
    check_visibility_timeout(settings, "amqp://guest@localhost//")  # RabbitMQ has no visibility timeout
    check_visibility_timeout(Settings(config_dir=CONFIG), "redis://localhost:6379/0")  # the default is long enough


def test_a_lease_must_outlive_two_heartbeats() -> None:
    with pytest.raises(ValueError, match=r"ORCH_LEASE_SECONDS .* must be at least twice ORCH_HEARTBEAT_SECONDS"):
        Settings(heartbeat_seconds=10, lease_seconds=15)


def test_every_legal_transition_changes_the_status() -> None:
    assert all(old is not new for old, new in LEGAL_TRANSITIONS)
    assert (TaskStatus.SUCCEEDED, TaskStatus.PENDING) not in LEGAL_TRANSITIONS  # a success is never undone
