"""`orch report`: a plan's completion report. Per task: status, agent type, attempts, durations, tokens, cost,
the `verify:` command's outcome, files changed and why it failed; then the totals. As JSON (the stable schema
`orch.report/1`, documented in README.md) or as Markdown that renders in a GitHub issue or pull request."""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from orch.durations import format_duration
from orch.intake.prices import Usage
from orch.states import DOOMING, PLAN_FINAL, TERMINAL, AttemptStatus, PlanStatus, TaskStatus
from orch.store import plans, reads
from orch.store.db import db_now
from orch.store.models import PlanRow
from orch.views.status import counted, format_cost, format_tokens, iso, sum_costs, usage_json
from orch.views.terminal import inert

SCHEMA = "orch.report/1"
MD_MAX_TASKS = 500  # Markdown lists at most this many tasks in each section; JSON has them all
MD_RESULT_CHARS = 1500  # of each agent's own summary, in Markdown

TASK_MARK = {
    TaskStatus.PENDING: "⏳",
    TaskStatus.QUEUED: "📨",
    TaskStatus.RUNNING: "🔄",
    TaskStatus.SUCCEEDED: "✅",
    TaskStatus.FAILED: "❌",
    TaskStatus.RETRY_WAIT: "🔁",
    TaskStatus.UPSTREAM_FAILED: "⛔",
    TaskStatus.CANCELLED: "🚫",
}
SKIPPED_MARK = "⏭️"
PLAN_MARK = {
    PlanStatus.RUNNING: "🔄",
    PlanStatus.PAUSED: "⏸️",
    PlanStatus.BUDGET_EXHAUSTED: "💸",
    PlanStatus.SUCCEEDED: "✅",
    PlanStatus.FAILED: "❌",
    PlanStatus.CANCELLED: "🚫",
}
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
        }


@dataclass(frozen=True)
class CompletionReport:
    plan: PlanRow
    tasks: list[TaskReport]
    as_of: datetime | None  # when the figures were read, for a plan still open; None once it is final

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
                {"agent": agent, **_totals_json(tasks, None, None)} for agent, tasks in _by_agent(self.tasks).items()
            ],
            "tasks": [t.as_json() for t in self.tasks],
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


def _by_agent(tasks: list[TaskReport]) -> dict[str, list[TaskReport]]:
    grouped: dict[str, list[TaskReport]] = {}
    for task in sorted(tasks, key=lambda t: t.agent):
        grouped.setdefault(task.agent, []).append(task)
    return grouped


def _usd(cost: float | None) -> float | None:
    return None if cost is None else round(cost, 6)


def _seconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


# --- building it from the store ---------------------------------------------------------------------------


def load_report(session: Session, plan_ref: str) -> CompletionReport:
    plan = plans.find_plan(session, plan_ref)
    now = db_now(session)
    tasks = reads.task_summaries(session, plan.id)
    attempts: dict[int, list[reads.AttemptSummary]] = {}
    for attempt in reads.attempt_summaries(session, plan.id, now):
        attempts.setdefault(attempt.task_pk, []).append(attempt)
    deps: dict[int, list[int]] = {}
    for task_pk, dep_pk in plans.plan_dependencies(session, plan.id):
        deps.setdefault(task_pk, []).append(dep_pk)
    return build_report(plan, tasks, deps, attempts, now)


def build_report(
    plan: PlanRow,
    tasks: list[reads.TaskSummary],
    deps: dict[int, list[int]],
    attempts: dict[int, list[reads.AttemptSummary]],
    now: datetime,
) -> CompletionReport:
    """The report of `plan` (`tasks` in plan order) read at `now` (the database's clock), which counts only for
    what is unfinished."""
    position = {t.pk: i for i, t in enumerate(tasks)}
    reports = []
    for task in tasks:
        after = [tasks[i] for i in sorted(position[d] for d in deps.get(task.pk, ()))]
        reports.append(_task_report(task, after, attempts.get(task.pk, []), now))
    return CompletionReport(plan, reports, None if plan.status in PLAN_FINAL else now)


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
    )


def _verification(verify: str | None, attempts: list[reads.AttemptSummary]) -> str | None:
    """The latest outcome of the task's `verify:` command: passed, failed, or not_run (no attempt got that far)."""
    if verify is None:
        return None
    ran = [a.verified for a in attempts if a.verified is not None]
    if not ran:
        return "not_run"
    return "passed" if ran[-1] else "failed"


# --- Markdown -----------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~!&])")
_WHITESPACE = re.compile(r"\s+")
# GitHub finds @mentions in the text it has already rendered, after Markdown's backslash escapes and HTML entities
# are decoded, so `\@octocat` and `&#64;octocat` still ping. A zero-width space after the "@" breaks the pattern
# and shows the same text (Renovate and Dependabot quote changelogs so). The same space after "://"'s colon and
# before "www."'s dot keeps a bare URL from being linked, whether the linker reads the Markdown (cmark-gfm's
# autolinks) or the rendered text. It is written as an entity so the Markdown itself, on a terminal or in a
# plain-text email, holds no invisible character.
_ZERO_WIDTH_SPACE = "&#8203;"
_WWW = re.compile(r"\b(www)\.", re.IGNORECASE)


def _flat(text: str, limit: int | None = None) -> str:
    flat = _WHITESPACE.sub(" ", text).strip()
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


def no_pings_or_links(text: str) -> str:
    """Escaped Markdown or HTML text in which no @mention pings and no bare URL becomes a link on GitHub."""
    text = text.replace("@", "@" + _ZERO_WIDTH_SPACE).replace("://", ":" + _ZERO_WIDTH_SPACE + "//")
    return _WWW.sub(r"\1" + _ZERO_WIDTH_SPACE + ".", text)


def md_text(text: str, limit: int | None = None) -> str:
    """Plain text as one line of Markdown: whitespace collapsed, control and bidi characters as visible escapes,
    what Markdown or HTML would read escaped, and no @mention or bare URL GitHub would act on."""
    return no_pings_or_links(_MD_SPECIAL.sub(r"\\\1", inert(_flat(text, limit))))


def md_code(text: str, in_table: bool = False) -> str:
    """`text` as an inline code span (a longer fence when it holds backticks), control and bidi characters as
    visible escapes. (GitHub leaves mentions and URLs in code alone.)"""
    flat = inert(_WHITESPACE.sub(" ", text).strip())
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {flat} " if longest else flat
    span = f"{fence}{padded}{fence}"
    return span.replace("|", "\\|") if in_table else span


def _md_block(text: str, limit: int) -> list[str]:
    body = inert(text if len(text) <= limit else text[:limit], keep_newlines=True)
    if len(text) > limit:
        body += "\n… (cut; the JSON report has all of it)"
    longest = max((len(run) for run in re.findall(r"`{3,}", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", body.rstrip("\n"), fence]


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dur(seconds: float | None) -> str:
    return "—" if seconds is None else format_duration(seconds)


def _files_cell(files: list[str] | None, shown: int = 3) -> str:
    if files is None:
        return "—"
    if not files:
        return "none"
    cell = ", ".join(md_code(f, in_table=True) for f in files[:shown])
    return cell + (f" +{len(files) - shown} more" if len(files) > shown else "")


def _status_counts(counts: Counter[Any], order: Any) -> str:
    return ", ".join(f"{counts[s]} {s.value}" for s in order if counts[s]) or "none"


def _more(left: int) -> list[str]:
    return ["", f"… and {left:,} more: `orch report --format json` lists every task."] if left > 0 else []


def render_markdown(report: CompletionReport, max_tasks: int = MD_MAX_TASKS) -> str:
    plan = report.plan
    statuses = Counter(t.status for t in report.tasks)
    skipped = sum(1 for t in report.tasks if t.skipped)
    attempts = report.attempts
    usage = report.usage
    verification = report.verification_counts()
    lines = [f"## orch report: {md_code(plan.name)} — {PLAN_MARK[plan.status]} {plan.status.value}", ""]
    if plan.description.strip():
        lines += [f"> {md_text(plan.description, 500)}", ""]
    task_summary = _status_counts(statuses, TaskStatus)
    if skipped:
        task_summary = task_summary.replace(" succeeded", f" succeeded ({skipped} skipped)", 1)
    lines += [
        f"- **Plan:** {md_code(plan.id)} from {md_code(plan.source)}, workdir {md_code(plan.workdir)}",
        f"- **Created:** {_when(plan.created_at)} · **finished:** {_when(plan.finished_at)}"
        + (f" · **as of:** {_when(report.as_of)}" if report.as_of else "")
        + f" · **wall time:** {_dur(report.wall_seconds)}",
        f"- **Tasks:** {len(report.tasks)} — {task_summary}",
        f"- **Attempts:** {len(attempts)} — {_status_counts(Counter(a.status for a in attempts), AttemptStatus)}",
        f"- **Agent time:** {_dur(sum(a.seconds for a in attempts))} (every attempt's run time, added up)",
        f"- **Tokens:** {usage.total:,} (input {usage.input_tokens:,}, output {usage.output_tokens:,}, "
        f"cache write {usage.cache_creation_tokens:,}, cache read {usage.cache_read_tokens:,})",
        f"- **Cost:** {format_cost(report.cost_usd, '—')}",
    ]
    if any(verification.values()):
        lines.append(
            f"- **Verification:** {verification['passed']} passed, {verification['failed']} failed, "
            f"{verification['not_run']} not run"
        )
    files = report.files_changed
    lines.append(f"- **Files changed:** {'— (not tracked: no git workdir)' if files is None else len(files)}")
    if plan.held_reason:
        lines.append(f"- **Held:** {md_text(plan.held_reason)}")
    lines += ["", *_agents_table(report), "", *_tasks_table(report, max_tasks)]
    lines += _failures(report, max_tasks)
    lines += _results(report, max_tasks)
    return "\n".join(lines) + "\n"


def _agents_table(report: CompletionReport) -> list[str]:
    lines = [
        "### By agent type",
        "",
        "| agent type | tasks | succeeded | not succeeded | attempts | agent time | tokens | cost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for agent, tasks in _by_agent(report.tasks).items():
        done = sum(1 for t in tasks if t.status is TaskStatus.SUCCEEDED)
        failed = sum(1 for t in tasks if t.status in DOOMING)
        lines.append(
            f"| {md_text(agent)} | {len(tasks)} | {done} | {failed} | {sum(len(t.attempts) for t in tasks)} "
            f"| {_dur(sum(t.run_seconds for t in tasks)) if any(t.attempts for t in tasks) else '—'} "
            f"| {format_tokens(sum((t.usage for t in tasks), Usage()), '—')} "
            f"| {format_cost(sum_costs(t.cost_usd for t in tasks), '—')} |"
        )
    return lines


def _tasks_table(report: CompletionReport, max_tasks: int) -> list[str]:
    lines = [
        "### Tasks",
        "",
        "| task | title | agent type | status | attempts | wall | agent time | tokens | cost | verify "
        "| files changed |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for task in report.tasks[:max_tasks]:
        verify = "—" if task.verification is None else VERIFY_MARK[task.verification]
        lines.append(
            f"| {md_code(task.key, in_table=True)} | {md_text(task.title, 80)} | {md_text(task.agent)} "
            f"| {task.mark} {task.status_text} | {len(task.attempts)} | {_dur(task.wall_seconds)} "
            f"| {_dur(task.run_seconds) if task.attempts else '—'} | {format_tokens(task.usage, '—')} "
            f"| {format_cost(task.cost_usd, '—')} "
            f"| {verify} | {_files_cell(task.files_changed)} |"
        )
    return lines + _more(len(report.tasks) - max_tasks)


def _failures(report: CompletionReport, max_tasks: int) -> list[str]:
    """Why each task did not succeed, and every failed attempt (of the retried tasks too)."""
    failing = [
        t
        for t in report.tasks
        if t.status is not TaskStatus.SUCCEEDED or any(a.status is not AttemptStatus.SUCCEEDED for a in t.attempts)
    ]
    failing = [t for t in failing if t.status not in (TaskStatus.PENDING, TaskStatus.QUEUED) or t.attempts]
    if not failing:
        return []
    lines = ["", "### Failures and retries", ""]
    for task in failing[:max_tasks]:
        tries = f" after {counted(len(task.attempts), 'attempt')}" if task.attempts else ""
        head = f"- {task.mark} {md_code(task.key)} ({md_text(task.agent)}): {task.status_text}{tries}"
        if task.blocked_by:
            head += " — blocked by " + ", ".join(md_code(k) for k in task.blocked_by)
        elif task.error:
            kind = f"{md_code(task.failure_class)} " if task.failure_class else ""
            head += f" — {kind}{md_text(task.error, 300)}"
        lines.append(head)
        for attempt in task.attempts:
            if attempt.status is AttemptStatus.SUCCEEDED:
                continue
            detail = [attempt.status.value]
            if attempt.failure_class:
                detail.append(md_code(attempt.failure_class))
            if attempt.exit_code is not None:
                detail.append(f"exit code {attempt.exit_code}")
            reason = f": {md_text(attempt.error, 300)}" if attempt.error else ""
            lines.append(f"  - attempt {attempt.number} ({', '.join(detail)}){reason}")
    return lines + _more(len(failing) - max_tasks)


def _results(report: CompletionReport, max_tasks: int) -> list[str]:
    """What each succeeded attempt's agent said it did, folded."""
    reported = [t for t in report.tasks if t.result and t.result.strip()]
    if not reported:
        return []
    lines = ["", "### What the agents reported", ""]
    for task in reported[:max_tasks]:
        assert task.result is not None
        lines += [
            f"<details><summary><code>{html.escape(inert(task.key))}</code> — "
            f"{no_pings_or_links(html.escape(inert(_flat(task.title, 80))))}</summary>",
            "",
            *_md_block(task.result, MD_RESULT_CHARS),
            "",
            "</details>",
            "",
        ]
    return lines[:-1] + _more(len(reported) - max_tasks)
