"""Plans that grow, raced on PostgreSQL (READ COMMITTED, row locks): a result that grows the plan (follow-ups, a
replacement) against a success recorded meanwhile, `orch cancel` and `orch skip`. One lock order everywhere (the
plan's row FOR NO KEY UPDATE, then task rows; the tasks new edges and counts depend on share-locked before any other
task row), so none deadlocks, and every dependency count stays exact whichever commits first.

Each test holds one transaction open in the test's thread, starts the other in a thread, waits until that one is
blocked on a lock (pg_stat_activity), then commits."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from orch.records import AttemptResult, Claim
from orch.states import PlanStatus, TaskStatus
from orch.store import attempts, operator, plans
from orch.store.db import read_session, write_session
from tests.helpers import SUCCESS, wait_for
from tests.integration.test_followups import (
    FAILED,
    HALVES,
    NOW,
    RULES,
    claim,
    record,
    rows,
    run_all,
    shell,
    submit,
    tick,
)


class Other:
    """A transaction run in a thread: its backend's pid, what it returned, what it raised."""

    def __init__(self, work: Callable[[Session], Any]) -> None:
        self.pid: int | None = None
        self.errors: list[BaseException] = []
        self.result: Any = None
        self.thread = threading.Thread(target=self._run, args=(work,))

    def _run(self, work: Callable[[Session], Any]) -> None:
        try:
            with write_session() as session:
                self.pid = int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
                self.result = work(session)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def waits_on_a_lock(self) -> bool:
        if self.errors:
            raise AssertionError(f"the other transaction failed: {self.errors[0]}")
        if self.pid is None:
            return False
        with read_session() as session:
            waiting = session.execute(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": self.pid}
            ).scalar()
        return waiting == "Lock"


def race(first: Callable[[Session], Any], second: Callable[[Session], Any]) -> Other:
    """`first` done in a transaction held open until `second`, in another, waits on a lock; then both end."""
    other = Other(second)
    with write_session() as session:
        first(session)
        other.thread.start()
        wait_for(other.waits_on_a_lock, 10, "the second transaction to wait on a lock")
    other.thread.join(20)
    assert not other.thread.is_alive()
    return other


def succeed(running: Claim, followups: str | None = None, replacement: Any = None) -> Callable[[Session], Any]:
    result = AttemptResult(True, exit_code=0, followups=followups, replacement=replacement)
    return lambda session: attempts.record_result(session, running, result, SUCCESS, NOW, RULES)


def replan_ready() -> tuple[Claim, Claim]:
    """b and split-me (retries 0, on_failure: replan) are claimed; split-me fails; its re-plan attempt is claimed."""
    dispatched = {d.key: claim(d) for d in tick()}
    record(dispatched["split-me"], AttemptResult(False, exit_code=1, error="exit status 1"), FAILED)
    (replan,) = tick()
    return dispatched["b"], claim(replan)


REPLANNED = [shell("b"), {**shell("split-me"), "retries": 0, "on_failure": "replan"}, shell("after", "split-me", "b")]


def test_a_replacement_waiting_for_a_dependencys_success_counts_it(postgres_url: str) -> None:
    """b's success is being recorded when split-me's replacement rewires `after` (which waits for b and split-me):
    the replacement waits, then counts b as met. `after` waits for half-2 only, and runs once it succeeds."""
    plan_id = submit(REPLANNED)
    b, replanning = replan_ready()
    replacement = race(succeed(b), succeed(replanning, replacement=HALVES))
    assert replacement.errors == [] and replacement.result.status is TaskStatus.REPLACED
    assert rows(plan_id)["after"].unmet_deps == 1  # half-2
    run_all(plan_id)
    assert rows(plan_id)["after"].status is TaskStatus.SUCCEEDED


def test_a_dependencys_success_waiting_for_a_replacement_is_counted_after_it(postgres_url: str) -> None:
    plan_id = submit(REPLANNED)
    b, replanning = replan_ready()
    success = race(succeed(replanning, replacement=HALVES), succeed(b))
    assert success.errors == []
    assert rows(plan_id)["after"].unmet_deps == 1
    run_all(plan_id)
    assert rows(plan_id)["after"].status is TaskStatus.SUCCEEDED


def test_followups_and_a_sibling_success_feeding_the_same_dependant_do_not_deadlock(postgres_url: str) -> None:
    """a and g feed j. a's success is being recorded (it holds a and j) when g's result adds a follow-up that waits for
    a: g waits for a's lock before it touches j, so neither waits for the other."""
    plan_id = submit([shell("a"), shell("g"), shell("j", "a", "g")])
    dispatched = {d.key: claim(d) for d in tick()}
    followups = json.dumps([{"id": "notes", "title": "notes", "command": "true", "after": ["a", "g"]}])
    grown = race(succeed(dispatched["a"]), succeed(dispatched["g"], followups))
    assert grown.errors == []
    tasks = rows(plan_id)
    assert (tasks["j"].unmet_deps, tasks["notes"].unmet_deps) == (0, 0)
    run_all(plan_id)
    assert {t.status for t in rows(plan_id).values()} == {TaskStatus.SUCCEEDED}


def test_a_growing_result_and_orch_cancel_do_not_deadlock(postgres_url: str) -> None:
    """Either first: the other waits for the plan's row, then applies (a result after the cancel is stale)."""
    plan_id = submit([shell("build"), shell("other")])
    dispatched = {d.key: claim(d) for d in tick()}
    followups = json.dumps([{"id": "notes", "title": "notes", "command": "true"}])
    cancel: Callable[[Session], Any] = lambda session: operator.cancel_plan(session, plan_id, NOW, "orch cancel")  # noqa: E731
    cancelling = race(succeed(dispatched["build"], followups), cancel)
    assert cancelling.errors == []
    assert rows(plan_id)["notes"].status is TaskStatus.CANCELLED  # added, then cancelled with the rest
    plan_id = submit([shell("build"), shell("other")])
    dispatched = {d.key: claim(d) for d in tick()}
    late = race(cancel, succeed(dispatched["build"], followups))
    assert late.errors == [] and late.result is None  # its lease is gone: refused, its follow-ups with it
    assert "notes" not in rows(plan_id)
    with read_session() as session:
        cancelled = plans.get_plan(session, plan_id)
        assert cancelled is not None and cancelled.status is PlanStatus.CANCELLED


def test_orch_skip_of_a_dependant_and_a_growing_result_do_not_deadlock(postgres_url: str) -> None:
    """x waits for g. `orch skip x` (the plan's row, then x) while g's result grows the plan (the plan's row, g, then
    x, its dependant): one order, so the second waits for the first."""
    plan_id = submit([shell("g"), shell("x", "g")])
    (g,) = tick()
    running = claim(g)
    followups = json.dumps([{"id": "notes", "title": "notes", "command": "true"}])
    skip: Callable[[Session], Any] = lambda session: operator.skip_task(session, plan_id, "x", NOW)  # noqa: E731
    grown = race(skip, succeed(running, followups))
    assert grown.errors == []
    tasks = rows(plan_id)
    assert (tasks["x"].status, tasks["g"].status, tasks["notes"].status) == (
        TaskStatus.SUCCEEDED,
        TaskStatus.SUCCEEDED,
        TaskStatus.PENDING,
    )
