"""Budget stops, decided: which spent budget stops a running attempt (its task's fails the task, its plan's holds
the plan), and when a budget_exhausted plan may resume. Spends and caps in, no store."""

from __future__ import annotations

import pytest

from orch.budget import Budget, Spend
from orch.decisions.budget import BudgetStop, budget_stop, plan_budget_stop, resume_refusal
from orch.failures import FailureClass
from orch.states import PlanStatus

NONE = Budget()
NOTHING = Spend()


def test_no_budget_is_ever_spent() -> None:
    assert budget_stop(Spend(10**6, 10**12), NONE, Spend(10**6, 10**12), NONE) is None
    assert plan_budget_stop(Spend(10**6, 10**12), NONE) is None


def test_within_both_budgets_the_attempt_goes_on() -> None:
    assert budget_stop(Spend(0.99, 10), Budget(usd=1), Spend(4.99, 10), Budget(usd=5, tokens=100)) is None


def test_a_spent_task_budget_fails_the_task_and_leaves_the_plan_running() -> None:
    stop = budget_stop(Spend(1.0, 0), Budget(usd=1), NOTHING, NONE)
    assert stop == BudgetStop(FailureClass.BUDGET_EXCEEDED, "task budget spent: $1.0000 of $1.00")
    assert not stop.holds_plan


def test_a_spent_plan_budget_holds_the_plan_and_requeues_the_attempt() -> None:
    stop = budget_stop(NOTHING, NONE, Spend(0.0, 110), Budget(tokens=100))
    assert stop == BudgetStop(FailureClass.INTERRUPTED, "plan budget spent: 110 of 100 tokens", holds_plan=True)
    assert plan_budget_stop(Spend(0.0, 110), Budget(tokens=100)) == stop


def test_the_tasks_budget_is_judged_before_the_plans() -> None:
    stop = budget_stop(Spend(2.0, 0), Budget(usd=1), Spend(9.0, 0), Budget(usd=5))
    assert stop is not None and stop.failure_class is FailureClass.BUDGET_EXCEEDED and not stop.holds_plan


def test_a_budget_is_spent_when_either_cap_is_reached() -> None:
    cap = Budget(usd=25, tokens=5_000_000)
    assert plan_budget_stop(Spend(24.99, 4_999_999), cap) is None
    assert plan_budget_stop(Spend(25.0, 0), cap) is not None
    assert plan_budget_stop(Spend(0.0, 5_000_000), cap) is not None


@pytest.mark.parametrize(
    ("status", "spent", "cap", "refused"),
    [
        (PlanStatus.BUDGET_EXHAUSTED, Spend(0.06, 0), Budget(usd=0.05), True),  # not raised
        (PlanStatus.BUDGET_EXHAUSTED, Spend(0.06, 0), Budget(usd=100), False),  # raised above the spend
        (PlanStatus.BUDGET_EXHAUSTED, Spend(0.06, 0), NONE, False),  # no budget left to hold it
        (PlanStatus.PAUSED, Spend(0.06, 0), Budget(usd=0.05), False),  # paused by the operator: resumes
        (PlanStatus.RUNNING, Spend(0.06, 0), Budget(usd=0.05), False),
    ],
)
def test_a_budget_exhausted_plan_resumes_only_once_its_budget_is_raised(
    status: PlanStatus, spent: Spend, cap: Budget, refused: bool
) -> None:
    assert (resume_refusal(status, spent, cap) is not None) is refused


def test_a_refusal_gives_the_figures_and_the_way_out() -> None:
    refusal = resume_refusal(PlanStatus.BUDGET_EXHAUSTED, Spend(0.0612, 0), Budget(usd=0.05))
    assert refusal == "has spent $0.0612 of $0.05: raise it with --budget-usd / --budget-tokens"
