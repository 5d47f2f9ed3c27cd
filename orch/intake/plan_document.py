"""Reading a plan file: its bytes, bounded, into a document of what JSON has. A plan file is untrusted input: only
a regular file is read, and only so much of it; YAML gives only what JSON has (no binary, set, timestamp or
merge-key values); duplicate keys are refused; what a document expands to through YAML aliases, and how deep it
nests, are bounded; and input quoted in a message is cut short. Problems name the file, and the line where known.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml
from yaml.constructor import SafeConstructor

from orch.errors import PlanInvalid
from orch.intake.gc_pause import collector_paused
from orch.intake.plan import clipped, quoted

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

# Limits: a plan file beyond them is refused before it is validated.
MAX_PLAN_BYTES = 64 * 1024 * 1024
# What a document may expand to through YAML aliases: no more than a plan file at the size limit can hold written
# out, so everything derived from it (error lines, the copy kept in the store, pydantic's input) stays in proportion.
MAX_DOCUMENT_CHARS = MAX_PLAN_BYTES
MAX_DOCUMENT_VALUES = MAX_PLAN_BYTES // 4
# Loading YAML builds a node of some 350 bytes for each value before any value: 2,000,000 nodes take about 700 MB.
# A 100,000-task plan with two dependencies per task has 900,000; larger plans load far leaner as JSON.
MAX_YAML_NODES = 2_000_000
MAX_NESTING = 32  # a plan nests 4 levels: the plan, its tasks, a task, a task's list or budget
MAX_MAPPING_KEYS = 64  # a task has 16 fields, a plan 6


class LinedMapping(dict[Any, Any]):
    """A mapping of a YAML plan that knows where it was written: the line it starts on and its keys' lines
    (1-based, in the keys' order), so a problem in it can name its line. JSON plans are plain dicts: the JSON
    parser does not say where."""

    __slots__ = ("key_lines", "line")
    line: int
    key_lines: tuple[int, ...]

    def line_of(self, key: Any) -> int:
        """The line of `key` if this mapping has it, else the mapping's own."""
        for index, each in enumerate(self):
            if each == key:
                return self.key_lines[index] if index < len(self.key_lines) else self.line
        return self.line


def line_of(mapping: Any, key: Any = None) -> int | None:
    """The line a YAML plan wrote `key` of `mapping` on (the mapping's own line when `key` is None or absent);
    None when unknown (a JSON plan, a value built in memory)."""
    if not isinstance(mapping, LinedMapping):
        return None
    return mapping.line if key is None else mapping.line_of(key)


# --- the file ------------------------------------------------------------------------------------

_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_a_regular_file(mode: int) -> str | None:
    """What a file is when it is not a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for is_kind, kind in _FILE_KINDS if is_kind(mode)), "not a regular file")


def _read_plan_bytes(path: Path, source: str) -> bytes:
    """At most MAX_PLAN_BYTES of a regular file. Anything else is refused before a byte is read: a FIFO would block,
    /dev/zero never ends (and its size says 0), a device may act on being read."""

    def refuse(problem: str) -> NoReturn:
        raise PlanInvalid(source, [f"{source}: {problem}"])

    try:
        kind = _not_a_regular_file(os.stat(path).st_mode)
        if kind is not None:
            refuse(f"is {kind}, not a plan file")
        # O_NONBLOCK: should a FIFO take the file's place since the stat, opening it does not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        refuse(f"cannot read plan: {getattr(exc, 'strerror', None) or exc}")
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        kind = _not_a_regular_file(info.st_mode)
        if kind is not None:
            refuse(f"is {kind}, not a plan file")
        if info.st_size > MAX_PLAN_BYTES:
            refuse(f"{info.st_size} bytes is over the {MAX_PLAN_BYTES} byte limit")
        try:
            data = file.read(MAX_PLAN_BYTES + 1)
        except OSError as exc:
            refuse(f"cannot read plan: {exc.strerror or exc}")
    if len(data) > MAX_PLAN_BYTES:  # it grew since the fstat
        refuse(f"more than {MAX_PLAN_BYTES} bytes, over the limit")
    return data


def read_plan_text(path: Path, source: str | None = None) -> str:
    """A plan file's or task list's text: at most MAX_PLAN_BYTES of a regular file, decoded as UTF-8 (a BOM kept,
    line endings as written); problems name `source` (default: the path)."""
    source = source or str(path)
    data = _read_plan_bytes(path, source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanInvalid(source, [f"{source}: cannot read plan: {exc}"]) from None


def read_plan_document(path: Path) -> Any:
    """The parsed YAML/JSON of a plan file; problems name the file (and line where the parser knows it)."""
    source = str(path)
    text = read_plan_text(path, source)
    try:
        with collector_paused():  # nothing parsed is garbage yet; collections would walk it all, again and again
            document = _parse_json(text, source) if path.suffix.lower() == ".json" else _parse_yaml(text, source)
            problem = _document_size_problem(document)
    except RecursionError:  # the parser's own nesting limit comes before ours
        problem = f"nested more than {MAX_NESTING} levels deep"
    except MemoryError:
        problem = "too large to load in the memory this process has"
    if problem:
        raise PlanInvalid(source, [f"{source}: {problem}"])
    return document


def _document_size_problem(document: Any) -> str | None:
    """Whether the document, with every YAML alias expanded, nests too deeply, holds too many values or too much
    text, or holds a value JSON has no type for. Aliases share objects, so the walk counts a shared value each time
    it is reached, and stops at the first limit passed; its stack holds one iterator per level it is in."""
    if not isinstance(document, dict | list):
        return None
    values = chars = 0
    stack = [_entries(document)]
    while stack:
        for item in stack[-1]:
            values += 1
            kind = type(item)
            if kind is str:
                chars += len(item)
            elif kind is dict or kind is list or kind is LinedMapping:
                if len(stack) == MAX_NESTING:
                    return f"nested more than {MAX_NESTING} levels deep"
                stack.append(_entries(item))
                break
            elif kind not in _JSON_SCALARS:
                return f"holds a value of type {kind.__name__}, which a plan cannot hold"
        else:
            stack.pop()
        # checked as a container is entered or left: a container's own entries are no more than the file holds
        if values > MAX_DOCUMENT_VALUES:
            return f"holds more than {MAX_DOCUMENT_VALUES:,} values (counting each use of a YAML alias)"
        if chars > MAX_DOCUMENT_CHARS:
            return f"holds more than {MAX_DOCUMENT_CHARS:,} characters of text (counting each use of a YAML alias)"
    return None


def _entries(container: dict[Any, Any] | list[Any]) -> Iterator[Any]:
    """A list's items; a mapping's keys, then its values."""
    return chain(container, container.values()) if isinstance(container, dict) else iter(container)


_JSON_SCALARS = frozenset({int, float, bool, type(None)})


# JSON ---------------------------------------------------------------------------------------------


class _RefusedObject(Exception):
    """A JSON object with a duplicate key or too many keys; the text is scanned again to say where."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs) or len(pairs) > MAX_MAPPING_KEYS:
        raise _RefusedObject
    return mapping


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise PlanInvalid(source, [f"{source}: line {exc.lineno}: invalid JSON: {exc.msg}"]) from None
    except (_RefusedObject, ValueError) as exc:  # ValueError: an integer beyond Python's digit limit
        problem = _json_problem_where(text) or f"invalid JSON: {clipped(str(exc))}"
        raise PlanInvalid(source, [f"{source}: {problem}"]) from None


# A JSON text as tokens: strings, punctuation and numbers (true, false and null are left out: nothing to check).
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?')


def _json_problem_where(text: str) -> str | None:
    """The first duplicate key, object of too many keys or too long an integer in a JSON text, with its line: a
    scan run only once the parser has refused the text (the parser does not say where)."""
    objects: list[dict[str, int] | None] = []  # per open container: an object's keys and their lines; None: a list
    expect_key = False
    line, counted_to = 1, 0
    digits_limit = sys.get_int_max_str_digits()
    for token in _JSON_TOKEN.finditer(text):
        first = text[token.start()]
        if first in "{[":
            objects.append({} if first == "{" else None)
            expect_key = first == "{"
        elif first in "}]":
            if objects:
                objects.pop()
            expect_key = False
        elif first == ",":
            expect_key = bool(objects) and objects[-1] is not None
        elif first == ":":
            expect_key = False
        else:
            line += text.count("\n", counted_to, token.start())
            counted_to = token.start()
            keys = objects[-1] if objects else None
            if first == '"' and expect_key and keys is not None:
                key = json.loads(token.group())
                if key in keys:
                    return f"line {line}: duplicate key {quoted(key)} (first at line {keys[key]})"
                if len(keys) == MAX_MAPPING_KEYS:
                    return f"line {line}: an object of more than {MAX_MAPPING_KEYS} keys; no plan has one"
                keys[key] = line
            elif first != '"' and digits_limit and _integer_digits(token.group()) > digits_limit:
                return f"line {line}: an integer of more than {digits_limit} digits"
    return None


def _integer_digits(number: str) -> int:
    return 0 if any(c in number for c in ".eE") else len(number.lstrip("-"))


# YAML ---------------------------------------------------------------------------------------------

_T = TypeVar("_T")
_YAML_TAG = "tag:yaml.org,2002:"
# YAML values JSON has no type for: they would pass validation as text or lists, then fail in the store
_NOT_IN_JSON = ("binary", "set", "omap", "pairs", "timestamp")


class _Refused(yaml.MarkedYAMLError):
    """YAML a plan may not hold; `problem` is shown after the line."""


def _shown_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML_TAG) :] if tag.startswith(_YAML_TAG) else tag


def _refuse_tag(loader: _PlanLoader, node: yaml.Node) -> NoReturn:
    raise _Refused(
        problem=f"the tag {quoted(_shown_tag(node.tag))} is not allowed: a plan holds only text, numbers, "
        "true/false, null, lists and mappings",
        problem_mark=node.start_mark,
    )


class _PlanLoader(_SafeLoader):
    """The safe loader, less what JSON lacks: no binary, set, ordered-map, pairs or timestamp values (a date stays
    text), no merge keys, and no other tags; duplicate keys, mappings of too many keys and integers beyond Python's
    digit limit are refused, each naming its line."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_YAML_TAG + "timestamp", _YAML_TAG + "value")]
        for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self._check_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _check_keys(self, node: yaml.MappingNode) -> None:
        if len(node.value) > MAX_MAPPING_KEYS:
            raise _Refused(
                problem=f"a mapping of {len(node.value)} keys; no mapping in a plan has more than {MAX_MAPPING_KEYS}",
                problem_mark=node.start_mark,
            )
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _YAML_TAG + "merge":
                raise _Refused(
                    problem="merge keys ('<<') are not supported in plans; `defaults:` sets fields for every task",
                    problem_mark=key_node.start_mark,
                )
            key = self.construct_object(key_node)
            try:
                first = lines.get(key)
            except TypeError:  # unhashable: the safe loader names it
                continue
            if first is not None:
                raise _Refused(
                    problem=f"duplicate key {quoted(key)} (first at line {first})", problem_mark=key_node.start_mark
                )
            lines[key] = key_node.start_mark.line + 1

    def construct_lined_map(self, node: yaml.MappingNode) -> Iterator[LinedMapping]:
        """A mapping with its line and its keys' lines (LinedMapping); otherwise as the safe loader builds one."""
        data = LinedMapping()
        data.line = node.start_mark.line + 1
        data.key_lines = ()
        yield data
        data.update(self.construct_mapping(node))
        data.key_lines = tuple([key_node.start_mark.line + 1 for key_node, _ in node.value])

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        limit = sys.get_int_max_str_digits() or sys.int_info.default_max_str_digits
        # checked first: a long base-60 integer ("1:2:3:…") takes quadratic time to build
        if len(node.value) > limit:
            raise _Refused(problem=f"an integer of more than {limit} digits", problem_mark=node.start_mark)
        return self._scalar(SafeConstructor.construct_yaml_int, node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        return self._scalar(SafeConstructor.construct_yaml_float, node)

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        return self._scalar(SafeConstructor.construct_yaml_bool, node)

    def _scalar(self, construct: Callable[[SafeConstructor, yaml.ScalarNode], _T], node: yaml.ScalarNode) -> _T:
        """A scalar an explicit tag (`!!int x`) may have put where its constructor cannot read it."""
        try:
            return construct(self, node)
        except (ValueError, KeyError, TypeError):
            problem = f"{quoted(node.value)} is not a valid {_shown_tag(node.tag)}"
            raise _Refused(problem=problem, problem_mark=node.start_mark) from None


for _tag in _NOT_IN_JSON:
    _PlanLoader.add_constructor(_YAML_TAG + _tag, _refuse_tag)
_PlanLoader.add_constructor(None, _refuse_tag)
_PlanLoader.add_constructor(_YAML_TAG + "map", _PlanLoader.construct_lined_map)
_PlanLoader.add_constructor(_YAML_TAG + "int", _PlanLoader.construct_yaml_int)
_PlanLoader.add_constructor(_YAML_TAG + "float", _PlanLoader.construct_yaml_float)
_PlanLoader.add_constructor(_YAML_TAG + "bool", _PlanLoader.construct_yaml_bool)


_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.AliasEvent)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        # Counted first, as events go by: the loader builds every node (some 350 bytes each) before it builds a value.
        nodes = 0
        for event in yaml.parse(text, Loader=_PlanLoader):
            nodes += isinstance(event, _NODE_EVENTS)
            if nodes > MAX_YAML_NODES:
                line = f"line {event.start_mark.line + 1}: " if event.start_mark else ""
                problem = f"more than {MAX_YAML_NODES:,} YAML nodes; give a plan this large as JSON"
                raise PlanInvalid(source, [f"{source}: {line}{problem}"])
        return yaml.load(text, Loader=_PlanLoader)
    except _Refused as exc:
        line = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark is not None else ""
        raise PlanInvalid(source, [f"{source}: {line}{exc.problem}"]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow; it says where by position
        line_number = text.count("\n", 0, exc.position) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        problem = f"invalid YAML: character {quoted(char)} is not allowed ({exc.reason})"
        raise PlanInvalid(source, [f"{source}: line {line_number}: {problem}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = " ".join((getattr(exc, "problem", None) or str(exc)).split())  # one line
        raise PlanInvalid(source, [f"{source}: {where}invalid YAML: {clipped(problem)}"]) from None
