"""`orch report`: a plan's completion report. Per task: status, agent type, attempts, durations, tokens, cost,
the `verify:` command's outcome, files changed and why it failed; then the totals. Built from the store, and given
as JSON (the stable schema `orch.report/1`, documented in README.md); orch.views.report_markdown renders it as
Markdown that renders in a GitHub issue or pull request."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from orch.dag import Dag
from orch.intake.prices import Usage
from orch.states import DOOMING, PLAN_FINAL, TERMINAL, AttemptStatus, TaskStatus
from orch.store import merges, plans, reads
from orch.store.db import db_now
from orch.store.merges import TaskGit
from orch.store.models import PlanRow
from orch.views.format import iso, sum_costs, usage_json

SCHEMA = "orch.report/1"

TASK_MARK = {
    TaskStatus.PENDING: "⏳",
    TaskStatus.QUEUED: "📨",
    TaskStatus.RUNNING: "🔄",
    TaskStatus.SUCCEEDED: "✅",
    TaskStatus.FAILED: "❌",
    TaskStatus.RETRY_WAIT: "🔁",
    TaskStatus.UPSTREAM_FAILED: "⛔",
    TaskStatus.CANCELLED: "🚫",
    TaskStatus.REPLACED: "🔀",
}
SKIPPED_MARK = "⏭️"
VERIFY_MARK = {"passed": "✅ passed", "failed": "❌ failed", "not_run": "not run"}


def attempt_json(attempt: reads.AttemptSummary) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "status": attempt.status.value,
        "worker": attempt.worker,
        "queued_at": iso(attempt.queued_at),
        "started_at": iso(attempt.started_at),
        "finished_at": iso(attempt.finished_at),
        "seconds": round(attempt.seconds, 3),
        "exit_code": attempt.exit_code,
        "failure_class": attempt.failure_class,
        "error": attempt.error,
        "model": attempt.model,
        "tokens": usage_json(attempt.usage),
        "cost_usd": _usd(attempt.cost_usd),
        "verified": attempt.verified,
        "files_changed": attempt.files_changed,
    }


@dataclass(frozen=True)
class TaskReport:
    key: str
    title: str
    agent: str
    status: TaskStatus
    skipped: bool  # succeeded by `orch skip`, without a succeeded attempt
    after: list[str]
    blocked_by: list[str]  # an upstream_failed task's dependencies that did not succeed
    attempts: list[reads.AttemptSummary]
    finished_at: datetime | None
    wall_seconds: float | None  # first attempt's start to the task's end (or now)
    verify: str | None
    verification: str | None  # passed / failed / not_run; None: no verify command
    files_changed: list[str] | None  # every attempt's, together; None: none was known (no git workdir)
    error: str | None
    failure_class: str | None
    result: str | None  # what the succeeded attempt reported
    git: TaskGit | None = None  # a worktree task's branch, commits and merge
    source: dict[str, Any] | None = None  # where its task list wrote it
    hold: str | None = None  # why its task list holds it
    added_by: str | None = None  # the task whose attempt added it (a follow-up) or that it replaces (a re-plan)
    added_how: str | None = None  # followup | replan
    replaced_by: tuple[str, ...] = ()  # a replaced task: the tasks in its place

    @property
    def origin(self) -> str | None:
        """How it came into the plan, for people: 'follow-up of build', 'replaces split-me'; None: submitted."""
        if self.added_by is None:
            return None
        return f"replaces {self.added_by}" if self.added_how == "replan" else f"follow-up of {self.added_by}"

    @property
    def listed(self) -> str | None:
        """'done' or 'cancelled' for a task its list had finished when the plan was submitted (it never ran)."""
        if not self.skipped or self.source is None:
            return None
        return listed_state(str(self.source.get("status", "")))

    @property
    def run_seconds(self) -> float:
        return sum(a.seconds for a in self.attempts)

    @property
    def usage(self) -> Usage:
        return sum((a.usage for a in self.attempts), Usage())

    @property
    def cost_usd(self) -> float | None:
        return sum_costs(a.cost_usd for a in self.attempts)

    @property
    def mark(self) -> str:
        return SKIPPED_MARK if self.skipped else TASK_MARK[self.status]

    @property
    def status_text(self) -> str:
        if self.listed is not None:
            return f"{self.listed} (in its list)"
        if self.replaced_by:
            return f"replaced by {', '.join(self.replaced_by)}"
        return "succeeded (skipped)" if self.skipped else self.status.value

    def as_json(self) -> dict[str, Any]:
        first = self.attempts[0] if self.attempts else None
        return {
            "id": self.key,
            "title": self.title,
            "agent": self.agent,
            "status": self.status.value,
            "skipped": self.skipped,
            "after": self.after,
            "blocked_by": self.blocked_by,
            "attempts": len(self.attempts),
            "queued_at": iso(first.queued_at if first else None),
            "started_at": iso(first.started_at if first else None),
            "finished_at": iso(self.finished_at),
            "wall_s": _seconds(self.wall_seconds),
            "run_s": round(self.run_seconds, 3),
            "tokens": usage_json(self.usage),
            "cost_usd": _usd(self.cost_usd),
            "verify": None if self.verify is None else {"command": self.verify, "result": self.verification},
            "files_changed": self.files_changed,
            "error": self.error,
            "failure_class": self.failure_class,
            "result": self.result,
            "history": [attempt_json(a) for a in self.attempts],
            **({"git": self.git.as_json()} if self.git is not None else {}),
            **({"source": self.source} if self.source is not None else {}),
            **({"hold": self.hold} if self.hold is not None else {}),
            **({"added_by": self.added_by, "added_how": self.added_how} if self.added_by is not None else {}),
            **({"replaced_by": list(self.replaced_by)} if self.replaced_by else {}),
        }


@dataclass(frozen=True)
class CompletionReport:
    plan: PlanRow
    tasks: list[TaskReport]
    as_of: datetime | None  # when the figures were read, for a plan still open; None once it is final
    growth: tuple[reads.Growth, ...] = ()  # follow-ups its tasks added (and refused), replacements

    @property
    def wall_seconds(self) -> float | None:
        end = self.plan.finished_at or self.as_of
        return None if end is None else max(0.0, (end - self.plan.created_at).total_seconds())

    @property
    def attempts(self) -> list[reads.AttemptSummary]:
        return [a for t in self.tasks for a in t.attempts]

    @property
    def usage(self) -> Usage:
        return sum((t.usage for t in self.tasks), Usage())

    @property
    def cost_usd(self) -> float | None:
        return sum_costs(t.cost_usd for t in self.tasks)

    @property
    def files_changed(self) -> list[str] | None:
        """Every path some task changed; None when no attempt could tell (its workdir was not a git checkout)."""
        if all(t.files_changed is None for t in self.tasks):
            return None
        return sorted({path for t in self.tasks for path in t.files_changed or ()})

    def verification_counts(self) -> dict[str, int]:
        found = Counter(t.verification for t in self.tasks if t.verification is not None)
        return {result: found[result] for result in VERIFY_MARK}

    def as_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "schema": SCHEMA,
            "plan": {
                "id": plan.id,
                "name": plan.name,
                "description": plan.description,
                "status": plan.status.value,
                "source": plan.source,
                "workdir": plan.workdir,
                "created_at": iso(plan.created_at),
                "finished_at": iso(plan.finished_at),
                "as_of": iso(self.as_of),
                "held_reason": plan.held_reason,
                "budget": {"usd": plan.budget_usd, "tokens": plan.budget_tokens},
            },
            "totals": _totals_json(self.tasks, self.wall_seconds, self.verification_counts()),
            "agents": [
                {"agent": agent, **_totals_json(tasks, None, None)} for agent, tasks in by_agent(self.tasks).items()
            ],
            "tasks": [t.as_json() for t in self.tasks],
            **({"growth": [growth_json(g) for g in self.growth]} if self.growth else {}),
        }


def growth_json(growth: reads.Growth) -> dict[str, Any]:
    return {
        "revision": growth.number,
        "by": growth.by,
        "attempt": growth.attempt,
        "how": growth.how,
        "added": list(growth.added),
        "refused": list(growth.refused),
        **({"rewired": list(growth.rewired)} if growth.rewired else {}),
    }


def _totals_json(tasks: list[TaskReport], wall: float | None, verification: dict[str, int] | None) -> dict[str, Any]:
    statuses = Counter(t.status for t in tasks)
    attempts = [a for t in tasks for a in t.attempts]
    attempt_statuses = Counter(a.status for a in attempts)
    totals: dict[str, Any] = {
        "tasks": len(tasks),
        "by_status": {s.value: statuses[s] for s in TaskStatus},
        "skipped": sum(1 for t in tasks if t.skipped),
        "attempts": len(attempts),
        "attempts_by_status": {s.value: attempt_statuses[s] for s in AttemptStatus},
        "run_s": round(sum(a.seconds for a in attempts), 3),
        "tokens": usage_json(sum((a.usage for a in attempts), Usage())),
        "cost_usd": _usd(sum_costs(a.cost_usd for a in attempts)),
    }
    if verification is not None:
        totals["wall_s"] = _seconds(wall)
        totals["verification"] = verification
        known = [t.files_changed for t in tasks if t.files_changed is not None]
        totals["files_changed"] = len({path for files in known for path in files}) if known else None
    return totals


def by_agent(tasks: list[TaskReport]) -> dict[str, list[TaskReport]]:
    grouped: dict[str, list[TaskReport]] = {}
    for task in sorted(tasks, key=lambda t: t.agent):
        grouped.setdefault(task.agent, []).append(task)
    return grouped


def _usd(cost: float | None) -> float | None:
    return None if cost is None else round(cost, 6)


def _seconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


# --- building it from the store ---------------------------------------------------------------------------


def listed_state(word: str) -> str | None:
    """What a task list's own status word says of a finished task: 'done', 'cancelled', or None (not finished)."""
    word = word.strip().lower()
    if word == "cancelled":
        return "cancelled"
    return "done" if word in ("x", "done", "completed", "review") else None


def load_report(session: Session, plan_ref: str) -> CompletionReport:
    plan = plans.find_plan(session, plan_ref)
    now = db_now(session)
    tasks = reads.task_summaries(session, plan.id)
    attempts: dict[int, list[reads.AttemptSummary]] = {}
    for attempt in reads.attempt_summaries(session, plan.id, now):
        attempts.setdefault(attempt.task_pk, []).append(attempt)
    dag = Dag.from_edges(plans.plan_dependencies(session, plan.id))
    git = merges.task_git_states(session, plan.id)
    return build_report(plan, tasks, dag, attempts, now, git, reads.plan_growth(session, plan.id))


def build_report(
    plan: PlanRow,
    tasks: list[reads.TaskSummary],
    dag: Dag[int],
    attempts: dict[int, list[reads.AttemptSummary]],
    now: datetime,
    git: dict[int, TaskGit] | None = None,
    growth: list[reads.Growth] | None = None,
) -> CompletionReport:
    """The report of `plan` (`tasks` in plan order) read at `now` (the database's clock), which counts only for
    what is unfinished."""
    position = {t.pk: i for i, t in enumerate(tasks)}
    key_of = {t.pk: t.key for t in tasks}
    replaced_by: dict[int, list[str]] = {}
    for task in tasks:
        if task.added_how == "replan" and task.added_by is not None:
            replaced_by.setdefault(task.added_by, []).append(task.key)
    reports = []
    for task in tasks:
        after = [tasks[i] for i in sorted(position[d] for d in dag.dependencies(task.pk))]
        report = _task_report(task, after, attempts.get(task.pk, []), now)
        reports.append(
            replace(
                report,
                git=(git or {}).get(task.pk),
                added_by=None if task.added_by is None else key_of.get(task.added_by),
                added_how=task.added_how,
                replaced_by=tuple(replaced_by.get(task.pk, ())),
            )
        )
    return CompletionReport(plan, reports, None if plan.status in PLAN_FINAL else now, tuple(growth or ()))


def _task_report(
    task: reads.TaskSummary, after: list[reads.TaskSummary], attempts: list[reads.AttemptSummary], now: datetime
) -> TaskReport:
    succeeded = [a for a in attempts if a.status is AttemptStatus.SUCCEEDED]
    failed = [a for a in attempts if a.status in (AttemptStatus.FAILED, AttemptStatus.LOST)]
    ok = task.status is TaskStatus.SUCCEEDED
    end = task.finished_at if task.status in TERMINAL else now
    known_files = [a.files_changed for a in attempts if a.files_changed is not None]
    return TaskReport(
        key=task.key,
        title=task.title,
        agent=task.agent,
        status=task.status,
        skipped=task.skipped,
        after=[t.key for t in after],
        blocked_by=[t.key for t in after if t.status in DOOMING] if task.status is TaskStatus.UPSTREAM_FAILED else [],
        attempts=attempts,
        finished_at=task.finished_at if task.status in TERMINAL else None,
        wall_seconds=None if not attempts or end is None else max(0.0, (end - attempts[0].started_at).total_seconds()),
        verify=task.verify,
        verification=_verification(task.verify, attempts),
        files_changed=sorted({path for files in known_files for path in files}) if known_files else None,
        error=None if ok else task.error,
        failure_class=None if ok or not failed else failed[-1].failure_class,
        result=succeeded[-1].result if succeeded else None,
        source=task.source,
        hold=task.hold,
    )


def _verification(verify: str | None, attempts: list[reads.AttemptSummary]) -> str | None:
    """The latest outcome of the task's `verify:` command: passed, failed, or not_run (no attempt got that far)."""
    if verify is None:
        return None
    ran = [a.verified for a in attempts if a.verified is not None]
    if not ran:
        return "not_run"
    return "passed" if ran[-1] else "failed"
