"""What plans, tasks and attempts spent, in dollars and tokens, as their attempts reported it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orch.budget import Budget, Spend
from orch.intake.prices import Usage
from orch.records import AttemptStats
from orch.store.models import AttemptRow, PlanRow, TaskRow


def plan_budget(plan: PlanRow) -> Budget:
    return Budget(plan.budget_usd, plan.budget_tokens)


def attempt_caps(session: Session, task_pk: int, plan_id: str) -> tuple[Budget, Budget] | None:
    """The budgets a running attempt spends against: its task's and its plan's (None: either is gone)."""
    task = session.get(TaskRow, task_pk)
    plan = session.get(PlanRow, plan_id)
    if task is None or plan is None:
        return None
    return Budget(task.budget_usd, task.budget_tokens), plan_budget(plan)


_TOKENS = (
    AttemptRow.input_tokens + AttemptRow.output_tokens + AttemptRow.cache_creation_tokens + AttemptRow.cache_read_tokens
)
# What attempts spent, dollars and tokens, as SQL sums; the exporter's per-plan budget figures use them too.
SPENT = (func.coalesce(func.sum(AttemptRow.cost_usd), 0.0), func.coalesce(func.sum(_TOKENS), 0))


def _spend(*where: Any) -> Any:
    return select(*SPENT).where(*where)


def plan_spend(session: Session, plan_id: str) -> Spend:
    """Dollars and tokens spent by a plan's attempts, finished or still running (as their heartbeats report)."""
    query = _spend(TaskRow.plan_id == plan_id).join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
    usd, tokens = session.execute(query).one()
    return Spend(float(usd or 0.0), int(tokens or 0))


def task_spend(session: Session, task_pk: int) -> Spend:
    usd, tokens = session.execute(_spend(AttemptRow.task_pk == task_pk)).one()
    return Spend(float(usd or 0.0), int(tokens or 0))


def attempt_stats(session: Session, plan_id: str) -> dict[int, AttemptStats]:
    """Per task of a plan: attempts started, tokens and cost summed over them."""
    rows = session.execute(
        select(
            AttemptRow.task_pk,
            func.count(),
            func.sum(AttemptRow.input_tokens),
            func.sum(AttemptRow.output_tokens),
            func.sum(AttemptRow.cache_creation_tokens),
            func.sum(AttemptRow.cache_read_tokens),
            func.sum(AttemptRow.cost_usd),
        )
        .join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
        .where(TaskRow.plan_id == plan_id)
        .group_by(AttemptRow.task_pk)
    )
    return {
        task_pk: AttemptStats(count, Usage(int(i or 0), int(o or 0), int(cw or 0), int(cr or 0)), cost)
        for task_pk, count, i, o, cw, cr, cost in rows
    }
