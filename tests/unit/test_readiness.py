"""Readiness: which tasks are doomed, which may be dispatched now (within caps), and whether the plan is over."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from orch.decisions.readiness import TaskView, free_slots, reconcile
from orch.states import IN_FLIGHT, PlanStatus, TaskStatus

S = TaskStatus
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PLENTY = {"dev": 100, "qa": 100}


def tv(pk: int, status: TaskStatus = S.PENDING, deps: tuple[int, ...] = (), **fields) -> TaskView:
    fields.setdefault("agent", "dev")
    fields.setdefault("priority", 0)
    fields.setdefault("seq", pk)
    return TaskView(pk=pk, status=status, deps=deps, **fields)


def test_ready_only_when_every_dependency_succeeded() -> None:
    tasks = [
        tv(1, S.SUCCEEDED),
        tv(2, S.SUCCEEDED),
        tv(3, S.RUNNING),
        tv(4, S.QUEUED),
        tv(5, deps=(1, 2)),  # both succeeded
        tv(6, deps=(1, 3)),  # one still running
        tv(7, deps=(4,)),  # only queued
        tv(8),  # no dependencies at all
        tv(9, deps=(5,)),  # dependency is itself only pending
    ]
    result = reconcile(tasks, PLENTY, NOW)
    assert sorted(result.ready) == [5, 8]
    assert result.upstream_failed == ()
    assert result.plan_outcome is None


def test_ready_tasks_come_by_priority_then_declaration_order() -> None:
    tasks = [tv(1, priority=0), tv(2, priority=5), tv(3, priority=5), tv(4, priority=-1), tv(5, priority=9, seq=99)]
    assert reconcile(tasks, PLENTY, NOW).ready == (5, 2, 3, 1, 4)


def test_declaration_order_is_seq_not_pk() -> None:
    tasks = [tv(1, seq=3), tv(2, seq=1), tv(3, seq=2)]
    assert reconcile(tasks, PLENTY, NOW).ready == (2, 3, 1)


def test_caps_are_per_agent_type_and_best_tasks_get_the_slots() -> None:
    tasks = [
        tv(1, priority=1),
        tv(2, priority=3),
        tv(3, priority=2),
        tv(4, agent="qa"),
        tv(5, agent="qa"),
        tv(6, agent="ops"),  # no cap entry at all: no slots
    ]
    result = reconcile(tasks, {"dev": 2, "qa": 5}, NOW)
    assert result.ready == (2, 3, 4, 5)
    assert result.waiting_for_capacity == 2  # task 1 (dev full) and task 6 (ops unknown)


def test_zero_free_slots_dispatch_nothing() -> None:
    result = reconcile([tv(1), tv(2)], {"dev": 0}, NOW)
    assert result.ready == ()
    assert result.waiting_for_capacity == 2


def test_free_slots_subtract_in_flight_and_never_go_negative() -> None:
    caps = {"dev": 4, "qa": 2, "ops": 1}
    in_flight = {"dev": 1, "qa": 5, "stranger": 3}
    assert free_slots(caps, in_flight) == {"dev": 3, "qa": 0, "ops": 1}


def test_caps_count_in_flight_tasks() -> None:
    tasks = [
        tv(1, S.RUNNING),
        tv(2, S.QUEUED),
        tv(3, S.SUCCEEDED),  # finished: no longer counts against the cap
        tv(4),
        tv(5),
        tv(6, agent="qa", status=S.RUNNING),
        tv(7, agent="qa"),
    ]
    in_flight = Counter(t.agent for t in tasks if t.status in IN_FLIGHT)
    slots = free_slots({"dev": 3, "qa": 1}, in_flight)
    assert slots == {"dev": 1, "qa": 0}

    result = reconcile(tasks, slots, NOW)
    assert result.ready == (4,)
    assert result.waiting_for_capacity == 2


@pytest.mark.parametrize(
    ("not_before", "ready"),
    [
        (NOW + timedelta(seconds=1), False),
        (NOW, True),
        (NOW - timedelta(minutes=5), True),
        (None, True),
    ],
)
def test_retry_wait_is_ready_only_once_its_backoff_passed(not_before, ready: bool) -> None:
    tasks = [tv(1, S.SUCCEEDED), tv(2, S.RETRY_WAIT, deps=(1,), not_before=not_before)]
    result = reconcile(tasks, PLENTY, NOW)
    assert result.ready == ((2,) if ready else ())
    assert result.plan_outcome is None


def test_retry_wait_competes_for_slots_like_pending() -> None:
    tasks = [tv(1, priority=1), tv(2, S.RETRY_WAIT, priority=2, not_before=NOW)]
    assert reconcile(tasks, {"dev": 1}, NOW).ready == (2,)


def test_failure_dooms_pending_descendants_transitively() -> None:
    tasks = [
        tv(1, S.FAILED),
        tv(2, deps=(1,)),
        tv(3, deps=(2,)),
        tv(4, deps=(3, 9)),
        tv(5, S.RUNNING, deps=(1,)),  # already running: left alone
        tv(6, S.SUCCEEDED, deps=(1,)),  # already done: left alone
        tv(7, deps=(5,)),  # below a running task: still just pending
        tv(8, deps=(6,)),  # below a succeeded task: ready
        tv(9, S.SUCCEEDED),
    ]
    result = reconcile(tasks, PLENTY, NOW)
    assert sorted(result.upstream_failed) == [2, 3, 4]
    assert result.statuses[2] is result.statuses[3] is result.statuses[4] is S.UPSTREAM_FAILED
    assert result.statuses[5] is S.RUNNING
    assert result.statuses[6] is S.SUCCEEDED
    assert result.statuses[7] is S.PENDING
    assert result.ready == (8,)
    assert result.plan_outcome is None


def test_diamond_below_a_failure_is_doomed_once() -> None:
    tasks = [tv(1, S.FAILED), tv(2, deps=(1,)), tv(3, deps=(1,)), tv(4, deps=(2, 3))]
    result = reconcile(tasks, PLENTY, NOW)
    assert sorted(result.upstream_failed) == [2, 3, 4]


@pytest.mark.parametrize("dooming", [S.UPSTREAM_FAILED, S.CANCELLED])
def test_upstream_failed_and_cancelled_also_doom_pending_children(dooming: TaskStatus) -> None:
    result = reconcile([tv(1, dooming), tv(2, deps=(1,))], PLENTY, NOW)
    assert result.upstream_failed == (2,)


def test_doomed_tasks_are_not_ready() -> None:
    result = reconcile([tv(1, S.FAILED), tv(2, deps=(1,)), tv(3)], PLENTY, NOW)
    assert result.ready == (3,)


OUTCOMES = {
    "all succeeded": ([S.SUCCEEDED, S.SUCCEEDED], PlanStatus.SUCCEEDED),
    "one failed": ([S.SUCCEEDED, S.FAILED], PlanStatus.FAILED),
    "upstream failed": ([S.FAILED, S.UPSTREAM_FAILED], PlanStatus.FAILED),
    "cancelled": ([S.SUCCEEDED, S.CANCELLED], PlanStatus.FAILED),
    "pending": ([S.SUCCEEDED, S.PENDING], None),
    "queued": ([S.SUCCEEDED, S.QUEUED], None),
    "running": ([S.FAILED, S.RUNNING], None),
    "retry wait": ([S.SUCCEEDED, S.RETRY_WAIT], None),
}


@pytest.mark.parametrize(("statuses", "outcome"), OUTCOMES.values(), ids=OUTCOMES.keys())
def test_plan_outcome(statuses: list[TaskStatus], outcome: PlanStatus | None) -> None:
    tasks = [tv(pk, status) for pk, status in enumerate(statuses, start=1)]
    assert reconcile(tasks, PLENTY, NOW).plan_outcome is outcome


def test_plan_fails_once_the_failure_doomed_everything_left() -> None:
    tasks = [tv(1, S.SUCCEEDED), tv(2, S.FAILED, deps=(1,)), tv(3, deps=(2,)), tv(4, deps=(3,))]
    result = reconcile(tasks, PLENTY, NOW)
    assert result.upstream_failed == (3, 4)
    assert result.plan_outcome is PlanStatus.FAILED


def test_plan_is_not_over_while_an_independent_branch_is_pending() -> None:
    tasks = [tv(1, S.FAILED), tv(2, deps=(1,)), tv(3)]
    result = reconcile(tasks, PLENTY, NOW)
    assert result.plan_outcome is None
    assert result.ready == (3,)


# File leases: two tasks whose `files` overlap never run at once; the later (in dispatch order) waits.


def test_overlapping_ready_tasks_dispatch_one_and_the_other_waits_without_its_slot() -> None:
    tasks = [
        tv(1, files=("src/a.py",)),
        tv(2, priority=1, files=("src/",)),  # best first: it takes src/
        tv(3, files=("docs/",)),
    ]
    result = reconcile(tasks, {"dev": 2}, NOW)
    assert result.ready == (2, 3)  # task 1 waits on files, so task 3 gets the second slot
    assert result.waiting_for_files == 1
    assert result.waiting_for_capacity == 0


def test_equal_priority_the_earlier_declared_task_takes_the_files() -> None:
    tasks = [tv(1, seq=2, files=("*.py",)), tv(2, seq=1, files=("src/a.py",))]
    result = reconcile(tasks, PLENTY, NOW)
    assert result.ready == (2,)
    assert result.waiting_for_files == 1


def test_tasks_whose_files_do_not_overlap_run_together() -> None:
    tasks = [tv(1, files=("src/a.py",)), tv(2, files=("src/b.py", "docs/")), tv(3), tv(4)]
    result = reconcile(tasks, PLENTY, NOW)
    assert result.ready == (1, 2, 3, 4)  # tasks without files conflict with nothing
    assert result.waiting_for_files == 0


@pytest.mark.parametrize("holder", [S.QUEUED, S.RUNNING])
def test_an_in_flight_task_of_the_plan_holds_its_files(holder: TaskStatus) -> None:
    tasks = [tv(1, holder, files=("src/",)), tv(2, files=("src/a.py",)), tv(3, files=("tests/",))]
    result = reconcile(tasks, PLENTY, NOW)
    assert result.ready == (3,)
    assert result.waiting_for_files == 1


def test_finished_tasks_hold_nothing() -> None:
    tasks = [tv(1, S.FAILED, files=("src/",)), tv(2, S.CANCELLED, files=("src/",)), tv(3, files=("src/",))]
    assert reconcile(tasks, PLENTY, NOW).ready == (3,)


def test_held_files_from_the_caller_block() -> None:
    tasks = [tv(1, files=("src/a.py",)), tv(2, files=("docs/",)), tv(3, files=("README.md",))]
    result = reconcile(tasks, PLENTY, NOW, held_files=[("src/**",), (), ("docs/index.md", "setup.py")])
    assert result.ready == (3,)
    assert result.waiting_for_files == 2


def test_a_retry_waiting_task_competes_for_files_like_pending() -> None:
    tasks = [tv(1, files=("src/",)), tv(2, S.RETRY_WAIT, priority=1, not_before=NOW, files=("src/x.py",))]
    result = reconcile(tasks, PLENTY, NOW)
    assert result.ready == (2,)
    assert result.waiting_for_files == 1


def test_a_task_waiting_for_files_is_not_counted_as_waiting_for_capacity() -> None:
    tasks = [tv(1, S.RUNNING, files=("src/",)), tv(2, files=("src/",)), tv(3), tv(4)]
    result = reconcile(tasks, {"dev": 1}, NOW)
    assert result.ready == (3,)
    assert (result.waiting_for_files, result.waiting_for_capacity) == (1, 1)


def test_after_the_holder_succeeds_the_waiter_becomes_ready() -> None:
    waiter = tv(2, files=("src/a.py",))
    assert reconcile([tv(1, S.RUNNING, files=("src/",)), waiter], PLENTY, NOW).ready == ()
    result = reconcile([tv(1, S.SUCCEEDED, files=("src/",)), waiter], PLENTY, NOW)
    assert result.ready == (2,)
    assert result.waiting_for_files == 0
