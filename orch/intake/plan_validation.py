"""Validating a plan: a document read from a plan file becomes the plan orch runs, each task's agent type, queue,
executor and limits resolved. Validation reports every problem, one line each, naming the file and the task;
nothing is half-accepted.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from orch.budget import Budget
from orch.dag import Dag
from orch.errors import PlanInvalid
from orch.executors import ExecutorName
from orch.intake.agents import AgentRegistry
from orch.intake.gc_pause import collector_paused
from orch.intake.plan import (
    CALL_PATTERN,
    ID_PATTERN,
    MAX_DEPENDENCIES_PER_TASK,
    MAX_FILES_PER_TASK,
    BudgetSpec,
    Plan,
    PlanHeader,
    ResolvedTask,
    TaskFields,
    TaskSpec,
    clipped,
    did_you_mean,
    quoted,
)
from orch.intake.plan_document import line_of, read_plan_document
from orch.intake.routing import KeywordIndex, route, weakness

# How many problem lines a message lists, and how many tasks of a dependency cycle it names.
MAX_PROBLEMS_SHOWN = 50
MAX_CYCLE_SHOWN = 20

_ID = re.compile(ID_PATTERN)


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


class _Problems:
    """The first MAX_PROBLEMS_SHOWN problem lines, and a count of the rest (never built)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.lines: list[str] = []
        self.hidden = 0

    @property
    def full(self) -> bool:
        return len(self.lines) >= MAX_PROBLEMS_SHOWN

    def at(self, line: int | None) -> str:
        """Where a problem is: the file, and the line where a YAML plan says it."""
        return self.where if line is None else f"{self.where}line {line}: "

    def add(self, problem: str, line: int | None = None) -> None:
        if self.full:
            self.hidden += 1
        else:
            self.lines.append(f"{self.at(line)}{problem}")

    def add_errors(
        self, exc: ValidationError, prefix: str, known: Collection[str], scope: str = "", mapping: Any = None
    ) -> None:
        """pydantic's errors in orch's words: `prefix` (a task's label) then the field, `scope` (`defaults.`)
        before its name; an unknown field gets the nearest of `known` as a did-you-mean. Each names its line when
        `mapping`, the one validated, is of a YAML plan."""
        room = MAX_PROBLEMS_SHOWN - len(self.lines)
        if room <= 0:
            self.hidden += exc.error_count()
            return
        errors = exc.errors(include_url=False)
        self.lines.extend(
            _describe_error(
                error, f"{self.at(line_of(mapping, error['loc'][0] if error['loc'] else None))}{prefix}", known, scope
            )
            for error in errors[:room]
        )
        self.hidden += max(0, len(errors) - room)

    def report(self) -> list[str]:
        return (
            [*self.lines, f"{self.where}... and {self.hidden} more problem{'' if self.hidden == 1 else 's'}"]
            if self.hidden
            else self.lines
        )

    def raise_any(self, source: str) -> None:
        if self.lines:
            raise PlanInvalid(source, self.report())


def _field_name(loc: tuple[int | str, ...], scope: str) -> str:
    field = scope.rstrip(".")
    for part in loc:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return field


def _describe_error(error: ErrorDetails, prefix: str, known: Collection[str], scope: str = "") -> str:
    """One pydantic error as one line in orch's words: `prefix` `field 'x': what is wrong`."""
    loc = error["loc"]
    field = _field_name(loc, scope)
    kind = error["type"]
    if kind == "extra_forbidden":
        nested = len(loc) > 1 and loc[-2] == "budget"
        hint = did_you_mean(str(loc[-1]), BudgetSpec.model_fields if nested else known)
        return f"{prefix}unknown field {quoted(field)}{hint}"
    if kind == "missing":
        return f"{prefix}missing required field {quoted(field)}"
    message = clipped(_in_orchs_words(error))
    return f"{prefix}field {quoted(field)}: {message}" if field else f"{prefix}{message}"


# pydantic's error types, in orch's words: ctx holds the limit; `{input}` is the value written, quoted.
_WORDS = {
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "string_too_long": "must be at most {max_length} characters",
    "too_long": "must have at most {max_length} entries",
    "too_short": "must have at least {min_length} entries",
    "string_type": "must be text, not {input}",
    "int_type": "must be a whole number, not {input}",
    "int_parsing": "must be a whole number, not {input}",
    "int_from_float": "must be a whole number, not {input}",
    "float_type": "must be a number, not {input}",
    "float_parsing": "must be a number, not {input}",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false, not {input}",
    "bool_parsing": "must be true or false, not {input}",
    "list_type": "must be a list, not {input}",
    "dict_type": "must be a mapping, not {input}",
    "model_type": "must be a mapping, not {input}",
    "model_attributes_type": "must be a mapping, not {input}",
    "literal_error": "must be {expected}, not {input}",
}


def _in_orchs_words(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "string_too_short":
        minimum = ctx.get("min_length", 1)
        return "must not be empty" if minimum == 1 else f"must be at least {minimum} characters"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if pattern == CALL_PATTERN:
            return f"{quoted(error['input'])} is not allowed: give package.module:function"
        longest = re.search(r"\{1,(\d+)\}", pattern)
        limit = f" (at most {longest.group(1)})" if longest else ""
        return f"{quoted(error['input'])} is not allowed: use letters, digits, '.', '_' or '-'{limit}"
    words = _WORDS.get(kind)
    if words is not None:
        try:
            limits = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
            return words.format(**limits, input=quoted(error["input"]))
        except (KeyError, IndexError):  # a context this pydantic does not give: its own words
            pass
    message = error["msg"].removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def validate_plan(
    document: Any, registry: AgentRegistry, source: str, base_dir: Path, roots: WorkdirRoots | None = None
) -> Plan:
    """The plan as orch runs it; raises PlanInvalid listing every problem (the first MAX_PROBLEMS_SHOWN). A relative
    workdir is taken from `base_dir`; with `roots`, the workdir must resolve inside one of them (plans built in
    memory, by tests and benchmarks, leave it out)."""
    with collector_paused():
        return _validate_plan(document, registry, source, base_dir, roots)


def _too_many(fields: Mapping[Any, Any], scope: str = "") -> str | None:
    """A list too long to hand to pydantic, which would build an error for each bad entry before checking length."""
    for name, limit, what in (
        ("after", MAX_DEPENDENCIES_PER_TASK, "dependencies"),
        ("files", MAX_FILES_PER_TASK, "file patterns"),
    ):
        value = fields.get(name)
        if isinstance(value, list) and len(value) > limit:
            return f"field {quoted(scope + name)}: {len(value)} {what}, more than the {limit} allowed"
    return None


_TASK_FIELDS = frozenset(TaskSpec.model_fields)


def _check_defaults(
    defaults: dict[str, Any], registry: AgentRegistry, problems: _Problems, source: str, written: Any
) -> dict[str, Any]:
    """The defaults that are valid, each problem of the others reported once (naming `defaults.<field>`), not
    again for every task it would reach. `written`: the defaults as written, where their lines are."""
    too_many = _too_many(defaults, "defaults.")
    if too_many:
        problems.add(too_many, line_of(written))
        problems.raise_any(source)
    bad: set[Any] = set()
    try:
        TaskFields.model_validate(defaults)
    except ValidationError as exc:
        problems.add_errors(exc, "", _TASK_FIELDS, scope="defaults.", mapping=written)
        bad = {error["loc"][0] for error in exc.errors(include_url=False) if error["loc"]}
    if "id" in defaults:
        problems.add("field 'defaults.id': a task's id cannot be defaulted", line_of(written, "id"))
        bad.add("id")
    agent = defaults.get("agent")
    if isinstance(agent, str) and "agent" not in bad and agent not in registry:
        known = ", ".join(registry.names)
        problem = f"field 'defaults.agent': unknown agent type {quoted(agent)} (known: {known})"
        problems.add(problem, line_of(written, "agent"))
        bad.add("agent")
    return {name: value for name, value in defaults.items() if name not in bad} if bad else defaults


def _read_header(document: dict[str, Any], problems: _Problems, source: str) -> PlanHeader:
    """The plan's header; a bad field of it is reported, and validation goes on without it (its tasks' problems
    are reported too). Without readable tasks there is nothing more to check."""
    try:
        return PlanHeader.model_validate(document)
    except ValidationError as exc:
        problems.add_errors(exc, "", PlanHeader.model_fields, mapping=document)
        bad = {error["loc"][0] for error in exc.errors(include_url=False) if error["loc"]}
    if "tasks" in bad:
        raise PlanInvalid(source, problems.report())
    readable = {k: v for k, v in document.items() if k in PlanHeader.model_fields and k not in bad}
    return PlanHeader.model_validate({"name": "unnamed", **readable})


def _known_dependencies(
    graph: dict[str, list[str]], problems: _Problems, written: dict[str, Any]
) -> dict[str, list[str]]:
    """The graph without its unknown dependencies, each reported (the cycle search needs known ones only)."""
    unknown = False
    for task_id, after in graph.items():
        for dep in after:
            if dep not in graph:
                unknown = True
                if problems.full:  # only counted: a list of millions would not be built
                    problems.hidden += 1
                else:
                    line = line_of(written.get(task_id), "after")
                    problems.add(f"task {quoted(task_id)}: depends on unknown task {quoted(dep)}", line)
    if unknown:
        return {task: [d for d in after if d in graph] for task, after in graph.items()}
    return graph


def _validate_plan(
    document: Any, registry: AgentRegistry, source: str, base_dir: Path, roots: WorkdirRoots | None
) -> Plan:
    where = f"{source}: "
    problems = _Problems(where)
    if not isinstance(document, dict):
        raise PlanInvalid(source, [f"{where}a plan is a mapping with 'name' and 'tasks'"])
    header = _read_header(document, problems, source)

    workdir, problem = _workdir(header.workdir, base_dir, roots)
    if problem:
        problems.add(problem, line_of(document, "workdir"))
    defaults = _check_defaults(header.defaults, registry, problems, source, document.get("defaults"))

    specs: list[TaskSpec] = []
    first_index: dict[str, int] = {}
    # The graph is checked over every task whose id and `after` can be read, valid or not, so one bad task
    # does not make its dependants report it as unknown.
    graph: dict[str, list[str]] = {}
    written: dict[str, Any] = {}  # each task as written, by id: where its lines are
    for index, raw in enumerate(header.tasks):
        if not isinstance(raw, dict):
            problems.add(f"tasks[{index}]: a task is a mapping with 'id' and 'title'", line_of(document, "tasks"))
            continue
        merged = {**defaults, **raw} if defaults else raw
        too_many = _too_many(merged)
        task_id = raw.get("id")
        label = f"task {quoted(task_id)}" if isinstance(task_id, str) else f"tasks[{index}]"
        if isinstance(task_id, str):
            if task_id in first_index:
                first = f"tasks[{first_index[task_id]}]"
                problem = f"tasks[{index}]: duplicate task id {quoted(task_id)} (first at {first})"
                problems.add(problem, line_of(raw, "id"))
                continue
            first_index[task_id] = index
            written[task_id] = raw
            after = merged.get("after", [])
            readable = isinstance(after, list) and not too_many
            graph[task_id] = [d for d in after if isinstance(d, str)] if readable else []
        if too_many:
            problems.add(f"{label}: {too_many}", line_of(raw))
            continue
        agent = merged.get("agent")
        if isinstance(agent, str) and agent not in registry:
            known = ", ".join(registry.names)
            problems.add(f"{label}: unknown agent type {quoted(agent)} (known: {known})", line_of(raw, "agent"))
        try:
            specs.append(TaskSpec.model_validate(merged))
        except ValidationError as exc:
            problems.add_errors(exc, f"{label}: ", _TASK_FIELDS, mapping=raw)

    graph = _known_dependencies(graph, problems, written)
    cycle = Dag(graph).find_cycle()
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
        routed=not spec.agent,
        route_weakness=weakness(decision),
    )
