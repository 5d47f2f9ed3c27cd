"""GitHub spec-kit's `specs/<feature>/tasks.md`: `- [ ] T012 [P] [US1] Create model in src/models/user.py`.

A task is a checkbox whose text starts with an id `T\\d{3,}` (an optional letter after: T007a), then `[P]` and
`[USn]` tags in any order; done as `[x]` or `[X]`. `## Phase N: title` headings (or `### Phase …`, or any
level-2 heading) start a phase; tasks before the first form a phase of their own; other sub-headings change
nothing. A checkbox without a T-id (a "Checkpoint" item) is not a task, and is noted.

Dependencies, each with its reason:
- PHASE_BARRIER: a phase waits for every task of the phases before it. Kept linear by transitive reduction: the
  first tasks of a phase (those that wait for no other task of it) wait for the last tasks of the phase before
  (those no later task of that phase waits for), which wait, through ORDER, for the rest of their phase, and it
  for the phases before. An all-[P] phase after an all-[P] phase still costs the product of their sizes, which
  the list's edge bound (markdown.MAX_LIST_EDGES) caps.
- ORDER, inside a phase: a task without [P] waits for every task before it in the phase (reduced: the previous
  task without [P] and the [P] tasks since), a [P] task for the nearest task without [P] before it.
- EXPLICIT: `(depends on T012, T013)` on the task's line or a line under it, or a `- Depends on: T012` bullet
  under it; ranges `T008-T013` (hyphen or en dash) name every id of the list between them by number.

Files: backticked paths and "in path" in the task's text and the lines under it. Description: the phase heading,
"User story USn", and the lines under the task. The plan's name is the feature folder; the spec, plan,
data model, research, quickstart and contracts/ beside the file are the list's context files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from orch.intake.plan import MAX_TEXT_CHARS
from orch.intake.tasklists.markdown import (
    DONE_MARKS,
    Checkbox,
    Clause,
    Edges,
    Heading,
    IdIndex,
    Item,
    Notes,
    clause_bullet,
    clip,
    done_mark_of,
    first_heading,
    folder_name,
    in_order,
    outline,
    plan_name,
    task_files,
    title_of,
)
from orch.intake.tasklists.model import ORDER, PHASE_BARRIER, ListedTask, TaskList
from orch.intake.tasklists.reading import ReadOptions

CONTEXT_FILES = ("spec.md", "plan.md", "data-model.md", "research.md", "quickstart.md", "contracts/")
NOT_A_TASK = "a checkbox without a T-id is not a task"

_TASK = re.compile(r"[ \t]+(?:\*\*)?(?P<id>T\d{3,125}[a-z]?)(?:\*\*)?:?(?=[ \t]|$)(?P<text>.*)")
_TAG = re.compile(r"[ \t]*\[(?P<tag>P|US\d{1,9})\]")
_DEPENDS = re.compile(r"\(\s*depends\s+on\b[ \t]*:?(?P<ids>[^()]{0,2000})\)", re.IGNORECASE)
_PHASE = re.compile(r"phase\b", re.IGNORECASE)


def _is_task(box: Checkbox) -> bool:
    return _TASK.match(box.rest) is not None


@dataclass
class _Phase:
    heading: str  # '' before the first phase heading
    positions: list[int] = field(default_factory=list)  # its tasks, in the file's order


@dataclass(frozen=True)
class _Task:
    listed: ListedTask
    parallel: bool
    clauses: list[Clause]


def read_speckit(text: str, path: Path, source: str, options: ReadOptions) -> TaskList:
    """The spec-kit list in `text` (the file `path`, named `source` in messages), its tasks in the file's order
    with their edges (see the module's docstring)."""
    notes = Notes(source)
    nodes = outline(text, notes, _is_task, NOT_A_TASK)
    phases = [_Phase("")]
    tasks: list[_Task] = []
    for node in nodes:
        if isinstance(node, Heading):
            if node.level == 2 or (node.level <= 3 and _PHASE.match(node.text)):
                phases.append(_Phase(node.text))
            continue
        phases[-1].positions.append(len(tasks))
        tasks.append(_task(node, phases[-1].heading, notes))
    listed = [task.listed for task in tasks]
    edges = Edges(source, len(tasks))
    _order_and_barriers(tasks, [phase.positions for phase in phases if phase.positions], edges)
    index = IdIndex(task.id for task in listed)
    for position, task in enumerate(tasks):
        for clause in task.clauses:
            edges.add_clause(position, task.listed.id, clause, index, notes)
    edges.assign(listed)
    return TaskList(
        format="speckit",
        source=source,
        name=plan_name([folder_name(path), path.stem], "tasks"),
        tasks=listed,
        description=first_heading(nodes),
        notes=notes.lines(),
        context_files=context_files(path),
        done_mark=done_mark_of((task.status for task in listed), "X"),
    )


def _task(item: Item, phase: str, notes: Notes) -> _Task:
    """One task from its checkbox item: id, tags, title without its clauses, files, description."""
    match = _TASK.match(item.box.rest)
    assert match is not None  # outline took only items _is_task accepts
    task_id, rest = match["id"], match["text"]
    tags: set[str] = set()
    while (tag := _TAG.match(rest)) is not None:
        tags.add(tag["tag"])
        rest = rest[tag.end() :]
    clauses = [Clause("depends on", found["ids"], item.line) for found in _DEPENDS.finditer(rest)]
    title_text = _DEPENDS.sub(" ", rest)
    texts = [title_text]
    for line in item.detail_lines():
        if (clause := clause_bullet(line)) is not None:
            clauses.append(clause)
            continue
        clauses += [Clause("depends on", found["ids"], line.number) for found in _DEPENDS.finditer(line.text)]
        texts.append(line.text)
    story = next((tag for tag in sorted(tags) if tag.startswith("US")), None)
    description = [phase, f"User story {story}" if story else "", item.detail_text()]
    listed = ListedTask(
        id=task_id,
        title=title_of(title_text, task_id),
        line=item.line,
        status=item.box.mark,
        description=clip("\n".join(part for part in description if part), MAX_TEXT_CHARS),
        done=item.box.mark in DONE_MARKS,
        files=task_files(texts, task_id, item.line, notes),
        mark=item.box.span,
    )
    return _Task(listed, "P" in tags, clauses)


def _order_and_barriers(tasks: list[_Task], phases: list[list[int]], edges: Edges) -> None:
    """ORDER edges inside each phase, and PHASE_BARRIER edges from each phase's first tasks to the last tasks of
    the phase before it (transitively reduced; see the module's docstring)."""
    previous_sinks: list[int] = []
    for positions in phases:
        ordering = in_order([tasks[position].parallel for position in positions])
        heads = [positions[head] for head in ordering.heads]
        first_line = tasks[heads[0]].listed.line
        edges.check(len(heads) * len(previous_sinks), first_line)  # before making them: an all-[P] pair is a product
        for head in heads:
            listed = tasks[head].listed
            for sink in previous_sinks:
                edges.add(head, tasks[sink].listed.id, PHASE_BARRIER, listed.line)
        for position, waits in zip(positions, ordering.before, strict=True):
            listed = tasks[position].listed
            for waited in waits:
                edges.add(position, tasks[positions[waited]].listed.id, ORDER, listed.line)
        previous_sinks = [positions[sink] for sink in ordering.sinks]


def context_files(path: Path) -> list[str]:
    """Which of CONTEXT_FILES exist beside the list (relative to its folder; a folder with a trailing '/')."""
    found: list[str] = []
    for name in CONTEXT_FILES:
        beside = path.parent / name.rstrip("/")
        try:
            exists = beside.is_dir() if name.endswith("/") else beside.is_file()
        except OSError:
            exists = False
        if exists:
            found.append(name)
    return found
