"""Writing task states back into a list: only marks change — a checkbox's one character (`[ ]` → `[-]` → `[x]`,
in the file's own case) or a task-master `"status"` value — and every other byte stays. Pure: text and states in,
text out; the file is re-read and replaced by orch.services.tasklist_sync.

Marks only move forward from what orch did: a task that succeeded is ticked, one in flight is marked in progress
(where the format has that mark: Kiro and task-master; elsewhere when asked), and an in-progress mark goes back to
not-done only once its task failed or was cancelled. A box ticked by hand is never unticked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from orch.intake.tasklists.json_text import set_statuses
from orch.intake.tasklists.model import Format, ListedTask, MarkSpan, TaskList
from orch.states import DOOMING, HOLDING_FILES, TaskStatus

# Formats whose lists have an in-progress mark of their own, written by default.
RUNNING_MARK_FORMATS: frozenset[Format] = frozenset({"kiro", "taskmaster"})
_DONE_CHARS = frozenset("xX")
_TASKMASTER_DONE = frozenset({"done", "completed", "review", "cancelled", "canceled"})
_TASKMASTER_OPEN = frozenset({"pending", ""})  # "blocked" is the user's word: left as it is


@dataclass(frozen=True)
class MarkChange:
    task_id: str
    span: MarkSpan
    old: str  # the mark or status as it is in the text
    new: str  # the mark's character, or task-master's status word (written as a JSON string)


def mark_changes(
    listed: TaskList, text: str, states: Mapping[str, TaskStatus], mark_running: bool | None = None
) -> list[MarkChange]:
    """The marks of `listed` (read from `text`) that should change for the tasks' orch `states` (by list id); tasks
    orch does not know, or without a mark, stay. `mark_running`: write in-progress marks (None: where the format
    has them)."""
    running = listed.format in RUNNING_MARK_FORMATS if mark_running is None else mark_running
    changes = []
    for task in listed.tasks:
        state = states.get(task.id)
        if state is None or task.mark is None:
            continue
        old = text[task.mark.start : task.mark.end]
        new = _new_mark(listed, task, old, state, running)
        if new is not None and new != old:
            changes.append(MarkChange(task.id, task.mark, old, new))
    return changes


def _new_mark(listed: TaskList, task: ListedTask, old: str, state: TaskStatus, running: bool) -> str | None:
    if listed.format == "taskmaster":
        return _new_status(_json_word(old), state, running)
    if state is TaskStatus.SUCCEEDED:
        return None if old in _DONE_CHARS else listed.done_mark
    if running and state in HOLDING_FILES:
        return "-" if old == " " else None
    if running and state in DOOMING:
        return " " if old == "-" else None
    return None


def _new_status(word: str | None, state: TaskStatus, running: bool) -> str | None:
    """A task-master status's new word, or None to leave it."""
    if word is None:
        return None
    if state is TaskStatus.SUCCEEDED:
        return None if word in _TASKMASTER_DONE else "done"
    if running and state in HOLDING_FILES:
        return "in-progress" if word in _TASKMASTER_OPEN else None
    if running and state in DOOMING:
        return "pending" if word == "in-progress" else None
    return None


def _json_word(token: str) -> str | None:
    try:
        word = json.loads(token)
    except ValueError:
        return None
    return word.strip().lower() if isinstance(word, str) else None


def apply_changes(listed: TaskList, text: str, changes: list[MarkChange]) -> str:
    """`text` with each change's span replaced by its new mark, nothing else touched: a task-master status through
    orch.intake.tasklists.json_text.set_statuses (which checks each span is one whole string token)."""
    if listed.format == "taskmaster":
        return set_statuses(text, {change.span: change.new for change in changes})
    parts = []
    position = 0
    for change in sorted(changes, key=lambda c: c.span.start):
        parts.append(text[position : change.span.start])
        parts.append(change.new)
        position = change.span.end
    parts.append(text[position:])
    return "".join(parts)


def done_in_text(listed: TaskList, text: str) -> frozenset[str]:
    """The list's tasks whose mark says done in `text` (ticked boxes, task-master's done words)."""
    done = set()
    for task in listed.tasks:
        if task.mark is None:
            continue
        mark = text[task.mark.start : task.mark.end]
        if (listed.format == "taskmaster" and _json_word(mark) in _TASKMASTER_DONE) or mark in _DONE_CHARS:
            done.add(task.id)
    return frozenset(done)
