"""task-master's tasks.json read as a task list (issue 16): tagged and legacy files with their quirks, groups of
subtasks, statuses, priorities, the line of every task and edge, the span of every "status" string, and a write-back
that changes those strings and not one other character."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from orch.errors import PlanInvalid
from orch.intake.plan import MAX_TITLE_CHARS
from orch.intake.tasklists.json_text import MAX_NESTING, JsonTextError, load_json, scan_json, set_statuses
from orch.intake.tasklists.model import EXPLICIT, SUBTASK_GROUP, ListedTask, MarkSpan, TaskList
from orch.intake.tasklists.reading import ReadOptions
from orch.intake.tasklists.taskmaster import read_taskmaster

GOLDEN = Path(__file__).parents[1] / "golden" / "tasklists"
TAGGED = GOLDEN / "taskmaster_tagged.json"
LEGACY = GOLDEN / "taskmaster_legacy.json"


def read(path: Path, text: str | None = None, tag: str | None = None) -> TaskList:
    text = path.read_text(encoding="utf-8") if text is None else text
    return read_taskmaster(text, path, str(path), ReadOptions(tag=tag))


def problems(text: str, tag: str | None = None, name: str = "tasks.json") -> list[str]:
    with pytest.raises(PlanInvalid) as caught:
        read_taskmaster(text, Path(name), name, ReadOptions(tag=tag))
    return caught.value.problems


def by_id(tasks: TaskList) -> dict[str, ListedTask]:
    return {task.id: task for task in tasks.tasks}


def edges(task: ListedTask) -> list[tuple[str, str, int]]:
    return [(edge.on, edge.reason, edge.line) for edge in task.after]


def line_of(text: str, number: int) -> str:
    return text.split("\n")[number - 1]


# --- the tagged golden file -------------------------------------------------------------------------------------


def test_tagged_file_reads_its_default_tag_with_every_task_state_and_priority() -> None:
    tasks = read(TAGGED)

    assert (tasks.format, tasks.name, tasks.description) == ("taskmaster", "master", "Tasks for master context")
    assert tasks.source == str(TAGGED)
    assert tasks.notes == ["read tag 'master' (the default tag); the file's other tags: 'feature-auth'"]
    states = [(t.id, t.line, t.status, t.done, t.hold, t.group, t.priority) for t in tasks.tasks]
    deferred = f"deferred in {TAGGED.name}"  # the file's name: the same however it was named
    assert states == [
        ("1", 5, "done", True, None, False, 2),  # "subtasks": [] is no group
        ("2", 17, "in-progress", False, None, True, 3),
        ("2.1", 31, "done", True, None, False, 3),  # a subtask without a priority takes its task's
        ("2.2", 41, "review", True, None, False, 3),
        ("2.3", 53, "pending", False, None, False, 0),
        ("3", 67, "cancelled", True, None, False, 0),  # satisfies its dependants, shown as cancelled
        ("4", 80, "deferred", False, deferred, False, 1),
        ("5", 97, "pending", False, None, False, 1),  # "priority": null is task-master's medium
        ("6", 110, "blocked", False, None, True, 1),  # no "priority" at all: medium
        ("6.1", 121, "in-progress", False, None, False, 1),
        ("6.2", 132, "pending", False, None, False, 1),  # no "status": pending
    ]
    text = TAGGED.read_text(encoding="utf-8")
    for task in tasks.tasks:  # each task's line is its "id" key's
        assert line_of(text, task.line).strip().startswith('"id": ')


def test_tagged_file_edges_carry_their_reasons_and_lines() -> None:
    tasks = by_id(read(TAGGED))

    assert edges(tasks["1"]) == []
    # a group waits for what it names, and for each of its subtasks (at the subtask's line)
    assert edges(tasks["2"]) == [
        ("1", EXPLICIT, 24),  # "1", a string dependency, at its entry's line
        ("2.1", SUBTASK_GROUP, 31),
        ("2.2", SUBTASK_GROUP, 41),
        ("2.3", SUBTASK_GROUP, 53),
    ]
    # each subtask waits for what its group names, at the line the group names it
    assert edges(tasks["2.1"]) == [("1", SUBTASK_GROUP, 24)]
    assert edges(tasks["2.2"]) == [("2.1", EXPLICIT, 45), ("1", SUBTASK_GROUP, 24)]  # 1: a sibling's number
    assert edges(tasks["2.3"]) == [("2.2", EXPLICIT, 57), ("1", SUBTASK_GROUP, 24)]  # "2.2": qualified
    assert edges(tasks["3"]) == [("2", EXPLICIT, 74)]  # on the group: on all of its subtasks through it
    assert edges(tasks["4"]) == [("2", EXPLICIT, 87), ("3", EXPLICIT, 88)]  # a number and a string
    assert edges(tasks["5"]) == [("4", EXPLICIT, 104), ("2.3", EXPLICIT, 105)]  # a top-level task on a subtask
    assert edges(tasks["6"]) == [("1", EXPLICIT, 116), ("6.1", SUBTASK_GROUP, 121), ("6.2", SUBTASK_GROUP, 132)]
    assert edges(tasks["6.1"]) == [("2.1", EXPLICIT, 125), ("1", SUBTASK_GROUP, 116)]  # another task's subtask
    assert edges(tasks["6.2"]) == [("6.1", EXPLICIT, 136), ("1", SUBTASK_GROUP, 116)]  # 1 and "1": one edge
    text = TAGGED.read_text(encoding="utf-8")
    assert line_of(text, 105).strip() == '"2.3"'
    assert line_of(text, 136).strip() == "1,"


def test_tagged_file_texts_titles_and_status_spans() -> None:
    text = TAGGED.read_text(encoding="utf-8")
    tasks = by_id(read(TAGGED))

    group = tasks["2"]
    assert group.title == "Design the data model"
    assert group.description.startswith("Tables for users, projects and tasks.\n\nStart from the ER diagram")
    assert "<info added on 2025-06-03T08:00:00.000Z>\nKeep task ids stable" in group.description
    assert group.success == "Migrations apply and roll back on an empty database."
    assert tasks["3"].description == "Document every endpoint."  # "details": null
    assert tasks["3"].success == ""
    assert tasks["2.1"].description == "Users with email and password hash."  # "details": ""
    assert all(task.files == [] for task in tasks.values())
    for task in tasks.values():
        if task.id == "6.2":
            assert task.mark is None  # no "status" key: nothing to write back to
            continue
        assert task.mark is not None
        assert text[task.mark.start : task.mark.end] == json.dumps(task.status)
    # task 4's own status, not the "status" inside its user-owned metadata
    mark = tasks["4"].mark
    assert mark is not None and text[mark.start - len('"status": ') : mark.end] == '"status": "deferred"'


def test_a_tag_named_by_option_and_a_missing_tag() -> None:
    tasks = read(TAGGED, tag="feature-auth")

    assert (tasks.name, tasks.description) == ("feature-auth", "Authentication feature (branch feature/auth)")
    assert [(t.id, t.line, t.status, t.done, t.priority, edges(t)) for t in tasks.tasks] == [
        ("1", 153, "pending", False, 2, []),
        ("2", 163, "done", True, 1, [("1", EXPLICIT, 170)]),
    ]
    text = TAGGED.read_text(encoding="utf-8")
    assert problems(text, tag="release-2") == [
        "tasks.json:1: no tag 'release-2' (named by --tag) in the file; its tags: 'master', 'feature-auth'"
    ]
    assert problems("{}") == ["tasks.json:1: no tag 'master' (the default tag) in the file; it has no tags"]


# --- .taskmaster/state.json ---------------------------------------------------------------------------------------


def project_with_state(tmp_path: Path, state: str | bytes | None) -> Path:
    folder = tmp_path / "project" / ".taskmaster"
    (folder / "tasks").mkdir(parents=True)
    tasks = folder / "tasks" / "tasks.json"
    shutil.copyfile(TAGGED, tasks)
    if state is not None:
        (folder / "state.json").write_bytes(state if isinstance(state, bytes) else state.encode())
    return tasks


def test_the_current_tag_comes_from_state_json_beside_the_file(tmp_path: Path) -> None:
    state = json.dumps({"currentTag": "feature-auth", "lastSwitched": "2025-06-04T12:00:00Z", "branchTagMapping": {}})
    path = project_with_state(tmp_path, state)

    tasks = read(path)

    assert tasks.name == "feature-auth"
    assert [task.id for task in tasks.tasks] == ["1", "2"]
    state_file = tmp_path / "project" / ".taskmaster" / "state.json"
    assert tasks.notes == [
        f"read tag 'feature-auth' (the current tag in {state_file}); the file's other tags: 'master'"
    ]
    assert read(path, tag="master").name == "master"  # --tag wins over the state


def test_a_relative_path_finds_its_state_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = project_with_state(tmp_path, '{"currentTag": "feature-auth"}')
    monkeypatch.chdir(path.parent)

    tasks = read_taskmaster(path.read_text(encoding="utf-8"), Path("tasks.json"), "tasks.json", ReadOptions())

    assert tasks.name == "feature-auth"


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ("{not json", "not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ('{"currentTag": 3}', 'it has no "currentTag" string'),
        ('["master"]', 'it has no "currentTag" string'),
        ("[" * 10_000, "nested too deeply"),
        (b'{"currentTag": "caf\xe9"}', "not UTF-8"),  # Latin-1
        ('{"currentTag": "master", "pad": "' + "x" * 70_000 + '"}', "over 65536 bytes"),
    ],
)
def test_a_bad_state_json_is_ignored_with_a_note(tmp_path: Path, state: str | bytes, why: str) -> None:
    path = project_with_state(tmp_path, state)

    tasks = read(path)

    assert tasks.name == "master"
    state_file = tmp_path / "project" / ".taskmaster" / "state.json"
    assert tasks.notes[0] == f"{state_file} ignored: {why}"


def test_a_state_json_that_is_a_fifo_is_not_read(tmp_path: Path) -> None:
    path = project_with_state(tmp_path, None)
    os.mkfifo(path.parents[1] / "state.json")  # reading it would wait for a writer forever

    tasks = read(path)

    assert tasks.name == "master"
    assert tasks.notes[0].endswith("state.json ignored: not a regular file")


def test_a_current_tag_the_file_lacks_is_one_error(tmp_path: Path) -> None:
    path = project_with_state(tmp_path, '{"currentTag": "gone"}')
    state_file = path.parents[1] / "state.json"

    with pytest.raises(PlanInvalid) as caught:
        read(path)

    assert caught.value.problems == [
        f"{path}:1: no tag 'gone' (the current tag in {state_file}) in the file; its tags: 'master', 'feature-auth'"
    ]


# --- the legacy golden file -----------------------------------------------------------------------------------------


def test_legacy_file_with_string_ids_parent_task_ids_and_missing_fields() -> None:
    text = LEGACY.read_text(encoding="utf-8")
    tasks = read(LEGACY)

    assert (tasks.name, tasks.description, tasks.notes) == (
        "taskmaster_legacy",
        "A chat front end for the finance agent",
        [],
    )
    assert [(t.id, t.line, t.status, t.done, t.hold, t.group, t.priority, edges(t)) for t in tasks.tasks] == [
        ("1", 11, "done", True, None, True, 2, [("1.1", SUBTASK_GROUP, 21), ("1.2", SUBTASK_GROUP, 30)]),
        ("1.1", 21, "done", True, None, False, 2, []),
        # a subtask left undone under a task marked done is not run: the list says its work is done
        ("1.2", 30, "in-progress", True, None, False, 2, [("1.1", EXPLICIT, 34)]),  # its task is done
        ("2", 43, "pending", False, None, False, 1, [("1", EXPLICIT, 48)]),  # "subtasks": null
        ("3", 56, "pending", False, None, False, 1, []),  # no status, dependencies or priority
        ("4", 62, "Done", True, None, False, 0, []),  # "Done", "LOW": read without regard to case
    ]
    assert by_id(tasks)["3"].mark is None
    for task in tasks.tasks:
        assert line_of(text, task.line).strip().startswith('"id": ')


def test_legacy_file_named_after_its_project_folder(tmp_path: Path) -> None:
    path = tmp_path / "finance agent" / "tasks" / "tasks.json"
    path.parent.mkdir(parents=True)
    shutil.copyfile(LEGACY, path)

    assert read(path).name == "finance-agent"
    assert read(path, tag="master").name == "finance-agent"  # an untagged file is task-master's master
    with pytest.raises(PlanInvalid) as caught:
        read(path, tag="feature")
    assert caught.value.problems == [
        f"{path}:1: no tag 'feature': the file is untagged ({{\"tasks\": [...]}}), one list"
    ]


# --- the file as written: BOM, CRLF, other indentation ---------------------------------------------------------------


def summary(tasks: TaskList) -> list[tuple[Any, ...]]:
    return [
        (t.id, t.status, t.done, t.hold is None, t.group, t.priority, [(e.on, e.reason) for e in t.after])
        for t in tasks.tasks
    ]


@pytest.mark.parametrize("variant", ["crlf_bom", "minified", "tabs"])
def test_the_same_list_however_it_is_written(variant: str) -> None:
    original = TAGGED.read_text(encoding="utf-8")
    document = json.loads(original)
    text = {
        "crlf_bom": "\ufeff" + original.replace("\n", "\r\n"),
        "minified": json.dumps(document, separators=(",", ":")),
        "tabs": json.dumps(document, indent="\t"),
    }[variant]

    tasks = read_taskmaster(text, TAGGED, str(TAGGED), ReadOptions())

    assert summary(tasks) == summary(read(TAGGED))
    for task in tasks.tasks:
        if task.mark is not None:
            assert text[task.mark.start : task.mark.end] == json.dumps(task.status)
    if variant == "crlf_bom":  # lines as a CRLF file counts them
        assert [t.line for t in tasks.tasks] == [t.line for t in read(TAGGED).tasks]
    if variant == "minified":
        assert {t.line for t in tasks.tasks} == {1}


# --- write-back --------------------------------------------------------------------------------------------------


def status_path(task_id: str) -> tuple[int, ...]:
    """Where a master task's object is in the golden file's document (its index, and its subtask's)."""
    task, _, sub = task_id.partition(".")
    indexes = {"1": 0, "2": 1, "3": 2, "4": 3, "5": 4, "6": 5}
    return (indexes[task], int(sub) - 1) if sub else (indexes[task],)


@pytest.mark.parametrize("variant", ["lf", "crlf_bom"])
def test_set_statuses_changes_the_status_tokens_and_nothing_else(variant: str) -> None:
    original = TAGGED.read_text(encoding="utf-8")
    if variant == "crlf_bom":
        original = "\ufeff" + original.replace("\n", "\r\n")
    tasks = by_id(read_taskmaster(original, TAGGED, "tasks.json", ReadOptions()))
    wanted = {"2": "done", "2.3": "in-progress", "5": "review", "6.1": "done"}
    spans: dict[MarkSpan, str] = {}
    for task_id, status in wanted.items():
        mark = tasks[task_id].mark
        assert mark is not None
        spans[mark] = status

    written = set_statuses(original, spans)

    # byte for byte: the text outside the spans is the original's
    at_original = at_written = 0
    for span in sorted(spans, key=lambda each: each.start):
        before = original[at_original : span.start]
        assert written[at_written : at_written + len(before)] == before
        at_written += len(before)
        token = json.dumps(spans[span])
        assert written[at_written : at_written + len(token)] == token
        at_written += len(token)
        at_original = span.end
    assert written[at_written:] == original[at_original:]
    assert written.startswith("\ufeff") == (variant == "crlf_bom")
    assert written.count("\r\n") == original.count("\r\n")
    # as JSON: the original with just those statuses changed (key order, unknown keys, the other tag, metadata)
    expected = json.loads(original.lstrip("\ufeff"))
    for task_id, status in wanted.items():
        where = status_path(task_id)
        entry = expected["master"]["tasks"][where[0]]
        if len(where) == 2:
            entry = entry["subtasks"][where[1]]
        entry["status"] = status
    assert json.loads(written.lstrip("\ufeff")) == expected
    assert list(json.loads(written.lstrip("\ufeff"))["master"]["tasks"][1]) == list(expected["master"]["tasks"][1])
    # read again: the same tasks on the same lines, in their new states
    again = by_id(read_taskmaster(written, TAGGED, "tasks.json", ReadOptions()))
    assert [(t.id, t.line) for t in again.values()] == [(t.id, t.line) for t in tasks.values()]
    assert {task_id: again[task_id].status for task_id in wanted} == wanted
    assert again["2"].done and again["5"].done and not again["6"].done
    assert again["2.3"].done  # its task is done: the list says the whole of it is finished


def test_set_statuses_with_nothing_to_change_and_with_a_longer_word() -> None:
    original = TAGGED.read_text(encoding="utf-8")
    assert set_statuses(original, {}) == original
    mark = by_id(read(TAGGED))["1"].mark
    assert mark is not None
    written = set_statuses(original, {mark: 'in "review"'})
    assert written == original[: mark.start] + '"in \\"review\\""' + original[mark.end :]
    assert by_id(read_taskmaster(written, TAGGED, "t", ReadOptions()))["1"].status == 'in "review"'


def test_set_statuses_refuses_a_span_that_is_not_a_string_token() -> None:
    original = TAGGED.read_text(encoding="utf-8")
    mark = by_id(read(TAGGED))["1"].mark
    assert mark is not None
    for bad in (
        MarkSpan(mark.start + 1, mark.end),  # inside the token
        MarkSpan(mark.start, mark.end - 1),
        MarkSpan(0, 1),  # the `{`
        MarkSpan(-3, 2),
    ):
        with pytest.raises(ValueError, match="not a string token"):
            set_statuses(original, {bad: "done"})
    nested = '["\\"\\"", 1]'  # the token "\"\"" holds the token "\"" from its third character
    with pytest.raises(ValueError, match="overlaps"):
        set_statuses(nested, {MarkSpan(1, 7): "done", MarkSpan(3, 7): "x"})


# --- problems: one line each, FILE:LINE ----------------------------------------------------------------------------


def test_not_json_names_the_decoders_line() -> None:
    assert problems('{\n  "master": {\n    "tasks": [\n      {"id": 1,}\n    ]\n  }\n}\n') == [
        "tasks.json:4: not JSON: Expecting property name enclosed in double quotes"
    ]
    assert problems("") == ["tasks.json:1: not JSON: Expecting value"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[]", "tasks.json:1: the top level is an array, not an object of tags or tasks"),
        ('\n\n  "tasks"', "tasks.json:3: the top level is a string, not an object of tags or tasks"),
        ("null", "tasks.json:1: the top level is null, not an object of tags or tasks"),
        (
            '{"master": {"tasks": {"1": {}}}}',
            "tasks.json:1: tag 'master': \"tasks\" is an object, not an array of tasks",
        ),
    ],
)
def test_a_file_that_is_not_a_task_list(text: str, problem: str) -> None:
    assert problems(text) == [problem]


def test_bad_ids_and_dependencies_are_each_one_line() -> None:
    text = """{
  "tasks": [
    {"title": "no id"},
    {"id": "abc", "title": "a word"},
    {"id": 0, "title": "zero"},
    {"id": 1.5, "title": "a fraction"},
    {"id": true, "title": "true"},
    {"id": "3.1", "title": "a subtask's id at the top"},
    {"id": 7, "title": "bad dependencies", "dependencies": [
      {"id": 1},
      "two",
      1.5,
      "1.2.3",
      0,
      null
    ]},
    {"id": 8, "dependencies": "1, 2"},
    {"id": 9, "subtasks": [
      {"id": "8.1", "title": "under the wrong task"},
      {"title": "no id"},
      {"id": "9.x"},
      42
    ]},
    "a task that is text",
    {"id": 10, "subtasks": {"id": 1}}
  ]
}"""
    assert problems(text) == [
        'tasks.json:3: a task without an "id"',
        "tasks.json:4: task id 'abc' is not a positive integer or \"N\"",
        'tasks.json:5: task id 0 is not a positive integer or "N"',
        'tasks.json:6: task id 1.5 is not a positive integer or "N"',
        'tasks.json:7: task id true is not a positive integer or "N"',
        "tasks.json:8: task id '3.1' is a subtask's id (N.M), not a task's",
        'tasks.json:10: task 7: dependency {…} is not a task id (a number, "N" or "N.M")',
        'tasks.json:11: task 7: dependency \'two\' is not a task id (a number, "N" or "N.M")',
        'tasks.json:12: task 7: dependency 1.5 is not a task id (a number, "N" or "N.M")',
        'tasks.json:13: task 7: dependency \'1.2.3\' is not a task id (a number, "N" or "N.M")',
        'tasks.json:14: task 7: dependency 0 is not a task id (a number, "N" or "N.M")',
        'tasks.json:15: task 7: dependency null is not a task id (a number, "N" or "N.M")',
        'tasks.json:17: task 8: "dependencies" is a string, not an array',
        "tasks.json:19: task 9: subtask id '8.1' names task 8, not its task 9",
        'tasks.json:20: task 9: a subtask without an "id"',
        'tasks.json:21: task 9: subtask id \'9.x\' is not a positive integer, "M" or "9.M"',
        "tasks.json:22: task 9: a subtask that is a number, not an object",
        "tasks.json:24: a task that is a string, not an object",
        'tasks.json:25: task 10: "subtasks" is an object, not an array',
    ]


def test_a_duplicate_key_names_both_lines() -> None:
    text = '{\n  "tasks": [\n    {\n      "id": 1,\n      "status": "done",\n      "status": "pending"\n    }\n  ]\n}'
    assert problems(text) == ["tasks.json:6: duplicate key 'status' (first at line 5)"]


def test_deep_nesting_is_one_line_however_deep() -> None:
    # the top object, "tasks", a task, then arrays in its metadata: 3 + k levels
    at_limit = '{"tasks": [{"id": 1, "metadata": ' + "[" * (MAX_NESTING - 3) + "]" * (MAX_NESTING - 3) + "}]}"
    assert [task.id for task in read_taskmaster(at_limit, Path("t.json"), "t.json", ReadOptions()).tasks] == ["1"]
    one_more = '{"tasks": [{"id": 1, "metadata": ' + "[" * (MAX_NESTING - 2) + "]" * (MAX_NESTING - 2) + "}]}"
    assert problems(one_more) == [f"tasks.json:1: nested more than {MAX_NESTING} levels deep"]
    deep = '{"tasks": [\n' + "[" * 200_000 + "]" * 200_000 + "]}"  # deeper than json.loads recurses
    assert problems(deep) == [f"tasks.json:2: nested more than {MAX_NESTING} levels deep"]
    unclosed = "[" * 1_000_000
    assert problems(unclosed) == [f"tasks.json:1: nested more than {MAX_NESTING} levels deep"]


def test_an_integer_beyond_pythons_digit_limit_names_its_line() -> None:
    text = '{\n  "tasks": [\n    {"id": ' + "9" * 5000 + "}\n  ]\n}"
    assert problems(text) == ["tasks.json:3: an integer of more than 4300 digits"]


def test_duplicate_ids_unknown_references_and_cycles_are_left_to_the_caller() -> None:
    text = """{"tasks": [
  {"id": 1, "dependencies": [2]},
  {"id": 2, "dependencies": [1, 99, "42.1"]},
  {"id": 1, "title": "again"}
]}"""
    tasks = read_taskmaster(text, Path("t.json"), "t.json", ReadOptions())
    assert [(t.id, t.line, edges(t)) for t in tasks.tasks] == [
        ("1", 2, [("2", EXPLICIT, 2)]),
        ("2", 3, [("1", EXPLICIT, 3), ("99", EXPLICIT, 3), ("42.1", EXPLICIT, 3)]),
        ("1", 4, []),
    ]


def test_many_problems_are_cut_short() -> None:
    text = '{"tasks": [\n' + ",\n".join('{"id": "x"}' for _ in range(80)) + "\n]}"
    found = problems(text)
    assert len(found) == 51
    assert found[-1] == "tasks.json: … and 30 more problems"


# --- quirks and what is left out -----------------------------------------------------------------------------------


def test_titles_become_one_clipped_line_and_unknown_values_are_noted() -> None:
    long_title = "Refactor\nthe   scheduler " + "x" * 1000
    text = json.dumps(
        {
            "tasks": [
                {"id": 1, "title": long_title, "priority": "urgent", "status": None},
                {"id": 2, "description": "\n  First line of the description\nsecond line", "status": 7},
                {"id": 3, "title": "", "description": ""},
                {
                    "id": 4,
                    "title": "nested",
                    "subtasks": [{"id": 1, "title": "sub", "subtasks": [{"id": 1}], "priority": "critical"}],
                },
                {"id": 5, "title": "NUL\u0000 in text", "details": "a\u0000b"},
            ]
        }
    )
    tasks = by_id(read_taskmaster(text, Path("t.json"), "t.json", ReadOptions()))

    title = tasks["1"].title
    assert len(title) == MAX_TITLE_CHARS and title.startswith("Refactor the scheduler xxx") and title.endswith("…")
    assert (tasks["1"].priority, tasks["1"].status, tasks["1"].mark) == (1, "pending", None)
    assert tasks["2"].title == "First line of the description"
    assert (tasks["2"].status, tasks["2"].mark) == ("pending", None)
    assert tasks["3"].title == "task 3"
    assert tasks["4.1"].priority == 3
    assert (tasks["5"].title, tasks["5"].description) == ("NUL in text", "ab")
    assert read_taskmaster(text, Path("t.json"), "t.json", ReadOptions()).notes == [
        "task 1: priority 'urgent' is not critical, high, medium or low; read as medium",
        "task 2: status 7 is not text; read as 'pending'",
        "subtask 4.1: its own subtasks are left out (task-master has one level)",
    ]


def test_subtasks_of_a_deferred_task_are_held_and_of_a_finished_one_done() -> None:
    text = json.dumps(
        {
            "tasks": [
                {
                    "id": 1,
                    "status": "deferred",
                    "subtasks": [{"id": 1, "status": "pending"}, {"id": 2, "status": "done"}],
                },
                {"id": 2, "status": "cancelled", "subtasks": [{"id": 1}]},
                {"id": 3, "dependencies": [1, 2]},
            ]
        },
        indent=2,
    )
    tasks = by_id(read_taskmaster(text, Path("t.json"), "t.json", ReadOptions()))

    assert tasks["1"].hold == "deferred in t.json"
    assert tasks["1.1"].hold == "its task 1 is deferred in t.json"
    assert (tasks["1.2"].done, tasks["1.2"].hold) == (True, None)
    assert (tasks["2"].done, tasks["2"].status) == (True, "cancelled")
    assert (tasks["2.1"].done, tasks["2.1"].hold) == (True, None)  # the list finished its task: not run
    assert [edge.on for edge in tasks["3"].after] == ["1", "2"]


def test_too_many_tasks_is_one_line() -> None:
    text = '{"tasks": [' + ",".join('{"id": 1}' for _ in range(100_001)) + "]}"
    assert problems(text) == ["tasks.json:1: 100,001 tasks and subtasks, more than the 100,000 a plan holds"]


# --- the scanner on its own ----------------------------------------------------------------------------------------


def test_scan_finds_paths_lines_and_string_spans() -> None:
    text = '\ufeff{\r\n  "a": [1, {"b": "x\\"y", "c": null}],\r\n  "d\\u0041": {"e": "\\u00e9"}\r\n}'
    layout = scan_json(text)

    assert set(layout.objects) == {(), ("a", 1), ("dA",)}
    assert set(layout.arrays) == {("a",)}
    assert layout.line_of(("a", 1), "b") == 2 and layout.line_of(("dA",), "e") == 3
    assert layout.item_line(("a",), 0) == 2 and layout.item_line(("a",), 5) is None
    span = layout.string_span(("a", 1), "b")
    assert span is not None and text[span.start : span.end] == '"x\\"y"'
    assert layout.string_span(("a", 1), "c") is None
    assert load_json(text) == {"a": [1, {"b": 'x"y', "c": None}], "dA": {"e": "é"}}


def test_scan_keeps_only_what_it_is_asked_for() -> None:
    text = json.dumps({"keep": {"x": "1"}, "drop": {"y": "2", "z": [{"w": 1}]}})
    layout = scan_json(text, keep=lambda path: path[:1] == ("keep",))
    assert set(layout.objects) == {("keep",)} and not layout.arrays
    with pytest.raises(JsonTextError, match="duplicate key 'y'"):
        scan_json('{"drop": {"y": 1, "y": 2}}', keep=lambda path: False)  # checked where not kept too


# --- bounded --------------------------------------------------------------------------------------------------------


def large_list(tasks: int, size: int) -> str:
    """A tagged tasks.json of `tasks` tasks (a third with two subtasks) padded to about `size` characters."""
    details = "Implement the step as the design notes describe it; keep the tests green. " * (size // tasks // 76)
    entries: list[dict[str, Any]] = []
    for number in range(1, tasks + 1):
        entry: dict[str, Any] = {
            "id": number,
            "title": f"Task {number}",
            "description": f"Part {number} of the work.",
            "details": details,
            "testStrategy": "The unit tests pass.",
            "priority": "high" if number % 2 else "medium",
            "dependencies": [number - 1] if number > 1 else [],
            "status": "pending",
        }
        if number % 3 == 0:
            entry["subtasks"] = [
                {"id": 1, "title": "first half", "dependencies": [], "status": "done", "parentId": "undefined"},
                {"id": 2, "title": "second half", "dependencies": [1], "status": "pending"},
            ]
        entries.append(entry)
    return json.dumps({"master": {"tasks": entries, "metadata": {"description": "large"}}}, indent=2)


def test_a_ten_megabyte_list_of_five_thousand_tasks_reads_whole() -> None:
    text = large_list(5000, 10_000_000)
    assert len(text.encode()) >= 10_000_000

    tasks = read_taskmaster(text, Path("tasks.json"), "tasks.json", ReadOptions())  # its time: `make bench`

    assert len([task for task in tasks.tasks if "." not in task.id]) == 5000
    assert len(tasks.tasks) == 5000 + 2 * (5000 // 3)
    last = tasks.tasks[-1]
    assert last.mark is not None and text[last.mark.start : last.mark.end] == '"pending"'


def test_the_write_back_of_a_large_list_is_exact() -> None:
    text = large_list(3000, 3_000_000)
    tasks = read_taskmaster(text, Path("tasks.json"), "tasks.json", ReadOptions()).tasks
    spans = {task.mark: "done" for task in tasks if task.mark is not None and task.status == "pending"}

    written = set_statuses(text, spans)

    expected = json.loads(text)
    for entry in expected["master"]["tasks"]:
        for each in [entry, *entry.get("subtasks", [])]:
            each["status"] = "done"
    assert json.loads(written) == expected
    assert len(written) == len(text) - 3 * len(spans)  # "pending" to "done", and no other character


def random_value(rng: random.Random, depth: int) -> Any:
    """A JSON value with strings that hold quotes, backslashes, escapes, non-ASCII and astral characters."""
    pieces = ['"', "\\", "\\\\", '\\"', "é", "\U0001f600", "\n", "\u2028", "{", "}", "[", "]", ":", ",", " ", "a", "0"]
    choice = rng.randrange(9 if depth < 5 else 6)
    if choice < 3:
        return "".join(rng.choice(pieces) for _ in range(rng.randrange(8)))
    if choice == 3:
        return rng.choice([0, -12, 3.5, 1e300, True, False, None])
    if choice < 6:
        return rng.randrange(10**6)
    if choice < 8:
        keys = {"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 4))) for _ in range(rng.randrange(5))}
        return {key: random_value(rng, depth + 1) for key in keys}
    return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]


def walk(value: Any, path: tuple[Any, ...] = ()) -> Any:
    """Every (path, container) of a value."""
    yield path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from walk(item, (*path, key))


@pytest.mark.parametrize("seed", range(40))
def test_scan_agrees_with_json_loads_on_random_documents(seed: int) -> None:
    rng = random.Random(seed)
    document = {"top": random_value(rng, 0), "more": [random_value(rng, 1) for _ in range(3)]}
    indent = rng.choice([None, 0, 2, "\t"])
    text = json.dumps(document, indent=indent, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.5:
        text = "\ufeff" + text.replace("\n", "\r\n")

    layout = scan_json(text)

    assert load_json(text) == document
    for path, value in walk(document):
        if isinstance(value, dict):
            found = layout.objects[path]
            assert list(found.members) == list(value)
            for key, item in value.items():
                span = layout.string_span(path, key)
                if isinstance(item, str):
                    assert span is not None and json.loads(text[span.start : span.end]) == item
                else:
                    assert span is None
        elif isinstance(value, list):
            assert len(layout.arrays[path].item_lines) == len(value)
    assert len(layout.objects) == sum(isinstance(value, dict) for _, value in walk(document))


@pytest.mark.parametrize(
    ("tag", "name"),
    [("feature/auth x", "feature-auth-x"), ("v1.2_rc-1", "v1.2_rc-1"), ("é/…", "taskmaster"), ("t" * 300, "t" * 128)],
)
def test_the_plan_is_named_after_its_tag_as_an_orch_id(tag: str, name: str) -> None:
    text = json.dumps({tag: {"tasks": [{"id": 1, "title": "one"}]}})
    assert read_taskmaster(text, Path("tasks.json"), "tasks.json", ReadOptions(tag=tag)).name == name


def test_more_dependencies_than_a_list_may_make_is_one_line() -> None:
    from orch.intake.tasklists.markdown import MAX_LIST_EDGES

    many = ",".join("1" for _ in range(MAX_LIST_EDGES + 1))
    text = '{"tasks": [{"id": 1, "title": "a"}, {"id": 2, "title": "b", "dependencies": [' + many + "]}]}"
    assert problems(text) == [f"tasks.json:1: the list makes more than {MAX_LIST_EDGES:,} dependencies"]
