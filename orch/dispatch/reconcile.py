"""Dispatch: apply readiness to the store (claiming tasks by compare-and-set) and send their messages.

Messages carry the task's id and attempt only; everything else is read from the store by the worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from orch.decisions.followups import PLANNER
from orch.decisions.readiness import Reconciliation, TaskView, free_slots, reconcile
from orch.dispatch import budget
from orch.durations import TIME_LIMIT_MARGIN
from orch.intake.agents import AgentRegistry
from orch.log import attempt_context, get_logger
from orch.records import RUN_TASK, Dispatch, Recorded, ReplanRoute
from orch.states import PLAN_HELD, PlanStatus
from orch.store import dispatching
from orch.store.db import take_dispatch_lock

if TYPE_CHECKING:
    from celery import Celery

log = get_logger(__name__)


def replan_route(registry: AgentRegistry) -> ReplanRoute:
    """Where re-plan attempts go: the planner agent type's queue, with its time limit."""
    planner = registry.by_name.get(PLANNER)
    return ReplanRoute() if planner is None else ReplanRoute(planner.queue, planner.timeout)


# A re-plan is dispatched even with no planner type configured: its attempt then fails, saying so.
_UNCONFIGURED_PLANNER_CAP = 1


def concurrency_caps(registry: AgentRegistry, agents: Iterable[str] | None = None) -> dict[str, int]:
    """Each agent type's concurrency cap (of `agents`, or of every type). A task waiting to be re-planned counts as
    the planner's (orch.store.dispatching.EFFECTIVE_AGENT), so the planner always has a cap."""
    caps = {agent.name: agent.concurrency for agent in registry}
    caps.setdefault(PLANNER, _UNCONFIGURED_PLANNER_CAP)
    return caps if agents is None else {name: caps[name] for name in agents if name in caps}


# How many ready tasks one plan's reconcile reads beyond its free slots: room for tasks skipped because their
# files are held, without reading every ready task of a wide plan.
_READY_SLACK = 64


def reconcile_plans(
    session: Session, plan_ids: Iterable[str], registry: AgentRegistry, now: datetime
) -> list[Dispatch]:
    """Doom, claim and finish across `plan_ids` (oldest first), sharing the agent types' free slots.

    Runs inside the caller's write transaction; the caller commits, then calls `publish`."""
    take_dispatch_lock(session)
    caps = concurrency_caps(registry)
    load = dispatching.agent_load(session, now)
    slots = free_slots(caps, load.in_flight, load.paused)
    dispatches: list[Dispatch] = []
    for plan_id in plan_ids:
        plan = dispatching.plan_gate(session, plan_id)
        if plan is not None and plan.status in PLAN_HELD:
            _settle_held(session, plan_id, now)
        if plan is None or plan.status is not PlanStatus.RUNNING:
            continue
        if budget.hold_if_spent(session, plan_id, plan.budget, now):
            continue
        decision, agent_of = _decide(session, plan_id, plan.workdir, slots, now)
        claimed = dispatching.apply_reconciliation(session, plan_id, decision, now, replan_route(registry))
        for dispatch in claimed:
            slots[agent_of[dispatch.task_pk]] -= 1
        dispatches.extend(claimed)
    return dispatches


def _settle_held(session: Session, plan_id: str, now: datetime) -> None:
    """A paused or budget_exhausted plan dispatches nothing, but what can never run is doomed, and once every task
    is final the plan takes its final status, as a running plan would (nothing is left to resume)."""
    if dispatching.has_doomed_pending(session, plan_id):
        decision = reconcile(dispatching.task_views(session, plan_id), {}, now)  # no slots: none is ready
    else:
        decision = Reconciliation(plan_outcome=dispatching.plan_outcome(session, plan_id))
    dispatching.apply_reconciliation(session, plan_id, decision, now)


def _decide(
    session: Session, plan_id: str, workdir: str, slots: dict[str, int], now: datetime
) -> tuple[Reconciliation, dict[int, str]]:
    """Readiness for one plan. The database finds the ready tasks (their cost grows with what is ready, not with
    the plan's size); only when a failure must be carried to pending descendants is the whole plan loaded."""
    if dispatching.has_doomed_pending(session, plan_id):
        views = dispatching.task_views(session, plan_id)
        held = dispatching.held_files(session, workdir, plan_id) if any(v.files for v in views) else []
        decision = reconcile(views, slots, now, held_files=held)
        return decision, {view.pk: view.agent for view in views}
    open_agents = [agent for agent, free in slots.items() if free > 0]
    candidates = dispatching.ready_views(session, plan_id, open_agents, now, sum(slots.values()) + _READY_SLACK)
    return _decide_among(session, plan_id, workdir, candidates, slots, now)


def _decide_among(
    session: Session, plan_id: str, workdir: str, candidates: list[TaskView], slots: dict[str, int], now: datetime
) -> tuple[Reconciliation, dict[int, str]]:
    held = []
    if any(view.files for view in candidates):  # file leases held by in-flight tasks of this plan and others
        held = dispatching.held_files(session, workdir, plan_id) + dispatching.in_flight_files(session, plan_id)
    decision = reconcile(candidates, slots, now, held_files=held)
    # `candidates` is not the whole plan: whether the plan is over is asked of the store.
    outcome = None if decision.ready else dispatching.plan_outcome(session, plan_id)
    return replace(decision, plan_outcome=outcome), {view.pk: view.agent for view in candidates}


def dispatch_after_result(
    session: Session,
    plan_id: str,
    recorded: Recorded,
    registry: AgentRegistry,
    now: datetime,
    retrying: int | None = None,
) -> list[Dispatch]:
    """A worker's fast path, in the transaction that recorded a result: claim what that result made ready (its
    dependants, a task waiting for the slot it freed, and the task itself, `retrying`, when its retry is due at
    once), or finish the plan if it was the last task.

    Its cost grows with the dependants, not with the plan: it reads at most `recorded.newly_ready` plus a slack
    of ready tasks, counts in-flight tasks only of their agent types and only when there is something to
    dispatch, and leaves failures' descendants, backoffs that passed and other plans to the beat's full pass."""
    take_dispatch_lock(session)  # its own statement: the gate's read must see what the holder committed
    plan = dispatching.plan_gate(session, plan_id)
    if plan is not None and plan.status in PLAN_HELD:  # held: nothing to dispatch, but it may be over
        _settle_held(session, plan_id, now)
        return []
    if plan is None or plan.status is not PlanStatus.RUNNING:
        return []
    if budget.hold_if_spent(session, plan_id, plan.budget, now):
        return []
    candidates = dispatching.pending_ready_views(session, plan_id, recorded.newly_ready + _READY_SLACK)
    if retrying is not None:
        candidates = [*dispatching.due_retry_views(session, retrying, now), *candidates]
    slots: dict[str, int] = {}
    if candidates:
        agents = {view.agent for view in candidates}
        caps = concurrency_caps(registry, agents)
        load = dispatching.agent_load(session, now, agents)
        slots = free_slots(caps, load.in_flight, load.paused)
    decision, _agent_of = _decide_among(session, plan_id, plan.workdir, candidates, slots, now)
    return dispatching.apply_reconciliation(session, plan_id, decision, now, replan_route(registry))


def publish(app: Celery, dispatches: Sequence[Dispatch], kill_grace_seconds: float) -> None:
    """Send one message per dispatch through `app` (orch.celery's, in the worker or the beat that publishes), with
    a hard time limit of the task's timeout, the caller's ORCH_KILL_GRACE_SECONDS and a margin. A message lost here
    is re-sent by the beat (ORCH_REDELIVER_SECONDS)."""
    if not dispatches:
        return
    with app.producer_or_acquire() as producer:
        for d in dispatches:
            # What Celery or kombu log while sending (a retry, a lost connection) names the task it was sending.
            with attempt_context(d.plan_id, d.key, d.attempt):
                app.send_task(
                    RUN_TASK,
                    args=(d.task_pk, d.attempt),
                    queue=d.queue,
                    task_id=d.message_id,
                    time_limit=d.timeout + kill_grace_seconds + TIME_LIMIT_MARGIN,
                    producer=producer,
                )
                log.debug("dispatched", queue=d.queue)
    log.debug("published", count=len(dispatches))
