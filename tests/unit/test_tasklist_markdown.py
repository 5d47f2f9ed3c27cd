"""The Markdown task-list readers: spec-kit, Kiro and plain checklists (orch.intake.tasklists.speckit, kiro,
checklist) and what they share (orch.intake.tasklists.markdown), against golden files written with the quirks real
files have."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from orch.errors import PlanInvalid
from orch.intake.plan import MAX_TITLE_CHARS
from orch.intake.tasklists import markdown
from orch.intake.tasklists.checklist import read_checklist, trailing_clause
from orch.intake.tasklists.kiro import read_kiro
from orch.intake.tasklists.markdown import (
    IdIndex,
    Line,
    done_mark_of,
    iter_lines,
    path_in,
    plan_name,
    split_id_list,
)
from orch.intake.tasklists.model import EXPLICIT, ORDER, PHASE_BARRIER, SUBTASK_GROUP, TaskList
from orch.intake.tasklists.reading import ReadOptions
from orch.intake.tasklists.speckit import read_speckit

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "tasklists"
Reader = Callable[[str, Path, str, ReadOptions], TaskList]
Edge = tuple[str, str, int]

PB, OR, EX, SG = PHASE_BARRIER, ORDER, EXPLICIT, SUBTASK_GROUP


def edges_of(tasks: TaskList) -> dict[str, set[Edge]]:
    return {task.id: {(dep.on, dep.reason, dep.line) for dep in task.after} for task in tasks.tasks}


def assert_marks(tasks: TaskList, text: str) -> None:
    """Every task's mark span holds exactly its mark character."""
    for task in tasks.tasks:
        assert task.mark is not None
        assert task.mark.end == task.mark.start + 1
        assert text[task.mark.start : task.mark.end] == task.status, task.id


def feature_folder(tmp_path: Path, golden: str, *parts: str) -> Path:
    """The golden file copied to tmp_path/<parts>/tasks.md; its path."""
    folder = tmp_path.joinpath(*parts)
    folder.mkdir(parents=True)
    path = folder / "tasks.md"
    shutil.copyfile(GOLDEN / golden, path)
    return path


def read(reader: Reader, text: str, name: str = "tasks.md", include_optional: bool = False) -> TaskList:
    return reader(text, Path("/nowhere") / name, name, ReadOptions(include_optional=include_optional))


# --- spec-kit ---------------------------------------------------------------------------------------------------

SPECKIT_EDGES: dict[str, set[Edge]] = {
    "T000": set(),
    "T001": {("T000", PB, 17)},
    "T002": {("T001", OR, 18)},
    "T003": {("T001", OR, 19)},
    "T004": {("T002", PB, 29), ("T003", PB, 29)},
    "T005": {("T004", OR, 30)},
    "T006": {("T004", OR, 31)},
    "T007": {("T004", OR, 32), ("T005", OR, 32), ("T006", OR, 32)},
    "T007a": {("T007", OR, 33)},
    "T008": {("T007", OR, 34)},
    "T009": {("T007", OR, 35)},
    "T010": {("T007", OR, 36)},
    "T010a": {("T007", OR, 37)},
    "T011": {
        ("T007", EX, 38),
        ("T007a", OR, 38),
        ("T008", OR, 38),
        ("T009", OR, 38),
        ("T010", OR, 38),
        ("T010a", OR, 38),
    },
    "T013": {("T011", OR, 39)},
    # the en-dash range: every id between by number (T010a too, T012 absent), not the out-of-order T085
    "T014": {
        ("T008", EX, 40),
        ("T009", EX, 40),
        ("T010", EX, 40),
        ("T010a", EX, 40),
        ("T011", EX, 40),
        ("T013", EX, 40),
    },
    "T085": {("T014", OR, 41), ("T004", EX, 42)},
    "T015": {("T085", PB, 57)},
    "T016": {("T085", PB, 58)},
    "T017": {("T015", OR, 62), ("T016", OR, 62), ("T011", EX, 62)},
    "T018": {("T017", OR, 63)},
    "T019": {("T018", PB, 67)},
    "T020": {("T019", OR, 68)},
}
SPECKIT_LINES = {"T000": 6, "T001": 17, "T002": 18, "T003": 19, "T004": 29, "T085": 41, "T015": 57, "T020": 68}
SPECKIT_FILES = {
    "T000": ["docs/baseline.md"],
    "T001": ["src/tzutil/"],
    "T002": ["pyproject.toml"],
    "T003": [".github/workflows/ci.yml"],
    "T007": ["src/tzutil/tzdb.py"],
    "T011": ["src/tzutil/gzip_zones.py"],
    "T085": ["src/tzutil/cli.py"],  # not `MessageDigest.isEqual`, not the URL
    "T017": ["src/tzutil/convert.py"],  # not `convert()`
    "T019": ["README.md"],
    "T020": ["quickstart.md"],
}
SPECKIT_PHASES = [
    ["T000"],
    ["T001", "T002", "T003"],
    ["T004", "T005", "T006", "T007", "T007a", "T008", "T009", "T010", "T010a", "T011", "T013", "T014", "T085"],
    ["T015", "T016", "T017", "T018"],
    ["T019", "T020"],
]


def test_speckit_golden_reads_ids_edges_files_marks_and_the_feature(tmp_path: Path) -> None:
    path = feature_folder(tmp_path, "speckit_tasks.md", "specs", "001-timezone-utility")
    for context in ("spec.md", "plan.md", "data-model.md"):
        (path.parent / context).write_text("# context\n")
    (path.parent / "contracts").mkdir()
    (path.parent / "research.md").mkdir()  # a folder, not the file: not context
    text = path.read_text(encoding="utf-8")

    tasks = read_speckit(text, path, "specs/001-timezone-utility/tasks.md", ReadOptions())

    assert tasks.format == "speckit"
    assert tasks.name == "001-timezone-utility"
    assert tasks.context_files == ["spec.md", "plan.md", "data-model.md", "contracts/"]
    assert tasks.description == "Tasks: Timezone Utility"
    assert edges_of(tasks) == SPECKIT_EDGES
    assert [task.id for task in tasks.tasks] == list(SPECKIT_EDGES)
    by_id = {task.id: task for task in tasks.tasks}
    assert {task_id: by_id[task_id].line for task_id in SPECKIT_LINES} == SPECKIT_LINES
    assert {task_id: by_id[task_id].files for task_id in SPECKIT_FILES} == SPECKIT_FILES
    assert [task.id for task in tasks.tasks if task.done] == ["T000", "T001", "T002", "T003", "T004"]
    assert {task.id: task.status for task in tasks.tasks if task.status != " "} == {
        "T000": "x", "T001": "x", "T002": "X", "T003": "x", "T004": "x", "T018": "-",
    }  # fmt: skip
    assert tasks.done_mark == "x"  # four lowercase to one uppercase
    assert_marks(tasks, text)
    assert by_id["T014"].title == "Build the repository in `src/tzutil/repo.py`"  # the clause left out
    assert by_id["T015"].description == ("Phase 3: User Story 1 - Convert a time (Priority: P1) 🎯 MVP\nUser story US1")
    assert by_id["T016"].description == by_id["T015"].description  # tags in either order
    assert by_id["T085"].description == (
        "Phase 2: Foundational (Blocking Prerequisites)\n- Depends on: T004\n"
        "- Keep the flag name short; see `MessageDigest.isEqual` and https://example.com/a/b.html."
    )
    assert by_id["T000"].description == ""  # before any phase
    source = "specs/001-timezone-utility/tasks.md"
    assert tasks.notes == [
        f"{source}:23: a checkbox without a T-id is not a task: '- [ ] Checkpoint: `make check` passes'",
        f"{source}:46: in a fenced code block, not a task: '- [ ] T099 [P] Not a task: an example inside a code block'",
    ]


def closure(tasks: TaskList) -> dict[str, set[str]]:
    """Every task's ancestors (what it waits for, directly or not)."""
    direct = {task.id: {dep.on for dep in task.after} for task in tasks.tasks}
    ancestors: dict[str, set[str]] = {}
    for task_id in direct:  # the file's order: order and barrier edges point backwards
        ancestors[task_id] = set()
        for on in direct[task_id]:
            ancestors[task_id] |= {on} | ancestors.get(on, set())
    return ancestors


def test_speckit_edges_mean_what_spec_kit_says_though_transitively_reduced() -> None:
    tasks = read(read_speckit, (GOLDEN / "speckit_tasks.md").read_text(encoding="utf-8"))
    ancestors = closure(tasks)
    parallel = {"T002", "T003", "T005", "T006", "T007a", "T008", "T009", "T010", "T010a", "T013", "T085", "T015"}
    parallel |= {"T016", "T019"}
    for number, phase in enumerate(SPECKIT_PHASES):
        earlier = {task_id for before in SPECKIT_PHASES[:number] for task_id in before}
        for position, task_id in enumerate(phase):
            assert earlier <= ancestors[task_id], task_id  # the phase barrier
            before = phase[:position]
            waited = set(before)  # without [P]: every task before it in the phase
            if task_id in parallel:  # with: the nearest without [P] (and so what it waits for), not its [P] peers
                serial = [other for other in before if other not in parallel]
                waited = set(before[: before.index(serial[-1]) + 1]) if serial else set()
            assert ancestors[task_id] & set(phase) == waited, task_id
    assert "T015" not in ancestors["T016"] and "T016" not in ancestors["T015"]  # two [P] heads run together


def test_speckit_crlf_and_bom_read_alike_with_marks_at_their_offsets() -> None:
    lf = (GOLDEN / "speckit_tasks.md").read_text(encoding="utf-8")
    crlf = "\ufeff" + lf.replace("\n", "\r\n")
    plain, windows = read(read_speckit, lf), read(read_speckit, crlf)
    assert edges_of(windows) == edges_of(plain) == SPECKIT_EDGES
    for a, b in zip(plain.tasks, windows.tasks, strict=True):
        assert (a.id, a.title, a.line, a.files, a.description, a.status) == (
            b.id, b.title, b.line, b.files, b.description, b.status,
        )  # fmt: skip
    assert_marks(windows, crlf)
    assert windows.tasks[0].mark is not None and windows.tasks[0].mark.start == crlf.index("[x] T000") + 1


def test_speckit_lines_before_and_under_tasks() -> None:
    text = (
        "- [ ] T001 First, before any phase\n"
        "  continued in `docs/first.md`\n"
        "\n"
        "  - [ ] a nested checkbox without an id\n"
        "<!--\n- [ ] T009 commented out\n-->\n"
        "## Phase 1: One\n"
        "- [ ] T002 [P] Parallel head\n"
        "- [x] T003 [P] Another (depends on T001) and (depends on T002)\n"
        "* [ ] T004 Star bullet\n"
        "1. [ ] T005 [P] Ordered bullet\n"
    )
    tasks = read(read_speckit, text)
    assert edges_of(tasks) == {
        "T001": set(),
        "T002": {("T001", PB, 9)},
        "T003": {("T001", EX, 10), ("T002", EX, 10)},  # a [P] head: the barrier, made explicit by its clause
        "T004": {("T002", OR, 11), ("T003", OR, 11)},
        "T005": {("T004", OR, 12)},
    }
    first = tasks.tasks[0]
    assert first.description == "continued in `docs/first.md`\n\n- [ ] a nested checkbox without an id"
    assert first.files == ["docs/first.md"]
    assert tasks.done_mark == "x"
    assert tasks.notes == [
        "tasks.md:4: a checkbox without a T-id is not a task: '- [ ] a nested checkbox without an id'",
        "tasks.md:6: in an HTML comment, not a task: '- [ ] T009 commented out'",
    ]
    assert read(read_speckit, "- [ ] T001 a\n").done_mark == "X"  # spec-kit's own, when the file shows none


def test_speckit_unknown_range_ends_and_absurd_widths_are_kept_for_the_list_to_report() -> None:
    text = "- [ ] T001 a\n- [ ] T002 b\n- [ ] T003 c (depends on T001\u2013T99999999, T000-T002, T777)\n- [ ] T004 d\n"
    tasks = read(read_speckit, text)  # an absurd width is never built (pytest's timeout stands guard)
    # every id between but T003's own (a range that spans it means the others), the unknown ends as written
    assert {dep.on for dep in tasks.tasks[2].after} == {"T001", "T002", "T004", "T99999999", "T000", "T777"}
    assert read(read_speckit, "- [ ] T003 c (depends on T003)\n").tasks[0].after[0].on == "T003"  # named: a cycle


def test_speckit_clause_naming_no_ids_is_an_edge_to_its_text() -> None:
    tasks = read(read_speckit, "- [ ] T001 a (depends on the schema being merged)\n")
    assert edges_of(tasks) == {"T001": {("the schema being merged", EX, 1)}}


def test_speckit_title_is_clipped_and_never_blank() -> None:
    tasks = read(read_speckit, "- [ ] T001 " + "word " * 300 + "\n- [ ] T002\n")
    assert len(tasks.tasks[0].title) == MAX_TITLE_CHARS and tasks.tasks[0].title.endswith("…")
    assert tasks.tasks[1].title == "T002"


def test_speckit_notes_beyond_twenty_are_counted() -> None:
    tasks = read(read_speckit, "- [ ] Checkpoint\n" * 25)
    assert len(tasks.notes) == 21
    assert tasks.notes[-1] == "tasks.md: … and 5 more notes"


def test_speckit_edges_beyond_the_bound_refuse_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(markdown, "MAX_LIST_EDGES", 30)
    lines = [f"- [ ] T{number:03d} [P] t" for number in range(1, 21)]
    with pytest.raises(PlanInvalid) as refused:
        read(read_speckit, "\n".join([*lines, "- [ ] T100 all (depends on T001\u2013T020)"]))
    assert refused.value.problems == ["tasks.md:21: the list makes more than 30 dependencies (ranges and barriers)"]
    # an all-[P] phase after an all-[P] phase is refused before its product is made
    with pytest.raises(PlanInvalid, match=r"tasks\.md:13: the list makes more than 30"):
        read(read_speckit, "\n".join(["## Phase 1", *lines[:10], "## Phase 2", *lines[10:]]))


def test_speckit_bounds_on_tasks_and_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(markdown, "MAX_LIST_TASKS", 3)
    with pytest.raises(PlanInvalid, match=r"^tasks\.md:4: more than 3 tasks in one list$"):
        read(read_speckit, "".join(f"- [ ] T{number:03d} t\n" for number in range(1, 6)))
    monkeypatch.setattr(markdown, "MAX_LIST_LINES", 10)
    with pytest.raises(PlanInvalid, match=r"^tasks\.md:11: more than 10 lines \(21\)$"):
        read(read_speckit, "\n" * 20)
    monkeypatch.setattr(markdown, "MAX_LINE_CHARS", 40)
    tasks = read(read_speckit, "- [ ] T001 " + "x" * 50 + " (depends on T000)")
    assert tasks.tasks[0].after == []
    assert tasks.notes == ["tasks.md:1: over 40 characters: read as its first 40"]


# --- Kiro -------------------------------------------------------------------------------------------------------

KIRO_EDGES: dict[str, set[Edge]] = {
    "1": set(),
    "2": {("1", OR, 7), ("2.1", SG, 7), ("2.2", SG, 7), ("2.4", SG, 7)},
    "2.1": {("1", SG, 8)},
    "2.2": {("2.1", OR, 11)},
    "2.4": {("2.1", OR, 15), ("2.2", OR, 15), ("1", EX, 16)},  # through the optional 2.3 to what it waits for
    "3": {("2", OR, 19), ("3.1", SG, 19), ("3.2", SG, 19), ("3.4", SG, 19)},
    "3.1": {("2", SG, 20)},
    "3.2": {("2", SG, 22)},
    "3.4": {("3.1", EX, 26), ("3.2", OR, 25), ("2.1", EX, 26), ("2.2", EX, 26)},
    "4": {("3", OR, 28)},
    "6": {("3", OR, 33), ("4", OR, 33)},  # through the optional group 5
}
KIRO_EDGES_WITH_OPTIONAL: dict[str, set[Edge]] = {
    "1": set(),
    "2": {("1", OR, 7), ("2.1", SG, 7), ("2.2", SG, 7), ("2.3", SG, 7), ("2.4", SG, 7)},
    "2.1": {("1", SG, 8)},
    "2.2": {("2.1", OR, 11)},
    "2.3": {("2.1", OR, 13), ("2.2", OR, 13)},
    "2.4": {("2.3", OR, 15), ("1", EX, 16)},
    "3": {("2", OR, 19), ("3.1", SG, 19), ("3.2", SG, 19), ("3.3", SG, 19), ("3.4", SG, 19)},
    "3.1": {("2", SG, 20)},
    "3.2": {("2", SG, 22)},
    "3.3": {("3.1", OR, 23), ("3.2", OR, 23)},
    "3.4": {("3.3", OR, 25), ("2.3", EX, 26), ("3.1", EX, 26)},
    "4": {("3", OR, 28)},
    "5": {("3", OR, 31), ("4", OR, 31), ("5.1", SG, 31)},
    "5.1": {("3", SG, 32), ("4", SG, 32)},
    "6": {("5", OR, 33)},
}


def test_kiro_golden_groups_order_optional_and_annotations(tmp_path: Path) -> None:
    path = feature_folder(tmp_path, "kiro_tasks.md", ".kiro", "specs", "warband-duplication")
    text = path.read_text(encoding="utf-8")

    tasks = read_kiro(text, path, ".kiro/specs/warband-duplication/tasks.md", ReadOptions())

    assert (tasks.format, tasks.name, tasks.description) == ("kiro", "warband-duplication", "Implementation Plan")
    assert edges_of(tasks) == KIRO_EDGES
    assert [task.id for task in tasks.tasks] == list(KIRO_EDGES)
    by_id = {task.id: task for task in tasks.tasks}
    assert [task.id for task in tasks.tasks if task.group] == ["2", "3"]
    assert by_id["2"].status == "-" and not by_id["2"].done  # in progress: it runs
    assert [task.id for task in tasks.tasks if task.done] == ["1", "2.1"]
    assert {task.id: task.line for task in tasks.tasks} == {
        "1": 3, "2": 7, "2.1": 8, "2.2": 11, "2.4": 15, "3": 19, "3.1": 20, "3.2": 22, "3.4": 25, "4": 28, "6": 33,
    }  # fmt: skip
    assert {task.id: task.success for task in tasks.tasks if task.success} == {
        "1": "Requirements: 1.1",
        "2.1": "Requirements: 2.1, 2.2",
        "2.2": "Requirements: 2.3",
        "3.1": "Requirements: 7.4, 7.8",
        "4": "Requirements: All",
    }
    assert {task.id: task.files for task in tasks.tasks if task.files} == {
        "2.1": ["src/models/warband.ts", "src/models/types.ts"],
        "2.2": ["src/models/validate.ts"],
        "2.4": ["src/models/serialize.ts"],
        "3.1": ["src/routes/warbands.ts"],
        "3.2": ["src/ui/WarbandList.tsx"],
        "4": ["docs/guide.md"],
    }
    assert by_id["2.2"].title == "Validate warbands in `src/models/validate.ts`"  # no "(P)"
    assert by_id["2.1"].description == "- Create the interfaces in src/models/types.ts\n- _Requirements: 2.1, 2.2_"
    assert by_id["2.4"].description == "- _Depends: 1_\n- _Boundary: WarbandSerializer_"
    assert tasks.done_mark == "x"
    assert_marks(tasks, text)
    source = ".kiro/specs/warband-duplication/tasks.md"
    assert tasks.notes == [
        f"{source}:34: a checkbox without a task number is not a task: '- [ ] Ask the user if questions arise'",
        f"{source}:13: optional task '2.3' left out (include optional tasks to run it)",
        f"{source}:23: optional task '3.3' left out (include optional tasks to run it)",
        f"{source}:31: optional task '5' left out (include optional tasks to run it)",
        f"{source}:32: sub-task of an optional task '5.1' left out (include optional tasks to run it)",
    ]


def test_kiro_include_optional_runs_them_in_their_place() -> None:
    text = (GOLDEN / "kiro_tasks.md").read_text(encoding="utf-8")
    tasks = read(read_kiro, text, include_optional=True)
    assert edges_of(tasks) == KIRO_EDGES_WITH_OPTIONAL
    assert [task.id for task in tasks.tasks if task.group] == ["2", "3", "5"]
    assert_marks(tasks, text)


def test_kiro_flat_parallel_majors_and_a_chain_of_optional_tasks() -> None:
    text = "\n".join(
        [
            "- [ ] 1. (P) First",
            "- [ ] 2. (P) Second",
            "- [X] 3. Third waits for both",
            *[f"- [ ]* 3.{number} optional {number}" for number in range(1, 2_001)],
            "- [ ] 3.2001 The only kept sub-task",
            "- [ ] 9.1 A sub-task without its major",
        ]
    )
    tasks = read(read_kiro, text)
    assert edges_of(tasks) == {
        "1": set(),
        "2": set(),
        "3": {("1", OR, 3), ("2", OR, 3), ("3.2001", SG, 3)},
        "3.2001": {("1", OR, 2004), ("2", OR, 2004)},  # its order edge, through 2,000 optional tasks
        "9.1": {("3", OR, 2005)},
    }
    assert tasks.done_mark == "X"


# --- checklists -------------------------------------------------------------------------------------------------

CHECKLIST_EDGES: dict[str, set[Edge]] = {
    "T001.001": set(),
    "T001.009": set(),
    "setup-db": set(),
    "T008.001": set(),
    "T008.002": {("T008.001", EX, 12), ("T001.009", EX, 12)},
    "T008.003": {("T008.002", EX, 13)},
    "T008.004": {("T008.001", EX, 14), ("setup-db", EX, 14)},
    "T008.005": {("Infrastructure FDB operational", EX, 15)},
    "T008.006": {("T008.001", EX, 16), ("T008.002", EX, 16), ("T008.003", EX, 16)},
    "T009.001": {("T008.003", EX, 18)},  # not T008.002: "see T008.002 for context" is prose
    "T009.002": {("T009.001", EX, 21)},
    "T009.003": set(),  # "— after lunch" names no ids
    "L23": set(),
}


def test_checklist_golden_only_explicit_clauses_make_edges(tmp_path: Path) -> None:
    path = feature_folder(tmp_path, "checklist.md", "docs")
    text = path.read_text(encoding="utf-8")

    tasks = read_checklist(text, path, "docs/tasks.md", ReadOptions())

    assert (tasks.format, tasks.name, tasks.description) == ("checklist", "tasks", "V2 Task List")
    assert edges_of(tasks) == CHECKLIST_EDGES
    assert [task.id for task in tasks.tasks] == list(CHECKLIST_EDGES)
    by_id = {task.id: task for task in tasks.tasks}
    assert {task.id: task.title for task in tasks.tasks} == {
        "T001.001": "Provision the Redis cluster in `infra/redis.tf`",
        "T001.009": "Configure backups for `infra/backup.tf`",
        "setup-db": "Create the database schema in db/schema.sql",
        "T008.001": "Add the cache client in `src/cache/client.py`",
        "T008.002": "Wire Redis cache",
        "T008.003": "Load test",
        "T008.004": "Warm the cache",
        "T008.005": "Tune eviction",
        "T008.006": "Measure hit rates",
        "T009.001": "Docs; see T008.002 for context, written after the rollout",
        "T009.002": "Proofread the docs in docs/cache.md",
        "T009.003": "Before-and-after screenshots — after lunch",
        "L23": "Tidy up the dashboards",
    }
    assert {task.id: task.files for task in tasks.tasks if task.files} == {
        "T001.001": ["infra/redis.tf"],
        "T001.009": ["infra/backup.tf"],
        "setup-db": ["db/schema.sql"],
        "T008.001": ["src/cache/client.py"],
        "T009.002": ["docs/cache.md"],
    }
    assert [task.id for task in tasks.tasks if task.done] == ["T001.001", "T001.009", "setup-db"]
    assert by_id["T009.002"].line == 20 and not by_id["T009.002"].group  # a nested item: an ordinary task
    assert by_id["T009.001"].description == (
        "T008 Caching\n- depends on: T008.003\n- Mention the blocked by: field in the guide"
    )
    assert tasks.done_mark == "x"
    assert_marks(tasks, text)
    assert tasks.notes == [
        "docs/tasks.md:23: no id after the box: named 'L23'",
        "docs/tasks.md:22: 'after lunch' names no task ids: not a dependency",
    ]


def test_checklist_blocked_by_prose_is_an_edge_to_its_text_clipped() -> None:
    tasks = read(read_checklist, "- [ ] A1 Ship — blocked by: " + "legal review " * 30 + "\n")
    (dependency,) = tasks.tasks[0].after
    assert dependency.reason == EXPLICIT and dependency.line == 1
    assert len(dependency.on) == markdown.MAX_CLAUSE_TEXT and dependency.on.startswith("legal review legal")


@pytest.mark.parametrize(
    ("text", "title", "keyword", "ids"),
    [
        ("Wire (depends on A1, B2)", "Wire", "depends on", "A1, B2"),
        ("Wire (Depends On: A1).", "Wire", "depends on", "A1"),
        ("Load test — blocked by: T1", "Load test", "blocked by", "T1"),
        ("Load test—blocked by: T1", "Load test", "blocked by", "T1"),
        ("Tune; blocked by: Infra up", "Tune", "blocked by", "Infra up"),
        ("Tune, depends on: T1", "Tune", "depends on", "T1"),
        ("Warm - after T1", "Warm", "after", "T1"),
        ("Warm -- after T1 and T2", "Warm", "after", "T1 and T2"),
        ("Wait (after T1)", "Wait", "after", "T1"),
        ("Handle before-after T1", None, None, None),
        ("Docs; see T8 for context", None, None, None),
        ("Run it after T1", None, None, None),
        ("Tune, after T1", None, None, None),
        ("Wire (depends on T1) and more", None, None, None),
    ],
)
def test_checklist_trailing_clause_forms(text: str, title: str | None, keyword: str | None, ids: str | None) -> None:
    stripped, clause = trailing_clause(text, 7)
    if title is None:
        assert (stripped, clause) == (text, None)
    else:
        assert clause is not None
        assert (stripped, clause.keyword, clause.text, clause.line) == (title, keyword, ids, 7)


@pytest.mark.parametrize(
    ("rest", "task_id"),
    [("T001.009 a", "T001.009"), ("A1: a", "A1"), ("setup-db: a", "setup-db"), ("**T2** a", "T2"), ("1. a", "1")],
)
def test_checklist_ids(rest: str, task_id: str) -> None:
    assert read(read_checklist, f"- [ ] {rest}\n").tasks[0].id == task_id


def test_checklist_items_without_an_id_are_named_by_line() -> None:
    tasks = read(read_checklist, "intro\n- [ ] buy milk\n- [ ] " + "A" * 200 + "1 too long\n")
    assert [task.id for task in tasks.tasks] == ["L2", "L3"]
    assert tasks.tasks[0].title == "buy milk"


# --- what they share ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "loose", "path"),
    [
        ("src/a.py", False, "src/a.py"),
        ("./src/a.py", False, "src/a.py"),
        ("pom.xml", False, "pom.xml"),
        (".env.example", False, ".env.example"),
        ("Dockerfile", False, "Dockerfile"),
        ("src/components/", False, "src/components/"),
        ("a/b/c", False, "a/b/c"),
        ("app/[id]/page.tsx", False, "app/[id]/page.tsx"),
        ("[ab]" * 8 + ".py", False, "[ab]" * 8 + ".py"),
        ("[ab]" * 9 + ".py", False, None),  # beyond MAX_FILE_PATTERN_SETS
        ("x" * 300 + ".py", False, None),
        ("/abs/a.py", False, None),
        ("../a.py", False, None),
        ("src/../a.py", False, None),
        ("https://x.com/a.py", False, None),
        ("localhost:8080", False, None),
        ("a b.py", False, None),
        ("Foo.bar", False, None),
        ("MessageDigest.isEqual", False, None),
        ("application/json", False, None),
        ("github.com/org/repo", False, None),
        ("convert()", False, None),
        ("src/a.py.", True, "src/a.py"),
        ("(src/a.py),", True, "src/a.py"),
        ("a/b/c", True, None),
        ("and/or", True, None),
        ("e.g.", True, None),
    ],
)
def test_path_in(candidate: str, loose: bool, path: str | None) -> None:
    assert path_in(candidate, loose=loose) == path


def test_a_task_keeps_at_most_eight_paths_and_notes_the_rest() -> None:
    paths = " ".join(f"`src/f{number}.py`" for number in range(12))
    tasks = read(read_speckit, f"- [ ] T001 Touch {paths}\n")
    assert tasks.tasks[0].files == [f"src/f{number}.py" for number in range(8)]
    assert tasks.notes == ["tasks.md:1: task 'T001' names more than 8 paths: the first 8 kept"]


def test_id_lists_and_ranges_expand_over_the_ids_the_list_has() -> None:
    assert split_id_list("T012, T013 and T014; `T015` & T016.") == ["T012", "T013", "T014", "T015", "T016"]
    index = IdIndex(["T007", "T007a", "T008", "T009", "T010", "T010a", "T011", "T013", "T013a", "T085", "T008"])
    between = ["T008", "T009", "T010", "T010a", "T011", "T013"]
    assert index.resolve("T008\u2013T013") == between  # en dash
    assert index.resolve("T008-T013") == between
    assert index.resolve("T008 \u2013 T013") == between
    assert index.resolve("T013\u2013T008") == between  # written backwards
    assert index.resolve("T010a-T013a") == ["T010a", "T011", "T013", "T013a"]
    everything = ["T007", "T007a", "T008", "T009", "T010", "T010a", "T011", "T013", "T013a", "T085"]
    assert index.resolve("T001\u2013T99999999") == ["T001", *everything, "T99999999"]  # unknown ends kept
    assert index.range_size("T001\u2013T99999999") == 12
    assert index.resolve("T012") == ["T012"]
    assert index.resolve("schema merged") is None
    assert IdIndex(["T001.001", "T001.002", "T001.010", "T002.001"]).resolve("T001.001\u2013T001.005") == [
        "T001.001",
        "T001.002",
        "T001.005",
    ]


def test_done_mark_is_the_files_majority_or_the_readers_default() -> None:
    assert done_mark_of("xxX ", "X") == "x"
    assert done_mark_of("xXX-", "x") == "X"
    assert done_mark_of("xX", "X") == "X"
    assert done_mark_of(" -", "x") == "x"


def test_plan_name_is_a_valid_id() -> None:
    assert plan_name(["001-timezone-utility", "tasks"], "tasks") == "001-timezone-utility"
    assert plan_name(["my feature (v2)", "tasks"], "tasks") == "my-feature-v2"
    assert plan_name(["ユーザー", ""], "tasks") == "tasks"
    assert len(plan_name(["a" * 300], "tasks")) == 128


def test_lines_keep_offsets_through_bom_crlf_and_blank_runs() -> None:
    text = "\ufeffa\r\nb\n\n\n  \nc"
    assert list(iter_lines(text)) == [Line(1, 1, "a"), Line(2, 4, "b"), Line(3, 6, ""), Line(6, 11, "c")]
    assert list(iter_lines("")) == []
    assert list(iter_lines("\n\nx\n")) == [Line(1, 0, ""), Line(3, 2, "x")]


def test_headings_lose_their_closing_hashes_only() -> None:
    tasks = read(read_speckit, "## Phase 2: C# bindings ##\n- [ ] T001 a\n### Phase 3: F#\n- [ ] T002 b\n")
    assert [task.description for task in tasks.tasks] == ["Phase 2: C# bindings", "Phase 3: F#"]
    assert edges_of(tasks) == {"T001": set(), "T002": {("T001", PB, 4)}}
