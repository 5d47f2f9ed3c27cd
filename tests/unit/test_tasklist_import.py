"""A task list as an orch plan (orch.intake.tasklists.importing): the format told from the content, the list's
problems one line each naming `file:line`, and the plan document — done and held tasks, groups, a dry run's
executor, spec-kit's context documents, each task's source — validated as any plan."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orch.errors import PlanInvalid
from orch.executors import ExecutorName
from orch.intake.tasklists.importing import PlanInput, detect_format, load_any_plan, plan_document, read_tasklist
from orch.intake.tasklists.reading import ReadOptions
from tests.helpers import registry

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tasklists"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("plan.yaml", "name: p\ntasks: []\n", "plan"),
        ("plan.json", '{"name": "p", "tasks": []}', "plan"),
        ("tasks.json", '{"tasks": [{"id": 1, "title": "t"}]}', "taskmaster"),
        ("x.json", '{"master": {"tasks": [], "metadata": {}}}', "taskmaster"),
        ("x.json", '{"name": {"tasks": []}}', "taskmaster"),  # a tag named "name"
        ("x.json", "[[[", "plan"),  # not an object: the plan reader names the problem
        ("tasks.md", "## Phase 1: Setup\n- [ ] T001 a\n- [x] T002 [P] b\n", "speckit"),
        ("tasks.md", "- [ ] 1. a\n  - [ ]* 1.1 b\n- [-] 2. c\n", "kiro"),
        ("todo.md", "- [ ] T001.001 a\n- [ ] T001.002 b (depends on T001.001)\n", "checklist"),
        ("todo.md", "- [ ] setup-db: make it\n", "checklist"),
    ],
)
def test_the_format_is_told_from_the_content(name: str, text: str, expected: str) -> None:
    assert detect_format(Path(name), text) == expected


def test_a_list_under_dot_kiro_is_kiro_whatever_its_ids() -> None:
    assert detect_format(Path("/r/.kiro/specs/f/tasks.md"), "- [ ] A1 x\n") == "kiro"


def problems(tmp_path: Path, text: str, name: str = "list.md") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PlanInvalid) as caught:
        load_any_plan(path, registry(), how=PlanInput())
    return [line.replace(str(tmp_path) + "/", "") for line in caught.value.problems]


def test_a_lists_problems_are_one_line_each_naming_its_line(tmp_path: Path) -> None:
    assert problems(tmp_path, "- [ ] A1 one\n- [ ] A2 two\n- [ ] A1 three\n") == [
        "list.md:3: duplicate task id 'A1' (first at line 1)"
    ]
    assert problems(
        tmp_path, "- [ ] A1 one (depends on A3)\n- [ ] A2 two (depends on A1)\n- [ ] A3 x (depends on A2)\n"
    ) == ["list.md:1: dependency cycle: A1 (line 1) -> A2 (line 2) -> A3 (line 3) -> A1 (line 1)"]
    assert problems(tmp_path, "- [ ] A1 one\n  - blocked by: Infrastructure FDB operational\n") == [
        "list.md:2: task 'A1' depends on unknown task 'Infrastructure FDB operational'"
    ]
    assert problems(tmp_path, "# nothing to do\n\nJust prose.\n", "empty.md") == [
        "empty.md: no tasks found, read as a Markdown checklist (--format reads it as another)"
    ]


def test_a_spec_kit_feature_becomes_a_plan_working_in_its_repository(tmp_path: Path) -> None:
    feature = tmp_path / "repo" / "specs" / "001-timezone-utility"
    (feature / "contracts").mkdir(parents=True)
    for name in ("spec.md", "plan.md", "data-model.md"):
        (feature / name).write_text("# doc\n")
    shutil.copy(GOLDEN / "speckit_tasks.md", feature / "tasks.md")
    plan = load_any_plan(feature / "tasks.md", registry(), how=PlanInput())

    assert plan.name == "001-timezone-utility"
    assert plan.workdir == tmp_path / "repo"
    assert plan.origin is not None and plan.origin.format == "speckit"
    by_key = {task.key: task for task in plan.tasks}
    assert by_key["T001"].done and not by_key["T005"].done
    folder = "specs/001-timezone-utility"
    context = (
        f"Context (read these first): {folder}/spec.md, {folder}/plan.md, {folder}/data-model.md, {folder}/contracts"
    )
    assert by_key["T005"].description.endswith(context)
    assert "data model" not in by_key["T005"].route_reason  # routed on its own words, not on `data-model.md`
    assert by_key["T005"].files == ("src/tzutil/offsets.py",)
    assert by_key["T005"].source == {
        "format": "speckit",
        "file": str(feature / "tasks.md"),
        "line": by_key["T005"].source["line"],  # type: ignore[index]
        "id": "T005",
        "status": " ",
    }
    assert {"T008", "T009", "T010", "T010a", "T011", "T013"} <= set(by_key["T014"].after)  # the en-dash range


def test_a_dry_run_overrides_every_executor_and_groups_run_nothing() -> None:
    shell = load_any_plan(GOLDEN / "taskmaster_tagged.json", registry(), how=PlanInput(executor="shell"))
    by_key = {task.key: task for task in shell.tasks}
    assert by_key["2"].executor is ExecutorName.NOOP  # a group: its subtasks do the work
    assert by_key["3"].executor is ExecutorName.SHELL and by_key["3"].command == "echo 'orch dry run: task 3'"
    plain = load_any_plan(GOLDEN / "taskmaster_tagged.json", registry(), how=PlanInput())
    assert {task.key: task.executor for task in plain.tasks}["3"] is not ExecutorName.SHELL
    with pytest.raises(PlanInvalid, match="--executor overrides the executors of a task list"):
        load_any_plan(GOLDEN.parents[1] / ".." / "examples" / "demo.yaml", registry(), how=PlanInput(executor="noop"))


def test_the_plan_document_keeps_done_held_and_where_each_task_was_written() -> None:
    read = read_tasklist(GOLDEN / "taskmaster_tagged.json", "taskmaster", ReadOptions(), "tasks.json")
    document = plan_document(read, workdir=".")
    tasks = {task["id"]: task for task in document["tasks"]}
    assert document["workdir"] == "." and document["name"] == "master"
    assert tasks["1"]["done"] is True and "hold" not in tasks["1"]
    held = [task for task in tasks.values() if "hold" in task]
    assert held and all(task["hold"].startswith("deferred in ") for task in held)
    assert all(task["source"]["format"] == "taskmaster" for task in tasks.values())
