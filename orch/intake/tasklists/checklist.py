"""A plain Markdown checklist (seed 004's style): `- [ ] T008.002 Wire Redis cache (depends on T008.001)`.

Every checkbox is a task. Its id is the first word after the box when that word reads as an id — letters, then a
digit, then letters, digits, '.', '_' or '-' (T001.009, A1, 12) — or when it ends with ':' (`setup-db:`), the ':'
left out (as is a trailing '.' or ')': `1.`, `1)`); an item without one is named `L<line>`, with a note. Nested
items are ordinary tasks (no group).

Only explicit clauses make edges (EXPLICIT); nothing follows from the list's order:
- at the end of the task's line: `(depends on A, B)`, `(blocked by: A)`, `(after A)`; `— after A` or ` - after A`
  (an em dash, en dash or a spaced hyphen before); `blocked by: A` or `depends on: A` after one of those or after
  ';', ',', '.' or '|';
- a line under the task: `depends on: A` or `blocked by: A` (a bullet or not, bold or not).
An id mentioned anywhere else ("see T008.002 for context") is prose, not an edge. Ids may be ranges (T001.001-
T001.005, hyphen or en dash). A `blocked by:` or `depends on` whose text is not a list of ids is an edge to that
text as written (cut to markdown.MAX_CLAUSE_TEXT; the list reports it as a task it does not have, naming the line);
an `after` naming no ids is prose, noted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orch.intake.plan import ID_PATTERN, MAX_TEXT_CHARS, quoted
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
    id_shaped,
    outline,
    plan_name,
    task_files,
    title_of,
)
from orch.intake.tasklists.model import ListedTask, TaskList
from orch.intake.tasklists.reading import ReadOptions

_FIRST_WORD = re.compile(r"[ \t]*(?P<bold>\*\*)?(?P<word>[^\s*]{1,130})(?(bold)\*\*:?)(?=\s|$)(?P<text>.*)")
_VALID_ID = re.compile(ID_PATTERN)
_KEYWORD = re.compile(r"\b(?P<keyword>depends[ \t]+on|blocked[ \t]+by|after)\b[ \t]*:?", re.IGNORECASE)
_DASHES = "\u2014\u2013"  # em dash, en dash: written with or without spaces around
_LIST_SEPARATORS = ";,.|"


def _any_box(box: Checkbox) -> bool:
    return True


@dataclass(frozen=True)
class _Task:
    listed: ListedTask
    clauses: list[Clause]
    whole_title: str  # the title with its trailing clause, should that clause be prose after all


def read_checklist(text: str, path: Path, source: str, options: ReadOptions) -> TaskList:
    """The checklist in `text` (the file `path`, named `source` in messages): every checkbox a task, in the
    file's order, with only the edges its explicit clauses make (see the module's docstring)."""
    notes = Notes(source)
    nodes = outline(text, notes, _any_box, "not a task")
    tasks: list[_Task] = []
    section = ""
    for node in nodes:
        if isinstance(node, Heading):
            section = node.text if node.level > 1 else section
            continue
        tasks.append(_task(node, section, notes))
    listed = [task.listed for task in tasks]
    index = IdIndex(task.id for task in listed)
    edges = Edges(source, len(tasks))
    for position, task in enumerate(tasks):
        for clause in task.clauses:
            if not edges.add_clause(position, task.listed.id, clause, index, notes) and clause.line == task.listed.line:
                task.listed.title = task.whole_title
    edges.assign(listed)
    return TaskList(
        format="checklist",
        source=source,
        name=plan_name([path.stem], "checklist"),
        tasks=listed,
        description=first_heading(nodes),
        notes=notes.lines(),
        done_mark=done_mark_of((task.status for task in listed), "x"),
    )


def _task(item: Item, section: str, notes: Notes) -> _Task:
    """One task from its checkbox item: id (or L<line>), title without its trailing clause, clauses, files."""
    task_id, rest = _id_and_text(item.box.rest)
    if task_id is None:
        task_id = f"L{item.line}"
        notes.add(item.line, f"no id after the box: named {quoted(task_id)}")
    title_text, clause = trailing_clause(rest, item.line)
    clauses = [] if clause is None else [clause]
    texts = [title_text]
    for line in item.detail_lines():
        if (bullet := clause_bullet(line)) is not None:
            clauses.append(bullet)
        else:
            texts.append(line.text)
    listed = ListedTask(
        id=task_id,
        title=title_of(title_text, task_id),
        line=item.line,
        status=item.box.mark,
        description=clip("\n".join(part for part in (section, item.detail_text()) if part), MAX_TEXT_CHARS),
        done=item.box.mark in DONE_MARKS,
        files=task_files(texts, task_id, item.line, notes),
        mark=item.box.span,
    )
    return _Task(listed, clauses, title_of(rest, task_id))


def _id_and_text(rest: str) -> tuple[str | None, str]:
    """The item's id (see the module's docstring) and the text after it; None and the whole text without one."""
    match = _FIRST_WORD.match(rest)
    if match is None or not rest[:1].isspace():
        return None, rest
    word = match["word"]
    candidate = word[:-1] if word.endswith((":", ".", ")")) else word
    if not candidate or _VALID_ID.fullmatch(candidate) is None:
        return None, rest
    if id_shaped(candidate) or word.endswith(":"):
        return candidate, match["text"]
    return None, rest


def trailing_clause(text: str, line: int) -> tuple[str, Clause | None]:
    """The text without its trailing dependency clause, and the clause (see the module's docstring); the text
    whole and None when it ends in none. Only the last keyword with a separator before it can start one."""
    chosen: tuple[re.Match[str], int] | None = None
    for match in _KEYWORD.finditer(text):
        keyword = " ".join(match["keyword"].lower().split())
        start = _clause_start(text, match.start(), keyword)
        if start is not None:
            chosen = match, start
    if chosen is None:
        return text, None
    match, start = chosen
    keyword = " ".join(match["keyword"].lower().split())
    body = text[match.end() :].strip()
    if text[start] == "(":
        body = body.rstrip(".").rstrip()
        if not body.endswith(")") or "(" in body or ")" in body[:-1]:
            return text, None  # a parenthesis that does not close the line: prose
        body = body[:-1]
    return text[:start].rstrip(f" \t-{_DASHES}{_LIST_SEPARATORS}"), Clause(keyword, body, line)


def _clause_start(text: str, at: int, keyword: str) -> int | None:
    """Where a clause whose keyword is at `at` starts: at the '(' or dash or separator before it (spaces between),
    at 0 for a "depends on" or "blocked by" that starts the text; None when nothing before makes it a clause."""
    before = at - 1
    while before >= 0 and text[before] in " \t":
        before -= 1
    if before < 0:
        return None if keyword == "after" else 0
    char = text[before]
    if char == "(" or char in _DASHES:
        return before
    if char == "-":
        dash = before - 1 if before >= 1 and text[before - 1] == "-" else before  # "--" too
        return dash if dash == 0 or text[dash - 1] in " \t" else None
    if char in _LIST_SEPARATORS and keyword != "after":
        return before
    if keyword != "after" and _colon_after(text, at):  # "Title blocked by: T1": the colon makes it a clause
        return at
    return None


def _colon_after(text: str, at: int) -> bool:
    """Whether the two words of a keyword at `at` ("blocked by", "depends on") are followed by a colon."""
    words = text[at:].split(None, 2)
    return len(words) >= 2 and (words[1].endswith(":") or (len(words) == 3 and words[2].startswith(":")))
