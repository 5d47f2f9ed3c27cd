"""The plan model: parsing a YAML/JSON plan file, validating it whole, and resolving each task's agent type.

Validation reports every problem, one line each, naming the file and the task; nothing is half-accepted. A plan
file is untrusted input: only a regular file is read, and only so much of it; YAML gives only what JSON has (no
binary, set, timestamp or merge-key values); duplicate keys are refused; what a document expands to through YAML
aliases, and how deep it nests, are bounded; and input quoted in a message is cut short.
"""

from __future__ import annotations

import graphlib
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from yaml.constructor import SafeConstructor

from orch.budget import Budget
from orch.decisions.file_leases import char_sets
from orch.durations import parse_duration
from orch.errors import PlanInvalid
from orch.executors import KNOWN, ExecutorName
from orch.intake.agents import NAME_PATTERN, AgentRegistry
from orch.intake.gc_pause import collector_paused
from orch.intake.routing import KeywordIndex, route

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

# Limits: a plan beyond them is rejected as absurd. 100,000 tasks still validate in a few seconds.
MAX_PLAN_BYTES = 64 * 1024 * 1024
MAX_TASKS = 100_000
MAX_DEPENDENCIES_PER_TASK = 10_000
MAX_FILES_PER_TASK = 1_000
# File leases are checked while the dispatch lock is held; their cost grows with pattern length and `[...]` sets
# (see orch.decisions.file_leases), and these keep the costliest pattern pair found to some 10,000 steps (about 10 ms).
MAX_FILE_PATTERN_CHARS = 256
MAX_FILE_PATTERN_SETS = 8
MAX_TEXT_CHARS = 100_000
MAX_TITLE_CHARS = 500
MAX_TIMEOUT_SECONDS = 86_400
MAX_RETRIES = 100
MAX_PRIORITY = 1_000_000
MAX_PROBLEMS_SHOWN = 50
# What a document may expand to through YAML aliases: no more than a plan file at the size limit can hold written
# out, so everything derived from it (error lines, the copy kept in the store, pydantic's input) stays in proportion.
MAX_DOCUMENT_CHARS = MAX_PLAN_BYTES
MAX_DOCUMENT_VALUES = MAX_PLAN_BYTES // 4
# Loading YAML builds a node of some 350 bytes for each value before any value: 2,000,000 nodes take about 700 MB.
# A 100,000-task plan with two dependencies per task has 900,000; larger plans load far leaner as JSON.
MAX_YAML_NODES = 2_000_000
MAX_NESTING = 32  # a plan nests 4 levels: the plan, its tasks, a task, a task's list or budget
MAX_MAPPING_KEYS = 64  # a task has 16 fields, a plan 6
MAX_QUOTED_CHARS = 128  # input quoted in a message: any valid id or name shows whole
MAX_MESSAGE_CHARS = 400
MAX_CYCLE_SHOWN = 20

ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
CALL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_ID = re.compile(ID_PATTERN)


def quoted(value: object) -> str:
    """`value` as a message quotes it: repr(), of at most MAX_QUOTED_CHARS characters of it."""
    if isinstance(value, str):
        return repr(value) if len(value) <= MAX_QUOTED_CHARS else f"{value[:MAX_QUOTED_CHARS]!r}…"
    text = repr(value)
    return text if len(text) <= MAX_QUOTED_CHARS else f"{text[:MAX_QUOTED_CHARS]}…"


def _clipped(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else f"{message[:MAX_MESSAGE_CHARS]}…"


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("contains a NUL character (\\x00), which no store, argument or terminal keeps")
    return text


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except OverflowError:  # an integer beyond any float
        raise ValueError(f"not a duration: {quoted(value)} is beyond any timeout") from None


Seconds = Annotated[float, BeforeValidator(_duration), Field(ge=1, le=MAX_TIMEOUT_SECONDS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_no_nul)]


def _check_file_pattern(pattern: str) -> str:
    if not pattern or len(pattern) > MAX_FILE_PATTERN_CHARS:
        raise ValueError(f"file pattern {quoted(pattern)} must be 1 to {MAX_FILE_PATTERN_CHARS} characters")
    _no_nul(pattern)
    path = PurePosixPath(pattern.replace("\\", "/"))
    if path.is_absolute() or (len(pattern) > 1 and pattern[1] == ":"):
        raise ValueError(f"file pattern {quoted(pattern)} is absolute; give it relative to workdir")
    if ".." in path.parts:
        raise ValueError(f"file pattern {quoted(pattern)} contains '..'; it must stay inside workdir")
    if (sets := char_sets(pattern)) > MAX_FILE_PATTERN_SETS:
        raise ValueError(
            f"file pattern {quoted(pattern)} has {sets} [...] character sets; at most {MAX_FILE_PATTERN_SETS}"
        )
    return pattern


FilePattern = Annotated[str, AfterValidator(_check_file_pattern)]


class BudgetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    usd: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)] | None = None
    tokens: Annotated[int, Field(gt=0, le=10**12)] | None = None


class TaskFields(BaseModel):
    """Every task field a plan's `defaults:` may set."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, Field(min_length=1, max_length=MAX_TITLE_CHARS), AfterValidator(_no_nul)] | None = None
    description: Text = ""
    agent: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    # default_factory, not `= []`: pydantic deep-copies a mutable default for every task that leaves it out
    after: Annotated[list[Annotated[str, Field(pattern=ID_PATTERN)]], Field(max_length=MAX_DEPENDENCIES_PER_TASK)] = (
        Field(default_factory=list)
    )
    priority: Annotated[int, Field(ge=-MAX_PRIORITY, le=MAX_PRIORITY)] = 0
    files: Annotated[list[FilePattern], Field(max_length=MAX_FILES_PER_TASK)] = Field(default_factory=list)
    success: Text = ""
    command: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_no_nul)] | None = None
    executor: str | None = None
    call: Annotated[str, Field(pattern=CALL_PATTERN)] | None = None
    verify: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_no_nul)] | None = None
    scope: Literal["loose", "strict"] = "loose"
    timeout: Seconds | None = None
    retries: Annotated[int, Field(ge=0, le=MAX_RETRIES)] | None = None
    budget: BudgetSpec | None = None

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, executor: str | None) -> str | None:
        if executor is not None and executor not in KNOWN:
            raise ValueError(f"unknown executor {quoted(executor)} (known: {', '.join(ExecutorName)})")
        return executor


class TaskSpec(TaskFields):
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    title: Annotated[str, Field(min_length=1, max_length=MAX_TITLE_CHARS), AfterValidator(_no_nul)]


class PlanHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=ID_PATTERN)]
    description: Text = ""
    workdir: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul)] = "."
    defaults: dict[str, Any] = Field(default_factory=dict)
    budget: BudgetSpec | None = None
    tasks: Annotated[list[Any], Field(min_length=1, max_length=MAX_TASKS)]


@dataclass(frozen=True)
class ResolvedTask:
    """A validated task with its agent type, queue, executor and limits decided."""

    key: str
    title: str
    description: str
    agent: str
    route_reason: str
    queue: str
    executor: ExecutorName
    command: str | None
    after: tuple[str, ...]
    priority: int
    files: tuple[str, ...]
    success: str
    timeout: float
    retries: int
    seq: int
    verify: str | None = None
    scope: str = "loose"
    call: str | None = None
    budget: Budget = field(default_factory=Budget)


@dataclass(frozen=True)
class Plan:
    name: str
    description: str
    workdir: Path
    source: str
    tasks: tuple[ResolvedTask, ...]
    document: Mapping[str, Any]  # the plan as written, kept in the store
    budget: Budget = field(default_factory=Budget)


# --- reading ---------------------------------------------------------------------------------------

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


def read_plan_document(path: Path) -> Any:
    """The parsed YAML/JSON of a plan file; problems name the file (and line where the parser knows it)."""
    source = str(path)
    data = _read_plan_bytes(path, source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanInvalid(source, [f"{source}: cannot read plan: {exc}"]) from None
    del data  # the text is a copy: 64 MiB less to hold while parsing
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
            elif kind is dict or kind is list:
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
        problem = _json_problem_where(text) or f"invalid JSON: {_clipped(str(exc))}"
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
        raise PlanInvalid(source, [f"{source}: {where}invalid YAML: {_clipped(problem)}"]) from None


@dataclass(frozen=True)
class WorkdirRoots:
    """The folders a plan's workdir must resolve inside, and how a message names them."""

    paths: tuple[Path, ...]
    named: str


def load_plan(path: Path, registry: AgentRegistry, roots: Sequence[Path] = ()) -> Plan:
    """Read, validate and resolve a plan file; raises PlanInvalid listing every problem. The workdir must resolve
    inside one of `roots` (ORCH_WORKDIR_ROOTS), or without them inside the plan file's folder."""
    document = read_plan_document(path)
    base_dir = path.resolve().parent
    if roots:
        allowed = WorkdirRoots(tuple(roots), f"ORCH_WORKDIR_ROOTS: {', '.join(map(str, roots))}")
    else:
        allowed = WorkdirRoots((base_dir,), f"the plan's folder {base_dir}; ORCH_WORKDIR_ROOTS widens them")
    return validate_plan(document, registry, source=str(path), base_dir=base_dir, roots=allowed)


# --- validation ------------------------------------------------------------------------------------


class _Problems:
    """The first MAX_PROBLEMS_SHOWN problem lines, and a count of the rest (never built)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.lines: list[str] = []
        self.hidden = 0

    @property
    def full(self) -> bool:
        return len(self.lines) >= MAX_PROBLEMS_SHOWN

    def add(self, problem: str) -> None:
        if self.full:
            self.hidden += 1
        else:
            self.lines.append(f"{self.where}{problem}")

    def add_errors(self, exc: ValidationError, prefix: str) -> None:
        room = MAX_PROBLEMS_SHOWN - len(self.lines)
        if room <= 0:
            self.hidden += exc.error_count()
            return
        errors = exc.errors(include_url=False)
        self.lines.extend(_describe_error(error, f"{self.where}{prefix}") for error in errors[:room])
        self.hidden += max(0, len(errors) - room)

    def report(self) -> list[str]:
        return [*self.lines, f"{self.where}... and {self.hidden} more problems"] if self.hidden else self.lines

    def raise_any(self, source: str) -> None:
        if self.lines:
            raise PlanInvalid(source, self.report())


def _describe_error(error: ErrorDetails, prefix: str) -> str:
    field = ""
    for part in error["loc"]:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{prefix}unknown field {quoted(field)}"
    if kind == "missing":
        return f"{prefix}missing required field {quoted(field)}"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind == "string_pattern_mismatch":
        pattern = str(error.get("ctx", {}).get("pattern", ""))
        if pattern == CALL_PATTERN:
            message = f"{quoted(error['input'])} is not allowed: give package.module:function"
        else:
            longest = re.search(r"\{1,(\d+)\}", pattern)
            limit = f" (at most {longest.group(1)})" if longest else ""
            message = f"{quoted(error['input'])} is not allowed: use letters, digits, '.', '_' or '-'{limit}"
    message = _clipped(message)
    return f"{prefix}{field}: {message}" if field else f"{prefix}{message}"


def validate_plan(
    document: Any, registry: AgentRegistry, source: str, base_dir: Path, roots: WorkdirRoots | None = None
) -> Plan:
    """The plan as orch runs it; raises PlanInvalid listing every problem (the first MAX_PROBLEMS_SHOWN). A relative
    workdir is taken from `base_dir`; with `roots`, the workdir must resolve inside one of them (plans built in
    memory, by tests and benchmarks, leave it out)."""
    with collector_paused():
        return _validate_plan(document, registry, source, base_dir, roots)


def _too_many(fields: Mapping[Any, Any]) -> str | None:
    """A list too long to hand to pydantic, which would build an error for each bad entry before checking length."""
    for name, limit, what in (
        ("after", MAX_DEPENDENCIES_PER_TASK, "dependencies"),
        ("files", MAX_FILES_PER_TASK, "file patterns"),
    ):
        value = fields.get(name)
        if isinstance(value, list) and len(value) > limit:
            return f"{name}: {len(value)} {what}, more than the {limit} allowed"
    return None


def _validate_plan(
    document: Any, registry: AgentRegistry, source: str, base_dir: Path, roots: WorkdirRoots | None
) -> Plan:
    where = f"{source}: "
    problems = _Problems(where)
    if not isinstance(document, dict):
        raise PlanInvalid(source, [f"{where}a plan is a mapping with 'name' and 'tasks'"])
    try:
        header = PlanHeader.model_validate(document)
    except ValidationError as exc:
        problems.add_errors(exc, "")
        raise PlanInvalid(source, problems.report()) from None

    workdir, problem = _workdir(header.workdir, base_dir, roots)
    if problem:
        problems.add(problem)
    defaults = header.defaults
    too_many = _too_many(defaults)
    if too_many:
        problems.add(f"defaults: {too_many}")
        problems.raise_any(source)
    try:
        TaskFields.model_validate(defaults)
    except ValidationError as exc:
        problems.add_errors(exc, "defaults: ")
    if "id" in defaults:
        problems.add("defaults: 'id' cannot be defaulted")

    specs: list[TaskSpec] = []
    first_index: dict[str, int] = {}
    # The graph is checked over every task whose id and `after` can be read, valid or not, so one bad task
    # does not make its dependants report it as unknown.
    graph: dict[str, list[str]] = {}
    for index, raw in enumerate(header.tasks):
        if not isinstance(raw, dict):
            problems.add(f"tasks[{index}]: a task is a mapping with 'id' and 'title'")
            continue
        merged = {**defaults, **raw} if defaults else raw
        too_many = _too_many(merged)
        task_id = raw.get("id")
        label = f"task {quoted(task_id)}" if isinstance(task_id, str) else f"tasks[{index}]"
        if isinstance(task_id, str):
            if task_id in first_index:
                problems.add(
                    f"tasks[{index}]: duplicate task id {quoted(task_id)} (first at tasks[{first_index[task_id]}])"
                )
                continue
            first_index[task_id] = index
            after = merged.get("after", [])
            readable = isinstance(after, list) and not too_many
            graph[task_id] = [d for d in after if isinstance(d, str)] if readable else []
        if too_many:
            problems.add(f"{label}: {too_many}")
            continue
        agent = merged.get("agent")
        if isinstance(agent, str) and agent not in registry:
            problems.add(f"{label}: unknown agent type {quoted(agent)} (known: {', '.join(registry.names)})")
        try:
            specs.append(TaskSpec.model_validate(merged))
        except ValidationError as exc:
            problems.add_errors(exc, f"{label}: ")

    unknown = False
    for task_id, after in graph.items():
        for dep in after:
            if dep not in graph:
                unknown = True
                if problems.full:  # only counted: a list of millions would not be built
                    problems.hidden += 1
                else:
                    problems.add(f"task {quoted(task_id)}: depends on unknown task {quoted(dep)}")
    if unknown:
        graph = {task: [d for d in after if d in graph] for task, after in graph.items()}
    cycle = find_cycle(graph)
    if cycle:
        problems.add(f"dependency cycle: {_describe_cycle(cycle)}")
    problems.raise_any(source)

    keywords = KeywordIndex.build(registry)
    tasks = tuple(_resolve(spec, seq, registry, keywords) for seq, spec in enumerate(specs))
    return Plan(header.name, header.description, workdir, source, tasks, document, _budget(header.budget))


def _workdir(written: str, base_dir: Path, roots: WorkdirRoots | None) -> tuple[Path, str | None]:
    """The workdir resolved (symbolic links too, relative to `base_dir`), and why it is refused if it is."""
    try:
        workdir = (base_dir / written).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop, on older Pythons
        return base_dir / written, f"workdir {quoted(written)} cannot be resolved: {exc}"
    if roots is None or any(workdir.is_relative_to(root) for root in roots.paths):
        return workdir, None
    shown = str(workdir) if str(workdir).isprintable() else quoted(str(workdir))
    return workdir, f"workdir {quoted(written)} resolves to {shown}, outside the allowed roots ({roots.named})"


def _describe_cycle(cycle: list[str]) -> str:
    """A cycle in run order, ids that are not valid ids quoted, a long one cut in the middle."""
    shown = [task if _ID.fullmatch(task) else quoted(task) for task in cycle]
    if len(shown) > MAX_CYCLE_SHOWN:
        left = len(shown) - MAX_CYCLE_SHOWN
        shown = [*shown[: MAX_CYCLE_SHOWN - 1], f"… ({left} more)", shown[-1]]
    return " -> ".join(shown)


_NO_BUDGET = Budget()


def _budget(spec: BudgetSpec | None) -> Budget:
    return _NO_BUDGET if spec is None else Budget(spec.usd, spec.tokens)


def find_cycle(after: Mapping[str, list[str]]) -> list[str] | None:
    """One dependency cycle in run order (`a -> b` means b runs after a), or None."""
    listed: set[str] = set()
    for task, dependencies in after.items():
        if not listed.issuperset(dependencies):
            break
        listed.add(task)
    else:
        return None  # every task is listed after its dependencies: that order is a topological one
    try:
        graphlib.TopologicalSorter(after).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def _resolve(spec: TaskSpec, seq: int, registry: AgentRegistry, index: KeywordIndex) -> ResolvedTask:
    decision = route(f"{spec.title}\n{spec.description}", registry, explicit=spec.agent, index=index)
    agent = registry.get(decision.agent)
    if spec.executor:
        executor = ExecutorName(spec.executor)
    elif spec.command:
        executor = ExecutorName.SHELL
    elif spec.call:
        executor = ExecutorName.PYTHON
    else:
        executor = agent.executor
    return ResolvedTask(
        key=spec.id,
        title=spec.title,
        description=spec.description,
        agent=agent.name,
        route_reason=decision.reason,
        queue=agent.queue,
        executor=executor,
        command=spec.command,
        after=tuple(dict.fromkeys(spec.after)),
        priority=spec.priority,
        files=tuple(spec.files),
        success=spec.success,
        timeout=spec.timeout if spec.timeout is not None else agent.timeout,
        retries=spec.retries if spec.retries is not None else agent.retries,
        seq=seq,
        verify=spec.verify,
        scope=spec.scope,
        call=spec.call,
        budget=_budget(spec.budget),
    )
