"""The budget checks that stop work: a spent task budget fails its attempt, a spent plan budget holds the plan
as budget_exhausted (through `operator.hold_plan`) until the operator raises it. They read the spend and write
the hold, so they sit above both `spend` and `operator`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from orch.budget import Budget, describe, exhausted
from orch.failures import FailureClass
from orch.records import BudgetStop, Claim
from orch.states import PlanStatus
from orch.store.db import db_now
from orch.store.models import PlanRow, TaskRow
from orch.store.operator import hold_plan
from orch.store.spend import plan_budget, plan_spend, task_spend


def over_budget(session: Session, claim: Claim) -> BudgetStop | None:
    """Whether a running attempt must stop: its task's budget is spent (the task fails), or its plan's (the
    plan is held as budget_exhausted and the attempt re-queued for when the budget is raised)."""
    task = session.get(TaskRow, claim.task_pk)
    plan = session.get(PlanRow, claim.plan_id)
    if task is None or plan is None:
        return None
    task_cap = Budget(task.budget_usd, task.budget_tokens)
    if task_cap and exhausted(spent := task_spend(session, task.pk), task_cap):
        return BudgetStop(FailureClass.BUDGET_EXCEEDED, f"task budget spent: {describe(spent, task_cap)}")
    plan_cap = plan_budget(plan)
    if plan_cap and exhausted(spent := plan_spend(session, plan.id), plan_cap):
        reason = f"plan budget spent: {describe(spent, plan_cap)}"
        hold_plan(session, plan.id, PlanStatus.BUDGET_EXHAUSTED, reason, db_now(session))
        return BudgetStop(FailureClass.INTERRUPTED, reason)
    return None


def check_plan_budget(session: Session, plan_id: str, cap: Budget, now: datetime) -> bool:
    """Before dispatch: True if the plan may dispatch; else it is held as budget_exhausted (with the figures)."""
    if not cap:
        return True
    spent = plan_spend(session, plan_id)
    if not exhausted(spent, cap):
        return True
    hold_plan(session, plan_id, PlanStatus.BUDGET_EXHAUSTED, f"plan budget spent: {describe(spent, cap)}", now)
    return False
