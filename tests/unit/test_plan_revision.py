"""Plan revisions, decided (orch.decisions.revision): what a followed task list as it is now changes in its running
plan — added, changed, withdrawn, skipped, reopened — what it reports and leaves alone, and the cycles it refuses;
the tasks the plan grew left alone, and a replaced task standing for its replacement's sinks."""

from __future__ import annotations

from orch.decisions.revision import ListedTask, Revision, StoredTask, decide_revision, resolve_replaced
from orch.states import TaskStatus

P, Q, R, S = TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED
X = TaskStatus.REPLACED


def stored(
    key: str, status: TaskStatus, after: tuple[str, ...] = (), sig: str = "", withdrawn: bool = False
) -> StoredTask:
    return StoredTask(key, status, after, sig or key, withdrawn)


def listed(key: str, after: tuple[str, ...] = (), sig: str = "", done: bool = False) -> ListedTask:
    return ListedTask(key, after, sig or key, done)


def decide(old: list[StoredTask], new: list[ListedTask]) -> Revision:
    return decide_revision({t.key: t for t in old}, new)


def test_the_same_list_changes_nothing_whatever_the_order_of_its_edges() -> None:
    old = [stored("a", S), stored("b", R, ("a",)), stored("c", P, ("a", "b"))]
    revision = decide(old, [listed("a"), listed("b", ("a",)), listed("c", ("b", "a"))])
    assert revision == Revision()
    assert not revision.applies
    assert revision.summary() == "no change"


def test_a_new_task_is_added_and_may_wait_for_running_and_finished_ones() -> None:
    old = [stored("a", S), stored("b", R, ("a",))]
    revision = decide(old, [listed("a"), listed("b", ("a",)), listed("c", ("a", "b"))])
    assert revision.added == ("c",)
    assert revision.applies
    assert revision.summary() == "added c"


def test_a_pending_task_edited_changes_but_a_running_or_finished_one_is_reported() -> None:
    old = [stored("a", S), stored("b", R, ("a",)), stored("c", P, ("a",)), stored("d", Q)]
    new = [
        listed("a", sig="a2"),
        listed("b", ("a",), sig="b2"),
        listed("c", ("a", "d"), sig="c"),  # a new edge only
        listed("d", sig="d2"),
    ]
    revision = decide(old, new)
    assert revision.changed == ("c",)
    assert revision.not_applied == (
        ("a", "edited, but it is succeeded"),
        ("b", "edited, but it is running"),
        ("d", "edited, but it is queued"),
    )


def test_a_task_removed_before_it_started_is_withdrawn_one_running_is_reported() -> None:
    old = [stored("a", R), stored("b", P), stored("c", TaskStatus.RETRY_WAIT), stored("d", S), stored("e", P)]
    revision = decide(old, [listed("e")])
    assert revision.withdrawn == ("b", "c")
    assert revision.not_applied == (("a", "removed from the list, but it is running"),)  # d finished: nothing to say
    assert "cancelled (removed) b, c" in revision.summary()


def test_a_box_ticked_by_hand_skips_the_task_unless_it_is_in_flight() -> None:
    old = [stored("a", P), stored("b", TaskStatus.FAILED), stored("c", R), stored("d", S)]
    revision = decide(
        old, [listed("a", done=True), listed("b", done=True), listed("c", done=True), listed("d", done=True)]
    )
    assert revision.skipped == ("a", "b")
    assert revision.not_applied == (("c", "ticked, but it is running"),)


def test_a_withdrawn_task_back_in_the_list_is_reopened() -> None:
    old = [stored("a", TaskStatus.CANCELLED, withdrawn=True), stored("b", P)]
    revision = decide(old, [listed("a"), listed("b", ("a",))])
    assert revision.reopened == ("a",)
    assert revision.changed == ("b",)
    # and one withdrawn that stays out of the list is not withdrawn again
    assert decide(old, [listed("b")]) == Revision()


def test_a_revision_that_would_make_a_cycle_is_refused_whole() -> None:
    # b is running, so its stored edge (b after a) stays; a pending a now waiting for b closes a cycle
    old = [stored("a", P), stored("b", R, ("a",)), stored("c", P)]
    revision = decide(old, [listed("a", ("b",)), listed("b"), listed("c", sig="c2"), listed("n")])
    assert revision.cycle
    assert set(revision.cycle) == {"a", "b"}
    assert not revision.applies
    assert revision.added == () and revision.changed == ()
    assert revision.summary().startswith("refused: it would make a dependency cycle: ")


def test_many_not_applied_edits_are_summarised_in_one_bounded_line() -> None:
    old = [stored(f"t{i}", R) for i in range(30)]
    revision = decide(old, [listed(f"t{i}", sig="edited") for i in range(30)])
    assert len(revision.not_applied) == 30
    assert revision.summary().endswith("and 20 more")


def grown(key: str, status: TaskStatus, after: tuple[str, ...] = ()) -> StoredTask:
    return StoredTask(key, status, after, key, grown=True)


def replaced(key: str, stands_for: tuple[str, ...], after: tuple[str, ...] = ()) -> StoredTask:
    return StoredTask(key, X, after, key, stands_for=stands_for)


# split-me was replaced by half-1 -> half-2; its dependant `after` was rewired to half-2 (the sink).
REPLANNED = [
    replaced("split-me", ("half-2",)),
    grown("half-1", S),
    grown("half-2", P, ("half-1",)),
    stored("after", P, ("half-2",)),
]


def test_a_listed_dependency_on_a_replaced_task_is_one_on_its_replacements_sinks() -> None:
    same = [listed("split-me"), listed("after", ("split-me",))]
    assert decide(REPLANNED, same) == Revision()  # the rewiring stands: no change, no edge back onto split-me
    revision = decide(REPLANNED, [*same, listed("more", ("split-me", "half-2"))])
    assert revision.added == ("more",) and revision.changed == ()
    stored_tasks = {t.key: t for t in REPLANNED}
    assert resolve_replaced(("split-me", "half-2"), stored_tasks) == ("half-2",)


def test_a_replaced_task_replaced_in_turn_stands_for_the_last_replacements_sinks() -> None:
    chain = [replaced("big", ("mid",)), replaced("mid", ("low-a", "low-b")), grown("low-a", P), grown("low-b", P)]
    by_key = {t.key: t for t in chain}
    assert resolve_replaced(("big", "other"), by_key) == ("low-a", "low-b", "other")


def test_an_edited_dependant_of_a_replaced_task_keeps_the_rewired_edge() -> None:
    revision = decide(
        [*REPLANNED, stored("b", S)], [listed("split-me"), listed("b"), listed("after", ("split-me", "b"))]
    )
    assert revision.changed == ("after",)  # its new edge on b; split-me still means half-2


def test_ticking_or_editing_a_replaced_task_is_reported_not_applied() -> None:
    revision = decide(REPLANNED, [listed("split-me", done=True), listed("after", ("split-me",))])
    assert revision.skipped == ()
    assert revision.not_applied == (("split-me", "ticked, but it is replaced"),)
    revision = decide(REPLANNED, [listed("split-me", sig="edited"), listed("after", ("split-me",))])
    assert revision.not_applied == (("split-me", "edited, but it is replaced"),)


def test_the_tasks_the_plan_grew_are_never_withdrawn_nor_reported_and_a_replaced_one_removed_is_silent() -> None:
    old = [*REPLANNED, grown("notes", R, ("after",))]
    assert decide(old, [listed("split-me"), listed("after", ("split-me",))]) == Revision()
    revision = decide(old, [listed("after")])  # split-me removed from the list: it ended well, nothing to say
    assert revision.not_applied == () and revision.withdrawn == ()
    assert revision.changed == ("after",)  # (its list no longer names split-me: it waits for nothing)
