"""Plans that grow, in the store, on SQLite and PostgreSQL: a succeeded attempt's follow-ups are added in the
transaction that records its result (a revision row and events naming who added what; refused ones recorded, the task
still succeeds); a stale attempt's follow-ups are dropped with its result; a task whose retries are spent waits for a
re-plan on the planner's queue, and a replacement takes its place, its dependant rewired to the replacement's sink,
and the plan then succeeds."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from orch.decisions.retry import Outcome
from orch.dispatch.reconcile import reconcile_plans
from orch.records import AttemptResult, Claim, Dispatch
from orch.states import AttemptStatus, PlanStatus, TaskStatus
from orch.store import attempts, plans
from orch.store.db import read_session, write_session
from orch.store.growth import GrowthRules
from orch.store.models import EventRow, TaskRow
from orch.store.revisions import plan_revisions
from tests.helpers import SUCCESS, make_plan, registry

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
RULES = GrowthRules(registry())
FAILED = Outcome(TaskStatus.FAILED, AttemptStatus.FAILED, None, "exit status 1 (retries exhausted)")


def submit(tasks: list[dict[str, Any]]) -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(tasks, name="grow"), NOW)


def tick(at: datetime = NOW) -> list[Dispatch]:
    with write_session() as session:
        return reconcile_plans(session, plans.active_plan_ids(session), registry(), at)


def claim(dispatch: Dispatch) -> Claim:
    with write_session() as session:
        claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w1", 1, 60.0, now=NOW)
    assert claimed is not None
    return claimed[0]


def record(claimed: Claim, result: AttemptResult, outcome: Outcome = SUCCESS) -> Any:
    with write_session() as session:
        return attempts.record_result(session, claimed, result, outcome, NOW, RULES)


def rows(plan_id: str) -> dict[str, TaskRow]:
    with read_session() as session:
        return {t.key: t for t in plans.plan_tasks(session, plan_id)}


def run_all(plan_id: str) -> None:
    """Claim and succeed whatever is dispatched until nothing is."""
    while dispatches := tick():
        for dispatch in dispatches:
            assert record(claim(dispatch), AttemptResult(True, exit_code=0))


def shell(key: str, *after: str) -> dict[str, Any]:
    return {"id": key, "title": f"task {key}", "command": "true", **({"after": list(after)} if after else {})}


def test_followups_are_added_with_the_result_and_run(store_url: str) -> None:
    plan_id = submit([shell("build"), shell("ship", "build")])
    (build,) = tick()
    written = {
        "tasks": [
            {"id": "docs", "title": "write the notes", "command": "echo notes", "after": ["build"]},
            {"id": "check", "title": "check the notes", "command": "true", "after": ["docs"]},
            {"id": "steal", "title": "grab", "command": "true", "agent": "planner"},
            {"id": "ship", "title": "taken", "command": "true"},
        ]
    }
    recorded = record(claim(build), AttemptResult(True, exit_code=0, followups=json.dumps(written)))
    assert recorded is not None and recorded.newly_ready >= 1
    tasks = rows(plan_id)
    assert tasks["build"].status is TaskStatus.SUCCEEDED
    assert tasks["docs"].status is TaskStatus.PENDING and tasks["docs"].unmet_deps == 0
    assert tasks["check"].unmet_deps == 1
    assert {tasks[k].added_by for k in ("docs", "check")} == {tasks["build"].pk}
    assert {tasks[k].added_how for k in ("docs", "check")} == {"followup"}
    assert tasks["docs"].depth == 1
    assert "steal" not in tasks
    with read_session() as session:
        (revision,) = plan_revisions(session, plan_id)
        events = list(session.scalars(select(EventRow).where(EventRow.plan_id == plan_id)))
    assert revision.changes["added"] == ["docs", "check"]
    assert revision.changes["by"] == "build" and revision.changes["attempt"] == 1
    assert revision.changes["refused"] == [
        "follow-up 'steal': no task runs as the planner agent type",
        "follow-up 'ship': the id is taken (ids are unique in a plan)",
    ]
    assert any(e.kind == "revision" and "follow-ups of task build (attempt 1)" in (e.detail or "") for e in events)
    added = [e for e in events if e.detail == "added by task build (attempt 1) as a follow-up"]
    assert len(added) == 2
    run_all(plan_id)
    assert {t.status for t in rows(plan_id).values()} == {TaskStatus.SUCCEEDED}
    with read_session() as session:
        finished = plans.get_plan(session, plan_id)
        assert finished is not None and finished.status is PlanStatus.SUCCEEDED


def test_a_stale_attempts_followups_are_dropped_with_its_result(store_url: str) -> None:
    plan_id = submit([shell("build")])
    (build,) = tick()
    claimed = claim(build)
    stale = replace(claimed, lease="not-the-lease")
    followups = json.dumps([{"id": "late", "title": "too late", "command": "true"}])
    assert record(stale, AttemptResult(True, exit_code=0, followups=followups)) is None
    assert set(rows(plan_id)) == {"build"}
    with read_session() as session:
        assert plan_revisions(session, plan_id) == []
    assert record(claimed, AttemptResult(True, exit_code=0)) is not None


def test_followups_of_a_failed_attempt_are_not_added(store_url: str) -> None:
    plan_id = submit([{**shell("build"), "retries": 0}])
    (build,) = tick()
    followups = json.dumps([{"id": "x", "title": "x", "command": "true"}])
    record(claim(build), AttemptResult(False, exit_code=1, error="exit status 1", followups=followups), FAILED)
    assert set(rows(plan_id)) == {"build"}
    assert rows(plan_id)["build"].status is TaskStatus.FAILED


def test_a_replacement_takes_the_failed_tasks_place(store_url: str) -> None:
    plan_id = submit(
        [
            shell("setup"),
            {**shell("split-me", "setup"), "retries": 0, "on_failure": "replan"},
            shell("after", "split-me"),
        ]
    )
    (setup,) = tick()
    assert record(claim(setup), AttemptResult(True, exit_code=0))
    (failing,) = tick()
    recorded = record(claim(failing), AttemptResult(False, exit_code=1, error="exit status 1"), FAILED)
    assert recorded is not None and recorded.status is TaskStatus.RETRY_WAIT
    tasks = rows(plan_id)
    assert tasks["split-me"].replanning and tasks["split-me"].replans == 1
    (replan,) = tick()
    assert replan.queue == "agent.planner"
    claimed = claim(replan)
    assert claimed.replanning
    answer = {
        "decision": "replace",
        "reason": "two halves",
        "tasks": [
            {"id": "half-1", "title": "first half", "command": "true"},
            {"id": "half-2", "title": "second half", "command": "true", "after": ["half-1"]},
        ],
    }
    recorded = record(claimed, AttemptResult(True, exit_code=0, replacement=answer))
    assert recorded is not None and recorded.status is TaskStatus.REPLACED
    tasks = rows(plan_id)
    assert tasks["split-me"].status is TaskStatus.REPLACED and not tasks["split-me"].replanning
    assert tasks["half-1"].added_how == "replan" and tasks["half-1"].added_by == tasks["split-me"].pk
    assert tasks["half-1"].unmet_deps == 0  # it took split-me's dependency on setup, which succeeded
    with read_session() as session:
        edges = set(plans.plan_dependencies(session, plan_id))
    pk = {key: task.pk for key, task in tasks.items()}
    assert (pk["after"], pk["half-2"]) in edges and (pk["after"], pk["split-me"]) not in edges
    assert (pk["half-1"], pk["setup"]) in edges
    run_all(plan_id)
    assert rows(plan_id)["after"].status is TaskStatus.SUCCEEDED
    with read_session() as session:
        done = plans.get_plan(session, plan_id)
        assert done is not None and done.status is PlanStatus.SUCCEEDED
        (revision,) = plan_revisions(session, plan_id)
    assert revision.changes["how"] == "replan" and revision.changes["rewired"] == ["after"]


def test_a_refused_replacement_fails_the_task_and_dooms_its_dependants(store_url: str) -> None:
    plan_id = submit([{**shell("split-me"), "retries": 0, "on_failure": "replan"}, shell("after", "split-me")])
    (failing,) = tick()
    record(claim(failing), AttemptResult(False, exit_code=1, error="exit status 1"), FAILED)
    (replan,) = tick()
    answer = {
        "decision": "replace",
        "reason": "loop",
        "tasks": [{"id": "x", "title": "x", "command": "true", "after": ["after"]}],
    }
    recorded = record(claim(replan), AttemptResult(True, exit_code=0, replacement=answer))
    assert recorded is not None and recorded.status is TaskStatus.FAILED
    tasks = rows(plan_id)
    assert "x" not in tasks
    assert "a cycle" in (tasks["split-me"].error or "")
    tick()
    assert rows(plan_id)["after"].status is TaskStatus.UPSTREAM_FAILED


def test_a_lost_replan_attempt_is_retried_on_the_planners_queue(store_url: str) -> None:
    from orch.decisions.retry import Backoff
    from orch.dispatch.reaper import reap_expired

    submit([{**shell("split-me"), "retries": 0, "on_failure": "replan"}])
    (failing,) = tick()
    record(claim(failing), AttemptResult(False, exit_code=1, error="exit status 1"), FAILED)
    (replan,) = tick()
    claim(replan)
    with write_session() as session:
        (reaped,) = reap_expired(session, NOW + timedelta(seconds=120), Backoff(0.0, 0.0))
    assert reaped.retried
    (again,) = tick(NOW + timedelta(seconds=121))
    assert again.queue == "agent.planner" and again.attempt == replan.attempt + 1


def test_a_list_revision_leaves_the_tasks_the_plan_grew(store_url: str) -> None:
    from orch.store.revisions import revise_plan

    listed = [shell("build"), shell("ship", "build")]
    plan_id = submit(listed)
    (build,) = tick()
    followups = json.dumps([{"id": "notes", "title": "notes", "command": "true", "after": ["build"]}])
    record(claim(build), AttemptResult(True, exit_code=0, followups=followups))
    with write_session() as session:
        applied = revise_plan(session, plan_id, make_plan([*listed, shell("more")], name="grow"), NOW, "test")
    assert applied.revision.added == ("more",) and applied.revision.withdrawn == ()
    assert rows(plan_id)["notes"].status is TaskStatus.PENDING


HALVES = {
    "decision": "replace",
    "reason": "two halves",
    "tasks": [
        {"id": "half-1", "title": "first half", "command": "true"},
        {"id": "half-2", "title": "second half", "command": "true", "after": ["half-1"]},
    ],
}


def replace_split_me(answer: dict[str, Any] = HALVES) -> None:
    """The one task dispatched fails with its retries spent; its re-plan replaces it with `answer`."""
    (failing,) = tick()
    record(claim(failing), AttemptResult(False, exit_code=1, error="exit status 1"), FAILED)
    (replan,) = tick()
    assert replan.queue == "agent.planner"
    recorded = record(claim(replan), AttemptResult(True, exit_code=0, replacement=answer))
    assert recorded is not None and recorded.status is TaskStatus.REPLACED


def test_a_list_sync_after_a_replacement_keeps_the_dependants_on_the_replacement(store_url: str) -> None:
    """The list still says `after: [split-me]`: that means the replacement's sink, never an edge back onto the replaced
    task (which would never succeed); a task the list adds after split-me waits for it too; ticking it is reported."""
    from orch.store.revisions import revise_plan

    listed = [{**shell("split-me"), "retries": 0, "on_failure": "replan"}, shell("after", "split-me")]
    plan_id = submit(listed)
    replace_split_me()
    ticked = {**listed[0], "done": True}
    with write_session() as session:
        grown = make_plan([ticked, listed[1], shell("more", "split-me")], name="grow")
        applied = revise_plan(session, plan_id, grown, NOW, "test")
    assert applied.revision.added == ("more",) and applied.revision.changed == ()
    assert applied.revision.skipped == () and applied.revision.withdrawn == ()
    assert applied.revision.not_applied == (("split-me", "ticked, but it is replaced"),)
    tasks = rows(plan_id)
    assert tasks["split-me"].status is TaskStatus.REPLACED
    with read_session() as session:
        edges = set(plans.plan_dependencies(session, plan_id))
    pk = {key: task.pk for key, task in tasks.items()}
    assert {(pk["after"], pk["half-2"]), (pk["more"], pk["half-2"])} <= edges
    assert not [edge for edge in edges if edge[1] == pk["split-me"]]
    assert (tasks["after"].unmet_deps, tasks["more"].unmet_deps) == (1, 1)
    run_all(plan_id)
    assert {key: task.status for key, task in rows(plan_id).items()} == {
        "split-me": TaskStatus.REPLACED,
        **{key: TaskStatus.SUCCEEDED for key in ("half-1", "half-2", "after", "more")},
    }
    with read_session() as session:
        done = plans.get_plan(session, plan_id)
        assert done is not None and done.status is PlanStatus.SUCCEEDED


def test_a_replaced_task_cannot_be_skipped(store_url: str) -> None:
    from orch.errors import TaskStateConflict
    from orch.store import operator

    plan_id = submit([{**shell("split-me"), "retries": 0, "on_failure": "replan"}])
    replace_split_me()
    with write_session() as session:
        try:
            operator.skip_task(session, plan_id, "split-me", NOW)
        except TaskStateConflict as exc:
            assert "is replaced: nothing to skip" in str(exc)
        else:
            raise AssertionError("a replaced task was skipped")
    assert rows(plan_id)["split-me"].status is TaskStatus.REPLACED


def test_a_task_cancelled_while_waiting_for_its_replan_and_retried_runs_itself(store_url: str) -> None:
    from orch.store import operator

    plan_id = submit([{**shell("split-me"), "retries": 0, "on_failure": "replan", "max_replans": 1}])
    (failing,) = tick()
    record(claim(failing), AttemptResult(False, exit_code=1, error="exit status 1"), FAILED)
    assert rows(plan_id)["split-me"].replanning
    with write_session() as session:
        operator.cancel_task(session, plan_id, "split-me", NOW, "cancelled by orch cancel")
    assert not rows(plan_id)["split-me"].replanning
    with write_session() as session:
        operator.retry_task(session, plan_id, "split-me", NOW)
    (again,) = tick()
    assert again.queue != "agent.planner"  # it runs itself: its one re-plan is spent
    recorded = record(claim(again), AttemptResult(False, exit_code=1, error="exit status 1"), FAILED)
    assert recorded is not None and recorded.status is TaskStatus.FAILED  # replans 1 of max_replans 1


def test_a_task_withdrawn_from_its_list_while_waiting_for_its_replan_runs_itself_when_back(store_url: str) -> None:
    from orch.store.revisions import revise_plan

    listed = [{**shell("split-me"), "retries": 0, "on_failure": "replan"}, shell("other")]
    plan_id = submit(listed)
    failing = next(d for d in tick() if d.key == "split-me")
    record(claim(failing), AttemptResult(False, exit_code=1, error="exit status 1"), FAILED)
    with write_session() as session:
        assert revise_plan(session, plan_id, make_plan(listed[1:], name="grow"), NOW, "t").revision.withdrawn
    assert not rows(plan_id)["split-me"].replanning
    with write_session() as session:
        assert revise_plan(session, plan_id, make_plan(listed, name="grow"), NOW, "t").revision.reopened
    again = next(d for d in tick() if d.key == "split-me")
    assert again.queue != "agent.planner"


def test_replacement_tasks_inherit_the_replans_left(store_url: str) -> None:
    """max_replans 2 bounds the chain: split-me's replacement may be re-planned once more, its replacement's tasks
    fail as any task."""
    plan_id = submit([{**shell("split-me"), "retries": 0, "on_failure": "replan", "max_replans": 2}])
    one = {"decision": "replace", "reason": "smaller", "tasks": [{"id": "part", "title": "part", "command": "false"}]}
    replace_split_me(one)
    part = rows(plan_id)["part"]
    assert (part.on_failure, part.max_replans, part.replans) == ("replan", 1, 0)
    leaf = {"decision": "replace", "reason": "smaller", "tasks": [{"id": "leaf", "title": "leaf", "command": "false"}]}
    replace_split_me(leaf)
    assert (rows(plan_id)["leaf"].on_failure, rows(plan_id)["leaf"].max_replans) == ("fail", 0)
    (last,) = tick()
    recorded = record(claim(last), AttemptResult(False, exit_code=1, error="exit status 1"), FAILED)
    assert recorded is not None and recorded.status is TaskStatus.FAILED
    tick()
    with read_session() as session:
        failed = plans.get_plan(session, plan_id)
        assert failed is not None and failed.status is PlanStatus.FAILED


def test_followups_with_ids_the_store_cannot_encode_are_refused_and_the_result_recorded(store_url: str) -> None:
    """A lone surrogate in an id or a dependency (valid JSON) never reaches a query: the follow-up is refused, named
    in one line, and the attempt's success is recorded."""
    plan_id = submit([shell("build")])
    (build,) = tick()
    text = (
        '[{"id": "x\\ud800", "title": "t", "command": "true"},'
        ' {"id": "y", "title": "t", "command": "true", "after": ["\\ud800"]},'
        ' {"id": "fine", "title": "t", "command": "true", "after": ["build"]}]'
    )
    recorded = record(claim(build), AttemptResult(True, exit_code=0, followups=text))
    assert recorded is not None
    tasks = rows(plan_id)
    assert tasks["build"].status is TaskStatus.SUCCEEDED
    assert set(tasks) == {"build", "fine"}
    with read_session() as session:
        (revision,) = plan_revisions(session, plan_id)
    assert [line.split(":")[0] for line in revision.changes["refused"]] == ["follow-up 'x\\ud800'", "follow-up 'y'"]
