"""Kiro's `.kiro/specs/<feature>/tasks.md` (and cc-sdd's dialect of it).

A task is a numbered checkbox: `- [ ] 3. title` (a major task) or `- [ ] 3.2 title` (a sub-task of 3), flat or
indented; `[x]` done, `[-]` in progress (it runs), `- [ ]* 3.2` optional. cc-sdd's `(P)` right after the number
marks a task that may run beside its neighbours. Lines under a task are its description; `_Requirements: 1.2_` also
goes into its success criteria, `_Depends: 2.1, 3_` makes EXPLICIT edges, `_Boundary: …_` stays description.

A major task with sub-tasks is a group (group=True): it waits for each of its sub-tasks, and its first sub-tasks
(those no sibling before them makes wait) wait for what the group waits for — both SUBTASK_GROUP; the others
wait for those through ORDER. Order (ORDER) follows spec-kit's rule with `(P)` for `[P]`, among major tasks and
among a group's sub-tasks: a task without `(P)` waits for the previous task without it and the `(P)` tasks since
(so, without any `(P)`, each major task waits for the whole group before it); a `(P)` task for the nearest one
without `(P)` before it. A sub-task whose major task is not in the list counts as a major task of its own; a
deeper id (3.2.1) is a sub-task of its major task (3).

Optional tasks (`[ ]*`, and the sub-tasks of an optional major task) are left out unless options.include_optional,
each with a note; an edge to one goes through it instead: to what it would have waited for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from orch.intake.plan import quoted
from orch.intake.tasklists.markdown import (
    DONE_MARKS,
    Checkbox,
    Clause,
    Edges,
    IdIndex,
    Item,
    Notes,
    clause_bullet,
    done_mark_of,
    first_heading,
    folder_name,
    in_order,
    outline,
    plan_name,
    resolve_clause,
    task_files,
    title_of,
)
from orch.intake.tasklists.model import EXPLICIT, ORDER, SUBTASK_GROUP, ListedTask, TaskList
from orch.intake.tasklists.reading import ReadOptions

NOT_A_TASK = "a checkbox without a task number is not a task"

_TASK = re.compile(
    r"(?P<optional>\*)?[ \t]+(?:\*\*)?(?P<id>\d{1,9}(?:\.\d{1,9}){0,7})\.?(?:\*\*)?(?=[ \t]|$)"
    r"[ \t]*(?P<parallel>\(P\))?(?P<text>.*)"
)
_REQUIREMENTS = re.compile(r"[ \t]*(?:[-*+][ \t]+)?[*_]{0,2}requirements[*_]{0,2}[ \t]*:(?P<text>.*)", re.IGNORECASE)
_ANNOTATION = re.compile(r"[ \t]*(?:[-*+][ \t]+)?_[A-Za-z ]{1,40}:")  # `_Boundary: X_`: names, not paths


def _is_task(box: Checkbox) -> bool:
    return _TASK.match(box.rest) is not None


@dataclass
class _Task:
    listed: ListedTask
    parallel: bool
    optional: bool
    clauses: list[Clause]
    members: list[int] = field(default_factory=list)  # a major task's sub-tasks, in the file's order
    skipped: bool = False


_Edge = tuple[str, str, int]  # on, reason, line


def read_kiro(text: str, path: Path, source: str, options: ReadOptions) -> TaskList:
    """The Kiro list in `text` (the file `path`, named `source` in messages), its tasks in the file's order with
    their edges (see the module's docstring); optional tasks left out unless `options.include_optional`."""
    notes = Notes(source)
    nodes = outline(text, notes, _is_task, NOT_A_TASK)
    tasks: list[_Task] = []
    for node in nodes:
        if isinstance(node, Item):
            tasks.append(_task(node, notes))
    top = _group(tasks)
    for task in tasks:
        task.skipped = task.skipped or (task.optional and not options.include_optional)
        for member in task.members:
            tasks[member].skipped = tasks[member].skipped or task.skipped
    index = IdIndex(task.listed.id for task in tasks)
    edges = Edges(source, len(tasks))
    raw = _raw_edges(tasks, top, index, notes, edges)
    kept = [position for position, task in enumerate(tasks) if not task.skipped]
    _through_skipped(tasks, raw, kept, edges)
    listed = [task.listed for task in tasks]
    edges.assign(listed)
    for task in tasks:
        if task.skipped:
            what = "optional task" if task.optional else "sub-task of an optional task"
            notes.add(task.listed.line, f"{what} {quoted(task.listed.id)} left out (include optional tasks to run it)")
    return TaskList(
        format="kiro",
        source=source,
        name=plan_name([folder_name(path), path.stem], "tasks"),
        tasks=[listed[position] for position in kept],
        description=first_heading(nodes),
        notes=notes.lines(),
        done_mark=done_mark_of((task.status for task in listed), "x"),
    )


def _task(item: Item, notes: Notes) -> _Task:
    """One task from its checkbox item: number, (P), optional star, title, description, requirements, clauses."""
    match = _TASK.match(item.box.rest)
    assert match is not None  # outline took only items _is_task accepts
    task_id = match["id"]
    clauses: list[Clause] = []
    requirements: list[str] = []
    texts = [match["text"]]
    for line in item.detail_lines():
        if (clause := clause_bullet(line)) is not None:
            clauses.append(clause)
        elif (found := _REQUIREMENTS.fullmatch(line.text)) is not None:
            requirements.append(found["text"].strip().strip("*_").strip())
        elif _ANNOTATION.match(line.text) is None:
            texts.append(line.text)
    listed = ListedTask(
        id=task_id,
        title=title_of(match["text"], task_id),
        line=item.line,
        status=item.box.mark,
        description=item.detail_text(),
        done=item.box.mark in DONE_MARKS,
        files=task_files(texts, task_id, item.line, notes),
        success="; ".join(f"Requirements: {each}" for each in requirements if each),
        mark=item.box.span,
    )
    return _Task(listed, match["parallel"] is not None, match["optional"] is not None, clauses)


def _group(tasks: list[_Task]) -> list[int]:
    """Put each sub-task into its major task's members (marking the major task a group, with no files of its own:
    its sub-tasks do the work); the positions of the top-level tasks, in order."""
    majors: dict[str, int] = {}
    for position, task in enumerate(tasks):
        if "." not in task.listed.id:
            majors.setdefault(task.listed.id, position)
    top: list[int] = []
    for position, task in enumerate(tasks):
        major = majors.get(task.listed.id.split(".", 1)[0]) if "." in task.listed.id else None
        if major is None:
            top.append(position)
        else:
            tasks[major].members.append(position)
    for position in top:
        if tasks[position].members:
            tasks[position].listed.group = True
            tasks[position].listed.files = []
    return top


def _raw_edges(tasks: list[_Task], top: list[int], index: IdIndex, notes: Notes, edges: Edges) -> list[list[_Edge]]:
    """Every task's edges, skipped tasks' too: ORDER among top-level tasks and among each group's members,
    SUBTASK_GROUP between a group and its members, then EXPLICIT from clauses."""
    explicit = [
        [
            (on, EXPLICIT, clause.line)
            for clause in task.clauses
            for on in resolve_clause(clause, task.listed.id, index, notes, edges)
        ]
        for task in tasks
    ]
    raw: list[list[_Edge]] = [[] for _ in tasks]
    _order(tasks, top, raw)
    for group in top:
        members = tasks[group].members
        if not members:
            continue
        waited = [on for on, _, _ in raw[group] + explicit[group]]
        for head in _order(tasks, members, raw):
            member = members[head]
            raw[member] += [(on, SUBTASK_GROUP, tasks[member].listed.line) for on in waited]
        raw[group] += [(tasks[member].listed.id, SUBTASK_GROUP, tasks[group].listed.line) for member in members]
    return [structural + clauses for structural, clauses in zip(raw, explicit, strict=True)]


def _order(tasks: list[_Task], positions: list[int], raw: list[list[_Edge]]) -> list[int]:
    """ORDER edges among `positions` (by spec-kit's rule, (P) for [P]); the heads (indexes into `positions`)."""
    ordering = in_order([tasks[position].parallel for position in positions])
    for position, waits in zip(positions, ordering.before, strict=True):
        line = tasks[position].listed.line
        raw[position] += [(tasks[positions[waited]].listed.id, ORDER, line) for waited in waits]
    return ordering.heads


class _Skipped:
    """Edges through skipped tasks: an edge to one goes to what it would have waited for (itself skipped: through
    it too), worked out once per skipped task, without recursion (a chain of them may be long)."""

    def __init__(self, tasks: list[_Task], raw: list[list[_Edge]], edges: Edges) -> None:
        kept_ids = {task.listed.id for task in tasks if not task.skipped}
        self.position: dict[str, int] = {}
        for position, task in enumerate(tasks):
            if task.skipped and task.listed.id not in kept_ids:
                self.position.setdefault(task.listed.id, position)
        self.raw = raw
        self.edges = edges
        self.memo: dict[int, list[str]] = {}

    def targets(self, on: str, line: int) -> list[str]:
        """Where an edge to `on` goes: `on` itself unless it is a skipped task."""
        start = self.position.get(on)
        if start is None:
            return [on]
        stack, visiting = [start], set()
        while stack:
            position = stack[-1]
            if position in self.memo:
                stack.pop()
                continue
            pending = [
                waited
                for waited in (self.position.get(dep) for dep, _, _ in self.raw[position])
                if waited is not None and waited not in self.memo and waited not in visiting
            ]
            if pending and position not in visiting:
                visiting.add(position)
                stack += pending
                continue
            found: dict[str, None] = {}
            for dep, _, _ in self.raw[position]:
                waited = self.position.get(dep)
                found.update(dict.fromkeys([dep] if waited is None else self.memo.get(waited, [])))
            self.edges.reserve(len(found), line)
            self.memo[position] = list(found)
            visiting.discard(position)
            stack.pop()
        return self.memo[start]


def _through_skipped(tasks: list[_Task], raw: list[list[_Edge]], kept: list[int], edges: Edges) -> None:
    """Each kept task's edges, those to a skipped task sent through it (see _Skipped), with their reason and line."""
    skipped = _Skipped(tasks, raw, edges)
    for position in kept:
        for on, reason, line in raw[position]:
            for target in skipped.targets(on, line):
                edges.add(position, target, reason, line)
