"""A re-plan attempt is the planner's work, not its task's type's, on SQLite and PostgreSQL: it takes one of the
planner's slots, a pause of the planner holds it (one of its task's type does not), its failures count towards the
planner's circuit breaker (and a decline towards none), and the queue notes and `orch cancel` name the planner's
queue for it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from orch.decisions.replan import REPLAN_DECLINED
from orch.decisions.retry import Outcome
from orch.dispatch.reconcile import reconcile_plans
from orch.failures import FailureClass, PauseCause
from orch.records import AttemptResult, Dispatch
from orch.settings import get_settings
from orch.states import AttemptStatus, TaskStatus
from orch.store import attempts, dispatching, pauses, plans, services
from orch.store.db import db_now, read_session, write_session
from tests.helpers import make_plan, registry
from workers import runner

TYPE = "general-purpose"  # the failing tasks' own type
PLANNER_QUEUE = "agent.planner"
FAILED = Outcome(TaskStatus.FAILED, AttemptStatus.FAILED, None, "exit status 1 (retries exhausted)")
BREAKER_FAILURES = registry().get("planner").breaker.failures


def now() -> datetime:
    with read_session() as session:
        return db_now(session)


def submit(count: int) -> str:
    tasks = [
        {"id": f"big-{n}", "title": f"task {n}", "command": "false", "retries": 0, "on_failure": "replan"}
        for n in range(count)
    ]
    with write_session() as session:
        return plans.submit_plan(session, make_plan(tasks, name="acct", defaults={"agent": TYPE}), now())


def tick(at: datetime | None = None) -> list[Dispatch]:
    with write_session() as session:
        return reconcile_plans(session, plans.active_plan_ids(session), registry(), at or db_now(session))


def fail_every_task(count: int) -> list[Dispatch]:
    """Each task's first attempt fails (recorded by the store alone: no breaker counts it when it is recorded), so
    each waits to be re-planned; the type's cap may take more than one tick, which may send re-plans: those."""
    replans: list[Dispatch] = []
    failed = 0
    while failed < count:
        dispatched = tick()
        assert dispatched, f"only {failed} of {count} tasks ran"
        for dispatch in dispatched:
            if dispatch.queue == PLANNER_QUEUE:
                replans.append(dispatch)
                continue
            with write_session() as session:
                claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w1", 1, 60.0)
                assert claimed is not None
                result = AttemptResult(False, exit_code=1, error="exit status 1")
                assert attempts.record_result(session, claimed[0], result, FAILED, db_now(session)) is not None
            failed += 1
    return replans


def pause(agent: str, until: datetime) -> None:
    with write_session() as session:
        pauses.pause_agent(session, agent, until, PauseCause.USAGE_LIMIT, "a test's pause", db_now(session))


def test_a_re_plan_takes_a_planners_slot_and_its_type_is_not_held_by_its_tasks_pause(store_url: str) -> None:
    submit(3)
    assert fail_every_task(3) == []
    pause(TYPE, now() + timedelta(hours=1))  # the tasks' own type is paused: their re-plans are not its work
    replans = tick()
    assert len(replans) == registry().get("planner").concurrency == 2  # the planner's cap, not the type's (4)
    assert {d.queue for d in replans} == {PLANNER_QUEUE}
    with read_session() as session:
        load = dispatching.agent_load(session, db_now(session))
        assert load.in_flight == {"planner": 2} and TYPE in load.paused
        assert dispatching.agent_load(session, db_now(session), [TYPE]).in_flight == {}
    assert tick() == []  # the third waits for a planner's slot


def test_a_pause_of_the_planner_holds_the_re_plan(store_url: str) -> None:
    submit(1)
    assert fail_every_task(1) == []
    start = now()
    pause("planner", start + timedelta(hours=1))
    assert tick(start) == []
    (replan,) = tick(start + timedelta(hours=2))
    assert replan.queue == PLANNER_QUEUE


def test_the_queue_notes_and_a_cancels_withdrawal_name_the_planners_queue(store_url: str) -> None:
    plan_id = submit(2)
    assert fail_every_task(2) == []
    with read_session() as session:
        assert services.open_tasks_by_queue(session, plan_id) == {PLANNER_QUEUE: 2}
        assert services.open_tasks_by_queue(session, plan_id, "planning") == {"planning": 2}
    replans = tick()
    with read_session() as session:
        assert set(services.queued_since(session, plan_id)) == {PLANNER_QUEUE}
        queued = services.queued_messages(session, plan_id, "big-0")
    (first,) = [d for d in replans if d.key == "big-0"]
    assert queued == [(PLANNER_QUEUE, "big-0", first.attempt)]


def finish_replans(sent: list[Dispatch], result: AttemptResult, count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`count` re-plan attempts end with `result`, each recorded by the worker's own `finish` (`sent`: those
    already dispatched)."""
    monkeypatch.setattr(runner, "publish", lambda app, dispatches, grace: sent.extend(dispatches))
    finished = 0
    while finished < count:
        waiting = [*sent, *tick()]
        sent.clear()
        assert waiting, f"only {finished} of {count} re-plan attempts could run"
        for dispatch in waiting[: count - finished]:
            assert dispatch.queue == PLANNER_QUEUE
            with write_session() as session:
                claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w1", 1, 60.0)
                assert claimed is not None and claimed[0].replanning
            runner.finish(claimed[0], result, get_settings())
            finished += 1


def outcomes(agent: str) -> list[Any]:
    with read_session() as session:
        return pauses.recent_outcomes(session, agent, 20)


def test_a_planner_that_cannot_be_reached_opens_the_planners_circuit_not_its_tasks_types(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit(BREAKER_FAILURES)
    sent = fail_every_task(BREAKER_FAILURES)
    down = AttemptResult(False, failure_class=FailureClass.SERVER_ERROR, error="asking the planner: HTTP 503")
    finish_replans(sent, down, BREAKER_FAILURES, monkeypatch)
    with read_session() as session:
        paused = pauses.active_pauses(session, db_now(session))
    assert set(paused) == {"planner"} and paused["planner"].cause is PauseCause.CIRCUIT_BREAKER
    assert outcomes("planner") == [(AttemptStatus.FAILED, FailureClass.SERVER_ERROR)] * BREAKER_FAILURES
    assert len(outcomes(TYPE)) == BREAKER_FAILURES  # the tasks' own attempts only
    assert all(failure != FailureClass.SERVER_ERROR for _status, failure in outcomes(TYPE))


def test_a_declined_re_plan_trips_no_breaker(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plan_id = submit(BREAKER_FAILURES)
    sent = fail_every_task(BREAKER_FAILURES)
    declined = AttemptResult(False, failure_class=REPLAN_DECLINED, error="the planner declined: no smaller task")
    finish_replans(sent, declined, BREAKER_FAILURES, monkeypatch)
    with read_session() as session:
        assert pauses.active_pauses(session, db_now(session)) == {}
        tasks = plans.plan_tasks(session, plan_id)
    assert {task.status for task in tasks} == {TaskStatus.FAILED}  # each declined: its task failed
    assert outcomes("planner") == [(AttemptStatus.SUCCEEDED, None)] * BREAKER_FAILURES  # answers, not outages
    assert len(outcomes(TYPE)) == BREAKER_FAILURES
