"""The plan model: what a plan file may say, as pydantic models, and the limits beyond which a plan is absurd; a
plan once validated and resolved (`Plan`, `ResolvedTask`). How a message quotes input is here too: every part of
intake words its problems alike.

Reading a plan file is orch.intake.plan_document; validating and resolving it, orch.intake.plan_validation.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from orch.budget import Budget
from orch.decisions.file_leases import char_sets
from orch.durations import MAX_TIMEOUT_SECONDS, parse_duration
from orch.executors import KNOWN, ExecutorName
from orch.intake.agents import NAME_PATTERN

# Limits: a plan beyond them is rejected as absurd. 100,000 tasks still validate in a few seconds.
MAX_TASKS = 100_000
MAX_DEPENDENCIES_PER_TASK = 10_000
MAX_FILES_PER_TASK = 1_000
# File leases are checked while the dispatch lock is held; their cost grows with pattern length and `[...]` sets
# (see orch.decisions.file_leases), and these keep the costliest pattern pair found to some 10,000 steps (about 10 ms).
MAX_FILE_PATTERN_CHARS = 256
MAX_FILE_PATTERN_SETS = 8
MAX_TEXT_CHARS = 100_000
MAX_TITLE_CHARS = 500
MAX_RETRIES = 100
MAX_PRIORITY = 1_000_000
MAX_GATES = 20
MAX_RELOCKS = 50
MAX_URL_CHARS = 4096
MAX_BRANCH_CHARS = 255
DEFAULT_GATE_TIMEOUT = 1800.0
PLANS_OWN_REPOSITORY = "repo"  # the name of a plan's own repo: (a target cannot have it)
MAX_QUOTED_CHARS = 128  # input quoted in a message: any valid id or name shows whole
MAX_MESSAGE_CHARS = 400

ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
CALL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


def quoted(value: object) -> str:
    """`value` as a message quotes it: repr(), of at most MAX_QUOTED_CHARS characters of it."""
    if isinstance(value, str):
        return repr(value) if len(value) <= MAX_QUOTED_CHARS else f"{value[:MAX_QUOTED_CHARS]!r}…"
    text = repr(value)
    return text if len(text) <= MAX_QUOTED_CHARS else f"{text[:MAX_QUOTED_CHARS]}…"


def clipped(message: str) -> str:
    """`message` cut to MAX_MESSAGE_CHARS characters."""
    return message if len(message) <= MAX_MESSAGE_CHARS else f"{message[:MAX_MESSAGE_CHARS]}…"


# Names other tools give a task's fields, as did-you-mean hints (keys: lowercase, without '_' and '-').
FIELD_ALIASES = {
    "dependson": "after",
    "depends": "after",
    "dependencies": "after",
    "deps": "after",
    "needs": "after",
    "requires": "after",
    "cmd": "command",
    "run": "command",
    "script": "command",
    "name": "title",
    "prompt": "description",
    "type": "agent",
    "agenttype": "agent",
    "paths": "files",
    "retry": "retries",
    "maxretries": "retries",
    "repo": "target",  # a task names a repository by target
    "repository": "repo",
    "worktree": "isolation",
    "isolate": "isolation",
    "branch": "base",
    "basebranch": "base",
    "remote": "url",
    "path": "url",
    "checks": "gates",
    "lockfiles": "relock",
    "onconflicts": "on_conflict",
    "conflict": "on_conflict",
}


def did_you_mean(written: str, known: Collection[str]) -> str:
    """' (did you mean 'x'?)' for a misspelled field `written`, the nearest of `known` or the field another tool's
    name stands for (FIELD_ALIASES); '' when none is near."""
    alias = FIELD_ALIASES.get(written.lower().replace("_", "").replace("-", ""))
    if alias in known:
        return f" (did you mean {alias!r}?)"
    by_lower = {name.lower(): name for name in known}
    near = difflib.get_close_matches(written.lower(), by_lower, n=1, cutoff=0.7)
    return f" (did you mean {by_lower[near[0]]!r}?)" if near else ""


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


# --- repositories (issue 15) ------------------------------------------------------------------------


def _check_command(command: str) -> str:
    if not command.strip():
        raise ValueError("must not be blank")
    return _no_nul(command)


Command = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_check_command)]

# What git's check-ref-format refuses anywhere in a ref: control characters, space, ~ ^ : ? * [ \
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
# Branches git could not create beside orch's own `orch/<plan id>` and `orch-work/...` (a ref is a file or a folder)
_ORCH_NAMESPACES = frozenset({"orch", "orch-work"})


def _branch_problem(name: str) -> str | None:
    """Why git would refuse `name` as a branch (`git check-ref-format --branch`), or None."""
    if len(name) > MAX_BRANCH_CHARS:
        return f"it is longer than {MAX_BRANCH_CHARS} characters"
    if name in ("@", "HEAD"):
        return f"{name!r} is not a branch name"
    if name in _ORCH_NAMESPACES:
        return "git could not hold orch's own branches (orch/<plan id>, orch-work/...) beside it"
    forbidden = _REF_FORBIDDEN.search(name)
    if forbidden:
        char = forbidden.group()
        return "it contains a control character" if char < " " or char == "\x7f" else f"it contains {char!r}"
    for fragment in ("..", "@{", "//"):
        if fragment in name:
            return f"it contains {fragment!r}"
    if name.startswith("-"):
        return "it starts with '-'"
    if name.startswith("/") or name.endswith("/"):
        return "it starts or ends with '/'"
    if name.endswith("."):
        return "it ends with '.'"
    parts = name.split("/")
    if any(part.startswith(".") for part in parts):
        return "a part of it starts with '.'"
    if any(part.endswith(".lock") for part in parts):
        return "a part of it ends with '.lock'"
    return None


def _check_branch(name: str) -> str:
    problem = _branch_problem(name)
    if problem:
        raise ValueError(f"branch name {quoted(name)} is not allowed: {problem}")
    return name


BranchName = Annotated[str, Field(min_length=1), AfterValidator(_check_branch)]

# The transports orch fetches and pushes over (orch.services.git.remote allows only these)
URL_SCHEMES = ("https", "http", "ssh", "file")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HELPER = re.compile(r"^[A-Za-z0-9+.-]+::")  # git's <transport>::<address>: a remote helper (ext:: runs commands)
_SCP = re.compile(r"^(?P<user>[^@/]*@)?(?P<host>\[[^\]/]*\]|[^:/\[]+):(?P<path>.*)$", re.DOTALL)
_CONTROL = re.compile(r"[\x01-\x1f\x7f]")
UrlKind = Literal["path", "url", "scp"]


def masked_url(url: str) -> str:
    """`url` with the password of a `scheme://user:password@host` masked."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*):[^/]*@", r"\1:***@", url)  # to the last @, as urlsplit


def _without_user(url: str) -> str:
    """`url` with whatever stands before its host's `@` masked (a user, a token)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/]*@", r"\1***@", url)


def url_kind(url: str) -> UrlKind:
    """How git reads `url`: "url" (scheme://), "scp" (user@host:path, ssh) or "path" (a local folder). Raises
    ValueError naming the URL for one orch refuses; a local path's folder is checked elsewhere."""
    shown = quoted(masked_url(url))
    if "\x00" in url:
        raise ValueError(f"{shown} contains a NUL character")
    if _CONTROL.search(url):
        raise ValueError(f"{shown} contains a line break or another control character")
    if url.startswith("-"):
        raise ValueError(f"{shown} starts with '-', which git would take for an option")
    if _HELPER.match(url):
        raise ValueError(
            f"{shown} uses git's '<transport>::<address>' form, which orch refuses; give a path, an https://, ssh:// "
            "or file:// URL, or user@host:path"
        )
    scheme = _SCHEME.match(url)
    if scheme:
        _check_scheme_url(url, scheme.group(1).lower(), shown)
        return "url"
    first_slash = url.find("/")
    colon = url.find(":")
    if colon < 0 or (0 <= first_slash < colon):
        return "path"
    return _check_scp(url, shown)


def _check_scheme_url(url: str, scheme: str, shown: str) -> None:
    if scheme not in URL_SCHEMES:
        raise ValueError(
            f"{shown} has the scheme {scheme!r}; orch fetches over {', '.join(s + '://' for s in URL_SCHEMES[:-1])} "
            f"or {URL_SCHEMES[-1]}://"
        )
    try:
        parts: SplitResult = urlsplit(url)
        parts.port  # noqa: B018  # a port that is no number raises here
    except ValueError as exc:
        raise ValueError(f"{shown} is not a valid URL: {exc}") from None
    if parts.password is not None:
        raise ValueError(
            f"{shown} holds a password, which the store and git's command lines would keep; give it to the workers "
            "in ORCH_GIT_CREDENTIALS instead"
        )
    if parts.username is not None and scheme in ("http", "https"):
        raise ValueError(
            f"{quoted(_without_user(url))} holds a user name, which for https is often a token the store and git's "
            "command lines would keep; give user and token to the workers in ORCH_GIT_CREDENTIALS instead"
        )
    if scheme == "file":
        if not parts.path.strip("/"):
            raise ValueError(f"{shown} names no path")
    elif not parts.hostname:
        raise ValueError(f"{shown} names no host")


def _check_scp(url: str, shown: str) -> UrlKind:
    match = _SCP.match(url)
    if match is None or not match.group("user"):
        raise ValueError(
            f"{shown} reads as git's scp-like ssh address without a user; write user@host:path or ssh://host/path, "
            "or ./ before a local folder's name"
        )
    if not match.group("path"):
        raise ValueError(f"{shown} names no path")
    return "scp"


def _check_url(url: str) -> str:
    url_kind(url)
    return url


RepositoryUrl = Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS), AfterValidator(_check_url)]


class RepoSpec(BaseModel):
    """A repository as a plan's `repo:` (or a target of config/targets.yaml) declares it."""

    model_config = ConfigDict(extra="forbid")

    url: RepositoryUrl
    base: BranchName = "main"
    land: Literal["branch", "base", "none"] = "branch"
    gates: Annotated[list[Command], Field(max_length=MAX_GATES)] = Field(default_factory=list)
    on_conflict: Literal["resolve", "fail"] = "resolve"
    relock: Annotated[dict[FilePattern, Command], Field(max_length=MAX_RELOCKS)] = Field(default_factory=dict)
    gate_timeout: Seconds | None = None


@dataclass(frozen=True)
class Repository:
    """A repository a plan's tasks work in, resolved: the plan's own `repo:` (named "repo") or a target."""

    name: str  # "repo" for the plan's own repo:, else the target's name
    url: str  # a local path made absolute, else the URL as given
    base: str
    land: str  # "branch" | "base" | "none"
    gates: tuple[str, ...]
    on_conflict: str  # "resolve" | "fail"
    relock: tuple[tuple[str, str], ...]  # (path pattern, command), in the order written
    gate_timeout: float = DEFAULT_GATE_TIMEOUT
    context: str = ""  # a target's context file's text, added to prompts


def repository(name: str, spec: RepoSpec, url: str, context: str = "") -> Repository:
    """The repository `spec` declares, named `name`, at `url` (a local path already made absolute)."""
    return Repository(
        name=name,
        url=url,
        base=spec.base,
        land=spec.land,
        gates=tuple(spec.gates),
        on_conflict=spec.on_conflict,
        relock=tuple(spec.relock.items()),
        gate_timeout=DEFAULT_GATE_TIMEOUT if spec.gate_timeout is None else spec.gate_timeout,
        context=context,
    )


class BudgetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    usd: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)] | None = None
    tokens: Annotated[int, Field(gt=0, le=10**12)] | None = None


TargetName = Annotated[str, Field(pattern=NAME_PATTERN)]

MAX_REPLANS = 5


class TaskEstimate(BaseModel):
    """What a task is expected to take (a planner writes it; `orch validate --estimate` and `orch plan` sum it)."""

    model_config = ConfigDict(extra="forbid")

    tokens: Annotated[int, Field(ge=0, le=10**9)] | None = None
    usd: Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)] | None = None
    minutes: Annotated[float, Field(ge=0, le=10_000, allow_inf_nan=False)] | None = None


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
    # None: a worktree when the task has a repository (the plan's or its own target), else the shared workdir
    isolation: Literal["worktree", "shared"] | None = None
    merge: StrictBool = True  # false: nothing to land (audits, reviews)
    target: TargetName | None = None
    estimate: TaskEstimate | None = None
    # replan: when its retries are spent, the planner may replace it with smaller tasks (at most max_replans times)
    on_failure: Literal["fail", "replan"] = "fail"
    max_replans: Annotated[int, Field(ge=0, le=MAX_REPLANS)] = 1

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, executor: str | None) -> str | None:
        if executor is not None and executor not in KNOWN:
            raise ValueError(f"unknown executor {quoted(executor)} (known: {', '.join(ExecutorName)})")
        return executor


MAX_HOLD_CHARS = 500


class TaskSource(BaseModel):
    """Where a task list wrote a task: shown by `orch status --json` and the report, and how write-back finds it."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["speckit", "taskmaster", "kiro", "checklist"]
    file: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul)]
    line: Annotated[int, Field(ge=1)]
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    status: Annotated[str, Field(max_length=64), AfterValidator(_no_nul)] = ""  # the list's word at import


class TaskSpec(TaskFields):
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    title: Annotated[str, Field(min_length=1, max_length=MAX_TITLE_CHARS), AfterValidator(_no_nul)]
    # Set by task lists (a plan file may set them too): where it was written; done already (not run, counts as
    # succeeded); held by its list (not run, holds its dependants), and why.
    source: TaskSource | None = None
    done: StrictBool = False
    hold: Annotated[str, Field(min_length=1, max_length=MAX_HOLD_CHARS), AfterValidator(_no_nul)] | None = None

    @model_validator(mode="after")
    def _done_or_held(self) -> TaskSpec:
        if self.done and self.hold is not None:
            raise ValueError("a task cannot be both done and held (hold:)")
        return self


class PlanHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=ID_PATTERN)]
    description: Text = ""
    workdir: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul)] = "."
    defaults: dict[str, Any] = Field(default_factory=dict)
    budget: BudgetSpec | None = None
    repo: dict[str, Any] | None = None  # a RepoSpec, validated on its own so its problems name their lines
    target: TargetName | None = None
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
    routed: bool = False  # by keywords: the task has no `agent:`
    route_weakness: str | None = None  # why its route may not be the type meant (orch.intake.routing.weakness)
    repository: str | None = None  # the name of its Repository in Plan.repositories; None: the plan's shared workdir
    merge: bool = True  # false: it works in a worktree, and nothing of it lands
    source: Mapping[str, Any] | None = None  # where a task list wrote it (TaskSource's fields)
    done: bool = False  # already done: stored as succeeded, never run
    hold: str | None = None  # held by its list: never dispatched while set; why
    estimate: Mapping[str, float] | None = None  # TaskEstimate's fields that are set
    on_failure: str = "fail"  # "fail" | "replan"
    max_replans: int = 1


@dataclass(frozen=True)
class ListOrigin:
    """The task list a plan was read from: its absolute path, format and read options, so a sync can read it again."""

    file: str
    format: str
    options: Mapping[str, Any]  # {"tag", "include_optional", "executor"}: how it was read, kept with the plan
    text: str = ""  # the list as read (what a follower compares the file with), not kept


@dataclass(frozen=True)
class Plan:
    name: str
    description: str
    workdir: Path
    source: str
    tasks: tuple[ResolvedTask, ...]
    document: Mapping[str, Any]  # the plan as written, kept in the store
    budget: Budget = field(default_factory=Budget)
    repositories: tuple[Repository, ...] = ()  # the plan's own repo: first, then the targets its tasks name
    origin: ListOrigin | None = None  # read from a task list (None: a plan file)
