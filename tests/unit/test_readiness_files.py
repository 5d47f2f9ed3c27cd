"""File leases in a dispatch decision: every overlap check of one decision shares a budget of steps (the decision
runs under the dispatch lock), and the candidates left once it is spent wait for the next round."""

from __future__ import annotations

from datetime import UTC, datetime

from orch.decisions.file_leases import MAX_CHECK_STEPS, MAX_DECISION_STEPS, StepBudget, files_conflict
from orch.decisions.readiness import TaskView, reconcile
from orch.states import TaskStatus

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def task(pk: int, files: tuple[str, ...], status: TaskStatus = TaskStatus.PENDING) -> TaskView:
    return TaskView(pk=pk, status=status, agent="dev", priority=0, seq=pk, files=files)


def globs(prefix: str, count: int = 30) -> tuple[str, ...]:
    """Patterns with wildcards (compared pair by pair), all in one folder of their own."""
    return tuple(f"{prefix}/{i}/*.py" for i in range(count))


def test_the_checks_of_one_decision_share_a_budget_and_the_rest_wait() -> None:
    held = task(1, globs("held"), TaskStatus.RUNNING)
    candidates = [task(pk, globs(f"c{pk}")) for pk in range(2, 40)]
    # in truth nothing overlaps, and each check alone is within its own budget, but together they are not
    costs = [steps_of_check(candidate.files, held.files) for candidate in candidates]
    assert max(costs) < MAX_CHECK_STEPS < MAX_DECISION_STEPS < sum(costs)

    decision = reconcile([held, *candidates], {"dev": 100}, NOW)

    assert 0 < len(decision.ready) < len(candidates)
    assert decision.ready == tuple(range(2, 2 + len(decision.ready)))  # the first in dispatch order got checked
    assert decision.waiting_for_files == len(candidates) - len(decision.ready)
    assert reconcile([held, *candidates], {"dev": 100}, NOW) == decision  # the same data, the same decision


def steps_of_check(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    budget = StepBudget()
    assert not files_conflict(a, b, budget)
    return MAX_CHECK_STEPS - budget.left
