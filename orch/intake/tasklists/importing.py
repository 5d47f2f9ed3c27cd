"""A task list read as an orch plan: its format detected from the content (or named), read by its reader, checked
as a whole (duplicate ids, unknown references and cycles, each one line naming `file:line`), and turned into an
ordinary plan document that the plan validator checks like any other. What `validate`, `run`, `submit`, `graph`,
`import`, `sync` and `inbox` read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orch.dag import Dag
from orch.errors import PlanInvalid
from orch.intake.agents import AgentRegistry
from orch.intake.plan import ID_PATTERN, MAX_TITLE_CHARS, ListOrigin, Plan, quoted
from orch.intake.plan_document import read_plan_text
from orch.intake.plan_validation import MAX_CYCLE_SHOWN, WorkdirRoots, load_plan, validate_plan
from orch.intake.tasklists.model import FORMATS, Format, ListedTask, TaskList
from orch.intake.tasklists.reading import ListProblems, ReadOptions, refuse

if TYPE_CHECKING:
    from orch.intake.targets import Targets

FormatChoice = Literal["auto", "plan", "speckit", "taskmaster", "kiro", "checklist"]
FORMAT_CHOICES: tuple[str, ...] = ("auto", "plan", *FORMATS)
Executor = Literal["noop", "shell"]
Reader = Callable[[str, Path, str, ReadOptions], TaskList]

_CHECKBOX = re.compile(r"^[ \t]*[-*+][ \t]+\[[ xX-]\]\*?[ \t]+(?P<first>\S+)", re.MULTILINE)
_SPECKIT_ID = re.compile(r"T\d{3,}[a-z]?")
_KIRO_ID = re.compile(r"\d+(\.\d+)?\.?")
_ID = re.compile(ID_PATTERN)
_MARKDOWN = (".md", ".markdown", ".txt")


def reader_of(format: Format) -> Reader:
    """The reader of `format` (imported when asked: each reads one format)."""
    if format == "speckit":
        from orch.intake.tasklists.speckit import read_speckit

        return read_speckit
    if format == "taskmaster":
        from orch.intake.tasklists.taskmaster import read_taskmaster

        return read_taskmaster
    if format == "kiro":
        from orch.intake.tasklists.kiro import read_kiro

        return read_kiro
    from orch.intake.tasklists.checklist import read_checklist

    return read_checklist


def detect_format(path: Path, text: str) -> Format | Literal["plan"]:
    """Which format `text` (the file at `path`) is in, from its content: a YAML plan, a JSON plan (it has `name` and
    `tasks`) or a task-master file (any other JSON object), and among Markdown lists spec-kit (`T012`-style ids), Kiro
    (numbered `3.` / `3.2` tasks) or a checklist."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "plan"
    stripped = text.lstrip("\ufeff \t\r\n")
    if suffix == ".json" and not stripped.startswith("{"):
        return "plan"  # no task-master file: the plan reader says what it is instead
    if suffix == ".json" or stripped.startswith("{"):
        return "plan" if re.search(r'"name"\s*:', stripped[:4096]) and not _looks_tagged(stripped) else "taskmaster"
    firsts = [match.group("first") for match in _CHECKBOX.finditer(text)]
    if not firsts:  # Markdown without a task: the checklist reader says so
        return "checklist" if suffix in _MARKDOWN or "[ ]" in text or "[x]" in text.lower() else "plan"
    if "/.kiro/" in f"/{path.as_posix()}":
        return "kiro"
    speckit = sum(1 for first in firsts if _SPECKIT_ID.fullmatch(first))
    kiro = sum(1 for first in firsts if _KIRO_ID.fullmatch(first))
    if speckit * 2 > len(firsts):
        return "speckit"
    if kiro * 2 > len(firsts):
        return "kiro"
    return "checklist"


def _looks_tagged(text: str) -> bool:
    """A task-master tagged file: `{"<tag>": {"tasks": …`; a plan's first key is never followed by an object of
    tasks."""
    return re.match(r'\{\s*"[^"]*"\s*:\s*\{\s*"tasks"\s*:', text) is not None


@dataclass(frozen=True)
class ListRead:
    """A list read and checked: the list, the text it was read from, and the folder its tasks work in."""

    tasks: TaskList
    text: str
    project: Path  # the project's root folder: the plan's workdir, what `files` are relative to
    options: ReadOptions = field(default_factory=ReadOptions)


def read_tasklist(path: Path, format: Format, options: ReadOptions, source: str | None = None) -> ListRead:
    """Read and check the list at `path` in `format`; PlanInvalid (exit 2) naming `file:line` for each problem."""
    shown = source or str(path)
    text = read_plan_text(path, shown)
    listed = reader_of(format)(text, path, shown, options)
    check_list(listed)
    return ListRead(listed, text, project_root(path, format), options)


def project_root(path: Path, format: Format) -> Path:
    """The folder a list's tasks work in: the project the list is kept in, found from where such lists live
    (`specs/<feature>/tasks.md`, `.kiro/specs/<feature>/tasks.md`, `.taskmaster/tasks/tasks.json`,
    `tasks/tasks.json`), else the list's own folder."""
    folder = path.resolve().parent
    parts = folder.parts
    if format == "speckit" and len(parts) >= 2 and parts[-2] == "specs":
        return folder.parent.parent
    if format == "kiro" and len(parts) >= 3 and parts[-3:-1] == (".kiro", "specs"):
        return folder.parents[2]
    if format == "taskmaster" and parts[-2:] == (".taskmaster", "tasks"):
        return folder.parents[1]
    if format == "taskmaster" and parts[-1:] == ("tasks",):
        return folder.parent
    return folder


def check_list(listed: TaskList) -> None:
    """The whole list's problems, one line each naming `file:line`: no task, duplicate ids, ids orch cannot keep,
    references to unknown tasks, cycles (their path, each task with its line)."""
    problems = ListProblems(listed.source)
    if not listed.tasks:
        problems.add(None, f"no tasks found, read as a {_FORMAT_NAMES[listed.format]} (--format reads it as another)")
        problems.raise_if_any()
    line_of: dict[str, int] = {}
    for task in listed.tasks:
        if not _ID.fullmatch(task.id):
            problems.add(task.line, f"task id {quoted(task.id)} is not one orch can keep ({ID_PATTERN})")
        elif task.id in line_of:
            problems.add(task.line, f"duplicate task id {quoted(task.id)} (first at line {line_of[task.id]})")
        else:
            line_of[task.id] = task.line
    for task in listed.tasks:
        for dep in task.after:
            if dep.on == task.id:
                problems.add(dep.line, f"task {quoted(task.id)} depends on itself")
            elif dep.on not in line_of:
                problems.add(dep.line, f"task {quoted(task.id)} depends on unknown task {quoted(dep.on)}")
    problems.raise_if_any()
    graph = {task.id: [dep.on for dep in task.after if dep.on != task.id] for task in listed.tasks}
    cycle = Dag(graph).find_cycle()
    if cycle:
        problems.add(line_of[cycle[0]], f"dependency cycle: {_cycle_path(cycle, line_of)}")
        problems.raise_if_any()


def _cycle_path(cycle: Sequence[str], line_of: dict[str, int]) -> str:
    shown = [f"{task} (line {line_of[task]})" for task in cycle]
    if len(shown) > MAX_CYCLE_SHOWN:
        shown = [*shown[: MAX_CYCLE_SHOWN - 1], f"… ({len(shown) - MAX_CYCLE_SHOWN} more)", shown[-1]]
    return " -> ".join(shown)


_FORMAT_NAMES = {
    "speckit": "spec-kit tasks.md",
    "taskmaster": "task-master tasks.json",
    "kiro": "Kiro tasks.md",
    "checklist": "Markdown checklist",
}


def format_name(format: str) -> str:
    return _FORMAT_NAMES.get(format, "orch plan")


# --- the plan document ------------------------------------------------------------------------------


def plan_document(
    read: ListRead, executor: Executor | None = None, workdir: str | None = None, with_context: bool = True
) -> dict[str, Any]:
    """The orch plan a list stands for, as a plan file would hold it. `executor` overrides every task's (a dry
    run); `workdir` is the project's folder as the document names it (default: absolute); `with_context`: each
    description names the feature's documents (spec-kit)."""
    listed = read.tasks
    context = _context_note(listed, read.project) if with_context else ""
    tasks = [_task_document(task, listed, context, executor) for task in listed.tasks]
    document: dict[str, Any] = {"name": listed.name, "workdir": workdir or str(read.project), "tasks": tasks}
    if listed.description:
        document["description"] = listed.description
    return document


def _context_note(listed: TaskList, project: Path) -> str:
    """What every prompt of a spec-kit list names as context: the feature's documents beside the list."""
    if not listed.context_files:
        return ""
    folder = Path(listed.source).resolve().parent
    named = []
    for name in listed.context_files:
        try:
            named.append((folder / name).relative_to(project).as_posix())
        except ValueError:
            named.append((folder / name).as_posix())
    return "Context (read these first): " + ", ".join(named)


def _task_document(task: ListedTask, listed: TaskList, context: str, executor: Executor | None) -> dict[str, Any]:
    document: dict[str, Any] = {"id": task.id, "title": _title(task)}
    after = list(dict.fromkeys(dep.on for dep in task.after))
    if after:
        document["after"] = after
    description = "\n\n".join(part for part in (task.description, context) if part)
    if description:
        document["description"] = description
    if task.files:
        document["files"] = list(dict.fromkeys(task.files))
    if task.success:
        document["success"] = task.success
    if task.priority:
        document["priority"] = task.priority
    if task.group:
        document["executor"] = "noop"  # its subtasks do the work
    elif executor == "noop":
        document["executor"] = "noop"
    elif executor == "shell":
        document["executor"] = "shell"
        document["command"] = f"echo 'orch dry run: task {task.id}'"  # ids are [A-Za-z0-9._-]: inert in quotes
    if task.done:
        document["done"] = True
    if task.hold is not None:
        document["hold"] = task.hold
    document["source"] = {
        "format": listed.format,
        "file": str(Path(listed.source).resolve()),
        "line": task.line,
        "id": task.id,
        "status": task.status,
    }
    return document


def _title(task: ListedTask) -> str:
    title = " ".join(task.title.split()) or task.id
    return title if len(title) <= MAX_TITLE_CHARS else title[: MAX_TITLE_CHARS - 1] + "…"


def explain(listed: TaskList) -> dict[str, list[tuple[str, str]]]:
    """Each task's dependencies with the reason for each (its first reason when several derive the same edge)."""
    reasons: dict[str, list[tuple[str, str]]] = {}
    for task in listed.tasks:
        first: dict[str, str] = {}
        for dep in task.after:
            first.setdefault(dep.on, dep.reason)
        reasons[task.id] = list(first.items())
    return reasons


# --- any plan file ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanInput:
    """How to read a file given to `validate`, `run`, `submit`, `graph`, `sync`: its format (auto: detected), the
    list's options, and an executor for every task (a dry run)."""

    format: FormatChoice = "auto"
    options: ReadOptions = field(default_factory=ReadOptions)
    executor: Executor | None = None


def stored_input(format: str, options: dict[str, Any] | None) -> PlanInput:
    """How a stored plan's list was read (plans.list_format, list_options), to read it again the same way."""
    options = options or {}
    executor = options.get("executor")
    return PlanInput(
        format=format,  # type: ignore[arg-type]
        options=ReadOptions(tag=options.get("tag"), include_optional=bool(options.get("include_optional"))),
        executor=executor if executor in ("noop", "shell") else None,
    )


def conflicting_input(given: PlanInput, stored: PlanInput) -> str | None:
    """The command-line flag that reads a list otherwise than its plan was read, named; None when none does."""
    if given.format not in ("auto", stored.format):
        return f"--format {given.format} (it was read as {stored.format})"
    if given.options.tag not in (None, stored.options.tag):
        return f"--tag {given.options.tag} (it was read with {stored.options.tag or 'the default tag'})"
    if given.options.include_optional and not stored.options.include_optional:
        return "--include-optional (it was read without)"
    if given.executor not in (None, stored.executor):
        return f"--executor {given.executor} (it was read with {stored.executor or 'its agent types executors'})"
    return None


def resolve_format(path: Path, choice: FormatChoice, source: str) -> Format | Literal["plan"]:
    """The format to read `path` in: `choice`, or (auto) the one its content shows."""
    if choice != "auto":
        return choice
    return detect_format(path, read_plan_text(path, source))


def load_any_plan(
    path: Path,
    registry: AgentRegistry,
    roots: Sequence[Path] = (),
    *,
    targets: Targets | None = None,
    how: PlanInput = PlanInput(),
) -> Plan:
    """A plan file or a task list as the plan orch runs; PlanInvalid (exit 2) naming each problem."""
    source = str(path)
    format = resolve_format(path, how.format, source)
    if format == "plan":
        if how.executor is not None:
            raise refuse(source, None, "--executor overrides the executors of a task list's tasks, not a plan's")
        return load_plan(path, registry, roots, targets=targets)
    read = read_tasklist(path, format, how.options, source)
    return plan_of_list(read, registry, roots, targets=targets, executor=how.executor)


def plan_of_list(
    read: ListRead,
    registry: AgentRegistry,
    roots: Sequence[Path] = (),
    *,
    targets: Targets | None = None,
    executor: Executor | None = None,
) -> Plan:
    """The plan of a list read: validated like any plan, its workdir the project's folder (inside `roots` when
    given, ORCH_WORKDIR_ROOTS)."""
    listed = read.tasks
    # routed on the tasks' own words: the context note names files (`data-model.md`) keywords would match
    document = plan_document(read, executor, with_context=False)
    named = f"ORCH_WORKDIR_ROOTS: {', '.join(map(str, roots))}" if roots else "the list's project folder"
    allowed = WorkdirRoots(tuple(roots) or (read.project,), named)
    plan = validate_plan(
        document, registry, source=listed.source, base_dir=read.project, roots=allowed, targets=targets
    )
    context = _context_note(listed, read.project)
    if context:
        with_note = tuple(
            replace(t, description="\n\n".join(filter(None, (t.description, context)))) for t in plan.tasks
        )
        plan = replace(plan, tasks=with_note)
    options = {"tag": read.options.tag, "include_optional": read.options.include_optional, "executor": executor}
    origin = ListOrigin(str(Path(listed.source).resolve()), listed.format, options, read.text)
    return replace(plan, origin=origin)


__all__ = [
    "FORMAT_CHOICES",
    "ListRead",
    "PlanInput",
    "PlanInvalid",
    "check_list",
    "detect_format",
    "explain",
    "load_any_plan",
    "plan_document",
    "plan_of_list",
    "read_tasklist",
]
