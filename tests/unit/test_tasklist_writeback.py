"""Write-back (orch.intake.tasklists.writeback): only marks change, in the file's own case, only forward from what
orch did; and the file is replaced only while it holds what orch last read (orch.services.tasklist_sync)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from orch.intake.tasklists.model import ListedTask, MarkSpan, TaskList
from orch.intake.tasklists.writeback import apply_changes, done_in_text, mark_changes
from orch.services.tasklist_sync import replace_if_unchanged
from orch.states import TaskStatus

TEXT = (
    "\ufeff# Tasks\r\n\r\n- [ ] T001 Setup `a.py`\r\n- [X] T002 Done already\r\n- [-] T003 Running\r\n"
    "  - [ ] T004 Nested\r\n"
)


def markdown_list(text: str, format: str = "speckit", done_mark: str = "X") -> TaskList:
    """Every checkbox of `text` as a task, its id the word after the box."""
    tasks = []
    position = 0
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        box = line.find("- [")
        if box >= 0:
            start = position + box + 3
            task_id = line[box + 6 :].split()[0]
            tasks.append(ListedTask(task_id, task_id, number, text[start], mark=MarkSpan(start, start + 1)))
        position += len(line)
    return TaskList(format, "tasks.md", "p", tasks, done_mark=done_mark)  # type: ignore[arg-type]


def written(text: str, states: dict[str, TaskStatus], done_mark: str = "X", running: bool | None = None) -> str:
    listed = markdown_list(text, done_mark=done_mark)
    return apply_changes(listed, text, mark_changes(listed, text, states, mark_running=running))


def test_a_success_ticks_its_box_in_the_files_case_and_nothing_else_changes() -> None:
    after = written(TEXT, {"T001": TaskStatus.SUCCEEDED, "T004": TaskStatus.SUCCEEDED})
    assert after == TEXT.replace("[ ] T001", "[X] T001").replace("[ ] T004", "[X] T004")
    assert after.startswith("\ufeff") and after.count("\r\n") == TEXT.count("\r\n")
    lower = written(TEXT, {"T001": TaskStatus.SUCCEEDED}, done_mark="x")
    assert "- [x] T001" in lower


def test_in_progress_marks_only_where_asked_and_back_only_after_a_failure() -> None:
    running = {"T001": TaskStatus.RUNNING, "T003": TaskStatus.FAILED, "T004": TaskStatus.QUEUED}
    assert written(TEXT, running) == TEXT  # spec-kit has no in-progress mark unless asked
    spec = markdown_list(TEXT)
    marked = apply_changes(spec, TEXT, mark_changes(spec, TEXT, running, mark_running=True))
    assert "- [-] T001" in marked and "- [ ] T003" in marked and "  - [-] T004" in marked
    kiro = markdown_list(TEXT, format="kiro")
    assert [c.task_id for c in mark_changes(kiro, TEXT, running)] == ["T001", "T003", "T004"]  # Kiro has [-]
    waiting = {"T003": TaskStatus.PENDING, "T001": TaskStatus.RETRY_WAIT}
    assert mark_changes(kiro, TEXT, waiting) == []  # a task waiting keeps its mark


def test_a_box_ticked_by_hand_is_never_unticked_and_unknown_tasks_stay() -> None:
    states = {"T002": TaskStatus.FAILED, "T999": TaskStatus.SUCCEEDED}
    assert written(TEXT, states, running=True) == TEXT
    assert done_in_text(markdown_list(TEXT), TEXT) == {"T002"}


def test_task_master_statuses_change_as_tokens_and_the_rest_of_the_json_stays() -> None:
    text = '{\n  "master": {"tasks": [\n    {"id": 1, "status": "pending", "x": [1,2]},\n' \
        '    {"id": 2,   "status":"in-progress"},\n    {"id": 3, "status": "cancelled"}\n  ],\n' \
        '  "metadata": {"k": "v"}}\n}\n'  # fmt: skip
    tasks = []
    for task_id, token in (("1", '"pending"'), ("2", '"in-progress"'), ("3", '"cancelled"')):
        start = text.index(token)
        tasks.append(ListedTask(task_id, task_id, 1, json.loads(token), mark=MarkSpan(start, start + len(token))))
    listed = TaskList("taskmaster", "tasks.json", "master", tasks)
    states = {"1": TaskStatus.RUNNING, "2": TaskStatus.SUCCEEDED, "3": TaskStatus.SUCCEEDED}
    after = apply_changes(listed, text, mark_changes(listed, text, states))
    assert after == text.replace('"pending"', '"in-progress"', 1).replace('"status":"in-progress"', '"status":"done"')
    assert json.loads(after)["master"]["metadata"] == {"k": "v"}
    assert done_in_text(listed, text) == {"3"}  # cancelled counts as done: it satisfies its dependants
    running = apply_changes(listed, text, mark_changes(listed, text, {"1": TaskStatus.RUNNING}))
    start = running.index('"in-progress"')
    reread = TaskList(
        "taskmaster", "tasks.json", "master", [ListedTask("1", "1", 1, "", mark=MarkSpan(start, start + 13))]
    )
    assert apply_changes(reread, running, mark_changes(reread, running, {"1": TaskStatus.FAILED})) == text


def test_the_file_is_replaced_only_while_it_holds_what_orch_read(tmp_path: Path) -> None:
    path = tmp_path / "tasks.md"
    path.write_text(TEXT, encoding="utf-8", newline="")
    os.chmod(path, 0o640)
    assert replace_if_unchanged(path, TEXT, TEXT.replace("[ ] T001", "[X] T001"))
    assert path.read_bytes() == TEXT.replace("[ ] T001", "[X] T001").encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not replace_if_unchanged(path, TEXT, "something else")  # it changed since: the user's edit is kept
    assert path.read_bytes() == TEXT.replace("[ ] T001", "[X] T001").encode()
    assert [p.name for p in tmp_path.iterdir()] == ["tasks.md"]  # no temporary file left behind


def test_without_watching_a_changed_list_is_written_only_once_settled_and_never_by_line_ids(tmp_path: Path) -> None:
    from orch.intake.tasklists.reading import ReadOptions
    from orch.services.tasklist_sync import Follower, ListSpec
    from tests.helpers import registry

    path = tmp_path / "todo.md"
    first = "- [ ] A1 first\n- [ ] buy milk\n"
    path.write_text(first)
    spec = ListSpec(path, "checklist", ReadOptions(), registry())
    said: list[str] = []
    follower = Follower(spec, "p", first, said.append, watching=False, debounce=0.0)
    states = {"A1": TaskStatus.SUCCEEDED, "L2": TaskStatus.SUCCEEDED}
    assert follower._write_marks(states) == 2  # unchanged since the submit: both ticked
    assert path.read_text() == "- [x] A1 first\n- [x] buy milk\n"

    edited = "# added above\n- [ ] A1 first\n- [ ] buy milk\n"  # the user's edit moves the id-less item to line 3
    path.write_text(edited)
    assert follower._write_marks(states) is None  # seen once: it may be half saved
    assert path.read_text() == edited
    assert follower._write_marks(states) == 1  # the same text again: settled, adopted
    assert path.read_text() == "# added above\n- [x] A1 first\n- [ ] buy milk\n"  # not L3, which is not L2's item
    assert said == []


def test_a_list_with_other_hard_links_is_written_in_place(tmp_path: Path) -> None:
    path = tmp_path / "tasks.md"
    path.write_text(TEXT, encoding="utf-8", newline="")
    other = tmp_path / "also.md"
    os.link(path, other)
    assert replace_if_unchanged(path, TEXT, TEXT.replace("[ ] T001", "[X] T001"))
    assert other.read_bytes() == path.read_bytes() == TEXT.replace("[ ] T001", "[X] T001").encode()
    assert path.stat().st_ino == other.stat().st_ino


def test_an_edit_that_never_pauses_is_applied_every_ten_seconds() -> None:
    from orch.intake.tasklists.reading import ReadOptions
    from orch.services.tasklist_sync import MAX_DEBOUNCE_WAIT, Follower, ListSpec
    from tests.helpers import registry

    follower = Follower(ListSpec(Path("x.md"), "checklist", ReadOptions(), registry()), "p", "", print, True, 2.0)
    follower.file_changed(now=0.0)
    follower.file_changed(now=9.5)  # saved again and again: never quiet for the debounce
    assert not follower._settled(9.9)
    assert follower._settled(MAX_DEBOUNCE_WAIT)  # the first unapplied edit is that old
    follower.file_changed(now=20.0)
    assert follower._settled(22.0)  # quiet for the debounce
