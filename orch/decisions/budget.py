"""Budget stops: whether a spent budget stops a running attempt (a task's budget fails its task; a plan's holds the
plan as budget_exhausted and re-queues the attempt), and whether a budget_exhausted plan may resume.

Spends and caps in, a decision out; orch.dispatch.budget reads the spends and applies it."""

from __future__ import annotations

from dataclasses import dataclass

from orch.budget import Budget, Spend, describe, exhausted
from orch.failures import FailureClass
from orch.states import PlanStatus


@dataclass(frozen=True)
class BudgetStop:
    failure_class: FailureClass  # how the running attempt ends
    message: str  # why; a held plan's held_reason too
    holds_plan: bool = False  # the plan's budget is spent: hold it as budget_exhausted until the budget is raised


def budget_stop(task_spent: Spend, task_cap: Budget, plan_spent: Spend, plan_cap: Budget) -> BudgetStop | None:
    """A running attempt's stop, if a budget is spent: its task's (the task fails, whatever its retries) before
    its plan's (the plan is held, the attempt re-queued for when the budget is raised). A budget not set (an empty
    `Budget`) is never spent."""
    if exhausted(task_spent, task_cap):
        return BudgetStop(FailureClass.BUDGET_EXCEEDED, f"task budget spent: {describe(task_spent, task_cap)}")
    return plan_budget_stop(plan_spent, plan_cap)


def plan_budget_stop(plan_spent: Spend, plan_cap: Budget) -> BudgetStop | None:
    """The plan's budget alone (before dispatch): if spent, the plan is held as budget_exhausted."""
    if not exhausted(plan_spent, plan_cap):
        return None
    reason = f"plan budget spent: {describe(plan_spent, plan_cap)}"
    return BudgetStop(FailureClass.INTERRUPTED, reason, holds_plan=True)


def resume_refusal(status: PlanStatus, plan_spent: Spend, plan_cap: Budget) -> str | None:
    """Why a held plan may not resume (None: it may). A budget_exhausted plan stays held until its budget (`plan_cap`,
    as raised by the resume if it was) is above what it spent; a paused plan resumes whatever it spent."""
    if status is PlanStatus.BUDGET_EXHAUSTED and exhausted(plan_spent, plan_cap):
        return f"has spent {describe(plan_spent, plan_cap)}: raise it with --budget-usd / --budget-tokens"
    return None
