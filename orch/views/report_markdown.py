"""`orch report`'s Markdown: the completion report (orch.views.report) as Markdown that renders in a GitHub issue
or pull request. Text is escaped so that Markdown and HTML read none of it, no @mention pings and no bare URL
becomes a link; each section lists at most `max_tasks` tasks (the JSON report has them all)."""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

from orch.durations import format_duration
from orch.intake.prices import Usage
from orch.states import DOOMING, AttemptStatus, PlanStatus, TaskStatus
from orch.views.format import counted, format_cost, format_tokens, sum_costs
from orch.views.report import VERIFY_MARK, CompletionReport, by_agent
from orch.views.terminal import inert

S = TypeVar("S", bound=StrEnum)  # a status: a task's or an attempt's

MD_MAX_TASKS = 500  # Markdown lists at most this many tasks in each section; JSON has them all
MD_RESULT_CHARS = 1500  # of each agent's own summary, in Markdown

PLAN_MARK = {
    PlanStatus.RUNNING: "🔄",
    PlanStatus.PAUSED: "⏸️",
    PlanStatus.BUDGET_EXHAUSTED: "💸",
    PlanStatus.SUCCEEDED: "✅",
    PlanStatus.FAILED: "❌",
    PlanStatus.CANCELLED: "🚫",
}

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


def _status_counts(counts: Counter[S], order: Iterable[S]) -> str:
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
    lines += _merges(report, max_tasks)
    lines += _growth(report, max_tasks)
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
    for agent, tasks in by_agent(report.tasks).items():
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


def _merges(report: CompletionReport, max_tasks: int) -> list[str]:
    """A worktree plan's tasks: each one's branch, base and head commits, and its merge."""
    tasks = [t for t in report.tasks if t.git is not None]
    if not tasks:
        return []
    lines = ["", "### Merges", "", "| task | branch | base | head | merge | merged at | conflicts |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in tasks[:max_tasks]:
        git = task.git
        assert git is not None
        merged = (git.merged_commit or "")[:12]
        lines.append(
            f"| {md_code(task.key, in_table=True)} | {md_code(git.branch or '—', in_table=True)} "
            f"| {(git.base_commit or '—')[:12]} | {(git.head_commit or '—')[:12]} "
            f"| {git.phase or '—'}{' ' + merged if merged else ''} | {_when(git.merged_at)} "
            f"| {_files_cell(list(git.conflicts)) if git.conflicts else '—'} |"
        )
    return lines + _more(len(tasks) - max_tasks)


def _growth(report: CompletionReport, max_tasks: int) -> list[str]:
    """What replaced what, which tasks were added as follow-ups by whom, and the follow-ups refused."""
    if not report.growth:
        return []
    lines = ["", "### Plan changes", ""]
    for growth in report.growth[:max_tasks]:
        added = ", ".join(md_code(key) for key in growth.added) or "none"
        by = f"{md_code(growth.by)} (attempt {growth.attempt})"
        if growth.how == "replan":
            line = f"- 🔀 {by} replaced by {added}"
            if growth.rewired:
                line += "; " + ", ".join(md_code(key) for key in growth.rewired) + " now wait for them"
        else:
            line = f"- 🌱 {added} added as follow-ups by {by}"
        lines.append(f"{line} (revision {growth.number})")
        lines += [f"  - refused: {md_text(problem, 300)}" for problem in growth.refused]
    return lines + _more(len(report.growth) - max_tasks)


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
