"""What a plan is expected to take: tokens, cost and duration. Pure: the tasks, what the store's history says of
each agent type, and the planner's per-task estimates in; the figures, and where each came from, out.

Each task's figure is, in order of preference: the median of the finished attempts in the store of its agent type
run by its executor (`history`: a shell task of a type says nothing of that type's agent tasks), the planner's (or
the plan author's) `estimate:` of the task (`planner`), or unknown. A total adds the known figures and says for how
many tasks it knows none. The duration is the longest chain's in minutes (tasks of a stage run side by side, so the
plan takes as long as its longest chain, at best: with enough workers; an unknown duration counts as 0 and makes it
"at least") and the agent time (every task's duration added up: what the workers spend).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orch.decisions.plan_shape import PlanShape, ShapedTask, critical_path, plan_shape, shown_path

HISTORY = "history"
PLANNER = "estimate"
UNKNOWN = "unknown"
SOURCES = (HISTORY, PLANNER)


@dataclass(frozen=True)
class AgentHistory:
    """Medians over an agent type's last finished attempts (None: no attempt reported that figure)."""

    attempts: int
    tokens: float | None = None
    usd: float | None = None
    seconds: float | None = None


HistoryKey = tuple[str, str]  # (agent type, executor): whose attempts a median is taken over


@dataclass(frozen=True)
class EstimatedTask:
    """A task as the estimate reads it: its shape, the estimate written in the plan (tokens, usd, minutes) and the
    executor that runs it (`shell` for a task with a `command:`)."""

    shaped: ShapedTask
    agent: str
    written: Mapping[str, float] | None = None
    executor: str = ""

    @property
    def history_key(self) -> HistoryKey:
        return (self.agent, self.executor)


@dataclass(frozen=True)
class Figure:
    """A total: the known figures added up, and how many tasks each source gave (`unknown`: how many none)."""

    value: float | None
    sources: Mapping[str, int]
    unknown: int

    @property
    def known(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class PlanEstimate:
    shape: PlanShape
    tokens: Figure
    usd: Figure
    critical_minutes: Figure  # along the longest chain by minutes (sources: its tasks'; unknown: the plan's tasks')
    agent_minutes: Figure  # every task's, added up
    history_agents: tuple[str, ...]  # agent types the store's history informed


def _task_figure(
    task: EstimatedTask, history: Mapping[HistoryKey, AgentHistory], field: str
) -> tuple[float | None, str]:
    """One task's figure (`tokens`, `usd` or `minutes`) and where it came from."""
    past = history.get(task.history_key)
    if past is not None:
        value = {"tokens": past.tokens, "usd": past.usd, "minutes": None}[field]
        if field == "minutes" and past.seconds is not None:
            value = past.seconds / 60
        if value is not None:
            return float(value), HISTORY
    written = (task.written or {}).get(field)
    if written is not None:
        return float(written), PLANNER
    return None, UNKNOWN


def _total(figures: Sequence[tuple[float | None, str]]) -> Figure:
    counts = Counter(source for _, source in figures)
    known = [value for value, _ in figures if value is not None]
    return Figure(sum(known) if known else None, {s: counts[s] for s in SOURCES if counts[s]}, counts[UNKNOWN])


def _duration(shaped: Sequence[ShapedTask], minutes: Mapping[str, tuple[float | None, str]]) -> Figure:
    """The longest chain by minutes, an unknown duration counted as 0: its tasks' sources, and every task whose
    duration is unknown (any of them may make another chain the longest: the figure is "at least" then)."""
    timed = critical_path(shaped, {key: value or 0.0 for key, (value, _) in minutes.items()})
    on_path = _total([minutes[key] for key in timed.keys])
    unknown = sum(1 for value, _ in minutes.values() if value is None)
    if not on_path.sources:
        return Figure(None, {}, unknown)
    return Figure(timed.minutes or 0.0, on_path.sources, unknown)


def estimate_plan(tasks: Sequence[EstimatedTask], history: Mapping[HistoryKey, AgentHistory]) -> PlanEstimate:
    """The plan's shape and expected tokens, cost and duration; `history`: medians per (agent type, executor), may
    be empty."""
    by_field = {
        field: {task.shaped.key: _task_figure(task, history, field) for task in tasks}
        for field in ("tokens", "usd", "minutes")
    }
    minutes = {key: value for key, (value, _) in by_field["minutes"].items()}
    shaped = [task.shaped for task in tasks]
    return PlanEstimate(
        shape=plan_shape(shaped, minutes),
        tokens=_total(list(by_field["tokens"].values())),
        usd=_total(list(by_field["usd"].values())),
        critical_minutes=_duration(shaped, by_field["minutes"]),
        agent_minutes=_total(list(by_field["minutes"].values())),
        history_agents=tuple(sorted({task.agent for task in tasks if task.history_key in history})),
    )


# --- in words -------------------------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


_SOURCE_WORDS = {HISTORY: "store history", PLANNER: "the plan's estimates", UNKNOWN: "unknown"}


def _sources(figure: Figure) -> str:
    """Where a total came from: "(store history)", "(store history for 2 tasks, the plan's estimates for 1, unknown
    for 3)"."""
    counts = [(figure.sources.get(HISTORY, 0), HISTORY), (figure.sources.get(PLANNER, 0), PLANNER)]
    given = [(n, source) for n, source in (*counts, (figure.unknown, UNKNOWN)) if n]
    if len(given) == 1:
        return f"({_SOURCE_WORDS[given[0][1]]})"
    first, *rest = given
    shown = [f"{_SOURCE_WORDS[first[1]]} for {_count(first[0], 'task')}"]
    shown += [f"{_SOURCE_WORDS[source]} for {n:,}" for n, source in rest]
    return f"({', '.join(shown)})"


def format_minutes(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 120:
        return f"{minutes:.0f} min" if minutes >= 10 else f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h"


def _figure_line(label: str, figure: Figure, shown: str) -> str:
    if figure.value is None:
        return f"{label}: unknown (no history of its agent types in the store, no estimate in the plan)"
    at_least = "at least " if figure.unknown else ""
    return f"{label}: {at_least}{shown} {_sources(figure)}"


def estimate_lines(estimate: PlanEstimate) -> list[str]:
    """The estimate in words, one line each (task ids and agent types as they are: a view makes them inert)."""
    shape = estimate.shape
    path = shape.critical_path
    measured = "by estimated minutes" if path.by_minutes else "by task count: some durations are unknown"
    lines = [
        f"tasks: {shape.tasks:,}",
        f"stages: {len(shape.stages):,}" + (f" ({len(shape.unstaged):,} tasks on a cycle)" if shape.unstaged else ""),
        f"critical path: {_count(len(path.keys), 'task')} ({measured}): {shown_path(path.keys)}",
        f"width: {shape.width:,} (the most tasks that can run at once)",
        f"agent types: {', '.join(shape.agent_types) or '(none)'}",
    ]
    tokens, usd = estimate.tokens, estimate.usd
    critical, agent_time = estimate.critical_minutes, estimate.agent_minutes
    # with every duration known the critical path is the longest chain by minutes; else the chain of the most known
    # minutes (an unknown one counted as 0) may not be the path above, which is measured by task count
    along = "the longest chain by known minutes" if critical.unknown else "the critical path"
    lines += [
        _figure_line("tokens", tokens, f"{tokens.value or 0:,.0f}"),
        _figure_line("cost", usd, f"${usd.value or 0:,.2f}"),
        _figure_line("duration", critical, f"{format_minutes(critical.value or 0)} along {along}"),
        _figure_line("agent time", agent_time, f"{format_minutes(agent_time.value or 0)} in all tasks"),
    ]
    return lines
