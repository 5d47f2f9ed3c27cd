"""`orch cancel`, `pause`, `resume`, `retry` and `skip`: each changes the store (compare-and-set) and prints what it
changed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from orch.budget import Budget, describe
from orch.cli.common import handle_errors, planner_queue
from orch.errors import TaskStateConflict
from orch.states import PlanStatus, TaskStatus

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_STOP_NOTE = "their agents are stopped at their next heartbeat (ORCH_HEARTBEAT_SECONDS)"


def _plan_id(session: Session, plan_ref: str) -> str:
    # lazy (start-up cost): the store loads SQLAlchemy
    from orch.store import plans

    return str(plans.find_plan(session, plan_ref).id)


_WITHDRAW_TIMEOUT = 2.0  # seconds per step of taking cancelled tasks' messages off the broker


def _withdraw(plan_id: str, queued: list[tuple[str, str, int]]) -> None:
    """Take the cancelled tasks' queued messages off the broker, so none stays behind on a queue; where that cannot
    be done, the worker that takes one drops it (its task is cancelled)."""
    if not queued:
        return
    # lazy (start-up cost): the broker's client
    from orch.dispatch.withdraw import QueuedMessage, withdraw
    from orch.records import message_id
    from orch.redaction import error_line
    from orch.settings import get_settings
    from orch.views.format import counted

    messages = [QueuedMessage(queue, message_id(plan_id, key, attempt)) for queue, key, attempt in queued]
    try:
        removed = withdraw(get_settings().resolved_broker_url, messages, _WITHDRAW_TIMEOUT)
    except Exception as exc:
        why = f"the broker did not answer ({error_line(exc)})"
    else:
        if removed is not None:  # none: a worker took it meanwhile, and finds its task cancelled
            if removed:
                click.echo(f"{counted(removed, 'queued message')} taken off the broker")
            return
        why = "this broker cannot remove one message"
    click.echo(f"{why}: a worker that takes a cancelled task's message drops it without running it", err=True)


@click.command()
@click.argument("plan_ref")
@click.argument("task_id", required=False)
@handle_errors
def cancel(plan_ref: str, task_id: str | None) -> None:
    """Cancel a plan (every unfinished task), or one TASK_ID of it (its dependants become upstream_failed).

    Nothing more is dispatched; running agents are killed, process group and all, on whichever host runs them."""
    # lazy (start-up cost): the store loads SQLAlchemy
    from orch.services.local_run import cancel_dead_runs
    from orch.store import operator, services
    from orch.store.db import db_now, write_session
    from orch.views.format import counted

    cancel_dead_runs()
    with write_session() as session:
        plan_id = _plan_id(session, plan_ref)
        now = db_now(session)
        queued = services.queued_messages(session, plan_id, task_id, planner_queue())  # messages on the broker
        if task_id is not None:
            task = operator.cancel_task(session, plan_id, task_id, now, "cancelled by orch cancel")
        else:
            counts = operator.cancel_plan(session, plan_id, now, "cancelled by orch cancel")
    _withdraw(plan_id, queued)
    if task_id is not None:
        click.echo(f"plan {plan_id}: task {task_id} {task.status} -> cancelled")
        if task.status is TaskStatus.RUNNING:
            click.echo(f"its running agent ({task.attempt}. attempt): {_STOP_NOTE}")
        return
    if not counts:
        click.echo(f"plan {plan_id}: no unfinished task; plan cancelled")
        return
    changed = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    click.echo(f"plan {plan_id} cancelled: {counted(sum(counts.values()), 'task')} -> cancelled ({changed})")
    if counts.get(TaskStatus.RUNNING):
        click.echo(f"{counts[TaskStatus.RUNNING]} were running: {_STOP_NOTE}")


@click.command()
@click.argument("plan_ref")
@handle_errors
def pause(plan_ref: str) -> None:
    """Stop dispatching PLAN's tasks; running ones finish. `orch resume` undoes it."""
    # lazy (start-up cost): the store loads SQLAlchemy
    from orch.store import operator, plans, reads
    from orch.store.db import db_now, write_session
    from orch.views.format import counted

    with write_session() as session:
        plan = plans.find_plan(session, plan_ref)
        if not operator.hold_plan(session, plan.id, PlanStatus.PAUSED, "paused by orch pause", db_now(session)):
            raise TaskStateConflict(f"plan {plan.id} is {plan.status}; only a running plan can be paused")
        running = reads.count_by_status(session, plan.id)
    click.echo(f"plan {plan.id}: running -> paused; nothing new is dispatched")
    if running.get(TaskStatus.RUNNING):
        still = running[TaskStatus.RUNNING]
        ending = "finishes on its own" if still == 1 else "finish on their own"
        click.echo(f"{counted(still, 'running task')} {ending}")


@click.command()
@click.argument("plan_ref")
@click.option("--budget-usd", type=click.FloatRange(min=0, min_open=True), help="A new budget in dollars.")
@click.option("--budget-tokens", type=click.IntRange(min=1), help="A new budget in tokens.")
@handle_errors
def resume(plan_ref: str, budget_usd: float | None, budget_tokens: int | None) -> None:
    """Dispatch a paused (or budget_exhausted) PLAN again, with a higher budget if given."""
    # lazy (start-up cost): the store loads SQLAlchemy
    from orch.store import operator, plans, spend
    from orch.store.db import db_now, write_session

    budget = Budget(budget_usd, budget_tokens) if budget_usd or budget_tokens else None
    with write_session() as session:
        plan = plans.find_plan(session, plan_ref)
        old = operator.resume_plan(session, plan.id, db_now(session), budget)
        spent = describe(spend.plan_spend(session, plan.id), spend.plan_budget(plan))
    click.echo(f"plan {plan.id}: {old} -> running" + (f"; budget now {spent}" if spent else ""))


@click.command()
@click.argument("plan_ref")
@click.argument("task_id")
@handle_errors
def retry(plan_ref: str, task_id: str) -> None:
    """Run a failed, upstream_failed or cancelled TASK_ID again, with its unfinished descendants (fresh retries)."""
    # lazy (start-up cost): the store loads SQLAlchemy
    from orch.store import operator
    from orch.store.db import db_now, write_session
    from orch.views.format import counted

    with write_session() as session:
        plan_id = _plan_id(session, plan_ref)
        reopened = operator.retry_task(session, plan_id, task_id, db_now(session))
    click.echo(f"plan {plan_id}: {counted(len(reopened), 'task')} -> pending: {', '.join(reopened)}")


@click.command()
@click.argument("plan_ref")
@click.argument("task_id")
@handle_errors
def skip(plan_ref: str, task_id: str) -> None:
    """Mark TASK_ID done without running it (a running agent is stopped), so its dependants may run."""
    # lazy (start-up cost): the store loads SQLAlchemy
    from orch.store import operator
    from orch.store.db import db_now, write_session
    from orch.views.format import counted

    with write_session() as session:
        plan_id = _plan_id(session, plan_ref)
        changed = operator.skip_task(session, plan_id, task_id, db_now(session))
    click.echo(f"plan {plan_id}: task {task_id} -> succeeded (skipped)")
    if changed[1:]:
        click.echo(f"{counted(len(changed) - 1, 'dependant')} it had doomed -> pending: {', '.join(changed[1:])}")
