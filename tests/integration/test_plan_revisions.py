"""Task lists' states and plan revisions in the store, on SQLite and PostgreSQL: tasks done in their list are stored
succeeded and satisfy their dependants, held ones are never dispatched and hold theirs; a revision adds tasks (also
onto a running one: its success still counts), changes pending ones, withdraws removed ones without failing the
plan, skips ticked ones, reopens a finished plan, leaves running tasks' edits, and is numbered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from orch.dispatch.reconcile import reconcile_plans
from orch.errors import TaskStateConflict
from orch.records import AttemptResult, Dispatch
from orch.states import PlanStatus, TaskStatus
from orch.store import attempts, dispatching, plans
from orch.store import revisions as revisions_module
from orch.store.db import read_session, write_session
from orch.store.revisions import Applied, plan_revisions, revise_plan
from tests.helpers import SUCCESS, make_plan, registry

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def task(key: str, *after: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": key,
        "title": f"task {key}",
        "executor": "noop",
        **({"after": list(after)} if after else {}),
        **fields,
    }


def submit(tasks: list[dict[str, Any]]) -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(tasks, name="list"), NOW)


def tick() -> list[Dispatch]:
    with write_session() as session:
        return reconcile_plans(session, plans.active_plan_ids(session), registry(), NOW)


def run(dispatch: Dispatch) -> None:
    with write_session() as session:
        claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w1", 1, 60.0, now=NOW)
    assert claimed is not None
    with write_session() as session:
        assert attempts.record_result(session, claimed[0], AttemptResult(True, exit_code=0), SUCCESS, NOW)


def claim(dispatch: Dispatch) -> Any:
    with write_session() as session:
        claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w1", 1, 60.0, now=NOW)
    assert claimed is not None
    return claimed[0]


def finish(claimed: Any) -> None:
    with write_session() as session:
        assert attempts.record_result(session, claimed, AttemptResult(True, exit_code=0), SUCCESS, NOW)


def revise(plan_id: str, tasks: list[dict[str, Any]]) -> Applied:
    with write_session() as session:
        return revise_plan(session, plan_id, make_plan(tasks, name="list"), NOW, "test")


def states(plan_id: str) -> dict[str, TaskStatus]:
    with read_session() as session:
        return {t.key: t.status for t in plans.plan_tasks(session, plan_id)}


def plan_status(plan_id: str) -> PlanStatus:
    with read_session() as session:
        found = plans.get_plan(session, plan_id)
        assert found is not None
        return found.status


def test_done_tasks_satisfy_their_dependants_and_held_ones_hold_theirs(store_url: str) -> None:
    plan_id = submit(
        [
            task("a", done=True),
            task("b", "a"),
            task("c", hold="deferred in tasks.json"),
            task("d", "c"),
            task("e", "a", "b"),
        ]
    )
    assert states(plan_id)["a"] is TaskStatus.SUCCEEDED
    (b,) = tick()
    assert b.key == "b"  # not c (held), not d (waits for c), not e (waits for b)
    with read_session() as session:
        assert dispatching.stalled_on_holds(session, plan_id) is None  # b is in flight
    run(b)
    (e,) = tick()
    assert e.key == "e"
    run(e)
    assert tick() == []
    assert states(plan_id) == {
        "a": TaskStatus.SUCCEEDED,
        "b": TaskStatus.SUCCEEDED,
        "c": TaskStatus.PENDING,
        "d": TaskStatus.PENDING,
        "e": TaskStatus.SUCCEEDED,
    }
    assert plan_status(plan_id) is PlanStatus.RUNNING  # held, not over


def test_only_held_tasks_left_is_a_stall_and_a_revision_that_releases_them_moves_on(store_url: str) -> None:
    listed = [task("a"), task("c", hold="deferred in tasks.json"), task("d", "c")]
    plan_id = submit(listed)
    (a,) = tick()
    run(a)
    assert tick() == []
    with read_session() as session:
        assert dispatching.stalled_on_holds(session, plan_id) == [("c", "deferred in tasks.json")]
    applied = revise(plan_id, [task("a"), task("c"), task("d", "c")])
    assert applied.revision.changed == ("c",)
    (c,) = tick()
    assert c.key == "c"
    run(c)
    (d,) = tick()
    run(d)
    tick()
    assert plan_status(plan_id) is PlanStatus.SUCCEEDED


def test_a_task_added_onto_a_running_one_starts_once_it_succeeds(store_url: str) -> None:
    plan_id = submit([task("a")])
    (a,) = tick()
    running = claim(a)  # its claim saw no dependant
    applied = revise(plan_id, [task("a"), task("b", "a")])
    assert applied.revision.added == ("b",) and applied.number == 2
    assert tick() == []  # b waits for a
    finish(running)
    (b,) = tick()
    assert b.key == "b"
    run(b)
    tick()
    assert plan_status(plan_id) is PlanStatus.SUCCEEDED


def test_pending_tasks_change_removed_ones_are_withdrawn_and_the_plan_still_succeeds(store_url: str) -> None:
    plan_id = submit([task("a"), task("b", "a"), task("c", "a"), task("x", "b")])
    (a,) = tick()
    run(a)
    applied = revise(plan_id, [task("a", title="renamed"), task("b", "a", title="B!"), task("c")])
    assert applied.revision.changed == ("b", "c")
    assert applied.revision.withdrawn == ("x",)
    assert applied.revision.not_applied == (("a", "edited, but it is succeeded"),)
    with read_session() as session:
        rows = {t.key: t for t in plans.plan_tasks(session, plan_id)}
    assert rows["b"].title == "B!" and rows["a"].title == "task a"
    assert rows["x"].status is TaskStatus.CANCELLED and rows["x"].hold is not None
    for dispatch in tick():
        run(dispatch)
    tick()
    assert plan_status(plan_id) is PlanStatus.SUCCEEDED  # the withdrawn task does not fail it
    assert [r.number for r in _revisions(plan_id)] == [2]


def test_a_ticked_task_is_skipped_and_a_finished_plan_reopens_for_added_tasks(store_url: str) -> None:
    plan_id = submit([task("a"), task("b", "a")])
    applied = revise(plan_id, [task("a", done=True), task("b", "a")])
    assert applied.revision.skipped == ("a",)
    (b,) = tick()
    run(b)
    tick()
    assert plan_status(plan_id) is PlanStatus.SUCCEEDED
    applied = revise(plan_id, [task("a", done=True), task("b", "a"), task("c", "b")])
    assert applied.revision.added == ("c",) and applied.number == 3
    assert plan_status(plan_id) is PlanStatus.RUNNING
    (c,) = tick()
    run(c)
    tick()
    assert plan_status(plan_id) is PlanStatus.SUCCEEDED


def test_an_edit_of_a_running_task_is_reported_and_its_edges_stay(store_url: str) -> None:
    plan_id = submit([task("a"), task("b", "a")])
    (a,) = tick()
    claim(a)  # a runs: its edges stay as stored
    applied = revise(plan_id, [task("a", "b"), task("b"), task("n")])
    assert applied.revision.not_applied == (("a", "edited, but it is running"),)
    assert applied.revision.changed == ("b",) and applied.revision.added == ("n",)
    with read_session() as session:
        rows = {t.key: t.pk for t in plans.plan_tasks(session, plan_id)}
        edges = set(plans.plan_dependencies(session, plan_id))
    assert edges == set()  # b no longer waits for a; a was never made to wait for b
    assert rows.keys() == {"a", "b", "n"}


def test_a_cancelled_plan_takes_no_revision(store_url: str) -> None:
    plan_id = submit([task("a")])
    from orch.store import operator

    with write_session() as session:
        operator.cancel_plan(session, plan_id, NOW, "test")
    with pytest.raises(TaskStateConflict, match="cancelled"):
        revise(plan_id, [task("a"), task("b")])


def _revisions(plan_id: str) -> list[Any]:
    with read_session() as session:
        return plan_revisions(session, plan_id)


def test_a_dependency_that_succeeds_during_a_revision_is_counted_once(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, READ COMMITTED: a worker records d's success while a revision moves x from waiting for d to
    waiting for e (still queued). Either order, x must still wait for e, and neither transaction may deadlock."""
    import threading

    from orch.store import revisions

    plan_id = submit([task("d"), task("e"), task("x", "d")])
    d = next(dispatch for dispatch in tick() if dispatch.key == "d")
    running = claim(d)
    revision_holds_locks, go_on = threading.Event(), threading.Event()
    original = revisions._set_dependencies

    def paused(session: Any, tasks: Any, pks: Any) -> None:
        if tasks and tasks[0].key == "x":  # the revision has locked what x waits for, and holds on
            revision_holds_locks.set()
            go_on.wait(10)
        original(session, tasks, pks)

    monkeypatch.setattr(revisions, "_set_dependencies", paused)
    errors: list[BaseException] = []

    def in_thread(work: Any) -> threading.Thread:
        def guarded() -> None:
            try:
                work()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=guarded)
        thread.start()
        return thread

    revising = in_thread(lambda: revise(plan_id, [task("d"), task("e"), task("x", "e", title="now after e")]))
    assert revision_holds_locks.wait(10)
    worker = in_thread(lambda: finish(running))  # its success must wait for the revision's lock on d
    worker.join(0.5)
    assert worker.is_alive()
    go_on.set()
    revising.join(20)
    worker.join(20)
    assert errors == []
    with read_session() as session:
        rows = {t.key: t for t in plans.plan_tasks(session, plan_id)}
    assert rows["d"].status is TaskStatus.SUCCEEDED
    assert (rows["x"].status, rows["x"].unmet_deps) == (TaskStatus.PENDING, 1)  # e has not succeeded
    assert [dispatch.key for dispatch in tick()] == []  # e is queued already; x waits


def test_a_revision_read_from_a_text_the_list_no_longer_holds_is_not_applied(store_url: str) -> None:
    plan_id = submit([task("a")])
    with write_session() as session, pytest.raises(TaskStateConflict, match=revisions_module.LIST_CHANGED):
        revise_plan(session, plan_id, make_plan([task("a"), task("b")], name="list"), NOW, "test", lambda: False)
    assert set(states(plan_id)) == {"a"}
    assert _revisions(plan_id) == []
