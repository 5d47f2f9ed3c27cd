"""The plan model: what a plan file may say, as pydantic models, and the limits beyond which a plan is absurd; a
plan once validated and resolved (`Plan`, `ResolvedTask`). How a message quotes input is here too: every part of
intake words its problems alike.

Reading a plan file is orch.intake.plan_document; validating and resolving it, orch.intake.plan_validation.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

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
    routed: bool = False  # by keywords: the task has no `agent:`
    route_weakness: str | None = None  # why its route may not be the type meant (orch.intake.routing.weakness)


@dataclass(frozen=True)
class Plan:
    name: str
    description: str
    workdir: Path
    source: str
    tasks: tuple[ResolvedTask, ...]
    document: Mapping[str, Any]  # the plan as written, kept in the store
    budget: Budget = field(default_factory=Budget)
