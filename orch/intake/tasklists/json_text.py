"""A JSON text as written: where its objects, keys, array items and string values are, so a reader can name the
line of a task's `"id"` and a writer can replace a task's `"status"` string token and nothing else.

The values come from json.loads; a linear scan of the same text finds where each of them is. The scan is run on
text json.loads has accepted (or on the valid prefix before json.loads' own problem, to say where it is), and keeps
no more than one record per container it is asked for, so its time and memory are in proportion to the text's.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from orch.intake.plan import clipped, quoted
from orch.intake.tasklists.model import MarkSpan

MAX_NESTING = 64  # task-master nests 7 levels: tag, its tasks, a task, its subtasks, a subtask, its dependencies
BOM = "\ufeff"

JsonPath = tuple[str | int, ...]  # keys and array indexes from the top value down; () is the top value

_STRING_PATTERN = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_BARE_PATTERN = r'[^\s"{}\[\]:,]+'  # a number, true, false, null (NaN, Infinity: json.loads takes them)
# A valid JSON text as tokens, each after the whitespace and commas before it. An object's member is one token, its
# key (group 1) with the start of its value: 2 a string, 3 an opening bracket, 4 anything else. Outside objects:
# 5 a string, 6 an opening bracket, 7 anything else; 8 a closing bracket. A string followed by a colon is a key, so
# no other state is needed to tell keys from values.
_TOKEN = re.compile(
    rf"[\s,]*(?:({_STRING_PATTERN})\s*:\s*(?:({_STRING_PATTERN})|([{{\[])|({_BARE_PATTERN}))"
    rf"|({_STRING_PATTERN})|([{{\[])|({_BARE_PATTERN})|([}}\]]))"
)
_STRING = re.compile(_STRING_PATTERN)
_MEMBER_STRING, _MEMBER_OPENING, _ITEM_STRING, _ITEM_OPENING, _CLOSING = 2, 3, 5, 6, 8


class JsonTextError(Exception):
    """A JSON text orch cannot take: `problem` (one line) at `line` (1-based; None when no line can be named)."""

    def __init__(self, line: int | None, problem: str) -> None:
        self.line = line
        self.problem = problem
        super().__init__(problem if line is None else f"line {line}: {problem}")


class Member(NamedTuple):
    """One key of an object: the line it is written on, and where its value's whole token is (quotes included, str
    offsets into the text, end exclusive) when the value is a string (-1, -1 for any other value). A tuple: a
    large file has hundreds of thousands, and a tuple is made several times faster than a dataclass."""

    line: int
    string_start: int
    string_end: int

    @property
    def string(self) -> MarkSpan | None:
        """Where the value's string token is; None when the value is not a string."""
        return MarkSpan(self.string_start, self.string_end) if self.string_start >= 0 else None


class ObjectLayout(NamedTuple):
    """Where an object is: the line of its `{`, and its keys (in the text's order)."""

    line: int
    members: dict[str, Member]


class ArrayLayout(NamedTuple):
    """Where an array is: the line of its `[`, and the line each item starts on."""

    line: int
    item_lines: list[int]


@dataclass(frozen=True, slots=True)
class JsonLayout:
    """Where the containers of a JSON text are, by path (those the scan was asked to keep)."""

    objects: dict[JsonPath, ObjectLayout]
    arrays: dict[JsonPath, ArrayLayout]

    def line_of(self, path: JsonPath, key: str | None = None) -> int | None:
        """The line of `key` in the object at `path` (the object's own line when `key` is None or absent, or the
        array's when `path` is an array); None when the scan did not keep that container."""
        found = self.objects.get(path)
        if found is None:
            array = self.arrays.get(path)
            return array.line if array is not None else None
        member = found.members.get(key) if key is not None else None
        return member.line if member is not None else found.line

    def item_line(self, path: JsonPath, index: int) -> int | None:
        """The line item `index` of the array at `path` starts on; None when not kept or out of range."""
        array = self.arrays.get(path)
        if array is None or not 0 <= index < len(array.item_lines):
            return None
        return array.item_lines[index]

    def string_span(self, path: JsonPath, key: str) -> MarkSpan | None:
        """The whole string token of `key`'s value in the object at `path`; None when it is absent, not a
        string, or the object was not kept."""
        found = self.objects.get(path)
        member = found.members.get(key) if found is not None else None
        return member.string if member is not None else None


def body_start(text: str) -> int:
    """Where the JSON starts in `text`: 1 after a byte-order mark, else 0."""
    return 1 if text.startswith(BOM) else 0


def load_json(text: str) -> Any:
    """The value of a JSON text (a leading byte-order mark allowed), or JsonTextError naming the line of the first
    problem: not JSON, nested more than MAX_NESTING levels, an integer beyond Python's digit limit."""
    start = body_start(text)
    try:
        return json.loads(text[start:] if start else text)
    except json.JSONDecodeError as exc:
        raise JsonTextError(exc.lineno, f"not JSON: {exc.msg}") from None
    except RecursionError:
        problem = _scan_problem(text, start)
        raise (problem or JsonTextError(None, f"nested more than {MAX_NESTING} levels deep")) from None
    except MemoryError:
        raise JsonTextError(None, "too large to load in the memory this process has") from None
    except ValueError as exc:  # an integer beyond Python's digit limit
        problem = _long_integer_problem(text, start)
        raise (problem or JsonTextError(None, f"not JSON: {clipped(str(exc))}")) from None


def _scan_problem(text: str, start: int) -> JsonTextError | None:
    try:
        scan_json(text, start=start, keep=lambda _path: False)
    except JsonTextError as problem:
        return problem
    return None


def scan_json(text: str, *, start: int | None = None, keep: Callable[[JsonPath], bool] | None = None) -> JsonLayout:
    """Where every object and array of a JSON text is, and each key's line and string value's span, for the
    containers whose path `keep` accepts (all when None). `text` must be JSON json.loads accepts (after the
    byte-order mark, skipped unless `start` says where to begin). Raises JsonTextError for a duplicate key or
    nesting deeper than MAX_NESTING, naming its line; on an invalid text the result means nothing.

    One pass, one regular-expression match per member or item; the container it is in is held in locals (the
    enclosing ones on a stack of tuples) because this loop is the cost of reading a large list."""
    objects: dict[JsonPath, ObjectLayout] = {}
    arrays: dict[JsonPath, ArrayLayout] = {}
    stack: list[tuple[JsonPath | None, dict[str, Any] | None, list[int], bool, int, int]] = []
    # The container the scan is in: its path (None: not in one yet); its keys (None: an array), each with its Member
    # when the container is kept, else with its offset; a kept array's item lines; whether it is kept; its line
    # (when kept); an array's current item.
    path: JsonPath | None = None
    keys: dict[str, Any] | None = None
    items: list[int] = []
    kept = False
    opened_line = 0
    index = -1
    line, counted = 1, 0  # `line` is the line of offset `counted`, counted forward only for what is kept
    count = text.count
    for token in _TOKEN.finditer(text, body_start(text) if start is None else start):
        kind = token.lastindex
        if kind is None or kind == _CLOSING:  # None: never (each alternative is a group)
            if kept:
                if keys is not None:
                    objects[path or ()] = ObjectLayout(opened_line, keys)
                else:
                    arrays[path or ()] = ArrayLayout(opened_line, items)
            if stack:
                path, keys, items, kept, opened_line, index = stack.pop()
            continue
        if kind >= _ITEM_STRING:  # an array's item, or the top value
            if path is not None:
                index += 1
                if kept:
                    at = token.start(kind)
                    line += count("\n", counted, at)
                    counted = at
                    items.append(line)
            if kind != _ITEM_OPENING:
                continue
            child: JsonPath = () if path is None else (*path, index)
        else:  # an object's member
            if keys is None:  # not valid JSON: nothing to say
                continue
            at = token.start(1)
            key = token.group(1)
            key = key[1:-1] if "\\" not in key else json.loads(key)
            if key in keys:
                _refuse_duplicate(text, key, keys[key], at)
            if kept:
                line += count("\n", counted, at)
                counted = at
                if kind == _MEMBER_STRING:
                    keys[key] = Member(line, token.start(kind), token.end(kind))
                else:
                    keys[key] = Member(line, -1, -1)
            else:
                keys[key] = at
            if kind != _MEMBER_OPENING:
                continue
            child = (*(path or ()), key)
        at = token.start(kind)
        if path is not None:
            if len(stack) == MAX_NESTING - 1:
                raise JsonTextError(_line_at(text, at), f"nested more than {MAX_NESTING} levels deep")
            stack.append((path, keys, items, kept, opened_line, index))
        path = child
        kept = keep is None or keep(child)
        if kept:
            line += count("\n", counted, at)
            counted = at
            opened_line = line
        keys, items, index = ({}, [], -1) if text[at] == "{" else (None, [], -1)
    return JsonLayout(objects, arrays)


def _refuse_duplicate(text: str, key: str, first: Member | int, at: int) -> None:
    first_line = first.line if isinstance(first, Member) else _line_at(text, first)
    raise JsonTextError(_line_at(text, at), f"duplicate key {quoted(key)} (first at line {first_line})")


def _line_at(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _long_integer_problem(text: str, start: int) -> JsonTextError | None:
    """The first integer of more digits than Python converts (json.loads refuses it without saying where)."""
    limit = sys.get_int_max_str_digits()
    if not limit:
        return None
    for token in re.finditer(rf"{_STRING_PATTERN}|(?<![0-9.eE+-])-?([0-9]{{{limit + 1},}})(?![0-9.eE])", text[start:]):
        if token.group(1):
            return JsonTextError(_line_at(text, start + token.start()), f"an integer of more than {limit} digits")
    return None


def set_statuses(text: str, spans: Mapping[MarkSpan, str]) -> str:
    """`text` with the string token at each span replaced by json.dumps of its new value, and every other character
    as it was (key order, unknown keys, other tags, whitespace, line ends, byte-order mark). Raises ValueError for
    a span that is not one whole string token of `text`, or that overlaps another."""
    pieces: list[str] = []
    at = 0
    for span, value in sorted(spans.items(), key=lambda item: item[0].start):
        if span.start < at or span.start < 0 or _STRING.fullmatch(text, span.start, span.end) is None:
            raise ValueError(f"{span} is not a string token of the text, or overlaps another span")
        pieces.append(text[at : span.start])
        pieces.append(json.dumps(value))
        at = span.end
    pieces.append(text[at:])
    return "".join(pieces)
