"""A task list as orch reads it: the tasks of a spec-kit, task-master, Kiro or Markdown checklist file, each with
the list's own id, where it is written, its mark, and its dependencies with the reason each was derived. Every
reader (orch.intake.tasklists.speckit, taskmaster, kiro, checklist) builds one; orch.intake.tasklists turns it into
an ordinary plan document, and orch.intake.tasklists.writeback edits its marks in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Format = Literal["speckit", "taskmaster", "kiro", "checklist"]
FORMATS: tuple[Format, ...] = ("speckit", "taskmaster", "kiro", "checklist")

# Why an edge exists (`orch import --explain` prints it beside the edge).
PHASE_BARRIER = "phase barrier"  # spec-kit: a phase waits for every task of the phases before it
ORDER = "order"  # the list's order: a task waits for the one(s) written before it
EXPLICIT = "explicit clause"  # `(depends on T012)`, `blocked by: A`, `_Depends: 2.1_`, task-master `dependencies`
SUBTASK_GROUP = "subtask group"  # a group waits for its subtasks; its subtasks wait for what the group waits for
REASONS = (PHASE_BARRIER, ORDER, EXPLICIT, SUBTASK_GROUP)


@dataclass(frozen=True)
class Dependency:
    """An edge: the task waits for the task whose list id is `on`."""

    on: str
    reason: str  # one of REASONS
    line: int  # the 1-based line the edge comes from (the clause's line; for order and barriers the task's own)


@dataclass(frozen=True)
class MarkSpan:
    """Where a task's mark is in the file's text (str offsets, end exclusive), for writing it back: the one
    character between a Markdown checkbox's brackets (`[ ]`, `[x]`, `[X]`, `[-]`), or a JSON `"status"` value's
    whole string token, quotes included."""

    start: int
    end: int


@dataclass
class ListedTask:
    """One task of a list, as the list says it."""

    id: str  # the list's own id: T012, T007a, 3, 3.2, 12, 12.1, T001.009 (matches orch.intake.plan.ID_PATTERN)
    title: str  # one line, at most orch.intake.plan.MAX_TITLE_CHARS characters
    line: int  # 1-based line of the task (its checkbox line; in JSON, the line of its "id" key)
    status: str  # the list's own word for its state: the mark's character (" ", "x", "X", "-") or task-master's
    description: str = ""  # what the agent is told beyond the title: phase, story, details, requirement lines
    done: bool = False  # already done in the list: not run, counts as succeeded
    hold: str | None = None  # not run, and holds its dependants; why (task-master `deferred`)
    after: list[Dependency] = field(default_factory=list)  # every edge, with its reason (readers dedupe by `on`)
    files: list[str] = field(default_factory=list)  # relative paths the task works on (orch's file leases)
    success: str = ""  # how to tell it is done (task-master testStrategy, Kiro _Requirements_)
    priority: int = 0  # orch priority (higher first); task-master critical 3, high 2, medium 1, low 0
    group: bool = False  # its subtasks do the work: it runs nothing, and succeeds once they all did
    mark: MarkSpan | None = None  # where its mark is, for write-back; None: the reader cannot write it back


@dataclass
class TaskList:
    """A whole list: what a reader returns."""

    format: Format
    source: str  # the file as named on the command line
    name: str  # the plan's name (an ID_PATTERN): the feature folder, the tag, the file's stem
    tasks: list[ListedTask]
    description: str = ""
    notes: list[str] = field(default_factory=list)  # what the reader left out, and why (`--explain` prints them)
    context_files: list[str] = field(default_factory=list)  # spec-kit: spec.md, plan.md… beside the list, that exist
    done_mark: str = "x"  # the checkbox character this file uses for done (its case), for write-back
