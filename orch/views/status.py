"""What `orch status` shows: a plan's snapshot as data (JSON) and as rich renderables (its summary line, which
`orch watch` and `orch run` show too, and its tasks table), and the recent plans."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from orch.dag import Dag
from orch.durations import format_duration
from orch.intake.prices import Usage
from orch.records import AttemptStats
from orch.states import ENDED_WELL, TERMINAL, TaskStatus
from orch.store import merges, plans, reads, spend
from orch.store.merges import TaskGit
from orch.store.models import PlanRow, TaskRow
from orch.store.pauses import active_pauses
from orch.views.format import (
    PLAN_STYLE,
    STATUS_STYLE,
    format_cost,
    format_tokens,
    iso,
    line,
    sum_costs,
    usage_json,
)
from orch.views.terminal import inert


@dataclass(frozen=True)
class PlanSnapshot:
    plan: PlanRow
    tasks: list[TaskRow]
    stats: dict[int, AttemptStats]
    dag: Dag[str]  # its dependencies, by task id
    pauses: dict[str, tuple[datetime, str]]  # agent types of this plan paused now: until, why
    git: dict[int, TaskGit] = field(default_factory=dict)  # worktree tasks' branches, commits and merges
    growth: list[reads.Growth] = field(default_factory=list)  # follow-ups added (and refused), replacements

    @classmethod
    def load(cls, session: Session, plan: PlanRow, now: datetime) -> PlanSnapshot:
        tasks = plans.plan_tasks(session, plan.id)
        key_of = {t.pk: t.key for t in tasks}
        deps = Dag.from_edges((key_of[t], key_of[d]) for t, d in plans.plan_dependencies(session, plan.id))
        agents = {t.agent for t in tasks}
        pauses = {
            agent: (row.until, row.reason) for agent, row in active_pauses(session, now).items() if agent in agents
        }
        git = merges.task_git_states(session, plan.id)
        growth = reads.plan_growth(session, plan.id)
        return cls(plan, tasks, spend.attempt_stats(session, plan.id), deps, pauses, git, growth)

    def origin(self, task: TaskRow) -> str | None:
        """How a task came into the plan ('follow-up of build', 'replaces split-me'), or what replaced it."""
        key_of = self._key_of
        if task.status is TaskStatus.REPLACED:
            return "replaced by " + ", ".join(self.replaced_by(task))
        if task.added_by is None:
            return None
        by = key_of.get(task.added_by, "?")
        return f"replaces {by}" if task.added_how == "replan" else f"follow-up of {by}"

    def replaced_by(self, task: TaskRow) -> list[str]:
        return [t.key for t in self.tasks if t.added_how == "replan" and t.added_by == task.pk]

    @property
    def _key_of(self) -> dict[int, str]:
        return {t.pk: t.key for t in self.tasks}

    @property
    def refused(self) -> list[str]:
        """The follow-ups and replacement tasks refused, one line each, naming who wrote them."""
        return [f"{g.by} (attempt {g.attempt}): {line}" for g in self.growth for line in g.refused]

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
                "refused_followups": self.refused,
                "list": None
                if self.plan.list_file is None
                else {"file": self.plan.list_file, "format": self.plan.list_format, "revision": self.plan.revision},
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
                    "git": self.git[t.pk].as_json() if t.pk in self.git else None,
                    "source": t.source,
                    "hold": t.hold,
                    "added_by": None if t.added_by is None else self._key_of.get(t.added_by),
                    "added_how": t.added_how,
                    "replaced_by": self.replaced_by(t) if t.status is TaskStatus.REPLACED else [],
                }
                for t in self.tasks
            ],
        }


_NO_ATTEMPTS = AttemptStats(0, Usage(), None)


def task_duration(task: TaskRow, now: datetime) -> str:
    if task.started_at is None:
        return ""
    end = task.finished_at or now
    return format_duration(max(0.0, (end - task.started_at).total_seconds()))


def tasks_table(snapshot: PlanSnapshot, now: datetime) -> Table:
    refused = snapshot.refused
    caption = None
    if refused:
        shown = [f"refused: {problem}"[:200] for problem in refused[:10]]
        more = [f"… and {len(refused) - 10} more"] if len(refused) > 10 else []
        caption = Text("\n").join(line(text) for text in shown + more)
    table = Table(
        title=line(f"plan {snapshot.plan.id}"), title_justify="left", expand=False, caption=caption,
        caption_justify="left",
    )  # fmt: skip
    merging = bool(snapshot.git)
    grown = any(t.added_by is not None or t.status is TaskStatus.REPLACED for t in snapshot.tasks)
    for column in ("task", "agent", "status", "attempts", "time", "tokens", "cost", "error"):
        table.add_column(column, overflow="fold")
    if grown:
        table.add_column("plan change", overflow="fold")
    if merging:
        table.add_column("merge", overflow="fold")
    for task in snapshot.tasks:
        git = snapshot.git.get(task.pk)
        merge_cell = [_merge_cell(git)] if merging else []
        origin_cell = [line(snapshot.origin(task) or "")] if grown else []
        table.add_row(
            line(task.key),
            line(task.agent),
            Text(_status_word(task), style=STATUS_STYLE[task.status]),
            str(snapshot.stats_of(task).attempts),
            task_duration(task, now),
            format_tokens(snapshot.stats_of(task).usage),
            format_cost(snapshot.stats_of(task).cost_usd),
            line(_error_cell(task)),
            *origin_cell,
            *merge_cell,
        )
    return table


def _status_word(task: TaskRow) -> str:
    """Its status, or for a task its list had cancelled (it satisfies its dependants, so it is stored succeeded)
    'cancelled (list)'."""
    if task.status is TaskStatus.SUCCEEDED and task.source and str(task.source.get("status")).lower() == "cancelled":
        return "cancelled (list)"
    return task.status.value


def _error_cell(task: TaskRow) -> str:
    if task.hold is not None and task.status is TaskStatus.PENDING:
        return f"held: {task.hold}"[:120]
    return (task.error or "")[:120] if task.status not in ENDED_WELL else ""


def _merge_cell(git: TaskGit | None) -> str:
    """A worktree task's merge, in a word and a commit: 'merged 1a2b3c4d5e6f', 'queued', 'conflicted'."""
    if git is None or git.phase is None:
        return ""
    commit = git.merged_commit or git.head_commit or ""
    return f"{git.phase} {commit[:12]}".strip()


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
        at = until.astimezone(UTC)
        text.append(f"\n  paused: {inert(agent)} until {at:%H:%M:%S} UTC ({inert(reason[:80])})", style="yellow")
    return text


def plans_table(session: Session, plans: list[PlanRow]) -> Table:
    table = Table(title="plans", title_justify="left")
    for column in ("id", "name", "status", "tasks", "created (UTC)"):  # the zone once, in the header
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
            plan.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
    return table
