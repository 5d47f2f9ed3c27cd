"""What the Markdown task-list readers (spec-kit, Kiro, checklists) share.

A file is read as an outline (`outline`): its headings, and its checkbox items (`- [ ] …`, `* [x] …`, `1. [-] …`,
indented or not) that the reader takes for tasks, each with the lines written under it (indented deeper than its
bullet, blank lines between them, and fenced code blocks opened under it). Lines inside fenced code blocks and HTML
comments are never tasks; a checkbox-looking line that is not taken is a note, never dropped silently.

Offsets are `str` offsets into the text as given (a leading BOM included), so `text[mark.start:mark.end]` is the
mark's one character; lines are counted by "\\n" (a CRLF's "\\r" is not part of a line's text).

Also here: paths a task names (backticked, or after " in "/" at "), titles cut to MAX_TITLE_CHARS, the file's
done-mark case, explicit dependency clauses as id lists with ranges (`T008-T013`, hyphen or en dash) expanded over
the ids the list has, and a bound on the edges a list may make (MAX_LIST_EDGES), so a hostile file cannot use
unbounded memory.
"""

from __future__ import annotations

import re
import textwrap
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from orch.decisions.file_leases import char_sets
from orch.intake.plan import MAX_FILE_PATTERN_CHARS, MAX_FILE_PATTERN_SETS, MAX_TEXT_CHARS, MAX_TITLE_CHARS, quoted
from orch.intake.tasklists.model import EXPLICIT, Dependency, ListedTask, MarkSpan
from orch.intake.tasklists.reading import MAX_LIST_TASKS, refuse

MAX_NOTES = 20  # notes kept whole; the rest are counted
MAX_FILES_PER_LISTED_TASK = 8  # paths taken from one task's text (its leases); the rest are noted
MAX_LIST_EDGES = 1_000_000  # dependencies in one list, ranges and barriers expanded: beyond, the list is refused
MAX_ID_CHARS = 128  # orch.intake.plan.ID_PATTERN's bound
MAX_CLAUSE_TEXT = 128  # a `blocked by:` naming no id becomes an edge to its text, cut to this
MAX_HEADINGS = MAX_LIST_TASKS  # headings in one list: beyond, the list is refused
MAX_KEPT_LINES = 1_000_000  # lines kept under a list's tasks (for descriptions and clauses): beyond, refused
MAX_LIST_LINES = 2_000_000  # lines in one list file (a 100,000-task list has some 300,000): beyond, refused
MAX_LINE_CHARS = 20_000  # a longer line is read as its first MAX_LINE_CHARS characters, with a note
MARKS = " xX-"
DONE_MARKS = "xX"

_BULLET = r"(?:[-*+]|\d{1,9}[.)])"
_CHECKBOX = re.compile(rf"[ \t]*{_BULLET}[ \t]+\[(?P<mark>[ xX-])\](?P<rest>.*)")
_CHECKBOX_LIKE = re.compile(rf"[ \t]*{_BULLET}[ \t]*\[[^\]]?\]")
_HEADING = re.compile(r" {0,3}(?P<level>#{1,6})(?:[ \t]|$)(?P<text>.*)")
_FENCE = re.compile(r"[ \t]*(?P<run>`{3,}|~{3,})")
_COMMENT_OPEN = "<!--"
_COMMENT_CLOSE = "-->"


class Line(NamedTuple):
    """One line of the file: its 1-based number, the offset of its first character, its text (no line ending)."""

    number: int
    start: int
    text: str


_NON_BLANK_LINE = re.compile(r"^[^\S\n]*\S[^\n]*", re.MULTILINE)


def iter_lines(text: str) -> Iterator[Line]:
    """The file's lines that are not blank, and the first line of each run of blank ones (as ''; a scan treats a
    run as one), in order: split at "\\n" with a trailing "\\r" left out, and a leading BOM left out of line 1's
    text (its offsets still count it). One at a time, and a run of blank lines at once: a file of blank lines costs
    neither memory nor time per line."""
    number, position = 1, 0  # the line `position` is on, which starts there
    for match in _NON_BLANK_LINE.finditer(text):
        start, end = match.span()
        if start > position:  # blank lines between
            yield Line(number, position, "")
            number += text.count("\n", position, start)
        body = text[start : end - 1] if text[end - 1] == "\r" else match[0]
        if start == 0 and body.startswith("\ufeff"):
            start, body = 1, body[1:]
        yield Line(number, start, body)
        number, position = number + 1, end + 1
    if position < len(text):
        yield Line(number, position, "")


def indent_of(text: str) -> int:
    """The columns of the line's leading whitespace (a tab to the next multiple of 4)."""
    lead = text[: len(text) - len(text.lstrip(" \t"))]
    if "\t" not in lead:
        return len(lead)
    column = 0
    for char in lead:
        column += 1 if char == " " else 4 - column % 4
    return column


@dataclass(frozen=True)
class Checkbox:
    """A checkbox line: its line, its bullet's indent, its mark (one of MARKS), where the mark is, and the text after
    the closing bracket (as written: a Kiro optional task's `*` is its first character)."""

    line: Line
    indent: int
    mark: str
    mark_at: int
    rest: str

    @property
    def span(self) -> MarkSpan:
        return MarkSpan(self.mark_at, self.mark_at + 1)


def checkbox(line: Line) -> Checkbox | None:
    """The line as a checkbox item, or None."""
    match = _CHECKBOX.fullmatch(line.text)
    if match is None:
        return None
    mark_index = match.start("mark")
    return Checkbox(line, indent_of(line.text), match["mark"], line.start + mark_index, match["rest"])


def looks_like_checkbox(text: str) -> bool:
    """Whether a line looks like a checkbox though it may not be one (`- [~] …`, `-[ ] …`, `- [] …`)."""
    return _CHECKBOX_LIKE.match(text) is not None


class Notes:
    """What a reader left out and why, each `FILE:LINE: note`: the first MAX_NOTES kept, the rest counted."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.shown: list[str] = []
        self.hidden = 0

    def add(self, line: int | None, note: str) -> None:
        if len(self.shown) >= MAX_NOTES:
            self.hidden += 1
            return
        where = self.source if line is None else f"{self.source}:{line}"
        self.shown.append(f"{where}: {note}")

    def lines(self) -> list[str]:
        """The notes kept, and a last one counting the rest."""
        more = [f"{self.source}: … and {self.hidden:,} more notes"] if self.hidden else []
        return [*self.shown, *more]


@dataclass(frozen=True)
class Heading:
    """An ATX heading (`## Phase 1: Setup`): its line, its level (1-6) and its text without the #s."""

    line: Line
    level: int
    text: str


@dataclass
class Item:
    """A checkbox line a reader takes for a task, and the lines written under it."""

    box: Checkbox
    details: list[Line] = field(default_factory=list)

    @property
    def line(self) -> int:
        return self.box.line.number

    def detail_lines(self) -> list[Line]:
        """The lines under the item, trailing blank lines left out."""
        end = len(self.details)
        while end and not self.details[end - 1].text.strip():
            end -= 1
        return self.details[:end]

    def detail_text(self) -> str:
        """The lines under the item as one text, dedented, cut to MAX_TEXT_CHARS."""
        text = textwrap.dedent("\n".join(line.text for line in self.detail_lines())).strip("\n")
        return clip(text, MAX_TEXT_CHARS)


Node = Heading | Item


class _Fence:
    """Whether the scan is inside a fenced code block, and which item (if any) the block belongs to."""

    def __init__(self) -> None:
        self.run = ""
        self.owner: Item | None = None

    @property
    def open(self) -> bool:
        return bool(self.run)

    def opens(self, text: str) -> bool:
        match = _FENCE.match(text)
        if match is None:
            return False
        self.run = match["run"]
        return True

    def closes(self, text: str) -> bool:
        stripped = text.strip()
        char = self.run[0]
        if len(stripped) >= len(self.run) and stripped == char * len(stripped):
            self.run, self.owner = "", None
            return True
        return False


class _Outline:
    """The scan of a file into headings and items (see outline), within the bounds a hostile file must not pass:
    MAX_LIST_TASKS items, MAX_HEADINGS headings and MAX_KEPT_LINES lines kept under items (a run of blank lines
    kept as one)."""

    def __init__(self, notes: Notes, is_task: Callable[[Checkbox], bool], not_task: str) -> None:
        self.notes, self.is_task, self.not_task = notes, is_task, not_task
        self.nodes: list[Node] = []
        self.open_items: list[Item] = []  # the item each deeper level of indentation belongs to
        self.fence = _Fence()
        self.in_comment = False
        self.items = self.headings = self.kept = 0

    def keep(self, item: Item, line: Line) -> None:
        if not line.text.strip() and item.details and not item.details[-1].text.strip():
            return
        self.kept += 1
        if self.kept > MAX_KEPT_LINES:
            raise refuse(self.notes.source, line.number, f"more than {MAX_KEPT_LINES:,} lines written under tasks")
        item.details.append(line)

    def feed(self, line: Line) -> None:
        if self.fence.open:
            if self.fence.owner is not None:
                self.keep(self.fence.owner, line)
            if not self.fence.closes(line.text) and looks_like_checkbox(line.text):
                self.notes.add(line.number, f"in a fenced code block, not a task: {quoted(line.text.strip())}")
            return
        if self.in_comment or line.text.lstrip().startswith(_COMMENT_OPEN):
            after_open = line.text if self.in_comment else line.text.split(_COMMENT_OPEN, 1)[1]
            self.in_comment = _COMMENT_CLOSE not in after_open
            if looks_like_checkbox(line.text):
                self.notes.add(line.number, f"in an HTML comment, not a task: {quoted(line.text.strip())}")
            return
        if not line.text.strip():
            if self.open_items:
                self.keep(self.open_items[-1], line)
            return
        indent = indent_of(line.text)
        while self.open_items and indent <= self.open_items[-1].box.indent:
            self.open_items.pop()
        if self.fence.opens(line.text):
            if self.open_items:
                self.fence.owner = self.open_items[-1]
                self.keep(self.fence.owner, line)
        elif (heading := _HEADING.fullmatch(line.text)) is not None:
            self.heading(line, len(heading["level"]), heading["text"])
        else:
            self.other(line)

    def heading(self, line: Line, level: int, text: str) -> None:
        self.open_items.clear()
        self.headings += 1
        if self.headings > MAX_HEADINGS:
            raise refuse(self.notes.source, line.number, f"more than {MAX_HEADINGS:,} headings")
        text = text.strip()
        if (bare := text.rstrip("#")) != text and (not bare or bare[-1] in " \t"):  # a closing `##`, not `C#`
            text = bare.rstrip()
        self.nodes.append(Heading(line, level, text))

    def other(self, line: Line) -> None:
        box = checkbox(line)
        if box is not None and self.is_task(box):
            self.items += 1
            if self.items > MAX_LIST_TASKS:
                raise refuse(self.notes.source, line.number, f"more than {MAX_LIST_TASKS:,} tasks in one list")
            item = Item(box)
            self.nodes.append(item)
            self.open_items.append(item)
            return
        if box is not None:
            self.notes.add(line.number, f"{self.not_task}: {quoted(line.text.strip())}")
        elif looks_like_checkbox(line.text):
            marks = "'[ ]', '[x]', '[X]', '[-]'"
            self.notes.add(line.number, f"not a checkbox (marks: {marks}): {quoted(line.text.strip())}")
        if self.open_items:
            self.keep(self.open_items[-1], line)


def outline(text: str, notes: Notes, is_task: Callable[[Checkbox], bool], not_task: str) -> list[Node]:
    """The file's headings and task items in order, each item with the lines under it. A checkbox that `is_task`
    refuses is noted (`not_task` says why) and, when indented under an item, kept as one of its lines; checkbox-like
    lines that are no checkbox, and any inside a fenced code block or an HTML comment, are noted too. Refuses
    (PlanInvalid) a file beyond the bounds of _Outline."""
    if (lines := text.count("\n") + 1) > MAX_LIST_LINES:
        raise refuse(notes.source, MAX_LIST_LINES + 1, f"more than {MAX_LIST_LINES:,} lines ({lines:,})")
    scan = _Outline(notes, is_task, not_task)
    for line in iter_lines(text):
        if len(line.text) > MAX_LINE_CHARS:
            notes.add(line.number, f"over {MAX_LINE_CHARS:,} characters: read as its first {MAX_LINE_CHARS:,}")
            line = line._replace(text=line.text[:MAX_LINE_CHARS])
        scan.feed(line)
    return scan.nodes


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with "…" as the last when it was longer."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def title_of(text: str, fallback: str) -> str:
    """`text` as a task's title: one line, whitespace runs as one space, at most MAX_TITLE_CHARS; `fallback` when
    it is blank."""
    return clip(" ".join(text[: 4 * MAX_TITLE_CHARS].split()) or fallback, MAX_TITLE_CHARS)


def done_mark_of(marks: Iterable[str], default: str) -> str:
    """The done mark the file uses most ('x' or 'X'); `default` when neither is used more."""
    lower = upper = 0
    for mark in marks:
        lower += mark == "x"
        upper += mark == "X"
    if lower == upper:
        return default
    return "x" if lower > upper else "X"


def plan_name(candidates: Iterable[str], fallback: str) -> str:
    """The first candidate made a valid plan name (characters outside [A-Za-z0-9._-] as '-', at most 128), or
    `fallback` if none gives one."""
    for candidate in candidates:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", candidate).strip("-.")[:MAX_ID_CHARS].strip("-.")
        if name:
            return name
    return fallback


# --- paths -----------------------------------------------------------------------------------------------------

_BACKTICKED = re.compile(r"`([^`\n]{1,300})`")
_AFTER_PREPOSITION = re.compile(r"(?:^|\s)(?:in|at)\s+([^\s`]{1,300})", re.IGNORECASE)
_PATH_CHARS = re.compile(r"[\w.@+*?\[\]/-]+")
_DOMAIN = re.compile(r"(?:[\w-]+\.)+(?:com|org|net|io|dev|ai|co|app|gov|edu)", re.IGNORECASE)
_EXTENSION = re.compile(r"\.([A-Za-z0-9]{1,10})$")
# A name without "/" is a path only with one of these extensions (or one of the bare names below): `Foo.bar` in
# prose is more often a method than a file.
FILE_EXTENSIONS = frozenset(
    """py pyi ipynb ts tsx js jsx mjs cjs json jsonc yaml yml toml ini cfg conf env md mdx rst txt adoc rs go java kt
    kts scala groovy gradle c h cc cpp cxx hpp hh cs fs rb php swift m mm sql sh bash zsh fish ps1 bat cmd html htm
    css scss sass less vue svelte astro xml xsd proto graphql gql tf tfvars hcl lock csv tsv ex exs erl hrl hs ml mli
    lua pl pm r dart zig nim jl sol prisma svg png jpg jpeg gif ico webp pdf example sample template tmpl tpl j2
    jinja properties mod sum cabal nix dockerfile pbxproj plist xcconfig storyboard xib resx csproj sln vcxproj
    makefile mk cmake in""".split()  # noqa: SIM905 (a list literal of 130 strings reads worse)
)
BARE_FILE_NAMES = frozenset(
    ["Dockerfile", "Makefile", "Justfile", "Procfile", "Gemfile", "Rakefile", "Vagrantfile", "Jenkinsfile", "Brewfile"]
)


def path_in(candidate: str, *, loose: bool) -> str | None:
    """`candidate` as a relative path a task works on, or None: no spaces, quotes or URL, not absolute, no "..",
    at most MAX_FILE_PATTERN_CHARS long with at most MAX_FILE_PATTERN_SETS `[...]` sets. With "/" it needs an
    extension, a trailing "/" or two "/" (`application/json` is no path); without, a known extension or name.
    `loose` (not backticked: "in src/a.py.") also strips trailing punctuation and always needs an extension or
    a trailing "/"."""
    path = candidate.strip()
    if loose:
        path = path.strip("\"'()[]{}<>,;:!?").rstrip(".")
    path = path.removeprefix("./")
    if not path or len(path) > MAX_FILE_PATTERN_CHARS or _PATH_CHARS.fullmatch(path) is None:
        return None
    if path.startswith(("/", "~", "-")) or ".." in path.split("/") or "//" in path:
        return None
    extension = _EXTENSION.search(path)
    if "/" in path:
        named_folder = path.endswith("/") or (not loose and path.count("/") >= 2)
        if _DOMAIN.fullmatch(path.split("/", 1)[0]) or (extension is None and not named_folder):
            return None
    elif not ((extension and extension[1].lower() in FILE_EXTENSIONS) or path in BARE_FILE_NAMES):
        return None
    if "[" in path and char_sets(path) > MAX_FILE_PATTERN_SETS:
        return None
    return path


def paths_in(texts: Iterable[str]) -> tuple[list[str], bool]:
    """The paths `texts` name (backticked, or after " in " / " at "), in order and without repeats: the first
    MAX_FILES_PER_LISTED_TASK, and whether there were more."""
    found: dict[str, None] = {}
    for text in texts:
        for pattern, loose in ((_BACKTICKED, False), (_AFTER_PREPOSITION, True)):
            for match in pattern.finditer(text):
                if (path := path_in(match[1], loose=loose)) is not None:
                    found[path] = None
                    if len(found) > MAX_FILES_PER_LISTED_TASK:
                        return list(found)[:MAX_FILES_PER_LISTED_TASK], True
    return list(found), False


def task_files(texts: Iterable[str], task_id: str, line: int, notes: Notes) -> list[str]:
    """The paths a task's text names (see paths_in), noting when it names more than MAX_FILES_PER_LISTED_TASK."""
    paths, more = paths_in(texts)
    if more:
        notes.add(line, f"task {quoted(task_id)} names more than {len(paths)} paths: the first {len(paths)} kept")
    return paths


# --- dependency clauses -----------------------------------------------------------------------------------------

_LIST_SEPARATOR = re.compile(r"\s*[,;&]\s*|\s+and\s+", re.IGNORECASE)
_ID_SHAPED = re.compile(r"[A-Za-z]*[0-9][A-Za-z0-9._-]*")
_NUMBERED_ID = re.compile(r"(?P<prefix>.*?)(?P<number>\d{1,30})(?P<suffix>[A-Za-z]?)")
_RANGE_DASH = re.compile("\\s*[\u2013\u2014-]\\s*")  # en dash, em dash, hyphen
_RANGE_MAX_CHARS = 2 * MAX_ID_CHARS + 8


@dataclass(frozen=True)
class Clause:
    """An explicit dependency clause as written: its keyword ("depends on", "blocked by", "after"), the text it
    names, and its line."""

    keyword: str
    text: str
    line: int


def split_id_list(text: str) -> list[str]:
    """The items of a list such as "T012, T013 and T014" (commas, semicolons, "&" and "and"), each stripped of
    backticks, asterisks, a trailing '.' and spaces."""
    items = (item.strip().strip("`*_").strip().rstrip(".") for item in _LIST_SEPARATOR.split(text))
    return [item for item in items if item]


def id_shaped(item: str) -> bool:
    """Whether an item reads as a list id (letters, then a digit, then id characters: T012, 2.1, T001.009)."""
    return len(item) <= MAX_ID_CHARS and _ID_SHAPED.fullmatch(item) is not None


def _numbered(item: str) -> tuple[str, int, str] | None:
    if len(item) > MAX_ID_CHARS:
        return None
    match = _NUMBERED_ID.fullmatch(item)
    return None if match is None else (match["prefix"], int(match["number"]), match["suffix"])


def id_range(item: str) -> tuple[str, str] | None:
    """The two ends of a range such as "T008-T013" (an en dash, em dash or hyphen between; the ends share the
    part before their number), or None."""
    if len(item) > _RANGE_MAX_CHARS:
        return None
    for dash in _RANGE_DASH.finditer(item):
        low, high = item[: dash.start()], item[dash.end() :]
        low_parts, high_parts = _numbered(low), _numbered(high)
        if low_parts is None or high_parts is None or not id_shaped(low):
            continue
        if high_parts[0] == low_parts[0] and id_shaped(high):
            return low, high
    return None


class IdIndex:
    """The ids a list has, for resolving clauses: ranges expand over the ids between their ends by number (the
    part before the number equal; T008-T013 holds T008, T010a and T013, not T013a), whatever their width."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.known: set[str] = set()
        self._by_prefix: dict[str, list[tuple[int, str, str]]] = {}
        for task_id in ids:
            if task_id in self.known:
                continue
            self.known.add(task_id)
            if (parts := _numbered(task_id)) is not None:
                prefix, number, suffix = parts
                self._by_prefix.setdefault(prefix, []).append((number, suffix, task_id))
        for entries in self._by_prefix.values():
            entries.sort()

    def resolve(self, item: str) -> list[str] | None:
        """The ids an item names: itself if the list has it, a range's ids (its ends always, so an end the list
        lacks is reported), else None (not an id, not a range)."""
        if item in self.known:
            return [item]
        ends = id_range(item)
        if ends is None:
            return [item] if id_shaped(item) else None
        low, high = (_numbered(end) for end in ends)
        assert low is not None and high is not None  # id_range checked both
        if (low[1], low[2]) > (high[1], high[2]):
            low, high, ends = high, low, (ends[1], ends[0])
        entries = self._by_prefix.get(low[0], [])
        first = bisect_left(entries, (low[1], low[2], ""))
        last = bisect_right(entries, (high[1], high[2], "\U0010ffff"))
        inside = [entry[2] for entry in entries[first:last]]
        return (
            [end for end in ends[:1] if end not in self.known]
            + inside
            + [end for end in ends[1:] if end not in self.known]
        )

    def names_ids(self, item: str) -> bool:
        """Whether an item is an id the list has, a range, or reads as an id."""
        return item in self.known or id_shaped(item) or id_range(item) is not None

    def range_size(self, item: str) -> int:
        """How many ids `resolve` would give for `item`, without making them."""
        ends = id_range(item)
        if item in self.known or ends is None:
            return 1
        low, high = sorted((_numbered(end) or ("", 0, "")) for end in ends)
        entries = self._by_prefix.get(low[0], [])
        inside = bisect_right(entries, (high[1], high[2], "\U0010ffff")) - bisect_left(entries, (low[1], low[2], ""))
        return inside + sum(end not in self.known for end in ends)


class Edges:
    """Every task's dependencies by position, each `on` once (an explicit clause's reason wins over a derived one),
    within MAX_LIST_EDGES for the whole list."""

    def __init__(self, source: str, tasks: int) -> None:
        self.source = source
        self._per_task: list[dict[str, Dependency]] = [{} for _ in range(tasks)]
        self._left = MAX_LIST_EDGES

    def check(self, count: int, line: int) -> None:
        """Refuse the list, naming `line`, if `count` more edges would go beyond its budget."""
        if count > self._left:
            raise refuse(
                self.source, line, f"the list makes more than {MAX_LIST_EDGES:,} dependencies (ranges and barriers)"
            )

    def reserve(self, count: int, line: int) -> None:
        """Take `count` from the budget for what edges are made from (see check)."""
        self.check(count, line)
        self._left -= count

    def add(self, task: int, on: str, reason: str, line: int) -> None:
        deps = self._per_task[task]
        known = deps.get(on)
        if known is None:
            self.reserve(1, line)
            deps[on] = Dependency(on, reason, line)
        elif reason == EXPLICIT and known.reason != EXPLICIT:
            deps[on] = Dependency(on, reason, line)

    def add_clause(self, task: int, owner: str, clause: Clause, index: IdIndex, notes: Notes) -> bool:
        """Add the edges of one explicit clause of task `owner` (see resolve_clause); whether it made any."""
        ons = resolve_clause(clause, owner, index, notes, self)
        for on in ons:
            self.add(task, on, EXPLICIT, clause.line)
        return bool(ons)

    def assign(self, tasks: Sequence[ListedTask]) -> None:
        """Set each task's `after` to its edges, in the order they were added."""
        for task, deps in zip(tasks, self._per_task, strict=True):
            task.after = list(deps.values())


def resolve_clause(clause: Clause, owner: str, index: IdIndex, notes: Notes, edges: Edges) -> list[str]:
    """The `on`s of an explicit clause of task `owner`: its ids and its ranges' ids (but `owner`, when a range spans
    it: "all of them" means the others) when every item is one; otherwise its text as written (cut to
    MAX_CLAUSE_TEXT), which the list reports as an unknown task — but an "after" clause that names no ids is prose,
    not an edge (noted)."""
    items = split_id_list(clause.text)
    if items and all(index.names_ids(item) for item in items):
        edges.check(sum(index.range_size(item) for item in items), clause.line)  # ranges' widths, before made
        ons: list[str] = []
        for item in items:
            spans = item not in index.known and id_range(item) is not None
            ons += [on for on in index.resolve(item) or () if not (spans and on == owner)]
        return ons
    text = " ".join(clause.text.split()).strip("`*_ .")
    if clause.keyword == "after" or not text:
        notes.add(clause.line, f"{quoted(clause.keyword + ' ' + text)} names no task ids: not a dependency")
        return []
    return [clip(text, MAX_CLAUSE_TEXT)]


_CLAUSE_BULLET = re.compile(
    r"[ \t]*(?:[-*+][ \t]+)?[*_]{0,2}(?P<keyword>depends[ \t]+on|depends|blocked[ \t]+by)[*_]{0,2}[ \t]*:(?P<text>.*)",
    re.IGNORECASE,
)


def clause_bullet(line: Line) -> Clause | None:
    """A line under a task that is a dependency clause of its own (`- depends on: A, B`, `- **Blocked by**: A`,
    Kiro's `- _Depends: 2.1, 3_`), or None."""
    match = _CLAUSE_BULLET.fullmatch(line.text)
    if match is None:
        return None
    keyword = " ".join(match["keyword"].lower().split())
    keyword = "depends on" if keyword == "depends" else keyword
    return Clause(keyword, match["text"].strip().strip("*_").strip(), line.number)


# --- order ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ordering:
    """The order edges of a sequence of tasks some of which may run in parallel (spec-kit's `[P]`, cc-sdd's `(P)`):
    for each position the positions it waits for; the heads (waiting for none of the sequence) and the sinks (the
    fewest tasks every task of the sequence is one of or an ancestor of)."""

    before: list[list[int]]
    heads: list[int]
    sinks: list[int]


def in_order(parallel: Sequence[bool]) -> Ordering:
    """The order of a sequence by spec-kit's rule: a task without the parallel mark waits for every task before it,
    a task with it for the nearest task before it without. Transitively reduced: a task without the mark waits for
    the previous one without it and the marked ones since (that one waits for all before it), so edges stay linear.
    """
    before: list[list[int]] = []
    last_serial: list[int] = []  # the previous task without the mark, if any
    parallel_since: list[int] = []
    for position, is_parallel in enumerate(parallel):
        if is_parallel:
            before.append(list(last_serial))
            parallel_since.append(position)
        else:
            before.append(last_serial + parallel_since)
            last_serial, parallel_since = [position], []
    heads = [position for position, waits in enumerate(before) if not waits]
    return Ordering(before, heads, parallel_since or last_serial)  # the marked ones since wait for the last without


def folder_name(path: Path) -> str:
    """The name of the folder the file is in ('' when unknown)."""
    try:
        return path.absolute().parent.name
    except OSError:  # the working directory is gone
        return path.parent.name


def first_heading(nodes: Iterable[Node], level: int = 1) -> str:
    """The text of the first heading of `level` (a list's title: `# Tasks: Checkout`), or ''."""
    return next((node.text for node in nodes if isinstance(node, Heading) and node.level == level), "")
