"""claude-task-master's `tasks.json` as a task list: the tagged layout (`{"<tag>": {"tasks": [...], "metadata":
{...}}}`, one tag read: `--tag`, else the current tag in `.taskmaster/state.json`, else `master`) and the legacy one
(`{"tasks": [...]}`). Tasks are `N`, subtasks `N.M`; a task with subtasks is a group, which its subtasks do the work
of. Every task keeps where its `"status"` string is, so orch can write a new status there and change nothing else
(orch.intake.tasklists.json_text.set_statuses).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch.intake.gc_pause import collector_paused
from orch.intake.plan import ID_PATTERN, MAX_QUOTED_CHARS, MAX_TEXT_CHARS, MAX_TITLE_CHARS, clipped, quoted
from orch.intake.tasklists.json_text import JsonLayout, JsonPath, JsonTextError, body_start, load_json, scan_json
from orch.intake.tasklists.markdown import MAX_LIST_EDGES
from orch.intake.tasklists.model import EXPLICIT, SUBTASK_GROUP, Dependency, ListedTask, TaskList
from orch.intake.tasklists.reading import MAX_LIST_TASKS, ListProblems, ReadOptions, refuse

DEFAULT_TAG = "master"
STATE_FILE = "state.json"  # in the .taskmaster folder: {"currentTag": "…", "branchTagMapping": {…}, …}
MAX_STATE_BYTES = 64 * 1024
DEFAULT_STATUS = "pending"  # task-master's, for a task written without one
DONE_STATUSES = frozenset({"done", "completed", "review"})  # review: the work is done, it waits for a person
CANCELLED_STATUSES = frozenset({"cancelled", "canceled"})  # done for its dependants (as tm-core counts it)
DEFERRED = "deferred"
PRIORITIES = {"critical": 3, "high": 2, "medium": 1, "low": 0}
DEFAULT_PRIORITY = PRIORITIES["medium"]  # task-master's default priority
MAX_SHOWN_TAGS = 20
MAX_ID_DIGITS = 18  # ids are JavaScript numbers in task-master; more digits than this is no task's

_NUMBER = re.compile(rf"[0-9]{{1,{MAX_ID_DIGITS}}}")
_QUALIFIED = re.compile(rf"([0-9]{{1,{MAX_ID_DIGITS}}})\.([0-9]{{1,{MAX_ID_DIGITS}}})")
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9._-]+")
_NAME = re.compile(ID_PATTERN)
_SPACE = re.compile(r"\s*")
_IdParser = Callable[[Any], int | str]  # an id's number, or why it has none
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "true or false", type(None): "null"}


def read_taskmaster(text: str, path: Path, source: str, options: ReadOptions) -> TaskList:
    """The task list in a task-master `tasks.json` (`text`, the file's decoded text; `path`, where it is, for its
    `.taskmaster/state.json` and its name; `source`, the file as the user named it, for messages). Raises
    PlanInvalid with one line per problem, `FILE:LINE: problem`. Duplicate ids, unknown references and cycles are
    left to the caller, which reports them for every format."""
    with collector_paused():  # a large list is hundreds of thousands of objects, all kept
        try:
            document = load_json(text)
        except JsonTextError as problem:
            raise refuse(source, problem.line, problem.problem) from None
        notes: list[str] = []
        chosen = _choose_list(document, text, path, source, options, notes)
        try:
            layout = scan_json(text, keep=_task_paths(chosen.prefix))
        except JsonTextError as problem:
            raise refuse(source, problem.line, problem.problem) from None
        reader = _Reader(source, layout, chosen.prefix, ListProblems(source), notes)
        tasks = reader.tasks(chosen.tasks)
        reader.problems.raise_if_any()
    return TaskList(
        format="taskmaster",
        source=source,
        name=_plan_name(chosen.name),
        tasks=tasks,
        description=chosen.description,
        notes=notes,
    )


# --- which list -----------------------------------------------------------------------------------------------


@dataclass
class _Chosen:
    """The list read: where it is in the document (() legacy, (tag,) tagged), its tasks, its name, description."""

    prefix: JsonPath
    tasks: list[Any]
    name: str
    description: str = ""


def _choose_list(document: Any, text: str, path: Path, source: str, options: ReadOptions, notes: list[str]) -> _Chosen:
    """The list to read: the legacy file's, or the chosen tag's. Raises PlanInvalid when there is none."""
    top_line = _top_line(text)
    if not isinstance(document, dict):
        raise refuse(source, top_line, f"the top level is {_json_type(document)}, not an object of tags or tasks")
    if isinstance(document.get("tasks"), list):
        if options.tag is not None and options.tag != DEFAULT_TAG:
            problem = f'no tag {quoted(options.tag)}: the file is untagged ({{"tasks": [...]}}), one list'
            raise refuse(source, top_line, problem)
        return _Chosen((), _checked_tasks(document["tasks"], source, top_line), _legacy_name(path), _about(document))
    tag, why = _tag_wanted(path, options, notes)
    tags = [key for key, value in document.items() if isinstance(value, dict)]
    entry = document.get(tag)
    if not isinstance(entry, dict):
        raise refuse(source, top_line, f"no tag {quoted(tag)} ({why}) in the file; {_tags_named(tags)}")
    if len(tags) > 1:
        others = ", ".join(quoted(other) for other in tags[:MAX_SHOWN_TAGS] if other != tag)
        notes.append(f"read tag {quoted(tag)} ({why}); the file's other tags: {others}")
    tasks = entry.get("tasks")
    if tasks is None:
        notes.append(f"tag {quoted(tag)} has no tasks")
        tasks = []
    elif not isinstance(tasks, list):
        problem = f'tag {quoted(tag)}: "tasks" is {_json_type(tasks)}, not an array of tasks'
        raise refuse(source, _line_in(text, (tag,), "tasks") or top_line, problem)
    return _Chosen((tag,), _checked_tasks(tasks, source, top_line), tag, _about(entry))


def _tag_wanted(path: Path, options: ReadOptions, notes: list[str]) -> tuple[str, str]:
    """The tag to read and why: `--tag`, else the current tag in .taskmaster/state.json, else `master`."""
    if options.tag is not None:
        return options.tag, "named by --tag"
    state = _state_file(path)
    if state is not None:
        current = _current_tag(state, notes)
        if current is not None:
            return current, f"the current tag in {state}"
    return DEFAULT_TAG, "the default tag"


def _state_file(path: Path) -> Path | None:
    """The state.json of the .taskmaster folder the file is in (`.taskmaster/tasks/tasks.json`, or directly in
    it), if that folder has one."""
    folder = path.absolute().parent
    for candidate in (folder, folder.parent):
        if candidate.name == ".taskmaster":
            state = candidate / STATE_FILE
            return state if os.path.lexists(state) else None
    return None


def _current_tag(state: Path, notes: list[str]) -> str | None:
    """`currentTag` of a state.json; None, with a note, when it cannot be read or has none."""
    try:
        data = _read_small_file(state, MAX_STATE_BYTES)
        document = json.loads(data.decode("utf-8-sig"))
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        notes.append(f"{state} ignored: {_reason(exc)}")
        return None
    tag = document.get("currentTag") if isinstance(document, dict) else None
    if not isinstance(tag, str) or not tag:
        notes.append(f'{state} ignored: it has no "currentTag" string')
        return None
    return tag


def _reason(exc: BaseException) -> str:
    """Why a state.json was not read, in a few words."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    return clipped(f"not JSON: {exc}")


def _read_small_file(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file; OSError for anything else (a FIFO or device is not read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise OSError(0, f"over {limit} bytes")
    return data


def _checked_tasks(tasks: list[Any], source: str, top_line: int) -> list[Any]:
    """`tasks`, unless it and its subtasks are more than a plan may hold."""
    count = len(tasks)
    for task in tasks:
        subtasks = task.get("subtasks") if isinstance(task, dict) else None
        count += len(subtasks) if isinstance(subtasks, list) else 0
    if count > MAX_LIST_TASKS:
        raise refuse(source, top_line, f"{count:,} tasks and subtasks, more than the {MAX_LIST_TASKS:,} a plan holds")
    return tasks


def _about(entry: dict[str, Any]) -> str:
    """The list's description: its metadata's (older untagged files call it `meta`)."""
    for key in ("metadata", "meta"):
        metadata = entry.get(key)
        about = _text(metadata.get("description")) if isinstance(metadata, dict) else ""
        if about:
            return about[:MAX_TEXT_CHARS]
    return ""


def _tags_named(tags: list[str]) -> str:
    if not tags:
        return "it has no tags"
    shown = ", ".join(quoted(tag) for tag in tags[:MAX_SHOWN_TAGS])
    more = f" and {len(tags) - MAX_SHOWN_TAGS:,} more" if len(tags) > MAX_SHOWN_TAGS else ""
    return f"its tags: {shown}{more}"


def _legacy_name(path: Path) -> str:
    """An untagged list's name: the project folder (the parent of `tasks/`), else the file's stem."""
    absolute = path.absolute()
    if absolute.parent.name == "tasks" and absolute.parent.parent.name:
        return absolute.parent.parent.name
    return path.stem


def _plan_name(name: str) -> str:
    """`name` made a valid orch id: runs of other characters become '-', at most 128 characters."""
    made = _NOT_IN_ID.sub("-", name).strip("-")[:128]
    return made if _NAME.match(made) else "taskmaster"


def _top_line(text: str) -> int:
    """The line the top value starts on."""
    first = _SPACE.match(text, body_start(text))
    return text.count("\n", 0, first.end() if first else 0) + 1


def _line_in(text: str, path: JsonPath, key: str) -> int | None:
    try:
        return scan_json(text, keep=lambda each: each == path).line_of(path, key)
    except JsonTextError:
        return None


def _task_paths(prefix: JsonPath) -> Callable[[JsonPath], bool]:
    """Which containers the scan keeps: the list's tasks array, each task, its subtasks array, each subtask, and
    their dependencies arrays."""
    depth = len(prefix)

    def wanted(path: JsonPath) -> bool:
        if path[:depth] != prefix:
            return False
        rest = path[depth:]
        size = len(rest)
        if size == 0 or rest[0] != "tasks":
            return size == 0
        if size <= 2:
            return True  # the tasks array, a task
        if size == 3:
            return rest[2] == "dependencies" or rest[2] == "subtasks"
        if size == 4:
            return rest[2] == "subtasks"  # a subtask
        return size == 5 and rest[2] == "subtasks" and rest[4] == "dependencies"

    return wanted


# --- the tasks ------------------------------------------------------------------------------------------------


@dataclass
class _Reader:
    """Reads the chosen list's tasks, collecting problems (one line each) and notes."""

    source: str
    layout: JsonLayout
    prefix: JsonPath
    problems: ListProblems
    notes: list[str]
    tasks_read: list[ListedTask] = field(default_factory=list)
    edges_left: int = MAX_LIST_EDGES  # as the Markdown readers: a hostile file cannot make millions of edges

    def tasks(self, entries: list[Any]) -> list[ListedTask]:
        """Every task and subtask, each group followed by its subtasks, in the file's order."""
        tasks_path = (*self.prefix, "tasks")
        for index, entry in enumerate(entries):
            task_path = (*tasks_path, index)
            if not isinstance(entry, dict):
                line = self.layout.item_line(tasks_path, index)
                self.problems.add(line, f"a task that is {_json_type(entry)}, not an object")
                continue
            self._task(entry, task_path)
        return self.tasks_read

    def _task(self, entry: dict[str, Any], path: JsonPath) -> None:
        number = self._id(entry, path, "", "task", _task_number)
        if number is None:
            return
        task_id = str(number)
        task = self._listed(entry, path, task_id, _priority(entry, DEFAULT_PRIORITY, self.notes, task_id))
        explicit = self._dependencies(entry, path, task_id, parent=None)
        self.tasks_read.append(task)
        subtasks = self._subtasks(entry, path, task)
        task.group = bool(subtasks)
        group_edges = [Dependency(sub.id, SUBTASK_GROUP, sub.line) for sub in subtasks]
        task.after = _deduped([*explicit, *group_edges])
        for subtask in subtasks:
            inherited = [Dependency(edge.on, SUBTASK_GROUP, edge.line) for edge in explicit if edge.on != subtask.id]
            subtask.after = _deduped([*subtask.after, *inherited])
            if subtask.done or subtask.hold:
                continue
            if task.done:  # the list says the whole task is finished: its open subtasks are not run either
                subtask.done = True
            elif task.hold:
                subtask.hold = f"its task {task_id} is {task.status} in {Path(self.source).name}"

    def _subtasks(self, entry: dict[str, Any], path: JsonPath, task: ListedTask) -> list[ListedTask]:
        """The subtasks of a task, read and added to the list after it."""
        subtasks = entry.get("subtasks")
        if subtasks is None:
            return []
        subtasks_path = (*path, "subtasks")
        if not isinstance(subtasks, list):
            line = self.layout.line_of(path, "subtasks")
            self.problems.add(line, f'task {task.id}: "subtasks" is {_json_type(subtasks)}, not an array')
            return []
        read: list[ListedTask] = []
        for index, item in enumerate(subtasks):
            item_path = (*subtasks_path, index)
            if not isinstance(item, dict):
                line = self.layout.item_line(subtasks_path, index)
                self.problems.add(line, f"task {task.id}: a subtask that is {_json_type(item)}, not an object")
                continue
            number = self._id(item, item_path, f"task {task.id}: ", "subtask", _subtask_number(task.id))
            if number is None:
                continue
            subtask_id = f"{task.id}.{number}"
            subtask = self._listed(item, item_path, subtask_id, _priority(item, task.priority, self.notes, subtask_id))
            subtask.after = self._dependencies(item, item_path, subtask_id, parent=task.id)
            if isinstance(item.get("subtasks"), list) and item["subtasks"]:
                self.notes.append(f"subtask {subtask_id}: its own subtasks are left out (task-master has one level)")
            read.append(subtask)
            self.tasks_read.append(subtask)
        return read

    def _id(self, entry: dict[str, Any], path: JsonPath, where: str, kind: str, parse: _IdParser) -> int | None:
        """The (sub)task's number, or None with the problem added (`where`: what a subtask's problem starts with)."""
        if "id" not in entry:
            self.problems.add(self.layout.line_of(path), f'{where}a {kind} without an "id"')
            return None
        number = parse(entry["id"])
        if isinstance(number, int):
            return number
        self.problems.add(self.layout.line_of(path, "id"), f"{where}{kind} id {_shown(entry['id'])} {number}")
        return None

    def _listed(self, entry: dict[str, Any], path: JsonPath, task_id: str, priority: int) -> ListedTask:
        """A task as the list says it, without its edges."""
        status = entry.get("status")
        if status is None:
            status = DEFAULT_STATUS
        elif not isinstance(status, str):
            self.notes.append(f"task {task_id}: status {_shown(status)} is not text; read as {DEFAULT_STATUS!r}")
            status = DEFAULT_STATUS
        word = status.strip().lower()
        parts = (_text(entry.get("description")), _text(entry.get("details")))
        description = "\n\n".join(part for part in parts if part)
        if len(description) > MAX_TEXT_CHARS:
            self.notes.append(f"task {task_id}: description and details cut to {MAX_TEXT_CHARS:,} characters")
            description = description[:MAX_TEXT_CHARS]
        return ListedTask(
            id=task_id,
            title=_title(entry, task_id),
            line=self.layout.line_of(path, "id") or 1,
            status=status,
            description=description,
            done=word in DONE_STATUSES or word in CANCELLED_STATUSES,
            hold=f"deferred in {Path(self.source).name}" if word == DEFERRED else None,
            success=_text(entry.get("testStrategy"))[:MAX_TEXT_CHARS],
            priority=priority,
            mark=self.layout.string_span(path, "status"),
        )

    def _dependencies(
        self, entry: dict[str, Any], path: JsonPath, task_id: str, parent: str | None
    ) -> list[Dependency]:
        """The task's `dependencies` as explicit edges; for a subtask, a bare number is a sibling (`parent.N`)."""
        listed = entry.get("dependencies")
        if listed is None:
            return []
        if not isinstance(listed, list):
            line = self.layout.line_of(path, "dependencies")
            self.problems.add(line, f'task {task_id}: "dependencies" is {_json_type(listed)}, not an array')
            return []
        task_line = self.layout.line_of(path, "id") or 1
        self.edges_left -= len(listed)
        if self.edges_left < 0:
            raise refuse(self.source, task_line, f"the list makes more than {MAX_LIST_EDGES:,} dependencies")
        array_path = (*path, "dependencies")
        edges: list[Dependency] = []
        for index, value in enumerate(listed):
            line = self.layout.item_line(array_path, index) or task_line
            on = _dependency_id(value, parent)
            if on is None:
                problem = f'task {task_id}: dependency {_shown(value)} is not a task id (a number, "N" or "N.M")'
                self.problems.add(line, problem)
                continue
            edges.append(Dependency(on, EXPLICIT, line))
        return _deduped(edges)


def _task_number(value: Any) -> int | str:
    """A top-level task's number from its id, or why it is not one."""
    number = _number(value)
    if number is not None:
        return number
    if isinstance(value, str) and _QUALIFIED.fullmatch(value.strip()):
        return "is a subtask's id (N.M), not a task's"
    return 'is not a positive integer or "N"'


def _subtask_number(parent: str) -> _IdParser:
    """How a subtask's number is read from its id: M, "M", or "N.M" with N its task's."""

    def parse(value: Any) -> int | str:
        number = _number(value)
        if number is not None:
            return number
        qualified = _QUALIFIED.fullmatch(value.strip()) if isinstance(value, str) else None
        if qualified is None:
            return f'is not a positive integer, "M" or "{parent}.M"'
        if str(int(qualified.group(1))) != parent:
            return f"names task {int(qualified.group(1))}, not its task {parent}"
        sub = int(qualified.group(2))
        return sub if sub > 0 else f'is not a positive integer, "M" or "{parent}.M"'

    return parse


def _number(value: Any) -> int | None:
    """A positive integer id written as a number or as digits; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value < 10**MAX_ID_DIGITS else None
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = int(value)
        return number if number > 0 else None
    return None


def _dependency_id(value: Any, parent: str | None) -> str | None:
    """The list id a dependency names: `N` or `N.M` as written; a bare number inside a subtask is a sibling
    (`parent.N`, as task-master resolves it). None when it names no task."""
    number = _number(value)
    if number is not None:
        return f"{parent}.{number}" if parent is not None else str(number)
    qualified = _QUALIFIED.fullmatch(value.strip()) if isinstance(value, str) else None
    if qualified is None:
        return None
    task, sub = int(qualified.group(1)), int(qualified.group(2))
    return f"{task}.{sub}" if task > 0 and sub > 0 else None


def _priority(entry: dict[str, Any], default: int, notes: list[str], task_id: str) -> int:
    """The orch priority of task-master's word (critical 3, high 2, medium 1, low 0); `default` when there is
    none (a subtask takes its task's)."""
    word = entry.get("priority")
    if word is None:
        return default
    priority = PRIORITIES.get(word.strip().lower()) if isinstance(word, str) else None
    if priority is None:
        notes.append(f"task {task_id}: priority {_shown(word)} is not critical, high, medium or low; read as medium")
        return DEFAULT_PRIORITY
    return priority


def _title(entry: dict[str, Any], task_id: str) -> str:
    """The title on one line, at most MAX_TITLE_CHARS; without one, the description's first line; else `task N`."""
    title = " ".join(_text(entry.get("title")).split())
    if not title:
        lines = (" ".join(line.split()) for line in _text(entry.get("description")).splitlines())
        title = next((line for line in lines if line), f"task {task_id}")
    return title if len(title) <= MAX_TITLE_CHARS else title[: MAX_TITLE_CHARS - 1] + "…"


def _text(value: Any) -> str:
    """A text field's value: a string as written, less NUL characters (a plan's text cannot hold them); else ''."""
    return value.replace("\x00", "") if isinstance(value, str) else ""


def _deduped(edges: Iterable[Dependency]) -> list[Dependency]:
    """The edges, the first to each task kept."""
    seen: set[str] = set()
    kept: list[Dependency] = []
    for edge in edges:
        if edge.on not in seen:
            seen.add(edge.on)
            kept.append(edge)
    return kept


def _shown(value: Any) -> str:
    """A JSON value as a message quotes it: a string quoted, an object or array elided, anything else as JSON."""
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, dict | list):
        return "{…}" if isinstance(value, dict) else "[…]"
    shown = json.dumps(value)
    return shown if len(shown) <= MAX_QUOTED_CHARS else f"{shown[:MAX_QUOTED_CHARS]}…"


def _json_type(value: Any) -> str:
    """What a JSON value is, in words."""
    return _JSON_TYPES.get(type(value), "a number")
