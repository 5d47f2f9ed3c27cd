"""The plan model: parsing a YAML/JSON plan file, validating it whole, and resolving each task's agent type.

Validation reports every problem, one line each, naming the file and the task; nothing is half-accepted.
"""

from __future__ import annotations

import graphlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from orch.agents import EXECUTORS, NAME_PATTERN, AgentRegistry
from orch.alloc import collector_paused
from orch.budget import Budget
from orch.durations import parse_duration
from orch.errors import PlanInvalid
from orch.files import char_sets
from orch.routing import KeywordIndex, route

# Limits: a plan beyond them is rejected as absurd. 100,000 tasks still validate in a few seconds.
MAX_PLAN_BYTES = 64 * 1024 * 1024
MAX_TASKS = 100_000
MAX_DEPENDENCIES_PER_TASK = 10_000
MAX_FILES_PER_TASK = 1_000
# File leases are checked while the dispatch lock is held; their cost grows with pattern length and `[...]` sets
# (see orch.files), and these keep the costliest pattern pair found to some 9,000 steps (about 10 ms).
MAX_FILE_PATTERN_CHARS = 256
MAX_FILE_PATTERN_SETS = 8
MAX_TEXT_CHARS = 100_000
MAX_TITLE_CHARS = 500
MAX_TIMEOUT_SECONDS = 86_400
MAX_RETRIES = 100
MAX_PRIORITY = 1_000_000
MAX_PROBLEMS_SHOWN = 50

ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
CALL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("contains a NUL character (\\x00), which no store, argument or terminal keeps")
    return text


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=1, le=MAX_TIMEOUT_SECONDS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_no_nul)]


def _check_file_pattern(pattern: str) -> str:
    if not pattern or len(pattern) > MAX_FILE_PATTERN_CHARS:
        raise ValueError(f"file pattern {pattern[:40]!r} must be 1 to {MAX_FILE_PATTERN_CHARS} characters")
    _no_nul(pattern)
    path = PurePosixPath(pattern.replace("\\", "/"))
    if path.is_absolute() or (len(pattern) > 1 and pattern[1] == ":"):
        raise ValueError(f"file pattern {pattern!r} is absolute; give it relative to workdir")
    if ".." in path.parts:
        raise ValueError(f"file pattern {pattern!r} contains '..'; it must stay inside workdir")
    if (sets := char_sets(pattern)) > MAX_FILE_PATTERN_SETS:
        raise ValueError(f"file pattern {pattern!r} has {sets} [...] character sets; at most {MAX_FILE_PATTERN_SETS}")
    return pattern


FilePattern = Annotated[str, AfterValidator(_check_file_pattern)]


class BudgetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    usd: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
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
        if executor is not None and executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r} (known: {', '.join(EXECUTORS)})")
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
    executor: str
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


def read_plan_document(path: Path) -> Any:
    """The parsed YAML/JSON of a plan file; problems name the file (and line where the parser knows it)."""
    source = str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise PlanInvalid(source, [f"{source}: cannot read plan: {exc.strerror}"]) from None
    if path.is_dir():
        raise PlanInvalid(source, [f"{source}: is a folder, not a plan file"])
    if size > MAX_PLAN_BYTES:
        raise PlanInvalid(source, [f"{source}: {size} bytes is over the {MAX_PLAN_BYTES} byte limit"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanInvalid(source, [f"{source}: cannot read plan: {exc}"]) from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanInvalid(source, [f"{source}: line {exc.lineno}: invalid JSON: {exc.msg}"]) from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlanInvalid(source, [f"{source}: {where}invalid YAML: {problem}"]) from None


def load_plan(path: Path, registry: AgentRegistry) -> Plan:
    """Read, validate and resolve a plan file; raises PlanInvalid listing every problem."""
    document = read_plan_document(path)
    return validate_plan(document, registry, source=str(path), base_dir=path.resolve().parent)


# --- validation ------------------------------------------------------------------------------------


def _describe_error(error: ErrorDetails, prefix: str) -> str:
    field = ""
    for part in error["loc"]:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{prefix}unknown field {field!r}"
    if kind == "missing":
        return f"{prefix}missing required field {field!r}"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind == "string_pattern_mismatch":
        longest = re.search(r"\{1,(\d+)\}", str(error.get("ctx", {}).get("pattern", "")))
        limit = f" (at most {longest.group(1)})" if longest else ""
        message = f"{error['input']!r} is not allowed: use letters, digits, '.', '_' or '-'{limit}"
    return f"{prefix}{field}: {message}" if field else f"{prefix}{message}"


def _errors(exc: ValidationError, prefix: str) -> list[str]:
    return [_describe_error(e, prefix) for e in exc.errors(include_url=False)]


def validate_plan(document: Any, registry: AgentRegistry, source: str, base_dir: Path) -> Plan:
    """The plan as orch runs it; raises PlanInvalid listing every problem (the first MAX_PROBLEMS_SHOWN)."""
    with collector_paused():
        return _validate_plan(document, registry, source, base_dir)


def _validate_plan(document: Any, registry: AgentRegistry, source: str, base_dir: Path) -> Plan:
    problems: list[str] = []
    where = f"{source}: "
    if not isinstance(document, dict):
        raise PlanInvalid(source, [f"{where}a plan is a mapping with 'name' and 'tasks'"])
    try:
        header = PlanHeader.model_validate(document)
    except ValidationError as exc:
        raise PlanInvalid(source, _errors(exc, where)) from None

    defaults = header.defaults
    try:
        TaskFields.model_validate(defaults)
    except ValidationError as exc:
        problems.extend(_errors(exc, f"{where}defaults: "))
    if "id" in defaults:
        problems.append(f"{where}defaults: 'id' cannot be defaulted")

    specs: list[TaskSpec] = []
    first_index: dict[str, int] = {}
    # The graph is checked over every task whose id and `after` can be read, valid or not, so one bad task
    # does not make its dependants report it as unknown.
    graph: dict[str, list[str]] = {}
    for index, raw in enumerate(header.tasks):
        if not isinstance(raw, dict):
            problems.append(f"{where}tasks[{index}]: a task is a mapping with 'id' and 'title'")
            continue
        task_id = raw.get("id")
        label = f"task {task_id!r}" if isinstance(task_id, str) else f"tasks[{index}]"
        if isinstance(task_id, str):
            if task_id in first_index:
                problems.append(
                    f"{where}tasks[{index}]: duplicate task id {task_id!r} (first at tasks[{first_index[task_id]}])"
                )
                continue
            first_index[task_id] = index
            after = raw.get("after", defaults.get("after", []))
            graph[task_id] = [d for d in after if isinstance(d, str)] if isinstance(after, list) else []
        merged = {**defaults, **raw} if defaults else raw
        agent = merged.get("agent")
        if isinstance(agent, str) and agent not in registry:
            problems.append(f"{where}{label}: unknown agent type {agent!r} (known: {', '.join(registry.names)})")
        try:
            specs.append(TaskSpec.model_validate(merged))
        except ValidationError as exc:
            problems.extend(_errors(exc, f"{where}{label}: "))

    unknown = [(task_id, dep) for task_id, after in graph.items() for dep in after if dep not in graph]
    for task_id, dep in unknown:
        problems.append(f"{where}task {task_id!r}: depends on unknown task {dep!r}")
    if unknown:
        graph = {task: [d for d in after if d in graph] for task, after in graph.items()}
    cycle = find_cycle(graph)
    if cycle:
        problems.append(f"{where}dependency cycle: {' -> '.join(cycle)}")

    if problems:
        if len(problems) > MAX_PROBLEMS_SHOWN:
            hidden = len(problems) - MAX_PROBLEMS_SHOWN
            problems = [*problems[:MAX_PROBLEMS_SHOWN], f"{where}... and {hidden} more problems"]
        raise PlanInvalid(source, problems)

    keywords = KeywordIndex.build(registry)
    tasks = tuple(_resolve(spec, seq, registry, keywords) for seq, spec in enumerate(specs))
    workdir = Path(header.workdir)
    if not workdir.is_absolute():
        workdir = (base_dir / workdir).resolve()
    return Plan(header.name, header.description, workdir, source, tasks, document, _budget(header.budget))


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
        executor = spec.executor
    elif spec.command:
        executor = "shell"
    elif spec.call:
        executor = "python"
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
