"""The merge queue's order as a pure decision: dependencies first, then the oldest, a begun merge before all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orch.decisions.merge_order import merge_order, next_merge
from orch.records import MergeRequest
from orch.states import MergePhase

T0 = datetime(2026, 12, 4, tzinfo=UTC)


def request(pk: int, task: int, minutes: int, after: tuple[int, ...] = (), priority: int = 0, phase: str = "queued"):
    return MergeRequest(
        pk=pk,
        task_pk=task,
        key=f"t{task}",
        attempt=1,
        phase=phase,
        base_commit="a" * 40,
        head_commit="b" * 40,
        enqueued_at=T0 + timedelta(minutes=minutes),
        priority=priority,
        after=after,
    )


def test_the_oldest_merges_first_whatever_its_priority() -> None:
    old, new = request(1, 10, minutes=0, priority=-5), request(2, 11, minutes=1, priority=1000)
    assert [r.pk for r in merge_order([new, old])] == [1, 2]


def test_a_request_waits_for_the_request_of_a_task_it_depends_on_even_when_older() -> None:
    child = request(1, 20, minutes=0, after=(21,))
    parent = request(2, 21, minutes=5)
    assert [r.pk for r in merge_order([child, parent])] == [2, 1]


def test_a_dependency_not_in_the_queue_holds_nothing_back() -> None:
    child = request(1, 20, minutes=0, after=(99,))
    other = request(2, 21, minutes=5)
    assert [r.pk for r in merge_order([other, child])] == [1, 2]


def test_a_merge_a_dead_merger_began_is_redone_before_any_new_one() -> None:
    begun = request(3, 30, minutes=9, phase=MergePhase.MERGING)
    queued = request(4, 31, minutes=0)
    assert next_merge([queued, begun]) == begun


def test_no_request_starves_behind_a_stream_of_newer_ones() -> None:
    oldest = request(1, 1, minutes=0)
    stream = [request(100 + i, 100 + i, minutes=1 + i, priority=10**6) for i in range(50)]
    assert next_merge([*stream, oldest]) == oldest


def test_an_empty_queue_has_nothing_next() -> None:
    assert next_merge([]) is None


def test_ties_in_age_go_by_request_number() -> None:
    a, b = request(7, 1, minutes=0), request(6, 2, minutes=0)
    assert [r.pk for r in merge_order([a, b])] == [6, 7]
