"""The `orch run` behind a plan: which process runs it, so that a later command can tell when that process died
and the plan was left unfinished."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orch.records import ProcessIdentity, RunnerPlan
from orch.states import PLAN_FINAL
from orch.store._sql import no_sync
from orch.store.models import PlanRow


def record_runner(session: Session, plan_id: str, runner: ProcessIdentity) -> None:
    """The plan is run by `runner` (an `orch run`): once that process is gone, `unfinished_runner_plans` names it."""
    session.execute(
        update(PlanRow)
        .where(PlanRow.id == plan_id)
        .values(runner_host=runner.host, runner_pid=runner.pid, runner_start_ticks=runner.start_ticks)
        .execution_options(**no_sync())
    )


def unfinished_runner_plans(session: Session, host: str) -> list[RunnerPlan]:
    """The plans not yet final that an `orch run` on `host` runs (or ran), oldest first."""
    rows = session.execute(
        select(PlanRow.id, PlanRow.runner_pid, PlanRow.runner_start_ticks)
        .where(PlanRow.runner_host == host, PlanRow.status.not_in(PLAN_FINAL))
        .order_by(PlanRow.created_at)
    )
    return [
        RunnerPlan(plan_id, ProcessIdentity(host, pid, ticks))
        for plan_id, pid, ticks in rows
        if pid is not None and ticks is not None
    ]


def dead_runner_reason(runner: ProcessIdentity) -> str:
    return f"its orch run ({runner.describe()}) died"
