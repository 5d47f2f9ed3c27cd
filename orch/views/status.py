"""What `orch status`, `orch run` and `orch watch` show: a plan's snapshot as data (JSON) and as rich renderables,
and its progress by aggregate (what the live views poll)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from orch.budget import Spend
from orch.dag import Dag
from orch.durations import format_duration
from orch.intake.prices import Usage
from orch.records import AttemptStats
from orch.states import IN_FLIGHT, PLAN_FINAL, TERMINAL, PlanStatus, TaskStatus
from orch.store import plans, reads, spend
from orch.store.db import db_now
from orch.store.models import PlanRow, TaskRow
from orch.store.pauses import active_pauses
from orch.views.terminal import inert

STATUS_STYLE = {
    TaskStatus.PENDING: "dim",
    TaskStatus.QUEUED: "cyan",
    TaskStatus.RUNNING: "bold blue",
    TaskStatus.SUCCEEDED: "green",
    TaskStatus.FAILED: "bold red",
    TaskStatus.RETRY_WAIT: "yellow",
    TaskStatus.UPSTREAM_FAILED: "red",
    TaskStatus.CANCELLED: "magenta",
}
PLAN_STYLE = {
    PlanStatus.RUNNING: "bold blue",
    PlanStatus.PAUSED: "yellow",
    PlanStatus.BUDGET_EXHAUSTED: "bold yellow",
    PlanStatus.SUCCEEDED: "bold green",
    PlanStatus.FAILED: "bold red",
    PlanStatus.CANCELLED: "magenta",
}


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class PlanSnapshot:
    plan: PlanRow
    tasks: list[TaskRow]
    stats: dict[int, AttemptStats]
    dag: Dag[str]  # its dependencies, by task id
    pauses: dict[str, tuple[datetime, str]]  # agent types of this plan paused now: until, why

    @classmethod
    def load(cls, session: Session, plan: PlanRow, now: datetime) -> PlanSnapshot:
        tasks = plans.plan_tasks(session, plan.id)
        key_of = {t.pk: t.key for t in tasks}
        deps = Dag.from_edges((key_of[t], key_of[d]) for t, d in plans.plan_dependencies(session, plan.id))
        agents = {t.agent for t in tasks}
        pauses = {
            agent: (row.until, row.reason) for agent, row in active_pauses(session, now).items() if agent in agents
        }
        return cls(plan, tasks, spend.attempt_stats(session, plan.id), deps, pauses)

    def stats_of(self, task: TaskRow) -> AttemptStats:
        return self.stats.get(task.pk, _NO_ATTEMPTS)

    @property
    def usage(self) -> Usage:
        total = Usage()
        for stats in self.stats.values():
            total = total + stats.usage
        return total

    @property
    def cost_usd(self) -> float | None:
        return sum_costs(s.cost_usd for s in self.stats.values())

    @property
    def counts(self) -> Counter[TaskStatus]:
        return Counter(t.status for t in self.tasks)

    @property
    def total_tokens(self) -> int:
        return self.usage.total

    def as_json(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "plan": {
                "id": self.plan.id,
                "name": self.plan.name,
                "status": self.plan.status.value,
                "created_at": iso(self.plan.created_at),
                "finished_at": iso(self.plan.finished_at),
                "workdir": self.plan.workdir,
                "counts": {s.value: counts.get(s, 0) for s in TaskStatus},
                "tokens": usage_json(self.usage),
                "cost_usd": self.cost_usd,
                "paused_agents": {a: {"until": iso(u), "reason": r} for a, (u, r) in self.pauses.items()},
                "held_reason": self.plan.held_reason,
                "budget": {"usd": self.plan.budget_usd, "tokens": self.plan.budget_tokens},
            },
            "tasks": [
                {
                    "id": t.key,
                    "title": t.title,
                    "status": t.status.value,
                    "agent": t.agent,
                    "queue": t.queue,
                    "executor": t.executor,
                    "priority": t.priority,
                    "after": list(self.dag.dependencies(t.key)),
                    "attempts": self.stats_of(t).attempts,
                    "tokens": usage_json(self.stats_of(t).usage),
                    "cost_usd": self.stats_of(t).cost_usd,
                    "queued_at": iso(t.queued_at),
                    "started_at": iso(t.started_at),
                    "finished_at": iso(t.finished_at),
                    "error": t.error,
                }
                for t in self.tasks
            ],
        }


_NO_ATTEMPTS = AttemptStats(0, Usage(), None)


def usage_json(usage: Usage) -> dict[str, int]:
    return {
        "input": usage.input_tokens,
        "output": usage.output_tokens,
        "cache_creation": usage.cache_creation_tokens,
        "cache_read": usage.cache_read_tokens,
        "total": usage.total,
    }


def format_tokens(usage: Usage, blank: str = "") -> str:
    return f"{usage.total:,}" if usage.total else blank


def format_cost(cost: float | None, blank: str = "") -> str:
    return blank if cost is None else f"${cost:,.4f}"


def sum_costs(costs: Iterable[float | None]) -> float | None:
    """The known costs added up; None when none is known (no attempt had a price)."""
    known = [c for c in costs if c is not None]
    return sum(known) if known else None


def counted(n: int, noun: str) -> str:
    """`n` and a noun, plural unless n is 1: "1 task", "2,000 tasks"."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def task_duration(task: TaskRow, now: datetime) -> str:
    if task.started_at is None:
        return ""
    end = task.finished_at or now
    return format_duration(max(0.0, (end - task.started_at).total_seconds()))


def line(text: str) -> Text:
    """A string from a plan, an agent or the store as one line of plain text: no markup, no control or bidi
    character (orch.views.terminal), whatever terminal or pipe it goes to."""
    return Text(inert(text))


def tasks_table(snapshot: PlanSnapshot, now: datetime) -> Table:
    table = Table(title=line(f"plan {snapshot.plan.id}"), title_justify="left", expand=False)
    for column in ("task", "agent", "status", "attempts", "time", "tokens", "cost", "error"):
        table.add_column(column, overflow="fold")
    for task in snapshot.tasks:
        table.add_row(
            line(task.key),
            line(task.agent),
            Text(task.status.value, style=STATUS_STYLE[task.status]),
            str(snapshot.stats_of(task).attempts),
            task_duration(task, now),
            format_tokens(snapshot.stats_of(task).usage),
            format_cost(snapshot.stats_of(task).cost_usd),
            line((task.error or "")[:120] if task.status is not TaskStatus.SUCCEEDED else ""),
        )
    return table


class Summarised(Protocol):
    """What a summary line needs: a PlanSnapshot (every task loaded) or a Progress (aggregates only)."""

    @property
    def plan(self) -> PlanRow: ...
    @property
    def counts(self) -> Counter[TaskStatus]: ...
    @property
    def total_tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float | None: ...
    @property
    def pauses(self) -> dict[str, tuple[datetime, str]]: ...


def summary_line(snapshot: Summarised) -> Text:
    counts = snapshot.counts
    text = Text()
    text.append(f"{inert(snapshot.plan.name)} ", style="bold")
    text.append(snapshot.plan.status.value, style=PLAN_STYLE[snapshot.plan.status])
    text.append(f"  {sum(counts[s] for s in TERMINAL)}/{counts.total()} done  ")
    text.append("  ".join(f"{s.value}: {counts[s]}" for s in TaskStatus if counts[s]))
    if snapshot.total_tokens:
        text.append(f"  tokens: {snapshot.total_tokens:,}")
    if snapshot.cost_usd is not None:
        text.append(f"  cost: {format_cost(snapshot.cost_usd)}")
    if snapshot.plan.held_reason:
        text.append(f"\n  held: {inert(snapshot.plan.held_reason)}", style="yellow")
    for agent, (until, reason) in snapshot.pauses.items():
        text.append(f"\n  paused: {inert(agent)} until {until:%H:%M:%S} UTC ({inert(reason[:80])})", style="yellow")
    return text


RUNNING_SHOWN = 15  # running tasks a live view lists by name


@dataclass(frozen=True)
class Progress:
    """A plan's progress by aggregate, what the live views poll: cheap on a plan of any size (a GROUP BY of its
    tasks, the sum of its attempts' spend, and its few longest-running tasks)."""

    plan: PlanRow
    by_agent: dict[str, Counter[TaskStatus]]
    running: list[reads.RunningTask]  # the longest-running, at most RUNNING_SHOWN
    spend: Spend
    pauses: dict[str, tuple[datetime, str]]
    now: datetime  # the database's clock, which stamped the tasks' starts

    @classmethod
    def load(cls, session: Session, plan_id: str) -> Progress:
        plan = plans.find_plan(session, plan_id)
        by_agent = reads.counts_by_agent(session, plan.id)
        now = db_now(session)
        pauses = {a: (p.until, p.reason) for a, p in active_pauses(session, now).items() if a in by_agent}
        running = reads.running_tasks(session, plan.id, RUNNING_SHOWN)
        return cls(plan, by_agent, running, spend.plan_spend(session, plan.id), pauses, now)

    @property
    def counts(self) -> Counter[TaskStatus]:
        return reads.status_totals(self.by_agent.values())

    @property
    def total_tokens(self) -> int:
        return self.spend.tokens

    @property
    def cost_usd(self) -> float | None:
        return self.spend.usd or None

    @property
    def is_over(self) -> bool:
        return run_is_over(self.plan.status, self.counts)


def run_is_over(status: PlanStatus, counts: Mapping[TaskStatus, int]) -> bool:
    """A plan is over once final, or once out of budget with nothing left running (`orch resume` reopens it)."""
    if status in PLAN_FINAL:
        return True
    return status is PlanStatus.BUDGET_EXHAUSTED and not any(counts.get(s) for s in IN_FLIGHT)


def _bar_row(grid: Table, label: Text | str, counts: Counter[TaskStatus]) -> None:
    total = counts.total()
    done = sum(counts[s] for s in TERMINAL)
    failed = sum(counts[s] for s in TERMINAL - {TaskStatus.SUCCEEDED})
    bar = ProgressBar(total=max(total, 1), completed=done, width=30, complete_style="red" if failed else "green")
    detail = f"{done}/{total}"
    if failed:
        detail += f" ({failed} not succeeded)"
    if counts[TaskStatus.RUNNING]:
        detail += f", {counts[TaskStatus.RUNNING]} running"
    grid.add_row(label, bar, detail)


def progress_view(progress: Progress) -> RenderableType:
    """Live view: overall bar, a bar per agent type, the running tasks with their durations so far."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(min_width=24)
    grid.add_column(width=30)
    grid.add_column()
    _bar_row(grid, Text("all tasks", style="bold"), progress.counts)
    for agent, counts in sorted(progress.by_agent.items()):
        _bar_row(grid, line(agent), counts)
    lines: list[RenderableType] = [summary_line(progress), grid]
    for task in progress.running:
        since = "" if task.started_at is None else format_duration((progress.now - task.started_at).total_seconds())
        attempt = f" attempt {task.attempt}" if task.attempt > 1 else ""
        lines.append(Text(f"  ▶ {inert(task.key)} ({inert(task.agent)}{attempt}) {since}", style="blue"))
    more = progress.counts[TaskStatus.RUNNING] - len(progress.running)
    if more > 0:
        lines.append(Text(f"  … and {more} more running", style="blue"))
    return Group(*lines)


def plans_table(session: Session, plans: list[PlanRow]) -> Table:
    table = Table(title="plans", title_justify="left")
    for column in ("id", "name", "status", "tasks", "created"):
        table.add_column(column)
    for plan in plans:
        counts = reads.count_by_status(session, plan.id)
        total = sum(counts.values())
        done = sum(n for s, n in counts.items() if s in TERMINAL)
        table.add_row(
            line(plan.id),
            line(plan.name),
            Text(plan.status.value, style=PLAN_STYLE[plan.status]),
            f"{done}/{total}",
            plan.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    return table
