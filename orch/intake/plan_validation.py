"""Validating a plan: a document read from a plan file becomes the plan orch runs, each task's agent type, queue,
executor and limits resolved. Validation reports every problem, one line each, naming the file and the task;
nothing is half-accepted.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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
    MAX_GATES,
    MAX_URL_CHARS,
    PLANS_OWN_REPOSITORY,
    BudgetSpec,
    Plan,
    PlanHeader,
    Repository,
    RepoSpec,
    ResolvedTask,
    TaskFields,
    TaskSpec,
    clipped,
    did_you_mean,
    quoted,
    repository,
    url_kind,
)
from orch.intake.plan_document import line_of, read_plan_document
from orch.intake.routing import KeywordIndex, route, weakness

if TYPE_CHECKING:
    from orch.intake.targets import Targets

# How many problem lines a message lists, how many tasks of a dependency cycle it names, how many names a list of
# known targets or of tasks in one problem shows.
MAX_PROBLEMS_SHOWN = 50
MAX_CYCLE_SHOWN = 20
MAX_NAMES_SHOWN = 20
MAX_TASKS_NAMED = 5

_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class WorkdirRoots:
    """The folders a plan's workdir must resolve inside, and how a message names them."""

    paths: tuple[Path, ...]
    named: str


def load_plan(
    path: Path, registry: AgentRegistry, roots: Sequence[Path] = (), *, targets: Targets | None = None
) -> Plan:
    """Read, validate and resolve a plan file; raises PlanInvalid listing every problem. The workdir must resolve
    inside one of `roots` (ORCH_WORKDIR_ROOTS), or without them inside the plan file's folder. `targets`: the
    repositories config/targets.yaml declares (orch.intake.targets.load_targets); None: none."""
    document = read_plan_document(path)
    base_dir = path.resolve().parent
    if roots:
        allowed = WorkdirRoots(tuple(roots), f"ORCH_WORKDIR_ROOTS: {', '.join(map(str, roots))}")
    else:
        allowed = WorkdirRoots((base_dir,), f"the plan's folder {base_dir}; ORCH_WORKDIR_ROOTS widens them")
    return validate_plan(document, registry, source=str(path), base_dir=base_dir, roots=allowed, targets=targets)


class Problems:
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
            describe_error(
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
    """`scope` and `loc` as a field's name: `repo.gates[0]`, a key of a mapping of patterns `repo.relock[uv.lock]`."""
    name = scope.rstrip(".")
    keyed = False  # the part after `relock` is a key of it, not a field
    for part in loc:
        if part == "[key]":  # pydantic's mark for a key's own problem: the key is named already
            continue
        name += f"[{part}]" if isinstance(part, int) or keyed else (f".{part}" if name else str(part))
        keyed = part == "relock"
    return name


def describe_error(error: ErrorDetails, prefix: str, known: Collection[str], scope: str = "") -> str:
    """One pydantic error as one line in orch's words: `prefix` `field 'x': what is wrong`."""
    loc = error["loc"]
    name = _field_name(loc, scope)
    kind = error["type"]
    if kind == "extra_forbidden":
        nested = len(loc) > 1 and loc[-2] == "budget"
        hint = did_you_mean(str(loc[-1]), BudgetSpec.model_fields if nested else known)
        return f"{prefix}unknown field {quoted(name)}{hint}"
    if kind == "missing":
        return f"{prefix}missing required field {quoted(name)}"
    message = clipped(_in_orchs_words(error))
    return f"{prefix}field {quoted(name)}: {message}" if name else f"{prefix}{message}"


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
    document: Any,
    registry: AgentRegistry,
    source: str,
    base_dir: Path,
    roots: WorkdirRoots | None = None,
    *,
    targets: Targets | None = None,
) -> Plan:
    """The plan as orch runs it; raises PlanInvalid listing every problem (the first MAX_PROBLEMS_SHOWN). A relative
    workdir or repository path is taken from `base_dir`; with `roots`, the workdir must resolve inside one of them
    (plans built in memory, by tests and benchmarks, leave it out). `targets`: config/targets.yaml's; None: none."""
    with collector_paused():
        return _validate_plan(document, registry, source, base_dir, roots, targets)


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
    defaults: dict[str, Any],
    registry: AgentRegistry,
    repositories: _Repositories,
    problems: Problems,
    source: str,
    written: Any,
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
    target = defaults.get("target")
    if isinstance(target, str) and "target" not in bad:
        if not repositories.knows(target):
            problems.add(f"field 'defaults.target': {repositories.unknown(target)}", line_of(written, "target"))
            bad.add("target")
        elif defaults.get("isolation") == "shared":
            problems.add(f"field 'defaults.target': {shared_with_target(target)}", line_of(written, "target"))
            bad.add("target")
    return {name: value for name, value in defaults.items() if name not in bad} if bad else defaults


def _read_header(document: dict[str, Any], problems: Problems, source: str) -> PlanHeader:
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
    graph: dict[str, list[str]], problems: Problems, written: dict[str, Any]
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
    document: Any,
    registry: AgentRegistry,
    source: str,
    base_dir: Path,
    roots: WorkdirRoots | None,
    targets: Targets | None,
) -> Plan:
    where = f"{source}: "
    problems = Problems(where)
    if not isinstance(document, dict):
        raise PlanInvalid(source, [f"{where}a plan is a mapping with 'name' and 'tasks'"])
    header = _read_header(document, problems, source)

    workdir, problem = _workdir(header.workdir, base_dir, roots)
    if problem:
        problems.add(problem, line_of(document, "workdir"))
    repositories = _Repositories(targets)
    repositories.read_plans_own(header, document, base_dir, problems)
    defaults = _check_defaults(header.defaults, registry, repositories, problems, source, document.get("defaults"))

    specs: list[TaskSpec] = []
    places: list[str | None] = []  # each spec's repository (None: the shared workdir)
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
            spec = TaskSpec.model_validate(merged)
        except ValidationError as exc:
            problems.add_errors(exc, f"{label}: ", _TASK_FIELDS, mapping=raw)
            continue
        specs.append(spec)
        places.append(repositories.place(spec, label, raw, problems))
    repositories.report_defaulted_worktrees(document.get("defaults"), problems)
    if repositories.resolved() and (why := unfit_for_a_branch(header.name)):
        problems.add(
            f"field 'name': {quoted(header.name)} {why}: it begins the plan's git branch names",
            line_of(document, "name"),
        )

    graph = _known_dependencies(graph, problems, written)
    cycle = Dag(graph).find_cycle()
    if cycle:
        problems.add(f"dependency cycle: {_describe_cycle(cycle)}")
    problems.raise_any(source)

    keywords = KeywordIndex.build(registry)
    tasks = tuple(
        _resolve(spec, seq, registry, keywords, place)
        for seq, (spec, place) in enumerate(zip(specs, places, strict=True))
    )
    budget = _budget(header.budget)
    return Plan(header.name, header.description, workdir, source, tasks, document, budget, repositories.resolved())


# --- repositories (issue 15) ----------------------------------------------------------------------------

SpecT = TypeVar("SpecT", bound=RepoSpec)


def read_repo_spec(
    written: Mapping[str, Any], problems: Problems, prefix: str, scope: str, model: type[SpecT]
) -> SpecT | None:
    """`written` as a `model` (RepoSpec or a subclass), each problem reported after `prefix`, naming its field as
    `scope`<field>, and its line; None when it has any."""
    gates = written.get("gates")
    if isinstance(gates, list) and len(gates) > MAX_GATES:  # pydantic would build an error per bad entry first
        problem = f"field {quoted(scope + 'gates')}: {len(gates)} commands, more than the {MAX_GATES} allowed"
        problems.add(f"{prefix}{problem}", line_of(written, "gates"))
        written = {name: value for name, value in written.items() if name != "gates"}
    try:
        return model.model_validate(written)
    except ValidationError as exc:
        problems.add_errors(exc, prefix, model.model_fields, scope=scope, mapping=written)
        return None


def written_url(written: Mapping[str, Any], base_dir: Path) -> tuple[str, str | None]:
    """The `url` of a repository as written, resolved by repository_url, whether its other fields are valid or not;
    ("", None) when it is missing or its syntax is refused (RepoSpec reports that)."""
    url = written.get("url")
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_CHARS:
        return "", None
    try:
        url_kind(url)
    except ValueError:
        return "", None
    return repository_url(url, base_dir)


def repository_url(url: str, base_dir: Path) -> tuple[str, str | None]:
    """The URL as orch keeps it, a local path made absolute (relative to `base_dir`), and why it is refused: a local
    path must be a git repository, as its files say (intake runs no git). A URL of another kind is only
    syntax-checked here (RepoSpec); whether it can be reached is checked when a plan is submitted."""
    if url_kind(url) != "path":
        return url, None
    try:
        path = (base_dir / url).resolve()
        problem = _not_a_repository(path)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop, on older Pythons
        return str(base_dir / url), f"{quoted(url)} cannot be read: {getattr(exc, 'strerror', None) or exc}"
    shown = str(path) if str(path).isprintable() else quoted(str(path))
    return str(path), f"{quoted(url)} is {shown}, which {problem}" if problem else None


def _not_a_repository(path: Path) -> str | None:
    """Why the folder `path` is no git repository, as its files say: a checkout has a `.git` (a folder, or a linked
    worktree's file), a bare repository HEAD, objects/ and refs/."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a folder"
    if (path / ".git").is_symlink() or (path / ".git").exists():
        return None
    if (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir():
        return None
    return "is not a git repository (no .git in it, and not a bare one)"


def shared_with_target(target: str) -> str:
    return (
        f"isolation: shared runs in the plan's workdir, so target {quoted(target)} cannot apply; give one or the other"
    )


@dataclass
class _Repositories:
    """The repositories a plan's tasks work in, as validation meets them: the plan's own (`repo:` or `target:`),
    and the targets tasks name, in the order first named."""

    targets: Targets | None
    plans_own: str | None = None  # the plan's repo: ("repo") or target's name, even one with problems
    used: dict[str, Repository] = field(default_factory=dict)
    defaulted_worktrees: list[str] = field(default_factory=list)  # tasks `defaults: {isolation: worktree}` left bare

    def knows(self, target: str) -> bool:
        return self.targets is not None and self.targets.get(target) is not None

    def unknown(self, target: str) -> str:
        """The problem of a target config/targets.yaml does not declare, naming those it does."""
        names = () if self.targets is None else self.targets.names
        if not names:
            where = "config/targets.yaml" if self.targets is None else self.targets.source
            return f"unknown target {quoted(target)} (no targets declared in {where})"
        shown = ", ".join(names[:MAX_NAMES_SHOWN]) + (", …" if len(names) > MAX_NAMES_SHOWN else "")
        hint = did_you_mean(target, names)
        return f"unknown target {quoted(target)} (known: {shown}{'; ' + hint[2:-1] if hint else ''})"

    def use(self, target: str) -> None:
        found = None if self.targets is None else self.targets.get(target)
        if found is not None:
            self.used.setdefault(target, found)

    def read_plans_own(self, header: PlanHeader, document: dict[str, Any], base_dir: Path, problems: Problems) -> None:
        """The plan's `repo:` or `target:`, each problem reported."""
        if header.repo is not None or document.get("repo") is not None:  # written, if not readable
            self.plans_own = PLANS_OWN_REPOSITORY
        elif header.target is not None or document.get("target") is not None:
            self.plans_own = header.target or PLANS_OWN_REPOSITORY
        if header.repo is not None and header.target is not None:
            problems.add("give either repo: or target:, not both", line_of(document, "target"))
        if header.repo is not None:
            written = document["repo"]
            spec = read_repo_spec(written, problems, "", "repo.", RepoSpec)
            url, problem = written_url(written, base_dir)
            if problem:
                problems.add(f"field 'repo.url': {problem}", line_of(written, "url"))
            if spec is not None:
                self.used[PLANS_OWN_REPOSITORY] = repository(PLANS_OWN_REPOSITORY, spec, url)
        elif header.target is not None:
            if self.knows(header.target):
                self.use(header.target)
            else:
                problems.add(f"field 'target': {self.unknown(header.target)}", line_of(document, "target"))

    def place(self, spec: TaskSpec, label: str, written: Any, problems: Problems) -> str | None:
        """The repository a task works in (None: the plan's shared workdir), each problem of it reported."""
        placed = self._place(spec, label, written, problems)
        if placed is not None and (why := unfit_for_a_branch(spec.id)):
            problems.add(f"{label}: its id {why}: it names the task's git branch and worktree folder", line_of(written))
        return placed

    def _place(self, spec: TaskSpec, label: str, written: Any, problems: Problems) -> str | None:
        if spec.isolation == "shared":
            if spec.target is not None:
                problems.add(f"{label}: {shared_with_target(spec.target)}", line_of(written, "target"))
            return None
        if spec.target is not None:
            if self.knows(spec.target):
                self.use(spec.target)
            elif "target" in written:  # one from the defaults is reported once, as theirs
                problems.add(f"{label}: {self.unknown(spec.target)}", line_of(written, "target"))
            return spec.target
        if self.plans_own is not None or spec.isolation is None:
            return self.plans_own
        if "isolation" in written:
            problem = "isolation: worktree needs a repository; give the plan repo: or target:, or the task target:"
            problems.add(f"{label}: {problem}", line_of(written, "isolation"))
        else:
            self.defaulted_worktrees.append(spec.id)
        return None

    def report_defaulted_worktrees(self, defaults: Any, problems: Problems) -> None:
        """`defaults: {isolation: worktree}` reaching tasks without a repository: one problem, naming them."""
        tasks = self.defaulted_worktrees
        if not tasks:
            return
        named = ", ".join(quoted(task) for task in tasks[:MAX_TASKS_NAMED])
        more = f" and {len(tasks) - MAX_TASKS_NAMED} more" if len(tasks) > MAX_TASKS_NAMED else ""
        problem = (
            f"field 'defaults.isolation': worktree needs a repository, which task{'s' if len(tasks) > 1 else ''} "
            f"{named}{more} {'have' if len(tasks) > 1 else 'has'} none of; give the plan repo: or target:, or "
            f"{'those tasks' if len(tasks) > 1 else 'the task'} target:"
        )
        problems.add(problem, line_of(defaults, "isolation"))

    def resolved(self) -> tuple[Repository, ...]:
        return tuple(self.used.values())


def unfit_for_a_branch(task_id: str) -> str | None:
    """Why an id (already of ID_PATTERN's characters) cannot be a component of a git ref and a folder name."""
    if ".." in task_id:
        return "contains '..'"
    if ".resolve-" in task_id:
        return "contains '.resolve-', which orch keeps for its conflict-resolution tasks"
    if task_id.startswith("."):
        return "starts with '.'"
    if task_id.endswith((".lock", ".")):
        return "ends with '.lock'" if task_id.endswith(".lock") else "ends with '.'"
    return None


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


def _resolve(
    spec: TaskSpec, seq: int, registry: AgentRegistry, index: KeywordIndex, place: str | None = None
) -> ResolvedTask:
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
        repository=place,
        merge=spec.merge,
        source=None if spec.source is None else spec.source.model_dump(),
        done=spec.done,
        hold=spec.hold,
        estimate=None if spec.estimate is None else spec.estimate.model_dump(exclude_none=True),
        on_failure=spec.on_failure,
        max_replans=spec.max_replans,
    )
