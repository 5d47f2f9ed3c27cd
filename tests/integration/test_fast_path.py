"""A worker's fast path (`dispatch_after_result`) on SQLite and PostgreSQL: what one recorded result makes ready
is claimed in the same transaction, the last result finishes the plan, held plans and paused agent types get
nothing, and the work it does does not grow with the plan."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import event

from orch.decisions.retry import Outcome
from orch.dispatch.reconcile import dispatch_after_result, reconcile_plans
from orch.failures import FailureClass, PauseCause
from orch.intake.agents import AgentRegistry
from orch.records import AttemptResult, Dispatch
from orch.states import AttemptStatus, PlanStatus, TaskStatus
from orch.store import attempts, dispatching, operator, pauses, plans
from orch.store.db import get_engine, read_session, write_session
from tests.helpers import DIAMOND, SUCCESS, layered_dag, make_plan, registry

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LEASE = 60.0


def submit(tasks: list[dict[str, object]], name: str = "p") -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(tasks, name=name), NOW)


def tick(agents: AgentRegistry | None = None) -> list[Dispatch]:
    with write_session() as session:
        return reconcile_plans(session, plans.active_plan_ids(session), agents or registry(), NOW)


def succeed(dispatch: Dispatch, agents: AgentRegistry | None = None) -> tuple[int, list[Dispatch]]:
    """Claim, then record a success and take the fast path in one transaction, as a worker does."""
    with write_session() as session:
        claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w1", 1, LEASE, now=NOW)
    assert claimed is not None
    claim, _ = claimed
    with write_session() as session:
        recorded = attempts.record_result(session, claim, AttemptResult(True, exit_code=0), SUCCESS, NOW)
        assert recorded is not None
        return recorded.newly_ready, dispatch_after_result(
            session, dispatch.plan_id, recorded, agents or registry(), NOW
        )


def plan_status(plan_id: str) -> PlanStatus:
    with read_session() as session:
        gate = dispatching.plan_gate(session, plan_id)
    assert gate is not None
    return gate.status


def with_cap(agent: str, cap: int) -> AgentRegistry:
    agents = registry()
    types = tuple(replace(t, concurrency=cap) if t.name == agent else t for t in agents.types)
    return replace(agents, types=types)


def test_a_success_claims_its_newly_ready_dependants_and_the_last_one_finishes_the_plan(store_url: str) -> None:
    plan_id = submit(DIAMOND)
    (a,) = tick()
    newly_ready, dispatched = succeed(a)
    assert newly_ready == 2
    assert [d.key for d in dispatched] == ["c", "b"]  # best first: c has the higher priority
    assert {d.attempt for d in dispatched} == {1}
    b, c = sorted(dispatched, key=lambda d: d.key)

    assert succeed(b) == (0, [])  # d still waits for c
    assert plan_status(plan_id) is PlanStatus.RUNNING
    newly_ready, (d,) = succeed(c)
    assert (newly_ready, d.key) == (1, "d")
    assert succeed(d) == (0, [])
    assert plan_status(plan_id) is PlanStatus.SUCCEEDED  # in the last result's own transaction, not at a tick
    assert tick() == []


def test_the_slot_a_result_frees_goes_to_a_task_waiting_for_capacity(store_url: str) -> None:
    tasks: list[dict[str, object]] = [
        {"id": f"t{i}", "title": f"chore {i}", "command": "true", "agent": "general-purpose"} for i in range(3)
    ]
    agents = with_cap("general-purpose", 1)
    submit(tasks)
    (first,) = tick(agents)
    assert first.key == "t0"
    newly_ready, (second,) = succeed(first, agents)
    assert (newly_ready, second.key) == (0, "t1")  # no dependant of t0, but its slot went to t1


def test_a_held_plan_or_a_paused_agent_type_gets_nothing(store_url: str) -> None:
    plan_id = submit(DIAMOND)
    (a,) = tick()
    with write_session() as session:
        claimed = attempts.claim(session, a.task_pk, a.attempt, "w1", 1, LEASE, now=NOW)
        assert claimed is not None
        claim, _ = claimed
        assert operator.hold_plan(session, plan_id, PlanStatus.PAUSED, "operator paused", NOW)
    with write_session() as session:
        recorded = attempts.record_result(session, claim, AttemptResult(True, exit_code=0), SUCCESS, NOW)
        assert recorded is not None and recorded.newly_ready == 2
        assert dispatch_after_result(session, plan_id, recorded, registry(), NOW) == []

    other = submit(DIAMOND, name="other")
    (root,) = [d for d in tick() if d.plan_id == other]
    with write_session() as session:
        for name in registry().by_name:
            pauses.pause_agent(session, name, NOW + timedelta(hours=1), PauseCause.USAGE_LIMIT, "usage limit", NOW)
    assert succeed(root) == (2, [])
    with read_session() as session:
        assert {t.key: t.status for t in plans.plan_tasks(session, other)}["b"] is TaskStatus.PENDING


def test_the_fast_path_runs_the_same_statements_on_a_small_and_a_large_plan(store_url: str) -> None:
    """Its work grows with the finished task's dependants, not with the plan: the same statements (counted, not
    timed) for the first task of a 2-layer and of a 60-layer plan."""

    agents = registry()
    roomy = replace(agents, types=tuple(replace(t, concurrency=1000) for t in agents.types))

    def statements_of_first_completion(depth: int) -> list[str]:
        plan_id = submit(layered_dag(width=5, depth=depth, command="true"), name=f"layers{depth}")
        dispatches = [d for d in tick(roomy) if d.key == "t0-0" and d.plan_id == plan_id]
        (first,) = dispatches
        with write_session() as session:
            claimed = attempts.claim(session, first.task_pk, first.attempt, "w1", 1, LEASE, now=NOW)
        assert claimed is not None
        claim, _ = claimed
        seen: list[str] = []

        def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            seen.append(statement.split(" WHERE ")[0])

        engine = get_engine()
        event.listen(engine, "before_cursor_execute", count)
        try:
            with write_session() as session:
                recorded = attempts.record_result(session, claim, AttemptResult(True, exit_code=0), SUCCESS, NOW)
                assert recorded is not None
                dispatch_after_result(session, first.plan_id, recorded, roomy, NOW)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        with write_session() as session:  # leave nothing running for the next plan's tick
            operator.cancel_plan(session, first.plan_id, NOW, "measured")
        return seen

    small = statements_of_first_completion(2)
    large = statements_of_first_completion(60)
    assert small == large
    assert len(small) < 20, small


def interrupt(dispatch: Dispatch, not_before: datetime) -> list[Dispatch]:
    """Claim, then record an interrupted attempt (retried after `not_before`) and take the fast path, as a worker
    does at a warm shutdown."""
    with write_session() as session:
        claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w1", 1, LEASE, now=NOW)
    assert claimed is not None
    claim, _ = claimed
    outcome = Outcome(TaskStatus.RETRY_WAIT, AttemptStatus.INTERRUPTED, not_before=not_before)
    result = AttemptResult(False, failure_class=FailureClass.INTERRUPTED, error="interrupted")
    with write_session() as session:
        recorded = attempts.record_result(session, claim, result, outcome, NOW)
        assert recorded is not None
        return dispatch_after_result(session, dispatch.plan_id, recorded, registry(), NOW, retrying=dispatch.task_pk)


def test_a_retry_due_at_once_is_queued_in_the_transaction_that_recorded_its_attempt(store_url: str) -> None:
    """An interrupted attempt (a worker's warm shutdown) has no backoff: its next attempt goes out with the
    result, not at the next tick; a retry whose backoff has not passed is left to the beat."""
    submit([{"id": "x", "title": "x", "command": "true"}, {"id": "y", "title": "y", "command": "true"}])
    x, y = sorted(tick(), key=lambda d: d.key)
    (again,) = interrupt(x, not_before=NOW)
    assert (again.key, again.attempt) == ("x", 2)
    assert interrupt(y, not_before=NOW + timedelta(seconds=30)) == []
    with read_session() as session:
        statuses = {t.key: t.status for t in plans.plan_tasks(session, plans.active_plan_ids(session)[0])}
    assert statuses == {"x": TaskStatus.QUEUED, "y": TaskStatus.RETRY_WAIT}
