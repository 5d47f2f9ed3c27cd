"""Applying the budget decision (orch.decisions.budget): read the spend, decide, and hold a plan whose budget is
spent as budget_exhausted (`operator.hold_plan`). The heartbeat stops a running attempt with what
`stop_if_spent` returns; dispatch leaves a plan `hold_if_spent` held."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from orch.budget import Budget, Spend
from orch.decisions.budget import BudgetStop, budget_stop, plan_budget_stop
from orch.records import Claim
from orch.states import PlanStatus
from orch.store import operator, spend


def stop_if_spent(session: Session, claim: Claim, now: datetime) -> BudgetStop | None:
    """A running attempt's heartbeat: the stop a spent task or plan budget calls for (None: go on), the plan held
    as budget_exhausted when the spent budget is the plan's."""
    caps = spend.attempt_caps(session, claim.task_pk, claim.plan_id)
    if caps is None:
        return None
    task_cap, plan_cap = caps
    # A budget not set is never spent: its spend is not read.
    task_spent = spend.task_spend(session, claim.task_pk) if task_cap else Spend()
    plan_spent = spend.plan_spend(session, claim.plan_id) if plan_cap else Spend()
    stop = budget_stop(task_spent, task_cap, plan_spent, plan_cap)
    if stop is not None and stop.holds_plan:
        operator.hold_plan(session, claim.plan_id, PlanStatus.BUDGET_EXHAUSTED, stop.message, now)
    return stop


def hold_if_spent(session: Session, plan_id: str, cap: Budget, now: datetime) -> bool:
    """Before dispatch: True if the plan's budget `cap` is spent, the plan now held as budget_exhausted (with the
    figures); False if it may dispatch."""
    if not cap:  # no budget: its spend is not read
        return False
    stop = plan_budget_stop(spend.plan_spend(session, plan_id), cap)
    if stop is None:
        return False
    operator.hold_plan(session, plan_id, PlanStatus.BUDGET_EXHAUSTED, stop.message, now)
    return True
